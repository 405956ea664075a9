"""CUDA graphs of a decode step, one per shape key, over the caller's static buffers.

A graph bakes in every tensor address and shape, so the callers (the dense path's
:class:`~.static_decode.StaticDecoder` and the paged path's
:class:`~.paged.runner.DecodeGraphs`) keep their inputs in preallocated buffers and name each
shape with a key (row bucket, LoRA tile bucket). The first step at a key runs eagerly on a side
stream (its result is that step's), then is recorded; later steps at the key replay it. A few
keys are kept, least recently used dropped. If recording fails the step's eager result stands
and a later step at the key tries again: a failure can be passing (work another thread issued
at that moment); after :data:`MAX_FAILURES` of them the owner runs eagerly from then on
(:attr:`StepGraphs.failed`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)

MAX_FAILURES = 3  # failed recordings before graphs are off for the owner's life


class StepGraphs:
    """Recorded graphs of ``forward(b, lora)``, keyed by shape."""

    def __init__(
        self,
        device: torch.device,
        forward: Callable[[int, bool], torch.Tensor],
        *,
        limit: int,
        what: str,
    ):
        self.device = device
        self.forward = forward
        self.limit = limit
        self.what = what  # for the log line when recording fails
        self.failures = 0  # failed recordings (graphs are off at MAX_FAILURES)
        self.captures = 0  # graphs recorded (for tests and stats)
        self.replays = 0
        self._recorded: OrderedDict[tuple, tuple[Any, torch.Tensor]] = OrderedDict()
        self._pool: Any = None
        self._side: Any = None  # the stream of the eager run before a recording

    def run(
        self, key: tuple, b: int, lora: bool, before_replay: Callable[[], None]
    ) -> torch.Tensor:
        """The step's logits: replayed when ``key`` was recorded (``before_replay`` first, to
        wait for pending copies), else run eagerly and recorded."""
        entry = self._recorded.get(key)
        if entry is None:
            return self._record(key, b, lora)
        self._recorded.move_to_end(key)
        before_replay()
        graph, out = entry
        graph.replay()
        self.replays += 1
        return out

    def _record(self, key: tuple, b: int, lora: bool) -> torch.Tensor:
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        stream = self._side
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            logits = self.forward(b, lora).clone()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        try:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                out = self.forward(b, lora)
        except Exception:  # noqa: BLE001 - the step's result stands; a later step tries again
            self.failures += 1
            logger.exception(
                "recording a CUDA graph of the %s failed (%d of %d); %s",
                self.what, self.failures, MAX_FAILURES,
                "graphs are off" if self.failed else "a later step tries again",
            )  # fmt: skip
            self.drop()
            return logits
        self._recorded[key] = (graph, out)
        self.captures += 1
        while len(self._recorded) > self.limit:
            self._recorded.popitem(last=False)
        return logits

    @property
    def failed(self) -> bool:
        """Recording failed :data:`MAX_FAILURES` times: the owner runs eagerly from now on."""
        return self.failures >= MAX_FAILURES

    def drop(self) -> None:
        """Forget every graph (the buffers they read were reallocated or rewired)."""
        self._recorded.clear()
        # a memory pool whose graphs are all gone cannot take another recording: a new one
        self._pool = None


class GraphedSteps:
    """What an owner of :class:`StepGraphs` shows: ``_graphs`` asked for (and possible),
    ``_steps`` its graphs."""

    _graphs: bool
    _steps: StepGraphs

    @property
    def graphs(self) -> bool:
        """Steps are recorded and replayed as CUDA graphs (CUDA only; off after a failure)."""
        return self._graphs and not self._steps.failed

    @property
    def captures(self) -> int:
        return self._steps.captures

    @property
    def replays(self) -> int:
        return self._steps.replays

    @property
    def failures(self) -> int:
        return self._steps.failures


__all__ = ["MAX_FAILURES", "GraphedSteps", "StepGraphs"]
