"""The forward of a Llama-family decoder over a ragged batch and the paged KV cache.

:class:`PagedModel` runs the ``transformers`` model's own modules (embeddings, projections with
their LoRA wrappers, norms' weights, ``lm_head``) in its own order: the tokens of every
sequence in the step are one flat ``[tokens, hidden]`` batch, each with its position and
adapter slot (the LoRA layers group them by adapter), and the parts between the GEMMs run as
the fused kernels of :mod:`.ops`. Only the last token of each sequence that samples goes
through the final norm and ``lm_head``.

:class:`DecodeGraphs` records steps that only decode (one token per sequence) as CUDA graphs,
one per row bucket and LoRA tile count, over static input buffers; the block tables are
device tensors that the graph reads, so a replay copies only token ids, positions and table
rows. Steps with prefill chunks run eagerly: their GEMMs are large and launch time is small
beside them. In a decode step the LoRA deltas, computed beside the base GEMMs, are not added
by adds of their own: the fused op that reads each product next adds its delta
(``LoraKernelConfig.fused_adds``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ...lora import AdapterContext, SlotLoraLinear, StaticPlanBuffers, take_delta
from ...lora.fuse import fuse_rows, rows_view
from ..graphs import GraphedSteps, StepGraphs
from .kv_cache import KVCache
from .ops import Ops, StepMeta, attention_blocks, slot_mapping

logger = logging.getLogger(__name__)

MODEL_TYPES = ("llama", "mistral", "qwen2")
MAX_GRAPHS = 48


def supports_paged(model: Any) -> str | None:
    """Why ``model`` cannot run on the paged path (``None`` when it can): a Llama-shaped
    decoder (Llama, Mistral, Qwen2) with full attention, SiLU MLP and position-independent
    rotary frequencies."""
    cfg = model.config
    kind = getattr(cfg, "model_type", None)
    if kind not in MODEL_TYPES:
        return f"model type {kind!r} (the paged path runs {', '.join(MODEL_TYPES)})"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return "sliding-window attention"
    types = getattr(cfg, "layer_types", None)
    if types and any(t != "full_attention" for t in types):
        return f"layer types {sorted(set(types))}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    rope = getattr(cfg, "rope_scaling", None) or getattr(cfg, "rope_parameters", None) or {}
    rope_type = (
        rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    )
    if rope_type in ("dynamic", "longrope"):
        return f"rope type {rope_type!r} (its frequencies depend on the sequence length)"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
        return "no model.layers / lm_head"
    layer = inner.layers[0]
    for path in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj",
                 "input_layernorm", "post_attention_layernorm"):  # fmt: skip
        try:
            layer.get_submodule(path)
        except AttributeError:
            return f"no {path} in its decoder layers"
    if hasattr(layer.self_attn, "q_norm"):
        return "q/k norms in attention"
    return None


def _base(module: nn.Module) -> Any:
    """The plain ``nn.Linear`` of a (possibly LoRA-wrapped) projection."""
    return module.base if isinstance(module, SlotLoraLinear) else module


class PagedModel:
    """One model's forward over :class:`~.ops.StepMeta` batches (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        context: AdapterContext,
        cache: KVCache,
        *,
        max_positions: int,
        triton: bool,
    ):
        cfg = model.config
        self.model = model
        self.inner = model.model
        self.context = context
        self.cache = cache
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.groups = self.heads // self.kv_heads
        self.eps = float(cfg.rms_norm_eps)
        self.scale = float(getattr(self.inner.layers[0].self_attn, "scaling", self.head_dim**-0.5))
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.ops = Ops(triton=triton, block_size=cache.block_size)
        self.cos, self.sin = self._rotary(max_positions)
        self._fused: dict[tuple, tuple[torch.Tensor, torch.Tensor | None] | None] = {}
        for layer in self.inner.layers:  # one GEMM for q/k/v and one for gate/up
            attn, mlp = layer.self_attn, layer.mlp
            for group in ((attn.q_proj, attn.k_proj, attn.v_proj), (mlp.gate_proj, mlp.up_proj)):
                fuse_rows([_base(m) for m in group])

    def _rotary(self, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of every position, ``[positions, head_dim]``, from the model's own rotary
        module (its scaling included), in the model's dtype as its forward uses them."""
        x = torch.zeros(1, dtype=self.dtype, device=self.device)
        pos = torch.arange(positions, device=self.device)[None]
        with torch.inference_mode():
            cos, sin = self.inner.rotary_emb(x, pos)
        return cos[0].contiguous(), sin[0].contiguous()

    # -- the forward ---------------------------------------------------------------------
    def _project(self, modules: tuple[nn.Module, ...], x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of linear layers that read ``x``: one GEMM over their fused weights
        when no adapter runs in this forward, else each module (with its LoRA)."""
        if self.context.plan is None:
            fused = self._fused_weight(modules)
            if fused is not None:
                w, bias = fused
                out = torch.mm(x, w.t()) if bias is None else torch.addmm(bias, x, w.t())
                cols, outs = 0, []
                for m in modules:
                    width = _base(m).weight.shape[0]
                    outs.append(out[:, cols : cols + width])
                    cols += width
                return outs
        return [m(x) for m in modules]

    def _fused_weight(self, modules: tuple[nn.Module, ...]) -> tuple | None:
        bases = [_base(m) for m in modules]
        key = tuple(b.weight.data_ptr() for b in bases)
        if key not in self._fused:
            w = rows_view([b.weight for b in bases])
            bias = None
            if w is not None and any(b.bias is not None for b in bases):
                if not all(b.bias is not None for b in bases):
                    w = None
                else:
                    bias = torch.cat([b.bias for b in bases])
            self._fused[key] = None if w is None else (w, bias)
        return self._fused[key]

    def forward(
        self, ids: torch.Tensor, meta: StepMeta, sample: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits ``[samples, vocab]`` of the tokens at ``sample`` (``None``: every token);
        every token's keys and values land in the cache."""
        ops, cache = self.ops, self.cache
        plan = self.context.plan
        if plan is not None:  # graphed decode: each LoRA delta is added by the op after
            plan.defer = plan.graphed and ops.triton and self.context.config.fused_adds
        h = self.inner.embed_tokens(ids)
        residual: torch.Tensor | None = None
        delta: torch.Tensor | None = None  # of the last down projection
        for i, layer in enumerate(self.inner.layers):
            x, residual = ops.add_rmsnorm(
                h, residual, layer.input_layernorm.weight, self.eps, delta
            )
            attn = layer.self_attn
            qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
            q, k, v = self._project(qkv, x)
            kc, vc = cache.k[i], cache.v[i]
            deltas = tuple(take_delta(m) for m in qkv)
            q = ops.rope_store(q, k, v, self.cos, self.sin, meta, kc, vc, deltas)
            h = attn.o_proj(ops.attention(q, kc, vc, meta, self.scale))
            x, residual = ops.add_rmsnorm(
                h, residual, layer.post_attention_layernorm.weight, self.eps,
                take_delta(attn.o_proj),
            )  # fmt: skip
            mlp = layer.mlp
            gate, up = self._project((mlp.gate_proj, mlp.up_proj), x)
            act = ops.silu_mul(gate, up, (take_delta(mlp.gate_proj), take_delta(mlp.up_proj)))
            h = mlp.down_proj(act)
            delta = take_delta(mlp.down_proj)
        if sample is not None:
            h, residual = h.index_select(0, sample), residual.index_select(0, sample)  # type: ignore[union-attr]
            delta = None if delta is None else delta.index_select(0, sample)
        x, _ = ops.add_rmsnorm(h, residual, self.inner.norm.weight, self.eps, delta)
        return self.model.lm_head(x)


def bucket(rows: int, cap: int) -> int:
    """The graph size that serves ``rows``: a power of two up to 32, then multiples of 32."""
    b = 1 << max(rows - 1, 0).bit_length() if rows <= 32 else -(-rows // 32) * 32
    return min(b, cap)


class DecodeGraphs(GraphedSteps):
    """Decode-only steps of one :class:`PagedModel` over static buffers, recorded as CUDA
    graphs when ``graphs`` (else run eagerly on the same buffers: the CPU tests)."""

    def __init__(self, runner: PagedModel, tables: torch.Tensor, *, max_rows: int, graphs: bool):
        self.runner = runner
        self.tables = tables
        self.max_rows = max_rows
        self.device = runner.device
        self._graphs = graphs and self.device.type == "cuda"
        # token ids, positions, table rows, tokens per row (1, or 0 for padding rows)
        self.inputs = torch.zeros(4, max_rows, dtype=torch.long, device=self.device)
        self.starts = torch.arange(max_rows, dtype=torch.long, device=self.device)
        self.plan_buffers = StaticPlanBuffers(max_rows, self.device)
        self.block_q, self.block_m = attention_blocks(runner.groups, decode=True)
        self._steps = StepGraphs(
            self.device, self._forward, limit=MAX_GRAPHS, what="paged decode step"
        )
        self._epoch: tuple = ()

    def step(
        self, tokens: list[int], positions: list[int], rows: list[int], slots: list[int]
    ) -> torch.Tensor:
        """Logits ``[len(tokens), vocab]``: one token per sequence (``rows``: their block
        table rows, ``slots``: their adapter slots)."""
        n = len(tokens)
        b = bucket(n, self.max_rows)
        pad = b - n
        host = torch.tensor(
            [tokens + [0] * pad, positions + [0] * pad, rows + [0] * pad, [1] * n + [0] * pad],
            dtype=torch.long,
        )
        self.inputs[:, :b].copy_(host)
        row_slots = slots + [0] * pad
        lora = any(row_slots)
        tiles = self.plan_buffers.write(row_slots) if lora else 0
        epoch = (self.runner.context.epoch,)
        if epoch != self._epoch:
            self.drop()
            self._epoch = epoch
        if not self.graphs:
            return self._forward(b, lora)[:n]
        key = (b, tiles if lora else -1)
        return self._steps.run(key, b, lora, self.runner.context.wait_copies)[:n]

    def _forward(self, b: int, lora: bool) -> torch.Tensor:
        ids, pos, rows, lens = (
            self.inputs[0, :b],
            self.inputs[1, :b],
            self.inputs[2, :b],
            self.inputs[3, :b],
        )
        runner = self.runner
        meta = StepMeta(
            positions=pos,
            slot_mapping=slot_mapping(self.tables, rows, pos, runner.cache.block_size),
            block_tables=self.tables,
            qb_seq=rows,
            qb_start=self.starts[:b],
            qb_len=lens,
            block_q=self.block_q,
            block_m=self.block_m,
        )
        if not runner.ops.triton:  # the PyTorch attention reads host-side lists
            host = self.inputs[:, :b].tolist()
            live = [i for i in range(b) if host[3][i]]
            meta.starts = live
            meta.lens = [1] * len(live)
            meta.ctx = [host[1][i] + 1 for i in live]
            meta.rows = [host[2][i] for i in live]
        with self.runner.context.use_static(self.plan_buffers if lora else None):
            return runner.forward(ids, meta, None)

    def drop(self) -> None:
        self._steps.drop()


__all__ = ["DecodeGraphs", "PagedModel", "bucket", "supports_paged"]
