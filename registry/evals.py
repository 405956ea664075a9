"""Eval results of adapter versions and the quality gate on the serving alias.

A result is a metric measured on a dataset named by the sha256 of its data
(:func:`dataset_digest`), with its 95% confidence interval and number of examples. Results
compare only on the same ``(dataset_digest, metric)``: a different or re-sampled eval set is a
different dataset.

The gate (:func:`judge`): moving the serving alias (``prod``) from the version that holds it
to a candidate compares their latest results on every ``(dataset_digest, metric)`` both have.
A drop of more than ``tolerance`` (absolute, in the metric's own units; ``higher_is_better``
says which way is a drop) on any of them refuses the promotion with
:class:`QualityGateError`, unless forced. Where nothing is comparable (no version holds the
alias yet, or the two share no dataset and metric) the promotion passes with a warning,
unless ``require_evals`` (``LORAROUTE_GATE_REQUIRE_EVALS``) asks for a comparison whenever a
version holds the alias.

Example::

    >>> reg.record_eval("legal@3", [EvalResult("legalbench-dev", digest, "accuracy", 0.81,
    ...     ci_low=0.77, ci_high=0.85, n=400)])  # doctest: +SKIP
    >>> reg.alias_set("legal", "prod", 3)  # refused: legal:prod scores 0.01+ higher  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from ._text import check_json, check_text, shown
from .blobs import check_digest
from .errors import InvalidRequestError, QualityGateError

METRIC_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}")
MAX_DATASET_CHARS = 256
MAX_SOURCE_CHARS = 256
MAX_DETAILS_BYTES = 16 << 10
MAX_RESULTS_PER_CALL = 256
MAX_RESULTS_PER_VERSION = 4096
MAX_EXAMPLES = 1 << 40

Verdict = Literal[
    "passed", "improved", "refused", "no-holder", "same-version", "unchecked", "forced"
]


def dataset_digest(data: bytes | str | Path) -> str:
    """``sha256:<hex>`` of an eval set: the bytes given, or a file's bytes (a ``Path``); a
    ``str`` is hashed as UTF-8 text (e.g. the JSON lines of the examples)."""
    h = hashlib.sha256()
    if isinstance(data, Path):
        with open(data, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    else:
        h.update(data.encode() if isinstance(data, str) else data)
    return "sha256:" + h.hexdigest()


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"{what} must be a number, got {shown(value)}")
    if not math.isfinite(value):
        raise InvalidRequestError(f"{what} is {value}; only finite numbers are allowed")
    return float(value)


@dataclass(slots=True)
class EvalResult:
    """One eval result. ``ref`` (``legal@3``), ``actor`` and ``created_at`` are filled by the
    registry; ``details`` holds anything else worth keeping (e.g. the base model's score)."""

    dataset: str
    dataset_digest: str
    metric: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    higher_is_better: bool = True
    source: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    ref: str | None = None
    actor: str | None = None
    created_at: datetime | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.dataset_digest, self.metric)

    def checked(self) -> EvalResult:
        """This result if every field can be stored and compared, else InvalidRequestError
        naming the field and the value."""
        check_text(self.dataset, "eval dataset name", max_chars=MAX_DATASET_CHARS)
        if not self.dataset:
            raise InvalidRequestError("eval dataset name is empty; name the eval set")
        try:
            check_digest(self.dataset_digest)
        except ValueError:
            raise InvalidRequestError(
                f"eval dataset digest {shown(self.dataset_digest)} is not 'sha256:<64 hex>'; "
                f"use the sha256 of the eval data (loraroute.registry.evals.dataset_digest)"
            ) from None
        if not isinstance(self.metric, str) or not METRIC_RE.fullmatch(self.metric):
            raise InvalidRequestError(
                f"metric name {shown(self.metric)} is not allowed: 1-128 ASCII letters, digits "
                f"and '_.:/@+-', starting with a letter or digit (e.g. accuracy, exact_match)"
            )
        self.value = _number(self.value, f"{self.metric} value")
        if (self.ci_low is None) != (self.ci_high is None):
            raise InvalidRequestError(
                f"{self.metric}: give both ends of the confidence interval or neither"
            )
        if self.ci_low is not None and self.ci_high is not None:
            self.ci_low = _number(self.ci_low, f"{self.metric} ci_low")
            self.ci_high = _number(self.ci_high, f"{self.metric} ci_high")
            if self.ci_low > self.ci_high:
                raise InvalidRequestError(
                    f"{self.metric}: ci_low {self.ci_low} is above ci_high {self.ci_high}"
                )
        if self.n is not None and (
            isinstance(self.n, bool)
            or not isinstance(self.n, int)
            or not 0 < self.n <= MAX_EXAMPLES
        ):
            raise InvalidRequestError(
                f"{self.metric}: n (the number of examples) must be a whole number from 1 to "
                f"{MAX_EXAMPLES}, got {shown(self.n)}"
            )
        if not isinstance(self.higher_is_better, bool):
            raise InvalidRequestError(
                f"{self.metric}: higher_is_better must be true or false, got "
                f"{shown(self.higher_is_better)}"
            )
        if self.source is not None:
            check_text(self.source, "eval source", max_chars=MAX_SOURCE_CHARS)
        if not isinstance(self.details, dict):
            raise InvalidRequestError(f"{self.metric}: details must be an object")
        check_json(self.details, f"{self.metric} details")
        if len(json.dumps(self.details, default=str)) > MAX_DETAILS_BYTES:
            raise InvalidRequestError(
                f"{self.metric}: details take more than {MAX_DETAILS_BYTES} bytes as JSON"
            )
        return self

    @classmethod
    def from_any(cls, item: EvalResult | Mapping[str, Any]) -> EvalResult:
        """An EvalResult from itself or a dict with its field names (``ci``: a pair is taken
        for ``ci_low``/``ci_high``); unknown keys are refused."""
        if isinstance(item, EvalResult):
            return cls(**{f.name: getattr(item, f.name) for f in fields(cls)})
        if not isinstance(item, Mapping):
            raise InvalidRequestError(
                f"an eval result must be an EvalResult or a dict, got {type(item).__name__}"
            )
        data = dict(item)
        if "ci" in data:
            ci = data.pop("ci")
            if ci is not None:
                if not isinstance(ci, list | tuple) or len(ci) != 2:
                    raise InvalidRequestError(f"ci must be a pair [low, high], got {shown(ci)}")
                data["ci_low"], data["ci_high"] = ci
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidRequestError(
                f"unknown eval result field(s) {', '.join(map(repr, unknown[:5]))}; known: "
                f"{', '.join(sorted(known))}"
            )
        missing = [k for k in ("dataset", "dataset_digest", "metric", "value") if k not in data]
        if missing:
            raise InvalidRequestError(f"an eval result lacks {', '.join(missing)}")
        created = data.get("created_at")
        if isinstance(created, str):
            data["created_at"] = datetime.fromisoformat(created.replace("Z", "+00:00"))
        data["details"] = dict(data.get("details") or {})
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat() if self.created_at else None
        return d

    def ci_text(self) -> str:
        if self.ci_low is None:
            return ""
        return f" [{self.ci_low:.4g}, {self.ci_high:.4g}]"


def as_results(
    results: EvalResult | Mapping[str, Any] | Iterable[EvalResult | Mapping[str, Any]],
    *,
    source: str | None = None,
) -> list[EvalResult]:
    """Checked copies of ``results`` (one, or many), ``source`` filled where unset."""
    items = [results] if isinstance(results, EvalResult | Mapping) else list(results)
    if not items:
        raise InvalidRequestError("no eval results given")
    if len(items) > MAX_RESULTS_PER_CALL:
        raise InvalidRequestError(
            f"{len(items)} eval results in one call; at most {MAX_RESULTS_PER_CALL}"
        )
    out = []
    for item in items:
        r = EvalResult.from_any(item)
        if r.source is None:
            r.source = source
        r.ref = r.actor = r.created_at = None  # the registry's to fill
        out.append(r.checked())
    return out


def latest_by_key(results: Iterable[EvalResult]) -> dict[tuple[str, str], EvalResult]:
    """The newest result for each ``(dataset_digest, metric)`` (``results`` oldest first)."""
    return {r.key: r for r in results}


@dataclass(slots=True)
class Comparison:
    """One metric on one dataset: the candidate's value against the holder's."""

    dataset: str
    dataset_digest: str
    metric: str
    candidate: float
    holder: float
    higher_is_better: bool
    drop: float  # how much worse the candidate is (negative: better)
    regressed: bool  # drop > tolerance
    candidate_ci: tuple[float, float] | None = None
    holder_ci: tuple[float, float] | None = None

    def line(self) -> str:
        arrow = "higher is better" if self.higher_is_better else "lower is better"
        what = f"{self.metric} on {self.dataset} ({self.dataset_digest[:15]}, {arrow})"
        if self.drop > 0:
            change = f"down by {self.drop:.4g}"
        elif self.drop < 0:
            change = f"up by {-self.drop:.4g}"
        else:
            change = "unchanged"
        return f"{what}: {self.holder:.4g} -> {self.candidate:.4g}, {change}"


@dataclass(slots=True)
class GateReport:
    """The gate's judgement of moving ``alias`` of ``name`` to ``candidate``."""

    name: str
    alias: str
    candidate: int
    holder: int | None
    tolerance: float
    verdict: Verdict
    comparisons: list[Comparison] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    refused: bool = False  # the gate refuses it (before any force)
    forced: bool = False  # promoted anyway: force=True

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.regressed]

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["comparisons"] = [asdict(c) for c in self.comparisons]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateReport:
        d = {k: v for k, v in data.items() if k in {f.name for f in fields(cls)}}
        comparisons = []
        for c in d.get("comparisons", []):
            c = dict(c)
            for k in ("candidate_ci", "holder_ci"):
                c[k] = tuple(c[k]) if c.get(k) else None
            comparisons.append(Comparison(**c))
        d["comparisons"] = comparisons
        d["warnings"] = list(d.get("warnings", []))
        return cls(**d)

    def message(self) -> str:
        """Why the gate refuses (or, forced, what it let through)."""
        target = f"{self.name}@{self.candidate}"
        holder = f"{self.name}@{self.holder}"
        if self.regressions:
            parts = [
                f"{c.metric} on {c.dataset} ({c.dataset_digest[:15]}) is {c.candidate:.4g} "
                f"against {c.holder:.4g} for {holder}, "
                f"{'a drop' if c.higher_is_better else 'a rise'} of {c.drop:.4g}"
                for c in self.regressions
            ]
            why = "; ".join(parts) + f" (tolerance {self.tolerance:g})"
        else:
            why = (
                f"{target} and {holder} share no eval result (dataset digest and metric) to "
                f"compare, and LORAROUTE_GATE_REQUIRE_EVALS is set"
            )
        return (
            f"quality gate: refusing to point {self.name}:{self.alias} at {target}: {why}. "
            f"Record better results, raise the tolerance, or pass --force (force=True) to "
            f"promote anyway (the override is recorded)"
        )

    def summary(self) -> list[str]:
        """Lines for people: each comparison, then the warnings."""
        lines = [c.line() + ("  REGRESSION" if c.regressed else "") for c in self.comparisons]
        return lines + [f"warning: {w}" for w in self.warnings]


def judge(
    name: str,
    alias: str,
    candidate: int,
    candidate_results: Iterable[EvalResult],
    holder: int | None,
    holder_results: Iterable[EvalResult],
    *,
    tolerance: float,
    require_evals: bool = False,
) -> GateReport:
    """Compare the candidate's latest results with the holder's on every shared
    ``(dataset_digest, metric)`` (see the module's docstring for the policy)."""
    report = GateReport(name, alias, candidate, holder, tolerance, "passed")
    if holder is None:
        report.verdict = "no-holder"
        return report
    if holder == candidate:
        report.verdict = "same-version"
        return report
    mine, theirs = latest_by_key(candidate_results), latest_by_key(holder_results)
    for key in sorted(mine.keys() & theirs.keys(), key=lambda k: (k[1], k[0])):
        c, h = mine[key], theirs[key]
        if c.higher_is_better != h.higher_is_better:
            report.warnings.append(
                f"{c.metric} on {c.dataset}: the two versions disagree whether higher is "
                f"better; not compared"
            )
            continue
        drop = (h.value - c.value) if c.higher_is_better else (c.value - h.value)
        report.comparisons.append(
            Comparison(
                c.dataset,
                c.dataset_digest,
                c.metric,
                c.value,
                h.value,
                c.higher_is_better,
                drop,
                drop > tolerance + 1e-12,
                (c.ci_low, c.ci_high) if c.ci_low is not None else None,  # type: ignore[arg-type]
                (h.ci_low, h.ci_high) if h.ci_low is not None else None,  # type: ignore[arg-type]
            )
        )
    if not report.comparisons:
        report.verdict = "unchecked"
        report.refused = require_evals
        report.warnings.append(
            f"{name}@{candidate} and {name}@{holder} (holding {alias!r}) share no eval result "
            f"on the same dataset digest and metric: the promotion is not checked"
            + (" and is refused (LORAROUTE_GATE_REQUIRE_EVALS)" if require_evals else "")
        )
    elif report.regressions:
        report.verdict, report.refused = "refused", True
    elif any(c.drop < 0 for c in report.comparisons):
        report.verdict = "improved"
    return report


def enforce(report: GateReport, *, force: bool) -> GateReport:
    """Raise QualityGateError if ``report`` refuses and ``force`` is off; with ``force`` the
    report is marked forced (and its verdict ``forced``)."""
    if report.refused:
        if not force:
            raise QualityGateError(report.message())
        report.forced = True
        report.verdict = "forced"
        report.warnings.append("forced past the gate: " + report.message())
    return report


def check_tolerance(tolerance: object) -> float:
    value = _number(tolerance, "gate tolerance")
    if value < 0:
        raise InvalidRequestError(f"gate tolerance {value} is negative; use a number >= 0")
    return value


def utc(dt: datetime) -> datetime:
    """Datetimes come back naive from SQLite and PostgreSQL ``timestamp``: stored in UTC."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


__all__ = [
    "Comparison",
    "EvalResult",
    "GateReport",
    "as_results",
    "check_tolerance",
    "dataset_digest",
    "enforce",
    "judge",
]
