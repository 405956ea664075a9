"""safetensors files read without torch: a strict header parser and a NaN/Inf scan.

The scan memory-maps the file and looks at each float's exponent bits through an unsigned
integer view (all ones means Inf or NaN), so a large file is read once, in bounded chunks,
and BF16 needs no conversion.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .adapter_config import parse_json_object, show
from .errors import InvalidAdapterError

MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_TENSORS = 100_000
MAX_DIMS = 8
MAX_TENSOR_NAME = 1024
SCAN_CHUNK = 1 << 22  # elements per numpy view while scanning

DTYPE_BYTES = {
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


class _FloatBits(NamedTuple):
    view: str  # little-endian unsigned view of the same width
    exponent: int  # mask of the exponent bits
    mantissa: int  # mask of the mantissa bits (non-zero with an all-ones exponent: NaN)


FLOAT_BITS = {
    "F16": _FloatBits("<u2", 0x7C00, 0x03FF),
    "BF16": _FloatBits("<u2", 0x7F80, 0x007F),
    "F32": _FloatBits("<u4", 0x7F800000, 0x007FFFFF),
    "F64": _FloatBits("<u8", 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
}


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor of a safetensors header; ``start``/``end`` are absolute file offsets."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _entry(rel: str, name: Any, t: Any, base: int, data_len: int) -> TensorEntry:
    where = f"{rel}: tensor {show(name)}"
    if not isinstance(name, str) or not name or len(name) > MAX_TENSOR_NAME:
        raise InvalidAdapterError(f"{rel}: tensor name {show(name)} is empty or too long")
    if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
        raise InvalidAdapterError(
            f"{where} has a malformed entry: it needs exactly dtype, shape and data_offsets"
        )
    dtype, shape, offsets = t["dtype"], t["shape"], t["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise InvalidAdapterError(f"{where} has unknown dtype {show(dtype)}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(map(_is_count, shape)):
        raise InvalidAdapterError(f"{where} has shape {show(shape)}; expected a list of sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets)):
        raise InvalidAdapterError(
            f"{where} has data_offsets {show(offsets)}; expected [start, end]"
        )
    count = 1
    for d in shape:
        count *= d
    start, end = offsets
    expected = count * DTYPE_BYTES[dtype]
    if not (start <= end <= data_len) or end - start != expected:
        raise InvalidAdapterError(
            f"{rel} is truncated or malformed: tensor {show(name)} spans bytes {start}-{end} "
            f"of {data_len} data bytes ({dtype} {shape} needs {expected})"
        )
    return TensorEntry(name, dtype, tuple(shape), base + start, base + end)


def read_header(path: Path, rel: str) -> dict[str, TensorEntry]:
    """Parse and check a safetensors header against the file; ``rel`` names it in errors.

    Example: ``read_header(Path("a/adapter_model.safetensors"), "adapter_model.safetensors")``
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise InvalidAdapterError(f"{rel} is not a safetensors file: it has {size} bytes")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise InvalidAdapterError(
                    f"{rel} is truncated or not safetensors: header claims {n} bytes but the "
                    f"file has {size} (the limit is {MAX_HEADER_BYTES})"
                )
            raw = f.read(n)
    except OSError as exc:
        raise InvalidAdapterError(f"{rel} cannot be read ({exc.strerror})") from exc
    if not raw.startswith(b"{"):
        raise InvalidAdapterError(f"{rel} has a malformed safetensors header (not a JSON object)")
    header = parse_json_object(raw, f"{rel}'s safetensors header")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise InvalidAdapterError(f"{rel}: __metadata__ must map strings to strings")
    if len(header) > MAX_TENSORS:
        raise InvalidAdapterError(f"{rel} lists {len(header)} tensors; the limit is {MAX_TENSORS}")
    data_len = size - 8 - n
    entries = {name: _entry(rel, name, t, 8 + n, data_len) for name, t in header.items()}
    pos = 8 + n
    for e in sorted(entries.values(), key=lambda e: (e.start, e.end)):
        if e.start != pos:
            raise InvalidAdapterError(f"{rel} is malformed: tensor data overlaps or has gaps")
        pos = e.end
    if pos != size:
        raise InvalidAdapterError(
            f"{rel} is truncated or has trailing bytes: tensors cover {pos - 8 - n} of "
            f"{data_len} bytes"
        )
    return entries


def check_finite(path: Path, rel: str, entries: list[TensorEntry]) -> None:
    """Refuse NaN or Inf in any float tensor of ``entries`` (other dtypes are skipped)."""
    todo = [e for e in entries if e.dtype in FLOAT_BITS and e.end > e.start]
    if not todo:
        return
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for e in todo:
                bad = _first_non_finite(mm, e)
                if bad is not None:
                    index, what = bad
                    raise InvalidAdapterError(
                        f"{rel}: tensor {e.name!r} holds {what} (element {index} of {e.dtype} "
                        f"{list(e.shape)}); every chat with this adapter would fail. The training "
                        f"diverged: retrain with a lower learning rate or use an earlier checkpoint"
                    )
    except InvalidAdapterError:
        raise
    except (OSError, ValueError) as exc:  # the file changed under us, or cannot be mapped
        raise InvalidAdapterError(f"{rel} cannot be read for the value check ({exc})") from exc


def _first_non_finite(mm: mmap.mmap, e: TensorEntry) -> tuple[int, str] | None:
    bits = FLOAT_BITS[e.dtype]
    dt = np.dtype(bits.view)
    total = (e.end - e.start) // dt.itemsize
    for first in range(0, total, SCAN_CHUNK):
        count = min(SCAN_CHUNK, total - first)
        view = np.frombuffer(mm, dtype=dt, count=count, offset=e.start + first * dt.itemsize)
        hits = np.flatnonzero((view & dt.type(bits.exponent)) == dt.type(bits.exponent))
        if hits.size:
            value = int(view[hits[0]])
            del view  # the mmap cannot close while a view exports its buffer
            return first + int(hits[0]), "NaN" if value & bits.mantissa else "Inf"
        del view
    return None


__all__ = ["DTYPE_BYTES", "FLOAT_BITS", "TensorEntry", "check_finite", "read_header"]
