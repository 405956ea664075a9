"""The router the ``adapters route`` and ``adapters drift`` commands open (state, registry)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def default_state_dir(alias: str | None = None, settings: Any = None) -> Path:
    """Where ``fit`` saves and the other commands load: ``<home>/router/<alias>`` (default:
    the serving alias)."""
    from loraroute.settings import get_settings

    settings = settings or get_settings()
    return settings.home / "router" / (alias or settings.serving_alias)


def _router(registry_url, token, alias, state_dir, encoder, *, load_state: bool = True, **kwargs):
    from loraroute.settings import get_settings

    from .router import Router

    settings = get_settings()
    alias = alias or settings.serving_alias
    registry = None
    if registry_url or token:  # else the router opens the settings' registry itself
        from loraroute.registry import open_registry

        registry = open_registry(registry_url, token=token, settings=settings)
    state = state_dir or default_state_dir(alias, settings)
    enc = encoder or settings.embedder
    if load_state and (state / "state.json").is_file():
        return Router.load(state, registry, encoder=enc, settings=settings, alias=alias), state
    return Router(registry, encoder=enc, settings=settings, alias=alias, **kwargs), state


__all__ = ["_router", "default_state_dir"]
