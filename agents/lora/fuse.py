"""Linear layers that read the same input, their weights made rows of one tensor.

``q``/``k``/``v`` (or ``gate``/``up``) then cost one GEMM instead of three (two). Each layer
keeps a weight that is a view into the shared tensor, so nothing is stored twice and
``state_dict`` is unchanged; whoever fuses first (the slot layers, or the paged model runner)
does the copy, and the other finds the views already adjacent.
"""

from __future__ import annotations

import torch
from torch import nn


def rows_view(weights: list[torch.Tensor]) -> torch.Tensor | None:
    """``[sum of rows, in]``: the weights as one tensor when they already are consecutive
    rows of one storage (no copy), else ``None``."""
    first = weights[0]
    if first.dim() != 2 or not all(w.is_contiguous() for w in weights):
        return None
    storage = first.untyped_storage().data_ptr()
    offset = first.storage_offset()
    for w in weights:
        if (
            w.dtype != first.dtype
            or w.device != first.device
            or w.shape[1] != first.shape[1]
            or w.untyped_storage().data_ptr() != storage
            or w.storage_offset() != offset
        ):
            return None
        offset += w.numel()
    rows = sum(w.shape[0] for w in weights)
    return first.as_strided((rows, first.shape[1]), (first.shape[1], 1))


def fuse_rows(linears: list[nn.Linear]) -> torch.Tensor | None:
    """Make the layers' weights rows of one tensor (copying them once) and return it; ``None``
    when they cannot share one (different dtypes, devices or input widths)."""
    weights = [lin.weight for lin in linears]
    joined = rows_view(weights)
    if joined is not None:
        return joined
    first = weights[0]
    if any(
        w.dtype != first.dtype or w.device != first.device or w.shape[1] != first.shape[1]
        for w in weights
    ):
        return None
    with torch.no_grad():
        cat = torch.cat([w.detach() for w in weights], 0)
    offset = 0
    for lin, w in zip(linears, weights, strict=True):
        rows = w.shape[0]
        lin.weight = nn.Parameter(cat[offset : offset + rows], requires_grad=False)
        offset += rows
    return cat


__all__ = ["fuse_rows", "rows_view"]
