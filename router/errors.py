"""Router errors: one base class, specific subclasses that also inherit the matching built-in."""

from __future__ import annotations

from loraroute.errors import LoraRouteError


class RouterError(LoraRouteError):
    """Base class of every router error."""


class InvalidRequestError(RouterError, ValueError):
    """A request the router cannot read (wrong type, no user turn, unknown role)."""


class EncoderError(RouterError, RuntimeError):
    """An encoder could not be loaded or produced unusable vectors."""


class RouterStateError(RouterError, ValueError):
    """Saved router state is missing, of another format version, or for another route set."""


class NotFittedError(RouterError, RuntimeError):
    """An operation needs :meth:`Router.fit` (or a loaded fitted state) first."""


class RouteDataError(RouterError, ValueError):
    """A routing data file (JSONL) has a line the router cannot use."""
