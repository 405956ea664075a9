"""The quality gate through the HTTP registry (a real uvicorn server on loopback, the real
client), on SQLite and PostgreSQL: the server enforces the same rule as the local registry,
forcing takes an admin token, and every malformed eval result is a 4xx with nothing stored."""

from __future__ import annotations

import httpx
import pytest

from loraroute.registry import (
    ForbiddenError,
    InvalidRequestError,
    QualityGateError,
    RemoteRegistry,
)
from loraroute.registry.auth import create_token
from loraroute.registry.server import create_app
from loraroute.registry.testing import make_variant

from .test_quality_gate import DEV, acc


@pytest.fixture
def server(store, serve, tiny_adapter, tmp_path):
    """legal@1 (0.80, holds prod), legal@2 (0.70: a planted regression), legal@3 (0.85)."""
    for tag in ("1", "2", "3"):
        store.push(make_variant(tiny_adapter, tmp_path / f"v{tag}", tag), "legal")
    store.alias_set("legal", "prod", 1)
    tokens = {
        scope: create_token(store, scope, name=f"{scope}-bot")
        for scope in ("read", "write", "admin")
    }
    with serve(create_app(store)) as srv:
        srv.clients = {s: RemoteRegistry(srv.url, token=t) for s, t in tokens.items()}
        srv.tokens = tokens
        yield srv
        for c in srv.clients.values():
            c.close()


def test_the_server_refuses_a_regression_and_accepts_an_improvement(server, store):
    w, admin, r = (server.clients[s] for s in ("write", "admin", "read"))
    for number, value in ((1, 0.80), (2, 0.70), (3, 0.85)):
        (stored,) = w.record_eval(f"legal@{number}", [acc(value)], source="adapters eval")
        assert stored.ref == f"legal@{number}" and stored.actor == "token #2 (write-bot)"
    assert [x.value for x in r.evals("legal")] == [0.80, 0.70, 0.85]
    assert r.evals("legal:prod")[0].dataset_digest == DEV

    report = r.gate_check("legal", 2)
    assert report.refused and report.verdict == "refused" and report.holder == 1
    with pytest.raises(QualityGateError, match=r"accuracy on legalbench-dev .* a drop of 0\.1"):
        w.alias_set("legal", "prod", 2)
    assert store.resolve("legal:prod").ref == "legal@1"
    assert r.gate_check("legal", "3").verdict == "improved"
    assert w.alias_set("legal", "prod", 3).ref == "legal@3"

    # forcing, or loosening the tolerance past the server's, takes an admin token
    with pytest.raises(ForbiddenError, match="force a promotion.*'admin'"):
        w.alias_set("legal", "prod", 2, force=True)
    with pytest.raises(ForbiddenError, match="loosen the quality gate's tolerance"):
        w.alias_set("legal", "prod", 2, tolerance=0.5)
    with pytest.raises(QualityGateError):  # a tighter tolerance is anyone's to ask
        w.alias_set("legal", "prod", 2, tolerance=0.001)
    assert admin.alias_set("legal", "prod", 2, force=True).ref == "legal@2"
    moves = r.promotions("legal")
    assert [(m["from"], m["to"], m["verdict"], m["forced"]) for m in moves] == [
        (None, "legal@1", "no-holder", False),
        ("legal@1", "legal@3", "improved", False),
        ("legal@3", "legal@2", "forced", True),
    ]
    assert moves[-1]["actor"] == "token #3 (admin-bot)"
    assert store.promotions("legal") == moves


def test_the_remote_gate_uses_the_servers_settings(server, store):
    w = server.clients["write"]
    w.record_eval("legal@1", acc(0.80))
    report = w.gate_check("legal", 2)
    assert report.verdict == "unchecked" and not report.refused
    assert "share no eval result" in report.warnings[0]
    assert w.alias_set("legal", "prod", 2).ref == "legal@2"


BAD_RESULTS = [
    {"value": "NaN"},
    {"value": True},
    {"value": "0.8"},
    {"value": None},
    {"dataset_digest": "sha256:xyz"},
    {"metric": "a b"},
    {"dataset": "x\x00y"},
    {"dataset": "d" * 257},
    {"ci_low": 0.9, "ci_high": 0.1},
    {"ci_low": 0.1, "ci_high": None},
    {"n": 0},
    {"n": -3},
    {"n": 2.5},
    {"higher_is_better": "yes"},
    {"details": [1, 2]},
    {"source": "a\nb"},
    {"extra": 1},
]


def test_malformed_results_are_4xx_and_nothing_is_stored(server, store):
    auth = {"authorization": f"Bearer {server.tokens['write']}"}
    for bad in BAD_RESULTS:
        body = {"results": [acc(0.8), {**acc(0.8), **bad}]}
        got = httpx.post(
            f"{server.url}/v1/evals", params={"ref": "legal@1"}, json=body, headers=auth
        )
        assert 400 <= got.status_code < 500, (bad, got.text)
        assert got.json()["error"] == "InvalidRequestError", bad
    # numbers JSON cannot hold as floats (1e400 is infinite), sent as raw text
    for number in (b"1e400", b"-1e400", b"NaN", b"Infinity"):
        raw = (
            b'{"results": [{"dataset": "d", "dataset_digest": "%s", "metric": "m", '
            b'"value": %s}]}' % (DEV.encode(), number)
        )
        got = httpx.post(
            f"{server.url}/v1/evals",
            params={"ref": "legal@1"},
            content=raw,
            headers={**auth, "content-type": "application/json"},
        )
        assert 400 <= got.status_code < 500, (number, got.text)
    assert store.evals("legal") == []


def test_bad_requests_to_the_gate_endpoints(server, store):
    auth = {"authorization": f"Bearer {server.tokens['admin']}"}

    def call(method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, f"{server.url}/v1{path}", headers=auth, **kw)

    assert call("GET", "/gate", params={"name": "legal", "version": "9"}).status_code == 404
    assert (
        call("GET", "/gate", params={"name": "legal", "version": "1", "alias": "../x"}).status_code
        == 400
    )
    for tol in ("-1", "nan", "inf", "x"):
        got = call("GET", "/gate", params={"name": "legal", "version": "2", "tolerance": tol})
        assert got.status_code == 422, (tol, got.text)
    for body in (
        {"version": 2, "force": "yes"},
        {"version": 2, "tolerance": -0.1},
        {"version": 2, "tolerance": "0.1"},
    ):
        got = call("PUT", "/adapters/legal/aliases/prod", json=body)
        assert got.status_code == 422, (body, got.text)
    assert (
        call("POST", "/evals", params={"ref": "legal@1"}, json={"results": []}).status_code == 422
    )
    assert (
        call("POST", "/evals", params={"ref": "nope@1"}, json={"results": [acc(0.5)]}).status_code
        == 404
    )
    assert call("GET", "/evals", params={"ref": "legal@@"}).status_code == 400
    assert call("GET", "/promotions", params={"name": "../etc"}).status_code == 400
    read = {"authorization": f"Bearer {server.tokens['read']}"}
    got = httpx.post(
        f"{server.url}/v1/evals",
        params={"ref": "legal@1"},
        json={"results": [acc(0.5)]},
        headers=read,
    )
    assert got.status_code == 403
    with pytest.raises(InvalidRequestError, match="finite"):  # refused by the client first
        server.clients["write"].record_eval("legal@1", acc(float("nan")))
    assert store.evals("legal") == []


def test_the_command_line_against_the_server(server, tmp_path):
    from click.testing import CliRunner

    from loraroute.cli import main

    data = tmp_path / "dev.jsonl"
    data.write_text("x\n")

    def run(scope: str, *args: str):
        env = {"LORAROUTE_REGISTRY": server.url, "LORAROUTE_REGISTRY_TOKEN": server.tokens[scope]}
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    common = ("--data", str(data), "--metric", "accuracy")
    assert run("write", "evals", "add", "legal@1", *common, "--value", "0.8").exit_code == 0
    assert run("write", "evals", "add", "legal@2", *common, "--value", "0.6").exit_code == 0
    out = run("write", "alias", "set", "legal", "prod", "2")
    assert out.exit_code == 1 and "a drop of 0.2 " in out.output
    out = run("write", "alias", "set", "legal", "prod", "2", "--force")
    assert out.exit_code == 1 and "needs 'admin'" in out.output
    out = run("admin", "alias", "set", "legal", "prod", "2", "--force")
    assert out.exit_code == 0 and "legal:prod -> legal@2 (live)" in out.output
    out = run("read", "show", "legal@2")
    assert out.exit_code == 0 and "eval results of legal@2" in out.output
    assert "token #3 (admin-bot)" in out.output
