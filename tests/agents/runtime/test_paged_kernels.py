"""The paged path's Triton kernels against its PyTorch operations, in Triton's interpreter
(fp32 and fp16: the interpreter's bf16 ``tl.dot`` is wrong, so bf16 is left to the ``gpu``
tests), and the whole paged engine with every kernel interpreted against the dense path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

_OPS = textwrap.dedent(
    """
    import torch
    from loraroute.agents.runtime.paged.ops import Ops, build_meta

    torch.manual_seed(0)

    def check(dtype, heads, kv, dim, bs=4):
        tri, ref = Ops(triton=True, block_size=bs), Ops(triton=False, block_size=bs)
        tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=6e-2, rtol=2e-2)
        x, r = torch.randn(5, 48, dtype=dtype), torch.randn(5, 48, dtype=dtype)
        w = torch.randn(48, dtype=dtype)
        for res in (None, r):
            (a, ra), (b, rb) = tri.add_rmsnorm(x, res, w, 1e-5), ref.add_rmsnorm(x, res, w, 1e-5)
            torch.testing.assert_close(a, b, **tol)
            torch.testing.assert_close(ra, rb)
            # a LoRA delta of x added first (with no residual it becomes the residual)
            d = torch.randn(5, 48, dtype=dtype)
            (a, ra) = tri.add_rmsnorm(x, res, w, 1e-5, d)
            (b, rb) = ref.add_rmsnorm(x, res, w, 1e-5, d)
            torch.testing.assert_close(a, b, **tol)
            torch.testing.assert_close(ra, rb)
            torch.testing.assert_close(rb, x + d if res is None else (x + d) + res)
        gu = torch.randn(5, 140, dtype=dtype)  # gate and up: column views of one product
        got = tri.silu_mul(gu[:, :70], gu[:, 70:])
        torch.testing.assert_close(got, ref.silu_mul(gu[:, :70], gu[:, 70:]), **tol)
        dgu = torch.randn(5, 140, dtype=dtype)  # their deltas: views of one delta buffer
        deltas = (dgu[:, :70], dgu[:, 70:])
        got = tri.silu_mul(gu[:, :70], gu[:, 70:], deltas)
        want = ref.silu_mul(gu[:, :70] + deltas[0], gu[:, 70:] + deltas[1])
        torch.testing.assert_close(got, want, **tol)
        torch.testing.assert_close(ref.silu_mul(gu[:, :70], gu[:, 70:], deltas), want)
        # three sequences in one step: a chunk of 7 after 5 cached tokens, one decode token
        # at context 9, a fresh prompt of 6; their blocks scattered over the cache
        blocks = 20
        history = torch.randn(2, blocks * bs, kv, dim, dtype=dtype)
        tables = torch.zeros(4, 8, dtype=torch.int32)
        tables[1, :3] = torch.tensor([5, 2, 9])
        tables[2, :3] = torch.tensor([1, 7, 3])
        tables[3, :2] = torch.tensor([11, 4])
        seqs = [(7, 12, 1), (1, 9, 2), (6, 6, 3)]
        cos, sin = torch.randn(16, dim, dtype=dtype), torch.randn(16, dim, dtype=dtype)
        qkv = torch.randn(14, (heads + 2 * kv) * dim, dtype=dtype)
        q, k, v = qkv.split([heads * dim, kv * dim, kv * dim], 1)
        dqkv = torch.randn_like(qkv)  # LoRA deltas of q, k, v: views of one buffer
        dq, dk, dv = dqkv.split([heads * dim, kv * dim, kv * dim], 1)
        for deltas in ((None, None, None), (dq, dk, dv)):
            outs = []
            caches = [(history[0].clone(), history[1].clone()) for _ in range(2)]
            for ops, (kc, vc) in zip((tri, ref), caches):
                meta = build_meta(seqs, tables, bs, heads // kv, torch.device("cpu"))
                qr = ops.rope_store(q, k, v, cos, sin, meta, kc, vc, deltas)
                outs.append((qr, ops.attention(qr, kc, vc, meta, dim**-0.5)))
            for got, want in zip(outs[0], outs[1]):
                torch.testing.assert_close(got, want, **tol)
            for got, want in zip(caches[0], caches[1]):
                torch.testing.assert_close(got, want, **tol)
        # the deltas are added before the rotation: the same as rotating q + dq
        kc, vc = history[0].clone(), history[1].clone()
        meta = build_meta(seqs, tables, bs, heads // kv, torch.device("cpu"))
        summed = ref.rope_store(q + dq, k + dk, v + dv, cos, sin, meta, kc, vc)
        torch.testing.assert_close(outs[1][0], summed)
        assert tri.launches == 10 and ref.launches == 0

    for dtype in (torch.float32, torch.float16):
        check(dtype, 4, 2, 16)  # 2 query heads per KV head
        check(dtype, 6, 2, 16)  # 3: a tile of 3-row groups, padded
        check(dtype, 3, 3, 32)  # 1
    print("ops ok")
    """
)

_ENGINE = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from loraroute.agents.lora import LoraGroup
    from loraroute.agents.runtime import scheduler as sm
    from loraroute.agents.runtime.engine import Engine
    from loraroute.agents.runtime.requests import SamplingParams
    from loraroute.settings import get_settings

    base, a, b, home = (Path(p) for p in sys.argv[1:5])
    settings = get_settings(home=home)
    assert settings.triton_interpret

    def run(**options):
        eng = Engine(base, settings=settings, device="cpu", max_resident=4, **options)
        eng.load_adapter_folder(a, name="a")
        eng.load_adapter_folder(b, name="b")
        eng.scheduler.eos_ids = set()
        logits, orig = {}, sm.choose_tokens

        def spy(step, rows):
            for i, row in enumerate(rows):
                logits[(row.handle.id % 1000, len(row.tokens))] = step[i].float().clone()
            return orig(step, rows)

        sm.choose_tokens = spy
        taken, take = [], LoraGroup.take

        def counted(group, member):  # deltas a decode step left to the fused ops
            delta = take(group, member)
            taken.append(delta is not None)
            return delta

        LoraGroup.take = counted
        gen = torch.Generator().manual_seed(0)
        reqs = [(9, "a", 6), (21, "b", 4), (5, None, 6)]
        with eng._model_lock:
            hs = [
                eng._submit_ids(torch.randint(3, 300, (n,), generator=gen).tolist(), ad,
                                SamplingParams(max_new_tokens=k))
                for n, ad, k in reqs
            ]
        out = [h.result(timeout=600).token_ids for h in hs]
        sm.choose_tokens = orig
        LoraGroup.take = take
        if options["kv_cache"] == "paged":  # decode steps: every delta added by a fused op
            assert sum(taken) > 0, taken
        paged = eng.scheduler.paged
        launches = paged.runner.ops.launches if paged is not None else 0
        first = hs[0].id % 1000
        eng.close()
        return out, {(i - first, n): v for (i, n), v in logits.items()}, launches

    want, want_logits, _ = run(kv_cache="dense", lora_backend="torch")
    got, got_logits, launches = run(
        kv_cache="paged", lora_backend="triton", kv_block_size=4, max_step_tokens=12
    )
    assert got == want, (got, want)
    assert set(got_logits) == set(want_logits)
    for key, value in want_logits.items():
        torch.testing.assert_close(got_logits[key], value, atol=1e-4, rtol=1e-4)
    assert launches > 0
    # int8 adapter weights: the same tokens, logits within the quantization's error (the
    # adapters themselves move these logits by more than their largest value)
    got8, got8_logits, _ = run(
        kv_cache="paged", lora_backend="triton", kv_block_size=4, max_step_tokens=12,
        adapter_weights="int8",
    )
    assert got8 == want, (got8, want)
    for key, value in want_logits.items():
        err = (got8_logits[key] - value).abs().max() / value.abs().max()
        assert err < 2e-2, (key, float(err))
    print("engine ok", launches)
    """
)


def _interpret(tmp_path, source: str, *args: str) -> str:
    pytest.importorskip("triton")
    script = tmp_path / "interp.py"
    script.write_text(source)
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_paged_kernels_equal_the_pytorch_operations_in_the_triton_interpreter(tmp_path):
    assert "ops ok" in _interpret(tmp_path, _OPS)


def test_the_paged_engine_with_every_kernel_interpreted_equals_the_dense_path(
    tmp_path, tiny_base, tiny_adapter_factory
):
    a = tiny_adapter_factory(1)
    b = tiny_adapter_factory(2, r=8, target_modules=("q_proj", "v_proj", "down_proj"))
    out = _interpret(tmp_path, _ENGINE, str(tiny_base), str(a), str(b), str(tmp_path / "home"))
    assert "engine ok" in out
