"""An import regression of our own code, or a missing service in CI, fails the suite; neither
turns into skips."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# pytest, in a child process where importing loraroute.router raises, collecting router tests
_BROKEN_ROUTER = """
import sys, importlib.abc
import pytest

class Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "loraroute.router" or name.startswith("loraroute.router."):
            raise ImportError(f"simulated regression in {name}")
        return None

sys.meta_path.insert(0, Broken())
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--collect-only", *sys.argv[1:]]))
"""


def test_a_broken_router_import_fails_collection(tmp_path):
    files = ["tests/router/test_router.py", "tests/agents/test_chat_model_routing.py"]
    proc = subprocess.run(
        [sys.executable, "-c", _BROKEN_ROUTER, *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out  # pytest's "interrupted: errors during collection"
    assert "simulated regression in loraroute.router" in out
    assert out.count("ERROR collecting") == len(files), out
    assert "skipped" not in out


def test_no_test_skips_on_our_own_imports():
    """``importorskip`` of loraroute, or a module-level skip, would hide an import regression."""
    own = re.compile(r"importorskip\(\s*['\"]loraroute")
    module_skip = re.compile(r"allow_module_level\s*=\s*True")
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for path in TESTS.rglob("*.py")
        if path != Path(__file__).resolve()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if own.search(line) or module_skip.search(line)
    ]
    assert not found, f"skips that hide our own import errors: {found}"


def test_a_missing_service_skips_only_outside_ci(service_missing, monkeypatch):
    """``.ci/run`` sets CI: there a missing service fails the test instead of skipping it."""
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        service_missing("PostgreSQL is not running")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        service_missing("PostgreSQL is not running")


def test_skips_go_through_the_ci_rule():
    """A bare ``pytest.skip`` in a test or fixture would pass CI with the service missing."""
    bare = re.compile(r"pytest\.skip\(")
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for path in TESTS.rglob("*.py")
        if path.name != "conftest.py" or path.parent != TESTS
        if path != Path(__file__).resolve()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if bare.search(line)
    ]
    assert not found, f"use the service_missing fixture instead: {found}"
