"""Every HTTP route of the registry against every kind of caller, from one table.

``ROUTES`` names each route of the app with the least scope it needs and whether it acts on
one adapter name (``named``: a token limited to another prefix is refused) or on the whole
registry (``whole``: any prefix-limited token is refused). The expected answer of each
(route, caller) pair follows from that row alone: 401 without a token, 403 below the scope or
outside the prefix, else the route's own success status. A route added to the server without
a row here fails ``test_the_table_covers_every_route``.

Token administration (create, list, revoke) has no HTTP route: it is the CLI's, on the store.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from loraroute.registry.auth import SCOPES, create_token
from loraroute.registry.server import create_app

NAME = "legal"
_fresh = itertools.count(1)


@dataclass(frozen=True)
class Call:
    """One request: ``prepare(reg)`` readies the store and returns the method's keyword args."""

    path: str  # the concrete path, formatted from the route's template
    prepare: Callable[[Any], dict[str, Any]] = lambda reg: {}


@dataclass(frozen=True)
class Row:
    scope: str | None  # None: public
    ok: int
    call: Call
    named: bool = False  # acts on NAME: a token limited to another prefix is refused
    whole: bool = False  # acts on the whole registry: any prefix-limited token is refused


def _blob_digest(reg) -> str:
    return reg.resolve(f"{NAME}@1").files[0].digest


def _new_blob(reg) -> tuple[str, bytes]:
    data = f"blob {next(_fresh)}\n".encode()
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _put_blob(reg) -> dict[str, Any]:
    digest, data = _new_blob(reg)
    return {"url": f"/v1/blobs/{digest}", "content": data}


def _manifest(reg) -> dict[str, Any]:
    """A new version of NAME: legal@1's files plus a README blob uploaded just now."""
    digest, data = _new_blob(reg)
    writer = reg.blobs.writer(digest)
    writer.write(data)
    writer.commit()
    files = [
        {"path": f.path, "digest": f.digest, "size": f.size}
        for f in reg.resolve(f"{NAME}@1").files
        if f.path != "README.md"
    ] + [{"path": "README.md", "digest": digest, "size": len(data)}]
    return {"json": {"files": files}}


def _alias_to_remove(reg) -> dict[str, Any]:
    reg.alias_set(NAME, "canary", 1)
    return {}


def _version_to_remove(reg) -> dict[str, Any]:
    body = _manifest(reg)["json"]
    from loraroute.registry.protocol import ManifestIn

    files = [f.to_info() for f in ManifestIn(**body).files]
    v = reg.commit_version(NAME, files, None, {})
    return {"params": {"ref": v.ref}}


REF = {"params": {"ref": f"{NAME}@1"}}
EVAL = {
    **REF,
    "json": {
        "results": [
            {
                "dataset": "dev",
                "dataset_digest": "sha256:" + "0" * 64,
                "metric": "acc",
                "value": 0.5,
            }
        ]
    },
}

#: (method, route template) -> what it needs and how to call it.
ROUTES: dict[tuple[str, str], Row] = {
    ("GET", "/v1/health"): Row(None, 200, Call("/v1/health")),
    ("HEAD", "/v1/blobs/{digest}"): Row("read", 200, Call("blob", lambda reg: {})),
    ("GET", "/v1/blobs/{digest}"): Row("read", 200, Call("blob")),
    ("PUT", "/v1/blobs/{digest}"): Row("write", 201, Call("", _put_blob)),
    ("POST", "/v1/adapters/{name}/versions"): Row(
        "write", 201, Call(f"/v1/adapters/{NAME}/versions", _manifest), named=True
    ),
    ("GET", "/v1/versions"): Row("read", 200, Call("/v1/versions")),
    ("GET", "/v1/resolve"): Row("read", 200, Call("/v1/resolve", lambda reg: REF), named=True),
    ("GET", "/v1/serving"): Row("read", 200, Call("/v1/serving")),
    ("GET", "/v1/revision"): Row("read", 200, Call("/v1/revision")),
    ("GET", "/v1/model-card"): Row(
        "read", 200, Call("/v1/model-card", lambda reg: REF), named=True
    ),
    ("GET", "/v1/signatures"): Row(
        "read", 200, Call("/v1/signatures", lambda reg: REF), named=True
    ),
    # a well-formed body whose bundle is not a signature: past the scope check, refused as 422
    ("POST", "/v1/signatures"): Row(
        "write",
        422,
        Call("/v1/signatures", lambda reg: {**REF, "json": {"bundle": "{}"}}),
        named=True,
    ),
    ("PUT", "/v1/adapters/{name}/aliases/{alias}"): Row(
        "write",
        200,
        Call(f"/v1/adapters/{NAME}/aliases/prod", lambda reg: {"json": {"version": 1}}),
        named=True,
    ),
    ("DELETE", "/v1/adapters/{name}/aliases/{alias}"): Row(
        "write", 200, Call(f"/v1/adapters/{NAME}/aliases/canary", _alias_to_remove), named=True
    ),
    ("DELETE", "/v1/versions"): Row(
        "admin", 200, Call("/v1/versions", _version_to_remove), named=True
    ),
    ("POST", "/v1/evals"): Row("write", 201, Call("/v1/evals", lambda reg: EVAL), named=True),
    ("GET", "/v1/evals"): Row("read", 200, Call("/v1/evals", lambda reg: REF), named=True),
    ("GET", "/v1/gate"): Row(
        "read",
        200,
        Call("/v1/gate", lambda reg: {"params": {"name": NAME, "version": "1"}}),
        named=True,
    ),
    ("GET", "/v1/promotions"): Row(
        "read", 200, Call("/v1/promotions", lambda reg: {"params": {"name": NAME}}), named=True
    ),
    ("POST", "/v1/verify"): Row("admin", 200, Call("/v1/verify", lambda reg: REF), named=True),
    # verify without a reference checks every adapter: a whole-registry action
    ("POST", "/v1/verify?all"): Row("admin", 200, Call("/v1/verify"), whole=True),
    ("POST", "/v1/gc"): Row(
        "admin", 200, Call("/v1/gc", lambda reg: {"params": {"dry_run": True}}), whole=True
    ),
}

#: callers: (scope or None for no token, adapter-name prefix of the token)
CALLERS = {
    "anonymous": (None, None),
    **{s: (s, None) for s in SCOPES},
    **{f"{s}, prefix other": (s, "other") for s in SCOPES},
}


def expected(row: Row, caller: str, anonymous_read: bool) -> int:
    scope, prefix = CALLERS[caller]
    if row.scope is None:
        return row.ok
    if scope is None:
        return row.ok if anonymous_read and row.scope == "read" else 401
    if SCOPES.index(scope) < SCOPES.index(row.scope):
        return 403
    if prefix is not None and (row.named or row.whole):
        return 403
    return row.ok


def test_the_table_covers_every_route(sqlite_store):
    """Every (method, path) the app serves has a row, and every row is a route of the app."""
    app = create_app(sqlite_store)
    served = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    table = {(m, p.split("?")[0]) for m, p in ROUTES}
    assert served == table, f"untested routes: {served - table}; stale rows: {table - served}"


@pytest.fixture
def setup(sqlite_store, serve, tiny_adapter):
    sqlite_store.push(tiny_adapter, NAME)
    tokens = {
        caller: create_token(sqlite_store, scope, prefix=prefix)
        for caller, (scope, prefix) in CALLERS.items()
        if scope is not None
    }
    yield sqlite_store, serve, tokens


@pytest.mark.parametrize("anonymous_read", [False, True])
def test_each_route_answers_each_caller_as_the_table_says(setup, anonymous_read):
    reg, serve, tokens = setup
    got: dict[tuple[str, str, str], int] = {}
    want: dict[tuple[str, str, str], int] = {}
    with (
        serve(create_app(reg, allow_anonymous_read=anonymous_read)) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
    ):
        for (method, template), row in ROUTES.items():
            for caller in CALLERS:
                kwargs = row.call.prepare(reg)
                url = kwargs.pop("url", row.call.path)
                if url == "blob":
                    url = f"/v1/blobs/{_blob_digest(reg)}"
                headers = {"authorization": f"Bearer {tokens[caller]}"} if caller in tokens else {}
                res = client.request(method, url, headers=headers, **kwargs)
                got[method, template, caller] = res.status_code
                want[method, template, caller] = expected(row, caller, anonymous_read)
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not wrong, "(route, caller): (got, expected): " + repr(wrong)
