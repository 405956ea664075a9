"""``adapters`` commands of the agents package (training, chat, serving, demo)."""

from __future__ import annotations

import importlib

import click

# One module per concept; each exposes ``register(group)``. Imports stay light.
_MODULES = (
    "loraroute.agents.cli.train",
    "loraroute.agents.cli.eval",
    "loraroute.agents.cli.chat",
    "loraroute.agents.cli.serve",
    "loraroute.agents.cli.demo",
)


def register(group: click.Group) -> None:
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(group)
