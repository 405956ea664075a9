"""Triton, when the machine has it: ``triton`` and ``tl`` are ``None`` without it, and
``IMPORT_ERROR`` says why (the kernels' modules then define no kernels)."""

from __future__ import annotations

try:  # pragma: no cover - depends on the machine
    import triton
    import triton.language as tl

    IMPORT_ERROR: BaseException | None = None
except ImportError as exc:  # pragma: no cover - depends on the machine
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    IMPORT_ERROR = exc

__all__ = ["IMPORT_ERROR", "tl", "triton"]
