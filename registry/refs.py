"""Adapter references: ``legal``, ``legal@3``, ``legal:prod``, ``legal@sha256:<hex>``.

One parser, one error: every malformed reference raises :class:`InvalidReferenceError`.
Names, version numbers and digests are plain ASCII; patterns are applied with
``re.fullmatch`` (``$`` would also match before a trailing newline).

Example::

    >>> parse_ref("legal:prod")
    Ref(name='legal', version=None, alias='prod', digest=None)
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ._text import shown
from .errors import InvalidReferenceError

# use with .fullmatch(); the explicit ASCII classes keep other scripts' letters and digits out
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
ALIAS_RE = NAME_RE
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
VERSION_RE = re.compile(r"[0-9]{1,9}")  # ASCII digits only: int() also reads '\u0661' as 1
MAX_VERSION = 999_999_999
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
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidReferenceError(
            f"{what} {shown(name)} is not allowed: use 1-128 characters from the ASCII letters, "
            f"digits, '.', '_' and '-', starting with a letter or digit, without '..', '/', "
            f"spaces or control characters"
        )
    return name


def check_version(number: object, what: str = "version number") -> int:
    """Return ``number`` if it is a version number (an int from 1 to 999,999,999; a bool is
    not one), else raise InvalidReferenceError."""
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_VERSION:
        raise InvalidReferenceError(
            f"{what} {number!r} is not allowed: use a whole number from 1 to {MAX_VERSION:,}"
        )
    return number


def parse_version(text: str) -> int | None:
    """The version number ``text`` spells in ASCII digits (``"3"`` -> 3), else None."""
    if isinstance(text, str) and VERSION_RE.fullmatch(text) and int(text) >= 1:
        return int(text)
    return None


def parse_ref(ref: str) -> Ref:
    """Parse a reference string; raises :class:`InvalidReferenceError` when malformed."""
    if not isinstance(ref, str) or not ref or "\0" in ref or len(ref) > 300:
        raise InvalidReferenceError(f"invalid adapter reference {shown(ref)}: expected {_FORMS}")
    try:
        if "@" in ref:
            name, _, rest = ref.partition("@")
            check_name(name)
            if rest.startswith("sha256:"):
                if not DIGEST_RE.fullmatch(rest):
                    raise InvalidReferenceError("bad digest")
                return Ref(name, digest=rest)
            number = parse_version(rest)
            if number is None:
                raise InvalidReferenceError("bad version")
            return Ref(name, version=number)
        if ":" in ref:
            name, _, alias = ref.partition(":")
            check_name(name)
            check_name(alias, "alias")
            return Ref(name, alias=alias)
        return Ref(check_name(ref))
    except InvalidReferenceError:
        raise InvalidReferenceError(
            f"invalid adapter reference {shown(ref)}: expected {_FORMS}"
        ) from None


__all__ = ["MAX_VERSION", "Ref", "check_name", "check_version", "parse_ref", "parse_version"]
