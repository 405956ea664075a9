"""Near-miss suggestions for the registry's not-found errors ("did you mean 'cooking'?").

Example::

    >>> str(missing_adapter("cookng", ["cooking", "space"], "the registry"))
    "no adapter named 'cookng' in the registry; did you mean 'cooking'?"
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from .errors import AdapterNotFoundError
from .refs import Ref

MAX_SUGGESTIONS = 3
CUTOFF = 0.6  # difflib's own default: 'cookng' ~ 'cooking' (0.92), 'legal' !~ 'space'


def close_matches(word: str, candidates: Iterable[str]) -> list[str]:
    """Up to three of ``candidates`` that look like ``word``, the closest first."""
    return difflib.get_close_matches(
        word, sorted(set(candidates)), n=MAX_SUGGESTIONS, cutoff=CUTOFF
    )


def missing_adapter(name: str, names: Iterable[str], where: str) -> AdapterNotFoundError:
    """The error for a name the registry (``where``, e.g. its display URL) does not hold."""
    return AdapterNotFoundError(
        f"no adapter named {name!r} in {where}", suggestions=close_matches(name, names)
    )


def _span(numbers: list[int]) -> str:
    if not numbers:
        return "no versions"
    if numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 2:
        return f"versions {numbers[0]}-{numbers[-1]}"
    return f"version{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"


def missing_version(
    ref: Ref, numbers: Iterable[int], aliases: Iterable[str]
) -> AdapterNotFoundError:
    """The error for a reference to an adapter that exists but has no such version or alias:
    it says what the adapter has, and suggests a near-miss alias."""
    nums = sorted(set(numbers))
    names = sorted(set(aliases))
    has = f"{ref.name} has {_span(nums)}" + (
        f" and alias{'es' if len(names) > 1 else ''} {', '.join(names)}"
        if names
        else ", no aliases"
    )
    suggestions: list[str] = []
    if ref.alias is not None:
        suggestions = [f"{ref.name}:{a}" for a in close_matches(ref.alias, names)]
    return AdapterNotFoundError(
        f"adapter reference {str(ref)!r} matches no version ({has})", suggestions=suggestions
    )


__all__ = ["close_matches", "missing_adapter", "missing_version"]
