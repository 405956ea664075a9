"""Several processes pushing at once, and pushes killed with SIGKILL at random points."""

from __future__ import annotations

import multiprocessing as mp
import random
import signal
import subprocess
import sys
import time

from loraroute.registry import open_registry
from loraroute.registry.blobs import sha256_file
from loraroute.registry.testing import push_variants


def test_parallel_pushes_give_consecutive_versions(store_location, tiny_adapter, tmp_path):
    url, blobs = store_location
    open_registry(url, blob_dir=blobs).close()  # schema first, as a deployment would
    ctx = mp.get_context("spawn")
    jobs = []
    for i in range(4):
        tags = [f"p{i}-{k}" for k in range(3)]
        jobs.append((url, blobs, str(tiny_adapter), "shared", tags, str(tmp_path / f"w{i}")))
        jobs.append((url, blobs, str(tiny_adapter), f"own{i}", tags, str(tmp_path / f"o{i}")))
    reader = open_registry(url, blob_dir=blobs)
    with ctx.Pool(4) as pool:
        pending = pool.starmap_async(push_variants, jobs)
        while not pending.ready():  # readers never see a half-written version
            for v in reader.list():
                assert v.files and all(reader.blobs.size(f.digest) == f.size for f in v.files)
            pending.wait(0.05)
        results = pending.get()
    reader.close()
    shared = sorted(n for r in results[0::2] for n in r)
    assert shared == list(range(1, 13))
    for r in results[1::2]:
        assert r == [1, 2, 3]
    reg = open_registry(url, blob_dir=blobs)
    assert [v.version for v in reg.list(name="shared")] == list(range(1, 13))
    assert len({v.digest for v in reg.list(name="shared")}) == 12
    assert reg.verify().ok


_CHILD = (
    "import sys; from loraroute.registry.testing import push_variants; "
    "push_variants(sys.argv[1], sys.argv[2], sys.argv[3], 'crashy', "
    "[f'{sys.argv[4]}-{k}' for k in range(200)], sys.argv[5])"
)


def test_killed_push_leaves_no_partial_version(store_location, tiny_adapter, tmp_path):
    url, blobs = store_location
    open_registry(url, blob_dir=blobs).close()
    rng = random.Random(1234)
    for it in range(3):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHILD,
                url,
                blobs,
                str(tiny_adapter),
                f"it{it}",
                str(tmp_path / f"work{it}"),
            ],
        )
        reg = open_registry(url, blob_dir=blobs)
        # wait until this child has pushed something, then kill it at a random moment
        start = len(reg.list(name="crashy"))
        deadline = time.monotonic() + 60
        while len(reg.list(name="crashy")) == start and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        versions = reg.list(name="crashy")
        assert [v.version for v in versions] == list(range(1, len(versions) + 1))
        assert len(versions) > start
        report = reg.verify()
        assert report.ok, report.problems
        for digest, path in reg.blobs.all_digests():  # no blob file holds wrong bytes
            assert sha256_file(path)[0] == digest
        reg.close()
    reg = open_registry(url, blob_dir=blobs)
    reg.gc(grace_seconds=0)
    assert reg.verify().ok and not any(reg.blobs.tmp_dir.iterdir())
