"""A running request as the scheduler sees it: its generated tokens, its text so far, and (on
the paged path) its place in the KV cache."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .requests import RequestHandle

TEXT_WINDOW = 32  # tokens decoded again at each step once the text has an anchor
EMIT_INTERVAL = 0.02  # seconds between a row's text deltas when it has no stop sequences


def text_decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """``tokenizer.decode(ids, skip_special_tokens=True)``, straight through the Rust tokenizer
    when that is all transformers would do (a fast tokenizer that cleans up no spaces): the
    same text for half the host time."""
    backend = getattr(tokenizer, "_tokenizer", None)
    plain = getattr(tokenizer, "clean_up_tokenization_spaces", True) is False
    if plain and backend is not None and hasattr(backend, "decode"):
        return functools.partial(backend.decode, skip_special_tokens=True)
    return functools.partial(tokenizer.decode, skip_special_tokens=True)


@dataclass(eq=False)
class Row:
    """One request in the batch. ``tokens`` are the generated ids (forced grammar tokens
    included); ``position`` is where the last chosen token will be fed."""

    handle: RequestHandle
    tokens: list[int] = field(default_factory=list)  # generated ids
    position: int = 0  # position of the next token fed to the model
    emitted: int = 0  # characters of text already streamed
    generator: torch.Generator | None = None
    # None while running; "stop", "length", "cancelled", "error" or ("stop", seq, at)
    done: Any = None
    error: BaseException | None = None  # why the row failed (done == "error")
    # text of tokens[:anchor], checked to be a prefix of the whole text (see text())
    anchor: int = 0
    anchor_text: str = ""
    anchor_try: int = 0  # the next length at which moving the anchor is tried
    emitted_at: float | None = None  # when text was last streamed (time.perf_counter())
    # the paged path: tokens whose keys are cached, the sequence's blocks, its block-table
    # row, the hashes of its full prompt blocks and how many of them are registered
    computed: int = 0
    blocks: list[int] = field(default_factory=list)
    table_row: int = 0
    hashes: list[int] = field(default_factory=list)
    registered: int = 0
    preempted: int = 0  # times its blocks were taken back for other rows

    @property
    def length(self) -> int:
        """Tokens of the sequence so far: the prompt, then the generated ones."""
        return len(self.handle.prompt_ids) + len(self.tokens)

    def token_at(self, start: int, stop: int) -> list[int]:
        """The sequence's tokens ``start:stop``."""
        prompt = self.handle.prompt_ids
        n = len(prompt)
        if stop <= n:
            return prompt[start:stop]
        if start >= n:
            return self.tokens[start - n : stop - n]
        return prompt[start:] + self.tokens[: stop - n]

    def text(self, decode: Callable[[list[int]], str]) -> str:
        """The generated text (``decode``: ids to text), decoding only the tokens after the
        anchor: once the tail grows past two windows the anchor moves up, if the text before
        the new anchor decodes on its own to the same characters (so the result equals
        decoding every token)."""
        tail = decode(self.tokens[self.anchor :])
        text = self.anchor_text + tail
        n = len(self.tokens)
        if n - self.anchor >= 2 * TEXT_WINDOW and n >= self.anchor_try:
            at = n - TEXT_WINDOW
            head = decode(self.tokens[:at])
            rest = decode(self.tokens[at:])
            if not head.endswith("\ufffd") and head + rest == text:
                self.anchor, self.anchor_text = at, head
            else:  # try again a window later, not at every token
                self.anchor_try = n + TEXT_WINDOW
        return text


def holdback(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might still become a stop sequence."""
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                keep = max(keep, n)
                break
    return keep


__all__ = ["EMIT_INTERVAL", "Row", "holdback", "text_decoder"]
