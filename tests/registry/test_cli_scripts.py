"""What scripts and other users of the registry rely on: ``--json`` on every command a script
parses, tables that are never cut when piped, near-miss suggestions, what is live, and files
whose permissions follow the umask."""

from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner

from loraroute.cli import main
from loraroute.registry import AdapterNotFoundError, open_registry


@pytest.fixture
def run(lr_home):
    runner = CliRunner()

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(main, list(args))
        assert result.exit_code == code, result.output
        return result

    return invoke


def test_every_command_a_script_parses_speaks_json(run, tiny_adapter_factory, tmp_path):
    pushed = json.loads(
        run("push", str(tiny_adapter_factory(1)), "--name", "cooking", "--json").output
    )
    assert (pushed["ref"], pushed["live"], pushed["aliases"]) == ("cooking@1", False, [])
    imported = run(
        "import", str(tiny_adapter_factory(2)), "--name", "cooking", "--alias", "prod", "--json"
    )
    assert json.loads(imported.output)["live"] is True
    pulled = json.loads(run("pull", "cooking:prod", "-o", str(tmp_path / "p"), "--json").output)
    assert (pulled["ref"], pulled["folder"]) == ("cooking@2", str(tmp_path / "p"))
    assert pulled["digest"] == json.loads(imported.output)["digest"]
    exported = json.loads(run("export", "cooking@1", str(tmp_path / "e"), "--json").output)
    assert exported["ref"] == "cooking@1" and exported["digest"] == pushed["digest"]
    moved = json.loads(run("alias", "set", "cooking", "prod", "1", "--json").output)
    assert (moved["alias"], moved["ref"], moved["live"]) == ("cooking:prod", "cooking@1", True)
    staged = json.loads(run("alias", "set", "cooking", "staging", "2", "--json").output)
    assert staged["live"] is False
    assert json.loads(run("alias", "rm", "cooking", "staging", "--json").output) == {
        "removed": "cooking:staging"
    }
    listed = json.loads(run("ls", "--json").output)
    assert [(v["ref"], v["live"]) for v in listed] == [("cooking@1", True), ("cooking@2", False)]
    assert [v["ref"] for v in json.loads(run("ls", "--live", "--json").output)] == ["cooking@1"]
    routes = json.loads(run("route", "list", "--encoder", "hashing", "--json").output)
    assert routes["alias"] == "prod" and [r["ref"] for r in routes["routes"]] == ["cooking@1"]
    removed = json.loads(run("rm", "cooking@2", "--json").output)
    assert [v["ref"] for v in removed["removed"]] == ["cooking@2"]


def test_a_push_says_once_how_to_go_live(run, tiny_adapter_factory):
    out = run("push", str(tiny_adapter_factory(1)), "--name", "cooking", "--example", "boil eggs")
    assert "cooking@1 is not live" in out.output
    assert "adapters alias set cooking prod 1" in out.output
    live = run("push", str(tiny_adapter_factory(2)), "--name", "cooking", "--alias", "prod")
    assert "not live" not in live.output
    table = run("ls").output
    assert "2 adapter version(s), 1 live (alias 'prod')" in table


def test_piped_tables_never_cut_a_reference(run, tiny_adapter_factory):
    name = "a-rather-long-adapter-name-that-a-script-will-copy-" + "x" * 60
    run("push", str(tiny_adapter_factory(1)), "--name", name, "--tag", "team=" + "y" * 80)
    out = run("ls").output  # CliRunner's stdout is no terminal, as with `adapters ls | cat`
    assert f"{name}@1" in out and "y" * 80 in out
    assert max(len(line) for line in out.splitlines()) < 1000  # sized to its content


def test_near_misses_are_suggested(run, lr_home, tiny_adapter_factory, tiny_base):
    reg = open_registry(settings=lr_home)
    reg.push(tiny_adapter_factory(1), "cooking")
    reg.alias_set("cooking", "prod", 1)
    out = run("show", "cookng", code=1).output
    assert "no adapter named 'cookng'" in out and "did you mean 'cooking'?" in out
    assert "Traceback" not in out
    with pytest.raises(AdapterNotFoundError, match=r"did you mean 'cooking:prod'\?"):
        reg.resolve("cooking:prd")
    with pytest.raises(AdapterNotFoundError, match=r"cooking has version 1 and alias prod"):
        reg.resolve("cooking@7")
    with pytest.raises(AdapterNotFoundError, match="did you mean 'cooking:prod'"):
        reg.alias_remove("cooking", "prd")
    with pytest.raises(AdapterNotFoundError) as far:
        reg.resolve("legal")
    assert "did you mean" not in str(far.value)  # nothing close: no guess

    from loraroute.agents.runtime import Engine

    engine = Engine(tiny_base, registry=reg, settings=lr_home, device="cpu")
    try:
        with pytest.raises(AdapterNotFoundError, match="did you mean 'cooking'"):
            engine.generate("hi", adapter="cookng", max_new_tokens=1)
    finally:
        engine.close()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_what_the_registry_writes_follows_the_umask(lr_home, tiny_adapter, tmp_path, umask):
    old = os.umask(umask)
    try:
        reg = open_registry(settings=lr_home)
        v = reg.push(tiny_adapter, "cooking")
        checkout = reg.local_path(v)
        pulled = reg.pull(v.ref, tmp_path / "pulled")
    finally:
        os.umask(old)

    def mode(path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    for f in v.files:
        assert mode(reg.blobs.path(f.digest)) == 0o666 & ~umask, f.path
        assert mode(checkout / f.path) == mode(pulled / f.path) == 0o666 & ~umask
    assert mode(checkout) == mode(pulled) == 0o777 & ~umask
