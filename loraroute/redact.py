"""Keep secrets inside the process: passwords in URLs, tokens, API keys.

One set of patterns serves every message, log record and HTTP answer:

- the password of any ``scheme://user:password@host`` URL (``postgresql://u:***@h/db``);
- ``password=``, ``token=``, ``access_token=``, ``api_key=`` ... parameters (query strings,
  libpq DSNs), and S3's (``aws_secret_access_key=``, a presigned URL's ``X-Amz-Signature=``);
- ``Bearer <secret>`` and loraroute registry tokens (``lrt_...``).

Example::

    >>> redact_url("postgresql://u:pw@h/db")
    'postgresql://u:***@h/db'
    >>> redact_text("cannot connect to postgresql://u:pw@h/db: refused")
    'cannot connect to postgresql://u:***@h/db: refused'

Servers install :class:`RedactingFilter` on their log handlers (``uvicorn_log_config()``), so
that access-log lines and tracebacks are redacted as well.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"

# scheme://user:password@ -- the password runs to the last '@' of the authority (a raw '@'
# inside a password is common in hand-written DSNs); the authority ends at / ? # or a space
_URL_PASSWORD = re.compile(
    r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"]*):(?P<pw>[^\s/?#'\"]*)@"
)
_SECRET_PARAM = re.compile(
    r"(?i)(?P<key>\b(?:password|passwd|pwd|token|access_token|refresh_token|id_token|"
    r"api_key|apikey|api-key|secret|client_secret|auth|"
    # S3: credentials in config dumps, presigned URLs' signature, credential and session token
    r"aws_access_key_id|aws_secret_access_key|aws_session_token|secret_access_key|"
    r"session_token|x-amz-signature|x-amz-credential|x-amz-security-token)=)"
    r"(?P<value>[^\s&;'\"]+)"
)
# a credential after "Bearer" is long (prose such as "a bearer token" is left alone)
_BEARER = re.compile(r"(?i)\b(?P<key>bearer\s+)(?P<value>[A-Za-z0-9._~+/\-]{16,}=*)")
_REGISTRY_TOKEN = re.compile(r"\blrt_[A-Za-z0-9_\-]{4,}")


def redact_text(text: str) -> str:
    """``text`` with every password, token and API key it contains replaced by ``***``."""
    if not isinstance(text, str):
        text = str(text)
    text = _URL_PASSWORD.sub(lambda m: f"{m['pre']}:{MASK}@", text)
    text = _SECRET_PARAM.sub(lambda m: f"{m['key']}{MASK}", text)
    text = _BEARER.sub(lambda m: f"{m['key']}{MASK}", text)
    return _REGISTRY_TOKEN.sub(f"lrt_{MASK}", text)


def redact_url(url: str) -> str:
    """A URL safe to show: ``postgresql://u:pw@h/db`` -> ``postgresql://u:***@h/db``.

    Query parameters that carry secrets (``?password=``, ``?token=``) are masked too; a URL
    without credentials comes back unchanged.
    """
    return redact_text(url)


class Scrubber:
    """Text for clients: each private string (a store's URL, its folders) replaced by its label,
    then :func:`redact_text`. Longer strings go first, so a folder inside another is caught.

    Example::

        >>> scrub = Scrubber({"/srv/reg/blobs": "<store>"})
        >>> scrub("blob missing in /srv/reg/blobs/sha256/ab")
        'blob missing in <store>/sha256/ab'
    """

    def __init__(self, hide: Mapping[str, str] | Iterable[str] = ()) -> None:
        pairs = hide.items() if isinstance(hide, Mapping) else ((h, "<hidden>") for h in hide)
        self.hide = sorted(((k, v) for k, v in pairs if k), key=lambda kv: -len(kv[0]))

    def __call__(self, text: str) -> str:
        for secret, label in self.hide:
            text = text.replace(secret, label)
        return redact_text(text)


def _redact_arg(arg: Any) -> Any:
    if isinstance(arg, int | float) or arg is None:
        return arg
    text = arg if isinstance(arg, str) else str(arg)
    clean = redact_text(text)
    return arg if clean == text else clean


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets in a record's message, arguments and traceback.

    Arguments are redacted one by one (not merged into the message) because some formatters,
    uvicorn's access formatter among them, read ``record.args`` themselves.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_text(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def install_log_redaction(*logger_names: str) -> None:
    """Add a :class:`RedactingFilter` to the named loggers and their handlers (idempotent).

    Default: uvicorn's loggers (``uvicorn``, ``uvicorn.error``, ``uvicorn.access``), whose
    access lines carry request URLs.
    """
    for name in logger_names or ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        targets: list[logging.Filterer] = [logger, *logger.handlers]
        for target in targets:
            if not any(isinstance(f, RedactingFilter) for f in target.filters):
                target.addFilter(RedactingFilter())


def uvicorn_log_config(base: dict[str, Any] | None = None) -> dict[str, Any]:
    """uvicorn's logging config (or ``base``) with a :class:`RedactingFilter` on every handler.

    Example: ``uvicorn.run(app, log_config=uvicorn_log_config())``.
    """
    if base is None:
        from uvicorn.config import LOGGING_CONFIG

        base = LOGGING_CONFIG
    config = copy.deepcopy(base)
    config.setdefault("filters", {})["redact"] = {"()": f"{__name__}.RedactingFilter"}
    for handler in config.get("handlers", {}).values():
        if "redact" not in handler.setdefault("filters", []):
            handler["filters"].append("redact")
    return config


__all__ = [
    "MASK",
    "RedactingFilter",
    "Scrubber",
    "install_log_redaction",
    "redact_text",
    "redact_url",
    "uvicorn_log_config",
]
