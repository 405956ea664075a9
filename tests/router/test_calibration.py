"""Threshold calibration: the weighted objective and "accuracy subject to OOS recall >= R"."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from loraroute.router import InvalidRequestError, Router, StaticRoutes
from loraroute.router.calibration import (
    Calibration,
    best_threshold,
    calibrate,
    rates,
)
from loraroute.router.errors import NotFittedError

FLOORS = (0.0, 0.3, 0.55, 0.6, 0.8, 1.0)


def _synthetic(seed: int, n: int = 600, routes: int = 6, oos_share: float = 0.15):
    """Scores where correct predictions score higher, out-of-scope ones lower (with overlap)."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, routes, n)
    gold[rng.random(n) < oos_share] = -1
    pred = np.where(rng.random(n) < 0.85, gold, rng.integers(0, routes, n))
    pred[pred < 0] = rng.integers(0, routes, int((pred < 0).sum()))
    score = rng.normal(0.5, 0.15, n) + 0.25 * (pred == gold) - 0.1 * (gold < 0)
    return pred, score, gold, [f"r{i}" for i in range(routes)]


def _brute_global(pred, score, gold, r):
    """Best in-scope accuracy of one global threshold with OOS recall >= r (all cut points)."""
    s = np.unique(score)
    best = -1.0
    for t in np.concatenate([[s[0] - 1], (s[:-1] + s[1:]) / 2, [s[-1] + 1]]):
        acc, rec = rates(pred, score, gold, [], Calibration(float(t)))
        if rec >= r - 1e-12:
            best = max(best, acc)
    return best


def test_weighted_threshold_matches_brute_force():
    pred, score, gold, _ = _synthetic(1, n=300)
    for w in (0.0, 0.1, 0.25, 1.0, 5.0):
        t = best_threshold(pred, score, gold, w)
        s = np.unique(score)
        cands = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-6]])
        vals = []
        for c in cands:
            acc, rec = rates(pred, score, gold, [], Calibration(float(c)))
            vals.append(acc + w * rec)
        got_acc, got_rec = rates(pred, score, gold, [], Calibration(t))
        assert got_acc + w * got_rec == pytest.approx(max(vals))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_constrained_meets_floor_and_beats_global_optimum(seed):
    pred, score, gold, names = _synthetic(seed)
    no_threshold_acc = float(np.mean((pred == gold)[gold >= 0]))
    for r in FLOORS:
        cal = calibrate(pred, score, gold, names, min_oos_recall=r)
        acc, rec = rates(pred, score, gold, names, cal)
        assert rec >= r - 1e-12, (r, rec)
        assert (cal.fit_in_scope_accuracy, cal.fit_oos_recall) == (acc, rec)
        assert cal.objective["min_oos_recall"] == r
        # Never worse than the best single global threshold that meets the floor.
        assert acc >= _brute_global(pred, score, gold, r) - 1e-12
        # The floor is met tightly: not more than one OOS sample above it.
        assert rec <= r + 1.0 / int((gold < 0).sum()) + 1e-12
        assert acc <= no_threshold_acc + 1e-12
    assert calibrate(pred, score, gold, names, min_oos_recall=0.0).fit_in_scope_accuracy == (
        pytest.approx(no_threshold_acc)
    )


def test_constrained_uses_per_route_thresholds_when_they_help():
    """Route 0's wrong predictions score high and route 1's low: one global cut is poor."""
    n = 200
    gold = np.repeat([0, 1, -1, -1], n // 4)
    pred = gold.copy()
    score = np.concatenate(
        [
            np.linspace(0.80, 0.95, 50),  # route 0, right
            np.linspace(0.40, 0.55, 50),  # route 1, right
            np.linspace(0.60, 0.78, 50),  # OOS, half predicted as route 0, half route 1
            np.linspace(0.20, 0.38, 50),
        ]
    )
    pred[100:150] = 0
    pred[150:] = 1
    names = ["a", "b"]
    cal = calibrate(pred, score, gold, names, min_oos_recall=1.0)
    assert cal.fit_oos_recall == 1.0
    assert cal.fit_in_scope_accuracy > _brute_global(pred, score, gold, 1.0) + 0.2
    assert set(cal.route_thresholds) == {"a", "b"}


def test_weighted_default_unchanged_and_objective_recorded():
    pred, score, gold, names = _synthetic(3)
    cal = calibrate(pred, score, gold, names)
    assert cal.objective == {"oos_weight": 0.25}
    assert cal.fit_oos_recall is not None and 0.0 <= cal.fit_oos_recall <= 1.0


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, "0.6"])
def test_bad_floor_is_a_clear_error(bad):
    pred, score, gold, names = _synthetic(4)
    with pytest.raises(ValueError, match="min_oos_recall must be a fraction"):
        calibrate(pred, score, gold, names, min_oos_recall=bad)


def test_floor_without_oos_data_is_an_error():
    pred, score, gold, names = _synthetic(5, oos_share=0.0)
    with pytest.raises(ValueError, match="needs out-of-scope samples"):
        calibrate(pred, score, gold, names, min_oos_recall=0.5)
    with pytest.raises(ValueError, match="oos_weight must be"):
        calibrate(pred, score, gold, names, oos_weight=-1.0)


def test_calibration_dict_roundtrip_and_old_format():
    pred, score, gold, names = _synthetic(6)
    cal = calibrate(pred, score, gold, names, min_oos_recall=0.6)
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal
    old = {"threshold": 0.4, "route_thresholds": {"r0": 0.5}, "platt_a": 3.0, "platt_b": 0.1}
    assert Calibration.from_dict(old) == Calibration(0.4, {"r0": 0.5}, 3.0, 0.1)


# -- through the router (hashing encoder) ----------------------------------------------------

ROUTES = {
    "legal": ["contract clause enforceable", "indemnity clause cover", "landlord lease terminate"],
    "math": ["solve the equation for x", "derivative of x squared", "integral of sin x"],
    "medical": ["symptoms of diabetes", "medicine safe in pregnancy", "hypertension treatment"],
}
IN_SCOPE = {
    "legal": ["is the contract clause valid", "lease terminate early", "indemnity in contract"],
    "math": ["solve for x in the equation", "derivative of sin x", "integral of x squared"],
    "medical": ["diabetes symptoms in adults", "is this medicine safe", "treatment of diabetes"],
}
OOS = [
    "book a flight to paris",
    "what time is it",
    "tell me a joke",
    "play some jazz music",
    "set an alarm for seven",
    "order a pizza",
    "weather tomorrow",
    "call my mother",
    "clause about the weather",
    "solve my travel plans",
]


def _data():
    texts = [t for ts in IN_SCOPE.values() for t in ts] + OOS
    labels = [n for n, ts in IN_SCOPE.items() for _ in ts] + [None] * len(OOS)
    return texts, labels


def _router(**kwargs) -> Router:
    return Router(StaticRoutes(ROUTES), encoder="hashing", **kwargs)


def test_router_floor_fit_save_load(lr_home, tmp_path):
    router = _router(min_oos_recall=0.8)
    report = router.fit(*_data())
    assert report["objective"]["min_oos_recall"] == 0.8 and report["fit_oos_recall"] >= 0.8
    texts, labels = _data()
    names, scores = router.score_texts(OOS)
    caught = sum(float(s.max()) < router.threshold_for(names[int(s.argmax())]) for s in scores)
    assert caught / len(OOS) >= 0.8
    router.save(tmp_path / "state")
    loaded = Router.load(tmp_path / "state", StaticRoutes(ROUTES), encoder="hashing")
    assert loaded.min_oos_recall == 0.8 and loaded.calibration == router.calibration
    probe = ["solve for x", "book a table", "symptoms of flu"]
    assert [d.adapter for d in loaded.route_batch(probe)] == [
        d.adapter for d in router.route_batch(probe)
    ]
    # Routes change: the stored fit data is re-fitted with the same objective.
    changed = StaticRoutes({**ROUTES, "code": ["write a python function"]})
    refit = Router.load(tmp_path / "state", changed, encoder="hashing")
    assert refit.calibration.objective["min_oos_recall"] == 0.8
    assert refit.calibration.fit_oos_recall >= 0.8


def test_fit_and_recalibrate_switch_objective(lr_home):
    router = _router()
    with pytest.raises(NotFittedError):
        router.recalibrate(min_oos_recall=0.5)
    weighted = router.fit(*_data())
    assert weighted["objective"] == {"oos_weight": 0.25} and router.min_oos_recall is None
    strict = router.recalibrate(min_oos_recall=1.0)
    assert router.min_oos_recall == 1.0 and strict.fit_oos_recall == 1.0
    loose = router.recalibrate(min_oos_recall=0.0)
    assert loose.fit_in_scope_accuracy >= strict.fit_in_scope_accuracy
    back = router.recalibrate(oos_weight=0.25)
    assert router.min_oos_recall is None and back.objective == {"oos_weight": 0.25}
    assert back.threshold == pytest.approx(router.fit(*_data())["threshold"])
    with pytest.raises(InvalidRequestError, match="either oos_weight"):
        router.recalibrate(oos_weight=0.1, min_oos_recall=0.5)
    with pytest.raises(ValueError, match="min_oos_recall must be"):
        router.recalibrate(min_oos_recall=2)
    with pytest.raises(ValueError, match="min_oos_recall must be"):
        _router(min_oos_recall=-1)
    assert router.fit(*_data(), min_oos_recall=0.7)["fit_oos_recall"] >= 0.7
    assert router.min_oos_recall == 0.7


def test_floor_needs_out_of_scope_fit_data(lr_home):
    router = _router(min_oos_recall=0.6)
    texts = [t for ts in IN_SCOPE.values() for t in ts]
    labels = [n for n, ts in IN_SCOPE.items() for _ in ts]
    with pytest.raises(InvalidRequestError, match="needs out-of-scope examples"):
        router.fit(texts, labels)
    assert not router.fitted
    # A label naming no routable adapter counts as out of scope.
    assert router.fit([*texts, "book a flight"], [*labels, "travel"])["out_of_scope"] == 1


def test_state_without_floor_loads(lr_home, tmp_path):
    router = _router()
    router.fit(*_data())
    router.save(tmp_path / "s")
    doc = json.loads((tmp_path / "s" / "state.json").read_text())
    del doc["min_oos_recall"]
    for key in ("objective", "fit_in_scope_accuracy", "fit_oos_recall"):
        del doc["calibration"][key]
    (tmp_path / "s" / "state.json").write_text(json.dumps(doc))
    loaded = Router.load(tmp_path / "s", StaticRoutes(ROUTES), encoder="hashing")
    assert loaded.min_oos_recall is None
    assert loaded.calibration.threshold == pytest.approx(router.calibration.threshold)


def test_cli_fit_min_oos_recall(lr_home, tiny_adapter_factory, tmp_path):
    from loraroute.cli import main
    from loraroute.registry import open_registry

    url = f"sqlite:///{lr_home.home / 'reg.db'}"
    reg = open_registry(url, settings=lr_home)
    for i, (name, ex) in enumerate(ROUTES.items()):
        reg.push(tiny_adapter_factory(i + 1), name, domain=name, routing_examples=ex)
        reg.alias_set(name, "prod", 1)
    data = tmp_path / "fit.jsonl"
    texts, labels = _data()
    data.write_text(
        "".join(
            json.dumps({"text": t, "label": lab}) + "\n"
            for t, lab in zip(texts, labels, strict=True)
        )
    )
    state = tmp_path / "state"
    common = ["--registry", url, "--encoder", "hashing", "--state", str(state)]

    def run(*args):
        return CliRunner().invoke(main, ["route", "fit", str(data), *args, *common])

    res = run("--min-oos-recall", "0.8", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["objective"]["min_oos_recall"] == 0.8 and report["fit_oos_recall"] >= 0.8
    assert json.loads((state / "state.json").read_text())["min_oos_recall"] == 0.8
    res = run("--min-oos-recall", "0.8")
    assert res.exit_code == 0 and "out-of-scope recall >= 0.8" in res.output
    res = run("--oos-weight", "0.5")
    assert res.exit_code == 0 and "accuracy + 0.5 x out-of-scope recall" in res.output
    res = run("--min-oos-recall", "0.6", "--oos-weight", "0.5")
    assert res.exit_code != 0 and "not both" in res.output
    res = run("--min-oos-recall", "1.5")
    assert res.exit_code != 0 and "1.5" in res.output
    only_in = tmp_path / "in.jsonl"
    only_in.write_text(json.dumps({"text": "solve for x", "label": "math"}) + "\n")
    res = CliRunner().invoke(
        main, ["route", "fit", str(only_in), "--min-oos-recall", "0.6", *common]
    )
    assert res.exit_code != 0 and "needs out-of-scope examples" in res.output
