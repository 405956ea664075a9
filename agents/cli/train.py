"""``adapters train`` and ``adapters merge``: train a LoRA adapter on chat JSONL, combine two.

Heavy imports (torch, transformers, peft, the registry) happen inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from loraroute.cli_options import json_option, registry_options


def _floats(value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from exc


@click.command("train")
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Adapter name (registry name with --push).")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Adapter folder to write [default: ./adapters/NAME].",
)
@click.option(
    "--dev",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Dev JSONL evaluated each epoch (loss, perplexity).",
)
@click.option("--base-model", default=None, help="Base model name or folder [default: settings].")
@click.option("--epochs", type=float, default=None, help="Epochs [default: 3].")
@click.option(
    "--max-steps", type=int, default=None, help="Stop after this many steps (overrides --epochs)."
)
@click.option("--lr", type=float, default=None, help="Learning rate [default: 2e-4].")
@click.option("--rank", type=int, default=None, help="LoRA rank [default: 8].")
@click.option("--alpha", type=int, default=None, help="LoRA alpha [default: 2 x rank].")
@click.option("--dropout", type=float, default=None, help="LoRA dropout [default: 0.05].")
@click.option(
    "--targets",
    default=None,
    help="Target modules, comma-separated, or 'all-linear' [default: q,k,v,o_proj].",
)
@click.option(
    "--last-layers",
    type=int,
    default=None,
    metavar="N",
    help="Adapt only the top N decoder layers (faster: backward stops there) [default: all].",
)
@click.option("--batch-size", type=int, default=None, help="Batch size [default: 8].")
@click.option(
    "--grad-accum", type=int, default=None, help="Gradient accumulation steps [default: 1]."
)
@click.option("--max-length", type=int, default=None, help="Max tokens per example [default: 512].")
@click.option(
    "--overlong",
    type=click.Choice(["middle", "truncate", "drop"]),
    default=None,
    help="Longer examples: cut the prompt's middle and keep the answer, keep the first "
    "max-length tokens, or leave them out [default: middle].",
)
@click.option("--packing/--no-packing", default=None, help="Pack short examples together.")
@click.option(
    "--lr-scheduler",
    type=click.Choice(["cosine", "linear", "constant"]),
    default=None,
    help="Learning-rate schedule after warmup [default: cosine].",
)
@click.option(
    "--warmup",
    type=float,
    default=None,
    help="Warmup: a fraction of the steps if < 1, else a step count [default: 0.05].",
)
@click.option("--weight-decay", type=float, default=None, help="AdamW weight decay [default: 0].")
@click.option(
    "--save-every",
    type=int,
    default=None,
    metavar="STEPS",
    help="Checkpoint every STEPS steps, for --resume [default: once an epoch, >= 50 steps].",
)
@click.option(
    "--early-stopping",
    type=int,
    default=None,
    metavar="N",
    help="Stop after N evaluations without improvement (needs --dev).",
)
@click.option("--seed", type=int, default=None, help="Random seed [default: 0].")
@click.option(
    "--resume", is_flag=True, help="Continue from the last checkpoint in the output folder."
)
@click.option("--keep-checkpoints", is_flag=True, help="Keep OUTPUT/checkpoints after training.")
@click.option("--push", is_flag=True, help="Push the adapter to the registry after training.")
@click.option(
    "--alias",
    "aliases",
    multiple=True,
    metavar="ALIAS",
    help="With --push: point ALIAS at the new version (repeatable). It is not live (routed to) "
    "until the serving alias (default prod) points at it: --alias prod.",
)
@click.option(
    "--parent",
    default=None,
    metavar="REF",
    help="Start from this registry adapter (continued training); recorded as the parent.",
)
@click.option(
    "--routing-examples",
    "routing_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Routing examples to record with --push: a text file (one a line) or JSONL "
    "(text or first user turn) [default: a sample of DATA's user turns].",
)
@click.option(
    "--routing-sample",
    "routing_sample",
    type=int,
    default=None,
    metavar="N",
    help="How many distinct user turns of DATA to record as routing examples [default: 64].",
)
@registry_options
@click.option("--domain", default=None, help="Domain recorded in the registry (with --push).")
@click.option("--description", default=None, help="Description recorded in the registry.")
@json_option
def train_cmd(
    data: Path,
    name: str,
    output: Path | None,
    dev: Path | None,
    base_model: str | None,
    as_json: bool,
    push: bool,
    aliases: tuple[str, ...],
    registry_url: str | None,
    token: str | None,
    domain: str | None,
    description: str | None,
    resume: bool,
    keep_checkpoints: bool,
    parent: str | None,
    routing_file: Path | None,
    routing_sample: int | None,
    **options: Any,
) -> None:
    """Train a LoRA adapter on chat JSONL DATA ({"messages": [...]} per line).

    With --push the registry records the data digest, training config, base fingerprint,
    parent (--parent), dev metrics and routing examples (a de-duplicated sample of DATA's user
    turns unless --routing-examples gives others). The pushed version is not live (routed to)
    until promoted: --alias prod, or `adapters alias set NAME prod N` later.
    """
    from ..training import TrainConfig, train_adapter

    names = {
        "lr": "learning_rate",
        "targets": "target_modules",
        "early_stopping": "early_stopping_patience",
    }
    values = {names.get(k, k): v for k, v in options.items() if v is not None}
    values["keep_checkpoints"] = keep_checkpoints
    if routing_sample is not None:
        values["routing_examples"] = routing_sample
    given_examples = _read_routing_examples(routing_file) if routing_file else None
    if aliases and not push:
        raise click.UsageError("--alias points an alias at the pushed version; add --push")
    parent_ref = None
    if parent is not None:
        if not push:
            raise click.UsageError("--parent records lineage in the registry; add --push")
        parent_ref, values["init_adapter"] = _parent_folder(parent, registry_url, token, base_model)
    config = TrainConfig(**values)
    output = output or Path("adapters") / name

    if as_json:  # stdout is the JSON result; progress lines go to stderr
        result = train_adapter(
            data,
            output,
            base_model=base_model,
            config=config,
            dev=dev,
            resume=resume,
            progress=_StderrProgress(),
        )
    else:
        result = _train_with_progress(data, output, base_model, config, dev, resume)
    pushed = None
    if push:
        from loraroute.registry import open_registry

        registry = open_registry(registry_url, token=token)
        version = registry.push(
            output,
            name,
            domain=domain,
            description=description,
            routing_examples=given_examples or result.routing_examples,
            metrics=result.metrics,
            parent=parent_ref,
            data_digest=result.data_digest,
            training_config=result.training_config,
            base_model_id=result.base_model_id,
            base_fingerprint=result.base_fingerprint,
        )
        for alias in aliases:
            version = registry.alias_set(name, alias, version.version)
        live_alias = registry.settings.serving_alias
        pushed = {
            "ref": version.ref,
            "digest": version.digest,
            "aliases": version.aliases,
            "live": live_alias in version.aliases,
        }
    if as_json:
        click.echo(json.dumps(dict(result.to_dict(), pushed=pushed), indent=2))
        return
    m = result.metrics
    line = f"trained {name} -> {output} in {result.train_seconds:.0f}s: train_loss {m['train_loss']:.3f}"
    if "eval_loss" in m:
        line += (
            f", eval_loss {m['base_eval_loss']:.3f} -> {m['eval_loss']:.3f}"
            if "base_eval_loss" in m
            else f", eval_loss {m['eval_loss']:.3f}"
        )
        line += f" (perplexity {m['eval_perplexity']:.1f})"
    click.echo(line)
    rep = result.data_report.get("train", {})
    if rep.get("truncated_examples") or rep.get("dropped_examples"):
        click.echo(
            f"note: {rep['truncated_examples']} example(s) truncated, "
            f"{rep['dropped_examples']} dropped (longer than max_length={config.max_length})"
        )
    if pushed:
        click.echo(f"pushed {pushed['ref']} ({pushed['digest']})")
        if not pushed["live"]:
            click.echo(
                f'{pushed["ref"]} is not live: model="auto" routes only to versions holding '
                f"the alias {live_alias!r}; promote it with `adapters alias set {name} "
                f"{live_alias} {pushed['ref'].split('@')[1]}` (or train with --alias {live_alias})",
                err=True,
            )


class _StderrProgress:
    """One line to stderr every ~5% of the steps (and at the end): step, loss, ETA."""

    def __init__(self) -> None:
        self.last = -1

    def __call__(self, step: int, total: int, logs: dict[str, Any]) -> None:
        if "eta_seconds" not in logs:  # the per-step call, not a log or eval event
            return
        every = max(1, total // 20)
        if step == self.last or (step % every and step != total):
            return
        self.last = step
        parts = [f"step {step}/{total}"]
        parts += [f"{k} {logs[k]:.4f}" for k in ("loss", "eval_loss") if k in logs]
        parts.append(f"elapsed {logs.get('elapsed_seconds', 0):.0f}s")
        parts.append(f"eta {logs['eta_seconds']:.0f}s")
        click.echo(" ".join(parts), err=True)


def _read_routing_examples(path: Path) -> list[str]:
    """One example a line; JSONL lines may be strings, {"text": ...} or chat records."""
    from ..training.data import load_examples

    text = path.read_text(encoding="utf-8")
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if lines and all(ln.lstrip().startswith(("{", '"')) for ln in lines):
        out: list[str] = []
        chats: list[dict[str, Any]] = []
        for n, ln in enumerate(lines, start=1):
            try:
                obj = json.loads(ln)
            except json.JSONDecodeError as exc:
                raise click.BadParameter(
                    f"{path}: line {n} is not valid JSON ({exc.msg})",
                    param_hint="--routing-examples",
                ) from exc
            if isinstance(obj, str):
                out.append(obj)
            elif isinstance(obj, dict) and isinstance(obj.get("text"), str):
                out.append(obj["text"])
            elif isinstance(obj, dict) and "messages" in obj:
                chats.append(obj)
            else:
                raise click.BadParameter(
                    f'{path}: line {n} is neither a string, {{"text": ...}} nor a chat record',
                    param_hint="--routing-examples",
                )
        if chats:
            out += [t for ex in load_examples(chats) if (t := ex.first_user_turn())]
    else:
        out = [ln.strip() for ln in lines]
    examples = list(dict.fromkeys(t.strip() for t in out if t.strip()))
    if not examples:
        raise click.BadParameter(f"{path} holds no examples", param_hint="--routing-examples")
    return examples


def _parent_folder(
    parent: str, registry_url: str | None, token: str | None, base_model: str | None
) -> tuple[str, str]:
    """Resolve ``--parent`` to its ref and local folder; refuse a parent of another base."""
    from loraroute.models import fingerprint, resolve_base_model
    from loraroute.registry import open_registry
    from loraroute.settings import get_settings

    from ..errors import IncompatibleAdapterError

    settings = get_settings()
    reg = open_registry(registry_url, token=token, settings=settings)
    version = reg.resolve(parent)
    base = resolve_base_model(base_model or settings.base_model, settings=settings)
    have = fingerprint(base.path, settings=settings)
    if version.base_fingerprint and version.base_fingerprint != have:
        raise IncompatibleAdapterError(
            f"parent {version.ref} was trained on base {version.base_fingerprint}, not on "
            f"{base.name} ({have}); pass --base-model {version.base_model_id}"
        )
    return version.ref, str(reg.local_path(version))


def _train_with_progress(
    data: Path, output: Path, base_model: str | None, config: Any, dev: Path | None, resume: bool
) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ..training import train_adapter

    with Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
    ) as bar:
        task = bar.add_task("train", total=None, info="loading")

        def progress(step: int, total: int, logs: dict[str, Any]) -> None:
            info = " ".join(f"{k} {logs[k]:.3f}" for k in ("loss", "eval_loss") if k in logs)
            bar.update(task, completed=step, total=total, info=info)

        return train_adapter(
            data,
            output,
            base_model=base_model,
            config=config,
            dev=dev,
            resume=resume,
            progress=progress,
        )


@click.command("merge")
@click.argument("first")
@click.argument("second")
@click.option(
    "--weights", default="0.5,0.5", help="Weights of FIRST and SECOND [default: 0.5,0.5]."
)
@click.option("--name", required=True, help="Registry name of the merged adapter.")
@click.option(
    "--combination",
    type=click.Choice(["auto", "linear", "cat", "svd"]),
    default="auto",
    help="peft combination type [default: cat, the exact weighted sum; linear keeps the rank but adds cross terms].",
)
@registry_options
@click.option("--domain", default=None, help="Domain recorded in the registry.")
@click.option("--description", default=None, help="Description recorded in the registry.")
@json_option
def merge_cmd(
    first: str,
    second: str,
    weights: str,
    name: str,
    combination: str,
    registry_url: str | None,
    token: str | None,
    domain: str | None,
    description: str | None,
    as_json: bool,
) -> None:
    """Combine registry adapters FIRST and SECOND (refs) into a new adapter NAME and push it."""
    from ..training.merge import merge_from_registry

    w = _floats(weights)
    if len(w) != 2:
        raise click.BadParameter(f"expected two weights, got {weights!r}", param_hint="--weights")
    version = merge_from_registry(
        first,
        second,
        name,
        weights=(w[0], w[1]),
        combination=combination,
        registry=registry_url,
        token=token,
        domain=domain,
        description=description,
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ref": version.ref,
                    "digest": version.digest,
                    "parent": version.parent,
                    "merged_from": version.tags.get("merged_from"),
                },
                indent=2,
            )
        )
    else:
        click.echo(
            f"pushed {version.ref} ({version.digest}) merged from {version.tags.get('merged_from')}"
        )


def register(group: click.Group) -> None:
    group.add_command(train_cmd)
    group.add_command(merge_cmd)
