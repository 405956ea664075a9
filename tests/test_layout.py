"""The house a new maintainer walks: packages as installed, layers that point one way, no
import circles, small files, one place for settings."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from loraroute.settings import ENV_VARS

REPO = Path(__file__).resolve().parents[1]
ROOTS = {
    "loraroute": "loraroute",
    "loraroute.registry": "registry",
    "loraroute.router": "router",
    "loraroute.agents": "agents",
}
MAX_LINES = 800


def _sources() -> list[Path]:
    return sorted(p for d in ROOTS.values() for p in (REPO / d).rglob("*.py"))


@pytest.fixture(scope="module")
def installed_layout(tmp_path_factory) -> Path:
    """The package as the wheel lays it out (one ``loraroute`` folder), for import analysis."""
    root = tmp_path_factory.mktemp("layout")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "loraroute", root / "loraroute", ignore=ignore)
    for name, folder in ROOTS.items():
        if name != "loraroute":
            shutil.copytree(REPO / folder, root / "loraroute" / name.split(".")[1], ignore=ignore)
    return root


def test_every_package_folder_is_in_the_wheel():
    """pyproject lists every package (a missing subpackage is missing from the wheel)."""
    declared = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set()
    for name, folder in ROOTS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            if name == "loraroute" and rel and f"loraroute.{rel[0]}" in ROOTS:
                continue
            found.add(".".join((name, *rel)))
    assert declared == found


_CYCLES = """
import grimp
graph = grimp.build_graph("loraroute", cache_dir=None)
for module in sorted(graph.modules):
    for imported in sorted(graph.find_modules_directly_imported_by(module)):
        back = graph.find_shortest_chain(importer=imported, imported=module)
        if back:
            print(" -> ".join((module, *back)))
"""


def test_no_import_cycles(installed_layout):
    """No module imports, directly or through others, a module that imports it
    (``TYPE_CHECKING`` and function-level imports count)."""
    out = subprocess.run(
        [sys.executable, "-c", _CYCLES],
        cwd=installed_layout,
        env={"PYTHONPATH": str(installed_layout), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "", "import cycles:\n" + out.stdout


def test_layers_point_one_way(installed_layout):
    """import-linter's layer contracts in pyproject.toml: lora <- runtime <- server/LangChain
    <- CLI inside agents; registry <- router <- agents <- CLI across packages."""
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run(
        [str(lint), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=installed_layout,
        env={"PYTHONPATH": str(installed_layout), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_no_file_is_over_800_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in _sources()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def _environment_reads(tree: ast.AST) -> list[int]:
    """Lines that read the environment: ``os.environ[...]``/``.get``/``in``, ``os.getenv``,
    X
        for other tools go through ``settings.library_default``)."""
    lines = []
    for node in ast.walk(tree):
        settings_class = isinstance(node, ast.ClassDef) and any(
            ast.unparse(b).endswith("BaseSettings") for b in node.bases
        )
        if settings_class or (isinstance(node, ast.Attribute) and node.attr == "getenv"):
            lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            if ast.unparse(node.value) == "os.environ":
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if ast.unparse(node.func.value) == "os.environ" and node.func.attr in (
                "get",
                "copy",
                "setdefault",
            ):
                lines.append(node.lineno)
            if any(k.arg in ("envvar", "auto_envvar_prefix") for k in node.keywords):
                lines.append(node.lineno)
        elif isinstance(node, ast.Compare) and any(
            ast.unparse(c) == "os.environ" for c in node.comparators
        ):
            lines.append(node.lineno)
    return lines


def test_the_environment_is_read_in_settings_only():
    found = {}
    for path in _sources():
        if path == REPO / "loraroute" / "settings.py":
            continue
        lines = _environment_reads(ast.parse(path.read_text()))
        if lines:
            found[str(path.relative_to(REPO))] = lines
    assert found == {}


def test_the_readme_settings_table_is_every_setting():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    in_table = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", section, flags=re.M))
    assert in_table == set(ENV_VARS.values())
