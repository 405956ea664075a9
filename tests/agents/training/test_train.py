"""LoRA training on the tiny base: loss goes down, the folder is a PEFT adapter, resume, CLI."""

from __future__ import annotations

import json

import pytest

from loraroute.agents.errors import TrainingError
from loraroute.agents.training import TRAINING_FILE, TrainConfig, train_adapter

WORDS = ["apple", "river", "stone", "cloud"]


def _records(words: list[str]) -> list[dict]:
    return [
        {
            "id": w,
            "messages": [
                {"role": "user", "content": f"Say {w}"},
                {"role": "assistant", "content": f"The word is {w}."},
            ],
        }
        for w in words
    ]


RECORDS = _records(WORDS)
#: dev data the adapter never trains on: the same task on other words
HELD_OUT = _records(["grass", "flame"])
FAST = dict(batch_size=4, rank=4, target_modules="all-linear", learning_rate=2e-2, warmup=0)


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory):
    from loraroute.settings import get_settings

    settings = get_settings(home=tmp_path_factory.mktemp("home"))
    calls: list[tuple[int, int, dict]] = []
    out = tmp_path_factory.mktemp("adapter") / "words"
    result = train_adapter(
        RECORDS,
        out,
        base_model=str(tiny_base),
        dev=HELD_OUT,
        settings=settings,
        config=TrainConfig(max_steps=12, **FAST),
        progress=lambda s, t, logs: calls.append((s, t, logs)),
    )
    return result, calls, settings


def test_training_reduces_held_out_loss(trained):
    """The adapter beats the base on dev examples it never saw (5.75 -> 5.51 when measured)."""
    result, _, _ = trained
    m = result.metrics
    assert m["train_steps"] == 12
    assert m["eval_loss"] < m["base_eval_loss"] - 0.1
    assert m["eval_perplexity"] < m["base_eval_perplexity"]


def test_progress_reports_every_step_with_eta(trained):
    _, calls, _ = trained
    steps = [s for s, _, logs in calls if "eta_seconds" in logs]
    assert steps == list(range(1, 13))
    assert {t for _, t, _ in calls} == {12}
    assert any("loss" in logs for _, _, logs in calls)


def test_output_is_a_peft_folder_with_training_record(trained, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loraroute.models import fingerprint

    result, _, settings = trained
    folder = result.output_dir
    assert (folder / "adapter_model.safetensors").is_file()
    assert not (folder / "checkpoints").exists()
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_base)
    assert cfg["r"] == 4
    record = json.loads((folder / TRAINING_FILE).read_text())
    assert record["data_digest"] == result.data_digest
    assert record["base_fingerprint"] == fingerprint(tiny_base, settings=settings)
    assert record["training_config"]["rank"] == 4
    assert result.routing_examples == [f"Say {w}" for w in WORDS]
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_base)), str(folder)
    )
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_resume_continues_from_the_last_checkpoint(tiny_base, tmp_path, lr_home):
    out = tmp_path / "resumable"
    cfg = dict(FAST, save_every=2, keep_checkpoints=True)
    train_adapter(
        RECORDS,
        out,
        base_model=str(tiny_base),
        settings=lr_home,
        config=TrainConfig(max_steps=2, **cfg),
    )
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    steps: list[int] = []
    result = train_adapter(
        RECORDS,
        out,
        base_model=str(tiny_base),
        settings=lr_home,
        resume=True,
        config=TrainConfig(max_steps=4, **cfg),
        progress=lambda s, t, logs: steps.append(s),
    )
    assert result.metrics["train_steps"] == 4
    assert min(steps) >= 3  # steps 1-2 were not trained again


def test_resume_without_checkpoint_and_bad_settings_fail_clearly(tiny_base, tmp_path, lr_home):
    with pytest.raises(TrainingError, match="nothing to resume"):
        train_adapter(
            RECORDS, tmp_path / "x", base_model=str(tiny_base), settings=lr_home, resume=True
        )
    with pytest.raises(TrainingError, match="rank=0"):
        TrainConfig(rank=0)
    with pytest.raises(TrainingError, match="needs dev data"):
        train_adapter(
            RECORDS,
            tmp_path / "y",
            base_model=str(tiny_base),
            settings=lr_home,
            config=TrainConfig(early_stopping_patience=1),
        )


def test_cli_train_and_bad_data(tiny_base, tmp_path, lr_home):
    from click.testing import CliRunner

    from loraroute.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    out = tmp_path / "cli-out"
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "train",
            str(data),
            "--name",
            "words",
            "--output",
            str(out),
            "--base-model",
            str(tiny_base),
            "--max-steps",
            "2",
            "--rank",
            "2",
            "--targets",
            "q_proj,v_proj",
            "--batch-size",
            "4",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["metrics"]["train_steps"] == 2
    assert payload["training_config"]["target_modules"] == ["q_proj", "v_proj"]
    assert (out / "adapter_model.safetensors").is_file()

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\nnot json\n")
    res = runner.invoke(
        main,
        [
            "train",
            str(bad),
            "--name",
            "w",
            "--output",
            str(tmp_path / "o2"),
            "--base-model",
            str(tiny_base),
        ],
    )
    assert res.exit_code != 0
    assert "line 2" in res.output and "malformed JSON" in res.output


def test_cli_train_push_and_merge(tiny_base, tmp_path, lr_home):
    from click.testing import CliRunner

    from loraroute.cli import main
    from loraroute.registry import open_registry

    url = f"sqlite:///{tmp_path / 'reg.db'}"
    runner = CliRunner()
    refs = []
    for i, word in enumerate(WORDS[:2]):
        data = tmp_path / f"{word}.jsonl"
        data.write_text(json.dumps(RECORDS[i]) + "\n")
        res = runner.invoke(
            main,
            [
                "train",
                str(data),
                "--name",
                word,
                "--output",
                str(tmp_path / word),
                "--base-model",
                str(tiny_base),
                "--max-steps",
                "1",
                "--rank",
                "2",
                "--push",
                "--registry",
                url,
                "--domain",
                "words",
                "--json",
            ],
        )
        assert res.exit_code == 0, res.output
        refs.append(json.loads(res.stdout)["pushed"]["ref"])
    reg = open_registry(url, settings=lr_home)
    version = reg.resolve(refs[0])
    assert version.domain == "words"
    assert version.routing_examples == [f"Say {WORDS[0]}"]
    assert version.data_digest.startswith("sha256:")
    assert version.base_model_id == str(tiny_base)

    res = runner.invoke(
        main,
        [
            "merge",
            refs[0],
            refs[1],
            "--weights",
            "0.7,0.3",
            "--name",
            "both",
            "--registry",
            url,
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    merged = reg.resolve("both")
    assert merged.parent == refs[0]
    assert merged.tags["merged_from"] == f"{refs[0]},{refs[1]}"
    assert merged.rank == 4  # cat, the default: the ranks add up
    assert sorted(merged.routing_examples) == sorted(f"Say {w}" for w in WORDS[:2])


def test_early_stopping_with_dev_keeps_the_best_adapter(tiny_base, tmp_path, lr_home):
    """Eval and checkpoint once an epoch (one step here) on held-out dev data; at this rate the
    dev loss falls, then rises (measured 5.66, 5.64, 5.68 from 5.75), so training stops early
    and the best checkpoint, not the last, is reloaded before saving."""
    result = train_adapter(
        RECORDS,
        tmp_path / "es",
        base_model=str(tiny_base),
        settings=lr_home,
        dev=HELD_OUT,
        config=TrainConfig(epochs=8, early_stopping_patience=1, **dict(FAST, learning_rate=0.05)),
    )
    m, history = result.metrics, [h["eval_loss"] for h in result.data_report["eval_history"]]
    assert m["train_steps"] < 8 and len(history) == m["train_steps"]
    assert history[-1] > min(history)  # it stopped because the dev loss rose
    assert m["eval_loss"] == pytest.approx(min(history), abs=1e-6)  # the best one was kept
    assert m["eval_loss"] < m["base_eval_loss"]  # and it beats the base on held-out data
    assert (tmp_path / "es" / "adapter_model.safetensors").is_file()


def test_cli_push_records_parent_history_and_given_routing_examples(tiny_base, tmp_path, lr_home):
    from click.testing import CliRunner

    from loraroute.cli import main
    from loraroute.registry import open_registry

    url = f"sqlite:///{tmp_path / 'reg.db'}"
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    common = ["--base-model", str(tiny_base), "--max-steps", "2", "--batch-size", "4"]
    common += ["--push", "--registry", url, "--json"]
    runner = CliRunner()
    first = [
        *("train", str(data), "--name", "words", "--output", str(tmp_path / "w1")),
        *("--dev", str(data), "--rank", "2", "--last-layers", "1", "--lr-scheduler", "constant"),
        *("--warmup", "0", "--routing-sample", "2"),
    ]
    res = runner.invoke(main, first + common)
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    history = payload["data_report"]["eval_history"]
    assert [h["step"] for h in history] == [1, 2]  # evaluated once an epoch (1 step here)
    assert all(h["eval_perplexity"] > 1 for h in history)
    assert "step 2/2" in res.stderr  # progress goes to stderr in --json mode
    reg = open_registry(url, settings=lr_home)
    v1 = reg.resolve("words@1")
    assert len(v1.routing_examples) == 2 and set(v1.routing_examples) < {
        r["messages"][0]["content"] for r in RECORDS
    }
    assert {"base_eval_loss", "eval_loss", "eval_perplexity"} <= set(v1.metrics)
    assert v1.training_config["last_layers"] == 1 and v1.parent is None

    routes = tmp_path / "routes.jsonl"
    routes.write_text('"say a word"\n{"text": "name a thing"}\n"say a word"\n')
    second = ["train", str(data), "--name", "words", "--output", str(tmp_path / "w2")]
    second += ["--parent", "words@1", "--routing-examples", str(routes)]
    res = runner.invoke(main, second + common)
    assert res.exit_code == 0, res.output
    v2 = reg.resolve(json.loads(res.stdout)["pushed"]["ref"])
    assert v2.ref == "words@2" and v2.parent == "words@1"
    assert v2.routing_examples == ["say a word", "name a thing"]
    assert v2.training_config["init_adapter"]
    cfg = json.loads((tmp_path / "w2" / "adapter_config.json").read_text())
    assert cfg["r"] == 2 and cfg["layers_to_transform"] == [1]  # continued from the parent

    res = runner.invoke(main, [*second[:6], "--parent", "words@1", "--base-model", str(tiny_base)])
    assert res.exit_code == 2 and "add --push" in res.output
    res = runner.invoke(main, [*second[:6], "--parent", "nope@1", *common])
    assert res.exit_code == 1 and "nope" in res.output
