"""Token lifecycle: list, revoke, expiry, adapter-name prefixes; never in query strings or
logs; ``gc`` counts the temp files it removes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from click.testing import CliRunner
from sqlmodel import Session, update

from loraroute.cli import main
from loraroute.registry import AdapterNotFoundError, AuthError, ForbiddenError, RemoteRegistry
from loraroute.registry.auth import create_token, list_tokens, parse_duration, revoke_token
from loraroute.registry.tables import TokenState
from loraroute.registry.testing import make_variant


@pytest.fixture
def server(sqlite_store, serve):
    from loraroute.registry.server import create_app

    with serve(create_app(sqlite_store)) as srv:
        yield srv


def test_parse_duration():
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration("90m") == timedelta(minutes=90)
    for bad in ("30x", "0d", "-1d", "", "1.5d", "d", "30d\n", "\u0663d"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_list_shows_metadata_never_the_secret(sqlite_store):
    t1 = create_token(sqlite_store, "read", name="dashboards")
    t2 = create_token(
        sqlite_store, "write", name="ci", prefix="legal", expires_in=timedelta(days=30)
    )
    rows = list_tokens(sqlite_store)
    assert [(r.name, r.scope, r.prefix) for r in rows] == [
        ("dashboards", "read", None),
        ("ci", "write", "legal"),
    ]
    assert rows[0].expires_at is None and rows[0].last_used_at is None
    assert rows[1].expires_at - rows[1].created_at == timedelta(days=30)
    text = repr(rows) + json.dumps([r.to_dict() for r in rows], default=str)
    assert t1 not in text and t2 not in text and "hash" not in text
    assert set(rows[0].to_dict()) == {
        "id",
        "name",
        "scope",
        "prefix",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    }


def test_revocation_is_effective_on_the_next_request(server, sqlite_store):
    token = create_token(sqlite_store, "read")
    client = RemoteRegistry(server.url, token=token)
    assert client.list() == []
    (info,) = list_tokens(sqlite_store)
    assert info.last_used_at is not None  # recorded by the request above
    revoked = revoke_token(sqlite_store, info.id)
    assert revoked.revoked_at is not None
    with pytest.raises(AuthError, match="revoked"):
        client.list()
    with pytest.raises(AuthError, match="no token with id 999"):
        revoke_token(sqlite_store, 999)


def test_expired_token_refused(server, sqlite_store):
    token = create_token(sqlite_store, "read", expires_in=timedelta(days=1))
    client = RemoteRegistry(server.url, token=token)
    assert client.list() == []
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    with Session(sqlite_store._write) as s:  # the clock moves on: a day has passed
        s.execute(update(TokenState).values(expires_at=past))
        s.commit()
    with pytest.raises(AuthError, match="expired"):
        client.list()
    with pytest.raises(ValueError, match="positive"):
        create_token(sqlite_store, "read", expires_in=timedelta(0))


def test_prefix_scoped_tokens(server, sqlite_store, tiny_adapter, tmp_path):
    sqlite_store.push(tiny_adapter, "med")
    sqlite_store.alias_set("med", "prod", 1)
    legal = RemoteRegistry(server.url, token=create_token(sqlite_store, "write", prefix="legal"))
    assert legal.push(tiny_adapter, "legal-contracts").ref == "legal-contracts@1"
    legal.alias_set("legal-contracts", "prod", 1)
    with pytest.raises(ForbiddenError, match="'legal'.*'med'"):
        legal.push(make_variant(tiny_adapter, tmp_path / "m", "m"), "med")
    with pytest.raises(ForbiddenError, match="med"):
        legal.resolve("med")
    with pytest.raises(ForbiddenError, match="med"):
        legal.alias_set("med", "prod", 1)
    assert [v.name for v in legal.list()] == ["legal-contracts"]  # others are not listed
    assert [v.name for v in legal.serving()] == ["legal-contracts"]
    # a miss suggests near names, but only those the token may see
    sqlite_store.push(tiny_adapter, "megal-contracts")
    with pytest.raises(AdapterNotFoundError, match="'legal-contracts' or 'megal-contracts'"):
        sqlite_store.resolve("legal-contractz")  # unrestricted: both
    with pytest.raises(AdapterNotFoundError, match="did you mean 'legal-contracts'") as miss:
        legal.resolve("legal-contractz")
    assert "megal" not in str(miss.value)
    admin = RemoteRegistry(server.url, token=create_token(sqlite_store, "admin", prefix="legal"))
    with pytest.raises(ForbiddenError, match="med"):
        admin.rm("med")
    with pytest.raises(ForbiddenError, match="whole registry"):
        admin.gc()
    assert [v.ref for v in admin.rm("legal-contracts", force=True)] == ["legal-contracts@1"]
    with pytest.raises(ValueError, match="prefix"):
        create_token(sqlite_store, "read", prefix="../x")


@pytest.mark.parametrize(
    "query",
    [
        {"token": "{t}"},
        {"access_token": "{t}"},
        {"api_key": "{t}"},
        {"name": "{t}"},  # a token pasted into any parameter
    ],
)
def test_tokens_in_query_strings_refused(server, sqlite_store, query):
    token = create_token(sqlite_store, "read")
    params = {k: v.format(t=token) for k, v in query.items()}
    for headers in ({}, {"authorization": f"Bearer {token}"}):
        r = httpx.get(server.url + "/v1/versions", params=params, headers=headers)
        assert r.status_code == 400, r.text
        assert "Authorization: Bearer" in r.json()["detail"] and token not in r.text


def test_tokens_never_reach_the_access_log(sqlite_store, tmp_path):
    token = create_token(sqlite_store, "read")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loraroute.cli",
                "registry",
                "serve",
                "--port",
                str(port),
                "--registry",
                sqlite_store.url,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/v1/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert httpx.get(url + "/v1/versions", params={"token": token}).status_code == 400
        assert httpx.get(url + f"/v1/versions?access_token={token}&x=1").status_code == 400
        r = httpx.get(url + "/v1/versions", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    text = log.read_text()
    assert "GET /v1/versions" in text  # the access log is on
    assert token not in text and token[4:20] not in text


def test_cli_token_lifecycle(tmp_path, lr_home):
    url = f"sqlite:///{tmp_path / 'r' / 'registry.db'}"
    runner = CliRunner()

    def run(*args, ok=True):
        r = runner.invoke(main, ["registry", "token", *args, "--registry", url])
        assert (r.exit_code == 0) == ok, r.output
        assert "Traceback" not in r.output
        return r.output

    made = json.loads(
        run(
            "create",
            "--scope",
            "write",
            "--prefix",
            "legal",
            "--expires",
            "30d",
            "--name",
            "ci",
            "--json",
        )
    )
    assert made["token"].startswith("lrt_") and made["prefix"] == "legal"
    rows = json.loads(run("list", "--json"))
    assert rows[0]["id"] == made["id"] and rows[0]["expires_at"] and "token" not in rows[0]
    assert made["token"] not in run("list")
    assert "ci" in run("list") and "legal" in run("list")
    assert "revoked token" in run("revoke", str(made["id"]))
    assert json.loads(run("list", "--json"))[0]["revoked_at"]
    assert "no token with id 42" in run("revoke", "42", ok=False)
    assert "30x" in run("create", "--scope", "read", "--expires", "30x", ok=False)


def test_gc_reports_temp_files(sqlite_store):
    tmp = sqlite_store.blobs.tmp_dir
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "blob-left-by-a-killed-push").write_bytes(b"x" * 1234)
    os.utime(tmp / "blob-left-by-a-killed-push", (1000, 1000))
    dry = sqlite_store.gc(dry_run=True, grace_seconds=0)
    assert (dry.tmp_files, dry.tmp_bytes) == (1, 1234) and any(tmp.iterdir())
    report = sqlite_store.gc(grace_seconds=0)
    assert (report.tmp_files, report.tmp_bytes) == (1, 1234) and not any(tmp.iterdir())
    (tmp / "again").write_bytes(b"y" * 10)
    os.utime(tmp / "again", (1000, 1000))
    r = CliRunner().invoke(main, ["gc", "--grace", "0", "--registry", sqlite_store.url])
    assert "1 temp file(s), 10 bytes" in r.output
