"""Where each module's LoRA matrices live inside one adapter slot.

Every slot is one flat region of ``numel`` elements. Modules are laid out group by group;
inside a group (modules that read the same input, such as ``q_proj``/``k_proj``/``v_proj``)
the A matrices (``[r, in]`` each, zero-padded to the layout's rank ``r``) come first and
back to back, so the whole group's shrink is one ``[members * r, in]`` matrix, then the B
matrices (``[out, r]`` each). The slot stack on the device is ``[num_slots, numel]``; a host
copy of one adapter (the CPU tier) is a ``[numel]`` tensor in the same layout, so moving an
adapter between tiers is a single contiguous copy.

B matrices are stored already multiplied by the module's LoRA scaling (``alpha / r``), so no
code path needs a separate scale.

A ``quantized`` layout stores A and B as int8 (half the bytes of bf16: twice the adapters in
the same memory, half the bytes a decode step reads per adapter), each rank row of A and rank
column of B with its own absmax scale. Both scales of rank ``j`` multiply the same shrink
output, ``t_j = x . A_j``, so a slot keeps their product, one float per rank and module
(``[n_scales]`` beside the ``[numel]`` values, at ``ModuleSpot.s_off``):
``delta = sum_j (s_a[j] * s_b[j] * (x . Aq_j)) * Bq[:, j]``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from .weights import AdapterWeights

# Sibling modules that read the same input tensor in common architectures (Llama, Mistral,
# Qwen, Mixtral experts, BERT). Members missing from a model simply form a smaller group.
INPUT_GROUPS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj"),
    ("gate_proj", "up_proj"),
    ("w1", "w3"),
    ("query", "key", "value"),
)

_versions = itertools.count(1)


@dataclass(frozen=True)
class ModuleSpot:
    """One module's place in a slot: ``A`` at ``a_off`` (``[r, in]``), ``B`` at ``b_off``,
    and (quantized layouts) its ``r`` rank scales at ``s_off`` of the slot's scales."""

    name: str
    group: int
    member: int
    in_features: int
    out_features: int
    a_off: int
    b_off: int
    s_off: int = 0


class SlotLayout:
    """An immutable layout for a set of modules at rank ``r`` (see the module docstring)."""

    def __init__(self, modules: list[tuple[str, int, int]], r: int, *, quantized: bool = False):
        """``modules``: ``(name, in_features, out_features)`` in model order; ``quantized``:
        int8 values with rank scales (see the module docstring)."""
        self.r = r
        self.quantized = quantized
        self.version = next(_versions)
        self.groups: list[list[str]] = _group(modules)
        dims = {name: (fin, fout) for name, fin, fout in modules}
        spots: dict[str, ModuleSpot] = {}
        offset = 0
        self.group_a_off: list[int] = []
        for g, members in enumerate(self.groups):
            self.group_a_off.append(offset)
            a_offs = []
            for name in members:
                a_offs.append(offset)
                offset += r * dims[name][0]
            for m, name in enumerate(members):
                fin, fout = dims[name]
                spots[name] = ModuleSpot(name, g, m, fin, fout, a_offs[m], offset, len(spots) * r)
                offset += fout * r
        self.spots = spots
        self.numel = offset
        self.n_scales = len(spots) * r if quantized else 0

    def __contains__(self, name: str) -> bool:
        return name in self.spots

    def covers(self, weights: AdapterWeights) -> bool:
        return weights.rank <= self.r and all(name in self.spots for name in weights.modules)

    # -- views (work on a [numel] host copy and on a [slots, numel] stack alike) -------------
    def a_view(self, flat: torch.Tensor, name: str) -> torch.Tensor:
        s = self.spots[name]
        return flat[..., s.a_off : s.a_off + self.r * s.in_features].unflatten(
            -1, (self.r, s.in_features)
        )

    def b_view(self, flat: torch.Tensor, name: str) -> torch.Tensor:
        s = self.spots[name]
        return flat[..., s.b_off : s.b_off + s.out_features * self.r].unflatten(
            -1, (s.out_features, self.r)
        )

    def group_a_view(self, flat: torch.Tensor, group: int) -> torch.Tensor:
        """The group's A matrices stacked: ``[..., members * r, in]``."""
        members = self.groups[group]
        fin = self.spots[members[0]].in_features
        start = self.group_a_off[group]
        return flat[..., start : start + len(members) * self.r * fin].unflatten(
            -1, (len(members) * self.r, fin)
        )

    def scale_view(self, scales: torch.Tensor, name: str) -> torch.Tensor:
        """``[..., r]``: the module's rank scales in a ``[..., n_scales]`` tensor."""
        s = self.spots[name]
        return scales[..., s.s_off : s.s_off + self.r]

    # -- packing ---------------------------------------------------------------------------
    def pack(
        self, weights: AdapterWeights, out: torch.Tensor, scales: torch.Tensor | None = None
    ) -> dict[str, int]:
        """Write ``weights`` into the ``[numel]`` tensor ``out`` (and, quantized, their rank
        scales into ``[n_scales]`` ``scales``); returns the rank per module."""
        out.zero_()
        if scales is not None:
            scales.zero_()
        ranks: dict[str, int] = {}
        for name, (a, b, scaling) in weights.modules.items():
            r = a.shape[0]
            a_v, b_v = self.a_view(out, name)[:r], self.b_view(out, name)[:, :r]
            b_scaled = b.to(torch.float32) * scaling
            if self.quantized:
                if scales is None:
                    raise ValueError("a quantized layout packs into values and scales")
                self.scale_view(scales, name)[:r].copy_(quantize(a, b_scaled, a_v, b_v))
            else:
                a_v.copy_(a)
                b_v.copy_(b_scaled)
            ranks[name] = r
        return ranks

    def float_views(
        self, flat: torch.Tensor, scales: torch.Tensor | None, name: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The module's A (``[..., r, in]``) and scaled B (``[..., out, r]``) in float32,
        dequantized from a quantized layout: only the product of A and B is kept, so each
        gets the square root of the rank's scale (neither far from the other's magnitude)."""
        a = self.a_view(flat, name).to(torch.float32)
        b = self.b_view(flat, name).to(torch.float32)
        if self.quantized:
            if scales is None:
                raise ValueError("a quantized layout's values need their scales")
            root = self.scale_view(scales, name).to(torch.float32).sqrt()
            a, b = a * root.unsqueeze(-1), b * root.unsqueeze(-2)
        return a, b

    def copy_from(
        self,
        old: SlotLayout,
        src: torch.Tensor,
        dst: torch.Tensor,
        src_scales: torch.Tensor | None = None,
        dst_scales: torch.Tensor | None = None,
    ) -> None:
        """Copy the contents of ``src`` (laid out by ``old``) into ``dst`` (laid out by self),
        quantizing or dequantizing when one of the two layouts is quantized."""
        dst.zero_()
        if dst_scales is not None:
            dst_scales.zero_()
        r = min(old.r, self.r)
        for name in old.spots:
            if name not in self.spots:
                continue
            a_dst, b_dst = self.a_view(dst, name)[..., :r, :], self.b_view(dst, name)[..., :r]
            if not old.quantized and not self.quantized:
                a_dst.copy_(old.a_view(src, name)[..., :r, :])
                b_dst.copy_(old.b_view(src, name)[..., :r])
                continue
            if old.quantized and self.quantized and dst_scales is not None:
                a_dst.copy_(old.a_view(src, name)[..., :r, :])
                b_dst.copy_(old.b_view(src, name)[..., :r])
                self.scale_view(dst_scales, name)[..., :r].copy_(
                    old.scale_view(src_scales, name)[..., :r]  # type: ignore[arg-type]
                )
                continue
            a, b = old.float_views(src, src_scales, name)
            a, b = a[..., :r, :], b[..., :r]
            if self.quantized:
                if dst_scales is None:
                    raise ValueError("a quantized layout's values need their scales")
                self.scale_view(dst_scales, name)[..., :r].copy_(quantize(a, b, a_dst, b_dst))
            else:
                a_dst.copy_(a)
                b_dst.copy_(b)


QMAX = 127.0


def quantize(
    a: torch.Tensor, b: torch.Tensor, a_out: torch.Tensor, b_out: torch.Tensor
) -> torch.Tensor:
    """Write int8 ``a`` (``[..., r, in]``, one absmax scale per rank row) and ``b``
    (``[..., out, r]``, scaled B, one per rank column) into ``a_out``/``b_out``; returns the
    products of the two scales, ``[..., r]`` float32 (zero where a rank is all zeros)."""
    a, b = a.to(torch.float32), b.to(torch.float32)
    s_a = a.abs().amax(-1) / QMAX  # [..., r]
    s_b = b.abs().amax(-2) / QMAX
    safe_a = torch.where(s_a > 0, s_a, torch.ones_like(s_a))
    safe_b = torch.where(s_b > 0, s_b, torch.ones_like(s_b))
    a_out.copy_(torch.round(a / safe_a.unsqueeze(-1)).clamp_(-QMAX, QMAX))
    b_out.copy_(torch.round(b / safe_b.unsqueeze(-2)).clamp_(-QMAX, QMAX))
    return s_a * s_b


def _group(modules: list[tuple[str, int, int]]) -> list[list[str]]:
    """Partition modules into input groups: known sibling sets with equal in_features."""
    by_name = {name: fin for name, fin, _ in modules}
    seen: set[str] = set()
    groups: list[list[str]] = []
    for name, fin, _ in modules:
        if name in seen:
            continue
        parent, _, leaf = name.rpartition(".")
        members = [name]
        for family in INPUT_GROUPS:
            if leaf in family:
                prefix = f"{parent}." if parent else ""
                members = [
                    f"{prefix}{sib}"
                    for sib in family
                    if by_name.get(f"{prefix}{sib}") == fin and f"{prefix}{sib}" not in seen
                ]
                break
        seen.update(members)
        groups.append(members)
    return groups


@dataclass
class PackedAdapter:
    """One adapter packed into a slot layout: the unit the CPU tier keeps and copies to a slot.

    ``flat`` is a ``[layout.numel]`` host tensor (pinned when the engine runs on CUDA);
    ``ranks`` is the LoRA rank per module (modules the adapter does not target are absent).
    """

    flat: torch.Tensor = field(repr=False)
    layout: SlotLayout = field(repr=False)
    ranks: dict[str, int]
    # a quantized layout's ``[n_scales]`` float32 rank scales (host, pinned like ``flat``)
    scales: torch.Tensor | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        scales = 0 if self.scales is None else self.scales.numel() * self.scales.element_size()
        return self.flat.numel() * self.flat.element_size() + scales
