"""Secrets never leave the process: DB passwords are redacted in every message, log and
response; registry-server errors carry neither filesystem paths nor DB URLs."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from loraroute.cli import main
from loraroute.redact import RedactingFilter, redact_text, redact_url
from loraroute.registry import RegistryError, open_registry
from loraroute.registry.auth import create_token

PG_PASSWORD = "hunter2-do-not-leak"  # conftest's pg_url carries it (see pg_password)


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("postgresql+psycopg2://u:p%40ss@h:5432/db", "postgresql+psycopg2://u:***@h:5432/db"),
        (
            "postgresql://u@h/db?password=pw&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        ("http://user:tok@host:8765/v1", "http://user:***@host:8765/v1"),
        ("sqlite:////srv/registry.db", "sqlite:////srv/registry.db"),
        ("postgresql://h/db", "postgresql://h/db"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_redact_text_finds_secrets_inside_messages():
    text = (
        "cannot open 'postgresql://admin:s3cr@t@db.internal:5432/reg': boom; "
        "retry with postgresql://u:pw2@h/db, token=lrt_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG "
        "header Authorization: Bearer lrt_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz "
        "GET /v1/versions?name=x&access_token=abc123 HTTP/1.1"
    )
    out = redact_text(text)
    for secret in ("s3cr@t", "pw2", "lrt_abc", "lrt_zzz", "abc123"):
        assert secret not in out, out
    assert "postgresql://admin:***@db.internal:5432/reg" in out
    assert "name=x" in out and "GET /v1/versions" in out


def test_redact_text_finds_s3_credentials():
    text = (
        "GET https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAEXAMPLE%2F20260101&X-Amz-Signature=deadbeefcafe"
        "&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE failed; config aws_secret_access_key=wJalrEX "
        "aws_session_token=IQoJbEX"
    )
    out = redact_text(text)
    for secret in ("AKIAEXAMPLE", "deadbeefcafe", "FwoGZXIvYXdzEXAMPLE", "wJalrEX", "IQoJbEX"):
        assert secret not in out, out
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in out


def test_s3_settings_never_show_their_secrets():
    from loraroute.settings import get_settings

    s = get_settings(
        s3_access_key_id="AKIA-SHOWN-NOWHERE", s3_secret_access_key="wJalr-shown-nowhere"
    )
    text = repr(s) + str(s) + s.model_dump_json()
    assert "AKIA-SHOWN-NOWHERE" not in text and "wJalr-shown-nowhere" not in text


def test_redacting_filter_rewrites_records_and_tracebacks():
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "db %s failed", ("postgresql://u:pw@h/db",), None
    )
    try:
        raise RuntimeError("postgresql://u:pw@h/db is down")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "pw@" not in text and "u:***@h/db" in text


def test_local_errors_redact_the_password(pg_url, tmp_path, lr_home):
    reg = open_registry(pg_url, blob_dir=tmp_path / "blobs")
    with pytest.raises(RegistryError) as info:
        reg.resolve("nope")
    assert PG_PASSWORD not in str(info.value) and PG_PASSWORD not in repr(reg)
    bad = make_url(pg_url).set(drivername="postgresql+nosuchdriver")
    with pytest.raises(RegistryError) as info:
        open_registry(bad.render_as_string(hide_password=False))
    assert PG_PASSWORD not in str(info.value)
    assert "***" in str(info.value)


def test_cli_errors_and_doctor_redact_the_password(pg_url, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["show", "nope", "--registry", pg_url])
    assert r.exit_code == 1 and "no adapter named 'nope'" in r.output
    assert PG_PASSWORD not in r.output and "Traceback" not in r.output
    unreachable = make_url(pg_url).set(port=1).render_as_string(hide_password=False)
    r = runner.invoke(main, ["ls", "--registry", unreachable])
    assert r.exit_code == 1 and PG_PASSWORD not in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["doctor", "--json"], env={"LORAROUTE_REGISTRY": pg_url})
    assert r.exit_code == 0, r.output
    assert PG_PASSWORD not in r.output
    assert json.loads(r.output)["registry"] == make_url(pg_url).render_as_string()


def _no_secrets(text: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in text, f"{s!r} leaked in {text[:500]!r}"


def test_server_errors_carry_no_url_or_path(store, tmp_path, tiny_adapter, serve, caplog):
    from loraroute.registry.server import create_app

    store.push(tiny_adapter, "legal")
    token = create_token(store, "admin")
    secrets = (PG_PASSWORD, str(tmp_path), "postgresql://", "sqlite:")
    with (
        serve(create_app(store)) as srv,
        httpx.Client(
            base_url=srv.url + "/v1", headers={"authorization": f"Bearer {token}"}, timeout=10
        ) as c,
    ):
        answers = [
            c.get("/resolve", params={"ref": "nope"}),
            c.get("/resolve", params={"ref": "legal@9"}),
            c.get("/model-card", params={"ref": "nope:prod"}),
            c.delete("/versions", params={"ref": "nope"}),
            c.get(f"/blobs/sha256:{'0' * 64}"),
            c.post("/verify"),
        ]
        for r in answers:
            _no_secrets(r.text, *secrets)
        assert [r.status_code for r in answers[:5]] == [404] * 5


def test_database_failure_is_a_generic_503(pg_url, tmp_path, lr_home, serve, caplog):
    """The store's database disappears under a running server: clients get a 503 that says
    what to do; the detail goes to the server log only, redacted."""
    from loraroute.registry.server import create_app
    from loraroute.registry.testing import DEFAULT_ADMIN_URL

    reg = open_registry(pg_url, blob_dir=tmp_path / "blobs")
    token = create_token(reg, "admin")
    with serve(create_app(reg)) as srv:
        headers = {"authorization": f"Bearer {token}"}
        assert httpx.get(srv.url + "/v1/versions", headers=headers).status_code == 200
        import psycopg2

        conn = psycopg2.connect(DEFAULT_ADMIN_URL)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE "{make_url(pg_url).database}" WITH (FORCE)')
        conn.close()
        with caplog.at_level(logging.ERROR, logger="loraroute.registry"):
            r = httpx.get(srv.url + "/v1/versions", headers=headers)
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "RemoteError" and "retry" in r.json()["detail"]
    _no_secrets(r.text, PG_PASSWORD, make_url(pg_url).database, "postgresql", "psycopg")
    assert "database" in caplog.text.lower() and PG_PASSWORD not in caplog.text
    reg.close()


def test_sqlite_failure_is_a_generic_503_without_paths(tmp_path, lr_home, serve):
    from loraroute.registry.server import create_app

    db = tmp_path / "srv" / "registry.db"
    reg = open_registry(f"sqlite:///{db}")
    token = create_token(reg, "read")
    with serve(create_app(reg)) as srv:
        headers = {"authorization": f"Bearer {token}"}
        reg.close()
        for p in db.parent.glob("registry.db*"):
            p.write_bytes(b"this is not a database" * 100)
        r = httpx.get(srv.url + "/v1/versions", headers=headers)
    assert r.status_code == 503, r.text
    _no_secrets(r.text, str(tmp_path), "sqlite")


def test_fixture_password_is_the_one_checked(pg_password):
    assert pg_password == PG_PASSWORD


def test_scrubber_hides_the_registry_store(sqlite_store, tmp_path):
    from loraroute.redact import Scrubber

    scrub = Scrubber(sqlite_store.private_strings())
    text = scrub(
        f"no adapter named 'x' in the registry ({sqlite_store.display_url}); blob at "
        f"{sqlite_store.blobs.root}/sha256/ab; postgresql://u:pw@db/x"
    )
    assert str(tmp_path) not in text and "sqlite" not in text and "pw@" not in text
    assert "the server's registry" in text and "<store>/sha256/ab" in text
