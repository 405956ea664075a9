"""Errors of the adapter registry: one base class, specific subclasses that also inherit built-ins."""

from __future__ import annotations

from collections.abc import Callable

from loraroute.errors import LoraRouteError


class RegistryError(LoraRouteError):
    """Base class of every error raised by ``loraroute.registry``."""


class AdapterNotFoundError(RegistryError, KeyError):
    """A reference names no adapter, version, alias or digest the registry holds.

    ``suggestions`` are near-miss names (or aliases) the message offers ("did you mean
    'cooking'?"); a server narrows them to what the caller may see with :meth:`narrowed`.
    """

    def __init__(self, message: str = "", *, suggestions: tuple[str, ...] | list[str] = ()):
        super().__init__(message)
        self.message = message
        self.suggestions = tuple(suggestions)

    def __str__(self) -> str:  # KeyError would quote the message
        if not self.suggestions:
            return self.message
        quoted = " or ".join(repr(s) for s in self.suggestions)
        return f"{self.message}; did you mean {quoted}?"

    def __reduce__(self) -> tuple:  # keep the suggestions across processes
        return (_not_found, (type(self), self.message, self.suggestions))

    def narrowed(self, allowed: Callable[[str], bool]) -> AdapterNotFoundError:
        """The same error offering only the suggestions ``allowed`` accepts."""
        return type(self)(self.message, suggestions=[s for s in self.suggestions if allowed(s)])


def _not_found(
    cls: type[AdapterNotFoundError], message: str, suggestions: tuple[str, ...]
) -> AdapterNotFoundError:
    return cls(message, suggestions=suggestions)


class InvalidReferenceError(RegistryError, ValueError):
    """A reference string is malformed (see :func:`loraroute.registry.parse_ref`)."""


class InvalidRequestError(RegistryError, ValueError):
    """An argument or request field is malformed (a filter, a token setting, a duration);
    references have their own :class:`InvalidReferenceError`."""


class InvalidAdapterError(RegistryError, ValueError):
    """An adapter was refused: unsafe, malformed, inconsistent, or not fitting the base model."""


class SignatureError(RegistryError, ValueError):
    """A signature bundle is malformed or does not cover the version's files, or a version is
    unsigned or mis-signed under the trust policy."""


class VersionConflictError(RegistryError, RuntimeError):
    """A version number is taken by different content, or an alias blocks a removal."""


class QualityGateError(RegistryError, RuntimeError):
    """Promotion to the serving alias refused: the candidate's eval results regress beyond the
    tolerance against the version holding the alias, on the same dataset and metric (409 over
    HTTP). ``force=True`` (``--force``) promotes anyway and records the override."""


class IntegrityError(RegistryError, RuntimeError):
    """Stored or transferred bytes do not match their recorded sha256 digest."""


class AuthError(RegistryError, PermissionError):
    """A remote registry refused the request's token (missing, unknown or lacking a scope)."""


class ForbiddenError(AuthError):
    """A valid token whose scope or adapter-name prefix does not allow the request (403)."""


class LimitError(RegistryError, ValueError):
    """A size or count limit was exceeded: a blob, a manifest, routing examples, a model card
    or a request body (413 over HTTP). The message names the limit and its setting."""


class StorageError(RegistryError, OSError):
    """The blob store failed: an object store that cannot be reached, refuses the credentials
    or answers an error (the HTTP server answers 503 and logs the detail)."""


class SchemaError(RegistryError, RuntimeError):
    """The registry's database schema is not the one this release uses: behind (run
    ``adapters registry migrate``) or ahead (upgrade loraroute)."""


class RemoteError(RegistryError, ConnectionError):
    """A remote registry could not be reached or answered with an unexpected error."""


class InvalidResponseError(RemoteError, ValueError):
    """A remote registry answered with a value that fails validation (a malformed digest,
    name, path, size or count); the answer was not used and nothing was written."""


__all__ = [
    "AdapterNotFoundError",
    "AuthError",
    "ForbiddenError",
    "IntegrityError",
    "InvalidAdapterError",
    "InvalidReferenceError",
    "InvalidRequestError",
    "InvalidResponseError",
    "LimitError",
    "QualityGateError",
    "RegistryError",
    "RemoteError",
    "SchemaError",
    "SignatureError",
    "StorageError",
    "VersionConflictError",
]
