"""Shared fixtures: an isolated LORAROUTE_HOME per test and tiny models built from a config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Tests never touch the user's own registry or cache: the whole session uses a home inside the
# checkout (git-ignored), so the real SmolLM2 is converted once per clone and reused after.
TEST_HOME = Path(os.environ.get("LORAROUTE_TEST_HOME", REPO_ROOT / ".lr-home"))
for _var in list(os.environ):  # no setting of the developer's leaks into a test
    if _var.startswith("LORAROUTE_") and _var != "LORAROUTE_TEST_HOME":
        os.environ.pop(_var)
os.environ["LORAROUTE_HOME"] = str(TEST_HOME)


@pytest.fixture
def lr_home(tmp_path, monkeypatch):
    """A fresh LORAROUTE_HOME; returns the resolved Settings."""
    from loraroute.settings import get_settings

    home = tmp_path / "lrhome"
    monkeypatch.setenv("LORAROUTE_HOME", str(home))
    for var in ("LORAROUTE_REGISTRY", "LORAROUTE_BASE_MODEL", "LORAROUTE_EMBEDDER"):
        monkeypatch.delenv(var, raising=False)
    return get_settings()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A 2-layer Llama folder (safetensors, tokenizer, chat template), built once per session."""
    from loraroute.testing import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture(scope="session")
def other_tiny_base(tmp_path_factory) -> Path:
    """A second tiny base with other weights: adapters must not cross between the two."""
    from loraroute.testing import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("tiny-base-2"), seed=7)


@pytest.fixture(scope="session")
def tiny_adapter_factory(tiny_base, tmp_path_factory):
    """Build tiny LoRA adapter folders: ``factory(seed=1, r=4, ...)``, cached per arguments."""
    from loraroute.testing import make_tiny_adapter

    cache: dict[tuple, Path] = {}

    def factory(seed: int = 1, **kwargs) -> Path:
        key = (seed, tuple(sorted(kwargs.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"tiny-adapter-{seed}")
            cache[key] = make_tiny_adapter(tiny_base, folder, seed=seed, **kwargs)
        return cache[key]

    return factory


@pytest.fixture
def tiny_adapter(tiny_adapter_factory) -> Path:
    return tiny_adapter_factory(1)


def unavailable(reason: str) -> None:
    """A real component this test needs is missing: skip on a developer's machine, fail in CI
    (``CI`` set, as ``.ci/run`` sets it), where every component must be present."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def service_missing():
    """``unavailable`` for fixtures and tests that reach a service themselves."""
    return unavailable


@pytest.fixture
def postgres_url():
    """A fresh database on the PostgreSQL server at 127.0.0.1:5432, dropped afterwards."""
    from loraroute.registry.testing import PostgresUnavailable, temporary_postgres

    try:
        cm = temporary_postgres()
        url = cm.__enter__()
    except PostgresUnavailable as exc:
        unavailable(str(exc))
    try:
        yield url
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        unavailable(f"benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M-Instruct, converted once into the test home (about 30 s)."""
    from loraroute.models import resolve_base_model
    from loraroute.settings import get_settings

    return resolve_base_model("smollm2-135m-instruct", settings=get_settings(home=TEST_HOME)).path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from loraroute.models import resolve_embedder

    return resolve_embedder("all-minilm-l6-v2").path
