"""lm-evaluation-harness scores a served adapter and the base through /v1/completions
(``local-completions``: loglikelihoods from echo + logprobs, and generation), on a task
defined from local files, offline."""

from __future__ import annotations

import json

import pytest
import torch

from loraroute.agents.server import BackgroundServer

ROWS = [
    {"question": "The patient should take the medicine", "choices": [" twice a day", " never"]},
    {"question": "Solve for x: 2x + 3 = 7, so x equals", "choices": [" 2", " 5"]},
    {"question": "The contract clause limits", "choices": [" liability", " the weather"]},
    {"question": "Hello! How can I", "choices": [" help you", " sunny"]},
]
TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
doc_to_text: "{{{{question}}}}"
target_delimiter: ""
"""
MULTIPLE_CHOICE = """output_type: multiple_choice
doc_to_choice: "{{choices}}"
doc_to_target: 0
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
GENERATE = """output_type: generate_until
doc_to_target: "{{choices[0]}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 6
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_base, tiny_adapter_factory):
    from loraroute.agents.server.testing import tiny_stack

    s = tiny_stack(
        tmp_path_factory.mktemp("srv-lm-eval"), tiny_base, {"legal": [tiny_adapter_factory(1)]}
    )
    with BackgroundServer(s.app()) as srv:
        s.url = srv.url
        yield s
    s.close()


def _tasks(folder):
    data = folder / "tiny.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS))
    common = {"data": data, "cache": folder / "hf-datasets"}
    (folder / "mc.yaml").write_text(TASK.format(name="lr_tiny_mc", **common) + MULTIPLE_CHOICE)
    (folder / "gen.yaml").write_text(TASK.format(name="lr_tiny_gen", **common) + GENERATE)
    return ["lr_tiny_mc", "lr_tiny_gen"]


def _loglikelihood(engine, adapter, context: str, continuation: str) -> float:
    """What lm-eval's loglikelihood is: the continuation's log-probability after the context
    (tokenized as lm-eval does: the pair whole, the context alone for its length)."""
    tok = engine.tokenizer
    ids = tok(context + continuation)["input_ids"]
    start = len(tok(context)["input_ids"])
    logprobs = torch.log_softmax(engine.logits(torch.tensor([ids]), [adapter])[0].float(), -1)
    return sum(float(logprobs[pos - 1, ids[pos]]) for pos in range(start, len(ids)))


def test_lm_eval_scores_an_adapter_and_the_base(served, tiny_base, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = _tasks(tmp_path)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    scores = {}
    for model in ("legal", "base"):
        out = lm_eval.simple_evaluate(
            model="local-completions",
            model_args={
                "base_url": served.url + "/v1/completions",
                "model": model,
                "tokenizer": str(tiny_base),
                "tokenizer_backend": "huggingface",
                "max_retries": 1,
                "max_length": 256,
            },
            tasks=tasks,
            task_manager=manager,
            log_samples=True,
        )
        assert 0 <= out["results"]["lr_tiny_mc"]["acc,none"] <= 1
        assert 0 <= out["results"]["lr_tiny_gen"]["exact_match,none"] <= 1
        samples = out["samples"]
        assert len(samples["lr_tiny_mc"]) == len(ROWS) == len(samples["lr_tiny_gen"])
        assert all(isinstance(s["resps"][0][0], str) for s in samples["lr_tiny_gen"])
        scores[model] = {
            (s["doc_id"], i): resp[0][0]
            for s in samples["lr_tiny_mc"]
            for i, resp in enumerate(s["resps"])
        }
    # each score is the served model's own, and the adapter changes it
    engine = served.engine
    for (doc, choice), value in scores["legal"].items():
        row = ROWS[doc]
        want = _loglikelihood(engine, "legal@1", row["question"], row["choices"][choice])
        assert value == pytest.approx(want, abs=1e-3)
        base = _loglikelihood(engine, None, row["question"], row["choices"][choice])
        assert scores["base"][(doc, choice)] == pytest.approx(base, abs=1e-3)
        assert value != pytest.approx(scores["base"][(doc, choice)], abs=1e-6)
