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
    """One module's place in a slot: ``A`` at ``a_off`` (``[r, in]``), ``B`` at ``b_off``."""

    name: str
    group: int
    member: int
    in_features: int
    out_features: int
    a_off: int
    b_off: int


class SlotLayout:
    """An immutable layout for a set of modules at rank ``r`` (see the module docstring)."""

    def __init__(self, modules: list[tuple[str, int, int]], r: int):
        """``modules``: ``(name, in_features, out_features)`` in model order."""
        self.r = r
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
                spots[name] = ModuleSpot(name, g, m, fin, fout, a_offs[m], offset)
                offset += fout * r
        self.spots = spots
        self.numel = offset

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

    # -- packing ---------------------------------------------------------------------------
    def pack(self, weights: AdapterWeights, out: torch.Tensor) -> dict[str, int]:
        """Write ``weights`` into the ``[numel]`` tensor ``out``; returns the rank per module."""
        out.zero_()
        ranks: dict[str, int] = {}
        for name, (a, b, scaling) in weights.modules.items():
            r = a.shape[0]
            self.a_view(out, name)[:r].copy_(a)
            self.b_view(out, name)[:, :r].copy_(b.to(torch.float32) * scaling)
            ranks[name] = r
        return ranks

    def copy_from(self, old: SlotLayout, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy the contents of ``src`` (laid out by ``old``) into ``dst`` (laid out by self)."""
        dst.zero_()
        r = min(old.r, self.r)
        for name in old.spots:
            if name in self.spots:
                self.a_view(dst, name)[..., :r, :].copy_(old.a_view(src, name)[..., :r, :])
                self.b_view(dst, name)[..., :r].copy_(old.b_view(src, name)[..., :r])


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

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()
