"""Drift figures on synthetic windows (a shift is flagged, the same distribution stays quiet
over seeds) and ``adapters drift`` over a real registry's decision log: exit codes 0/1/2,
``--json``, ``--plot``, the routing examples as reference."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from click.testing import CliRunner

from loraroute.cli import main
from loraroute.registry.decisions import DecisionLog, DecisionRecord
from loraroute.router.drift import BASE, Thresholds, Window, compare, ks, nearest_distance, psi

ROUTES = ["legal", "math", "cooking", BASE]


def _window(rng, n, probs=(0.3, 0.3, 0.3, 0.1), mean=0.6, dim=16, spread=0.1) -> Window:
    routes = list(rng.choice(ROUTES, size=n, p=probs))
    centre = np.eye(dim, dtype=np.float32)[0]
    emb = centre + spread * rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return Window(routes, rng.normal(mean, 0.1, n), emb)


EXAMPLES = np.eye(16, dtype=np.float32)[:1]


def test_an_unshifted_stream_stays_quiet_over_seeds():
    alarms = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        report = compare(_window(rng, 5000), _window(rng, 500), examples=EXAMPLES)
        assert report.enough_data
        alarms += report.alarms
    assert alarms == []


@pytest.mark.parametrize(
    ("shift", "kind"),
    [
        ({"probs": (0.1, 0.1, 0.1, 0.7)}, "fallback_rate"),
        ({"probs": (0.8, 0.05, 0.05, 0.1)}, "traffic_share"),
        ({"mean": 0.45}, "score_psi"),
        ({"mean": 0.5}, "score_ks"),
        ({"spread": 0.5}, "example_distance"),
    ],
)
def test_each_figure_flags_its_shift(shift, kind):
    rng = np.random.default_rng(0)
    report = compare(_window(rng, 5000), _window(rng, 500, **shift), examples=EXAMPLES)
    assert report.drifted
    assert kind in {a.split(":")[0] for a in report.alarms}, report.alarms
    d = report.to_dict()
    assert d["drifted"] is True and json.dumps(d)


def test_too_few_decisions_raise_no_alarm():
    rng = np.random.default_rng(0)
    report = compare(_window(rng, 5000), _window(rng, 20, probs=(0, 0, 0, 1.0)))
    assert not report.enough_data and not report.drifted


def test_statistics():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 4000), rng.normal(0, 1, 4000)
    assert psi(a, b) < 0.02 and psi(a, b + 1) > 0.5
    stat, p = ks(a, b + 0.5)
    assert stat > 0.15 and p < 1e-10
    x = np.eye(4, dtype=np.float32)
    assert nearest_distance(x[:2], x[:1]).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="different encoders"):
        nearest_distance(x, np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="psi"):
        Thresholds(psi=-1)


# -- adapters drift over a real registry ----------------------------------------------------
LEGAL = ["is this contract clause enforceable", "what does the indemnity clause cover"]
MATH = ["solve the equation 2x plus 3 equals 7", "what is the derivative of x squared"]


@pytest.fixture
def registry_url(lr_home, tiny_adapter_factory):
    from loraroute.registry import open_registry

    url = f"sqlite:///{lr_home.home / 'reg.db'}"
    reg = open_registry(url, settings=lr_home)
    reg.push(tiny_adapter_factory(1), "legal", domain="legal", routing_examples=LEGAL)
    reg.push(tiny_adapter_factory(2), "math", domain="math", routing_examples=MATH)
    for name in ("legal", "math"):
        reg.alias_set(name, "prod", 1)
    reg.close()
    return url


def _fill(url: str, texts_and_routes, *, start: datetime) -> None:
    """Record decisions as the server would, with the router the CLI will open."""
    from loraroute.router import Router

    router = Router(url, encoder="hashing")
    log = DecisionLog.open(url)
    texts = [t for t, _ in texts_and_routes]
    decisions = router.route_batch(texts)
    for i, (d, (_, forced)) in enumerate(zip(decisions, texts_and_routes, strict=True)):
        adapter = None if forced is None else f"{forced}@1"
        log.record(
            DecisionRecord(
                adapter=adapter,
                best=d.best,
                score=d.score if forced is not None else d.score * 0.5,
                margin=d.margin,
                encoder=router.encoder.name,
                embedding=d.embedding,
                at=start + timedelta(seconds=i),
            )
        )
    log.close()


def drift(*args: str):
    return CliRunner().invoke(main, ["drift", *args])


def test_cli_exit_codes_json_and_plot(registry_url, tmp_path):
    rng = np.random.default_rng(0)
    base = [f"{t} please, case {i}" for i, t in enumerate(LEGAL * 150 + MATH * 150)]
    steady = [(t, "legal" if "clause" in t else "math") for t in base]
    order = rng.permutation(len(steady))
    steady = [steady[i] for i in order]
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    _fill(registry_url, steady, start=t0)
    common = ["--registry", registry_url, "--encoder", "hashing"]

    res = drift("--recent", "200", "--reference", "400", "--json", *common)
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["drifted"] is False and report["recent_n"] == 200
    assert report["reference_n"] == 400 and report["distance"]["recent"] is not None
    assert set(report["share"]) == {"legal", "math"}

    # then traffic moves to out-of-scope requests the base model answers
    oos = [(f"book a flight to city {i} tomorrow", None) for i in range(200)]
    _fill(registry_url, oos, start=t0 + timedelta(hours=1))
    plot = tmp_path / "drift.png"
    res = drift("--recent", "200", "--reference", "400", "--plot", str(plot), *common)
    assert res.exit_code == 1, res.output
    assert "DRIFT" in res.output and "fallback_rate" in res.output
    assert plot.stat().st_size > 1000

    # time windows: the last hour against the hour before
    res = drift(
        "--since", "2026-01-01T00:30:00Z", "--reference-until", "2026-01-01T00:30:00Z",
        "--json", "--no-examples", *common,
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    report = json.loads(res.output)
    assert report["recent_n"] == 200 and report["reference_n"] == 600
    assert report["distance"]["recent"] is None  # --no-examples

    # the routing examples as the reference: out-of-scope traffic is far from every example
    res = drift("--recent", "200", "--reference", "examples", "--json", *common)
    assert res.exit_code == 1, res.output
    report = json.loads(res.output)
    assert report["reference_kind"] == "examples" and report["reference_n"] == 4
    alarms = {a.split(":")[0] for a in report["alarms"]}
    assert "fallback_rate" in alarms and "traffic_share" not in alarms

    # generous thresholds: no alarm
    loose = ["--max-fallback-change", "1", "--max-psi", "100", "--max-ks", "1"]
    loose += ["--max-share-change", "1", "--max-distance-change", "2"]
    res = drift("--recent", "200", "--reference", "400", *loose, *common)
    assert res.exit_code == 0, res.output


def test_cli_errors_exit_2(registry_url):
    common = ["--registry", registry_url, "--no-examples"]
    res = drift("--since", "yesterday-ish", *common)
    assert res.exit_code == 2 and "cannot read time" in res.output
    res = drift("--reference", "lots", *common)
    assert res.exit_code == 2 and "--reference" in res.output
    res = drift("--registry", "http://127.0.0.1:1", "--no-examples")
    assert res.exit_code == 2 and "database" in res.output
    res = drift("--registry", registry_url, "--json", "--no-examples")
    assert res.exit_code == 0 and json.loads(res.output)["enough_data"] is False
