"""Task metrics of generated answers for base, oracle, routed and majority-class answers.

For every example whose label has a metric (:mod:`.metrics`), the answer to its request (the
conversation before its last assistant turn) is generated greedily under the base model, the
label's adapter (oracle) and the adapter the router picked (routed; the oracle's answer is
reused when the router picked the oracle). All requests go to the engine at once, so its
scheduler decodes rows of different adapters in the same batches. The reference is the last
assistant turn. The majority-class answer is the most common canonical reference answer of
the training data for that label (``train``), else of the evaluation data itself.

:func:`registry_records` turns a report into plain dicts, one per (adapter version, metric),
ready to store beside the version in the registry.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .metrics import Metric, estimate, get_metric, infer_metric, majority_answer, paired_difference

BASE = "base"
MetricSpec = str | Metric | None
Progress = Callable[[int, int], None]


def reference_of(messages: Sequence[tuple[str, str]]) -> str:
    """The last assistant turn: the answer a generated one is scored against."""
    return next(c for r, c in reversed(messages) if r == "assistant")


def resolve_metrics(
    spec: MetricSpec | Mapping[str, MetricSpec],
    references: Mapping[str, list[str]],
    train: Mapping[str, list[str]] | None,
) -> dict[str, Metric | None]:
    """label -> fitted metric (None: loss only). ``spec``: one spec for every label or a
    mapping label -> spec (``"*"``: the rest); a spec is ``"auto"`` (inferred from the references), ``"none"``,
    a registered name, ``module:function`` or a :class:`Metric`."""
    out: dict[str, Metric | None] = {}
    for label, refs in references.items():
        one = spec.get(label, spec.get("*", "auto")) if isinstance(spec, Mapping) else spec
        fit_on = list((train or {}).get(label) or []) + refs
        if one is None or one == "none":
            metric = None
        elif one == "auto":
            metric = infer_metric(fit_on)
        else:
            metric = get_metric(one)
        if metric is not None:
            metric.fit(fit_on)
        out[label] = metric
    return out


def dataset_identity(sources: Sequence[str], examples: Sequence[Any]) -> tuple[str, str]:
    """``(name, "sha256:<hex>")`` of the files the examples came from (their bytes, in name
    order), or of the examples' canonical JSON when they were not read from files."""
    files = sorted({s for s in sources if s and Path(s).is_file()})
    h = hashlib.sha256()
    if files and len(files) == len(set(sources)):
        for f in files:
            h.update(Path(f).read_bytes())
        return "+".join(Path(f).name for f in files), f"sha256:{h.hexdigest()}"
    for ex in examples:
        h.update(json.dumps([ex.messages, ex.label]).encode())
        h.update(b"\n")
    return "(records)", f"sha256:{h.hexdigest()}"


def generate_all(
    engine: Any,
    jobs: Sequence[tuple[list[dict[str, str]], str | None, int]],
    progress: Progress | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """Greedy answers for ``(messages, adapter ref or None, max_new_tokens)`` jobs, all queued
    at once so the engine batches them across adapters; and what it cost (requests, tokens,
    seconds)."""
    t0 = time.perf_counter()
    handles = [
        engine.submit(msgs, ref, max_new_tokens=max_new, temperature=0.0)
        for msgs, ref, max_new in jobs
    ]
    out = []
    tokens = 0
    for done, h in enumerate(handles, start=1):
        result = h.result()
        out.append(result.text)
        tokens += result.completion_tokens
        if progress is not None:
            progress(done, len(handles))
    seconds = time.perf_counter() - t0
    cost = {"requests": len(jobs), "completion_tokens": tokens, "seconds": round(seconds, 2)}
    return out, cost


def run_tasks(
    engine: Any,
    examples: Sequence[Any],
    labels: Sequence[str],
    of_label: Mapping[str, str],
    routed_keys: Sequence[str | None],
    engine_refs: Mapping[str, str | None],
    metric_spec: MetricSpec | Mapping[str, MetricSpec],
    train: Mapping[str, list[str]] | None,
    max_new_tokens: int | None,
    progress: Progress | None,
    limit: int | Mapping[str, int] | None = None,
) -> tuple[dict[str, dict[str, Any] | None], list[dict[str, Any]], dict[str, Any]]:
    """Task metric rows per label, per-example scores/answers (``{}`` where no metric) and the
    generation's cost.

    ``of_label``: label -> variant key of its adapter; ``routed_keys``: each example's routed
    variant key (None: not routed); ``engine_refs``: variant key -> what the engine serves.
    ``limit``: at most that many examples per label (a mapping: per label), evenly spaced.
    """
    chosen = _subset(examples, labels, limit)
    references = {lab: [] for lab in labels}  # type: dict[str, list[str]]
    for i, ex in enumerate(examples):
        if i in chosen:
            references[ex.label].append(reference_of(ex.messages))
    metrics = resolve_metrics(metric_spec, references, train)

    jobs: list[tuple[list[dict[str, str]], str | None, int]] = []
    where: dict[tuple[int, str], int] = {}
    for i, ex in enumerate(examples):
        metric = metrics[ex.label]
        if metric is None or i not in chosen:
            continue
        budget = max_new_tokens or metric.max_new_tokens
        for key in dict.fromkeys((BASE, of_label[ex.label], routed_keys[i])):
            if key is not None:  # each variant once, in a fixed order
                where[(i, key)] = len(jobs)
                jobs.append((ex.request(), engine_refs[key], budget))
    texts, generation = generate_all(engine, jobs, progress)

    per_example: list[dict[str, Any]] = []
    scores: dict[str, dict[str, list[float]]] = {}
    for i, ex in enumerate(examples):
        metric = metrics[ex.label]
        if metric is None or i not in chosen:
            per_example.append({})
            continue
        ref = reference_of(ex.messages)
        answers = {
            "base": texts[where[(i, BASE)]],
            "oracle": texts[where[(i, of_label[ex.label])]],
        }
        if routed_keys[i] is not None:
            answers["routed"] = texts[where[(i, routed_keys[i])]]  # type: ignore[index]
        got = {who: metric.score(text, ref) for who, text in answers.items()}
        per_example.append({"answers": answers, "scores": got})
        for who, value in got.items():
            scores.setdefault(ex.label, {}).setdefault(who, []).append(value)

    rows: dict[str, dict[str, Any] | None] = {}
    for lab in labels:
        metric = metrics[lab]
        of = scores.get(lab, {})
        if metric is None or not of:
            rows[lab] = None
            continue
        source = "training data" if train and train.get(lab) else "evaluation data"
        majority = majority_answer(metric, (train or {}).get(lab) or references[lab])
        maj_scores = (
            [metric.score(majority, r) for r in references[lab]] if majority is not None else []
        )
        for e, ex in zip(per_example, examples, strict=True):
            if ex.label == lab and majority is not None and e:
                e["scores"]["majority"] = metric.score(majority, reference_of(ex.messages))
        row: dict[str, Any] = {
            "metric": metric.name,
            "higher_is_better": bool(metric.higher_is_better),
            "n": len(references[lab]),
            "max_new_tokens": max_new_tokens or metric.max_new_tokens,
            "majority_answer": majority,
            "majority_from": source,
        }
        for who in ("base", "oracle", "routed"):
            row[who] = estimate(of[who]).to_dict() if who in of else None
        row["majority"] = estimate(maj_scores).to_dict() if maj_scores else None
        row["oracle_minus_base"] = paired_difference(of["oracle"], of["base"]).to_dict()
        row["oracle_minus_majority"] = (
            paired_difference(of["oracle"], maj_scores).to_dict() if maj_scores else None
        )
        row["routed_minus_oracle"] = (
            paired_difference(of["routed"], of["oracle"]).to_dict() if "routed" in of else None
        )
        rows[lab] = row
    return rows, per_example, generation


def _subset(
    examples: Sequence[Any], labels: Sequence[str], limit: int | Mapping[str, int] | None
) -> set[int]:
    """Indices of at most ``limit`` examples per label, evenly spaced."""
    by_label: dict[str, list[int]] = {lab: [] for lab in labels}
    for i, ex in enumerate(examples):
        by_label[ex.label].append(i)
    out: set[int] = set()
    for lab, idx in by_label.items():
        cap = limit.get(lab) if isinstance(limit, Mapping) else limit
        if cap is not None and len(idx) > cap:
            step = len(idx) / cap
            idx = [idx[int(k * step)] for k in range(cap)]
        out.update(idx)
    return out


def registry_records(report: Any) -> list[dict[str, Any]]:
    """One plain dict per (adapter version, metric) of an :class:`~.evaluate.EvalReport`:
    ``adapter`` (the label's adapter, as reported) and ``dataset, dataset_digest, metric,
    value, ci_low, ci_high, n, higher_is_better`` for the oracle's loss (no CI) and its task
    metric. E.g. ``for r in registry_records(report): reg.record_eval(r.pop("adapter"), **r)``.

    The digest names the examples scored, so the quality gate compares like with like: the
    data files' digest with the label, and for the task metric also how many examples were
    generated (``--task-limit`` scores a subset).
    """
    out: list[dict[str, Any]] = []
    for row in report.labels:
        if not row.get("dataset_digest"):
            continue
        if row.get("oracle_loss") is not None:
            out.append(
                _record(
                    row,
                    "loss",
                    row["examples"],
                    value=row["oracle_loss"],
                    ci_low=None,
                    ci_high=None,
                    higher_is_better=False,
                )
            )
        task = row.get("task")
        if task and task.get("oracle"):
            est = task["oracle"]
            out.append(
                _record(
                    row,
                    task["metric"],
                    est["n"],
                    value=est["value"],
                    ci_low=est["ci_low"],
                    ci_high=est["ci_high"],
                    higher_is_better=task["higher_is_better"],
                )
            )
    return out


def _record(row: dict[str, Any], metric: str, n: int, **fields: Any) -> dict[str, Any]:
    part = f"{row['dataset_digest']}|label={row['label']}|metric={metric}|n={n}"
    return {
        "adapter": row["adapter"],
        "dataset": f"{row.get('dataset')} [{row['label']}]",
        "dataset_digest": f"sha256:{hashlib.sha256(part.encode()).hexdigest()}",
        "metric": metric,
        "n": n,
        **fields,
    }


def record_in_registry(registry: Any, report: Any) -> tuple[list[str], list[str]]:
    """Store :func:`registry_records` with their adapter versions (``source``: ``adapters
    eval``); returns (versions recorded, adapters skipped: folders, not registry versions)."""
    from loraroute.registry.errors import InvalidReferenceError
    from loraroute.registry.refs import parse_ref

    by_ref: dict[str, list[dict[str, Any]]] = {}
    skipped: list[str] = []
    for rec in registry_records(report):
        ref = rec.pop("adapter")
        try:
            parse_ref(ref)
        except InvalidReferenceError:  # an adapter folder's label, not a registry version
            skipped.append(ref)
            continue
        by_ref.setdefault(ref, []).append(rec)
    for ref, recs in by_ref.items():
        registry.record_eval(ref, recs, source="adapters eval")
    return sorted(by_ref), sorted(set(skipped))


def _cell(est: Mapping[str, Any] | None) -> str:
    if not est or est.get("value") is None:
        return "n/a"
    return f"{100 * est['value']:.1f} [{100 * est['ci_low']:.1f}, {100 * est['ci_high']:.1f}]"


def task_table(rows: Sequence[Mapping[str, Any]], title: str = "task metrics, % [95% CI]") -> Any:
    """A rich table of the label rows that carry a task metric."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("label", "metric", "n", "base", "oracle", "routed", "majority", "oracle-base"):
        t.add_column(col, justify="left" if col in ("label", "metric") else "right")
    for row in rows:
        task = row.get("task")
        if not task:
            continue
        diff = task["oracle_minus_base"]
        t.add_row(
            str(row["label"]),
            task["metric"],
            str(task["n"]),
            _cell(task["base"]),
            _cell(task["oracle"]),
            _cell(task["routed"]),
            _cell(task["majority"]),
            f"{100 * diff['value']:+.1f} [{100 * diff['ci_low']:+.1f}, {100 * diff['ci_high']:+.1f}]",
        )
    return t
