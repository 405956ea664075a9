"""Schema migrations: a registry made by the release before migrations (7a1a624) upgrades in
place on SQLite and PostgreSQL with every version, alias, metric and token intact; the
migrated schema is the one ``tables.py`` declares; the revisions need no alembic.ini.

``fixtures/registry_7a1a624.json`` holds what that release's own code wrote (see
``fixtures/make_registry_7a1a624.py``): its DDL on each database, its rows, blobs and answers.
"""

from __future__ import annotations

import base64
import importlib
import json
import subprocess
import sys
import zlib
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from sqlalchemy import DateTime, MetaData, create_engine, inspect, text
from sqlalchemy.engine import make_url

from loraroute.cli import main
from loraroute.registry import AuthError, QualityGateError, SchemaError, open_registry
from loraroute.registry.auth import authenticate, create_token, list_tokens, revoke_token
from loraroute.registry.migrate import (
    BASELINE,
    HEAD,
    MIGRATIONS,
    REVISIONS,
    VERSION_TABLE,
    _alembic_config,
    migrate_url,
    schema_status_url,
)
from loraroute.registry.tables import TABLES

FIXTURE = Path(__file__).parent / "fixtures" / "registry_7a1a624.json"
OLD = json.loads(FIXTURE.read_text())


def _engine(url: str):
    u = make_url(url)
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg2")
    return create_engine(u)


def make_legacy(url: str, blob_dir: Path, *, with_session_tables: bool = False) -> None:
    """The database and blobs the 7a1a624 release left (``with_session_tables``: as opened
    since by code that made its newer tables with ``create_all``, before migrations)."""
    engine = _engine(url)
    with engine.begin() as c:
        for stmt in OLD["ddl"][engine.dialect.name]:
            c.exec_driver_sql(stmt)
    md = MetaData()
    md.reflect(engine)
    with engine.begin() as c:
        for name in OLD["table_order"]:
            table = md.tables[name]
            when = [col.name for col in table.columns if isinstance(col.type, DateTime)]
            rows = [
                {k: datetime.fromisoformat(v) if k in when and v else v for k, v in row.items()}
                for row in OLD["rows"][name]
            ]
            if rows:
                c.execute(table.insert(), rows)
            if engine.dialect.name == "postgresql" and "id" in table.columns and rows:
                c.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), MAX(id)) FROM {name}"
                    )
                )
    if with_session_tables:  # what create_all added on open before migrations existed
        added = ("lr_signature", "lr_token_state", "lr_tombstone")
        TABLES[0].metadata.create_all(engine, tables=[t for t in TABLES if t.name in added])
    engine.dispose()
    for digest, packed in OLD["blobs"].items():
        hexd = digest.split(":", 1)[1]
        path = blob_dir / "sha256" / hexd[:2] / hexd
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(zlib.decompress(base64.b64decode(packed)))


def schema_of(url: str) -> dict:
    """Tables, columns (type, nullability), keys, uniques and indexes, as the database has them."""
    engine = _engine(url)
    insp = inspect(engine)
    out = {}
    for t in sorted(insp.get_table_names()):
        out[t] = {
            "columns": sorted(
                (c["name"], str(c["type"]).split("(")[0].upper(), c["nullable"])
                for c in insp.get_columns(t)
            ),
            "pk": sorted(insp.get_pk_constraint(t)["constrained_columns"]),
            "fks": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                for f in insp.get_foreign_keys(t)
            ),
            "uniques": sorted(
                (u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(t)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in insp.get_indexes(t)
                if not i["name"].startswith("sqlite_autoindex")
            ),
        }
    engine.dispose()
    return out


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'reg' / 'registry.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def another_postgres():
    """``make()``: one more fresh PostgreSQL database (dropped afterwards)."""
    from loraroute.registry.testing import temporary_postgres

    with ExitStack() as stack:
        yield lambda: stack.enter_context(temporary_postgres())


def _upgrade(url: str, blob_dir: Path) -> None:
    if url.startswith("sqlite"):  # a SQLite file upgrades itself when opened
        open_registry(url, blob_dir=blob_dir).close()
        return
    with pytest.raises(SchemaError, match="adapters registry migrate"):
        open_registry(url)
    out = CliRunner().invoke(main, ["registry", "migrate", "--registry", url])
    assert out.exit_code == 0, out.output
    assert "upgraded from the schema of a release before migrations" in out.output


def test_a_7a1a624_registry_upgrades_in_place_with_everything_kept(db_url, tmp_path, lr_home):
    (tmp_path / "reg").mkdir(exist_ok=True)
    blob_dir = tmp_path / "reg" / "blobs"
    make_legacy(db_url, blob_dir)
    assert schema_status_url(db_url).state == "legacy"
    _upgrade(db_url, blob_dir)
    assert schema_status_url(db_url).current == HEAD

    reg = open_registry(db_url, blob_dir=blob_dir)
    # every version, with its metadata, metrics, tags, lineage and aliases, as the old release
    # listed it
    assert [v.to_dict() for v in reg.list()] == OLD["versions"]
    assert reg.resolve("legal:prod").ref == "legal@1"
    assert reg.resolve("legal:staging").ref == "legal@2"
    assert reg.resolve("cooking:prod").metrics == {"eval_loss": 0.5}
    assert reg.resolve("legal@1").metrics == {"eval_loss": 1.25, "accuracy": 0.875}
    assert reg.resolve("legal@2").parent == "legal@1"
    assert reg.model_card("legal@2").startswith("# legal v2")
    assert reg.verify().ok
    out = reg.pull("legal:prod", tmp_path / "pulled")
    assert (out / "adapter_model.safetensors").is_file()
    # every token, with its scope; lifecycle works on the old tokens too
    for scope, token in OLD["tokens"].items():
        assert authenticate(reg, token).scope == scope
    assert [(t.id, t.name, t.scope, t.prefix) for t in list_tokens(reg)] == [
        (1, "dashboards", "read", None),
        (2, "ci", "write", None),
        (3, "ops", "admin", None),
    ]
    revoke_token(reg, 1)
    with pytest.raises(AuthError, match="revoked"):
        authenticate(reg, OLD["tokens"]["read"])
    # and the registry goes on: new versions, new tokens, removals with tombstones
    v = reg.push(tmp_path / "pulled", "legal-copy", base_fingerprint="sha256:" + "ab" * 32)
    assert v.version == 1
    assert authenticate(reg, create_token(reg, "read", prefix="legal")).prefix == "legal"
    reg.alias_set("cooking", "staging", 1)
    reg.rm("legal@2", force=True)
    assert [x.ref for x in reg.list(name="legal")] == ["legal@1"]
    reg.close()


def test_a_registry_with_tables_from_create_all_upgrades_too(db_url, tmp_path, lr_home):
    (tmp_path / "reg").mkdir(exist_ok=True)
    make_legacy(db_url, tmp_path / "reg" / "blobs", with_session_tables=True)
    assert schema_status_url(db_url).state == "legacy"
    _upgrade(db_url, tmp_path / "reg" / "blobs")
    reg = open_registry(db_url, blob_dir=tmp_path / "reg" / "blobs")
    assert [v.to_dict() for v in reg.list()] == OLD["versions"]
    reg.close()


def test_a_0003_registry_upgrades_to_eval_results(db_url, tmp_path, lr_home):
    """A registry at revision 0003 (before eval results) upgrades in place: its versions and
    aliases are kept, and eval results and the quality gate work on them."""
    (tmp_path / "reg").mkdir(exist_ok=True)
    blob_dir = tmp_path / "reg" / "blobs"
    make_legacy(db_url, blob_dir)
    engine = _engine(db_url)
    with engine.begin() as conn:
        command.stamp(_alembic_config(conn), BASELINE)
        command.upgrade(_alembic_config(conn), "0003")
    assert "lr_eval" not in inspect(engine).get_table_names()
    engine.dispose()
    assert schema_status_url(db_url).current == "0003"
    if db_url.startswith("sqlite"):
        open_registry(db_url, blob_dir=blob_dir).close()
    else:
        with pytest.raises(SchemaError, match="adapters registry migrate"):
            open_registry(db_url)
        out = CliRunner().invoke(main, ["registry", "migrate", "--registry", db_url])
        assert out.exit_code == 0 and "0003" in out.output, out.output
    assert schema_status_url(db_url).current == HEAD
    reg = open_registry(db_url, blob_dir=blob_dir)
    assert [v.to_dict() for v in reg.list()] == OLD["versions"]
    digest = "sha256:" + "ab" * 32
    result = {"dataset": "dev", "dataset_digest": digest, "metric": "accuracy"}
    reg.record_eval("legal@1", {**result, "value": 0.9})  # legal@1 holds prod
    reg.record_eval("legal@2", {**result, "value": 0.5})
    with pytest.raises(QualityGateError, match="a drop of 0.4"):
        reg.alias_set("legal", "prod", 2)
    assert reg.resolve("legal:prod").ref == "legal@1"
    assert [r.ref for r in reg.evals("legal")] == ["legal@1", "legal@2"]
    reg.close()
    # and back down: the two tables go, the rest stays
    engine = _engine(db_url)
    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0003")
    names = set(inspect(engine).get_table_names())
    engine.dispose()
    assert not names & {"lr_eval", "lr_promotion"} and "lr_version" in names


def test_migrated_schema_is_the_declared_one(db_url, tmp_path, another_postgres):
    """Three ways to the head revision give one schema: the 7a1a624 registry upgraded, every
    revision run on an empty database, and a new registry (tables.py, stamped)."""
    (tmp_path / "reg").mkdir(exist_ok=True)
    make_legacy(db_url, tmp_path / "reg" / "blobs")
    migrate_url(db_url)
    upgraded = schema_of(db_url)
    for other in ("scripts", "fresh"):
        url = (
            another_postgres()
            if db_url.startswith("postgresql")
            else (f"sqlite:///{tmp_path / other / 'registry.db'}")
        )
        (tmp_path / other).mkdir(exist_ok=True)
        if other == "scripts":
            engine = _engine(url)
            with engine.begin() as conn:
                command.upgrade(_alembic_config(conn), "head")
            engine.dispose()
        else:
            migrate_url(url)
        assert schema_of(url) == upgraded, other
    # and it matches the tables as declared (Alembic's own comparison finds nothing to do)
    engine = _engine(db_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        diffs = compare_metadata(ctx, TABLES[0].metadata)
    engine.dispose()
    assert [d for d in diffs if not _ours_not(d)] == []


def _ours_not(diff) -> bool:
    """Tables that are not the registry's (another app's, in a shared database)."""
    table = diff[1] if isinstance(diff, tuple) and len(diff) > 1 else None
    name = getattr(table, "name", None) or getattr(getattr(table, "table", None), "name", "")
    return bool(name) and not name.startswith("lr_")


def test_the_baseline_is_the_7a1a624_schema(db_url, tmp_path, another_postgres):
    (tmp_path / "reg").mkdir(exist_ok=True)
    make_legacy(db_url, tmp_path / "reg" / "blobs")
    old = schema_of(db_url)
    url = (
        another_postgres()
        if db_url.startswith("postgresql")
        else (f"sqlite:///{tmp_path / 'base.db'}")
    )
    engine = _engine(url)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), BASELINE)
    engine.dispose()
    new = schema_of(url)
    new.pop(VERSION_TABLE)
    assert new == old


def test_revisions_are_one_line_in_order():
    script = ScriptDirectory(str(MIGRATIONS))
    walked = [r.revision for r in script.walk_revisions()][::-1]
    assert tuple(walked) == REVISIONS
    assert script.get_heads() == [HEAD]


def test_a_schema_from_a_newer_release_is_refused(db_url, tmp_path, lr_home):
    (tmp_path / "reg").mkdir(exist_ok=True)
    open_registry(db_url, blob_dir=tmp_path / "blobs").close()
    engine = _engine(db_url)
    with engine.begin() as c:
        c.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaError, match="newer than this loraroute knows.*upgrade loraroute"):
        open_registry(db_url, blob_dir=tmp_path / "blobs")
    out = CliRunner().invoke(main, ["registry", "migrate", "--registry", db_url])
    assert out.exit_code == 1 and "upgrade loraroute" in out.output


def test_migrate_check_and_json(db_url, tmp_path, lr_home, pg_password):
    (tmp_path / "reg").mkdir(exist_ok=True)
    make_legacy(db_url, tmp_path / "reg" / "blobs")
    runner = CliRunner()
    out = runner.invoke(main, ["registry", "migrate", "--check", "--registry", db_url])
    assert out.exit_code == 1 and "before migrations" in out.output
    out = runner.invoke(main, ["registry", "migrate", "--json", "--registry", db_url])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["after"] == {"state": "current", "current": HEAD, "head": HEAD}
    out = runner.invoke(main, ["registry", "migrate", "--registry", db_url])
    assert out.exit_code == 0 and f"already at revision {HEAD}" in out.output
    out = runner.invoke(main, ["registry", "migrate", "--check", "--registry", db_url])
    assert out.exit_code == 0
    assert pg_password not in out.output


def test_migrate_refuses_a_registry_server():
    out = CliRunner().invoke(main, ["registry", "migrate", "--registry", "http://127.0.0.1:1"])
    assert out.exit_code == 2 and "not on a registry server" in out.output


_FROM_THE_WHEEL = """
import sys
import loraroute.registry.migrate as m
assert m.__file__.startswith(sys.argv[2]), m.__file__
before, after = m.migrate_url(sys.argv[1])
print(before.state, after.current)
"""


def test_the_wheel_carries_the_migrations_and_needs_no_ini(tmp_path):
    """Build the wheel from a copy of the sources, unpack it elsewhere and upgrade a
    7a1a624 registry with it, from a folder without alembic.ini."""
    import shutil
    import subprocess
    import sys
    import zipfile

    repo = Path(__file__).resolve().parents[2]
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("loraroute", "registry", "router", "agents"):
        shutil.copytree(repo / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + [str(src), "-w", str(tmp_path / "dist")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("loraroute-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert (site / "loraroute/registry/migrations/versions/0001_baseline_7a1a624.py").is_file()
    url = f"sqlite:///{tmp_path / 'reg' / 'registry.db'}"
    (tmp_path / "reg").mkdir()
    make_legacy(url, tmp_path / "reg" / "blobs")
    run = tmp_path / "elsewhere"
    run.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", _FROM_THE_WHEEL, url, str(site)],
        cwd=run,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "LORAROUTE_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["legacy", HEAD]
    assert not list(run.iterdir())  # no alembic.ini, nothing written here


def test_the_migration_scripts_import_outside_alembic():
    """A tool walking the installed package imports env.py and the revisions too: outside
    Alembic's migration context they only define their functions."""
    code = (
        "import importlib, pkgutil, loraroute.registry.migrations as m\n"
        "names = [x.name for x in pkgutil.walk_packages(m.__path__, m.__name__ + '.')]\n"
        "mods = [importlib.import_module(n) for n in names]\n"
        "print(sorted(n.rsplit('.', 1)[1] for n in names if 'versions.' in n or n.endswith('env')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'env'" in out.stdout and "'0005_routing_decisions'" in out.stdout
    assert callable(importlib.import_module("loraroute.registry.migrations.env").run_migrations)
