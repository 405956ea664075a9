"""Generation requests and their handles: results, streaming (sync and async), cancellation."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import RequestCancelledError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature=0`` is greedy; a ``seed`` makes sampling repeatable."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "stop", tuple(s for s in (self.stop or ()) if s))


@dataclass
class Generation:
    """The result of one request."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop sequence), "length" or "cancelled"
    adapter_ref: str | None
    adapter_digest: str | None
    truncated_turns: int = 0
    stop_sequence: str | None = None
    token_ids: list[int] = field(default_factory=list)

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
    _on_finish: Callable[[RequestHandle], None] | None = field(default=None, repr=False)
    _lock: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _deltas: list[str] = field(default_factory=list, repr=False)
    _listeners: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _result: Generation | None = field(default=None, repr=False)
    _error: BaseException | None = field(default=None, repr=False)
    _finished: bool = field(default=False, repr=False)
    cancelled: bool = False

    # -- worker side ---------------------------------------------------------------------
    def _emit(self, delta: str) -> None:
        with self._lock:
            self._deltas.append(delta)
            listeners = list(self._listeners)
            self._lock.notify_all()
        for fn in listeners:
            fn()

    def _finish(self, result: Generation | None, error: BaseException | None = None) -> None:
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
