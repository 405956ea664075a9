"""Safety checks for an adapter folder before anything is written.

Only safetensors weights are accepted (parsed here without torch: header length, JSON header,
offsets and file size); ``adapter_config.json`` must be valid and agree with the tensor shapes;
file names must be safe; symlinks are refused.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidAdapterError

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024
MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
CONVERT_HINT = (
    "convert it to safetensors, e.g. `from safetensors.torch import save_file; import torch; "
    "save_file(torch.load('adapter_model.bin', weights_only=True), "
    "'adapter_model.safetensors')`, or re-save with PEFT's "
    "`model.save_pretrained(folder, safe_serialization=True)`, then delete the .bin file"
)


@dataclass
class AdapterInfo:
    """What validation learned about an adapter folder."""

    files: dict[str, Path]  # relative posix path -> file on disk
    config: dict[str, Any]
    peft_type: str | None = None
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=list)
    dtype: str | None = None
    base_model_id: str | None = None


def check_file_name(rel: str) -> str:
    """Refuse unsafe relative paths: absolute, '..', NUL, backslash, over-long."""
    if not rel or "\0" in rel or "\\" in rel or rel.startswith("/"):
        raise InvalidAdapterError(
            f"file name {rel!r} is not allowed: names must be relative, without NUL or '\\'"
        )
    if len(rel.encode()) > MAX_PATH_BYTES:
        raise InvalidAdapterError(
            f"file path {rel[:60]!r}... is {len(rel.encode())} bytes; the limit is {MAX_PATH_BYTES}"
        )
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            raise InvalidAdapterError(f"file path {rel!r} has an empty, '.' or '..' component")
        if len(part.encode()) > MAX_NAME_BYTES:
            raise InvalidAdapterError(
                f"file name {part[:60]!r}... is {len(part.encode())} bytes; the limit is "
                f"{MAX_NAME_BYTES}"
            )
    return rel


def scan_folder(folder: Path) -> dict[str, Path]:
    """Relative path -> file, refusing symlinks and unsafe names; hidden entries are skipped."""
    folder = Path(folder)
    if folder.is_symlink():
        raise InvalidAdapterError(
            f"adapter folder {str(folder)!r} is a symlink; pass the real folder"
        )
    if not folder.is_dir():
        raise InvalidAdapterError(
            f"adapter folder {str(folder)!r} does not exist or is not a folder"
        )
    files: dict[str, Path] = {}
    for root, dirs, names in os.walk(folder, followlinks=False):
        rootp = Path(root)
        for d in list(dirs):
            if (rootp / d).is_symlink():
                raise InvalidAdapterError(
                    f"{str(rootp / d)!r} is a symlink; the registry stores real files only, "
                    f"copy the target into the folder instead"
                )
            if d.startswith("."):
                dirs.remove(d)
                logger.info("skipping hidden folder %s", rootp / d)
        for n in names:
            p = rootp / n
            if p.is_symlink():
                raise InvalidAdapterError(
                    f"{str(p)!r} is a symlink; the registry stores real files only, copy the "
                    f"target into the folder instead"
                )
            if n.startswith("."):
                logger.info("skipping hidden file %s", p)
                continue
            if not p.is_file():
                raise InvalidAdapterError(f"{str(p)!r} is not a regular file")
            rel = p.relative_to(folder).as_posix()
            files[check_file_name(rel)] = p
    return files


def read_safetensors_header(path: Path, rel: str) -> dict[str, Any]:
    """Parse and check a safetensors header against the file size; return the tensor table."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InvalidAdapterError(f"{rel!r} is not a safetensors file: it has {size} bytes")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise InvalidAdapterError(
                f"{rel!r} is truncated or not safetensors: header claims {n} bytes but the file "
                f"has {size}"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidAdapterError(f"{rel!r} has a malformed safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise InvalidAdapterError(f"{rel!r} has a malformed safetensors header (not an object)")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    data_len = size - 8 - n
    spans = []
    for name, t in tensors.items():
        try:
            dtype, shape, (start, end) = t["dtype"], list(t["shape"]), t["data_offsets"]
            count = 1
            for d in shape:
                count *= int(d)
            expected = count * _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidAdapterError(f"{rel!r}: tensor {name!r} has a malformed entry") from exc
        if not (0 <= start <= end <= data_len) or end - start != expected:
            raise InvalidAdapterError(
                f"{rel!r} is truncated or malformed: tensor {name!r} spans bytes {start}-{end} "
                f"of {data_len} data bytes ({dtype} {shape} needs {expected})"
            )
        spans.append((start, end))
    spans.sort()
    pos = 0
    for start, end in spans:
        if start != pos:
            raise InvalidAdapterError(f"{rel!r} is malformed: tensor data overlaps or has gaps")
        pos = end
    if pos != data_len:
        raise InvalidAdapterError(
            f"{rel!r} is truncated or has trailing bytes: tensors cover {pos} of {data_len} bytes"
        )
    return tensors


def _load_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        raise InvalidAdapterError(
            f"the adapter has no {CONFIG_NAME}; save it with PEFT's save_pretrained, which "
            f"writes the config next to the weights"
        )
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidAdapterError(f"{CONFIG_NAME} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InvalidAdapterError(
            f"{CONFIG_NAME} must hold a JSON object, got {type(config).__name__}"
        )
    if not isinstance(config.get("peft_type"), str):
        raise InvalidAdapterError(f"{CONFIG_NAME} has no 'peft_type' (e.g. \"LORA\")")
    r = config.get("r")
    if config["peft_type"].upper() == "LORA" and (not isinstance(r, int) or r < 1):
        raise InvalidAdapterError(
            f"{CONFIG_NAME} has LORA rank r={r!r}; expected a positive integer"
        )
    return config


def validate_files(files: dict[str, Path]) -> AdapterInfo:
    """Check a set of adapter files (relative path -> file); raises InvalidAdapterError."""
    for rel in files:
        check_file_name(rel)
        if rel.lower().endswith(PICKLE_SUFFIXES):
            raise InvalidAdapterError(
                f"{rel!r} is a pickle file; only safetensors weights are accepted because "
                f"loading a pickle can run arbitrary code. To fix it, {CONVERT_HINT}"
            )
    config = _load_config(files.get(CONFIG_NAME))
    if WEIGHTS_NAME not in files:
        raise InvalidAdapterError(
            f"the adapter has no {WEIGHTS_NAME} (found: {', '.join(sorted(files)) or 'nothing'})"
        )
    info = AdapterInfo(files=dict(files), config=config)
    info.peft_type = config["peft_type"].upper()
    info.rank = config.get("r") if isinstance(config.get("r"), int) else None
    alpha = config.get("lora_alpha")
    info.alpha = float(alpha) if isinstance(alpha, int | float) else None
    tm = config.get("target_modules")
    info.target_modules = (
        sorted(tm) if isinstance(tm, list) else [tm] if isinstance(tm, str) else []
    )
    base = config.get("base_model_name_or_path")
    info.base_model_id = base if isinstance(base, str) and base else None
    dtypes: set[str] = set()
    for rel, path in files.items():
        if rel.endswith(".safetensors"):
            tensors = read_safetensors_header(path, rel)
            dtypes.update(t["dtype"] for t in tensors.values())
            if rel == WEIGHTS_NAME:
                _check_shapes(tensors, config)
    info.dtype = ",".join(sorted(dtypes)) or None
    return info


def _check_shapes(tensors: dict[str, Any], config: dict[str, Any]) -> None:
    if config["peft_type"].upper() != "LORA":
        return
    allowed = {config["r"]}
    pattern = config.get("rank_pattern") or {}
    if isinstance(pattern, dict):
        allowed.update(v for v in pattern.values() if isinstance(v, int))
    if not tensors:
        raise InvalidAdapterError(f"{WEIGHTS_NAME} holds no tensors")
    for name, t in tensors.items():
        shape = t["shape"]
        if ".lora_A." in name and (len(shape) < 2 or shape[0] not in allowed):
            got = shape[0] if shape else None
        elif ".lora_B." in name and (len(shape) < 2 or shape[1] not in allowed):
            got = shape[1] if len(shape) > 1 else None
        else:
            continue
        raise InvalidAdapterError(
            f"tensor {name!r} has shape {shape}, which contradicts {CONFIG_NAME} rank "
            f"r={config['r']} (rank {got}); the config and weights come from different adapters"
        )


def validate_folder(folder: Path) -> AdapterInfo:
    """Scan and validate an adapter folder. Example: ``validate_folder(Path("out/legal"))``."""
    return validate_files(scan_folder(folder))


__all__ = [
    "AdapterInfo",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "check_file_name",
    "read_safetensors_header",
    "scan_folder",
    "validate_files",
    "validate_folder",
]
