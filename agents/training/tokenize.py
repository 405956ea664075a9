"""Render conversations with the tokenizer's chat template and label assistant tokens only.

Assistant spans are found by rendering, for each assistant turn, the conversation up to that
turn with the generation prompt and the conversation including the turn: the characters in
between are the turn as the model must produce it (content plus end-of-turn token). The whole
conversation is tokenized once and a token is labelled when its character offsets overlap a
span, so BPE merges across a boundary cannot shift the labels. This works for any
prefix-stable template (ChatML, SmolLM2, Llama 3) and does not need ``{% generation %}`` blocks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import TrainingError
from .data import ChatExample

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


@dataclass
class EncodeReport:
    examples: int = 0
    truncated: int = 0
    dropped: int = 0  # over-long with the "drop" policy, or nothing left to learn after truncation
    tokens: int = 0
    labelled_tokens: int = 0
    dropped_lines: list[int] = field(default_factory=list)
    truncated_lines: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "truncated_examples": self.truncated,
            "dropped_examples": self.dropped,
            "tokens": self.tokens,
            "labelled_tokens": self.labelled_tokens,
        }


def _render(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def assistant_char_spans(
    tokenizer: Any, messages: list[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """Return the rendered conversation and the ``[start, end)`` characters of each assistant turn.

    A span ends just after the end-of-turn token (``eos``) when the template writes one, so the
    newline a template puts between turns is not learned.
    """
    full = _render(tokenizer, messages, generation_prompt=False)
    eos = tokenizer.eos_token or ""
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise TrainingError(
                "the tokenizer's chat template is not prefix-stable (rendering the first turns "
                "alone differs from the start of the whole conversation), so assistant tokens "
                "cannot be located; use a template without look-ahead (e.g. ChatML)"
            )
        start, end = len(before), len(upto)
        if eos:
            cut = full.rfind(eos, start, end)
            if cut >= start:
                end = cut + len(eos)
        spans.append((start, end))
    return full, spans


def encode_example(tokenizer: Any, example: ChatExample) -> Encoded:
    """Token ids of the whole conversation; labels are the ids on assistant turns, -100 elsewhere."""
    text, spans = assistant_char_spans(tokenizer, example.as_dicts())
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        for s, e in spans:
            if a < e and b > s:
                labels[t] = ids[t]
                break
    return Encoded(ids, labels)


Overlong = Literal["middle", "truncate", "drop"]


def shorten(enc: Encoded, max_length: int, overlong: Overlong) -> Encoded:
    """Cut ``enc`` to ``max_length`` tokens (``overlong`` is ``"middle"`` or ``"truncate"``).

    ``"truncate"`` keeps the first ``max_length`` tokens. ``"middle"`` keeps the answer: it
    removes tokens from the middle of the prompt (everything before the first assistant token),
    keeping the prompt's start (system, instructions) and its end (the last words of the
    request and the assistant header); only when the answer alone needs more than half of
    ``max_length`` is the prompt cut to that half and the answer's end truncated.
    """
    ids, labels = enc.input_ids, enc.labels
    if len(ids) <= max_length:
        return enc
    if overlong == "middle":
        first = next((i for i, lab in enumerate(labels) if lab != IGNORE_INDEX), len(ids))
        budget = max(first - (len(ids) - max_length), min(first, max_length // 2))
        if budget < first:
            head = budget // 2
            tail = budget - head
            ids = ids[:head] + ids[first - tail :]
            labels = labels[:head] + labels[first - tail :]
    return Encoded(ids[:max_length], labels[:max_length])


def encode_all(
    tokenizer: Any,
    examples: list[ChatExample],
    *,
    max_length: int,
    overlong: Overlong = "middle",
) -> tuple[list[Encoded], EncodeReport]:
    """Encode every example, applying the over-long policy; the report counts what happened."""
    report = EncodeReport()
    out: list[Encoded] = []
    for ex in examples:
        enc = encode_example(tokenizer, ex)
        if len(enc.input_ids) > max_length:
            if overlong == "drop":
                report.dropped += 1
                report.dropped_lines.append(ex.line)
                continue
            enc = shorten(enc, max_length, overlong)
            if all(label == IGNORE_INDEX for label in enc.labels):
                report.dropped += 1  # the assistant turn starts past max_length
                report.dropped_lines.append(ex.line)
                continue
            report.truncated += 1
            report.truncated_lines.append(ex.line)
        out.append(enc)
        report.examples += 1
        report.tokens += len(enc.input_ids)
        report.labelled_tokens += sum(label != IGNORE_INDEX for label in enc.labels)
    if report.truncated or report.dropped:
        logger.warning(
            "%d example(s) longer than max_length=%d tokens: %d truncated, %d dropped (lines %s)",
            report.truncated + report.dropped,
            max_length,
            report.truncated,
            report.dropped,
            ", ".join(map(str, (report.truncated_lines + report.dropped_lines)[:10])),
        )
    return out, report


def pack(encoded: list[Encoded], max_length: int) -> list[Encoded]:
    """Greedily concatenate whole examples into sequences of at most ``max_length`` tokens.

    Examples are not split; labels keep their -100 masks, so only assistant tokens are learned.
    """
    bins: list[Encoded] = []
    cur = Encoded([], [])
    for enc in encoded:
        if cur.input_ids and len(cur.input_ids) + len(enc.input_ids) > max_length:
            bins.append(cur)
            cur = Encoded([], [])
        cur.input_ids.extend(enc.input_ids)
        cur.labels.extend(enc.labels)
    if cur.input_ids:
        bins.append(cur)
    return bins


class PadCollator:
    """Right-pad a batch: ids with ``pad_id``, labels with -100, attention mask 0."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class EncodedDataset:
    """A map-style dataset over encoded examples (what ``Trainer`` and ``DataLoader`` take)."""

    def __init__(self, items: list[Encoded]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        item = self.items[i]
        return {"input_ids": item.input_ids, "labels": item.labels}
