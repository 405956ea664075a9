"""The HTTP registry: a FastAPI app over a local :class:`Registry` (same SQL, same blobs).

Blobs go first (``PUT /v1/blobs/{digest}``, streamed and verified against the digest), the
manifest last (``POST /v1/adapters/{name}/versions``), as in the OCI distribution spec; so a
version is visible only once all its bytes are in.

Example::

    $ adapters registry token create --scope write --registry sqlite:///srv/registry.db
    $ adapters registry serve --registry sqlite:///srv/registry.db --port 8765
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from .auth import allows, token_scope
from .blobs import check_digest
from .errors import (
    AdapterNotFoundError,
    AuthError,
    IntegrityError,
    InvalidAdapterError,
    InvalidReferenceError,
    RegistryError,
    SignatureError,
    VersionConflictError,
)
from .local import Registry
from .signing import MAX_SIGNATURE_BYTES, MAX_SIGNATURES_PER_VERSION
from .tables import FileInfo

logger = logging.getLogger(__name__)

API = "/v1"
_STATUS = {
    AdapterNotFoundError: 404,
    InvalidReferenceError: 400,
    InvalidAdapterError: 422,
    VersionConflictError: 409,
    IntegrityError: 422,
    SignatureError: 422,
    AuthError: 401,
}


class _BlobResponse(FileResponse):
    chunk_size = 1 << 20  # starlette's 64 KiB default costs ~2x throughput on large blobs


class PushMeta(BaseModel):
    """Metadata a client may send with a manifest (the keywords of ``Registry.push``)."""

    model_config = ConfigDict(extra="forbid")
    domain: str | None = None
    description: str | None = None
    routing_examples: list[str] | None = None
    tags: dict[str, str] | None = None
    metrics: dict[str, float] | None = None
    parent: str | None = None
    data_digest: str | None = None
    training_config: dict[str, Any] | None = None
    author: str | None = None
    license: str | None = None
    base_model_id: str | None = None
    base_fingerprint: str | None = None


class ManifestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    files: list[FileInfo]
    meta: PushMeta = PushMeta()
    version: int | None = None
    # model-signing bundles (JSON text) over exactly these files, stored with the version
    signatures: list[str] = Field(default_factory=list, max_length=MAX_SIGNATURES_PER_VERSION)


class SignatureIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str = Field(max_length=MAX_SIGNATURE_BYTES)


class AliasIn(BaseModel):
    version: int | str


def create_app(
    registry: Registry | str | None = None, *, allow_anonymous_read: bool = False
) -> FastAPI:
    """A FastAPI app serving ``registry`` (a local Registry or its URL)."""
    from . import open_registry

    reg = registry if isinstance(registry, Registry) else open_registry(registry)
    if not isinstance(reg, Registry):
        raise RegistryError("the HTTP server serves a local store (sqlite:// or postgresql://)")
    app = FastAPI(title="loraroute registry", version="1")
    app.state.registry = reg

    @app.exception_handler(RegistryError)
    async def _registry_error(_request: Request, exc: RegistryError) -> JSONResponse:
        status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 500)
        if isinstance(exc, AuthError) and "scope" in str(exc):
            status = 403
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=status)

    def need(scope: str):
        def check(authorization: str | None = Header(default=None)) -> str | None:
            if authorization is None:
                if scope == "read" and allow_anonymous_read:
                    return None
                raise AuthError(
                    f"this registry needs a bearer token with scope {scope!r}; create one with "
                    f"`adapters registry token create --scope {scope}` and pass --token"
                )
            kind, _, token = authorization.partition(" ")
            have = token_scope(reg, token.strip()) if kind.lower() == "bearer" else None
            if have is None:
                raise AuthError("unknown or malformed bearer token")
            if not allows(have, scope):
                raise AuthError(
                    f"token scope {have!r} does not allow this; it needs scope {scope!r}"
                )
            return have

        return Depends(check)

    def dump(v: Any) -> dict[str, Any]:
        return v.to_dict()

    @app.get(f"{API}/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.head(f"{API}/blobs/{{digest}}", dependencies=[need("read")])
    def blob_head(digest: str) -> Response:
        size = reg.blobs.size(check_digest(digest))
        if size is None:
            return Response(status_code=404)
        return Response(status_code=200, headers={"content-length": str(size)})

    @app.get(f"{API}/blobs/{{digest}}", dependencies=[need("read")])
    def blob_get(digest: str) -> Response:
        path = reg.blobs.path(check_digest(digest))
        if not path.is_file():
            raise AdapterNotFoundError(f"blob {digest} is not in this registry")
        return _BlobResponse(path, media_type="application/octet-stream")

    @app.put(f"{API}/blobs/{{digest}}", status_code=201, dependencies=[need("write")])
    async def blob_put(digest: str, request: Request) -> dict[str, Any]:
        check_digest(digest)
        writer = reg.blobs.writer(digest)
        try:
            async for chunk in request.stream():
                writer.write(chunk)
            got, size = await run_in_threadpool(writer.commit)
        finally:
            writer.abort()
        return {"digest": got, "size": size}

    @app.post(f"{API}/adapters/{{name}}/versions", status_code=201, dependencies=[need("write")])
    def push_manifest(name: str, body: ManifestIn) -> dict[str, Any]:
        meta = body.meta.model_dump(exclude_none=True)
        v = reg.commit_version(
            name, body.files, None, meta, version=body.version, signatures=body.signatures
        )
        return dump(v)

    @app.get(f"{API}/versions", dependencies=[need("read")])
    def list_versions(
        name: str | None = None,
        tag: str | None = None,
        domain: str | None = None,
        base: str | None = None,
    ) -> list[dict[str, Any]]:
        return [dump(v) for v in reg.list(name=name, tag=tag, domain=domain, base=base)]

    @app.get(f"{API}/resolve", dependencies=[need("read")])
    def resolve(ref: str) -> dict[str, Any]:
        return dump(reg.resolve(ref))

    @app.get(f"{API}/serving", dependencies=[need("read")])
    def serving(alias: str = "prod") -> list[dict[str, Any]]:
        return [dump(v) for v in reg.serving(alias)]

    @app.get(f"{API}/revision", dependencies=[need("read")])
    def revision() -> dict[str, str]:
        return {"revision": reg.revision()}

    @app.get(f"{API}/model-card", dependencies=[need("read")])
    def model_card(ref: str) -> dict[str, str | None]:
        return {"model_card": reg.model_card(ref)}

    @app.get(f"{API}/signatures", dependencies=[need("read")])
    def signatures(ref: str) -> list[dict[str, Any]]:
        return [sig.to_dict() for sig in reg.signatures(ref)]

    @app.post(f"{API}/signatures", status_code=201, dependencies=[need("write")])
    def attach_signature(ref: str, body: SignatureIn) -> dict[str, Any]:
        return reg.attach_signature(ref, body.bundle).to_dict()

    @app.put(f"{API}/adapters/{{name}}/aliases/{{alias}}", dependencies=[need("write")])
    def alias_set(name: str, alias: str, body: AliasIn) -> dict[str, Any]:
        return dump(reg.alias_set(name, alias, body.version))

    @app.delete(f"{API}/adapters/{{name}}/aliases/{{alias}}", dependencies=[need("write")])
    def alias_remove(name: str, alias: str) -> dict[str, str]:
        reg.alias_remove(name, alias)
        return {"removed": f"{name}:{alias}"}

    @app.delete(f"{API}/versions", dependencies=[need("admin")])
    def remove(ref: str, force: bool = False) -> list[dict[str, Any]]:
        return [dump(v) for v in reg.rm(ref, force=force)]

    @app.post(f"{API}/verify", dependencies=[need("admin")])
    def verify(ref: str | None = None) -> dict[str, Any]:
        return reg.verify(ref).to_dict()

    @app.post(f"{API}/gc", dependencies=[need("admin")])
    def gc(dry_run: bool = False, grace_seconds: float = 3600.0) -> dict[str, Any]:
        return reg.gc(dry_run=dry_run, grace_seconds=grace_seconds).to_dict()

    return app


__all__ = ["create_app"]
