"""The HTTP registry: a FastAPI app over a local :class:`Registry` (same SQL, same blobs).

Blobs go first (``PUT /v1/blobs/{digest}``, streamed and verified against the digest), the
manifest last (``POST /v1/adapters/{name}/versions``), as in the OCI distribution spec; so a
version is visible only once all its bytes are in.

What a client sends is bounded (:class:`Limits`, 413) and validated (4xx); tokens travel only
in the Authorization header; what the server answers never carries a filesystem path or a
database URL: database and storage failures are a generic 503 whose detail goes to the server
log, redacted.

Example::

    $ adapters registry token create --scope write --registry sqlite:///srv/registry.db
    $ adapters registry serve --registry sqlite:///srv/registry.db --port 8765
"""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraroute.redact import Scrubber, install_log_redaction, redact_text

from ._asgi import BodyLimit, RefuseQueryTokens
from ._model_signing import MAX_SIGNATURE_BYTES
from .auth import TokenInfo, authenticate
from .blobs import CHUNK, check_digest
from .errors import (
    AdapterNotFoundError,
    AuthError,
    ForbiddenError,
    IntegrityError,
    InvalidAdapterError,
    InvalidReferenceError,
    InvalidRequestError,
    LimitError,
    QualityGateError,
    RegistryError,
    SignatureError,
    StorageError,
    VersionConflictError,
)
from .evals import as_results
from .limits import Limits
from .local import GC_GRACE_SECONDS, Registry
from .protocol import AliasIn, EvalsIn, ManifestIn
from .refs import parse_ref

logger = logging.getLogger(__name__)

API = "/v1"
_STATUS: tuple[tuple[type[RegistryError], int], ...] = (
    (AdapterNotFoundError, 404),
    (InvalidReferenceError, 400),
    (InvalidRequestError, 400),
    (InvalidAdapterError, 422),
    (VersionConflictError, 409),
    (QualityGateError, 409),
    (IntegrityError, 422),
    (SignatureError, 422),
    (LimitError, 413),
    (ForbiddenError, 403),
    (AuthError, 401),
)
Grant = TokenInfo | None  # None: an anonymous reader


def _need(scope: str) -> Any:
    """A dependency: the request's token must allow ``scope``; returns its grant."""

    def check(request: Request, authorization: Annotated[str | None, Header()] = None) -> Grant:
        if authorization is None:
            if scope == "read" and request.app.state.allow_anonymous_read:
                return None
            raise AuthError(
                f"this registry needs a bearer token with scope {scope!r}; create one with "
                f"`adapters registry token create --scope {scope}` and pass --token"
            )
        kind, _, token = authorization.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise AuthError("unknown or malformed bearer token")
        grant = authenticate(request.app.state.registry, token.strip())
        request.state.grant = grant  # not-found errors suggest only names it may see
        if not grant.allows(scope):
            raise ForbiddenError(
                f"token scope {grant.scope!r} does not allow this; it needs scope {scope!r}"
            )
        return grant

    return Depends(check)


Reader = Annotated[Grant, _need("read")]
Writer = Annotated[Grant, _need("write")]
Admin = Annotated[Grant, _need("admin")]


class _BlobResponse(FileResponse):
    chunk_size = 1 << 20  # starlette's 64 KiB default costs ~2x throughput on large blobs


class SignatureIn(BaseModel):
    """``POST /v1/signatures``: a model-signing bundle (JSON text) over a version's files."""

    model_config = ConfigDict(extra="forbid")
    bundle: str = Field(max_length=MAX_SIGNATURE_BYTES)


def create_app(
    registry: Registry | str | None = None,
    *,
    allow_anonymous_read: bool = False,
    limits: Limits | None = None,
) -> FastAPI:
    """A FastAPI app serving ``registry`` (a local Registry or its URL).

    ``limits`` (default: the registry's own, from ``LORAROUTE_REGISTRY_MAX_*``) bound request
    bodies, blobs, manifests, routing examples and model cards; past one the answer is 413.
    """
    from . import open_registry

    reg = registry if isinstance(registry, Registry) else open_registry(registry, limits=limits)
    if not isinstance(reg, Registry):
        raise RegistryError("the HTTP server serves a local store (sqlite:// or postgresql://)")
    limits = limits or reg.limits
    scrub = Scrubber(reg.private_strings())
    install_log_redaction()  # uvicorn's access lines carry URLs; its tracebacks, messages
    app = FastAPI(title="loraroute registry", version="1")
    app.state.registry = reg
    app.state.allow_anonymous_read = allow_anonymous_read
    app.add_middleware(BodyLimit, limits=limits, blob_path=f"{API}/blobs/")
    app.add_middleware(RefuseQueryTokens)

    def error(status: int, kind: str, detail: str, **headers: str) -> JSONResponse:
        return JSONResponse(
            {"error": kind, "detail": scrub(detail)}, status_code=status, headers=headers or None
        )

    @app.exception_handler(RegistryError)
    async def _registry_error(request: Request, exc: RegistryError) -> JSONResponse:
        grant = getattr(request.state, "grant", None)
        if isinstance(exc, AdapterNotFoundError) and grant is not None:
            exc = exc.narrowed(grant.allows_name)  # no names outside the token's prefix
        status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)
        headers = {"www-authenticate": "Bearer"} if status == 401 else {}
        return error(status, type(exc).__name__, str(exc), **headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:
            return error(413, "LimitError", str(exc.detail))
        if exc.status_code == 404:
            return error(404, "HTTPError", f"no route {request.method} {request.url.path}")
        return error(exc.status_code, "HTTPError", str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        return error(422, "InvalidRequestError", "; ".join(parts) or "invalid request")

    def incident(request: Request, what: str, exc: BaseException) -> str:
        ident = secrets.token_hex(4)
        logger.error(
            "%s",
            redact_text(
                f"incident {ident}: {what} failed on {request.method} {request.url.path}: "
                f"{type(exc).__name__}: {exc}"
            ),
        )
        return ident

    @app.exception_handler(SQLAlchemyError)
    async def _database(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        ident = incident(request, "the database", exc)
        return error(
            503,
            "RemoteError",
            f"the registry's database is unavailable or failed (incident {ident}); retry "
            f"later, and if it persists tell the registry's operator (its log has the details)",
            **{"retry-after": "5"},
        )

    @app.exception_handler(StorageError)  # a RegistryError, but its detail is the operator's
    @app.exception_handler(OSError)
    async def _storage(request: Request, exc: OSError) -> JSONResponse:
        ident = incident(request, "blob storage", exc)
        return error(
            503,
            "RemoteError",
            f"the registry's blob storage failed (incident {ident}); retry later, and if it "
            f"persists tell the registry's operator (its log has the details)",
            **{"retry-after": "5"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        ident = incident(request, "the request", exc)
        return error(
            500,
            "RemoteError",
            f"internal error (incident {ident}); tell the registry's operator (its log has "
            f"the details)",
        )

    def may(grant: Grant, name: str) -> None:
        if grant is not None:
            grant.check_name(name)

    def whole_registry(grant: Grant, what: str) -> None:
        if grant is not None and grant.prefix is not None:
            raise ForbiddenError(
                f"token #{grant.id} is limited to adapters starting with {grant.prefix!r}; "
                f"{what} acts on the whole registry and needs a token without a prefix"
            )

    def visible(grant: Grant, versions: list[Any]) -> list[dict[str, Any]]:
        return [v.to_dict() for v in versions if grant is None or grant.allows_name(v.name)]

    @app.get(f"{API}/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.head(f"{API}/blobs/{{digest}}")
    def blob_head(digest: str, _grant: Reader) -> Response:
        size = reg.blobs.size(check_digest(digest))
        if size is None:
            return Response(status_code=404)
        return Response(status_code=200, headers={"content-length": str(size)})

    @app.get(f"{API}/blobs/{{digest}}")
    def blob_get(digest: str, _grant: Reader) -> Response:
        path = reg.blobs.local_file(check_digest(digest))
        if path is not None:
            return _BlobResponse(path, media_type="application/octet-stream")
        size = reg.blobs.size(digest)  # an object store: stream it through (the client hashes)
        if size is None:
            raise AdapterNotFoundError(f"blob {digest} is not in this registry")
        return StreamingResponse(
            reg.blobs.iter_chunks(digest),
            media_type="application/octet-stream",
            headers={"content-length": str(size)},
        )

    @app.put(f"{API}/blobs/{{digest}}", status_code=201)
    async def blob_put(digest: str, request: Request, _grant: Writer) -> dict[str, Any]:
        check_digest(digest)
        # the store's calls (an object store's requests) run off the event loop, a MiB a time
        writer = await run_in_threadpool(reg.blobs.writer, digest)
        try:
            pending = bytearray()
            async for chunk in request.stream():
                pending += chunk
                if len(pending) >= CHUNK:
                    await run_in_threadpool(writer.write, bytes(pending))
                    pending.clear()
            if pending:
                await run_in_threadpool(writer.write, bytes(pending))
            got, size = await run_in_threadpool(writer.commit)
        finally:
            await run_in_threadpool(writer.abort)
        return {"digest": got, "size": size}

    @app.post(f"{API}/adapters/{{name}}/versions", status_code=201)
    def push_manifest(name: str, body: ManifestIn, grant: Writer) -> dict[str, Any]:
        may(grant, name)
        files = [f.to_info() for f in body.files]
        meta = body.meta.model_dump(exclude_none=True)
        limits.check_files(files, repr(name))  # before the blobs are looked at
        limits.check_meta(meta, repr(name))
        v = reg.commit_version(
            name,
            files,
            None,
            meta,
            version=body.version,
            limits=limits,
            signatures=body.signatures,
        )
        return v.to_dict()

    @app.get(f"{API}/versions")
    def list_versions(
        grant: Reader,
        name: str | None = None,
        tag: str | None = None,
        domain: str | None = None,
        base: str | None = None,
    ) -> list[dict[str, Any]]:
        if name is not None:
            may(grant, name)
        return visible(grant, reg.list(name=name, tag=tag, domain=domain, base=base))

    @app.get(f"{API}/resolve")
    def resolve(ref: str, grant: Reader) -> dict[str, Any]:
        may(grant, parse_ref(ref).name)
        return reg.resolve(ref).to_dict()

    @app.get(f"{API}/serving")
    def serving(grant: Reader, alias: str | None = None) -> list[dict[str, Any]]:
        return visible(grant, reg.serving(alias))

    @app.get(f"{API}/revision")
    def revision(_grant: Reader) -> dict[str, str]:
        return {"revision": reg.revision()}

    @app.get(f"{API}/model-card")
    def model_card(ref: str, grant: Reader) -> dict[str, str | None]:
        may(grant, parse_ref(ref).name)
        return {"model_card": reg.model_card(ref, limits=limits)}

    @app.get(f"{API}/signatures")
    def signatures(ref: str, grant: Reader) -> list[dict[str, Any]]:
        may(grant, parse_ref(ref).name)
        return [sig.to_dict() for sig in reg.signatures(ref)]

    @app.post(f"{API}/signatures", status_code=201)
    def attach_signature(ref: str, body: SignatureIn, grant: Writer) -> dict[str, Any]:
        may(grant, parse_ref(ref).name)
        return reg.attach_signature(ref, body.bundle).to_dict()

    def actor(grant: Grant) -> str | None:
        if grant is None:
            return None
        return f"token #{grant.id}" + (f" ({grant.name})" if grant.name else "")

    @app.put(f"{API}/adapters/{{name}}/aliases/{{alias}}")
    def alias_set(name: str, alias: str, body: AliasIn, grant: Writer) -> dict[str, Any]:
        may(grant, name)
        # the gate's own rule is the server's: passing it by force, or with a looser
        # tolerance than the server's, takes an admin token
        looser = body.tolerance is not None and body.tolerance > reg.settings.gate_tolerance
        if (body.force or looser) and grant is not None and not grant.allows("admin"):
            what = (
                "force a promotion past the quality gate"
                if body.force
                else f"loosen the quality gate's tolerance beyond {reg.settings.gate_tolerance:g}"
            )
            raise ForbiddenError(f"token scope {grant.scope!r} may not {what}; it needs 'admin'")
        v = reg.alias_set(
            name,
            alias,
            body.version,
            force=body.force,
            tolerance=body.tolerance,
            actor=actor(grant),
        )
        return v.to_dict()

    @app.get(f"{API}/gate")
    def gate(
        name: str,
        version: str,
        grant: Reader,
        alias: str | None = None,
        tolerance: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
    ) -> dict[str, Any]:
        may(grant, name)
        return reg.gate_check(name, version, alias=alias, tolerance=tolerance).to_dict()

    @app.post(f"{API}/evals", status_code=201)
    def record_eval(ref: str, body: EvalsIn, grant: Writer) -> list[dict[str, Any]]:
        may(grant, parse_ref(ref).name)
        results = as_results([r.to_result() for r in body.results])
        return [r.to_dict() for r in reg.record_eval(ref, results, actor=actor(grant))]

    @app.get(f"{API}/evals")
    def evals(ref: str, grant: Reader) -> list[dict[str, Any]]:
        may(grant, parse_ref(ref).name)
        return [r.to_dict() for r in reg.evals(ref)]

    @app.get(f"{API}/promotions")
    def promotions(name: str, grant: Reader) -> list[dict[str, Any]]:
        may(grant, name)
        return reg.promotions(name)

    @app.delete(f"{API}/adapters/{{name}}/aliases/{{alias}}")
    def alias_remove(name: str, alias: str, grant: Writer) -> dict[str, str]:
        may(grant, name)
        reg.alias_remove(name, alias)
        return {"removed": f"{name}:{alias}"}

    @app.delete(f"{API}/versions")
    def remove(ref: str, grant: Admin, force: bool = False) -> list[dict[str, Any]]:
        may(grant, parse_ref(ref).name)
        return [v.to_dict() for v in reg.rm(ref, force=force)]

    @app.post(f"{API}/verify")
    def verify(grant: Admin, ref: str | None = None) -> dict[str, Any]:
        if ref:
            may(grant, parse_ref(ref).name)
        else:
            whole_registry(grant, "verify without a reference")
        report = reg.verify(ref or None)
        report.problems = [scrub(p) for p in report.problems]
        return report.to_dict()

    @app.post(f"{API}/gc")
    def gc(
        grant: Admin,
        dry_run: bool = False,
        grace_seconds: Annotated[float, Query(ge=0, allow_inf_nan=False)] = GC_GRACE_SECONDS,
    ) -> dict[str, Any]:
        whole_registry(grant, "gc")
        return reg.gc(dry_run=dry_run, grace_seconds=grace_seconds).to_dict()

    return app


__all__ = ["create_app"]
