"""Errors shared by every part of loraroute."""

from __future__ import annotations


class LoraRouteError(Exception):
    """Base class of every loraroute error."""


class ModelResolutionError(LoraRouteError, LookupError):
    """A base model or embedder name could not be turned into files on disk."""


class InvalidMessagesError(LoraRouteError, ValueError):
    """Chat messages that cannot be read (unknown role, non-text content, wrong type)."""
