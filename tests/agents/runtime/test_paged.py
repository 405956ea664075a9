"""The paged path (paged KV cache, chunked prefill inside decode steps, preemption, prefix
reuse) against the dense path, on CPU with a tiny Llama and mixed adapters.

Both paths run the same fp32 model; every request's tokens must be equal and every step's
logits close (the batches differ, so the GEMMs' summation order may too)."""

from __future__ import annotations

import time

import pytest
import torch

from loraroute.agents.runtime import scheduler as scheduler_module
from loraroute.agents.runtime.engine import Engine
from loraroute.agents.runtime.paged import BlockAllocator, block_hashes
from loraroute.agents.runtime.requests import SamplingParams

# (prompt length, adapter, new tokens)
WAVE1 = [(12, "a", 30), (40, "b", 8), (5, None, 30), (20, "c", 25), (33, "a", 10)]
WAVE2 = [(7, None, 12), (9, "b", 15), (70, "c", 6)]


def _engine(tiny_base, tiny_adapter_factory, settings, **options) -> Engine:
    eng = Engine(tiny_base, settings=settings, device="cpu", max_resident=4, **options)
    eng.load_adapter_folder(tiny_adapter_factory(1), name="a")
    eng.load_adapter_folder(
        tiny_adapter_factory(2, r=8, target_modules=("q_proj", "v_proj", "down_proj")), name="b"
    )
    eng.load_adapter_folder(
        tiny_adapter_factory(3, r=2, target_modules=("k_proj", "o_proj", "gate_proj", "up_proj")),
        name="c",
    )
    eng.scheduler.eos_ids = set()  # every request runs to its token budget
    return eng


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    from loraroute.settings import get_settings

    return get_settings(home=tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def dense(tiny_base, tiny_adapter_factory, settings):
    eng = _engine(tiny_base, tiny_adapter_factory, settings, kv_cache="dense", max_batch_size=8)
    yield eng
    eng.close()


def _ids(n: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, 300, (n,), generator=gen).tolist()


def _run(eng: Engine, waves: list[list[tuple]], *, join_after: int = 3, hook=None):
    """Each wave submitted at once (the next after ``join_after`` steps); returns each
    request's tokens and every step's logits by (request, tokens so far)."""
    sched = eng.scheduler
    logits: dict = {}
    orig = scheduler_module.choose_tokens

    def spy(step_logits, rows):
        for i, row in enumerate(rows):
            logits[(row.handle.id, len(row.tokens))] = step_logits[i].detach().float().clone()
        if hook is not None:
            hook(sched)
        return orig(step_logits, rows)

    scheduler_module.choose_tokens = spy
    handles = []
    try:
        for w, wave in enumerate(waves):
            steps = sched.steps
            while w and sched.steps < steps + join_after:
                time.sleep(0.001)
            with eng._model_lock:  # the whole wave is queued before the next step
                handles += [
                    eng._submit_ids(_ids(n, 1000 * w + n), a, SamplingParams(max_new_tokens=k))
                    for n, a, k in wave
                ]
        results = [h.result(timeout=120) for h in handles]
    finally:
        scheduler_module.choose_tokens = orig
    order = {h.id: i for i, h in enumerate(handles)}
    return results, {(order[i], n): v for (i, n), v in logits.items() if i in order}


def _same(got, want) -> None:
    (g_res, g_logits), (w_res, w_logits) = got, want
    assert [r.token_ids for r in g_res] == [r.token_ids for r in w_res]
    assert set(g_logits) == set(w_logits)
    for key, value in w_logits.items():
        torch.testing.assert_close(g_logits[key], value, atol=1e-4, rtol=1e-4)


def test_paged_equals_dense_with_mixed_adapters_chunked_prompts_and_rows_joining(
    tiny_base, tiny_adapter_factory, settings, dense
):
    want = _run(dense, [WAVE1, WAVE2])
    # 4-token blocks, 16 tokens a step: prompts are prefilled in chunks beside decode rows
    eng = _engine(tiny_base, tiny_adapter_factory, settings, kv_block_size=4, max_step_tokens=16)
    try:
        assert eng.scheduler.paged is not None  # the default for a Llama, on CPU too
        got = _run(eng, [WAVE1, WAVE2])
        _same(got, want)
        assert [r.completion_tokens for r in got[0]] == [k for _, _, k in WAVE1 + WAVE2]
        paged = eng.scheduler.paged
        assert eng.scheduler.max_rows_seen >= len(WAVE1) and paged.alloc.used_blocks == 0
        assert eng.scheduler.prefill_tokens > 0 and eng.scheduler.decode_tokens > 0
    finally:
        eng.close()


def test_a_full_cache_queues_and_preempts_and_the_tokens_stay_the_same(
    tiny_base, tiny_adapter_factory, settings, dense
):
    # the smallest cache: one sequence of the full context (512 tokens); five sequences of
    # 170-270 tokens cannot all fit, so some wait and running ones are preempted
    waves = [[(100, "a", 120), (90, "b", 150), (120, None, 100), (80, "c", 130), (60, "a", 90)]]
    want = _run(dense, waves)
    eng = _engine(
        tiny_base, tiny_adapter_factory, settings, kv_block_size=4, kv_cache_tokens=1,
        max_step_tokens=64,
    )  # fmt: skip
    try:
        paged = eng.scheduler.paged
        assert paged.alloc.blocks - 1 == 128
        _same(_run(eng, waves), want)
        assert paged.preemptions > 0 and paged.alloc.peak_used <= 128
        assert paged.alloc.used_blocks == 0
    finally:
        eng.close()


def test_cancelling_a_request_mid_prefill_frees_its_blocks_and_changes_no_other_row(
    tiny_base, tiny_adapter_factory, settings, dense
):
    wave = [(12, "a", 20), (300, "b", 20), (20, None, 20)]
    want = _run(dense, [[wave[0], wave[2]]])
    eng = _engine(tiny_base, tiny_adapter_factory, settings, kv_block_size=4, max_step_tokens=24)
    seen: dict = {}

    def cancel_mid_prefill(sched):
        for row in sched.paged.running:
            if len(row.handle.prompt_ids) == 300 and 0 < row.computed < 300:
                seen["computed"] = row.computed
                seen["blocks"] = len(row.blocks)
                row.handle.cancel()

    try:
        results, logits = _run(eng, [wave], hook=cancel_mid_prefill)
        assert 0 < seen["computed"] < 300 and seen["blocks"] == 75  # the whole prompt's
        assert results[1].finish_reason == "cancelled" and results[1].token_ids == []
        kept = {(0 if i == 0 else 1, n): v for (i, n), v in logits.items() if i != 1}
        _same(([results[0], results[2]], kept), want)
        assert eng.scheduler.paged.alloc.used_blocks == 0
        assert eng.scheduler.running == 0
    finally:
        eng.close()


def test_a_shared_system_prompt_is_computed_once_per_adapter(
    tiny_base, tiny_adapter_factory, settings, dense
):
    system = _ids(64, 7)
    prompts = [system + _ids(n, 8 + n) for n in (5, 9, 13)]
    params = SamplingParams(max_new_tokens=6)
    eng = _engine(tiny_base, tiny_adapter_factory, settings, kv_block_size=8)
    try:
        paged = eng.scheduler.paged
        for adapter in ("a", "b"):
            hits = paged.alloc.hits
            for i, ids in enumerate(prompts):
                got = eng._submit_ids(ids, adapter, params).result(timeout=60)
                want = dense._submit_ids(ids, adapter, params).result(timeout=60)
                assert got.token_ids == want.token_ids
                # the first of each adapter computes the 8 blocks of the system prompt, the
                # next ones take them (another adapter's cached keys do not serve)
                assert paged.alloc.hits - hits == (0 if i == 0 else 8 * i)
        assert paged.alloc.used_blocks == 0
    finally:
        eng.close()


def test_block_allocator_counts_frees_and_reuses_cached_prefixes_last():
    alloc = BlockAllocator(6)
    assert alloc.free_blocks == 5  # block 0 is never handed out
    first = alloc.allocate(3)
    assert 0 not in first and alloc.free_blocks == 2
    assert alloc.allocate(3) is None and alloc.free_blocks == 2  # nothing taken
    hashes = block_hashes(list(range(12)), 4, None)
    assert len(hashes) == 3 and hashes != block_hashes(list(range(12)), 4, "sha256:x")
    for block, h in zip(first, hashes, strict=True):
        alloc.register(block, h)
    alloc.release(first)
    assert alloc.free_blocks == 5 and alloc.cached(hashes) == 3
    again = alloc.match(hashes[:2])
    assert again == first[:2] and alloc.free_blocks == 3
    other = alloc.allocate(3)  # two free blocks, then the idle cached one
    assert first[2] in other and alloc.cached(hashes) == 2
    alloc.release(other + again)
    assert alloc.free_blocks == 5 and alloc.used_blocks == 0
