"""Generation requests and their handles: results, streaming (sync and async), cancellation."""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import RequestCancelledError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; every field means what vLLM's field of the same name means.

    ``temperature=0`` is greedy; a ``seed`` makes sampling repeatable. ``top_k`` (0 or -1: off),
    ``min_p`` (0: off) and ``top_p`` narrow the sampled set. ``repetition_penalty`` (1: off)
    divides the logits of tokens already in the prompt or the answer (multiplies them when
    negative); ``presence_penalty`` and ``frequency_penalty`` (-2..2) subtract from the logits
    of tokens already generated, once and per occurrence. ``logit_bias`` adds to the logits of
    given token ids; ``allowed_token_ids`` keeps only those. ``stop_token_ids`` end the answer
    when generated (kept in the ids; their text too unless they are special tokens);
    ``min_tokens`` forbids EOS and the stop token ids until that many tokens were generated;
    ``ignore_eos`` never stops at EOS. ``logprobs`` (``None``: off) records each generated
    token's log-probability under the model's raw distribution and that many alternatives.

    Example::

        >>> SamplingParams(temperature=0.7, top_k=40, stop_token_ids=[2]).top_k
        40
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    allowed_token_ids: tuple[int, ...] | None = None
    stop_token_ids: tuple[int, ...] = ()
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")

        check(self.max_new_tokens >= 1, "max_new_tokens", "at least 1")
        check(math.isfinite(self.temperature) and self.temperature >= 0, "temperature", ">= 0")
        check(0 < self.top_p <= 1, "top_p", "in (0, 1]")
        check(self.top_k >= -1, "top_k", "-1, 0 (off) or a positive count")
        check(0 <= self.min_p <= 1, "min_p", "in [0, 1]")
        check(
            math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0,
            "repetition_penalty",
            "> 0 (1: off)",
        )
        for name in ("presence_penalty", "frequency_penalty"):
            check(-2 <= getattr(self, name) <= 2, name, "in [-2, 2]")
        check(self.min_tokens >= 0, "min_tokens", ">= 0")
        check(self.logprobs is None or self.logprobs >= 0, "logprobs", "None or >= 0")
        bias = self.logit_bias
        pairs = tuple(
            (int(k), float(v)) for k, v in (bias.items() if isinstance(bias, Mapping) else bias)
        )
        for token, value in pairs:
            if token < 0 or not -100 <= value <= 100:
                raise ValueError(
                    f"logit_bias maps token ids >= 0 to values in [-100, 100], got {token}: {value}"
                )
        object.__setattr__(self, "logit_bias", pairs)
        object.__setattr__(self, "stop", tuple(s for s in (self.stop or ()) if s))
        for name in ("stop_token_ids", "allowed_token_ids"):
            ids = getattr(self, name)
            if ids is None:
                continue
            ids = tuple(int(t) for t in ids)
            if any(t < 0 for t in ids):
                raise ValueError(f"{name} holds token ids >= 0, got {list(ids)}")
            object.__setattr__(self, name, ids)
        if self.allowed_token_ids is not None and not self.allowed_token_ids:
            raise ValueError("allowed_token_ids must name at least one token (or be None)")

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing to apply to the logits: the argmax of the model's logits."""
        return (
            self.temperature == 0
            and self.repetition_penalty == 1
            and not self.presence_penalty
            and not self.frequency_penalty
            and not self.logit_bias
            and self.allowed_token_ids is None
            and not self.min_tokens
            and not self.ignore_eos
            and self.logprobs is None
        )

    def max_token_id(self) -> int:
        """The largest token id the parameters name (-1: none), to check against a vocabulary."""
        ids = [t for t, _ in self.logit_bias] + list(self.stop_token_ids)
        ids += list(self.allowed_token_ids or ())
        return max(ids, default=-1)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model's raw distribution, and the most
    likely alternatives at that step (``top``: ``(token id, logprob)``, best first)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Generation:
    """The result of one request."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS, a stop sequence or token), "length" or "cancelled"
    adapter_ref: str | None
    adapter_digest: str | None
    truncated_turns: int = 0
    stop_sequence: str | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None  # one per token id, when params.logprobs is set

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RequestHandle:
    """A submitted request: ``result()``, iterate for text deltas, ``cancel()``; async forms too.

    Example::

        >>> h = engine.submit([{"role": "user", "content": "hi"}])  # doctest: +SKIP
        >>> for delta in h: print(delta, end="")  # doctest: +SKIP
    """

    id: int
    prompt_ids: list[int]
    slot: int
    adapter_ref: str | None
    adapter_digest: str | None
    params: SamplingParams
    truncated_turns: int = 0
    constraint: Any = field(default=None, repr=False)  # a constrained.TokenConstraint
    eos_ids: frozenset[int] = field(default=frozenset(), repr=False)  # the model's EOS ids
    # perf_counter times: queued, taken into the batch (prefill starts), each token chosen
    submitted_at: float = field(default_factory=time.perf_counter, repr=False)
    scheduled_at: float | None = field(default=None, repr=False)
    token_times: list[float] = field(default_factory=list, repr=False)
    _logprobs: list[TokenLogprob] = field(default_factory=list, repr=False)
    _on_finish: Callable[[RequestHandle], None] | None = field(default=None, repr=False)
    _lock: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _deltas: list[str] = field(default_factory=list, repr=False)
    _listeners: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _result: Generation | None = field(default=None, repr=False)
    _error: BaseException | None = field(default=None, repr=False)
    _finished: bool = field(default=False, repr=False)
    cancelled: bool = False

    @property
    def first_token_at(self) -> float | None:
        """When the first token was chosen (``time.perf_counter()``), for TTFT figures."""
        return self.token_times[0] if self.token_times else None

    # -- worker side ---------------------------------------------------------------------
    def _emit(self, delta: str) -> None:
        with self._lock:
            self._deltas.append(delta)
            listeners = list(self._listeners)
            self._lock.notify_all()
        for fn in listeners:
            fn()

    def mark_scheduled(self) -> None:
        """The scheduler took this request into the batch (its prefill starts now)."""
        if self.scheduled_at is None:
            self.scheduled_at = time.perf_counter()

    def _finish(self, result: Generation | None, error: BaseException | None = None) -> None:
        if result is not None and self.params.logprobs is not None:
            # a choice the scheduler did not keep (EOS, a cancelled row) has no token
            result.logprobs = self._logprobs[: len(result.token_ids)]
        with self._lock:
            if self._finished:
                return
            self._result, self._error, self._finished = result, error, True
            listeners = list(self._listeners)
            self._lock.notify_all()
        if self._on_finish is not None:
            self._on_finish(self)
        for fn in listeners:
            fn()

    # -- caller side ---------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the scheduler to stop this request; its batch slot is freed at the next step."""
        self.cancelled = True

    def done(self) -> bool:
        return self._finished

    def logprobs_so_far(self) -> list[TokenLogprob]:
        """Log-probabilities of tokens surely kept: all recorded but the newest, which may
        still be an EOS the scheduler drops (``result().logprobs`` has the final list)."""
        return self._logprobs[: max(0, len(self._logprobs) - 1)]

    def result(self, timeout: float | None = None) -> Generation:
        """Wait for the request; raises what the worker raised, or TimeoutError."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._finished, timeout):
                raise TimeoutError(f"request {self.id} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise RequestCancelledError(f"request {self.id} was cancelled")
        return self._result

    def _has_more(self, seen: int) -> bool:
        return self._finished or len(self._deltas) > seen

    def __iter__(self) -> Iterator[str]:
        i = 0
        while True:
            with self._lock:
                self._lock.wait_for(functools.partial(self._has_more, i))
                new = self._deltas[i:]
                finished = self._finished
            i += len(new)
            yield from new
            if finished and i >= len(self._deltas):
                break
        if self._error is not None:
            raise self._error

    async def aresult(self) -> Generation:
        async for _ in self.astream():
            pass
        return self.result(timeout=0)

    async def astream(self) -> AsyncIterator[str]:
        """Text deltas as they come, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(event.set)

        with self._lock:
            self._listeners.append(wake)
        try:
            i = 0
            while True:
                event.clear()
                with self._lock:
                    new = self._deltas[i:]
                    finished = self._finished
                i += len(new)
                for delta in new:
                    yield delta
                if finished and i >= len(self._deltas):
                    break
                await event.wait()
        except asyncio.CancelledError:
            self.cancel()
            raise
        finally:
            with self._lock:
                self._listeners.remove(wake)
        if self._error is not None:
            raise self._error
