"""Helpers for tests of code that uses the registry: throwaway PostgreSQL databases, adapter
folders, and Hugging Face cache layouts.

Example::

    >>> with temporary_postgres() as url:  # doctest: +SKIP
    ...     reg = open_registry(url, blob_dir=tmp / "blobs")
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from loraroute.redact import redact_text, redact_url

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server used for tests cannot be reached."""


@contextmanager
def temporary_postgres(admin_url: str = DEFAULT_ADMIN_URL) -> Iterator[str]:
    """Create a fresh database, yield its URL, drop it afterwards."""
    try:
        import psycopg2
    except ImportError as exc:
        raise PostgresUnavailable("psycopg2 is not installed: pip install psycopg2-binary") from exc
    try:
        conn = psycopg2.connect(admin_url, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        raise PostgresUnavailable(
            f"PostgreSQL at {redact_url(admin_url)} is unreachable: {redact_text(str(exc))}"
        ) from None
    conn.autocommit = True
    name = f"lr_test_{uuid.uuid4().hex[:12]}"
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def make_hub_cache(
    cache: str | Path,
    repo_id: str,
    folder: str | Path,
    *,
    revision: str = "main",
    extra: dict[str, bytes] | None = None,
) -> Path:
    """Lay ``folder``'s files out as ``huggingface_hub`` caches a download, and return the
    snapshot folder: ``<cache>/models--org--name/blobs/<sha256>`` holds each file,
    ``snapshots/<commit>/<path>`` is a relative symlink to it, ``refs/<revision>`` names the
    commit. ``extra`` adds files (relative path -> bytes), e.g. a pickled ``training_args.bin``.
    """
    import hashlib
    import os

    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    files = {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }
    files.update(extra or {})
    commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


def make_variant(src: str | Path, dest: str | Path, tag: str) -> Path:
    """Copy an adapter folder, changing only its README, so its content digest differs."""
    import shutil

    dest = Path(dest)
    shutil.copytree(src, dest)
    (dest / "README.md").write_text(f"# variant {tag}\n")
    return dest


def push_variants(
    url: str, blob_dir: str | None, src: str, name: str, tags: list[str], workdir: str
) -> list[int]:
    """Push a variant of ``src`` per tag under ``name`` (a multiprocessing/subprocess worker)."""
    from . import open_registry

    reg = open_registry(url, blob_dir=blob_dir)
    numbers = []
    for tag in tags:
        folder = make_variant(src, Path(workdir) / f"{name}-{tag}", tag)
        v = reg.push(folder, name, base_fingerprint="sha256:" + "0" * 64, base_model_id="tiny")
        numbers.append(v.version)
    return numbers


def write_safetensors(
    path: str | Path, tensors: dict[str, tuple[str, list[int], bytes]], *, header_extra=None
) -> Path:
    """Write a safetensors file from raw ``{name: (dtype, shape, little-endian bytes)}``
    without torch (so tests can write BF16, NaN payloads or malformed entries)."""
    import json
    import struct

    header: dict = dict(header_extra or {})
    offset, body = 0, []
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        body.append(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = Path(path)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(body))
    return path


# (in_features, out_features) of the Linear layers a LoRA targets in ``make_tiny_base``'s model
TINY_LINEAR = {"q_proj": (32, 32), "k_proj": (32, 16), "v_proj": (32, 16), "o_proj": (32, 32)}


def tiny_base_shapes(layers: int = 2) -> dict[str, tuple[int, int]]:
    """``base_shapes`` (module -> (in, out)) of the attention Linears of ``make_tiny_base``."""
    return {
        f"model.layers.{i}.self_attn.{name}": shape
        for i in range(layers)
        for name, shape in TINY_LINEAR.items()
    }


def write_lora_folder(
    folder: str | Path,
    *,
    r: int = 4,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    layers: int = 2,
    dtype: str = "F32",
    config: dict | None = None,
    seed: int = 0,
) -> Path:
    """A PEFT-shaped LoRA folder for ``make_tiny_base``'s model, written with numpy only.

    ``config`` entries override the written ``adapter_config.json`` (None values delete keys).
    """
    import json

    import numpy as np

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np_dtype = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}.get(dtype)
    tensors = {}
    for i in range(layers):
        for name in targets:
            fan_in, fan_out = TINY_LINEAR[name]
            key = f"base_model.model.model.layers.{i}.self_attn.{name}"
            for which, shape in (("A", [r, fan_in]), ("B", [fan_out, r])):
                values = rng.standard_normal(shape).astype("<f4") * 0.1
                if dtype == "BF16":  # the top half of each float32
                    data = (values.view("<u4") >> 16).astype("<u2").tobytes()
                else:
                    data = values.astype(np_dtype).tobytes()
                tensors[f"{key}.lora_{which}.weight"] = (dtype, shape, data)
    write_safetensors(folder / "adapter_model.safetensors", tensors)
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": sorted(targets),
        "bias": "none",
        "base_model_name_or_path": "tiny",
    }
    for k, v in (config or {}).items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


__all__ = [
    "DEFAULT_ADMIN_URL",
    "TINY_LINEAR",
    "PostgresUnavailable",
    "make_variant",
    "push_variants",
    "temporary_postgres",
    "tiny_base_shapes",
    "write_lora_folder",
    "write_safetensors",
]
