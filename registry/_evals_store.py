"""The SQL side of eval results and the quality gate: rows of ``lr_eval`` and
``lr_promotion`` read and written inside a caller's session (so a gate's check and the alias
move it allows are one transaction)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from loraroute.settings import Settings

from .errors import LimitError
from .evals import (
    MAX_RESULTS_PER_VERSION,
    EvalResult,
    GateReport,
    check_tolerance,
    enforce,
    judge,
    utc,
)
from .tables import Adapter, Alias, EvalRecord, Promotion, Version

# the fields an EvalResult and its stored row share, copied as they are
_SHARED = (
    "dataset",
    "dataset_digest",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "higher_is_better",
    "source",
)


def _public(r: EvalRecord, ref: str) -> EvalResult:
    return EvalResult(
        **{f: getattr(r, f) for f in _SHARED},
        details=dict(r.details or {}),
        ref=ref,
        actor=r.actor,
        created_at=utc(r.created_at),
    )


def store_results(
    s: Session, version: Version, ref: str, results: Sequence[EvalResult], actor: str | None
) -> list[EvalResult]:
    """Add checked ``results`` to ``version`` (at most MAX_RESULTS_PER_VERSION in all)."""
    have = s.exec(select(func.count()).where(col(EvalRecord.version_id) == version.id)).one()
    if have + len(results) > MAX_RESULTS_PER_VERSION:
        raise LimitError(
            f"{ref} holds {have} eval results; {len(results)} more would pass the limit of "
            f"{MAX_RESULTS_PER_VERSION} a version"
        )
    rows = []
    for r in results:
        row = EvalRecord(
            version_id=version.id,  # type: ignore[arg-type]
            **{f: getattr(r, f) for f in _SHARED},
            actor=actor,
            details=dict(r.details),
        )
        s.add(row)
        rows.append(row)
    s.flush()
    return [_public(row, ref) for row in rows]


def history(s: Session, adapter: Adapter, version: Version | None = None) -> list[EvalResult]:
    """The eval results of ``version`` (None: of every version of ``adapter``), oldest first."""
    q = (
        select(EvalRecord, Version.number)
        .join(Version, col(Version.id) == col(EvalRecord.version_id))
        .where(col(Version.adapter_id) == adapter.id)
    )
    if version is not None:
        q = q.where(col(EvalRecord.version_id) == version.id)
    rows = s.exec(q.order_by(col(EvalRecord.id))).all()
    return [_public(r, f"{adapter.name}@{number}") for r, number in rows]


def holder_of(s: Session, adapter: Adapter, alias: str) -> Version | None:
    return s.exec(
        select(Version)
        .join(Alias, col(Alias.version_id) == col(Version.id))
        .where(col(Alias.adapter_id) == adapter.id, col(Alias.name) == alias)
    ).first()


def check_gate(
    s: Session,
    settings: Settings,
    adapter: Adapter,
    candidate: Version,
    alias: str,
    tolerance: float | None,
) -> GateReport:
    """The gate's report on pointing ``alias`` at ``candidate`` (nothing is written)."""
    tol = settings.gate_tolerance if tolerance is None else check_tolerance(tolerance)
    holder = holder_of(s, adapter, alias)
    return judge(
        adapter.name,
        alias,
        candidate.number,
        history(s, adapter, candidate),
        holder.number if holder is not None else None,
        history(s, adapter, holder) if holder is not None else [],
        tolerance=tol,
        require_evals=settings.gate_require_evals,
    )


def gate_promotion(
    s: Session,
    settings: Settings,
    adapter: Adapter,
    candidate: Version,
    alias: str,
    *,
    force: bool,
    tolerance: float | None,
    actor: str | None,
) -> GateReport:
    """Judge the move, raise QualityGateError if refused and not forced, and record it (the
    caller commits the record with the alias move)."""
    report = enforce(check_gate(s, settings, adapter, candidate, alias, tolerance), force=force)
    if report.verdict != "same-version":
        s.add(
            Promotion(
                name=adapter.name,
                alias=alias,
                from_number=report.holder,
                to_number=candidate.number,
                verdict=report.verdict,
                forced=report.forced,
                tolerance=report.tolerance,
                report=json.dumps(report.to_dict()),
                actor=actor,
            )
        )
    return report


def promotions(s: Session, name: str) -> list[dict[str, Any]]:
    """The serving-alias moves of adapter ``name`` with the gate's verdicts, oldest first."""
    rows = s.exec(
        select(Promotion).where(col(Promotion.name) == name).order_by(col(Promotion.id))
    ).all()
    return [
        {
            "name": r.name,
            "alias": r.alias,
            "from": f"{r.name}@{r.from_number}" if r.from_number is not None else None,
            "to": f"{r.name}@{r.to_number}",
            "verdict": r.verdict,
            "forced": r.forced,
            "tolerance": r.tolerance,
            "report": json.loads(r.report),
            "actor": r.actor,
            "created_at": utc(r.created_at).isoformat(),
        }
        for r in rows
    ]
