"""Training data: validation with line numbers, digest, routing examples, assistant-only labels."""

from __future__ import annotations

import json

import pytest

from loraroute.agents.errors import AgentError, DataValidationError
from loraroute.agents.training.data import data_digest, load_examples, routing_examples
from loraroute.agents.training.tokenize import (
    IGNORE_INDEX,
    encode_all,
    encode_example,
    pack,
    shorten,
)


def _rec(user: str, answer: str, **extra) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        **extra,
    }


@pytest.fixture(scope="module")
def tok(tiny_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_base))


def test_every_problem_is_reported_with_its_line(tmp_path):
    lines = [
        json.dumps(_rec("hi", "hello", id="a", domain="x")),
        '{"messages": [',  # malformed JSON
        json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
        json.dumps(_rec("q", "   ")),
        json.dumps({"messages": [{"content": "who am I"}, {"role": "assistant", "content": "a"}]}),
        "",
        json.dumps(
            {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "a"}]}
        ),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataValidationError, match=r"malformed JSON: 1 \(line 2") as info:
        load_examples(path)
    err = info.value
    assert isinstance(err, AgentError) and isinstance(err, ValueError)
    kinds = {(line, kind) for line, kind, _ in err.issues}
    assert kinds == {
        (2, "malformed JSON"),
        (3, "no assistant turn"),
        (4, "empty assistant turn"),
        (5, "missing role"),
        (7, "unknown role"),
    }
    assert "5 invalid record(s) out of 6" in str(err)


def test_valid_file_with_extra_keys_and_blank_lines(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text(
        json.dumps(_rec("a", "b", id="1", source="s")) + "\n\n" + json.dumps(_rec("c", "d")) + "\n"
    )
    examples = load_examples(path)
    assert [e.line for e in examples] == [1, 3]
    # extra keys do not change the digest; content does
    assert data_digest(examples) == data_digest(load_examples([_rec("a", "b"), _rec("c", "d")]))
    assert data_digest(examples) != data_digest(load_examples([_rec("a", "b"), _rec("c", "e")]))
    assert data_digest(examples).startswith("sha256:")


def test_missing_file_and_empty_data(tmp_path):
    with pytest.raises(DataValidationError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataValidationError, match="no records"):
        load_examples(tmp_path / "empty.jsonl")


def test_routing_examples_are_deduplicated_first_user_turns():
    recs = [_rec("same", "1"), _rec("same", "2"), _rec("other", "3")]
    assert routing_examples(load_examples(recs)) == ["same", "other"]
    many = load_examples([_rec(f"q{i}", "a") for i in range(100)])
    sample = routing_examples(many, limit=10, seed=3)
    assert len(sample) == 10 and sample == routing_examples(many, limit=10, seed=3)


def test_only_assistant_turns_are_labelled(tok):
    (ex,) = load_examples(
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "What is 2+2?"},
                    {"role": "assistant", "content": "It is 4."},
                    {"role": "user", "content": "And 3+3?"},
                    {"role": "assistant", "content": "Six"},
                ]
            }
        ]
    )
    enc = encode_example(tok, ex)
    assert (
        enc.input_ids
        == tok(tok.apply_chat_template(ex.as_dicts(), tokenize=False), add_special_tokens=False)[
            "input_ids"
        ]
    )
    runs, cur = [], []
    for tid, label in zip(enc.input_ids, enc.labels, strict=True):
        if label == IGNORE_INDEX:
            if cur:
                runs.append(cur)
            cur = []
        else:
            assert label == tid
            cur.append(tid)
    if cur:
        runs.append(cur)
    # exactly the two answers and their end-of-turn token; nothing of system, user or headers
    assert [tok.decode(r) for r in runs] == ["It is 4.<|im_end|>", "Six<|im_end|>"]


def test_overlong_examples_are_truncated_or_dropped(tok):
    examples = load_examples(
        [_rec("short", "ok"), _rec("x " * 200, "answer"), _rec("q", "long " * 200)]
    )
    enc, rep = encode_all(tok, examples, max_length=64, overlong="truncate")
    # the long prompt leaves no assistant token inside 64 tokens: dropped; the long answer: cut
    assert (rep.examples, rep.truncated, rep.dropped) == (2, 1, 1)
    assert all(len(e.input_ids) <= 64 for e in enc)
    enc, rep = encode_all(tok, examples, max_length=64, overlong="drop")
    assert (rep.examples, rep.truncated, rep.dropped) == (1, 0, 2)


def test_packing_keeps_whole_examples_and_masks(tok):
    enc, _ = encode_all(tok, load_examples([_rec(f"q{i}", "a") for i in range(6)]), max_length=64)
    packed = pack(enc, 64)
    assert len(packed) < len(enc)
    assert sum(len(p.input_ids) for p in packed) == sum(len(e.input_ids) for e in enc)
    assert all(len(p.input_ids) <= 64 for p in packed)
    assert sum(lab != IGNORE_INDEX for p in packed for lab in p.labels) == sum(
        lab != IGNORE_INDEX for e in enc for lab in e.labels
    )


def test_jsonl_lines_end_at_newline_only(tmp_path):
    # U+2028/U+2029 may stand unescaped inside JSON strings (PubMedQA has them)
    path = tmp_path / "d.jsonl"
    rec = _rec("para\u2029graph", "line\u2028break")
    path.write_text(
        json.dumps(rec, ensure_ascii=False) + "\r\n" + json.dumps(_rec("a", "b")) + "\n"
    )
    examples = load_examples(path)
    assert [e.line for e in examples] == [1, 2]
    assert examples[0].messages[0][1] == "para\u2029graph"


def test_middle_truncation_keeps_the_answer(tok):
    ex = load_examples([_rec("start " + "filler " * 100 + "end of question", "the answer")])[0]
    full = encode_example(tok, ex)
    n_answer = sum(lab != IGNORE_INDEX for lab in full.labels)
    cut = shorten(full, 48, "middle")
    assert len(cut.input_ids) == 48
    assert sum(lab != IGNORE_INDEX for lab in cut.labels) == n_answer  # whole answer kept
    assert cut.input_ids[:6] == full.input_ids[:6]  # the prompt's start (system, instruction)
    assert cut.input_ids[-(n_answer + 6) :] == full.input_ids[-(n_answer + 6) :]  # and its end
    enc, rep = encode_all(tok, [ex], max_length=48)  # "middle" is the default
    assert (rep.truncated, rep.dropped) == (1, 0) and enc[0].labels == cut.labels
    # an answer longer than half the budget: the prompt keeps half, the answer's end is cut
    long_ex = load_examples([_rec("q " * 60, "word " * 80)])[0]
    cut = shorten(encode_example(tok, long_ex), 64, "middle")
    first = next(i for i, lab in enumerate(cut.labels) if lab != IGNORE_INDEX)
    assert len(cut.input_ids) == 64 and first == 32
