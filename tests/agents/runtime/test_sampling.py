"""Sampling parameters: each one changes the choice as vLLM's does, on logits and on the engine."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from loraroute.agents.runtime import sampling
from loraroute.agents.runtime.engine import Engine
from loraroute.agents.runtime.requests import RequestHandle, SamplingParams

PROMPT = "Solve for x: 2x + 3 = 7"


def _row(tokens=(), prompt=(5, 6), eos=(), **params):
    handle = RequestHandle(
        id=1,
        prompt_ids=list(prompt),
        slot=0,
        adapter_ref=None,
        adapter_digest=None,
        params=SamplingParams(**params),
        eos_ids=frozenset(eos),
    )
    return SimpleNamespace(handle=handle, tokens=list(tokens), generator=None)


def test_invalid_parameters_name_themselves():
    for kwargs, name in [
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"logit_bias": {3: 101}}, "logit_bias"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"logprobs": -1}, "logprobs"),
    ]:
        with pytest.raises(ValueError, match=name):
            SamplingParams(**kwargs)
    assert SamplingParams(logit_bias={3: 1.5}).logit_bias == ((3, 1.5),)
    assert SamplingParams().plain_greedy and not SamplingParams(logprobs=0).plain_greedy


def test_penalties_bias_and_bans_on_logits():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    rep = sampling.process_logits(_row(tokens=[1], prompt=[0], repetition_penalty=2.0), logits)
    assert rep.tolist() == [1.0, -4.0, 1.0, 0.5]  # seen in prompt or answer: 0 and 1
    row = _row(tokens=[0, 0, 2], prompt=[3], frequency_penalty=0.5, presence_penalty=0.25)
    pen = sampling.process_logits(row, logits)  # counts [2, 0, 1, 0]; the prompt is not counted
    assert pen.tolist() == pytest.approx([2 - 1 - 0.25, -2.0, 1 - 0.5 - 0.25, 0.5])
    biased = sampling.process_logits(_row(logit_bias={1: 10.0}), logits)
    assert biased.tolist() == [2.0, 8.0, 1.0, 0.5]
    allowed = sampling.process_logits(_row(allowed_token_ids=[2, 3]), logits)
    assert allowed.tolist() == [float("-inf"), float("-inf"), 1.0, 0.5]
    early = _row(tokens=[2], eos=[0], min_tokens=2, stop_token_ids=[3])
    assert sampling.process_logits(early, logits).tolist() == [float("-inf"), -2, 1, float("-inf")]
    late = _row(tokens=[2, 2], eos=[0], min_tokens=2, stop_token_ids=[3])
    assert sampling.process_logits(late, logits).tolist() == logits.tolist()
    no_eos = sampling.process_logits(_row(eos=[0], ignore_eos=True), logits)
    assert no_eos[0] == float("-inf")
    assert sampling.process_logits(_row(), logits) is logits  # nothing to apply: no copy


def test_top_k_and_min_p_narrow_the_draw():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    for params, allowed in [({"top_k": 2}, {0, 1}), ({"min_p": 0.6}, {0, 1})]:
        row = _row(temperature=1.0, **params)
        row.generator = torch.Generator().manual_seed(0)
        seen = {sampling.sample_one(row, logits) for _ in range(200)}
        assert seen == allowed, params


@pytest.fixture(scope="module")
def engine(tiny_base, tmp_path_factory):
    from loraroute.settings import get_settings

    settings = get_settings(home=tmp_path_factory.mktemp("home"))
    eng = Engine(tiny_base, settings=settings, device="cpu", max_batch_size=8)
    yield eng
    eng.close()


def test_logprobs_are_the_models_own_under_teacher_forcing(engine):
    plain = engine.generate(PROMPT, max_new_tokens=6)
    gen = engine.generate(PROMPT, params=SamplingParams(max_new_tokens=6, logprobs=3))
    assert gen.token_ids == plain.token_ids and plain.logprobs is None
    assert [lp.token_id for lp in gen.logprobs] == gen.token_ids
    ids, _ = engine.render(PROMPT, 6)
    logits = engine.logits(torch.tensor([ids + gen.token_ids]), [None])[0].float()
    want = torch.log_softmax(logits[len(ids) - 1 : -1], -1)
    for step, lp in enumerate(gen.logprobs):
        assert lp.logprob == pytest.approx(float(want[step, lp.token_id]), abs=1e-4)
        assert len(lp.top) == 3 and lp.top[0][0] == lp.token_id  # greedy: the best one
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
    scored = sampling.prompt_logprobs(logits, ids + gen.token_ids, 2)
    assert scored[0] is None and len(scored) == len(ids) + len(gen.token_ids)
    tail = scored[len(ids) :]
    assert [s.logprob for s in tail] == pytest.approx([lp.logprob for lp in gen.logprobs], abs=1e-4)


def test_stop_token_ids_bias_and_eos_rules_in_the_engine(engine):
    base = engine.generate(PROMPT, max_new_tokens=8, ignore_eos=True).token_ids
    stop = base[2]
    cut = engine.generate(PROMPT, max_new_tokens=8, ignore_eos=True, stop_token_ids=[stop])
    assert cut.finish_reason == "stop" and cut.token_ids == base[: base.index(stop) + 1]
    forced = engine.generate(PROMPT, max_new_tokens=5, logit_bias={7: 100.0})
    assert forced.token_ids == [7] * 5
    eos = engine.tokenizer.eos_token_id
    early = engine.generate(PROMPT, max_new_tokens=8, logit_bias={eos: 100.0}, min_tokens=3)
    assert early.completion_tokens == 3 and early.finish_reason == "stop"
    never = engine.generate(PROMPT, max_new_tokens=6, logit_bias={eos: 100.0}, ignore_eos=True)
    assert never.completion_tokens == 6 and never.finish_reason == "length"
    only = engine.generate(PROMPT, max_new_tokens=6, temperature=1.0, allowed_token_ids=[9, 11])
    assert set(only.token_ids) <= {9, 11}
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.submit(PROMPT, stop_token_ids=[engine.vocab_size])
    with pytest.raises(TypeError, match="not both"):
        engine.submit(PROMPT, params=SamplingParams(), max_new_tokens=3)


def test_guided_regex_choice_and_grammar(engine):
    for spec, check in [
        ({"kind": "choice", "choices": ["yes", "no way"]}, lambda t: t in ("yes", "no way")),
        ({"kind": "regex", "regex": "[0-9]{3}-[a-c]+"}, re.compile("[0-9]{3}-[a-c]+").fullmatch),
        ({"kind": "grammar", "grammar": 'root ::= "a" ("b" | "c")'}, lambda t: t in ("ab", "ac")),
    ]:
        for seed in range(3):
            gen = engine.generate(
                PROMPT, max_new_tokens=12, temperature=1.0, seed=seed, constraint=spec
            )
            assert check(gen.text), (spec, gen.text)
