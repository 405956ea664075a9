"""The ``adapters`` registry verbs through click's CliRunner, against a real SQLite file."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from loraroute.cli import main


@pytest.fixture
def run(tmp_path, lr_home):
    url = f"sqlite:///{tmp_path / 'reg' / 'registry.db'}"
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True):
        result = runner.invoke(
            main, list(args), env={"LORAROUTE_REGISTRY": url}, catch_exceptions=False
        )
        if ok:
            assert result.exit_code == 0, result.output
        else:
            assert result.exit_code != 0, result.output
        return result

    return invoke


def test_push_ls_show_alias_rm(run, tiny_adapter_factory, tmp_path):
    examples = tmp_path / "ex.txt"
    examples.write_text("review this contract\nwhat does clause 4 mean\n")
    out = run(
        "push",
        str(tiny_adapter_factory(1)),
        "--name",
        "legal",
        "--domain",
        "law",
        "--example",
        "draft an NDA",
        "--examples-file",
        str(examples),
        "--tag",
        "team=a",
        "--metric",
        "eval_loss=1.25",
        "--json",
    )
    v = json.loads(out.output)
    assert v["ref"] == "legal@1" and v["routing_examples"][0] == "draft an NDA"
    assert len(v["routing_examples"]) == 3 and v["metrics"] == {"eval_loss": 1.25}
    run("push", str(tiny_adapter_factory(2)), "--name", "legal", "--parent", "legal@1")
    assert "legal:prod -> legal@1" in run("alias", "set", "legal", "prod", "1").output
    rows = json.loads(run("ls", "--json").output)
    assert [(r["ref"], r["aliases"]) for r in rows] == [("legal@1", ["prod"]), ("legal@2", [])]
    assert [r["ref"] for r in json.loads(run("ls", "--tag", "team=a", "--json").output)] == [
        "legal@1"
    ]
    table = run("ls").output
    assert "legal@1" in table and "prod" in table
    shown = json.loads(run("show", "legal@2", "--json").output)
    assert shown["parent"] == "legal@1" and shown["model_card"] and shown["files"]
    assert "adapter_model.safetensors" in run("show", "legal:prod").output
    err = run("rm", "legal@1", ok=False)
    assert "aliases point to it" in err.output and "Traceback" not in err.output
    assert "removed legal@1" in run("rm", "legal@1", "--force").output
    run("alias", "set", "legal", "prod", "2")
    run("alias", "rm", "legal", "prod")
    assert json.loads(run("ls", "--json").output)[0]["aliases"] == []


def test_pull_export_import_verify_gc(run, tiny_adapter, tmp_path):
    run("import", str(tiny_adapter), "--name", "legal")
    out = run("pull", "legal", "-o", str(tmp_path / "pulled")).output.strip()
    assert (tmp_path / "pulled" / "adapter_model.safetensors").is_file() and out.endswith("pulled")
    run("export", "legal@1", str(tmp_path / "peft"))
    assert (tmp_path / "peft" / "adapter_config.json").is_file()
    assert json.loads(run("verify", "--json").output)["ok"] is True
    run("rm", "legal")
    dry = json.loads(run("gc", "--dry-run", "--grace", "0", "--json").output)
    assert dry["dry_run"] and len(dry["removed"]) == 3
    assert "removed 3 blob(s)" in run("gc", "--grace", "0").output


def test_clean_errors(run, tmp_path):
    bad = run("show", "legal@@3", ok=False)
    assert "invalid adapter reference" in bad.output and "Traceback" not in bad.output
    missing = run("show", "nope", ok=False)
    assert "no adapter named 'nope'" in missing.output
    (tmp_path / "pkl").mkdir()
    (tmp_path / "pkl" / "adapter_model.bin").write_bytes(b"x")
    (tmp_path / "pkl" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    refused = run("push", str(tmp_path / "pkl"), "--name", "legal", ok=False)
    assert "safetensors" in refused.output


def test_token_create(run):
    out = json.loads(run("registry", "token", "create", "--scope", "write", "--json").output)
    assert out["token"].startswith("lrt_") and out["scope"] == "write"
