"""``adapters chat`` through click's CliRunner, on the tiny base."""

from __future__ import annotations

import json

from click.testing import CliRunner

from loraroute.cli import main


def test_chat_one_shot_json(tiny_base, lr_home):
    result = CliRunner().invoke(
        main,
        [
            "chat",
            "--base-model",
            str(tiny_base),
            "--device",
            "cpu",
            "--model",
            "base",
            "--max-tokens",
            "4",
            "--json",
            "hello",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{") :])
    assert data["metadata"]["model_name"] == "base"
    assert data["usage"]["output_tokens"] <= 4


def test_chat_unknown_adapter_is_a_clean_error(tiny_base, lr_home):
    result = CliRunner().invoke(
        main, ["chat", "--base-model", str(tiny_base), "--device", "cpu", "--model", "nope@1", "hi"]
    )
    assert result.exit_code != 0
    assert "nope" in result.output and "Traceback" not in result.output
