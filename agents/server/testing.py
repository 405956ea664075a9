"""A small served stack on the tiny test model: registry + engine + router (for tests/examples).

Example::

    >>> stack = tiny_stack(tmp, tiny_base, {"legal": [f1, f2], "math": [f3]})  # doctest: +SKIP
    >>> with BackgroundServer(stack.app()) as srv: ...  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROUTES = {
    "legal": [
        "is this contract clause enforceable?",
        "what does indemnify mean in a lease",
        "draft a non-disclosure agreement clause",
        "can my landlord keep the deposit under the contract",
    ],
    "math": [
        "solve 2x + 3 = 7 for x",
        "what is the derivative of x squared",
        "integrate sin x from 0 to pi",
        "factor the polynomial x^2 - 5x + 6",
    ],
    "cooking": [
        "how long do I boil an egg",
        "a recipe for fluffy pancakes",
        "how do I roast vegetables in the oven",
        "what spices go with lentil soup",
    ],
}


@dataclass
class TinyStack:
    settings: Any
    registry: Any
    engine: Any
    router: Any
    versions: dict[str, list[Any]] = field(default_factory=dict)

    def backend(self, adapter_roots: Any = ()) -> Any:
        from .backends import LocalBackend

        return LocalBackend(self.engine, adapter_roots=adapter_roots)

    def app(self, *, adapter_roots: Any = (), **config: Any) -> Any:
        from .app import create_app
        from .config import ServerConfig

        return create_app(
            self.backend(adapter_roots), config=ServerConfig(**config), router=self.router
        )

    def close(self) -> None:
        self.engine.close()


def tiny_stack(
    home: Path,
    base: Path,
    adapters: dict[str, list[Path]],
    *,
    routes: dict[str, list[str]] | None = None,
    max_batch_size: int = 8,
    max_resident: int = 4,
) -> TinyStack:
    """Push each adapter's folders as versions 1, 2, ... (``name:prod`` -> version 1), open an
    engine on ``base`` and a hashing-encoder router over the registry."""
    from loraroute.models import fingerprint
    from loraroute.registry import open_registry
    from loraroute.router import Router
    from loraroute.settings import Settings

    from ..runtime.engine import Engine

    routes = routes or ROUTES
    settings = Settings(home=home)
    registry = open_registry(settings=settings)
    fp = fingerprint(base, settings=settings)
    versions: dict[str, list[Any]] = {}
    for name, folders in adapters.items():
        for folder in folders:
            v = registry.push(
                folder, name, domain=name, base_fingerprint=fp, routing_examples=routes.get(name)
            )
            versions.setdefault(name, []).append(v)
        registry.alias_set(name, "prod", 1)
    engine = Engine(
        base,
        registry=registry,
        settings=settings,
        device="cpu",
        max_resident=max_resident,
        max_batch_size=max_batch_size,
    )
    router = Router(registry, encoder="hashing", settings=settings, refresh_interval=0)
    return TinyStack(settings, registry, engine, router, versions)
