"""``adapters eval``: held-out loss of base, oracle, routed and wrong adapters; routing accuracy.

Heavy imports (torch, the engine, the router) happen inside the command.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from loraroute.cli_options import json_option, registry_options


def _mapping(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        label, sep, ref = item.partition("=")
        if not sep or not label.strip() or not ref.strip():
            raise click.BadParameter(
                f"{item!r} is not LABEL=REF (a registry ref or an adapter folder)",
                param_hint="--adapter",
            )
        out[label.strip()] = ref.strip()
    return out


@click.command("eval")
@click.argument(
    "data", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@registry_options
@click.option(
    "--adapter",
    "adapter_map",
    multiple=True,
    metavar="LABEL=REF",
    help="The right adapter for a label: a registry ref or an adapter folder (repeatable) "
    "[default: the registry adapter named, or with domain, LABEL].",
)
@click.option(
    "--label-key", default=None, help="Record key holding the label [default: label, else domain]."
)
@click.option(
    "--alias",
    default=None,
    help="Registry alias whose versions are served [default: LORAROUTE_SERVING_ALIAS, prod].",
)
@click.option(
    "--encoder",
    default=None,
    help="Router encoder (e.g. all-minilm-l6-v2, hashing) [default: the router's saved state, "
    "else settings].",
)
@click.option("--no-route", is_flag=True, help="Skip routing (no routed loss, no accuracy).")
@click.option("--no-wrong", is_flag=True, help="Skip the wrong adapters (fewer forwards).")
@click.option(
    "--max-length",
    type=int,
    default=1024,
    show_default=True,
    help="Tokens per conversation; longer ones lose the middle of their prompt.",
)
@click.option(
    "--batch-tokens",
    type=int,
    default=4096,
    show_default=True,
    help="Rows x length per forward (memory bound).",
)
@click.option("--base-model", default=None, help="Base model [default: the adapters' base].")
@click.option("--device", default=None, help="cpu, cuda, cuda:N [default: settings].")
@click.option(
    "--metric",
    "metric_specs",
    multiple=True,
    metavar="[LABEL=]METRIC",
    help="Task metric of generated answers, for every label or LABEL=: auto (label accuracy, "
    "final-number exact match or none, from the answers), label, final-number, exact, a "
    "registered name, module:function ((prediction, reference) -> bool/float), or none "
    "(loss only) [default: auto].",
)
@click.option(
    "--train",
    "train_data",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Labelled training JSONL: its answers give the majority-class answer and the label "
    "set (repeatable) [default: the evaluation data's own].",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Generated tokens per answer [default: the metric's own, e.g. 256 for final-number].",
)
@click.option(
    "--task-limit",
    type=click.IntRange(min=1),
    default=None,
    help="Generate answers for at most N examples per label, evenly spaced (losses: all).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Answers the engine decodes together (across adapters).",
)
@click.option(
    "--examples", "with_examples", is_flag=True, help="Per-example losses and answers in --json."
)
@click.option(
    "--record",
    is_flag=True,
    help="Store each registry version's oracle results (loss, task metric, interval, n, the "
    "examples' digest) with the version, for the quality gate of adapters alias set.",
)
@json_option
def eval_cmd(
    data: tuple[Path, ...],
    registry_url: str | None,
    token: str | None,
    adapter_map: tuple[str, ...],
    label_key: str | None,
    alias: str | None,
    encoder: str | None,
    no_route: bool,
    no_wrong: bool,
    max_length: int,
    batch_tokens: int,
    base_model: str | None,
    device: str | None,
    metric_specs: tuple[str, ...],
    train_data: tuple[Path, ...],
    max_new_tokens: int | None,
    task_limit: int | None,
    batch_size: int,
    with_examples: bool,
    record: bool,
    as_json: bool,
) -> None:
    """Score labelled chat JSONL DATA ({"messages": [...], "domain": ...} per line).

    For every example: loss on its assistant tokens under the base model, the adapter of its
    label (oracle), the adapter the router picks (routed) and the other labels' adapters
    (wrong, averaged); and how often the router picks the oracle. Where an answer is a label
    or a number, answers are generated (greedy, batched across adapters) and scored: base,
    oracle, routed and the majority-class answer, with 95% confidence intervals.
    """
    from loraroute.settings import get_settings

    from ..evaluation.evaluate import evaluate, load_labelled
    from ..evaluation.metrics import MetricError, get_metric

    mapping = _mapping(adapter_map)
    metrics = _metric_specs(metric_specs)
    for spec in metrics.values() if isinstance(metrics, dict) else [metrics]:
        if spec not in ("auto", "none"):
            try:
                get_metric(spec)
            except MetricError as exc:
                raise click.BadParameter(str(exc), param_hint="--metric") from exc
    examples = load_labelled(list(data), label_key=label_key)  # bad data fails before any load
    train = load_labelled(list(train_data), label_key=label_key) if train_data else None
    settings = get_settings()
    registry = None
    if (
        record
        or registry_url is not None
        or token is not None
        or not all(Path(v).is_dir() for v in mapping.values())
        or ({ex.label for ex in examples} - set(mapping))
    ):
        from loraroute.registry import open_registry

        registry = open_registry(registry_url, token=token, settings=settings)
    router: object = False
    if not no_route:
        if registry is None:
            raise click.UsageError(
                "routing needs a registry (its adapters' routing examples): pass --registry, "
                "or --no-route to score adapter folders without routing"
            )
        from loraroute.router import Router

        kwargs = {"encoder": encoder} if encoder else {}
        router = Router.open(registry, alias=alias, settings=settings, **kwargs)

    progress_cm = None
    if not as_json:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        progress_cm = Progress(
            "[bold]scoring",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
    run = functools.partial(
        evaluate,
        examples,
        adapters=mapping,
        registry=registry,
        router=router,
        alias=alias,
        base_model=base_model,
        settings=settings,
        device=device,
        max_length=max_length,
        batch_tokens=batch_tokens,
        wrong=not no_wrong,
        metrics=metrics,
        train=train,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        task_limit=task_limit,
    )
    if progress_cm is not None:
        with progress_cm as bar:
            task = bar.add_task("eval", total=None)
            report = run(progress=lambda done, total: bar.update(task, completed=done, total=total))
    else:
        report = run()
    recorded: list[str] = []
    if record:
        from ..evaluation.tasks import record_in_registry

        recorded, skipped = record_in_registry(registry, report)
        if skipped and not as_json:
            click.echo(
                f"not recorded (adapter folders, not registry versions): {', '.join(skipped)}"
            )
    if as_json:
        out = report.to_dict(examples=with_examples)
        if record:
            out["recorded"] = recorded
        click.echo(json.dumps(out, indent=2))
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=120)
    console.print(report.table())
    if recorded:
        console.print(f"recorded in the registry (adapters evals list): {', '.join(recorded)}")
    if (tasks := report.task_table()) is not None:
        console.print(tasks)
    if report.routing is not None and report.routing.misrouted:
        console.print(
            "misrouted: "
            + "; ".join(
                f"{label} -> " + ", ".join(f"{k} x{n}" for k, n in row.items())
                for label, row in report.routing.misrouted.items()
            )
        )
    if report.shortened:
        console.print(
            f"note: {report.shortened} conversation(s) longer than {max_length} tokens lost the "
            f"middle of their prompt"
        )


def _metric_specs(values: tuple[str, ...]) -> str | dict[str, str]:
    """``--metric`` values: one spec for every label, or ``LABEL=SPEC`` per label (the rest:
    the last plain spec, else auto)."""
    default = "auto"
    per: dict[str, str] = {}
    for item in values:
        label, sep, spec = item.partition("=")
        if sep:
            if not label.strip() or not spec.strip():
                raise click.BadParameter(f"{item!r} is not LABEL=METRIC", param_hint="--metric")
            per[label.strip()] = spec.strip()
        else:
            default = item.strip()
    if not per:
        return default
    return {"*": default, **per}


def register(group: click.Group) -> None:
    group.add_command(eval_cmd)
