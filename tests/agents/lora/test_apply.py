"""The grouped mixed-adapter LoRA apply, on CPU: torch path, Triton kernel (interpreter), layout."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from loraroute.agents.lora import AdapterWeights, SlotLayers
from loraroute.agents.lora.layout import SlotLayout


class _Attn(nn.Module):
    def __init__(self, h: int):
        super().__init__()
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, h // 2, bias=False)
        self.v_proj = nn.Linear(h, h // 2, bias=True)  # a bias, to cover that path
        self.o_proj = nn.Linear(h, h, bias=False)


class _Mlp(nn.Module):
    def __init__(self, h: int):
        super().__init__()
        self.gate_proj = nn.Linear(h, 2 * h, bias=False)
        self.up_proj = nn.Linear(h, 2 * h, bias=False)
        self.down_proj = nn.Linear(2 * h, h, bias=False)


class _Block(nn.Module):
    def __init__(self, h: int = 32):
        super().__init__()
        self.self_attn = _Attn(h)
        self.mlp = _Mlp(h)


def _weights(model: nn.Module, seed: int, r: int, targets: tuple[str, ...], alpha: float):
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            a = torch.randn(r, mod.in_features, generator=gen)
            b = torch.randn(mod.out_features, r, generator=gen)
            modules[name] = (a, b, alpha / r)
    return AdapterWeights(
        path=__import__("pathlib").Path(f"/mem/{seed}"),
        digest=f"sha256:{seed:064x}",
        rank=r,
        alpha=alpha,
        target_modules=list(targets),
        modules=modules,
    )


def _reference(mod: nn.Linear, name: str, x: torch.Tensor, row_weights: list) -> torch.Tensor:
    """Per row: base(x) + (x A^T B^T) * scaling, straight from the adapter weights."""
    out = []
    for i, w in enumerate(row_weights):
        y = mod(x[i])
        if w is not None and name in w.modules:
            a, b, s = w.modules[name]
            y = y + (x[i] @ a.t()) @ b.t() * s
        out.append(y)
    return torch.stack(out)


@pytest.fixture
def block():
    torch.manual_seed(0)
    return _Block().eval()


def test_layout_groups_siblings_and_packs_prescaled_b(block):
    names = [
        (n, m.in_features, m.out_features)
        for n, m in block.named_modules()
        if isinstance(m, nn.Linear)
    ]
    layout = SlotLayout(names, r=8)
    assert layout.groups == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"],
        ["mlp.down_proj"],
    ]
    w = _weights(block, 1, 4, ("q_proj", "v_proj"), alpha=8)
    flat = torch.full((layout.numel,), float("nan"))
    ranks = layout.pack(w, flat)
    assert ranks == {"self_attn.q_proj": 4, "self_attn.v_proj": 4}
    a, b, s = w.modules["self_attn.v_proj"]
    assert torch.equal(layout.a_view(flat, "self_attn.v_proj")[:4], a)
    assert torch.allclose(layout.b_view(flat, "self_attn.v_proj")[:, :4], b * s)
    assert layout.a_view(flat, "self_attn.v_proj")[4:].abs().sum() == 0  # zero padding
    assert layout.a_view(flat, "self_attn.k_proj").abs().sum() == 0  # not targeted
    # the group's A matrices are one contiguous [3r, in] block
    g = layout.group_a_view(flat, 0)
    assert g.shape == (3 * 8, 32) and torch.equal(g[16:20], a)


def test_mixed_ranks_and_targets_match_reference(block):
    layers = SlotLayers(block, num_slots=4, r_max=4, backend="torch")
    ws = [
        _weights(block, 1, 2, ("q_proj", "k_proj", "v_proj", "o_proj"), alpha=4),
        _weights(block, 2, 8, ("q_proj", "v_proj", "gate_proj", "down_proj"), alpha=16),
        _weights(block, 3, 16, ("k_proj", "up_proj", "down_proj"), alpha=8),
    ]
    for slot, w in enumerate(ws, start=1):
        layers.write(slot, w)
    assert layers.layout.r == 16  # grew to the largest rank
    slots = [1, 0, 2, 3, 2, 1]
    rows = [None if s == 0 else ws[s - 1] for s in slots]
    x = torch.randn(len(slots), 3, 32)
    h = torch.randn(len(slots), 3, 64)
    attn, mlp = block.self_attn, block.mlp
    with torch.no_grad(), layers.context.use(slots):
        got = {
            "q": attn.q_proj(x),
            "k": attn.k_proj(x),
            "v": attn.v_proj(x),
            "o": attn.o_proj(x),
            "gate": mlp.gate_proj(x),
            "up": mlp.up_proj(x),
            "down": mlp.down_proj(h),
        }
        for key, name, inp in [
            ("q", "self_attn.q_proj", x),
            ("k", "self_attn.k_proj", x),
            ("v", "self_attn.v_proj", x),
            ("o", "self_attn.o_proj", x),
            ("gate", "mlp.gate_proj", x),
            ("up", "mlp.up_proj", x),
            ("down", "mlp.down_proj", h),
        ]:
            ref = _reference(layers.layers[name].base, name, inp, rows)
            torch.testing.assert_close(got[key], ref, atol=1e-4, rtol=1e-5)
    # one adapter for the whole batch takes the two-matmul path; same numbers
    with torch.no_grad(), layers.context.use([2] * 3):
        ref = _reference(
            layers.layers["self_attn.v_proj"].base, "self_attn.v_proj", x[:3], [ws[1]] * 3
        )
        torch.testing.assert_close(attn.v_proj(x[:3]), ref, atol=1e-4, rtol=1e-5)


def test_group_reuse_is_safe_for_other_inputs_and_repeated_calls(block):
    layers = SlotLayers(block, num_slots=3, backend="torch")
    w = _weights(block, 4, 4, ("q_proj", "k_proj", "v_proj"), alpha=8)
    layers.write(1, w)
    attn = block.self_attn
    x, other = torch.randn(2, 1, 32), torch.randn(2, 1, 32)
    with torch.no_grad(), layers.context.use([1, 0]):
        q1 = attn.q_proj(x)
        k_other = attn.k_proj(other)  # not the input q saw: computed afresh
        q2 = attn.q_proj(x)  # q twice on one input: no double add
        v = attn.v_proj(x)
        for name, got, inp in [
            ("self_attn.q_proj", q1, x),
            ("self_attn.q_proj", q2, x),
            ("self_attn.k_proj", k_other, other),
            ("self_attn.v_proj", v, x),
        ]:
            ref = _reference(layers.layers[name].base, name, inp, [w, None])
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)
    with torch.no_grad():  # outside a context: the bare base
        torch.testing.assert_close(attn.q_proj(x), layers.layers["self_attn.q_proj"].base(x))


def test_relayout_for_new_modules_keeps_loaded_adapters(block):
    layers = SlotLayers(block, num_slots=3, backend="torch")
    first = _weights(block, 5, 4, ("q_proj",), alpha=8)
    layers.write(1, first)
    x = torch.randn(2, 1, 32)
    with torch.no_grad(), layers.context.use([1, 1]):
        before = block.self_attn.q_proj(x)
    old = layers.layout
    layers.write(2, _weights(block, 6, 8, ("gate_proj", "down_proj"), alpha=8))
    assert layers.layout is not old and "mlp.gate_proj" in layers.layout
    with torch.no_grad(), layers.context.use([1, 2]):
        after = block.self_attn.q_proj(x)
    torch.testing.assert_close(after[0], before[0])
    torch.testing.assert_close(after[1], layers.layers["self_attn.q_proj"].base(x[1]))
    packed = layers.pack(first)
    assert packed.layout is layers.layout
    assert layers.repack(packed) is packed


_INTERPRETED = textwrap.dedent(
    """
    import os, sys, torch
    assert os.environ["TRITON_INTERPRET"] == "1"
    from loraroute.agents.lora import launchers as lt
    from loraroute.agents.lora import LoraKernelConfig
    cfg = LoraKernelConfig(interpret=True)
    from loraroute.agents.lora.layout import SlotLayout
    from loraroute.agents.lora import ForwardPlan, SlotLayers
    sys.path.insert(0, sys.argv[1])
    from test_apply import _Block, _weights, _reference

    # 1. the kernel alone, fp32 and fp16, several chunks, a slot with 20 tokens (two tiles)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 2e-2)):
        torch.manual_seed(0)
        mods = [("l.q_proj", 48, 64), ("l.k_proj", 48, 32), ("l.v_proj", 48, 40)]
        layout = SlotLayout(mods, r=16)
        stack = (torch.randn(5, layout.numel) * 0.3).to(dtype)
        stack[0] = 0
        slots = [1, 3, 1, 0, 4] + [2] * 20
        x = torch.randn(len(slots), 48).to(dtype)
        tok, tile_slot, tiles = ForwardPlan(1, slots, None, torch.device("cpu")).tiles(1)
        spots = [(layout.spots[n].a_off, layout.spots[n].b_off, o) for n, _, o in mods]
        delta = torch.full((len(slots), 136), float("nan"), dtype=dtype)
        table = lt.chunk_table(spots, 32, torch.device("cpu"))
        launch = lt.GroupLauncher(stack, table, r=16, chunk=32, block_m=16, config=cfg)
        launch(x, delta, tok, tile_slot, tiles, 136, None)
        ref = []
        for i, s in enumerate(slots):
            parts = []
            for n, _, _ in mods:
                a = layout.a_view(stack[s], n).float()
                b = layout.b_view(stack[s], n).float()
                parts.append((x[i].float() @ a.t()) @ b.t())
            ref.append(torch.cat(parts))
        ref = torch.stack(ref)
        err = ((delta.float() - ref).norm() / ref.norm()).item()
        assert not torch.isnan(delta).any(), "unwritten output"
        assert err < tol, (dtype, err)

    # 1b. split-K (the shrink cut into slices, summed by the last slice of each tile):
    # the same result as one slice, bit for bit on repeats, counters back to zero
    torch.manual_seed(2)
    mods = [("l.down_proj", 300, 40)]
    layout = SlotLayout(mods, r=16)
    stack = torch.randn(3, layout.numel) * 0.3
    slots = [1, 2, 1, 0] + [2] * 18
    x = torch.randn(len(slots), 300)
    tok, tile_slot, tiles = ForwardPlan(1, slots, None, torch.device("cpu")).tiles(1)
    spots = [(layout.spots["l.down_proj"].a_off, layout.spots["l.down_proj"].b_off, 40)]
    outs = {}
    for per in (0, 128, 128):
        cfg.k_per_split = per
        launch = lt.GroupLauncher(
            stack, lt.chunk_table(spots, 32, torch.device("cpu")), r=16, chunk=32, block_m=16,
            config=cfg,
        )
        assert launch.split(300, tiles) == (1 if per == 0 else 3)
        delta = torch.full((len(slots), 40), float("nan"))
        launch(x, delta, tok, tile_slot, tiles, 40, None)
        assert not torch.isnan(delta).any(), "unwritten output"
        if per:
            assert launch._count is not None and int(launch._count.abs().sum()) == 0
            if per in outs:
                assert torch.equal(outs[per], delta), "split-K is not deterministic"
        outs.setdefault(per, delta)
    torch.testing.assert_close(outs[128], outs[0], atol=1e-4, rtol=1e-4)
    cfg.k_per_split = 1024

    # 2. the whole grouped apply with the Triton backend equals the torch backend
    torch.manual_seed(1)
    results = {}
    for backend in ("triton", "torch"):
        torch.manual_seed(1)
        block = _Block().eval()
        layers = SlotLayers(block, num_slots=4, r_max=4, backend=backend, config=LoraKernelConfig(interpret=True))
        ws = [
            _weights(block, 1, 2, ("q_proj", "k_proj", "v_proj", "o_proj"), alpha=4),
            _weights(block, 2, 8, ("q_proj", "v_proj", "gate_proj", "down_proj"), alpha=16),
            _weights(block, 3, 16, ("k_proj", "up_proj", "down_proj"), alpha=8),
        ]
        for slot, w in enumerate(ws, start=1):
            layers.write(slot, w)
        if backend == "triton":  # q, k, v weights became rows of one tensor (one GEMM)
            qkv = layers.groups[0]
            assert qkv.w_cat_t is not None and qkv.w_cat_t.shape == (32, 64)
            assert block.self_attn.k_proj.base.weight.data_ptr() == qkv.w_cat_t.data_ptr() + 32 * 32 * 4
        x = torch.randn(6, 2, 32, generator=torch.Generator().manual_seed(9))
        outs = []
        with torch.no_grad():
            for slots in ([1, 0, 2, 3, 2, 1], [3] * 6):
                with layers.context.use(slots):
                    a = block.self_attn
                    outs += [a.q_proj(x), a.k_proj(x), a.v_proj(x), block.mlp.up_proj(x)]
        results[backend] = outs
    for got, want in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    # 3. int8 slots: the fused kernel (eager) and a decode step's two launches, on tiles and
    # on rows, dequantize within the quantization's error of the fp32 slots' torch path
    from loraroute.agents.lora import StaticPlanBuffers
    outs = {}
    for label, backend, weights in (("fp32", "torch", "model"), ("int8", "triton", "int8")):
        torch.manual_seed(1)
        block = _Block().eval()
        layers = SlotLayers(block, num_slots=4, r_max=4, backend=backend,
                            config=LoraKernelConfig(interpret=True), adapter_weights=weights)
        for slot, w in enumerate(ws, start=1):
            layers.write(slot, w)
        if weights == "int8":
            assert layers.stack.dtype == torch.int8 and layers.scales is not None
            layers.config.k_per_split = 16  # the eager kernel's split-K sums, then scales
        x = torch.randn(6, 32, generator=torch.Generator().manual_seed(9))
        slots = [1, 0, 2, 3, 2, 1]
        got = []
        with torch.no_grad():
            with layers.context.use(slots):
                got.append(block.self_attn.q_proj(x))
                got.append(block.mlp.down_proj(torch.randn(6, 64, generator=torch.Generator().manual_seed(3))))
            buffers = StaticPlanBuffers(6, torch.device("cpu"))
            buffers.write(slots)
            for kernel in ("tiles", "rows"):
                layers.config.decode_kernel = kernel
                with layers.context.use_static(buffers):
                    got.append(block.self_attn.v_proj(x))
                    got.append(block.mlp.up_proj(x))
        outs[label] = got
    for got, want in zip(outs["int8"], outs["fp32"]):
        err = ((got - want).norm() / want.norm()).item()
        assert err < 2e-2, err
    print("interpreted ok")
    """
)


def test_triton_kernel_in_interpreter_matches_torch_path(tmp_path):
    pytest.importorskip("triton")
    script = tmp_path / "interp.py"
    script.write_text(_INTERPRETED)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    here = os.path.dirname(__file__)
    proc = subprocess.run(
        [sys.executable, str(script), here],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "interpreted ok" in proc.stdout


def test_int8_slots_hold_quantized_adapters_within_their_rounding(block):
    """int8 layouts: values and one scale per rank and module; packing, re-laying out and
    switching a live stack between int8 and the model's dtype keep every adapter (to int8's
    rounding), and the memory halves against bf16."""
    from loraroute.agents.lora.layout import quantize

    a = torch.randn(4, 64)
    b = torch.randn(48, 4) * 0.1
    a_q, b_q = torch.empty(4, 64, dtype=torch.int8), torch.empty(48, 4, dtype=torch.int8)
    scales = quantize(a, b, a_q, b_q)
    assert a_q.abs().max() == 127 and b_q.abs().max() == 127  # absmax scaling
    x = torch.randn(5, 64)
    want = (x @ a.t()) @ b.t()
    got = ((x @ a_q.float().t()) * scales) @ b_q.float().t()
    assert ((got - want).norm() / want.norm()) < 1e-2
    zero = torch.zeros(2, 8)
    assert quantize(zero, torch.zeros(8, 2), torch.empty(2, 8, dtype=torch.int8),
                    torch.empty(8, 2, dtype=torch.int8)).eq(0).all()  # fmt: skip

    w1 = _weights(block, 1, 4, ("q_proj", "v_proj", "down_proj"), alpha=8)
    w2 = _weights(block, 2, 8, ("k_proj", "up_proj"), alpha=8)
    fp = SlotLayers(block, num_slots=3, r_max=8, backend="torch")
    with pytest.raises(ValueError, match="Triton"):
        SlotLayers(block, num_slots=3, backend="torch", adapter_weights="int8")
    with pytest.raises(ValueError, match="'model' or 'int8'"):
        SlotLayers(block, num_slots=3, backend="torch", adapter_weights="fp4")
    for slot, w in ((1, w1), (2, w2)):
        fp.write(slot, w)
    packed = fp.pack(w1)
    assert packed.scales is None
    layout = fp.layout
    q_layout = SlotLayout([(n, s.in_features, s.out_features) for n, s in layout.spots.items()],
                          layout.r, quantized=True)  # fmt: skip
    flat = torch.empty(q_layout.numel, dtype=torch.int8)
    q_scales = torch.empty(q_layout.n_scales)
    q_layout.copy_from(layout, packed.flat, flat, None, q_scales)  # quantize
    back = torch.empty(layout.numel)
    layout.copy_from(q_layout, flat, back, q_scales, None)  # and back

    def product(lay, values, sc, name):  # what a module's delta is made of: A^T B^T
        a_f, b_f = lay.float_views(values, sc, name)
        return a_f.t() @ b_f.t()

    for name in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"):
        a_w, b_w, s = w1.modules[name]
        ref = a_w.t() @ (b_w * s).t()
        for lay, values, sc in ((q_layout, flat, q_scales), (layout, back, None)):
            assert ((product(lay, values, sc, name) - ref).norm() / ref.norm()) < 1e-2
    # a live stack switched to int8 and back: the same adapters, to int8's rounding
    fp.config.interpret = True  # the Triton backend, interpreted, reads int8 slots
    fp.backend = "triton"
    before = fp.slot_bytes()
    fp.adapter_weights = "int8"
    assert fp.stack.dtype == torch.int8 and fp.scales is not None
    assert fp.slot_bytes() < 0.3 * before  # fp32 values -> int8 + scales
    fp.adapter_weights = "model"
    assert fp.stack.dtype == torch.float32 and fp.scales is None
    for slot, w in ((1, w1), (2, w2)):
        for name, (a_w, b_w, s) in w.modules.items():
            ref = a_w.t() @ (b_w * s).t()
            got = product(fp.layout, fp.stack[slot], None, name)
            assert ((got - ref).norm() / ref.norm()) < 1e-2
    with pytest.raises(ValueError, match="Triton"):
        fp.adapter_weights = "int8"
        fp.backend = "torch"


def test_l2_hint_ranges_cover_each_next_group_once_in_forward_order(block):
    """Each group hints the next group whole, or ``l2_prefetch`` KiB past its end where
    that is more, minus what the forward already hinted; the last group hints nothing."""
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    layers = SlotLayers(block, num_slots=3, r_max=4, backend="torch")
    layers.write(1, _weights(block, 1, 4, targets, alpha=8))
    layout, groups = layers.layout, layers.groups
    ends = [*layout.group_a_off[1:], layout.numel]
    assert [g.index for g in groups] == [0, 1, 2, 3]
    # only q/k/v's group hints when the hints run beside attention
    assert [g.feeds_attention for g in groups] == [True, False, False, False]
    assert groups[0].ahead(0) == (0, 0)  # off by default
    layers.config.l2_prefetch = 1  # 1 KiB: 256 fp32 elements, less than any next group
    fetched, ranges = 0, []
    for group in groups:
        start, stop = group.ahead(fetched)
        ranges.append((start, stop))
        fetched = max(fetched, stop)
    assert ranges[:3] == [(ends[0], ends[1]), (ends[1], ends[2]), (ends[2], ends[3])]
    assert ranges[3][1] <= ranges[3][0]  # nothing after the last group
    layers.config.l2_prefetch = 64  # more than the rest of the slot: clipped to it
    assert groups[0].ahead(0) == (ends[0], layout.numel)
    assert groups[1].ahead(layout.numel)[1] <= groups[1].ahead(layout.numel)[0]
