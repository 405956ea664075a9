"""``adapters drift``: compare recent routing decisions with a reference; exit 1 on drift.

Exit codes (for cron and CI): 0 no drift (or too few decisions to judge), 1 drift past a
threshold, 2 an error (unreachable database, bad option).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click

from loraroute.cli_options import json_option, registry_options

from .drift import DEFAULT_RECENT, DEFAULT_REFERENCE, Thresholds

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class DriftError(click.ClickException):
    """Any failure of ``adapters drift``: exit code 2, so that 1 means drift only."""

    exit_code = 2


def parse_when(value: str | None, *, now: datetime | None = None) -> datetime | None:
    """``2h`` / ``30m`` / ``7d`` ago, or an ISO 8601 time (UTC unless it says otherwise)."""
    if value is None:
        return None
    now = now or datetime.now(timezone.utc)
    m = _DURATION.match(value.strip().lower())
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2)])
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise DriftError(
            f"cannot read time {value!r}: give a duration ago (30m, 2h, 7d) or an ISO 8601 "
            f"time (2026-01-31T12:00:00Z)"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _reference(value: str) -> int | str:
    if value.strip().lower() == "examples":
        return "examples"
    try:
        n = int(value)
    except ValueError:
        raise DriftError(
            f"--reference must be a number of decisions or 'examples', got {value!r}"
        ) from None
    if n < 1:
        raise DriftError(f"--reference must be at least 1 decision, got {n}")
    return n


def _echo(report: dict[str, Any]) -> None:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    click.echo(
        f"recent {report['recent_n']} decisions vs reference "
        f"({report['reference_kind']}) {report['reference_n']}"
    )
    for name, row in report["share"].items():
        click.echo(
            f"  share {name:<20} {pct(row['reference']):>7} -> {pct(row['recent']):>7} "
            f"({100 * row['change']:+.1f} pts)"
        )
    fb = report["fallback_rate"]
    click.echo(f"  fallback rate {pct(fb['reference'])} -> {pct(fb['recent'])}")
    s = report["score"]
    if s["psi"] is not None:
        click.echo(
            f"  score PSI {s['psi']:.3f}  KS {s['ks_statistic']:.3f} (p={s['ks_pvalue']:.2g})"
        )
    d = report["distance"]
    if d["change"] is not None:
        click.echo(
            f"  distance to nearest routing example {d['reference']:.3f} -> {d['recent']:.3f}"
        )
    if not report["enough_data"]:
        click.echo(
            f"too few decisions to judge (need {report['thresholds']['min_samples']} in each "
            f"window): no alarm"
        )
    elif report["drifted"]:
        click.echo("DRIFT:")
        for alarm in report["alarms"]:
            click.echo(f"  {alarm}")
    else:
        click.echo("no drift past the thresholds")


@click.command("drift")
@click.option(
    "--recent",
    type=click.IntRange(1, None),
    default=DEFAULT_RECENT,
    show_default=True,
    help="The newest N decisions are the recent window (unless --since/--until).",
)
@click.option(
    "--reference",
    default=str(DEFAULT_REFERENCE),
    show_default=True,
    help="The N decisions before the recent window, or 'examples': the live adapters' "
    "routing examples (then share and score shift are shown without alarming).",
)
@click.option("--since", default=None, help="Recent window from this time (2h, 7d, ISO 8601).")
@click.option("--until", default=None, help="Recent window up to this time.")
@click.option("--reference-since", default=None, help="Reference window from this time.")
@click.option("--reference-until", default=None, help="Reference window up to this time.")
@click.option(
    "--max-share-change", type=float, default=Thresholds.share, show_default=True,
    help="Alarm when an adapter's traffic share moves more than this (0.1 = 10 points).",
)  # fmt: skip
@click.option(
    "--max-fallback-change", type=float, default=Thresholds.fallback, show_default=True,
    help="Alarm when the fallback (base model) rate moves more than this.",
)  # fmt: skip
@click.option(
    "--max-psi", type=float, default=Thresholds.psi, show_default=True,
    help="Alarm when the score's population stability index exceeds this.",
)  # fmt: skip
@click.option(
    "--max-ks", type=float, default=Thresholds.ks, show_default=True,
    help="Alarm when the score's KS statistic exceeds this (and p < --ks-pvalue).",
)  # fmt: skip
@click.option("--ks-pvalue", type=float, default=Thresholds.ks_pvalue, show_default=True)
@click.option(
    "--max-distance-change", type=float, default=Thresholds.distance, show_default=True,
    help="Alarm when the mean distance to the nearest routing example rises more than this.",
)  # fmt: skip
@click.option(
    "--min-samples", type=click.IntRange(1, None), default=Thresholds.min_samples,
    show_default=True, help="Fewer decisions in a window than this raise no alarm.",
)  # fmt: skip
@click.option(
    "--no-examples",
    is_flag=True,
    help="Skip the routing examples (no distance figures; no encoder is loaded).",
)
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Write a PNG.")
@json_option
@registry_options
@click.option("--alias", default=None, help="Serving alias whose routes are the examples.")
@click.option("--state", "state_dir", type=click.Path(path_type=Path), default=None)
@click.option("--encoder", default=None, help="Encoder (default: settings.embedder).")
@click.pass_context
def drift(ctx: click.Context, **kw: Any) -> None:
    """Compare recent routing decisions of `adapters serve` with a reference window.

    Traffic share per adapter, fallback rate, score shift (PSI and a KS test) and the mean
    distance to the nearest routing example; exits 1 when a figure is past its threshold
    (0: no drift, 2: error), so cron or CI can alert.
    """
    from loraroute.errors import LoraRouteError

    try:
        code = _run(**kw)
    except (LoraRouteError, ValueError, ImportError, OSError) as exc:
        from loraroute.redact import redact_text

        raise DriftError(redact_text(str(exc))) from exc
    except Exception as exc:  # database errors (SQLAlchemy) and the like
        from sqlalchemy.exc import SQLAlchemyError

        from loraroute.redact import redact_text

        if not isinstance(exc, SQLAlchemyError):
            raise
        cause = getattr(exc, "orig", None) or exc
        first = (str(cause).strip().splitlines() or [""])[0]
        raise DriftError(
            f"the registry's database failed ({type(cause).__name__}: {redact_text(first)[:300]})"
        ) from None
    ctx.exit(code)


def _run(
    *,
    recent: int,
    reference: str,
    since: str | None,
    until: str | None,
    reference_since: str | None,
    reference_until: str | None,
    max_share_change: float,
    max_fallback_change: float,
    max_psi: float,
    max_ks: float,
    ks_pvalue: float,
    max_distance_change: float,
    min_samples: int,
    no_examples: bool,
    plot: Path | None,
    as_json: bool,
    registry_url: str | None,
    token: str | None,
    alias: str | None,
    state_dir: Path | None,
    encoder: str | None,
) -> int:
    from loraroute.registry.decisions import DecisionLog
    from loraroute.settings import get_settings

    from .drift import from_log

    ref = _reference(reference)
    if ref == "examples" and no_examples:
        raise DriftError("--reference examples needs the routing examples; drop --no-examples")
    thresholds = Thresholds(
        share=max_share_change,
        fallback=max_fallback_change,
        psi=max_psi,
        ks=max_ks,
        ks_pvalue=ks_pvalue,
        distance=max_distance_change,
        min_samples=min_samples,
    )
    settings = get_settings()
    log = DecisionLog.open(registry_url or settings.registry_url)
    try:
        router = None
        if not no_examples:
            from ._cli_router import _router

            router, _ = _router(registry_url, token, alias, state_dir, encoder)
        windows = from_log(
            log,
            router,
            recent=recent,
            reference=ref,
            since=parse_when(since),
            until=parse_when(until),
            reference_since=parse_when(reference_since),
            reference_until=parse_when(reference_until),
            thresholds=thresholds,
        )
    finally:
        log.close()
    report = windows.report.to_dict()
    if plot is not None:
        from ._drift_plot import plot_drift

        report["plot"] = str(plot_drift(windows, plot))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _echo(report)
        if plot is not None:
            click.echo(f"plot written to {plot}")
    return 1 if windows.report.drifted else 0
