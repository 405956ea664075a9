"""``adapters alias set|rm`` (the serving alias passes the quality gate), ``adapters evals
add|list``, and the eval and promotion history ``adapters show`` prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from loraroute.cli_options import json_option, registry_option, token_option

from ._cli_parts import Group, console, dump, open_registry_for, version_dict


def _echo_report(report: Any) -> None:
    """The gate's comparisons on stdout, its warnings on stderr."""
    for c in report.comparisons:
        click.echo("  " + c.line() + ("  REGRESSION" if c.regressed else ""))
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)


@click.group(cls=Group)
def alias() -> None:
    """Move or remove an adapter's aliases (``legal:prod``)."""


@alias.command("set")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@click.argument("version")
@click.option(
    "--force",
    is_flag=True,
    help="Promote to the serving alias even if the quality gate refuses (recorded; an HTTP "
    "registry needs an admin token).",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=None,
    help="Largest drop of an eval metric the gate allows for this move [default: "
    "LORAROUTE_GATE_TOLERANCE, 0.01].",
)
@click.option(
    "--dry-run", is_flag=True, help="Only report the gate's verdict (exit 1 if it refuses)."
)
@registry_option
@token_option
@json_option
def alias_set(
    name, alias_name, version, force, tolerance, dry_run, registry_url, token, as_json
) -> None:
    """Point NAME:ALIAS at VERSION (a number or reference). Pointing the serving alias
    (default prod) at a version makes it live: model="auto" may route to it.

    The serving alias passes the quality gate: VERSION's eval results (`adapters evals add`)
    are compared with those of the version holding the alias, on the same dataset digest and
    metric; a drop beyond the tolerance is refused, saying by how much, unless --force. With
    nothing to compare the move is allowed with a warning (LORAROUTE_GATE_REQUIRE_EVALS
    refuses it)."""
    reg = open_registry_for(registry_url, token)
    live = alias_name == reg.settings.serving_alias
    report = reg.gate_check(name, version, alias=alias_name, tolerance=tolerance) if live else None
    if dry_run:
        if as_json:
            dump(report.to_dict() if report else {"gated": False})
        elif report is None:
            click.echo(
                f"{name}:{alias_name} is not gated: only the serving alias "
                f"{reg.settings.serving_alias!r} is"
            )
        else:
            verdict = "refuses" if report.refused else "allows"
            click.echo(f"quality gate {verdict} {name}:{alias_name} -> {name}@{report.candidate}")
            _echo_report(report)
        if report is not None and report.refused:
            raise SystemExit(1)
        return
    v = reg.alias_set(name, alias_name, version, force=force, tolerance=tolerance)
    if report is not None and report.refused:  # forced: say what was let through
        report.forced, report.verdict = True, "forced"
        report.warnings.append("forced past the gate (recorded): " + report.message())
    if as_json:
        out = {"alias": f"{name}:{alias_name}", "live": live, **version_dict(v)}
        if report is not None:
            out["gate"] = report.to_dict()
        dump(out)
        return
    click.echo(f"{name}:{alias_name} -> {v.ref}" + (" (live)" if live else ""))
    if report is not None:
        _echo_report(report)


@alias.command("rm")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@registry_option
@token_option
@json_option
def alias_rm(name, alias_name, registry_url, token, as_json) -> None:
    """Remove NAME:ALIAS (the serving alias: NAME is no longer routed to)."""
    open_registry_for(registry_url, token).alias_remove(name, alias_name)
    if as_json:
        dump({"removed": f"{name}:{alias_name}"})
    else:
        click.echo(f"removed {name}:{alias_name}")


@click.group("evals", cls=Group)
def evals_group() -> None:
    """Eval results stored with versions: what the quality gate compares."""


def _read_results(path: Path) -> Any:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise click.BadParameter(
            f"{path} is not readable JSON: {e}", param_hint="--from-json"
        ) from None
    if isinstance(data, dict) and "results" in data:
        data = data["results"]
    return data


@evals_group.command("add")
@click.argument("ref")
@click.option("--dataset", default=None, help="Name of the eval set (e.g. legalbench-dev).")
@click.option("--dataset-digest", default=None, metavar="sha256:HEX", help="sha256 of the data.")
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The eval data file: its sha256 is the dataset digest.",
)
@click.option("--metric", default=None, help="Metric name (accuracy, exact_match, loss...).")
@click.option("--value", type=float, default=None)
@click.option("--ci", type=(float, float), default=None, metavar="LOW HIGH", help="95% CI.")
@click.option("--n", "n", type=int, default=None, help="Number of examples.")
@click.option("--lower-is-better", is_flag=True, help="A smaller value is better (loss).")
@click.option("--source", default="adapters evals add", show_default=True)
@click.option(
    "--from-json",
    "from_json",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Results as JSON: a list of objects (dataset, dataset_digest, metric, value, ci_low, "
    "ci_high, n, higher_is_better, source, details) or {'results': [...]}.",
)
@registry_option
@token_option
@json_option
def evals_add(
    ref,
    dataset,
    dataset_digest,
    data,
    metric,
    value,
    ci,
    n,
    lower_is_better,
    source,
    from_json,
    registry_url,
    token,
    as_json,
) -> None:
    """Record eval results with the version REF (one from the options, or many from
    --from-json)."""
    from .evals import dataset_digest as digest_of

    if from_json is not None:
        results = _read_results(from_json)
    else:
        if data is not None:
            dataset_digest = digest_of(data)
            dataset = dataset or data.name
        missing = [
            opt
            for opt, val in (
                ("--dataset", dataset),
                ("--dataset-digest or --data", dataset_digest),
                ("--metric", metric),
                ("--value", value),
            )
            if val is None
        ]
        if missing:
            raise click.UsageError(f"give {', '.join(missing)} (or --from-json FILE)")
        results = {
            "dataset": dataset,
            "dataset_digest": dataset_digest,
            "metric": metric,
            "value": value,
            "ci": list(ci) if ci else None,
            "n": n,
            "higher_is_better": not lower_is_better,
        }
    stored = open_registry_for(registry_url, token).record_eval(ref, results, source=source)
    if as_json:
        dump([r.to_dict() for r in stored])
        return
    for r in stored:
        click.echo(f"{r.ref}: {r.metric} on {r.dataset} = {r.value:.4g}{r.ci_text()}")


@evals_group.command("list")
@click.argument("ref")
@registry_option
@token_option
@json_option
def evals_list(ref, registry_url, token, as_json) -> None:
    """Eval results of REF (a version), or of every version of an adapter (a bare name)."""
    results = open_registry_for(registry_url, token).evals(ref)
    if as_json:
        dump([r.to_dict() for r in results])
        return
    console().print(eval_table(results, f"{len(results)} eval result(s) of {ref}"))


def eval_table(results: list[Any], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col in ("version", "dataset", "digest", "metric", "value", "95% CI", "n", "source", "by"):
        table.add_column(col, no_wrap=col in ("version", "digest"))
    table.add_column("recorded")
    for r in results:
        table.add_row(
            r.ref,
            r.dataset,
            r.dataset_digest[:15],
            r.metric + ("" if r.higher_is_better else " (lower better)"),
            f"{r.value:.4g}",
            r.ci_text().strip(),
            "" if r.n is None else str(r.n),
            r.source or "",
            r.actor or "local",
            r.created_at.strftime("%Y-%m-%d %H:%M") if r.created_at else "",
        )
    return table


def gate_history(reg: Any, v: Any) -> dict[str, Any]:
    """The eval results of version ``v`` and its adapter's serving-alias moves (empty from a
    registry server older than the quality gate)."""
    from .errors import RemoteError

    try:
        return {"evals": reg.evals(v.ref), "promotions": reg.promotions(v.name)}
    except RemoteError:
        return {"evals": [], "promotions": []}


def print_gate_history(history: dict[str, Any], v: Any) -> None:
    """``adapters show``'s eval results and promotion history."""
    from rich.table import Table

    out = console()
    if history["evals"]:
        out.print(eval_table(history["evals"], f"eval results of {v.ref}"))
    if history["promotions"]:
        table = Table(title=f"promotions of {v.name}")
        for col in ("when", "alias", "from", "to", "gate", "tolerance", "by"):
            table.add_column(col)
        for p in history["promotions"]:
            table.add_row(
                p["created_at"][:16].replace("T", " "),
                p["alias"],
                p["from"] or "",
                p["to"],
                p["verdict"] + (" (forced)" if p["forced"] and p["verdict"] != "forced" else ""),
                f"{p['tolerance']:g}",
                p["actor"] or "local",
            )
        out.print(table)


__all__ = ["alias", "evals_group", "gate_history", "print_gate_history"]
