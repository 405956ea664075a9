"""Version numbers are never reused: a removed number leaves a tombstone."""

from __future__ import annotations

import pytest

from loraroute.registry import RemoteRegistry, VersionConflictError
from loraroute.registry.auth import create_token
from loraroute.registry.testing import make_variant


def test_removed_numbers_never_come_back(store, tiny_adapter, tmp_path):
    made = {}

    def variant(tag: str):
        if tag not in made:
            made[tag] = make_variant(tiny_adapter, tmp_path / tag, tag)
        return made[tag]

    assert store.push(variant("a"), "imm").version == 1
    assert store.push(variant("b"), "imm").version == 2
    store.rm("imm@2")
    assert store.push(variant("c"), "imm").version == 3
    with pytest.raises(VersionConflictError, match="imm@2 was removed"):
        store.push(variant("d"), "imm", version=2)
    store.rm("imm")  # the whole adapter, its last versions included
    assert store.list(name="imm") == []
    assert store.push(variant("e"), "imm").version == 4
    # the same bytes as a removed version get a new number too
    assert store.push(variant("b"), "imm").version == 5
    with pytest.raises(VersionConflictError, match="imm@1 was removed"):
        store.push(variant("a"), "imm", version=1)
    assert store.push(variant("f"), "imm", version=9).version == 9
    assert store.push(variant("g"), "imm").version == 10
    assert store.push(variant("a"), "other").version == 1  # numbers are per adapter


def test_tombstones_hold_over_http(sqlite_store, tiny_adapter, tmp_path, serve):
    from loraroute.registry.server import create_app

    admin = create_token(sqlite_store, "admin")
    with serve(create_app(sqlite_store)) as srv:
        client = RemoteRegistry(srv.url, token=admin)
        client.push(make_variant(tiny_adapter, tmp_path / "a", "a"), "imm")
        client.rm("imm")
        assert client.push(make_variant(tiny_adapter, tmp_path / "b", "b"), "imm").ref == "imm@2"


def test_no_number_reused_under_concurrent_pushes_and_removals(store_url, tiny_adapter, tmp_path):
    """Three processes push while this one removes the newest version again and again."""
    import multiprocessing as mp

    from sqlmodel import Session, select

    from loraroute.registry import AdapterNotFoundError, open_registry
    from loraroute.registry.tables import Tombstone
    from loraroute.registry.testing import push_variants

    blobs = str(tmp_path / "blobs")
    reg = open_registry(store_url, blob_dir=blobs)
    jobs = [
        (
            store_url,
            blobs,
            str(tiny_adapter),
            "shared",
            [f"p{i}-{k}" for k in range(5)],
            str(tmp_path / f"w{i}"),
        )
        for i in range(3)
    ]
    removed = 0
    with mp.get_context("spawn").Pool(3) as pool:
        pending = pool.starmap_async(push_variants, jobs)
        while not pending.ready():
            live = reg.list(name="shared")
            if live:
                try:
                    reg.rm(live[-1].ref)
                    removed += 1
                except AdapterNotFoundError:
                    pass  # removed or moved meanwhile
            pending.wait(0.05)
        pushed = [n for numbers in pending.get() for n in numbers]
    assert len(pushed) == len(set(pushed)) == 15  # every push got a number of its own
    with Session(reg._read) as s:
        graves = list(s.exec(select(Tombstone.number).where(Tombstone.name == "shared")))
    live = [v.version for v in reg.list(name="shared")]
    assert len(graves) >= removed and not set(graves) & set(live)
    assert sorted(graves + live) == sorted(set(pushed))
    reg.close()


def test_a_push_answers_with_its_version_though_it_is_removed_right_after(
    store, tiny_adapter, tmp_path, after_next_commit
):
    """The CI race: a concurrent `rm` between the push's commit and its answer."""
    with after_next_commit(lambda: store.rm("race")) as done:
        v = store.push(make_variant(tiny_adapter, tmp_path / "a", "a"), "race")
    assert done and (v.ref, v.aliases) == ("race@1", [])
    assert store.list(name="race") == []
    assert store.push(make_variant(tiny_adapter, tmp_path / "b", "b"), "race").version == 2


def test_alias_set_answers_with_what_it_set_though_it_moves_right_after(
    store, tiny_adapter, tmp_path, after_next_commit
):
    for tag in "ab":
        store.push(make_variant(tiny_adapter, tmp_path / tag, tag), "moved")
    with after_next_commit(lambda: store.alias_set("moved", "beta", 2)):
        v = store.alias_set("moved", "beta", 1)
    assert (v.ref, v.aliases) == ("moved@1", ["beta"])
    assert store.resolve("moved:beta").ref == "moved@2"
