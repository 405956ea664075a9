"""Continuous evaluation: the server records its routing decisions and watches them drift.

With ``decision_log`` on (``LORAROUTE_DECISION_LOG``, the default) and a registry that has a
database (SQLite or PostgreSQL; an HTTP registry's database is not reachable from here), each
``model="auto"`` decision goes to the registry's ``lr_route_decision`` table through
:class:`~loraroute.registry.decisions.DecisionLog` (a background writer: a request never waits
for the database). Every ``drift_interval`` seconds :class:`DriftMonitor` compares the newest
500 decisions with the 5,000 before them (:mod:`loraroute.router.drift`) in a worker thread
and ``/metrics`` shows the figures as ``loraroute_drift_*`` gauges, the same ones
``adapters drift`` prints; the log's own counters are ``loraroute_decision_log_*``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from loraroute.messages import user_turns

logger = logging.getLogger(__name__)


def open_decision_log(registry: Any, *, keep_text: bool, max_rows: int) -> Any:
    """A :class:`DecisionLog` over ``registry``'s database, or None (no database here)."""
    url = getattr(registry, "url", None)
    if not isinstance(url, str) or not url or url.startswith(("http://", "https://")):
        logger.info(
            "routing decisions are not recorded: the registry has no database here (an HTTP "
            "registry records nothing; run adapters serve with the database URL to record)"
        )
        return None
    from loraroute.registry.decisions import DecisionLog

    return DecisionLog.open(url, keep_text=keep_text, max_rows=max_rows)


def decision_record(decision: Any, messages: list[dict[str, Any]], router: Any, text: bool) -> Any:
    """What the log keeps of one :class:`~loraroute.router.RouteDecision`."""
    from loraroute.registry.decisions import DecisionRecord

    said = None
    if text:
        try:
            turns = user_turns(messages)
            said = turns[-1] if turns else None
        except Exception:  # noqa: BLE001 - the text is optional; the decision is still kept
            said = None
    encoder = getattr(getattr(router, "encoder", None), "name", None)
    return DecisionRecord(
        adapter=decision.ref or decision.adapter,
        best=decision.best,
        score=float(decision.score),
        margin=decision.margin,
        confidence=float(decision.confidence),
        reason=decision.reason or "",
        encoder=encoder,
        embedding=decision.embedding,
        text=said,
    )


class DriftMonitor:
    """Periodic drift figures over the decision log, as Prometheus gauges (a collector)."""

    def __init__(
        self,
        log: Any,
        router: Callable[[], Any],
        interval: float,
        *,
        recent: int | None = None,
        reference: int | None = None,
    ) -> None:
        from loraroute.router.drift import DEFAULT_RECENT, DEFAULT_REFERENCE

        self.log = log
        self._router = router
        self.interval = interval
        self.recent = recent or DEFAULT_RECENT
        self.reference = reference or DEFAULT_REFERENCE
        self.report: Any = None
        self.computed_at: float | None = None
        self.error: str | None = None

    def compute(self) -> Any:
        """Compare the windows now (blocking: database reads and a matrix product)."""
        from loraroute.router.drift import from_log

        try:
            windows = from_log(
                self.log, self._router(), recent=self.recent, reference=self.reference
            )
        except Exception as exc:  # noqa: BLE001 - reported in the log; the server carries on
            self.error = f"{type(exc).__name__}: {exc}"
            logger.warning("drift figures could not be computed: %s", self.error)
            return None
        self.report, self.computed_at, self.error = windows.report, time.time(), None
        if self.report.drifted:
            logger.warning("routing drift: %s", "; ".join(self.report.alarms))
        return self.report

    async def run(self) -> None:
        from .backends import _run

        while True:
            await _run(self.compute)
            await asyncio.sleep(self.interval)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.log.stats()
        for key, doc in (
            ("recorded", "Routing decisions written to the registry database"),
            ("dropped", "Routing decisions dropped because the writer's queue was full"),
            ("failed", "Routing decisions lost to database errors"),
        ):
            yield CounterMetricFamily(f"loraroute_decision_log_{key}", doc, value=stats[key])
        r = self.report
        if r is None:
            return
        g = GaugeMetricFamily
        share = g(
            "loraroute_drift_traffic_share",
            "Share of model=auto requests per adapter (base: the fallback), by window",
            labels=["adapter", "window"],
        )
        for name, row in r.share.items():
            share.add_metric([name, "reference"], row["reference"])
            share.add_metric([name, "recent"], row["recent"])
        yield share
        fb = g("loraroute_drift_fallback_rate", "Fallback (base model) rate", labels=["window"])
        fb.add_metric(["reference"], r.fallback_rate["reference"])
        fb.add_metric(["recent"], r.fallback_rate["recent"])
        yield fb
        n = g("loraroute_drift_window_decisions", "Decisions in each window", labels=["window"])
        n.add_metric(["reference"], r.reference_n)
        n.add_metric(["recent"], r.recent_n)
        yield n
        for key, name, doc in (
            ("psi", "loraroute_drift_score_psi", "Population stability index of the score"),
            ("ks_statistic", "loraroute_drift_score_ks_statistic", "KS statistic of the score"),
            ("ks_pvalue", "loraroute_drift_score_ks_pvalue", "KS test p-value of the score"),
        ):
            if r.score[key] is not None:
                yield g(name, doc, value=r.score[key])
        dist = g(
            "loraroute_drift_example_distance",
            "Mean distance (1 - cosine) to the nearest routing example, by window",
            labels=["window"],
        )
        for window in ("reference", "recent"):
            if r.distance[window] is not None:
                dist.add_metric([window], r.distance[window])
        yield dist
        yield g(
            "loraroute_drift_alarm",
            "1 when a drift figure is past its threshold (see adapters drift), else 0",
            value=1.0 if r.drifted else 0.0,
        )
        yield g(
            "loraroute_drift_computed_timestamp_seconds",
            "When the drift figures were computed",
            value=self.computed_at or 0.0,
        )

    def describe(self) -> list[Any]:
        return []
