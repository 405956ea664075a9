"""Pieces of the registry's commands: the command class (clean database errors), opening the
registry, JSON output, the source a push takes, promotion, the version table.

Kept apart from :mod:`loraroute.registry.cli` so that each file stays small.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click


class Command(click.Command):
    """A registry command: a database failure becomes a clean, redacted CLI error."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        from loraroute.redact import redact_text

        try:
            return super().invoke(ctx)
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            first = (str(cause).strip().splitlines() or [""])[0]
            raise click.ClickException(
                f"the registry's database failed ({type(cause).__name__}: "
                f"{redact_text(first)[:300]}); check --registry / LORAROUTE_REGISTRY and that "
                f"the database is reachable"
            ) from None


class Group(click.Group):
    command_class = Command


Group.group_class = Group


def open_registry_for(
    url: str | None, token: str | None = None, trust_policy: Path | None = None
) -> Any:
    from loraroute.settings import get_settings

    from . import open_registry

    settings = get_settings(trust_policy=str(trust_policy) if trust_policy else None)
    return open_registry(url, token=token, settings=settings)


def dump(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def version_dict(v: Any, live_alias: str | None = None) -> dict[str, Any]:
    out = {"ref": v.ref, **v.to_dict()}
    if live_alias is not None:
        out["live"] = live_alias in v.aliases
    return out


def console() -> Any:
    """A rich console for tables: a terminal's width, or, piped (``adapters ls | cat``), no
    width limit, so that no reference is ever cut."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=100_000)


def not_live_hint(v: Any, reg: Any) -> None:
    """Say once, on stderr, how to make a freshly pushed version live."""
    alias = reg.settings.serving_alias
    if alias in v.aliases:
        return
    what = "it has routing examples, but " if v.routing_examples else ""
    click.echo(
        f'{v.ref} is not live: {what}model="auto" routes only to versions holding the '
        f"alias {alias!r}; promote it with `adapters alias set {v.name} {alias} {v.version}` "
        f"(or push with --alias {alias})",
        err=True,
    )


def version_table(versions: list[Any], live_alias: str) -> None:
    """The `adapters ls` table: refs, whether each is live (holds ``live_alias``), aliases..."""
    from rich.table import Table

    out = console()
    piped = not sys.stdout.isatty()
    live = sum(live_alias in v.aliases for v in versions)
    table = Table(
        title=f"{len(versions)} adapter version(s), {live} live (alias {live_alias!r})",
        caption=None if live else f"none is live: `adapters alias set NAME {live_alias} N`",
    )
    # refs and aliases are what users copy into commands: never cut them; the rest may wrap
    table.add_column("ref", no_wrap=True)
    table.add_column("live", no_wrap=True)
    table.add_column("aliases", no_wrap=True)
    for col in ("domain", "rank", "size"):
        table.add_column(col)
    if piped:
        table.add_column("base", no_wrap=True)
    else:
        table.add_column("base", overflow="ellipsis", max_width=24)
    table.add_column("tags", overflow="fold")
    table.add_column("created")
    for v in versions:
        base = v.base_model_id or ""
        table.add_row(
            v.ref,
            "yes" if live_alias in v.aliases else "",
            ", ".join(v.aliases),
            v.domain or "",
            str(v.rank or ""),
            f"{v.size / 1e6:.2f} MB",
            base if piped else base[-32:],
            ", ".join(f"{k}={val}" for k, val in v.tags.items()),
            v.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


class SourceType(click.ParamType):
    """An adapter folder (a Hugging Face cache snapshot too) or ``hf://org/name[@rev]``."""

    name = "FOLDER|hf://ORG/NAME[@REV]"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from .errors import InvalidReferenceError
        from .hub import parse_hub_ref

        try:
            if parse_hub_ref(str(value)) is not None:
                return str(value)
        except InvalidReferenceError as e:
            self.fail(str(e), param, ctx)
        path = Path(value)
        if not path.is_dir():
            self.fail(f"folder {str(value)!r} does not exist or is not a folder", param, ctx)
        return path


def name_for(source: Any, name: str | None) -> str:
    """``--name``, or for ``hf://org/name`` the repository's name."""
    from .hub import parse_hub_ref

    if name:
        return name
    ref = parse_hub_ref(source) if isinstance(source, str) else None
    if ref is None:
        raise click.UsageError("give the adapter a name with --name NAME")
    return ref.name


def promote(reg: Any, v: Any, aliases: tuple[str, ...]) -> Any:
    for alias_name in aliases:
        v = reg.alias_set(v.name, alias_name, v.version)
    return v


alias_option = click.option(
    "--alias",
    "aliases",
    multiple=True,
    metavar="ALIAS",
    help="Point ALIAS at the new version (repeatable). Versions are not live until the serving "
    "alias (LORAROUTE_SERVING_ALIAS, default prod) points at them: --alias prod.",
)


__all__ = [
    "Command",
    "Group",
    "SourceType",
    "alias_option",
    "console",
    "dump",
    "name_for",
    "not_live_hint",
    "open_registry_for",
    "promote",
    "version_dict",
    "version_table",
]
