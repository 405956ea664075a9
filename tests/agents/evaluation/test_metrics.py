"""Task metric extractors, the majority-class answer, pluggable metrics and the CI math."""

from __future__ import annotations

import math
import sys

import pytest

from loraroute.agents.evaluation.metrics import (
    FinalNumberMatch,
    LabelAccuracy,
    MetricError,
    bootstrap,
    estimate,
    final_number,
    get_metric,
    infer_metric,
    majority_answer,
    paired_difference,
    reference_label,
    register_metric,
    wilson,
)

PUBMEDQA = [
    "Yes. DW imaging can be helpful in the detection of cancer.",
    "No. Patients who normalized their levels had equivalent survival.",
    "Maybe. The evidence is mixed.",
    "Yes. It helps.",
]
LEGAL = ["No", "Yes", "A", "Common Law", "Patrick J McEnany,Hubert E Huckel", "No"]


def test_reference_label_is_the_opening_word_or_the_whole_answer():
    assert [reference_label(r) for r in PUBMEDQA] == ["yes", "no", "maybe", "yes"]
    assert [reference_label(r) for r in LEGAL] == [
        "no",
        "yes",
        "a",
        "common law",
        "patrick j mcenany,hubert e huckel",
        "no",
    ]


@pytest.mark.parametrize(
    ("prediction", "label"),
    [
        ("Yes", "yes"),
        ("yes.", "yes"),
        ("Yes, the study shows it helps.", "yes"),
        ("  **No**. Patients...", "no"),
        ("MAYBE", "maybe"),
        ("Not clear", None),  # "no" is a prefix of "not", not a label
        ("Based on the study, yes", None),  # the label must open the answer
        ("", None),
    ],
)
def test_label_extraction_pubmedqa(prediction, label):
    m = LabelAccuracy()
    m.fit(PUBMEDQA)
    assert m.labels == {"yes", "no", "maybe"}
    assert m.extract(prediction) == label
    if label is not None:
        ref = next(r for r in PUBMEDQA if reference_label(r) == label)
        assert m.score(prediction, ref) == 1.0


def test_label_extraction_legal_prefers_the_longest_label():
    m = LabelAccuracy(labels=["Common"])
    m.fit(LEGAL)
    assert m.extract("Common Law.") == "common law"
    assert m.extract("Common sense") == "common"
    assert m.score("A", "A") == 1.0 and m.score("B", "A") == 0.0
    assert m.score("No", "Yes") == 0.0
    assert m.max_new_tokens == 4 + 3 * 5  # the five-word name fits


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("2+3=5 buckets.\nIt will take 110/5=22 rounds.\nAnswer: 22", "22"),
        ("She pays $1,250.50 in total.\n#### 1,250.50", "1250.5"),
        ("answer: -7", "-7"),
        ("The answer is 3.00 dollars", "3"),
        ("Answer: $18", "18"),
        ("first 4 then 9 so the result is 12", "12"),  # no marker: the last number
        ("Answer: 5\nWait, 2 more", "5"),  # the marker beats a later number
        ("no numbers here", None),
    ],
)
def test_final_number(text, number):
    assert final_number(text) == number


def test_final_number_match_scores_values_not_strings():
    m = get_metric("final-number")
    assert isinstance(m, FinalNumberMatch)
    assert m.score("so 1000 in all\nAnswer: 1,000", "...\nAnswer: 1000") == 1.0
    assert m.score("Answer: 999", "Answer: 1000") == 0.0
    assert m.score("I do not know", "#### 4") == 0.0


def test_majority_answer_and_infer_metric():
    label = LabelAccuracy()
    assert majority_answer(label, PUBMEDQA) == "yes"
    assert majority_answer(FinalNumberMatch(), ["Answer: 3", "x\nAnswer: 3.0", "Answer: 4"]) == "3"
    assert isinstance(infer_metric(["a\nAnswer: 3", "b\n#### 4"]), FinalNumberMatch)
    assert isinstance(infer_metric(PUBMEDQA * 3), LabelAccuracy)
    assert infer_metric(["def f(): return 1", "def g(): return 2", "x = 3"]) is None
    assert infer_metric([]) is None


def test_pluggable_metric_by_module_function_and_by_name(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text(
        "def contains(prediction, reference):\n"
        "    return reference.lower() in prediction.lower()\n"
        "def half(prediction, reference):\n"
        "    return 0.5\n"
        "def broken(prediction, reference):\n"
        "    return 'yes'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        m = get_metric("my_metrics:contains")
        assert m.name == "contains" and m.higher_is_better
        assert m.score("It is Paris.", "paris") == 1.0 and m.score("Rome", "paris") == 0.0
        assert get_metric("my_metrics:half").score("a", "b") == 0.5
        with pytest.raises(MetricError, match="returned 'yes'"):
            get_metric("my_metrics:broken").score("a", "b")
        register_metric("always-half", lambda: get_metric("my_metrics:half"))
        assert get_metric("always-half").score("a", "b") == 0.5
    finally:
        sys.modules.pop("my_metrics", None)
    with pytest.raises(MetricError, match="unknown metric 'nope'"):
        get_metric("nope")
    with pytest.raises(MetricError, match="cannot load metric"):
        get_metric("no_such_module_here:fn")


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Table I: 81/263 -> 0.2553..0.3662; Wilson for 8/10 -> 0.4902..0.9433
    low, high = wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    low, high = wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = wilson(0, 20)
    assert low == 0.0 and high == pytest.approx(0.1611, abs=1e-4)
    with pytest.raises(ValueError):
        wilson(0, 0)


def test_estimate_and_paired_difference():
    est = estimate([1.0, 0.0, 1.0, 1.0])
    assert est.value == 0.75 and est.n == 4
    assert (est.ci_low, est.ci_high) == pytest.approx(wilson(3, 4))
    graded = estimate([0.5, 0.25, 1.0, 0.75] * 25)  # not 0/1: a bootstrap
    assert graded.value == pytest.approx(0.625)
    assert graded.ci_low < 0.625 < graded.ci_high and graded.ci_high - graded.ci_low < 0.15
    assert estimate([]).to_dict() == {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    # the bootstrap of a mean: close to the normal interval for a large sample
    values = [float(i % 2) for i in range(400)]
    low, high = bootstrap(values)
    half = 1.96 * math.sqrt(0.25 / 400)
    assert low == pytest.approx(0.5 - half, abs=0.01) and high == pytest.approx(
        0.5 + half, abs=0.01
    )
    assert bootstrap(values) == (low, high)  # seeded
    diff = paired_difference([1.0] * 36 + [0.0] * 4, [0.0] * 20 + [1.0] * 20)
    assert diff.value == pytest.approx(0.4) and diff.ci_low > 0
    same = paired_difference([1.0, 0.0] * 20, [1.0, 0.0] * 20)
    assert same.value == 0 and same.ci_low == 0 == same.ci_high
    with pytest.raises(ValueError):
        paired_difference([1.0], [])
