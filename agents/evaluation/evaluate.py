"""What adapters and routing buy on labelled chat data: ``evaluate(examples, registry=...)``.

For each example (a conversation with a label, e.g. its domain) the held-out loss on its
assistant tokens is measured under the base model, under the adapter of its label (the
oracle), under every other label's adapter (their average is the *wrong* adapter) and under the
adapter the router picks for the request (the conversation before its last assistant turn).
Routing accuracy is how often the router picks the oracle adapter.

Losses come from the serving engine itself: one forward per (example, adapter) through the
engine's slot LoRA, with the rows of an example for every adapter in one batch (same length,
so no padding), so what is measured is what is served. Tokens and assistant labels are those of
training (``_train_tokenize``): the chat template, loss on assistant turns and their
end-of-turn token only; a conversation longer than ``max_length`` loses the middle of its
prompt, never its answer.

Example::

    >>> report = evaluate("dev.jsonl", registry=open_registry())  # doctest: +SKIP
    >>> report.overall["routed_loss"], report.overall["routing_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AgentError, DataValidationError
from ..training.data import _MALFORMED, ChatExample, _check_record, _error_message, read_records
from ..training.tokenize import IGNORE_INDEX, encode_example, shorten

logger = logging.getLogger(__name__)

LABEL_KEYS = ("label", "domain")
BASE = "base"
Progress = Callable[[int, int], None]


class EvaluationError(AgentError, ValueError):
    """An evaluation cannot run: a label without an adapter, no router, nothing to score."""


@dataclass(frozen=True)
class LabelledExample:
    """A validated conversation with its label; ``line`` is its 1-based line in the source."""

    messages: tuple[tuple[str, str], ...]
    label: str
    line: int
    source: str = ""
    path: str = ""  # the file it was read from ("" for records given in memory)

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def request(self) -> list[dict[str, str]]:
        """The conversation up to (not including) its last assistant turn: what gets routed."""
        msgs = self.as_dicts()
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        return msgs[:last]


def load_labelled(
    data: Path | str | Iterable[dict[str, Any]] | Sequence[Path | str],
    *,
    label_key: str | None = None,
) -> list[LabelledExample]:
    """Read labelled chat records: ``{"messages": [...], "domain": "legal"}`` per line.

    The label is ``record[label_key]``, by default ``label`` or else ``domain``. Several files
    may be given. Every problem (malformed JSON, bad messages, missing label) is reported
    together, with its line number.
    """
    sources: list[Any]
    if isinstance(data, (str, Path)):
        sources = [data]
    elif isinstance(data, Sequence) and data and all(isinstance(d, (str, Path)) for d in data):
        sources = list(data)
    else:
        sources = [list(data)]  # type: ignore[arg-type]
    keys = (label_key,) if label_key else LABEL_KEYS
    out: list[LabelledExample] = []
    for src in sources:
        source, records, issues = read_records(src, what="evaluation data")
        for line, obj in records:
            if obj is _MALFORMED:
                continue
            msgs, problems = _check_record(obj)
            label = next(
                (obj[k] for k in keys if isinstance(obj, dict) and obj.get(k) not in (None, "")),
                None,
            )
            if isinstance(obj, dict) and not isinstance(label, str):
                problems.append(
                    (
                        "no label",
                        f"no string {' or '.join(repr(k) for k in keys)} to say which adapter "
                        f"is right",
                    )
                )
            if problems:
                issues.extend((line, kind, detail) for kind, detail in problems)
            else:
                path = str(src) if isinstance(src, (str, Path)) else ""
                out.append(LabelledExample(tuple(msgs), str(label), line, source, path))
        if issues:
            issues.sort()
            raise DataValidationError(
                _error_message(source, issues, len(records), what="evaluation data"), issues
            )
    if not out:
        raise DataValidationError("evaluation data holds no records; add labelled conversations")
    return out


@dataclass
class RoutingReport:
    """Routing accuracy: ``per_label`` accuracy, ``confusion[label][choice]`` counts and the
    wrong choices alone in ``misrouted[label][choice]`` (``"base"``: the router abstained)."""

    examples: int
    accuracy: float
    per_label: dict[str, float]
    confusion: dict[str, dict[str, int]]
    misrouted: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "accuracy": self.accuracy,
            "per_label": self.per_label,
            "confusion": self.confusion,
            "misrouted": self.misrouted,
        }


def _route_names(router: Any, examples: Sequence[LabelledExample]) -> list[str | None]:
    decisions = router.route_batch([ex.request() for ex in examples])
    return [d.adapter for d in decisions]


def _routing_report(
    labels: Sequence[str], chosen: Sequence[str], right: Sequence[bool]
) -> RoutingReport:
    confusion: dict[str, Counter[str]] = {}
    misses: dict[str, Counter[str]] = {}
    hits: dict[str, list[bool]] = {}
    for label, choice, ok in zip(labels, chosen, right, strict=True):
        confusion.setdefault(label, Counter())[choice] += 1
        hits.setdefault(label, []).append(ok)
        if not ok:
            misses.setdefault(label, Counter())[choice] += 1
    return RoutingReport(
        examples=len(labels),
        accuracy=sum(right) / len(right) if right else 0.0,
        per_label={k: sum(v) / len(v) for k, v in sorted(hits.items())},
        confusion={k: dict(sorted(c.items())) for k, c in sorted(confusion.items())},
        misrouted={k: dict(sorted(c.items())) for k, c in sorted(misses.items())},
    )


def route_only(
    data: Any,
    *,
    router: Any,
    adapters: Mapping[str, str] | None = None,
    label_key: str | None = None,
) -> RoutingReport:
    """Routing accuracy alone (no model): the router must pick the adapter named after the label.

    ``adapters`` maps a label to the adapter name the router should pick (default: the label).
    """
    examples = data if _is_examples(data) else load_labelled(data, label_key=label_key)
    names = _route_names(router, examples)
    want = [(adapters or {}).get(ex.label, ex.label) for ex in examples]
    chosen = [n or BASE for n in names]
    right = [_name_of(c) == _name_of(w) for c, w in zip(chosen, want, strict=True)]
    return _routing_report([ex.label for ex in examples], chosen, right)


def _is_examples(data: Any) -> bool:
    return isinstance(data, list) and bool(data) and isinstance(data[0], LabelledExample)


def _name_of(ref: str) -> str:
    return ref.split("@", 1)[0].split(":", 1)[0]


@dataclass
class _Variant:
    """One way of serving a request: the base model or one adapter."""

    key: str  # digest, or "base"
    name: str  # shown in reports
    engine_ref: str | None  # what Engine.logits takes (None: base)


@dataclass
class EvalReport:
    """Per-label and overall losses (mean NLL per assistant token) and routing accuracy.

    ``labels`` rows: ``label, adapter, examples, tokens, base_loss, oracle_loss, routed_loss,
    wrong_loss, oracle_vs_base, routed_vs_oracle, wrong_vs_oracle, routing_accuracy,
    routed_to_base, dataset, dataset_digest`` and ``task`` (with task metrics: the metric,
    ``n``, ``base``/``oracle``/``routed``/``majority`` estimates ``{value, ci_low, ci_high,
    n}`` and paired differences; see :mod:`.tasks`). ``overall``: the losses and ratios
    averaged over labels (each label counts once), routing accuracy over all requests.
    """

    labels: list[dict[str, Any]]
    overall: dict[str, Any]
    routing: RoutingReport | None
    sequences: int
    tokens: int
    max_length: int
    shortened: int
    base_model: str
    per_example: list[dict[str, Any]] = field(default_factory=list, repr=False)
    generation: dict[str, Any] | None = None  # answers generated for task metrics, and cost

    def to_dict(self, *, examples: bool = False) -> dict[str, Any]:
        out = {
            "labels": self.labels,
            "overall": self.overall,
            "routing": self.routing.to_dict() if self.routing else None,
            "sequences": self.sequences,
            "tokens": self.tokens,
            "max_length": self.max_length,
            "shortened_examples": self.shortened,
            "base_model": self.base_model,
            "generation": self.generation,
        }
        if examples:
            out["examples"] = self.per_example
        return out

    def table(self) -> Any:
        """A rich table: one row per label and the mean."""
        from rich.table import Table

        t = Table(title=f"loss per assistant token ({Path(self.base_model).name})")
        for col in ("label", "n", "base", "oracle", "routed", "wrong"):
            t.add_column(col, justify="left" if col == "label" else "right")
        # oracle vs base, routed vs oracle (relative); share of requests routed to the oracle
        for col in ("oracle/base", "routed/oracle", "routing"):
            t.add_column(col, justify="right")
        for row in [*self.labels, dict(self.overall, label="mean")]:
            t.add_row(
                str(row["label"]),
                str(row["examples"]),
                _num(row["base_loss"]),
                _num(row["oracle_loss"]),
                _num(row["routed_loss"]),
                _num(row["wrong_loss"]),
                _pct(row["oracle_vs_base"]),
                _pct(row["routed_vs_oracle"]),
                "n/a"
                if row["routing_accuracy"] is None
                else f"{100 * row['routing_accuracy']:.1f}%",
                end_section=row["label"] == self.labels[-1]["label"],
            )
        return t

    def task_table(self) -> Any:
        """A rich table of the task metrics (None when no label has one)."""
        from .tasks import task_table

        return task_table(self.labels) if any(r.get("task") for r in self.labels) else None

    def table_text(self, width: int = 140) -> str:
        from rich.console import Console

        buf = io.StringIO()
        console = Console(file=buf, width=width, force_terminal=False, color_system=None)
        console.print(self.table())
        if (tasks := self.task_table()) is not None:
            console.print(tasks)
        return buf.getvalue()


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b - 1.0


def _mean(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def _resolve_adapters(
    labels: Sequence[str],
    adapters: Mapping[str, str] | None,
    registry: Any,
    alias: str | None,
) -> dict[str, str]:
    """label -> adapter ref or folder; by default the registry adapter named (or domained) so."""
    mapping = dict(adapters or {})
    missing = [lab for lab in labels if lab not in mapping]
    if missing and registry is not None:
        serving = registry.serving(alias)
        by_name = {v.name: v.ref for v in serving}
        by_domain: dict[str, list[str]] = {}
        for v in serving:
            if v.domain:
                by_domain.setdefault(v.domain, []).append(v.ref)
        for lab in missing:
            if lab in by_name:
                mapping[lab] = by_name[lab]
            elif len(by_domain.get(lab, [])) == 1:
                mapping[lab] = by_domain[lab][0]
    still = sorted(lab for lab in labels if lab not in mapping)
    if still:
        where = (
            "no registry was given"
            if registry is None
            else f"no live adapter (one the serving alias points to) is named or has the "
            f"domain {', '.join(still)}"
        )
        raise EvaluationError(
            f"label(s) {', '.join(still)} have no adapter ({where}); map them with "
            f"adapters={{label: ref_or_folder}} (CLI: --adapter LABEL=REF)"
        )
    return mapping


def _make_engine(
    registry: Any,
    refs: Sequence[str],
    base_model: Any,
    settings: Any,
    device: Any,
    batch_size: int | None = None,
):
    from ..runtime.engine import Engine

    if base_model is None:  # the base the adapters name: registry records or adapter_config
        from loraroute.registry import InvalidAdapterError, read_adapter_config

        bases: set[str | None] = set()
        for ref in refs:
            if Path(ref).is_dir():
                try:  # the one reader of adapter configs (the engine's loader says the rest)
                    named = read_adapter_config(Path(ref) / "adapter_config.json")
                    bases.add(named.base_model_name_or_path)
                except InvalidAdapterError:
                    bases.add(None)
            elif registry is not None:
                bases.add(registry.resolve(ref).base_model_id)
        bases.discard(None)
        if len(bases) > 1:
            raise EvaluationError(
                f"the adapters were trained on different base models ({', '.join(sorted(str(b) for b in bases))}); "
                f"evaluate adapters of one base at a time"
            )
        base_model = next(iter(bases), None)
    return Engine(
        base_model,
        registry=registry,
        settings=settings,
        device=device,
        max_resident=max(16, len(refs) + 2),
        **({"max_batch_size": batch_size} if batch_size else {}),  # type: ignore[arg-type]
    )


def evaluate(
    data: Any,
    *,
    adapters: Mapping[str, str] | None = None,
    registry: Any = None,
    router: Any = None,
    engine: Any = None,
    alias: str | None = None,
    label_key: str | None = None,
    base_model: str | Path | None = None,
    settings: Any = None,
    device: str | None = None,
    max_length: int = 1024,
    batch_tokens: int = 4096,
    wrong: bool = True,
    progress: Progress | None = None,
    metrics: Any = None,
    train: Any = None,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    task_limit: int | Mapping[str, int] | None = None,
) -> EvalReport:
    """Losses of base, oracle, routed and wrong adapters, and routing accuracy, on ``data``.

    ``data``: labelled JSONL path(s), records or :class:`LabelledExample` s. ``adapters`` maps
    a label to a registry ref or an adapter folder; unmapped labels use the registry adapter
    of that name (or domain). ``router``: a :class:`loraroute.router.Router`; ``None`` opens
    ``Router.open(registry)``; ``False`` skips routing. ``engine``: an existing
    :class:`~loraroute.agents.engine.Engine` (else one is built on the adapters' base model).
    ``batch_tokens`` bounds rows x length per forward; ``wrong=False`` skips the wrong
    adapters (one forward per example and label fewer).

    ``metrics`` adds task metrics of generated answers (:mod:`.tasks`): ``"auto"`` (inferred
    per label: label accuracy, final-number exact match or none), a metric name,
    ``module:function``, a :class:`~.metrics.Metric`, or a mapping label -> one of those
    (``"none"``: loss only); ``None`` generates nothing. ``train``: labelled training data
    whose answers give the majority-class answer and label set (default: the evaluation
    data's own). ``max_new_tokens`` overrides each metric's generation budget;
    ``batch_size``: rows the engine built here decodes together. ``task_limit``: generate
    for at most that many examples per label (or per label given in a mapping), evenly
    spaced; losses still cover every example.
    """
    from loraroute.settings import get_settings

    if max_length < 8:
        raise EvaluationError(f"max_length={max_length} is too small; use at least 8 tokens")
    examples = data if _is_examples(data) else load_labelled(data, label_key=label_key)
    train_refs: dict[str, list[str]] | None = None
    if train is not None:
        from .tasks import reference_of

        train_refs = {}
        for ex in train if _is_examples(train) else load_labelled(train, label_key=label_key):
            train_refs.setdefault(ex.label, []).append(reference_of(ex.messages))
    settings = settings or get_settings()
    labels = sorted({ex.label for ex in examples})
    if registry is not None and isinstance(registry, (str, Path)):
        from loraroute.registry import open_registry

        registry = open_registry(str(registry), settings=settings)
    mapping = _resolve_adapters(labels, adapters, registry, alias)
    if router is None:
        if registry is None:
            raise EvaluationError(
                "no router and no registry to open one from; pass router=... or router=False"
            )
        from loraroute.router import Router

        router = Router.open(registry, alias=alias, settings=settings)

    own_engine = engine is None
    if engine is None:
        engine = _make_engine(
            registry, list(mapping.values()), base_model, settings, device, batch_size
        )
    tasks = None if metrics is None else (metrics, train_refs, max_new_tokens, task_limit)
    try:
        return _evaluate(engine, examples, labels, mapping, registry, router, max_length,
                         batch_tokens, wrong, progress, tasks)  # fmt: skip
    finally:
        if own_engine:
            engine.close()


def _load_variants(
    engine: Any, mapping: Mapping[str, str], registry: Any
) -> tuple[dict[str, _Variant], dict[str, str]]:
    """Load every label's adapter; returns ``(variants by key, label -> key)``."""
    variants: dict[str, _Variant] = {BASE: _Variant(BASE, BASE, None)}
    of_label: dict[str, str] = {}
    for label, ref in sorted(mapping.items()):
        if Path(ref).is_dir():
            entry = engine.load_adapter_folder(ref, name=f"eval:{label}")
            engine_ref, name = f"eval:{label}", f"{label} ({Path(ref).name})"
        else:
            entry = engine.load_adapter(ref)
            if entry is None:
                raise EvaluationError(f"label {label!r} maps to {ref!r}, which is the base model")
            engine_ref, name = entry.ref, entry.ref
        variants.setdefault(entry.digest, _Variant(entry.digest, name, engine_ref))
        of_label[label] = entry.digest
    return variants, of_label


def _routed_variant(
    engine: Any, decision: Any, variants: dict[str, _Variant], of_label: Mapping[str, str]
) -> str:
    """The variant key of a routing decision, loading an adapter outside the labels if needed."""
    if decision is None or decision.adapter is None:
        return BASE
    digest = getattr(decision, "digest", None)
    if digest and digest in variants:
        return str(digest)
    for key, var in variants.items():
        if decision.ref and var.engine_ref == decision.ref:
            return key
    if decision.adapter in of_label:  # a router over plain examples names routes by label
        return of_label[decision.adapter]
    ref = decision.ref or decision.adapter
    entry = engine.load_adapter(ref)
    if entry is None:
        return BASE
    variants.setdefault(entry.digest, _Variant(entry.digest, entry.ref, entry.ref))
    return str(entry.digest)


def _evaluate(
    engine: Any,
    examples: list[LabelledExample],
    labels: list[str],
    mapping: Mapping[str, str],
    registry: Any,
    router: Any,
    max_length: int,
    batch_tokens: int,
    wrong: bool,
    progress: Progress | None,
    tasks: tuple[Any, Any, int | None, Any] | None = None,
) -> EvalReport:
    variants, of_label = _load_variants(engine, mapping, registry)
    routed_keys: list[str | None] = [None] * len(examples)
    routed_names: list[str] = []
    if router is not False:
        decisions = router.route_batch([ex.request() for ex in examples])
        for i, d in enumerate(decisions):
            routed_keys[i] = _routed_variant(engine, d, variants, of_label)
            routed_names.append(variants[routed_keys[i]].name)  # type: ignore[index]

    # tokens and assistant labels, as in training
    encoded = []
    shortened = 0
    for ex in examples:
        enc = encode_example(engine.tokenizer, ChatExample(ex.messages, ex.line))
        if len(enc.input_ids) > max_length:
            shortened += 1
            enc = shorten(enc, max_length, "middle")
        encoded.append(enc)

    # which (example, variant) pairs are needed
    label_keys = sorted(set(of_label.values()))
    needs: list[list[str]] = []
    for i, ex in enumerate(examples):
        want = {BASE, of_label[ex.label]}
        if wrong:
            want.update(label_keys)
        if routed_keys[i] is not None:
            want.add(routed_keys[i])  # type: ignore[arg-type]
        needs.append(sorted(want))
    nll = _score(engine, encoded, needs, variants, batch_tokens, progress)

    per_example = []
    for i, ex in enumerate(examples):
        tokens = sum(lab != IGNORE_INDEX for lab in encoded[i].labels[1:])
        oracle = of_label[ex.label]
        wrongs = [k for k in label_keys if k != oracle] if wrong else []
        rk = routed_keys[i]
        per_example.append(
            {
                "line": ex.line,
                "source": ex.source,
                "label": ex.label,
                "tokens": tokens,
                "base_nll": nll[(i, BASE)],
                "oracle_nll": nll[(i, oracle)],
                "wrong_nll": _mean(nll[(i, k)] for k in wrongs) if wrongs else None,
                "routed_nll": nll[(i, rk)] if rk is not None else None,
                "routed_to": variants[rk].name if rk is not None else None,
                "routed_right": (rk == oracle) if rk is not None else None,
            }
        )
    rows = [
        _label_row(lab, variants[of_label[lab]].name, [e for e in per_example if e["label"] == lab])
        for lab in labels
    ]
    from .tasks import dataset_identity, run_tasks

    for row in rows:
        mine = [ex for ex in examples if ex.label == row["label"]]
        row["dataset"], row["dataset_digest"] = dataset_identity([ex.path for ex in mine], mine)
    generation = None
    if tasks is not None:
        spec, train_refs, max_new, limit = tasks
        task_rows, task_examples, generation = run_tasks(
            engine,
            examples,
            labels,
            of_label,
            routed_keys,
            {key: var.engine_ref for key, var in variants.items()},
            spec,
            train_refs,
            max_new,
            progress,
            limit,
        )
        for row in rows:
            row["task"] = task_rows[row["label"]]
        for e, t in zip(per_example, task_examples, strict=True):
            if t:
                e["task"] = t
    routing = None
    if router is not False:
        routing = _routing_report(
            [ex.label for ex in examples],
            routed_names,
            [bool(e["routed_right"]) for e in per_example],
        )
    overall: dict[str, Any] = {
        "label": "mean",
        "adapter": "",
        "examples": len(examples),
        "tokens": sum(r["tokens"] for r in rows),
    }
    for key in ("base_loss", "oracle_loss", "routed_loss", "wrong_loss"):
        overall[key] = _mean(r[key] for r in rows)
    for key in ("oracle_vs_base", "routed_vs_oracle", "wrong_vs_oracle"):
        overall[key] = _mean(r[key] for r in rows)
    overall["routing_accuracy"] = routing.accuracy if routing else None
    overall["routing_accuracy_macro"] = _mean(r["routing_accuracy"] for r in rows)
    overall["routed_to_base"] = sum(r["routed_to_base"] or 0 for r in rows)
    return EvalReport(
        labels=rows,
        overall=overall,
        routing=routing,
        sequences=sum(len(n) for n in needs),
        tokens=sum(len(encoded[i].input_ids) * len(n) for i, n in enumerate(needs)),
        max_length=max_length,
        shortened=shortened,
        base_model=str(engine.base_model_id),
        per_example=per_example,
        generation=generation,
    )


def _label_row(label: str, adapter: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    tokens = sum(r["tokens"] for r in rows)

    def loss(key: str) -> float | None:
        vals = [r[key] for r in rows]
        if tokens == 0 or any(v is None for v in vals):
            return None
        return sum(vals) / tokens

    base, oracle, routed, wrong = (loss(k) for k in ("base_nll", "oracle_nll", "routed_nll",
                                                      "wrong_nll"))  # fmt: skip
    right = [r["routed_right"] for r in rows if r["routed_right"] is not None]
    return {
        "label": label,
        "adapter": adapter,
        "examples": len(rows),
        "tokens": tokens,
        "base_loss": base,
        "oracle_loss": oracle,
        "routed_loss": routed,
        "wrong_loss": wrong,
        "oracle_vs_base": _ratio(oracle, base),
        "routed_vs_oracle": _ratio(routed, oracle),
        "wrong_vs_oracle": _ratio(wrong, oracle),
        "routing_accuracy": sum(right) / len(right) if right else None,
        "routed_to_base": sum(r["routed_to"] == BASE for r in rows) if right else None,
    }


def _score(
    engine: Any,
    encoded: list[Any],
    needs: list[list[str]],
    variants: Mapping[str, _Variant],
    batch_tokens: int,
    progress: Progress | None,
) -> dict[tuple[int, str], float]:
    """Summed NLL of the assistant tokens for every needed (example, variant) pair.

    Rows are ordered longest first, an example's variants next to each other, and cut into
    batches of at most ``batch_tokens`` (rows x longest row); each batch is one forward of the
    engine with one adapter slot per row.
    """
    import torch
    import torch.nn.functional as F

    rows = [(i, key) for i in range(len(encoded)) for key in needs[i]]
    rows.sort(key=lambda r: -len(encoded[r[0]].input_ids))
    batches: list[list[tuple[int, str]]] = []
    cur: list[tuple[int, str]] = []
    for row in rows:
        width = len(encoded[cur[0][0]].input_ids) if cur else len(encoded[row[0]].input_ids)
        if cur and (len(cur) + 1) * width > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(row)
    if cur:
        batches.append(cur)

    pad = engine.tokenizer.pad_token_id
    if pad is None:
        pad = engine.tokenizer.eos_token_id or 0
    out: dict[tuple[int, str], float] = {}
    done = 0
    for batch in batches:
        width = max(len(encoded[i].input_ids) for i, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (i, _) in enumerate(batch):
            n = len(encoded[i].input_ids)
            ids[r, :n] = torch.tensor(encoded[i].input_ids)
            labels[r, :n] = torch.tensor(encoded[i].labels)
            mask[r, :n] = 1
        refs = [variants[key].engine_ref for _, key in batch]
        logits = engine.logits(ids, refs, attention_mask=mask.to(engine.device))
        target = labels[:, 1:].to(logits.device)
        keep = target != IGNORE_INDEX
        picked = logits[:, :-1][keep].float()
        token_nll = F.cross_entropy(picked, target[keep], reduction="none")
        sums = torch.zeros(len(batch), dtype=torch.float64, device=logits.device)
        sums.index_add_(0, keep.nonzero()[:, 0], token_nll.double())
        for r, (i, key) in enumerate(batch):
            value = float(sums[r])
            if not math.isfinite(value):
                logger.warning("non-finite loss for example %d under %s", i, variants[key].name)
            out[(i, key)] = value
        del logits
        done += len(batch)
        if progress is not None:
            progress(done, len(rows))
    return out
