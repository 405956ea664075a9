"""The ``adapters`` options every command that touches a registry offers, declared once.

Example::

    @click.command()
    @registry_options
    @json_option
    def ls(registry_url, token, as_json): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

registry_option = click.option(
    "--registry",
    "registry_url",
    default=None,
    metavar="URL",
    help="Registry URL: sqlite:///file.db, postgresql://..., http(s)://host:port "
    "(default: LORAROUTE_REGISTRY, else SQLite under LORAROUTE_HOME).",
)
token_option = click.option(
    "--token",
    default=None,
    metavar="TOKEN",
    help="Bearer token for an HTTP registry (default: LORAROUTE_REGISTRY_TOKEN).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def registry_options(f: F) -> F:
    """``--registry URL`` and ``--token TOKEN`` (passed as ``registry_url`` and ``token``)."""
    return registry_option(token_option(f))
