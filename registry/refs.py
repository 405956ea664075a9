"""Adapter references: ``legal``, ``legal@3``, ``legal:prod``, ``legal@sha256:<hex>``.

One parser, one error: every malformed reference raises :class:`InvalidReferenceError`.

Example::

    >>> parse_ref("legal:prod")
    Ref(name='legal', version=None, alias='prod', digest=None)
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import InvalidReferenceError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ALIAS_RE = NAME_RE
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_FORMS = "'name', 'name@3', 'name:alias' or 'name@sha256:<64 hex>'"


class Ref(NamedTuple):
    name: str
    version: int | None = None
    alias: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.alias is not None:
            return f"{self.name}:{self.alias}"
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        return self.name


def check_name(name: str, what: str = "adapter name") -> str:
    """Return ``name`` if it is a safe adapter/alias name, else raise InvalidReferenceError."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise InvalidReferenceError(
            f"{what} {name!r} is not allowed: use 1-128 characters from letters, digits, "
            f"'.', '_' and '-', starting with a letter or digit, without '..', '/' or NUL"
        )
    return name


def parse_ref(ref: str) -> Ref:
    """Parse a reference string; raises :class:`InvalidReferenceError` when malformed."""
    if not isinstance(ref, str) or not ref or "\0" in ref or len(ref) > 300:
        raise InvalidReferenceError(f"invalid adapter reference {ref!r}: expected {_FORMS}")
    try:
        if "@" in ref:
            name, _, rest = ref.partition("@")
            check_name(name)
            if rest.startswith("sha256:"):
                if not DIGEST_RE.match(rest):
                    raise InvalidReferenceError("bad digest")
                return Ref(name, digest=rest)
            if not rest.isdigit() or int(rest) < 1 or len(rest) > 9:
                raise InvalidReferenceError("bad version")
            return Ref(name, version=int(rest))
        if ":" in ref:
            name, _, alias = ref.partition(":")
            check_name(name)
            check_name(alias, "alias")
            return Ref(name, alias=alias)
        return Ref(check_name(ref))
    except InvalidReferenceError:
        raise InvalidReferenceError(
            f"invalid adapter reference {ref!r}: expected {_FORMS}"
        ) from None


__all__ = ["Ref", "check_name", "parse_ref"]
