"""``adapters eval`` on the tiny base: trained adapters beat the base, routing picks them, the
engine's batched losses equal PEFT's, and bad input fails clearly."""

from __future__ import annotations

import json

import pytest

from loraroute.agents.errors import DataValidationError
from loraroute.agents.evaluation import EvaluationError, evaluate, load_labelled, route_only
from loraroute.agents.training import TrainConfig, train_adapter

DOMAINS = {
    "fruit": ("Name fruit number {i}", "apple pear plum fig"),
    "rock": ("Name rock number {i}", "granite basalt slate"),
}


def _records(domain: str, numbers, key: str = "domain") -> list[dict]:
    question, answer = DOMAINS[domain]
    return [
        {
            key: domain,
            "messages": [
                {"role": "user", "content": question.format(i=i)},
                {"role": "assistant", "content": answer},
            ],
        }
        for i in numbers
    ]


DEV = _records("fruit", range(20, 24)) + _records("rock", range(20, 24))


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory):
    """Two adapters trained on their domain and pushed with routing examples."""
    from loraroute.registry import open_registry
    from loraroute.settings import get_settings

    root = tmp_path_factory.mktemp("eval")
    settings = get_settings(home=root / "home")
    url = f"sqlite:///{root / 'reg.db'}"
    reg = open_registry(url, settings=settings)
    cfg = TrainConfig(
        max_steps=12, batch_size=4, rank=4, target_modules="all-linear", learning_rate=3e-2
    )
    for domain in DOMAINS:
        result = train_adapter(
            _records(domain, range(8)),
            root / domain,
            base_model=str(tiny_base),
            settings=settings,
            config=cfg,
        )
        reg.push(
            result.output_dir,
            domain,
            domain=domain,
            routing_examples=result.routing_examples,
            base_model_id=result.base_model_id,
            base_fingerprint=result.base_fingerprint,
        )
        reg.alias_set(domain, "prod", 1)  # live: served and routed to
    return reg, url, settings, root


def test_oracle_beats_base_and_wrong_and_routing_picks_it(trained):
    from loraroute.router import Router

    reg, _, settings, _ = trained
    router = Router(reg, encoder="hashing", settings=settings)
    report = evaluate(DEV, registry=reg, router=router, settings=settings)
    assert [r["label"] for r in report.labels] == ["fruit", "rock"]
    for row in report.labels:
        assert row["examples"] == 4
        assert row["oracle_loss"] < row["base_loss"] - 0.05
        assert row["oracle_loss"] < row["wrong_loss"] - 0.05
        assert row["routing_accuracy"] == 1.0
        assert row["routed_loss"] == pytest.approx(row["oracle_loss"])
        assert row["routed_vs_oracle"] == pytest.approx(0.0, abs=1e-9)
    assert report.overall["routing_accuracy"] == 1.0
    assert report.routing is not None and report.routing.misrouted == {}
    # base + 2 adapters per example (the routed one is the oracle: not scored twice)
    assert report.sequences == 3 * len(DEV)
    data = report.to_dict(examples=True)
    assert len(data["examples"]) == len(DEV)
    assert {e["routed_to"] for e in data["examples"]} == {"fruit@1", "rock@1"}
    assert "fruit" in report.table_text()


def test_misrouting_counts_in_accuracy_and_routed_loss(trained):
    from loraroute.router import Router

    reg, _, settings, _ = trained
    # a router that sends everything to "rock": fruit requests are misrouted
    router = Router.from_examples({"rock": ["Name fruit", "Name rock"]}, encoder="hashing")
    report = evaluate(DEV, registry=reg, router=router, settings=settings, wrong=False)
    fruit, rock = report.labels
    assert fruit["routing_accuracy"] == 0.0 and rock["routing_accuracy"] == 1.0
    assert fruit["routed_loss"] > fruit["oracle_loss"]
    assert fruit["wrong_loss"] is None  # wrong=False
    assert report.overall["routing_accuracy"] == 0.5
    assert report.routing.misrouted == {"fruit": {"rock@1": 4}}
    only = route_only(DEV, router=router)
    assert only.accuracy == 0.5 and only.per_label == {"fruit": 0.0, "rock": 1.0}


def test_engine_losses_equal_peft(tiny_base, tiny_adapter_factory, lr_home):
    """Mixed-adapter, padded, multi-batch scoring gives PEFT's per-example NLL."""
    import torch
    import torch.nn.functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraroute.agents.training.data import ChatExample
    from loraroute.agents.training.tokenize import encode_example

    folders = {
        "fruit": tiny_adapter_factory(3),
        "rock": tiny_adapter_factory(4, r=8, target_modules=("q_proj", "k_proj", "o_proj")),
    }
    records = _records("fruit", [1, 22, 333]) + _records("rock", [4444, 5])
    records[1]["messages"][1]["content"] = "a much longer answer " * 3
    report = evaluate(
        records,
        adapters={k: str(v) for k, v in folders.items()},
        router=False,
        base_model=str(tiny_base),
        settings=lr_home,
        batch_tokens=100,  # several batches, rows of different examples padded together
    )
    assert report.routing is None and report.labels[0]["routed_loss"] is None
    tok = AutoTokenizer.from_pretrained(str(tiny_base))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base), dtype=torch.float32)

    def nll(model, rec) -> float:
        ex = load_labelled([rec])[0]
        enc = encode_example(tok, ChatExample(ex.messages, 1))
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        target = torch.tensor(enc.labels[1:])
        return float(F.cross_entropy(logits, target, ignore_index=-100, reduction="sum"))

    base_nll = [nll(base, r) for r in records]
    peft = {}
    for label, folder in folders.items():
        fresh = AutoModelForCausalLM.from_pretrained(str(tiny_base), dtype=torch.float32)
        peft[label] = PeftModel.from_pretrained(fresh, str(folder)).eval()
    examples = report.per_example
    for i, rec in enumerate(records):
        label = rec["domain"]
        other = "rock" if label == "fruit" else "fruit"
        assert examples[i]["base_nll"] == pytest.approx(base_nll[i], rel=1e-4)
        assert examples[i]["oracle_nll"] == pytest.approx(nll(peft[label], rec), rel=1e-4)
        assert examples[i]["wrong_nll"] == pytest.approx(nll(peft[other], rec), rel=1e-4)


def test_bad_data_and_unmapped_labels_fail_clearly(tmp_path, tiny_adapter_factory, lr_home):
    path = tmp_path / "dev.jsonl"
    good = json.dumps(_records("fruit", [1])[0])
    unlabelled = json.dumps({"messages": _records("rock", [1])[0]["messages"]})
    path.write_text(good + "\n" + unlabelled + "\n{oops\n")
    with pytest.raises(DataValidationError) as err:
        load_labelled(path)
    msg = str(err.value)
    assert "no label: 1 (line 2" in msg and "malformed JSON: 1 (line 3" in msg
    assert load_labelled([_records("rock", [1], key="label")[0]])[0].label == "rock"
    with pytest.raises(EvaluationError, match="label.s. rock have no adapter"):
        evaluate(
            DEV,
            adapters={"fruit": str(tiny_adapter_factory(1))},
            router=False,
            settings=lr_home,
        )
    with pytest.raises(EvaluationError, match="no router and no registry"):
        evaluate(DEV, adapters={"fruit": "x", "rock": "y"}, settings=lr_home)


def test_cli_eval_json_table_and_errors(trained, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from loraroute.cli import main

    _, url, settings, root = trained
    monkeypatch.setenv("LORAROUTE_HOME", str(settings.home))
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in DEV))
    runner = CliRunner()
    res = runner.invoke(
        main, ["eval", str(dev), "--registry", url, "--encoder", "hashing", "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["overall"]["routing_accuracy"] == 1.0
    assert {r["label"] for r in data["labels"]} == {"fruit", "rock"}
    assert all(r["oracle_loss"] < r["base_loss"] for r in data["labels"])

    res = runner.invoke(main, ["eval", str(dev), "--registry", url, "--encoder", "hashing"])
    assert res.exit_code == 0, res.output
    assert "routed/oracle" in res.output and "100.0%" in res.output

    # folders without a registry: only with --no-route
    folders = ["--adapter", f"fruit={root / 'fruit'}", "--adapter", f"rock={root / 'rock'}"]
    res = runner.invoke(main, ["eval", str(dev), *folders, "--no-route", "--no-wrong", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["overall"]["routing_accuracy"] is None
    res = runner.invoke(main, ["eval", str(dev), *folders])
    assert res.exit_code != 0 and "--no-route" in res.output

    res = runner.invoke(main, ["eval", str(dev), "--adapter", "fruit"])
    assert res.exit_code == 2 and "LABEL=REF" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": DEV[0]["messages"]}) + "\n")
    res = runner.invoke(main, ["eval", str(bad), "--registry", url])
    assert res.exit_code == 1 and "no label" in res.output


def test_task_metrics_base_oracle_routed_majority(trained, tiny_base, tmp_path):
    """Answers generated in one batch across adapters equal each one generated alone; they are
    scored with label accuracy beside the majority answer of the training data; the records
    are registry-ready."""
    import hashlib

    from loraroute.agents.evaluation import registry_records
    from loraroute.agents.evaluation.metrics import LabelAccuracy
    from loraroute.agents.runtime import Engine
    from loraroute.router import Router

    reg, _, settings, _ = trained
    router = Router(reg, encoder="hashing", settings=settings)
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in DEV))
    # the majority training answer is rock's for both labels
    train = _records("fruit", range(3)) + _records("rock", range(3))
    train[0]["messages"][1]["content"] = "granite basalt slate"
    train[1]["messages"][1]["content"] = "granite basalt slate"
    with Engine(str(tiny_base), registry=reg, settings=settings, device="cpu") as engine:
        report = evaluate(
            dev,
            registry=reg,
            router=router,
            engine=engine,
            settings=settings,
            wrong=False,
            metrics="auto",
            train=train,
        )
        examples = report.to_dict(examples=True)["examples"]
        metrics = {}  # the label set of each label: its training and evaluation answers
        for label in DOMAINS:
            metrics[label] = LabelAccuracy()
            metrics[label].fit([r["messages"][1]["content"] for r in train + DEV
                                if r["domain"] == label])  # fmt: skip
        for rec, ex in zip(DEV, examples, strict=True):
            metric = metrics[ex["label"]]
            task = ex["task"]
            assert set(task["scores"]) == {"base", "oracle", "routed", "majority"}
            # the oracle's answer, generated beside other adapters' and the base's, is the one
            # it gives alone (the untrained base's near-flat logits may tie: not compared)
            alone = engine.generate(
                rec["messages"][:1],
                f"{ex['label']}@1",
                max_new_tokens=metric.max_new_tokens,
                temperature=0,
            )
            assert task["answers"]["oracle"] == alone.text
            for who in ("base", "oracle"):
                want = metric.score(task["answers"][who], rec["messages"][1]["content"])
                assert task["scores"][who] == want
            assert task["answers"]["routed"] == task["answers"]["oracle"]
            assert task["answers"]["oracle"] != task["answers"]["base"]
    for row in report.labels:
        task = row["task"]
        assert task["metric"] == "label_accuracy" and task["n"] == 4
        assert task["max_new_tokens"] == metrics[row["label"]].max_new_tokens
        assert task["routed"] == task["oracle"] and task["routed_minus_oracle"]["value"] == 0
        assert task["majority_from"] == "training data"
        assert task["majority_answer"] == "granite basalt slate"
        assert set(task["base"]) == {"value", "ci_low", "ci_high", "n"}
    fruit, rock = report.labels
    assert fruit["task"]["majority"]["value"] == 0.0 and rock["task"]["majority"]["value"] == 1.0
    assert rock["task"]["majority"]["ci_low"] == pytest.approx(0.5101, abs=1e-4)  # Wilson, 4/4
    assert fruit["dataset"] == "dev.jsonl"
    digest = "sha256:" + hashlib.sha256(dev.read_bytes()).hexdigest()
    assert fruit["dataset_digest"] == digest == rock["dataset_digest"]

    records = registry_records(report)
    keys = {"adapter", "dataset", "dataset_digest", "metric", "value", "ci_low", "ci_high", "n",
            "higher_is_better"}  # fmt: skip
    assert all(set(r) == keys for r in records)
    assert [(r["adapter"], r["metric"]) for r in records] == [
        ("fruit@1", "loss"),
        ("fruit@1", "label_accuracy"),
        ("rock@1", "loss"),
        ("rock@1", "label_accuracy"),
    ]
    assert records[1]["value"] == fruit["task"]["oracle"]["value"] and records[1]["n"] == 4
    assert records[1]["higher_is_better"] is True
    assert records[0]["higher_is_better"] is False and records[0]["ci_low"] is None
    assert "task metrics" in report.table_text()


def test_cli_eval_task_metrics_json_and_pluggable_metric(trained, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from loraroute.cli import main

    _, url, settings, root = trained
    monkeypatch.setenv("LORAROUTE_HOME", str(settings.home))
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in DEV))
    (tmp_path / "fruity.py").write_text("def half_credit(prediction, reference):\n    return 0.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    folders = ["--adapter", f"fruit={root / 'fruit'}", "--adapter", f"rock={root / 'rock'}"]
    runner = CliRunner()
    res = runner.invoke(
        main,
        ["eval", str(dev), *folders, "--no-route", "--no-wrong", "--json",
         "--metric", "rock=none", "--metric", "fruit=fruity:half_credit",
         "--max-new-tokens", "6", "--batch-size", "4", "--task-limit", "3"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    fruit, rock = json.loads(res.stdout)["labels"]
    assert rock["task"] is None and rock["oracle_loss"] is not None
    task = fruit["task"]
    assert task["metric"] == "half_credit" and task["max_new_tokens"] == 6
    # not 0/1 scores: a bootstrap interval (of a constant: the constant)
    assert task["oracle"] == {"value": 0.5, "ci_low": 0.5, "ci_high": 0.5, "n": 3}
    assert task["n"] == 3 and fruit["examples"] == 4  # answers for 3, losses for all
    assert task["routed"] is None and task["routed_minus_oracle"] is None
    assert set(task) >= {"base", "majority", "oracle_minus_base", "oracle_minus_majority", "n"}

    res = runner.invoke(main, ["eval", str(dev), *folders, "--no-route", "--metric", "nope"])
    assert res.exit_code == 2 and "unknown metric 'nope'" in res.output
    res = runner.invoke(main, ["eval", str(dev), *folders, "--no-route", "--metric", "=label"])
    assert res.exit_code == 2 and "LABEL=METRIC" in res.output


def test_cli_eval_record_feeds_the_quality_gate(trained, tmp_path, monkeypatch):
    """``--record`` stores each version's oracle results under a digest of the examples
    scored; a version that scores worse on them is then refused the serving alias."""
    from click.testing import CliRunner

    from loraroute.cli import main
    from loraroute.registry import QualityGateError

    reg, url, settings, root = trained
    monkeypatch.setenv("LORAROUTE_HOME", str(settings.home))
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in DEV if r["domain"] == "fruit"))
    args = ["eval", str(dev), "--registry", url, "--no-route", "--no-wrong", "--metric",
            "exact", "--max-new-tokens", "4", "--task-limit", "2", "--record", "--json"]  # fmt: skip
    runner = CliRunner()
    res = runner.invoke(main, [*args, "--adapter", "fruit=fruit:prod"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["recorded"] == ["fruit@1"]
    first = reg.evals("fruit@1")
    assert {r.metric for r in first} == {"loss", "exact_match"}
    assert all(
        r.source == "adapters eval" and r.dataset_digest.startswith("sha256:") for r in first
    )
    loss = next(r for r in first if r.metric == "loss")
    assert loss.higher_is_better is False and loss.n == 4

    # the rock adapter pushed as fruit@2: worse on the fruit examples, so the gate refuses it
    reg.push(root / "rock", "fruit", base_fingerprint=reg.resolve("fruit@1").base_fingerprint)
    res = runner.invoke(main, [*args, "--adapter", "fruit=fruit@2"])
    assert res.exit_code == 0, res.output
    second = {r.metric: r for r in reg.evals("fruit@2")}
    assert second["loss"].dataset_digest == loss.dataset_digest  # the same examples, comparable
    assert second["loss"].value > loss.value
    with pytest.raises(QualityGateError, match="loss"):
        reg.alias_set("fruit", "prod", 2)
    assert reg.resolve("fruit:prod").ref == "fruit@1"

    folders = ["--adapter", f"fruit={root / 'fruit'}"]
    res = runner.invoke(main, [*args[:-1], *folders])  # a folder: scored, not recorded
    assert res.exit_code == 0, res.output
    assert "not recorded (adapter folders" in res.output
