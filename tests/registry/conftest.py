"""Registries for the registry's tests: a SQLite file, and a fresh PostgreSQL database."""

from __future__ import annotations

import pytest

from loraroute.registry import open_registry

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path, lr_home):
    """``(url, blob_dir)`` of an empty registry on each metadata backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'reg' / 'registry.db'}", str(tmp_path / "reg" / "blobs")
    return request.getfixturevalue("postgres_url"), str(tmp_path / "blobs")


@pytest.fixture
def reg(store):
    """An empty registry on each metadata backend."""
    url, blob_dir = store
    registry = open_registry(url, blob_dir=blob_dir)
    yield registry
    registry.close()
