"""Routes and where they come from: a registry, or plain data.

A *route* is an adapter name with its routing examples. The router reads routes from any
:class:`RouteSource` - an object with ``serving(alias)`` and ``revision()`` - which the
registry (``loraroute.registry``) is, and which :class:`StaticRoutes` provides for plain data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Route:
    """One routable adapter. ``examples`` empty means: listed, but not routable."""

    name: str
    examples: tuple[str, ...] = ()
    ref: str | None = None
    digest: str | None = None
    domain: str | None = None

    @property
    def routable(self) -> bool:
        return bool(self.examples)

    @classmethod
    def from_version(cls, v: Any) -> Route:
        """From a registry ``AdapterVersion`` (or anything with the same attributes)."""
        examples = [e for e in (getattr(v, "routing_examples", None) or []) if e and e.strip()]
        return cls(
            name=v.name,
            examples=tuple(dict.fromkeys(examples)),  # de-duplicated, order kept
            ref=getattr(v, "ref", None),
            digest=getattr(v, "digest", None),
            domain=getattr(v, "domain", None),
        )


@runtime_checkable
class RouteSource(Protocol):
    """Anything the router can take its routes from (the registry is one): ``serving(alias)``
    gives the live versions, those ``alias`` points to; ``revision()`` changes with them."""

    def serving(self, alias: str = "prod") -> list[Any]: ...

    def revision(self) -> str: ...


@dataclass
class _Version:
    name: str
    routing_examples: list[str]
    ref: str | None = None
    digest: str | None = None
    domain: str | None = None


@dataclass
class StaticRoutes:
    """A :class:`RouteSource` over plain data; ``set()``/``remove()`` change its revision.

    Example::

        >>> src = StaticRoutes({"legal": ["is this clause enforceable?"]})
        >>> [v.name for v in src.serving()]
        ['legal']
    """

    data: dict[str, list[str]] = field(default_factory=dict)
    _rev: int = 0

    def __init__(self, data: Mapping[str, Sequence[str]] | None = None) -> None:
        self.data = {k: list(v) for k, v in (data or {}).items()}
        self._rev = 0

    def set(self, name: str, examples: Iterable[str]) -> None:
        self.data[name] = list(examples)
        self._rev += 1

    def remove(self, name: str) -> None:
        self.data.pop(name, None)
        self._rev += 1

    def serving(self, alias: str = "prod") -> list[_Version]:
        return [_Version(name=k, routing_examples=v) for k, v in sorted(self.data.items())]

    def revision(self) -> str:
        return str(self._rev)


def route_set_digest(routes: Iterable[Route], encoder_name: str) -> str:
    """``sha256:<hex>`` over the encoder and every routable route's name and examples."""
    payload = [
        [r.name, list(r.examples)] for r in sorted(routes, key=lambda r: r.name) if r.routable
    ]
    h = hashlib.sha256(json.dumps([encoder_name, payload], ensure_ascii=False).encode())
    return "sha256:" + h.hexdigest()
