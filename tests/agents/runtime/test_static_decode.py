"""Static decode (the path CUDA graphs replay) against the dynamic path, on CPU.

Everything of the graphed decode step except the recording runs here: static KV buffers,
rows padded to a power of two, in-place input buffers, the adapter slots and Triton tiles
in device buffers, our grouped-KV decode attention.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from loraroute.agents.lora import TILE_M, StaticPlanBuffers
from loraroute.agents.runtime import scheduler as scheduler_module
from loraroute.agents.runtime import static_decode as _static_decode
from loraroute.agents.runtime.engine import Engine
from loraroute.agents.runtime.requests import SamplingParams

# (prompt length, adapter, new tokens): mixed adapters and prompt lengths; rows leave at
# different steps, and a second wave joins the running batch
WAVE1 = [(12, "a", 60), (40, "b", 8), (5, None, 8), (20, "c", 70)]
WAVE2 = [(33, "a", 25), (7, None, 20), (9, "b", 40)]


@pytest.fixture(scope="module")
def engine(tiny_base, tiny_adapter_factory, tmp_path_factory):
    from loraroute.settings import get_settings

    settings = get_settings(home=tmp_path_factory.mktemp("home"))
    eng = Engine(
        tiny_base,
        settings=settings,
        device="cpu",
        max_resident=4,
        max_batch_size=8,
        kv_cache="dense",
    )
    eng.load_adapter_folder(tiny_adapter_factory(1), name="a")
    eng.load_adapter_folder(
        tiny_adapter_factory(2, r=8, target_modules=("q_proj", "v_proj", "down_proj")), name="b"
    )
    eng.load_adapter_folder(tiny_adapter_factory(3, r=2), name="c")
    eng.scheduler.eos_ids = set()  # every request runs to its token budget
    yield eng
    eng.close()


def _run(eng: Engine, *, static: bool) -> tuple[list[list[int]], dict]:
    """Both waves through ``eng``; returns each request's tokens and its logits per step."""
    sched = eng.scheduler
    sched.set_decode(static=static, graphs=False)
    gen = torch.Generator().manual_seed(11)
    vocab = eng.model.config.vocab_size

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=gen).tolist()

    logits: dict = {}
    orig = scheduler_module.choose_tokens

    def spy(step_logits, rows):
        for i, row in enumerate(rows):
            logits[(row.handle.id, len(row.tokens))] = step_logits[i].detach().float().clone()
        return orig(step_logits, rows)

    scheduler_module.choose_tokens = spy
    steps = sched.steps
    try:
        with eng._model_lock:  # the first wave is queued before the first step
            first = [
                eng._submit_ids(ids(n), a, SamplingParams(max_new_tokens=k)) for n, a, k in WAVE1
            ]
        while sched.steps < steps + 3:  # the second wave joins a running batch
            time.sleep(0.001)
        second = [eng._submit_ids(ids(n), a, SamplingParams(max_new_tokens=k)) for n, a, k in WAVE2]
        handles = first + second
        tokens = [h.result(timeout=120).token_ids for h in handles]
    finally:
        scheduler_module.choose_tokens = orig
    order = {h.id: i for i, h in enumerate(handles)}
    return tokens, {(order[i], n): v for (i, n), v in logits.items()}


def test_static_decode_matches_dynamic_with_mixed_adapters_and_rows_joining_and_leaving(
    engine, monkeypatch
):
    # small buffers: they grow, and leading columns are dropped when they are full
    monkeypatch.setattr(_static_decode, "MIN_CAPACITY", 8)
    want_tokens, want_logits = _run(engine, static=False)
    got_tokens, got_logits = _run(engine, static=True)
    st = engine.scheduler._static
    assert st is not None and st.capacity > 8 and st.trims >= 1
    assert got_tokens == want_tokens
    assert [len(t) for t in got_tokens] == [k for _, _, k in WAVE1 + WAVE2]
    assert set(got_logits) == set(want_logits)
    for key, want in want_logits.items():
        torch.testing.assert_close(got_logits[key], want, atol=2e-5, rtol=2e-5)
    engine.scheduler.set_decode(static=False, graphs=False)


def test_static_decode_is_off_on_cpu_by_default_and_the_engine_option_reaches_the_scheduler(
    tiny_base, lr_home
):
    eng = Engine(tiny_base, device="cpu")
    assert not eng.scheduler.static_decode and eng.scheduler.cuda_graphs
    eng.close()
    eng = Engine(tiny_base, device="cpu", cuda_graphs=False)
    assert not eng.scheduler.static_decode and not eng.scheduler.cuda_graphs
    eng.close()


def test_static_plan_buffers_pad_tiles_to_a_power_of_two():
    bufs = StaticPlanBuffers(8, torch.device("cpu"))
    slots = [3, 0, 3, 5, 2, 0, 0, 0]  # 4 distinct slots (0 included): 4 tiles
    assert bufs.write(slots) == 4
    plan = bufs.plan(1)
    tok, tile_slot, tiles = plan.tiles(1)
    assert tiles == 4 and tok.shape == (4 * TILE_M,) and tile_slot.tolist() == [3, 0, 5, 2]
    assert sorted(t for t in tok.tolist() if t >= 0) == list(range(8))
    assert plan.idx().tolist() == slots and plan.uniform is None
    assert bufs.write([3, 5, 2, 0, 0, 0, 0, 0]) == 4  # 4 tiles again: same graph
    assert bufs.write([1, 2, 3, 4, 5, 6, 7, 0]) == 8
    assert bufs.write([1, 2, 3, 0, 0, 0, 0, 0]) == 4  # 4 real tiles
    assert bufs.write([1, 1, 1, 0]) == 2  # 2 tiles
    tok, tile_slot, tiles = bufs.plan(2).tiles(1)
    assert tiles == 2 and tok[:3].tolist() == [0, 1, 2]


def test_decode_attention_equals_sdpa_with_repeated_kv_heads():
    torch.manual_seed(0)
    b, heads, kv, dim, cols = 3, 8, 2, 16, 20
    q = torch.randn(b, heads, 1, dim)
    k, v = torch.randn(b, kv, cols, dim), torch.randn(b, kv, cols, dim)
    mask = torch.zeros(b, 1, 1, cols)
    mask[0, ..., :7] = torch.finfo(mask.dtype).min  # left padding of row 0
    out, _ = _static_decode.decode_attention(None, q, k, v, mask, scaling=0.25)
    rep = heads // kv
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), attn_mask=mask, scale=0.25
    )
    torch.testing.assert_close(out, ref.transpose(1, 2))


_INTERPRETED = textwrap.dedent(
    """
    import os, torch
    assert os.environ["TRITON_INTERPRET"] == "1"
    from loraroute.agents.lora import launchers as lt
    from loraroute.agents.lora import LoraKernelConfig
    cfg = LoraKernelConfig(interpret=True)
    from loraroute.agents.lora.layout import SlotLayout
    from loraroute.agents.lora import StaticPlanBuffers, ForwardPlan

    # a graph made for more tiles than the batch needs: the padding tiles write nothing,
    # with and without split-K
    torch.manual_seed(0)
    mods = [("l.q_proj", 300, 40), ("l.k_proj", 300, 24)]
    layout = SlotLayout(mods, r=16)
    stack = torch.randn(4, layout.numel) * 0.3
    stack[0] = 0
    spots = [(layout.spots[n].a_off, layout.spots[n].b_off, o) for n, _, o in mods]
    slots = [1, 2, 1, 3, 0]  # 4 tiles of the 8 the buffers allow -> a graph for 4
    x = torch.randn(8, 300)
    for per in (0, 128):
        cfg.k_per_split = per
        outs = []
        for padded in (False, True):
            rows = slots + [0] * 3 if padded else slots
            if padded:
                bufs = StaticPlanBuffers(8, torch.device("cpu"))
                bufs.write(rows)
                plan = bufs.plan(1)
            else:
                plan = ForwardPlan(1, rows, None, torch.device("cpu"))
            tok, tile_slot, tiles = plan.tiles(1)
            if padded:  # one more padding tile than needed, as a bigger bucket would have
                tok = torch.cat([tok, torch.full((16,), -1, dtype=tok.dtype)])
                tile_slot = torch.cat([tile_slot, torch.zeros(1, dtype=tile_slot.dtype)])
                tiles += 1
            table = lt.chunk_table(spots, 32, torch.device("cpu"))
            launch = lt.GroupLauncher(stack, table, r=16, chunk=32, block_m=16, config=cfg)
            delta = torch.full((len(rows), 64), float("nan"))
            launch(x[: len(rows)], delta, tok, tile_slot, tiles, 64, None)
            assert not torch.isnan(delta).any(), "unwritten output"
            outs.append(delta[: len(slots)])
        torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)

    # the two-launch path of graphed steps (shrink, then expand) equals the fused kernel,
    # padding tiles included, with one slice and with several, fp32 and fp16
    cfg.k_per_split = 1024
    for dtype, tol, fill in ((torch.float32, 1e-5, 1), (torch.float32, 1e-5, 132), (torch.float16, 2e-2, 132)):
        mods = [("l.q_proj", 300, 200), ("l.k_proj", 300, 24), ("l.v_proj", 300, 24)]
        layout = SlotLayout(mods, r=16)
        stack = (torch.randn(4, layout.numel) * 0.3).to(dtype)
        stack[0] = 0
        spots = [(layout.spots[n].a_off, layout.spots[n].b_off, o) for n, _, o in mods]
        rows = [1, 2, 1, 3, 0] + [2] * 17 + [0] * 10  # 5 tiles -> a graph for 8
        bufs = StaticPlanBuffers(32, torch.device("cpu"))
        assert bufs.write(rows) == 8
        tok, tile_slot, tiles = bufs.plan(1).tiles(1)
        x = torch.randn(len(rows), 300).to(dtype)
        fused = torch.full((len(rows), 248), float("nan"), dtype=dtype)
        table = lt.chunk_table(spots, 64, torch.device("cpu"))
        lt.GroupLauncher(stack, table, r=16, chunk=64, block_m=16, config=cfg)(
            x, fused, tok, tile_slot, tiles, 248, None
        )
        lt.SplitLauncher.fill = fill
        lt.SplitLauncher.expand_cols = 128 if fill == 1 else 256  # 2 blocks a program
        split = lt.SplitLauncher(stack, spots, r=16, block_m=16, device=torch.device("cpu"), config=cfg)
        assert split.plan(300, tiles)[0] == (1 if fill == 1 else 3)
        two = torch.full((len(rows), 248), float("nan"), dtype=dtype)
        split(x, two, tok, tile_slot, tiles)
        assert not torch.isnan(two).any(), "unwritten output"
        torch.testing.assert_close(two.float(), fused.float(), atol=tol, rtol=tol)
        # added onto a base product: rows without an adapter keep it unchanged
        base = torch.randn(len(rows), 248).to(dtype)
        summed = base.clone()
        split(x, summed, tok, tile_slot, tiles, add=True)
        torch.testing.assert_close(summed.float(), (base + fused).float(), atol=tol, rtol=tol)
        no_adapter = torch.tensor(rows) == 0
        assert torch.equal(summed[no_adapter], base[no_adapter])
        # one row per program (rows with slot 0 read nothing and write zeros)
        lt.RowLauncher.fill = 264 if fill == 1 else 1
        lt.RowLauncher.block_k = 128 if fill == 1 else 512  # 3 slices, or 1 step of 512
        by_row = lt.RowLauncher(stack, spots, r=16, device=torch.device("cpu"), config=cfg)
        assert by_row.plan(300, len(rows))[0] == (3 if fill == 1 else 1)
        for per in (1, 4, 64):  # rows an expand program serves (64: more than the batch)
            lt.RowLauncher.rows_per_program = per
            three = torch.full((len(rows), 248), float("nan"), dtype=dtype)
            by_row(x, three, torch.tensor(rows))
            assert not torch.isnan(three).any(), "unwritten output"
            torch.testing.assert_close(three.float(), fused.float(), atol=tol, rtol=tol)
            assert (three[no_adapter] == 0).all()
            summed = base.clone()
            by_row(x, summed, torch.tensor(rows), add=True)
            torch.testing.assert_close(summed.float(), (base + fused).float(), atol=tol, rtol=tol)
            assert torch.equal(summed[no_adapter], base[no_adapter])
    print("interpreted ok")
    """
)


def test_padding_tiles_of_a_graph_write_nothing_in_the_triton_interpreter(tmp_path):
    """Also: the two-launch tile path and the one-row-per-program path equal the fused
    kernel."""
    pytest.importorskip("triton")
    script = tmp_path / "interp.py"
    script.write_text(_INTERPRETED)
    proc = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "interpreted ok" in proc.stdout


def test_graphed_steps_take_rows_when_most_tile_places_would_be_padding():
    from loraroute.agents.lora import decode_kernel_for

    # 32 decode rows: 1 and 8 distinct adapters fill 2 and 8 tiles; 9-16 distinct fill 16
    assert decode_kernel_for("auto", 32, 32, 2) == "tiles"
    assert decode_kernel_for("auto", 32, 32, 8) == "tiles"
    assert decode_kernel_for("auto", 32, 32, 16) == "rows"
    assert decode_kernel_for("auto", 32, 32, 32) == "rows"
    assert decode_kernel_for("auto", 4, 4, 4) == "rows"
    # prefill-sized inputs (several tokens a row) always use tiles; a forced choice holds
    assert decode_kernel_for("auto", 64, 32, 32) == "tiles"
    assert decode_kernel_for("rows", 64, 32, 32) == "tiles"
    assert decode_kernel_for("rows", 32, 32, 2) == "rows"
    assert decode_kernel_for("tiles", 32, 32, 32) == "tiles"


def test_decode_launchers_declare_only_the_alignment_their_offsets_have():
    """The kernels tell the compiler that A/B offsets and column starts are multiples of
    ``align`` elements (16-byte vectors at 8 bf16); a wrong claim would misread weights."""
    from loraroute.agents.lora import launchers as lt  # imports without triton too

    cpu = torch.device("cpu")
    flat = torch.zeros(2, 4096)

    def align(members, cls=lt.RowLauncher):
        return cls(flat, members, r=16, device=cpu).align

    assert align([(0, 256, 512), (768, 1024, 256)]) == 16
    assert align([(0, 24, 512)]) == 8  # the B offset
    assert align([(0, 256, 40), (16, 512, 32)]) == 8  # the second module's delta column, 40
    assert align([(0, 3, 16)]) == 1
    # the tile kernels are not told (measured slower end to end with the hints)
    assert lt.SplitLauncher(flat, [(0, 256, 512)], r=16, block_m=16, device=cpu).align == 1
