"""Eval results and the quality gate on the serving alias, through the Python API of the local
registry on SQLite and PostgreSQL: a planted regressing version is refused, an improving one
accepted, ``force`` overrides and is recorded, and versions without comparable results follow
the documented policy."""

from __future__ import annotations

import math

import pytest

from loraroute.registry import InvalidRequestError, QualityGateError, open_registry
from loraroute.registry.evals import EvalResult, dataset_digest
from loraroute.registry.testing import make_variant
from loraroute.settings import get_settings

DEV = dataset_digest(b'{"q": "is this clause valid?", "a": "yes"}\n')
OTHER = dataset_digest(b"another eval set\n")


def acc(value: float, digest: str = DEV, **kw) -> dict:
    return {
        "dataset": "legalbench-dev",
        "dataset_digest": digest,
        "metric": "accuracy",
        "value": value,
        "ci_low": value - 0.04,
        "ci_high": value + 0.04,
        "n": 400,
        **kw,
    }


@pytest.fixture
def three(reg, tiny_adapter, tmp_path):
    """legal@1 (0.80, holds prod), legal@2 (planted regression: 0.70), legal@3 (0.85)."""
    for tag in ("1", "2", "3"):
        reg.push(make_variant(tiny_adapter, tmp_path / f"v{tag}", tag), "legal")
    for number, value in ((1, 0.80), (2, 0.70), (3, 0.85)):
        reg.record_eval(f"legal@{number}", [acc(value)], source="adapters eval")
    reg.alias_set("legal", "prod", 1)
    return reg


def test_a_regressing_version_is_refused_and_an_improving_one_accepted(three):
    reg = three
    with pytest.raises(QualityGateError) as err:
        reg.alias_set("legal", "prod", 2)
    msg = str(err.value)
    for part in ("legal:prod", "legal@2", "accuracy", "legalbench-dev", "0.7", "0.8", "legal@1"):
        assert part in msg, part
    assert "a drop of 0.1 " in msg and "tolerance 0.01" in msg and "--force" in msg
    assert reg.resolve("legal:prod").ref == "legal@1"  # nothing moved

    report = reg.gate_check("legal", 3)
    assert report.verdict == "improved" and not report.refused
    (c,) = report.comparisons
    assert (c.holder, c.candidate, c.regressed) == (0.80, 0.85, False)
    assert math.isclose(c.drop, -0.05)
    assert reg.alias_set("legal", "prod", 3).ref == "legal@3"
    assert [x.ref for x in reg.serving()] == ["legal@3"]
    # the history of promotions: the first one had no holder to compare with
    moves = reg.promotions("legal")
    assert [(m["from"], m["to"], m["verdict"], m["forced"]) for m in moves] == [
        (None, "legal@1", "no-holder", False),
        ("legal@1", "legal@3", "improved", False),
    ]


def test_force_promotes_a_regression_and_records_the_override(three):
    reg = three
    v = reg.alias_set("legal", "prod", 2, force=True, actor="release-bot")
    assert v.ref == "legal@2" and "prod" in v.aliases
    last = reg.promotions("legal")[-1]
    assert (last["from"], last["to"], last["verdict"], last["forced"]) == (
        "legal@1",
        "legal@2",
        "forced",
        True,
    )
    assert last["actor"] == "release-bot"
    assert last["report"]["comparisons"][0]["regressed"] is True
    assert "forced past the gate" in last["report"]["warnings"][0]


def test_tolerance_per_call_and_from_settings(three, tmp_path):
    reg = three
    assert reg.gate_check("legal", 2, tolerance=0.2).verdict == "passed"
    assert reg.gate_check("legal", 2, tolerance=0.05).refused
    with pytest.raises(InvalidRequestError, match="negative"):
        reg.gate_check("legal", 2, tolerance=-1)
    with pytest.raises(InvalidRequestError, match="finite"):
        reg.alias_set("legal", "prod", 2, tolerance=float("nan"))
    loose = open_registry(reg.url, blob_store=reg.blobs, settings=get_settings(gate_tolerance=0.5))
    assert loose.alias_set("legal", "prod", 2).ref == "legal@2"
    assert loose.promotions("legal")[-1]["tolerance"] == 0.5
    loose.close()


def test_lower_is_better_metrics_and_the_latest_result_count(three):
    reg = three
    loss = {"dataset": "legal-dev", "dataset_digest": DEV, "metric": "loss"}
    reg.record_eval("legal@1", {**loss, "value": 1.0, "higher_is_better": False})
    reg.record_eval("legal@3", {**loss, "value": 1.5, "higher_is_better": False})
    with pytest.raises(QualityGateError, match=r"loss on legal-dev .* is 1\.5 against 1 .*a rise"):
        reg.alias_set("legal", "prod", 3)
    # a newer result on the same dataset and metric replaces the older one in the gate
    reg.record_eval("legal@3", {**loss, "value": 0.9, "higher_is_better": False})
    assert reg.alias_set("legal", "prod", 3).ref == "legal@3"
    assert [r.value for r in reg.evals("legal@3") if r.metric == "loss"] == [1.5, 0.9]


def test_only_the_same_dataset_digest_compares(reg, tiny_adapter, tmp_path):
    for tag in ("1", "2"):
        reg.push(make_variant(tiny_adapter, tmp_path / f"v{tag}", tag), "legal")
    reg.record_eval("legal@1", acc(0.9))
    reg.record_eval("legal@2", acc(0.1, OTHER))  # a different eval set: not comparable
    reg.alias_set("legal", "prod", 1)
    report = reg.gate_check("legal", 2)
    assert report.verdict == "unchecked" and not report.refused and report.comparisons == []
    assert "share no eval result" in report.warnings[0]
    assert reg.alias_set("legal", "prod", 2).ref == "legal@2"


def test_without_comparable_results_the_policy_is_allow_unless_required(
    reg, tiny_adapter, tmp_path
):
    for tag in ("1", "2"):
        reg.push(make_variant(tiny_adapter, tmp_path / f"v{tag}", tag), "legal")
    reg.record_eval("legal@1", acc(0.9))
    reg.alias_set("legal", "prod", 1)
    strict = open_registry(
        reg.url, blob_store=reg.blobs, settings=get_settings(gate_require_evals=True)
    )
    with pytest.raises(QualityGateError, match="share no eval result.*GATE_REQUIRE_EVALS"):
        strict.alias_set("legal", "prod", 2)
    assert strict.alias_set("legal", "prod", 2, force=True).ref == "legal@2"
    assert strict.promotions("legal")[-1]["verdict"] == "forced"
    strict.close()
    # without the setting: allowed, the report says why it was not checked
    reg.alias_set("legal", "prod", 1, force=True)
    assert reg.gate_check("legal", 2).verdict == "unchecked"
    assert reg.alias_set("legal", "prod", 2).ref == "legal@2"
    assert reg.promotions("legal")[-1]["verdict"] == "unchecked"


def test_other_aliases_are_not_gated_and_aliases_as_targets_are(three):
    reg = three
    assert reg.alias_set("legal", "staging", 2).ref == "legal@2"  # not the serving alias
    with pytest.raises(QualityGateError):
        reg.alias_set("legal", "prod", "staging")  # promote staging to prod
    assert reg.alias_set("legal", "prod", 1).ref == "legal@1"  # the holder again: no-op
    assert [m["to"] for m in reg.promotions("legal")] == ["legal@1"]


def test_eval_history_and_fields(three):
    reg = three
    history = reg.evals("legal")
    assert [(r.ref, r.value) for r in history] == [
        ("legal@1", 0.80),
        ("legal@2", 0.70),
        ("legal@3", 0.85),
    ]
    r = reg.evals("legal:prod")[0]
    assert (r.dataset, r.dataset_digest, r.metric, r.n, r.source) == (
        "legalbench-dev",
        DEV,
        "accuracy",
        400,
        "adapters eval",
    )
    assert r.ci_low is not None and math.isclose(r.ci_low, 0.76) and r.created_at is not None
    stored = reg.record_eval(
        "legal@2",
        EvalResult("legalbench-dev", DEV, "f1", 0.5, details={"base": 0.4, "majority": 0.33}),
    )
    assert stored[0].ref == "legal@2" and stored[0].details == {"base": 0.4, "majority": 0.33}
    # a removed version takes its results with it; the promotion record stays
    reg.rm("legal@2")
    assert {r.ref for r in reg.evals("legal")} == {"legal@1", "legal@3"}


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"value": float("nan")}, "finite"),
        ({"value": float("inf")}, "finite"),
        ({"value": True}, "must be a number"),
        ({"value": "0.9"}, "must be a number"),
        ({"dataset_digest": "md5:abc"}, "sha256"),
        ({"metric": "acc uracy"}, "metric name"),
        ({"metric": ""}, "metric name"),
        ({"dataset": "x" * 300}, "at most 256"),
        ({"dataset": "a\x00b"}, "NUL"),
        ({"ci_low": 0.9, "ci_high": 0.1}, "above ci_high"),
        ({"ci_low": 0.1, "ci_high": None}, "both ends"),
        ({"n": 0}, "number of examples"),
        ({"n": 1.5}, "number of examples"),
        ({"higher_is_better": "yes"}, "true or false"),
        ({"details": {"x": float("nan")}}, "finite"),
        ({"colour": "red"}, "unknown eval result field"),
    ],
)
def test_bad_results_are_refused_and_nothing_is_stored(reg, tiny_adapter, bad, match):
    reg.push(tiny_adapter, "legal")
    with pytest.raises(InvalidRequestError, match=match):
        reg.record_eval("legal@1", [acc(0.8), {**acc(0.8), **bad}])
    assert reg.evals("legal") == []


def test_call_shapes(reg, tiny_adapter):
    reg.push(tiny_adapter, "legal")
    with pytest.raises(InvalidRequestError, match="no eval results"):
        reg.record_eval("legal@1", [])
    with pytest.raises(InvalidRequestError, match="at most 256"):
        reg.record_eval("legal@1", [acc(0.5)] * 257)
    (r,) = reg.record_eval("legal@1", {**acc(0.5), "ci": [0.4, 0.6]})
    assert (r.ci_low, r.ci_high) == (0.4, 0.6)


def test_judge_alone():
    """The rule without a database: the latest result per dataset and metric counts, a
    disagreement on the direction is not compared, the report survives JSON."""
    from loraroute.registry.evals import GateReport, enforce, judge

    def r(value: float, metric: str = "accuracy", up: bool = True) -> EvalResult:
        return EvalResult("dev", DEV, metric, value, higher_is_better=up)

    report = judge(
        "legal",
        "prod",
        2,
        [r(0.5), r(0.79), r(2.0, "loss", up=False)],
        1,
        [r(0.8), r(1.0, "loss")],
        tolerance=0.01,
    )
    assert [c.metric for c in report.comparisons] == ["accuracy"]
    assert not report.refused and report.verdict == "passed"  # 0.01 down: within tolerance
    assert "disagree whether higher is better" in report.warnings[0]
    refused = judge("legal", "prod", 2, [r(0.7)], 1, [r(0.8)], tolerance=0.01)
    with pytest.raises(QualityGateError):
        enforce(refused, force=False)
    forced = enforce(refused, force=True)
    again = GateReport.from_dict(forced.to_dict())
    assert again == forced and again.verdict == "forced" and again.regressions
