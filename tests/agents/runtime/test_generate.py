"""Generation: equals transformers/PEFT greedy decoding, alone and in mixed continuous batches."""

from __future__ import annotations

import asyncio

import pytest
import torch

from loraroute.agents.errors import ContextLengthError, EmptyConversationError
from loraroute.agents.runtime.engine import Engine

PROMPTS = [
    "Hello, how are you?",
    "Solve for x: 2x + 3 = 7",
    "The contract clause",
    "def add(a, b):",
]


@pytest.fixture(scope="module")
def adapters(tiny_adapter_factory):
    return {
        "a": tiny_adapter_factory(1),
        "b": tiny_adapter_factory(2, r=8, target_modules=("q_proj", "v_proj", "down_proj")),
        "c": tiny_adapter_factory(3, r=2),
    }


@pytest.fixture(scope="module")
def engine(tiny_base, adapters, tmp_path_factory):
    from loraroute.settings import get_settings

    settings = get_settings(home=tmp_path_factory.mktemp("home"))
    eng = Engine(tiny_base, settings=settings, device="cpu", max_resident=4, max_batch_size=8)
    for name, path in adapters.items():
        eng.load_adapter_folder(path, name=name)
    yield eng
    eng.close()


def _reference_ids(tiny_base, adapter_dir, prompt, n):
    """Greedy token ids from transformers' own generate (through PEFT when adapted)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_base))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_base))
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.eval().generate(
            input_ids=ids,
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    gen = out[0, ids.shape[1] :].tolist()
    return [t for t in gen if t != tok.eos_token_id]


@pytest.mark.parametrize("name", [None, "a", "b"])
def test_greedy_matches_transformers_generate(engine, tiny_base, adapters, name):
    got = engine.generate(PROMPTS[0], adapter=name, max_new_tokens=12)
    assert got.token_ids == _reference_ids(tiny_base, adapters.get(name), PROMPTS[0], 12)
    assert got.adapter_ref == name
    assert got.prompt_tokens > 0 and got.completion_tokens == len(got.token_ids)


def test_mixed_requests_join_a_running_batch_and_match_solo_runs(engine):
    names = [None, "a", "b", "c", "a", None]
    pairs = list(zip((PROMPTS * 2)[: len(names)], names, strict=True))
    solo = [engine.generate(p, adapter=n, max_new_tokens=10).token_ids for p, n in pairs]
    steps_before = engine.scheduler.steps
    first = engine.submit(PROMPTS[0], adapter=names[0], max_new_tokens=24)
    stream = iter(first)
    next(stream)  # the first request is decoding; the others join it between steps
    rest = [engine.submit(p, adapter=n, max_new_tokens=10) for p, n in pairs[1:]]
    results = [h.result(timeout=60) for h in rest]
    assert [r.token_ids for r in results] == solo[1:]
    assert [r.adapter_ref for r in results] == names[1:]
    assert first.result(timeout=60).token_ids[:10] == solo[0]
    assert engine.scheduler.max_rows_seen > 1
    assert engine.scheduler.steps - steps_before < 24 + 10 * 5  # decoded together, not one by one


def test_stop_sequences_cut_the_text(engine):
    full = engine.generate(PROMPTS[1], adapter="a", max_new_tokens=16)
    assert len(full.text) > 4
    stop = full.text[2:4]
    cut = engine.generate(PROMPTS[1], adapter="a", max_new_tokens=16, stop=[stop])
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop" and cut.stop_sequence == stop


def test_streaming_concatenates_to_the_result(engine):
    handle = engine.submit(PROMPTS[2], adapter="b", max_new_tokens=12)
    deltas = list(handle)
    assert "".join(deltas) == handle.result().text
    assert len(deltas) > 1


def test_sampling_is_repeatable_with_a_seed(engine):
    kw = dict(adapter="c", max_new_tokens=12, temperature=1.0, top_p=0.9)
    one = engine.generate(PROMPTS[3], seed=7, **kw).token_ids
    assert engine.generate(PROMPTS[3], seed=7, **kw).token_ids == one
    others = {tuple(engine.generate(PROMPTS[3], seed=s, **kw).token_ids) for s in range(4)}
    assert len(others) > 1


def test_a_sampling_error_fails_only_its_own_request(engine, monkeypatch):
    from loraroute.agents.runtime import sampling

    sched = engine.scheduler
    sample = sampling.sample_one
    rows_at_failure = []

    def flaky(row, logits):
        if row.handle.params.seed != 666:
            return sample(row, logits)
        if row.position == len(row.handle.prompt_ids):  # the prefill's token: not EOS
            return 5
        rows_at_failure.append(len(sched._rows))
        raise ValueError("bad logits")

    monkeypatch.setattr(sampling, "sample_one", flaky)
    with engine._model_lock:  # queue every request before the first forward
        good = [
            engine.submit(p, adapter=a, max_new_tokens=20)
            for p, a in zip(PROMPTS[:2], "ab", strict=True)
        ]
        bad = engine.submit(PROMPTS[2], adapter="c", max_new_tokens=20, temperature=1.0, seed=666)
    with pytest.raises(ValueError, match="bad logits"):
        bad.result(timeout=60)
    for handle in good:
        assert handle.result(timeout=60).finish_reason in ("stop", "length")
    assert rows_at_failure and rows_at_failure[0] >= 2  # it failed inside a shared batch
    assert all(e["in_use"] == 0 for e in engine.resident())


def test_cancel_frees_the_row_and_the_adapter(engine):
    handle = engine.submit(PROMPTS[0], adapter="a", max_new_tokens=400)
    next(iter(handle))
    handle.cancel()
    result = handle.result(timeout=60)
    assert result.finish_reason == "cancelled"
    assert result.completion_tokens < 400
    assert all(e["in_use"] == 0 for e in engine.resident())
    assert engine.generate(PROMPTS[0], max_new_tokens=2).completion_tokens <= 2


def test_async_generate_and_stream(engine):
    async def main():
        gens = await asyncio.gather(
            *(
                engine.agenerate(p, adapter=n, max_new_tokens=8)
                for p, n in zip(PROMPTS, [None, "a", "b", "c"], strict=True)
            )
        )
        deltas = [d async for d in engine.astream(PROMPTS[0], adapter="a", max_new_tokens=8)]
        return gens, deltas

    gens, deltas = asyncio.run(main())
    assert [g.adapter_ref for g in gens] == [None, "a", "b", "c"]
    assert "".join(deltas) == engine.generate(PROMPTS[0], adapter="a", max_new_tokens=8).text


def test_context_window_policy(engine):
    long_turns = []
    for i in range(40):
        long_turns += [
            {"role": "user", "content": "The contract clause limits liability. " * 3 + str(i)},
            {"role": "assistant", "content": "Solve for x: 2x + 3 = 7. " * 3},
        ]
    messages = [
        {"role": "system", "content": "Be brief."},
        *long_turns,
        {"role": "user", "content": "Hello"},
    ]
    got = engine.generate(messages, max_new_tokens=4)
    assert got.truncated_turns > 0
    assert got.prompt_tokens <= engine.max_context
    with pytest.raises(ContextLengthError, match="shorten the last message"):
        engine.generate("word " * 2000, max_new_tokens=4)


def test_empty_conversation_is_refused(engine):
    with pytest.raises(EmptyConversationError, match="no messages"):
        engine.generate([], max_new_tokens=4)
