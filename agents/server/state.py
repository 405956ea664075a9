"""The server's shared state: admission (the bounded queue), the router, the metrics."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Annotated, Any

from fastapi import Depends, Request

from loraroute.redact import Scrubber

from .backends import Backend, Target, _run
from .config import ServerConfig
from .errors import APIError
from .metrics import ServerMetrics
from .monitoring import DriftMonitor, decision_record, open_decision_log

logger = logging.getLogger(__name__)


class Admission:
    """The bounded queue: at most ``capacity`` batch rows admitted (running + waiting); a
    request takes one row per choice."""

    def __init__(self, concurrency: int, max_queue: int):
        self.concurrency = concurrency
        self.capacity = concurrency + max_queue
        self.inflight = 0
        self.latency_ewma = 1.0  # seconds per request, for Retry-After

    def admit(self, rows: int = 1) -> None:
        if self.inflight + rows > self.capacity:
            waiting = max(1, self.inflight - self.concurrency)
            retry = min(60, max(1, math.ceil(self.latency_ewma * waiting / self.concurrency)))
            raise APIError(
                429,
                f"the server is at capacity ({self.inflight} batch rows admitted, queue limit "
                f"{self.capacity}; this request needs {rows}); retry after {retry} s",
                code="queue_full",
                headers={"Retry-After": str(retry)},
            )
        self.inflight += rows

    def release(self, seconds: float | None, rows: int = 1) -> None:
        self.inflight -= rows
        if seconds is not None:
            self.latency_ewma = 0.9 * self.latency_ewma + 0.1 * seconds


class ServerState:
    """What the routes share: the config, the backend, the router, admission and metrics."""

    def __init__(self, config: ServerConfig, backend: Backend, router: Any, open_router: bool):
        self.config = config
        self.backend = backend
        self.router = router
        self.open_router = open_router and router is None
        self.router_error: str | None = None
        self.router_ready = router is not None or not self.open_router
        self.started = int(time.time())
        self.admission = Admission(config.max_concurrency or backend.concurrency, config.max_queue)
        self.metrics = ServerMetrics(self.stats, lambda: backend.base_model)
        self.jobs: set[Any] = set()  # streaming.Job objects in flight
        self.decisions: Any = None  # monitoring: the DecisionLog, once opened
        self.drift: Any = None  # monitoring: the DriftMonitor
        self._monitor: asyncio.Future[Any] | None = None
        # what error messages to clients must not show: the registry's URL and folders, ...
        private = getattr(backend, "private_strings", None)
        self.scrub = Scrubber(private() if private is not None else {})

    @property
    def max_choices(self) -> int:
        """Most choices (``n`` x prompts) one request may ask for: what admission can hold."""
        return max(1, min(128, self.admission.capacity))

    def stats(self) -> dict[str, Any]:
        s = dict(self.backend.stats())
        a = self.admission
        running = s.get("running")
        if running is None:
            running = min(a.inflight, a.concurrency)
        s.update(
            inflight=a.inflight,
            capacity=a.capacity,
            queue_depth=max(0, a.inflight - running),
        )
        started = [job.started() for job in list(self.jobs)]
        jobs = list(zip(list(self.jobs), started, strict=False))
        s["running_adapters"] = sorted({j.label for j, on in jobs if on and j.label != "base"})
        s["waiting_adapters"] = sorted({j.label for j, on in jobs if not on and j.label != "base"})
        return s

    async def load_router(self) -> None:
        if not self.open_router:
            return
        registry = self.backend.registry
        if registry is None:
            self.router_error = "no registry is configured, so model=auto answers with base"
            self.router_ready = True
            return
        try:
            from loraroute.router import Router

            self.router = await _run(Router.open, registry)
        except Exception as exc:  # noqa: BLE001 - reported by /ready and in every auto answer
            self.router_error = f"the router could not be opened: {type(exc).__name__}: {exc}"
            logger.warning("%s; model=auto answers with the base model", self.router_error)
        self.router_ready = True

    async def start_monitoring(self) -> None:
        """Open the decision log and start the drift figures (see :mod:`.monitoring`)."""
        cfg = self.config
        if not cfg.decision_log:
            return
        try:
            log = await _run(
                lambda: open_decision_log(
                    self.backend.registry,
                    keep_text=cfg.decision_log_text,
                    max_rows=cfg.decision_log_max_rows,
                )
            )
        except Exception as exc:  # noqa: BLE001 - serving goes on without the log
            logger.warning("routing decisions are not recorded: %s", self.scrub(str(exc)))
            return
        if log is None:
            return
        self.decisions = log
        if cfg.drift_interval > 0:
            self.drift = DriftMonitor(log, lambda: self.router, cfg.drift_interval)
            self.metrics.registry.register(self.drift)  # type: ignore[arg-type]
            self._monitor = asyncio.ensure_future(self.drift.run())

    async def stop_monitoring(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        if self.decisions is not None:
            await _run(self.decisions.close)

    async def target(self, model: str, messages: list[dict[str, Any]]) -> Target:
        low = model.strip().lower()
        if low in ("base", "none") or low in self.backend.base_names():
            return Target(model, None)
        if low != "auto":
            return Target(model, model.strip())
        if self.router is None:
            self.metrics.route_decisions.labels("base", "no_router", "true").inc()
            return Target(model, None, reason=self.router_error or "no_router")
        d = await _run(self.router.route, messages)
        if self.decisions is not None:  # queued for a background writer: never waits
            self.decisions.record(
                decision_record(d, messages, self.router, self.decisions.keep_text)
            )
        adapter = d.ref or d.adapter
        self.metrics.route_confidence.labels(adapter or "base").observe(float(d.confidence))
        self.metrics.route_decisions.labels(
            adapter or "base", d.reason or "routed", "false" if adapter else "true"
        ).inc()
        return Target(
            model,
            adapter,
            routed=True,
            reason=d.reason or None,
            score=float(d.score),
            confidence=float(d.confidence),
            alternatives=[[n, float(s)] for n, s in (d.alternatives or [])],
        )


def get_state(request: Request) -> ServerState:
    """The :class:`ServerState` of the app serving ``request`` (a FastAPI dependency)."""
    state: ServerState = request.app.state.lr
    return state


State = Annotated[ServerState, Depends(get_state)]  # a route's parameter: ``st: State``
