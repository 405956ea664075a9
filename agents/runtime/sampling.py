"""Choosing each running row's next token from one decode step's logits.

The scheduler calls :func:`choose_tokens` once a step with the step's ``[rows, vocab]`` logits
and its rows; everything about how a token is picked lives here, so the scheduler knows only
the seam. For each row, in vLLM's order: the grammar's mask, ``allowed_token_ids``,
``logit_bias``, the EOS / stop-token ban of ``min_tokens`` and ``ignore_eos``, the repetition,
presence and frequency penalties; then greedy, or temperature, ``min_p``, ``top_k``, ``top_p``
and a draw with the row's generator. When the request asks for ``logprobs``, the chosen
token's log-probability and the top alternatives under the model's raw distribution (before
any of the above, as vLLM's default ``raw_logprobs``) are recorded on the request's handle;
so is the time each token was chosen (for time-to-first-token and inter-token latency).

A row is anything with ``handle`` (its :class:`~.requests.RequestHandle`: ``params``,
``constraint``, ``prompt_ids``, ``eos_ids``), ``tokens`` (the ids generated so far) and
``generator`` (a seeded ``torch.Generator`` or ``None``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import torch

from .requests import RequestHandle, TokenLogprob

# positions scored at once by prompt_logprobs (bounds the fp32 copy of the logits)
_SCORE_CHUNK = 256


class SamplingRow(Protocol):
    handle: RequestHandle
    tokens: list[int]
    generator: torch.Generator | None


def choose_tokens(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[int | BaseException]:
    """The next token of each row (``logits[i]`` belongs to ``rows[i]``), or the exception that
    row's choice raised (a failure belongs to that request alone).

    Greedy rows with nothing to apply to their logits share one argmax and one device-to-host
    copy.
    """
    plain = [
        i
        for i, row in enumerate(rows)
        if row.handle.params.plain_greedy and row.handle.constraint is None
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
    now = time.perf_counter()
    for row in rows:
        row.handle.token_times.append(now)
    return out


def sample_one(row: SamplingRow, logits: torch.Tensor) -> int:
    """One row's token from its ``[vocab]`` fp32 logits (see the module docstring)."""
    h = row.handle
    p = h.params
    raw = logits
    if h.constraint is not None:
        logits = h.constraint.mask(logits)
    logits = process_logits(row, logits)
    token = int(torch.argmax(logits)) if p.temperature == 0 else _draw(row, logits)
    if p.logprobs is not None:
        _record_logprob(row, raw, token)
    return token


def process_logits(row: SamplingRow, logits: torch.Tensor) -> torch.Tensor:
    """``logits`` after the row's allowed ids, bias, EOS bans and penalties (a new tensor when
    anything applies; ``logits`` itself otherwise)."""
    h = row.handle
    p = h.params
    vocab = logits.shape[-1]
    if p.allowed_token_ids is not None:
        keep = torch.full_like(logits, float("-inf"))
        ids = torch.tensor([t for t in p.allowed_token_ids if t < vocab], device=logits.device)
        logits = keep.index_copy(0, ids, logits.index_select(0, ids))
    if p.logit_bias:
        ids = torch.tensor([t for t, _ in p.logit_bias], device=logits.device)
        bias = torch.tensor([b for _, b in p.logit_bias], device=logits.device, dtype=logits.dtype)
        logits = logits.index_add(0, ids, bias)
    banned = set()
    if p.ignore_eos or len(row.tokens) < p.min_tokens:
        banned |= set(h.eos_ids)
    if len(row.tokens) < p.min_tokens:
        banned |= set(p.stop_token_ids)
    if banned:
        logits = logits.index_fill(
            0, torch.tensor(sorted(banned), device=logits.device), float("-inf")
        )
    if p.repetition_penalty != 1:
        seen = torch.tensor(list(h.prompt_ids) + list(row.tokens), device=logits.device)
        seen = seen.unique()
        vals = logits.index_select(0, seen)
        vals = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        logits = logits.index_copy(0, seen, vals)
    if (p.presence_penalty or p.frequency_penalty) and row.tokens:
        counts = torch.bincount(torch.tensor(row.tokens, device=logits.device), minlength=vocab).to(
            logits.dtype
        )[:vocab]
        logits = logits - p.frequency_penalty * counts - p.presence_penalty * (counts > 0)
    return logits


def _draw(row: SamplingRow, logits: torch.Tensor) -> int:
    """A token drawn from ``softmax(logits / temperature)`` narrowed by min_p, top_k and top_p
    (vLLM's order; with top_k only its candidates are sorted and drawn from)."""
    p = row.handle.params
    probs = torch.softmax(logits / p.temperature, -1)
    ids = None
    if 0 < p.top_k < probs.shape[-1]:
        probs, ids = torch.topk(probs, p.top_k)  # best first
    elif p.top_p < 1.0:
        probs, ids = torch.sort(probs, descending=True)
    if p.min_p > 0:
        probs = torch.where(probs < p.min_p * probs.max(), torch.zeros_like(probs), probs)
    if p.top_p < 1.0:  # keep the smallest best-first set reaching top_p
        share = probs / probs.sum()
        probs = torch.where(torch.cumsum(share, -1) - share > p.top_p, 0.0, probs)
    choice = int(torch.multinomial(probs.cpu(), 1, generator=row.generator))
    return choice if ids is None else int(ids[choice])


def _record_logprob(row: SamplingRow, raw: torch.Tensor, token: int) -> None:
    h = row.handle
    record = h._logprobs
    # tokens the grammar forced into the prompt's forward were never chosen here: they had
    # no alternative, so probability 1 under the constraint
    for forced in row.tokens[len(record) :]:
        record.append(TokenLogprob(int(forced), 0.0, ((int(forced), 0.0),)))
    record.append(token_logprob(torch.log_softmax(raw, -1), token, h.params.logprobs or 0))


def token_logprob(logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """The entry of ``token`` in one position's ``[vocab]`` log-probabilities, with ``top``
    alternatives."""
    chosen = float(logprobs[token])
    if top <= 0:
        return TokenLogprob(token, chosen)
    values, ids = torch.topk(logprobs, min(top, logprobs.shape[-1]))
    alts = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token, chosen, tuple((int(i), float(v)) for i, v in alts))


def prompt_logprobs(
    logits: torch.Tensor, ids: Sequence[int], top: int
) -> list[TokenLogprob | None]:
    """Log-probabilities of each prompt token given the ones before it, from one forward's
    ``[len(ids), vocab]`` logits (what ``echo`` with ``logprobs`` returns; the first token has
    no context: ``None``)."""
    out: list[TokenLogprob | None] = [None]
    following = torch.tensor(list(ids[1:]), device=logits.device)
    for start in range(0, len(ids) - 1, _SCORE_CHUNK):
        nxt = following[start : start + _SCORE_CHUNK]
        chunk = torch.log_softmax(logits[start : start + len(nxt)].float(), -1)
        chosen = chunk.gather(1, nxt[:, None])[:, 0].tolist()
        if top > 0:
            values, alt = torch.topk(chunk, min(top, chunk.shape[-1]), -1)
            tops = [
                tuple(zip(i, v, strict=True))
                for i, v in zip(alt.tolist(), values.tolist(), strict=True)
            ]
        else:
            tops = [()] * len(chosen)
        out += [
            TokenLogprob(int(t), float(lp), alts)
            for t, lp, alts in zip(nxt.tolist(), chosen, tops, strict=True)
        ]
    return out


__all__ = [
    "SamplingRow",
    "choose_tokens",
    "process_logits",
    "prompt_logprobs",
    "sample_one",
    "token_logprob",
]
