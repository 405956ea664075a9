"""Task metrics for generated answers: label accuracy, final-number exact match, your own.

A metric turns a generated answer and the reference answer into a score in ``[0, 1]`` per
example; the report is the mean with a 95% confidence interval (Wilson for 0/1 scores, a
percentile bootstrap otherwise) and the number of examples. Every metric also names its
*majority-class answer*: the most common canonical answer of the training references (or of
the evaluation references when no training data is given), scored like a generated answer, so
an adapter can be compared with "always say the commonest label".

Built-ins (:func:`get_metric` names):

- ``label``: the answer is a label. The label of a reference is its opening word when a
  sentence follows it (PubMedQA: ``"Yes. The study shows ..."`` -> ``yes``), else the whole
  answer (LegalBench: ``"No"``, ``"Common Law"``). A generated answer counts when it is, or
  starts with, the reference's label (case and end punctuation ignored); the longest matching
  label of the set wins, so ``"No."`` is ``no`` and ``"Not sure"`` is no label at all.
- ``final-number``: maths. The final answer is the number after the last ``Answer:`` (or
  GSM8K's ``####``), else the last number in the text; numbers compare as values
  (``"1,000"`` = ``"1000.0"``; ``"$3"`` = ``"3"``).
- ``exact``: the whole answer, case and surrounding whitespace/punctuation ignored.

Your own: :func:`register_metric` a name, or give ``module:function`` where the function takes
``(prediction, reference)`` and returns a bool or a float in ``[0, 1]`` (or is a
:class:`Metric` object). ``infer_metric`` picks ``final-number``, ``label`` or nothing (loss
only) from the references.

Example::

    >>> m = get_metric("label")
    >>> m.fit(["Yes. It helps.", "No. It does not.", "Maybe. Unclear."])
    >>> m.score("yes, it does", "Yes. It helps.")
    1.0
    >>> get_metric("final-number").score("so 12 apples\\nAnswer: 12", "... #### 12.0")
    1.0
"""

from __future__ import annotations

import importlib
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, runtime_checkable

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@runtime_checkable
class Metric(Protocol):
    """What a task metric provides. ``fit`` sees reference answers (training, else evaluation
    data) before scoring: a label set is learnt there. ``canonical`` is the form whose most
    common value is the majority-class answer (``None``: this reference has none)."""

    name: str
    higher_is_better: bool
    max_new_tokens: int

    def fit(self, references: Sequence[str]) -> None: ...

    def canonical(self, answer: str) -> str | None: ...

    def score(self, prediction: str, reference: str) -> float: ...


# -- text helpers -----------------------------------------------------------------------------
_EDGE = " \t\r\n.,;:!?\"'`*()[]"
_SPACES = re.compile(r"\s+")
_OPENING = re.compile(r"^\s*([A-Za-z][\w-]*)[.!?,;:]\s+\S")


def _norm(text: str) -> str:
    return _SPACES.sub(" ", text).strip(_EDGE).casefold()


def reference_label(answer: str) -> str:
    """The label of a reference answer: its opening word when a sentence follows it, else the
    whole answer; normalised (case, surrounding punctuation)."""
    m = _OPENING.match(answer)
    return _norm(m.group(1)) if m else _norm(answer)


_ANSWER = re.compile(r"(?:answer\s*(?:is)?\s*[:=]|####)\s*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def final_number(text: str) -> str | None:
    """The final numeric answer of ``text`` as a canonical string (``"1,000.50"`` ->
    ``"1000.5"``): the number after the last ``Answer:``/``####``, else the last number."""
    marked = _ANSWER.findall(text)
    raw = marked[-1] if marked else next(iter(reversed(_NUMBER.findall(text))), None)
    if raw is None:
        return None
    try:
        value = Decimal(raw.replace(",", ""))
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(value.to_integral_value())
    return format(value.normalize(), "f")


# -- built-in metrics -------------------------------------------------------------------------
class LabelAccuracy:
    """Accuracy over a label set (given, or learnt from reference answers by :meth:`fit`)."""

    higher_is_better = True

    def __init__(self, labels: Iterable[str] | None = None, *, name: str = "label_accuracy"):
        self.name = name
        self.labels: set[str] = {_norm(lab) for lab in labels or ()}
        self.max_new_tokens = 8

    def fit(self, references: Sequence[str]) -> None:
        self.labels |= {reference_label(r) for r in references}
        self.labels.discard("")
        longest = max((len(lab.split()) for lab in self.labels), default=1)
        # a few tokens per word of the longest label, and room for its end punctuation
        self.max_new_tokens = min(48, 4 + 3 * longest)

    def extract(self, prediction: str) -> str | None:
        """The label ``prediction`` is, or starts with (the longest such label); else None."""
        text = _norm(prediction)
        if text in self.labels:
            return text
        starts = [
            lab
            for lab in self.labels
            if text.startswith(lab) and not text[len(lab) : len(lab) + 1].isalnum()
        ]
        return max(starts, key=len) if starts else None

    def canonical(self, answer: str) -> str | None:
        return reference_label(answer) or None

    def score(self, prediction: str, reference: str) -> float:
        got = self.extract(prediction)
        return float(got is not None and got == reference_label(reference))


class FinalNumberMatch:
    """Exact match of the final number (``Answer: N``, ``#### N``, else the last number)."""

    name = "final_number_exact_match"
    higher_is_better = True
    max_new_tokens = 256

    def fit(self, references: Sequence[str]) -> None:
        return None

    def canonical(self, answer: str) -> str | None:
        return final_number(answer)

    def score(self, prediction: str, reference: str) -> float:
        want = final_number(reference)
        return float(want is not None and final_number(prediction) == want)


class ExactMatch:
    """The whole answer, case and surrounding whitespace/punctuation ignored."""

    name = "exact_match"
    higher_is_better = True
    max_new_tokens = 64

    def fit(self, references: Sequence[str]) -> None:
        return None

    def canonical(self, answer: str) -> str | None:
        return _norm(answer)

    def score(self, prediction: str, reference: str) -> float:
        return float(_norm(prediction) == _norm(reference))


class CallableMetric:
    """A user's ``fn(prediction, reference) -> bool | float`` as a :class:`Metric`."""

    higher_is_better = True

    def __init__(self, fn: Callable[[str, str], Any], name: str, max_new_tokens: int = 128):
        self.fn = fn
        self.name = name
        self.max_new_tokens = max_new_tokens

    def fit(self, references: Sequence[str]) -> None:
        return None

    def canonical(self, answer: str) -> str | None:
        return answer.strip() or None

    def score(self, prediction: str, reference: str) -> float:
        value = self.fn(prediction, reference)
        if isinstance(value, bool):
            return float(value)
        if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise MetricError(
                f"metric {self.name!r} returned {value!r}; a metric returns a bool or a number "
                "in [0, 1]"
            )
        return float(value)


class MetricError(ValueError):
    """A metric name that is not known, or a metric that misbehaves."""


_REGISTRY: dict[str, Callable[[], Metric]] = {
    "label": LabelAccuracy,
    "final-number": FinalNumberMatch,
    "exact": ExactMatch,
}


def register_metric(name: str, factory: Callable[[], Metric]) -> None:
    """Make ``name`` usable by :func:`get_metric` (and ``adapters eval --metric``)."""
    _REGISTRY[name] = factory


def metric_names() -> list[str]:
    return sorted(_REGISTRY)


def get_metric(spec: str | Metric) -> Metric:
    """A fresh metric from a registered name or ``module:function`` (a scoring function, a
    :class:`Metric` object, or a class/factory making one)."""
    if not isinstance(spec, str):
        return spec
    if spec in _REGISTRY:
        return _REGISTRY[spec]()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise MetricError(
            f"unknown metric {spec!r}; use one of {', '.join(metric_names())} or "
            "module:function (a function (prediction, reference) -> bool or float)"
        )
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise MetricError(f"cannot load metric {spec!r}: {exc}") from exc
    if isinstance(obj, type):
        obj = obj()
    if all(hasattr(obj, a) for a in ("fit", "canonical", "score", "name")):
        for attr_name, default in (("higher_is_better", True), ("max_new_tokens", 128)):
            if not hasattr(obj, attr_name):
                setattr(obj, attr_name, default)
        return obj  # type: ignore[no-any-return]
    if callable(obj):
        return CallableMetric(obj, name=attr.rsplit(".", 1)[-1])
    raise MetricError(f"metric {spec!r} is neither a scoring function nor a Metric")


def infer_metric(references: Sequence[str]) -> Metric | None:
    """``final-number`` when every reference ends in ``Answer: N``/``#### N``; ``label`` when
    the references hold few labels (at most 10, and a quarter of them); else None."""
    refs = [r for r in references if r.strip()]
    if not refs:
        return None
    if all(_ANSWER.search(r.strip().rsplit("\n", 1)[-1]) for r in refs):
        return FinalNumberMatch()
    labels = Counter(reference_label(r) for r in refs)
    if len(labels) <= 10 and len(labels) <= max(2, len(refs) // 4):
        return LabelAccuracy()
    return None


def majority_answer(metric: Metric, references: Sequence[str]) -> str | None:
    """The most common canonical answer of ``references`` (ties: the first seen)."""
    counts = Counter(c for c in (metric.canonical(r) for r in references) if c)
    return counts.most_common(1)[0][0] if counts else None


# -- statistics -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """A mean score with its 95% confidence interval and number of examples."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n}


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sound near 0 and 1 and for small n)."""
    if n <= 0:
        raise ValueError("the Wilson interval needs at least one example")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap(
    values: Sequence[float], *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean of ``values`` (seeded: repeatable)."""
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("the bootstrap needs at least one value")
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(resamples, arr.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def estimate(scores: Sequence[float]) -> Estimate:
    """Mean and 95% CI: Wilson when every score is 0 or 1, else a bootstrap."""
    n = len(scores)
    if n == 0:
        return Estimate(None, None, None, 0)
    mean = sum(scores) / n
    if all(s in (0.0, 1.0) for s in scores):
        low, high = wilson(sum(scores), n)
    else:
        low, high = bootstrap(scores)
    return Estimate(mean, low, high, n)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """Mean of ``a - b`` over the same examples with a paired bootstrap 95% CI: ``ci_low > 0``
    says ``a`` beats ``b`` beyond chance."""
    if len(a) != len(b):
        raise ValueError("paired scores must cover the same examples")
    if not a:
        return Estimate(None, None, None, 0)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    low, high = bootstrap(diffs)
    return Estimate(sum(diffs) / len(diffs), low, high, len(diffs))
