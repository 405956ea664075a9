"""``adapters evals add|list``, ``adapters alias set`` through the quality gate, and the eval
history of ``adapters show``, through click's CliRunner against a real SQLite file."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from loraroute.cli import main
from loraroute.registry.evals import dataset_digest
from loraroute.registry.testing import make_variant


@pytest.fixture
def run(tmp_path, lr_home):
    url = f"sqlite:///{tmp_path / 'reg' / 'registry.db'}"
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True, env: dict | None = None):
        result = runner.invoke(
            main, list(args), env={"LORAROUTE_REGISTRY": url, **(env or {})}, catch_exceptions=False
        )
        assert (result.exit_code == 0) == ok, result.output
        return result

    return invoke


@pytest.fixture
def legal(run, tiny_adapter, tmp_path):
    """legal@1 (holds prod), legal@2, legal@3, and the eval set's file."""
    for tag in ("1", "2", "3"):
        run("push", str(make_variant(tiny_adapter, tmp_path / f"v{tag}", tag)), "--name", "legal")
    data = tmp_path / "legal-dev.jsonl"
    data.write_text('{"q": "is this clause valid?", "a": "yes"}\n')
    run("alias", "set", "legal", "prod", "1")
    return data


def _add(run, legal, number: int, value: str, *extra: str):
    return run(
        "evals",
        "add",
        f"legal@{number}",
        "--data",
        str(legal),
        "--metric",
        "accuracy",
        "--value",
        value,
        "--ci",
        str(float(value) - 0.04),
        str(float(value) + 0.04),
        "--n",
        "400",
        *extra,
    )


def test_the_gate_on_the_command_line(run, legal):
    out = run("evals", "add", "legal@1", "--data", str(legal), "--metric", "accuracy", ok=False)
    assert "give --value" in out.output
    assert (
        "legal@1: accuracy on legal-dev.jsonl = 0.8 [0.76, 0.84]"
        in _add(run, legal, 1, "0.80").output
    )
    _add(run, legal, 2, "0.70")
    _add(run, legal, 3, "0.85")

    out = run("alias", "set", "legal", "prod", "2", ok=False)
    assert "quality gate: refusing to point legal:prod at legal@2" in out.output
    assert "a drop of 0.1 " in out.output and "--force" in out.output
    out = run("alias", "set", "legal", "prod", "2", "--dry-run", ok=False)
    assert "quality gate refuses legal:prod -> legal@2" in out.output
    assert "0.8 -> 0.7, down by 0.1  REGRESSION" in out.output
    assert (
        "quality gate allows"
        in run("alias", "set", "legal", "prod", "2", "--dry-run", "--tolerance", "0.2").output
    )

    assert "is not gated" in run("alias", "set", "legal", "staging", "2", "--dry-run").output
    out = run("alias", "set", "legal", "prod", "3")
    assert "legal:prod -> legal@3 (live)" in out.output and "up by 0.05" in out.output
    out = run("alias", "set", "legal", "prod", "2", "--force", "--json")
    gate = json.loads(out.output[out.output.index("{") :])["gate"]
    assert gate["verdict"] == "forced" and gate["forced"] and gate["comparisons"][0]["regressed"]

    shown = json.loads(run("show", "legal@2", "--json").output)
    assert [(e["metric"], e["value"], e["n"]) for e in shown["evals"]] == [("accuracy", 0.7, 400)]
    assert shown["evals"][0]["dataset_digest"] == dataset_digest(legal.read_bytes())
    assert [(p["to"], p["verdict"]) for p in shown["promotions"]] == [
        ("legal@1", "no-holder"),
        ("legal@3", "improved"),
        ("legal@2", "forced"),
    ]
    text = run("show", "legal@2").output
    assert "eval results of legal@2" in text and "promotions of legal" in text and "forced" in text
    listed = run("evals", "list", "legal").output
    assert "3 eval result(s) of legal" in listed and "legal@3" in listed
    rows = json.loads(run("evals", "list", "legal@3", "--json").output)
    assert [r["value"] for r in rows] == [0.85]


def test_no_comparable_results_warns_or_refuses(run, legal):
    _add(run, legal, 1, "0.80")
    out = run("alias", "set", "legal", "prod", "2")
    assert "legal:prod -> legal@2 (live)" in out.output
    assert "warning: legal@2 and legal@1 (holding 'prod') share no eval result" in out.output
    out = run(
        "alias", "set", "legal", "prod", "3", env={"LORAROUTE_GATE_REQUIRE_EVALS": "1"}, ok=False
    )
    assert "LORAROUTE_GATE_REQUIRE_EVALS" in out.output


def test_results_from_json_and_bad_input(run, legal, tmp_path):
    digest = dataset_digest(legal)
    good = [
        {"dataset": "legal-dev", "dataset_digest": digest, "metric": "accuracy", "value": 0.8},
        {
            "dataset": "legal-dev",
            "dataset_digest": digest,
            "metric": "loss",
            "value": 1.2,
            "higher_is_better": False,
            "ci": [1.1, 1.3],
        },
    ]
    f = tmp_path / "results.json"
    f.write_text(json.dumps({"results": good}))
    rows = json.loads(run("evals", "add", "legal@1", "--from-json", str(f), "--json").output)
    assert [r["metric"] for r in rows] == ["accuracy", "loss"] and rows[1]["ci_low"] == 1.1
    assert rows[0]["source"] == "adapters evals add"
    f.write_text(json.dumps([{**good[0], "value": "NaN"}]))
    out = run("evals", "add", "legal@1", "--from-json", str(f), ok=False)
    assert "must be a number" in out.output and "Traceback" not in out.output
    f.write_text("{not json")
    assert (
        "not readable JSON"
        in run("evals", "add", "legal@1", "--from-json", str(f), ok=False).output
    )
    out = run(
        "evals",
        "add",
        "legal@1",
        "--dataset",
        "d",
        "--dataset-digest",
        "sha256:12",
        "--metric",
        "m",
        "--value",
        "1",
        ok=False,
    )
    assert "sha256:<64 hex>" in out.output
    out = run(
        "evals", "add", "legal@1", "--data", str(legal), "--metric", "m", "--value", "inf", ok=False
    )
    assert "finite" in out.output
    assert (
        "not in the range"
        in run("alias", "set", "legal", "prod", "2", "--tolerance", "-1", ok=False).output
    )
    assert len(json.loads(run("evals", "list", "legal", "--json").output)) == 2
