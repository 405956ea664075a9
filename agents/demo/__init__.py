"""``adapters demo``: trains four small adapters on data it writes, fits the router, chats."""

from __future__ import annotations

from .run import DemoConfig, DemoResult, DemoTurn, demo_registry_url, demo_router, run_demo

__all__ = ["DemoConfig", "DemoResult", "DemoTurn", "demo_registry_url", "demo_router", "run_demo"]
