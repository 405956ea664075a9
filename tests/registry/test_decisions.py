"""The routing-decision log on SQLite and PostgreSQL: written off the caller's thread, bounded
(oldest rows pruned in batches), embeddings as float32, text only when kept, windows read by
count and by time; a full queue drops and counts instead of blocking."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from loraroute.registry import RegistryError
from loraroute.registry.decisions import DecisionLog, DecisionRecord

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _rec(i: int, *, text: str | None = None, emb: bool = True) -> DecisionRecord:
    v = np.zeros(8, np.float32)
    v[i % 8] = 1.0
    return DecisionRecord(
        adapter=None if i % 3 == 0 else f"a{i % 2}@1",
        best=f"a{i % 2}",
        score=i / 100,
        margin=0.01 * i,
        confidence=0.5,
        reason="routed",
        encoder="hashing",
        embedding=v if emb else None,
        text=text,
        at=T0 + timedelta(seconds=i),
    )


@pytest.fixture
def log(store_url, store):  # ``store`` creates the registry (schema) first
    log = DecisionLog.open(store_url, max_rows=50, prune_every=20)
    yield log
    log.close()


def test_records_round_trip_oldest_first(log):
    for i in range(10):
        assert log.record(_rec(i))
    log.flush()
    rows = log.read(last=4)
    assert [r.score for r in rows] == [0.06, 0.07, 0.08, 0.09]
    r = rows[-2]  # i=8
    assert r.adapter == "a0@1" and r.route == "a0" and not r.fallback
    assert r.margin == pytest.approx(0.08) and r.encoder == "hashing"
    assert r.embedding.dtype == np.float32 and r.embedding[0] == 1.0
    assert r.at == T0 + timedelta(seconds=8)
    assert rows[0].fallback and rows[0].route == "base"  # i=6: the base model answered
    assert [x.score for x in log.read(last=3, skip=2)] == [0.05, 0.06, 0.07]
    since, until = T0 + timedelta(seconds=2), T0 + timedelta(seconds=5)
    assert [x.score for x in log.read(since=since, until=until)] == [0.02, 0.03, 0.04]
    assert log.stats()["recorded"] == 10


def test_the_table_is_bounded_and_pruned_in_batches(log):
    for i in range(130):
        log.record(_rec(i))
    log.flush()
    assert log.count() <= 50 + 20  # max_rows, plus at most one batch before the next prune
    log.prune()
    assert log.count() == 50
    assert log.read(last=1)[0].score == 1.29  # the newest are the ones kept
    assert log.read(last=100)[0].score == 0.80


def test_text_only_when_kept(store_url, store, log):
    log.record(_rec(1, text="secret question"))
    log.flush()
    assert log.read(last=1, with_text=True)[0].text is None
    keep = DecisionLog.open(store_url, keep_text=True)
    try:
        keep.record(_rec(2, text="my question"))
        keep.flush()
        assert keep.read(last=1, with_text=True)[0].text == "my question"
        assert keep.read(last=1)[0].text is None  # read without text unless asked
    finally:
        keep.close()


def test_a_full_queue_drops_and_counts_instead_of_blocking(store_url, store):
    log = DecisionLog.open(store_url, queue_size=5)
    gate = threading.Event()
    original = log._write_batch

    def slow(records):  # the writer is stuck on a slow database
        gate.wait(10)
        original(records)

    log._write_batch = slow  # type: ignore[method-assign]
    try:
        results = [log.record(_rec(i, emb=False)) for i in range(20)]
        assert results.count(False) == log.dropped >= 14
        gate.set()
        log.flush()
        assert log.stats()["recorded"] == results.count(True)
        assert log.read(last=1)[0].embedding is None
    finally:
        gate.set()
        log.close()


def test_an_http_registry_is_refused_with_a_hint():
    with pytest.raises(RegistryError, match="database"):
        DecisionLog.open("http://127.0.0.1:1")


def test_max_rows_must_be_positive(store_url, store):
    with pytest.raises(ValueError, match="max_rows"):
        DecisionLog.open(store_url, max_rows=0)
