"""The one validator of LoRA adapter folders: push, import, pull/checkout, the runtime's loaders
and the load endpoint all call it.

Checks, in order: safe file names and no symlinks (but for a Hugging Face cache snapshot's
file links into its repository's ``blobs/``); no pickles; ``adapter_config.json`` read by
:func:`read_adapter_config`; every safetensors header against its file; in
``adapter_model.safetensors``, every tensor a LoRA A/B weight of a module, both present with
shapes A ``[r, in]`` and B ``[out, r]``, the rank the config gives that module, every weighted
module a declared target and every declared target weighted (PEFT's matching rules), float
dtypes only and finite values; and, when ``base_shapes`` is given, every module in the base
with the same ``(in_features, out_features)``.

Error messages name files relative to the adapter folder, never absolute paths.

Example::

    >>> info = validate_folder(Path("out/legal"))  # doctest: +SKIP
    >>> info.modules["model.layers.0.self_attn.q_proj"]  # doctest: +SKIP
    LoraModule(rank=8, in_features=576, out_features=576, scaling=2.0, ...)
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._safetensors import FLOAT_BITS, TensorEntry, check_finite, read_header
from .adapter_config import (
    CONFIG_NAME,
    AdapterConfig,
    parse_json_object,
    read_adapter_config,
    read_config_bytes,
    show,
)
from .errors import InvalidAdapterError

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "adapter_model.safetensors"
SIGNATURE_NAME = "model.sig"  # model-signing's default name for a signature bundle
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024
MAX_MODULE_CHARS = 512
CONVERT_HINT = (
    "convert it to safetensors, e.g. `from safetensors.torch import save_file; import torch; "
    "save_file(torch.load('adapter_model.bin', weights_only=True), "
    "'adapter_model.safetensors')`, or re-save with PEFT's "
    "`model.save_pretrained(folder, safe_serialization=True)`, then delete the .bin file"
)
PEFT_PREFIX = "base_model.model."
# base_model.model.<module>.lora_A.weight, or .lora_A.<adapter name>.weight
_KEY_RE = re.compile(
    r"^base_model\.model\.(?P<module>\w+(?:\.\w+)*)\.lora_(?P<which>[AB])"
    r"(?:\.(?P<adapter>[\w-]+))?\.weight$",
    re.ASCII,
)


@dataclass(frozen=True, slots=True)
class LoraModule:
    """One adapted linear module: ``y += (x @ A.T) @ B.T * scaling``, A ``[rank, in]``,
    B ``[out, rank]``; ``a_key``/``b_key`` name the tensors in ``adapter_model.safetensors``."""

    rank: int
    in_features: int
    out_features: int
    scaling: float
    a_key: str
    b_key: str


@dataclass
class AdapterInfo:
    """What validation learned about an adapter (the typed result of :func:`validate_folder`).

    ``config`` is the raw JSON object (every key kept); ``adapter_config`` the checked model;
    ``modules`` maps each module name (as in ``base.named_modules()``) to its shapes;
    ``signature`` is a ``model.sig`` bundle found beside the files (not one of ``files``).
    """

    files: dict[str, Path]  # relative posix path -> file on disk
    config: dict[str, Any]
    peft_type: str | None = None
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=list)
    dtype: str | None = None
    base_model_id: str | None = None
    adapter_config: AdapterConfig | None = None
    modules: dict[str, LoraModule] = field(default_factory=dict)
    signature: Path | None = None

    @property
    def weights_path(self) -> Path:
        return self.files[WEIGHTS_NAME]


def check_file_name(rel: str) -> str:
    """Refuse unsafe relative paths: absolute, '..', NUL, backslash, over-long.

    Example: ``check_file_name("weights/adapter_model.safetensors")`` returns it unchanged.
    """
    if not isinstance(rel, str) or not rel or "\0" in rel or "\\" in rel or rel.startswith("/"):
        raise InvalidAdapterError(
            f"file name {show(rel)} is not allowed: names must be relative, without NUL or '\\'"
        )
    if len(rel.encode(errors="surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidAdapterError(
            f"file path {rel[:60]!r}... is {len(rel.encode(errors='surrogatepass'))} bytes; "
            f"the limit is {MAX_PATH_BYTES}"
        )
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            raise InvalidAdapterError(f"file path {show(rel)} has an empty, '.' or '..' component")
        if len(part.encode(errors="surrogatepass")) > MAX_NAME_BYTES:
            raise InvalidAdapterError(
                f"file name {part[:60]!r}... is {len(part.encode(errors='surrogatepass'))} "
                f"bytes; the limit is {MAX_NAME_BYTES}"
            )
    return rel


def _linked_file(link: Path, rel: str, within: Path) -> Path:
    """The regular file a symlink leads to in one hop, when that file is inside ``within``
    (a link to a link, or to anything outside, is refused)."""
    hint = (
        f"{rel!r} is a symlink leading outside the Hugging Face cache's blobs; the registry "
        f"follows a link only into its own repository's blobs/ folder, copy the file instead"
    )
    try:
        hop = Path(os.path.normpath(os.path.join(link.parent, os.readlink(link))))
        if hop.is_symlink():
            raise InvalidAdapterError(f"{rel!r} is a symlink to a symlink; {hint.split('; ')[1]}")
        target = hop.resolve(strict=True)
    except (OSError, RuntimeError):  # dangling, a loop, unreadable
        raise InvalidAdapterError(f"{rel!r} is a broken symlink; download the file again") from None
    if not target.is_relative_to(within):
        raise InvalidAdapterError(hint)
    if not target.is_file():
        raise InvalidAdapterError(f"{rel!r} is a symlink to something that is not a regular file")
    return target


def scan_folder(folder: Path, *, links_within: Path | None = None) -> dict[str, Path]:
    """Relative path -> file, refusing symlinks and unsafe names; hidden entries are skipped.

    ``links_within`` (a Hugging Face cache repository's ``blobs/`` folder, see
    :func:`loraroute.registry.hub.cache_blobs`) lets a *file* symlink through when it resolves
    to a regular file inside that folder; the path then maps to the resolved file. Every other
    symlink is still refused, folders always.

    Example: ``scan_folder(Path("out/legal"))`` -> ``{"adapter_config.json": ..., ...}``
    """
    folder = Path(folder)
    label = folder.name or "."
    if folder.is_symlink():
        raise InvalidAdapterError(f"adapter folder {label!r} is a symlink; pass the real folder")
    if not folder.is_dir():
        raise InvalidAdapterError(f"adapter folder {label!r} does not exist or is not a folder")
    within = Path(links_within).resolve(strict=True) if links_within is not None else None
    files: dict[str, Path] = {}
    link_hint = "the registry stores real files only, copy the target into the folder instead"
    for root, dirs, names in os.walk(folder, followlinks=False):
        rootp = Path(root)
        for d in list(dirs):
            if (rootp / d).is_symlink():
                rel = (rootp / d).relative_to(folder).as_posix()
                raise InvalidAdapterError(f"{rel!r} is a symlink; {link_hint}")
            if d.startswith("."):
                dirs.remove(d)
                logger.info("skipping hidden folder %s", rootp / d)
        for n in names:
            p = rootp / n
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink() and within is None:
                raise InvalidAdapterError(f"{rel!r} is a symlink; {link_hint}")
            if n.startswith("."):
                logger.info("skipping hidden file %s", p)
                continue
            if p.is_symlink():
                files[check_file_name(rel)] = _linked_file(p, rel, within)  # type: ignore[arg-type]
                continue
            if not p.is_file():
                raise InvalidAdapterError(f"{rel!r} is not a regular file")
            files[check_file_name(rel)] = p
    return files


def read_safetensors_header(path: Path, rel: str) -> dict[str, TensorEntry]:
    """The checked tensor table of a safetensors file (``rel`` names it in errors).

    Example: ``read_safetensors_header(path, "adapter_model.safetensors")[name].shape``
    """
    return read_header(path, rel)


def _parse_modules(tensors: dict[str, TensorEntry], config: AdapterConfig) -> dict[str, LoraModule]:
    rel = WEIGHTS_NAME
    if not tensors:
        raise InvalidAdapterError(f"{rel} holds no tensors")
    parts: dict[str, dict[str, TensorEntry]] = {}
    adapters: set[str | None] = set()
    for name, t in tensors.items():
        m = _KEY_RE.match(name)
        module = m["module"] if m else ""
        if (
            m is None
            or len(module) > MAX_MODULE_CHARS
            or any(c.startswith("lora_") for c in module.split("."))
        ):
            raise InvalidAdapterError(
                f"{rel}: tensor {show(name)} is not a LoRA weight of a linear module; expected "
                f"names like '{PEFT_PREFIX}model.layers.0.self_attn.q_proj.lora_A.weight'"
            )
        if t.dtype not in FLOAT_BITS:
            raise InvalidAdapterError(
                f"{rel}: tensor {name!r} has dtype {t.dtype}; LoRA weights must be one of "
                f"{', '.join(FLOAT_BITS)}"
            )
        adapters.add(m["adapter"])
        which = m["which"]
        if which in parts.setdefault(module, {}):
            raise InvalidAdapterError(f"{rel} holds lora_{which} of module {module!r} twice")
        parts[module][which] = t
    if len(adapters) > 1:
        named = sorted(a or "(unnamed)" for a in adapters)
        raise InvalidAdapterError(
            f"{rel} mixes the weights of several adapters ({', '.join(named)}); save one "
            f"adapter per folder"
        )
    modules: dict[str, LoraModule] = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            missing = "B" if "A" in ab else "A"
            raise InvalidAdapterError(
                f"{rel} has lora_{'A' if missing == 'B' else 'B'} but no lora_{missing} for "
                f"module {module!r}; the file is incomplete"
            )
        a, b = ab["A"], ab["B"]
        if (
            len(a.shape) != 2
            or len(b.shape) != 2
            or a.shape[0] != b.shape[1]
            or 0 in a.shape + b.shape
        ):
            raise InvalidAdapterError(
                f"{rel}: module {module!r} has lora_A {list(a.shape)} and lora_B "
                f"{list(b.shape)}; expected A [r, in] and B [out, r] with the same r > 0"
            )
        rank, expected = a.shape[0], config.rank_for(module)
        if rank != expected:
            raise InvalidAdapterError(
                f"{rel}: module {module!r} has rank {rank} (lora_A {list(a.shape)}), which "
                f"contradicts {CONFIG_NAME} rank r={config.r}"
                f"{f' (rank_pattern gives {expected})' if expected != config.r else ''}; "
                f"the config and the weights come from different adapters"
            )
        modules[module] = LoraModule(
            rank=rank,
            in_features=a.shape[1],
            out_features=b.shape[0],
            scaling=config.scaling_for(module, rank),
            a_key=a.name,
            b_key=b.name,
        )
    return modules


def _check_targets(modules: dict[str, LoraModule], config: AdapterConfig) -> None:
    declared = config.target_modules
    for module in modules:
        if not config.targets(module):
            raise InvalidAdapterError(
                f"{WEIGHTS_NAME} has weights for module {module!r}, which target_modules "
                f"{show(declared)} in {CONFIG_NAME} does not declare; the config and the weights "
                f"disagree"
            )
    if isinstance(declared, list):
        for target in sorted(set(declared)):
            if not any(config.declares(target, m) for m in modules):
                raise InvalidAdapterError(
                    f"{CONFIG_NAME} declares target module {target!r}, but {WEIGHTS_NAME} holds "
                    f"no weights for it; the config and the weights disagree"
                )


def check_base(
    modules: Mapping[str, LoraModule], base_shapes: Mapping[str, tuple[int, int]]
) -> None:
    """Refuse an adapter whose modules are not in the base with the same shapes.

    ``base_shapes`` maps a module name to ``(in_features, out_features)`` of its nn.Linear.
    Example: ``check_base(info.modules, {"model.layers.0.self_attn.q_proj": (576, 576)})``
    """
    for module, m in modules.items():
        shape = base_shapes.get(module)
        if shape is None:
            raise InvalidAdapterError(
                f"the adapter targets module {module!r}, which is not a linear module of the "
                f"base model; it was made for another architecture"
            )
        if (m.in_features, m.out_features) != tuple(shape):
            raise InvalidAdapterError(
                f"the adapter has (in, out) = ({m.in_features}, {m.out_features}) for module "
                f"{module!r}, but the base model's layer is {tuple(shape)}; it was made for "
                f"another base model"
            )


def validate_files(
    files: Mapping[str, Path], *, base_shapes: Mapping[str, tuple[int, int]] | None = None
) -> AdapterInfo:
    """Validate a set of adapter files (relative path -> file on disk).

    Raises :class:`InvalidAdapterError`. Example:
    ``validate_files({"adapter_config.json": cfg_path, "adapter_model.safetensors": w_path})``
    """
    for rel in files:
        check_file_name(rel)
        if rel.lower().endswith(PICKLE_SUFFIXES):
            raise InvalidAdapterError(
                f"{rel!r} is a pickle file; only safetensors weights are accepted because "
                f"loading a pickle can run arbitrary code. To fix it, {CONVERT_HINT}"
            )
        if rel == SIGNATURE_NAME:
            raise InvalidAdapterError(
                f"{SIGNATURE_NAME!r} is reserved for a signature bundle and cannot be a file of "
                f"a version; attach it as a signature (push the folder, or `adapters sign`)"
            )
    if CONFIG_NAME not in files:
        raise InvalidAdapterError(
            f"the adapter has no {CONFIG_NAME}; save it with PEFT's save_pretrained, which "
            f"writes the config next to the weights"
        )
    if WEIGHTS_NAME not in files:
        raise InvalidAdapterError(
            f"the adapter has no {WEIGHTS_NAME} (found: {', '.join(sorted(files)) or 'nothing'})"
        )
    raw_config = parse_json_object(read_config_bytes(files[CONFIG_NAME]), CONFIG_NAME)
    config = read_adapter_config(raw_config)
    dtypes: set[str] = set()
    modules: dict[str, LoraModule] = {}
    for rel, path in sorted(files.items()):
        if not rel.endswith(".safetensors"):
            continue
        tensors = read_header(path, rel)
        if rel == WEIGHTS_NAME:
            modules = _parse_modules(tensors, config)
            _check_targets(modules, config)
            if base_shapes is not None:
                check_base(modules, base_shapes)
            check_finite(path, rel, list(tensors.values()))
            dtypes.update(t.dtype for t in tensors.values())
    return AdapterInfo(
        files=dict(files),
        config=raw_config,
        peft_type=config.peft_type,
        rank=config.r,
        alpha=config.lora_alpha,
        target_modules=config.target_list,
        dtype=",".join(sorted(dtypes)) or None,
        base_model_id=config.base_model_name_or_path,
        adapter_config=config,
        modules=modules,
    )


def validate_folder(
    folder: str | Path,
    *,
    base_shapes: Mapping[str, tuple[int, int]] | None = None,
    links_within: Path | None = None,
) -> AdapterInfo:
    """Scan and validate an adapter folder; with ``base_shapes`` also check it fits the base.

    A top-level ``model.sig`` is returned as ``info.signature``, not as a file.
    ``links_within``: see :func:`scan_folder` (Hugging Face cache snapshots only).
    Example: ``validate_folder("out/legal", base_shapes={"model.layers.0.mlp.up_proj": (576,
    1536)})``
    """
    files = scan_folder(Path(folder), links_within=links_within)
    signature = files.pop(SIGNATURE_NAME, None)
    info = validate_files(files, base_shapes=base_shapes)
    info.signature = signature
    return info


__all__ = [
    "CONFIG_NAME",
    "PEFT_PREFIX",
    "SIGNATURE_NAME",
    "WEIGHTS_NAME",
    "AdapterConfig",
    "AdapterInfo",
    "LoraModule",
    "check_base",
    "check_file_name",
    "read_adapter_config",
    "read_safetensors_header",
    "scan_folder",
    "validate_files",
    "validate_folder",
]
