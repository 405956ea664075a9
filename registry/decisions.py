"""The routing-decision log: what a server's router decided, kept in the registry's database.

A server records each ``model="auto"`` decision (:class:`DecisionRecord`) with
:meth:`DecisionLog.record`, which only puts it on a bounded queue: a background thread writes
the queue in batches, so a request never waits for the database; when the queue is full the
record is dropped and counted (:attr:`DecisionLog.dropped`). The table is bounded: after every
``prune_every`` written rows the writer deletes all but the newest ``max_rows``. Embeddings are
stored as float32 bytes; the request's text only when the operator opted in
(``LORAROUTE_DECISION_LOG_TEXT``). :meth:`DecisionLog.read` returns a window of decisions, by
count or by time, for :mod:`loraroute.router.drift`.

Example::

    >>> log = DecisionLog.open("sqlite:////tmp/reg/registry.db")  # doctest: +SKIP
    >>> log.record(DecisionRecord(adapter="legal@1", best="legal", score=0.8))  # doctest: +SKIP
    >>> log.flush(); log.read(last=500)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import Engine, delete, func, insert, null, select

from loraroute.redact import redact_text, redact_url

from ._db import make_engines
from .errors import RegistryError
from .migrate import ensure_schema
from .tables import RouteDecisionRow

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 100_000
DEFAULT_QUEUE_SIZE = 10_000
_T = RouteDecisionRow.__table__  # type: ignore[attr-defined]


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class DecisionRecord:
    """One routing decision as logged. ``adapter`` None: the base model answered (a fallback);
    ``embedding``: the request's vector (float32), ``encoder`` the model that made it."""

    adapter: str | None
    best: str | None
    score: float
    margin: float | None = None
    confidence: float | None = None
    reason: str = ""
    encoder: str | None = None
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)
    text: str | None = field(default=None, repr=False)
    at: datetime = field(default_factory=_now)

    @property
    def fallback(self) -> bool:
        return self.adapter is None

    @property
    def route(self) -> str:
        """The adapter's name (``legal`` for ``legal@3``), or ``base`` for a fallback."""
        return "base" if self.adapter is None else self.adapter.split("@", 1)[0]

    def _row(self) -> dict[str, Any]:
        emb = None
        if self.embedding is not None:
            emb = np.ascontiguousarray(self.embedding, dtype="<f4").tobytes()
        return {
            "at": self.at,
            "adapter": None if self.adapter is None else self.adapter[:200],
            "best": None if self.best is None else self.best[:128],
            "reason": (self.reason or "")[:32],
            "score": float(self.score),
            "margin": None if self.margin is None else float(self.margin),
            "confidence": None if self.confidence is None else float(self.confidence),
            "encoder": None if self.encoder is None else self.encoder[:200],
            "embedding": emb,
            "text": self.text,
        }


def _first(exc: Exception) -> str:
    return redact_text((str(exc).splitlines() or [type(exc).__name__])[0])


def _from_row(row: Any) -> DecisionRecord:
    at = row.at if row.at.tzinfo else row.at.replace(tzinfo=timezone.utc)
    emb = None if row.embedding is None else np.frombuffer(row.embedding, dtype="<f4")
    return DecisionRecord(
        adapter=row.adapter,
        best=row.best,
        score=row.score,
        margin=row.margin,
        confidence=row.confidence,
        reason=row.reason,
        encoder=row.encoder,
        embedding=emb,
        text=row.text,
        at=at,
    )


class DecisionLog:
    """Records routing decisions off the request path and reads windows of them back.

    ``max_rows``: the most rows kept (the oldest are deleted in batches of about
    ``prune_every``); ``queue_size``: records waiting for the writer before new ones are
    dropped; ``keep_text``: store the request's text (else it is never written).
    """

    def __init__(
        self,
        write: Engine,
        read: Engine | None = None,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        keep_text: bool = False,
        batch_size: int = 256,
        prune_every: int | None = None,
        where: str = "",
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self._write, self._read = write, read or write
        self.max_rows = int(max_rows)
        self.keep_text = keep_text
        self.batch_size = batch_size
        self.prune_every = prune_every or max(1, min(10_000, self.max_rows // 10))
        self.where = where or "the registry database"
        self._queue: queue.Queue[DecisionRecord | None] = queue.Queue(maxsize=max(1, queue_size))
        self._lock = threading.Lock()
        self._since_prune = 0
        self._owned: list[Engine] = []
        self.recorded = 0  # rows written
        self.dropped = 0  # records refused because the queue was full
        self.failed = 0  # records lost to database errors
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def open(cls, url: str, **kwargs: Any) -> DecisionLog:
        """A log over the registry database at ``url`` (``sqlite:///`` or ``postgresql://``)."""
        if url.startswith(("http://", "https://")):
            raise RegistryError(
                f"{redact_url(url)} is a registry server; routing decisions live in its "
                f"database: give that database's URL (sqlite:///... or postgresql://...) where "
                f"it is reachable, e.g. on the server's host"
            )
        read, write = make_engines(url)
        ensure_schema(read, write, url)
        log = cls(write, read, where=redact_url(url), **kwargs)
        log._owned = [read, write] if read is not write else [write]
        return log

    # -- writing ---------------------------------------------------------------------------
    def record(self, decision: DecisionRecord) -> bool:
        """Queue ``decision`` for the writer; False (and counted) when the queue is full."""
        if self._closed:
            return False
        if not self.keep_text and decision.text is not None:
            decision = replace(decision, text=None)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="loraroute-decision-log", daemon=True
                    )
                    self._thread.start()
        try:
            self._queue.put_nowait(decision)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "routing-decision log queue full (%d waiting): %d decisions dropped so far",
                    self._queue.maxsize,
                    self.dropped,
                )
            return False
        return True

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [r for r in batch if r is not None]
            if records:
                self._write_batch(records)
            for _ in batch:
                self._queue.task_done()
            if first is None or None in batch:
                return

    def _write_batch(self, records: list[DecisionRecord]) -> None:
        try:
            with self._write.begin() as conn:
                conn.execute(insert(_T), [r._row() for r in records])
        except Exception as exc:  # noqa: BLE001 - the writer thread must survive a bad moment
            self.failed += len(records)
            logger.warning(
                "could not record %d routing decisions in %s: %s",
                len(records),
                self.where,
                _first(exc),
            )
            return
        self.recorded += len(records)
        self._since_prune += len(records)
        if self._since_prune >= self.prune_every:
            self._since_prune = 0
            try:
                self.prune()
            except Exception as exc:  # noqa: BLE001 - retried after the next prune_every rows
                logger.warning(
                    "could not prune routing decisions in %s: %s", self.where, _first(exc)
                )

    def prune(self) -> int:
        """Delete all but the newest ``max_rows`` rows; returns how many went."""
        with self._write.begin() as conn:
            top = conn.execute(select(func.max(_T.c.id))).scalar()
            if top is None or top <= self.max_rows:
                return 0
            gone = conn.execute(delete(_T).where(_T.c.id <= top - self.max_rows)).rowcount
        if gone:
            logger.debug("pruned %d routing decisions (keeping %d)", gone, self.max_rows)
        return int(gone or 0)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued record is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, stop the writer and release owned engines."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                logger.warning("routing-decision log did not drain; queued decisions are lost")
            self._thread.join(timeout)
        for engine in self._owned:
            engine.dispose()

    def stats(self) -> dict[str, int]:
        return {
            "recorded": self.recorded,
            "dropped": self.dropped,
            "failed": self.failed,
            "queued": self._queue.qsize(),
        }

    # -- reading ---------------------------------------------------------------------------
    def count(self) -> int:
        with self._read.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(_T)).scalar() or 0)

    def read(
        self,
        *,
        last: int | None = None,
        skip: int = 0,
        since: datetime | None = None,
        until: datetime | None = None,
        with_text: bool = False,
    ) -> list[DecisionRecord]:
        """Decisions oldest first: the newest ``last`` (after skipping the newest ``skip``)
        within ``[since, until)``; ``last=None``: every one in the time range."""
        cols = list(_T.c) if with_text else [c for c in _T.c if c.name != "text"]
        q = select(*cols) if with_text else select(*cols, null().label("text"))
        if since is not None:
            q = q.where(_T.c.at >= since)
        if until is not None:
            q = q.where(_T.c.at < until)
        q = q.order_by(_T.c.id.desc()).offset(skip)
        if last is not None:
            q = q.limit(last)
        with self._read.connect() as conn:
            rows = conn.execute(q).all()
        return [_from_row(row) for row in reversed(rows)]


__all__ = ["DEFAULT_MAX_ROWS", "DEFAULT_QUEUE_SIZE", "DecisionLog", "DecisionRecord"]
