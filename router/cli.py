"""``adapters route``: route a text, fit thresholds, evaluate, list routes.

``adapters route "text"`` and ``adapters route fit DATA`` coexist: the group treats a first
argument that names no subcommand as the text to route. Heavy imports happen inside commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from loraroute.cli_options import json_option, registry_options

from ._cli_router import _router, default_state_dir  # noqa: F401 - callers import it here
from .errors import InvalidRequestError
from .scoring import DEFAULT_SCORING, SCORINGS

_TEXT_CMD = "text"


class _RouteGroup(click.Group):
    """A group whose default command routes the given text."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [_TEXT_CMD, *args]
        return super().parse_args(ctx, args)


def _common(f):
    f = registry_options(f)
    f = click.option(
        "--alias",
        default=None,
        help="Registry alias whose versions are the routes [default: LORAROUTE_SERVING_ALIAS, "
        "prod]: a version is routed to only once this alias points to it.",
    )(f)
    f = click.option(
        "--state",
        "state_dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Router state folder (default: <home>/router/<alias>).",
    )(f)
    f = click.option("--encoder", default=None, help="Encoder (default: settings.embedder).")(f)
    return f


@click.group(cls=_RouteGroup, name="route", invoke_without_command=False)
def route_group() -> None:
    """Route a request to an adapter: adapters route "TEXT" [--json]; or fit / eval / list."""


@route_group.command(_TEXT_CMD, hidden=True)
@click.argument("text", nargs=-1, required=True)
@json_option
@_common
def route_text(text, as_json, registry_url, token, alias, state_dir, encoder) -> None:
    """Route TEXT."""
    router, _ = _router(registry_url, token, alias, state_dir, encoder)
    d = router.route(" ".join(text))
    if as_json:
        click.echo(json.dumps(d.to_dict(), ensure_ascii=False, indent=2))
        return
    target = f"{d.adapter} ({d.ref})" if d.adapter else "base model (no adapter)"
    click.echo(f"{target}  score {d.score:.3f}  confidence {d.confidence:.2f}  [{d.reason}]")
    if d.truncated:
        click.echo("note: the request was truncated to the encoder window")
    for name, score in d.alternatives:
        click.echo(f"  alternative {name}: {score:.3f}")
    for e in d.evidence:
        click.echo(f"  nearest [{e.route}] {e.similarity:.3f}: {e.text[:80]}")


@route_group.command("fit")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--scoring",
    type=click.Choice(list(SCORINGS)),
    default=DEFAULT_SCORING,
    show_default=True,
    help="auto: knn (routing examples and DATA's in-scope requests as neighbours, 3/5/10 of "
    "them) or hybrid (logistic head + centroid), whichever scores best on held-out folds.",
)
@click.option(
    "--min-oos-recall",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Maximise in-scope accuracy subject to out-of-scope recall >= this on DATA "
    "(e.g. 0.6). DATA needs out-of-scope (null-label) lines; recall on new traffic can be "
    "well below the recall on DATA unless its out-of-scope lines are representative.",
)
@click.option(
    "--oos-weight",
    type=click.FloatRange(0.0, None),
    default=None,
    help="Maximise in-scope accuracy + this x out-of-scope recall (the default objective, "
    "weight 0.25).",
)
@json_option
@_common
def route_fit(
    data,
    scoring,
    min_oos_recall,
    oos_weight,
    as_json,
    registry_url,
    token,
    alias,
    state_dir,
    encoder,
) -> None:
    """Fit thresholds and head on DATA (JSONL: {"text", "label": adapter-or-null}) and save."""
    from .data import read_labelled

    if min_oos_recall is not None and oos_weight is not None:
        raise click.UsageError(
            "give either --min-oos-recall (accuracy subject to a recall floor) or --oos-weight "
            "(weighted objective), not both"
        )
    texts, labels = read_labelled(data)
    router, state = _router(
        registry_url, token, alias, state_dir, encoder, load_state=False, scoring=scoring
    )
    try:
        report = router.fit(texts, labels, oos_weight=oos_weight, min_oos_recall=min_oos_recall)
    except InvalidRequestError as exc:
        raise click.BadParameter(str(exc), param_hint="DATA") from exc
    router.save(state)
    report["state"] = str(state)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(
            f"fitted on {report.get('samples', 0)} texts ({report.get('out_of_scope', 0)} "
            f"out of scope), {report['routes']} routes; saved to {state}"
        )
        if report.get("fit_in_scope_accuracy") is not None:
            obj = report["objective"]
            how = (
                f"accuracy subject to out-of-scope recall >= {obj['min_oos_recall']:g}"
                if "min_oos_recall" in obj
                else f"accuracy + {obj['oos_weight']:g} x out-of-scope recall"
            )
            click.echo(
                f"thresholds maximise {how}; on DATA: in-scope accuracy "
                f"{100 * report['fit_in_scope_accuracy']:.1f}%, out-of-scope recall "
                f"{100 * report['fit_oos_recall']:.1f}%"
            )
        if report.get("scorer"):
            m = f", {report['knn_m']} neighbours per route" if report.get("knn_m") else ""
            click.echo(f"scorer: {report['scorer']}{m}")
        if report.get("unknown_labels"):
            click.echo(
                f"labels naming no routable adapter (treated as out of scope): "
                f"{', '.join(report['unknown_labels'])}"
            )


@route_group.command("eval")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    default=None,
    help="Write a PNG: confusion matrix + score histogram (in scope vs out).",
)
@json_option
@_common
def route_eval(data, plot, as_json, registry_url, token, alias, state_dir, encoder) -> None:
    """Evaluate the router on DATA: accuracy, abstention precision/recall, per-route table."""
    from .data import read_labelled
    from .evaluate import evaluate

    texts, labels = read_labelled(data)
    router, _ = _router(registry_url, token, alias, state_dir, encoder)
    report = evaluate(router, texts, labels, plot=plot)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    console = Console()
    console.print(
        f"n={report['n']}  accuracy {pct(report['accuracy'])}  in-scope accuracy "
        f"{pct(report['in_scope_accuracy'])}  abstention precision "
        f"{pct(report['abstention_precision'])} recall {pct(report['abstention_recall'])}"
        + (f"  AUROC {report['auroc']:.3f}" if report["auroc"] is not None else "")
    )
    table = Table("route", "support", "accuracy", "precision", "abstained")
    for name, row in report["per_route"].items():
        table.add_row(
            name,
            str(row["support"]),
            pct(row["accuracy"]),
            pct(row["precision"]),
            str(row["abstained"]),
        )
    console.print(table)
    if plot:
        console.print(f"plot written to {plot}")


@route_group.command("list")
@json_option
@_common
def route_list(as_json, registry_url, token, alias, state_dir, encoder) -> None:
    """List routes: the live versions (those the alias points to), routable or not (no
    routing examples)."""
    router, _ = _router(registry_url, token, alias, state_dir, encoder)
    rows = [
        {
            "name": r.name,
            "ref": r.ref,
            "domain": r.domain,
            "examples": len(r.examples),
            "routable": r.routable,
        }
        for r in router.routes + router.unroutable
    ]
    if as_json:
        out = {"alias": router.alias, "routes": rows, "fitted": router.fitted}
        click.echo(json.dumps(out, indent=2))
        return
    if not rows:
        click.echo(
            f"no live routes: no version holds the alias {router.alias!r}; promote one with "
            f"`adapters alias set NAME {router.alias} VERSION`"
        )
    for row in rows:
        note = "" if row["routable"] else "  (not routable: no routing examples)"
        click.echo(f"{row['ref'] or row['name']}  {row['examples']} examples{note}")


def register(group: click.Group) -> None:
    from ._cli_drift import drift

    group.add_command(route_group)
    group.add_command(drift)
