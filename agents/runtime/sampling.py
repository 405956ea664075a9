"""Choosing each running row's next token from one decode step's logits.

The scheduler calls :func:`choose_tokens` once a step with the step's ``[rows, vocab]`` logits
and its rows; everything about how a token is picked (greedy, temperature, top-p, a grammar's
mask, and any further sampling parameter) lives here, so the scheduler knows only the seam.
A row is anything with ``handle`` (its :class:`~.requests.RequestHandle`: ``params`` and
``constraint``), ``tokens`` (the ids generated so far) and ``generator`` (a seeded
``torch.Generator`` or ``None``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from .requests import RequestHandle


class SamplingRow(Protocol):
    handle: RequestHandle
    tokens: list[int]
    generator: torch.Generator | None


def choose_tokens(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[int | BaseException]:
    """The next token of each row (``logits[i]`` belongs to ``rows[i]``), or the exception that
    row's choice raised (a failure belongs to that request alone).

    Greedy rows without a grammar share one argmax and one device-to-host copy.
    """
    plain = [
        i
        for i, row in enumerate(rows)
        if row.handle.params.temperature == 0 and row.handle.constraint is None
    ]
    out: list[int | BaseException] = [0] * len(rows)
    if plain:
        picked = logits.argmax(-1) if len(plain) == len(rows) else logits[plain].argmax(-1)
        for i, token in zip(plain, picked.tolist(), strict=True):
            out[i] = int(token)
    done = set(plain)
    for i, row in enumerate(rows):
        if i in done:
            continue
        try:
            out[i] = sample_one(row, logits[i].float())
        except Exception as exc:  # noqa: BLE001 - handed to this row's request
            out[i] = exc
    return out


def sample_one(row: SamplingRow, logits: torch.Tensor) -> int:
    """One row's token from its ``[vocab]`` fp32 logits: grammar mask, then greedy or
    temperature + top-p sampling with the row's generator."""
    p = row.handle.params
    if row.handle.constraint is not None:
        logits = row.handle.constraint.mask(logits)
    if p.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / p.temperature, -1).cpu()
    if p.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_p, -1)
        drop = cum - sorted_p > p.top_p  # keep the smallest set reaching top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=row.generator))


__all__ = ["SamplingRow", "choose_tokens", "sample_one"]
