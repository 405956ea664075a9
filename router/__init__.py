"""loraroute.router: choose the adapter (or none) for each request by embedding similarity.

Example::

    >>> from loraroute.router import Router
    >>> router = Router.from_examples({"math": ["solve 2x + 3 = 7"],
    ...                                "legal": ["is this clause enforceable?"]},
    ...                               encoder="hashing")
    >>> router.route("solve x + 1 = 2").adapter
    'math'
"""

from __future__ import annotations

from .context import ContextConfig
from .decision import Evidence, RouteDecision
from .encoders import Encoder, HashingEncoder, load_encoder
from .errors import (
    EncoderError,
    InvalidRequestError,
    NotFittedError,
    RouteDataError,
    RouterError,
    RouterStateError,
)
from .router import Router
from .routes import Route, RouteSource, StaticRoutes, route_set_digest
from .session import RouteSession

__all__ = [
    "ContextConfig",
    "Encoder",
    "EncoderError",
    "Evidence",
    "HashingEncoder",
    "InvalidRequestError",
    "NotFittedError",
    "Route",
    "RouteDataError",
    "RouteDecision",
    "RouteSession",
    "RouteSource",
    "Router",
    "RouterError",
    "RouterStateError",
    "StaticRoutes",
    "load_encoder",
    "route_set_digest",
]
