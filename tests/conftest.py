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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA
