"""Our LoRA layer: stacked adapter slots per targeted ``nn.Linear``, chosen per batch row.

Every targeted linear layer is wrapped once by :class:`SlotLoraLinear`, which holds the A and B
matrices of all resident adapters stacked along a slot axis (``A: [slots, r_max, in]``,
``B: [slots, out, r_max]``, zero-padded to the largest rank) and one scaling per slot. Slot 0 is
all zeros and means "no adapter". Which slot each batch row uses is read from a shared
:class:`AdapterContext`, so switching adapters is setting one small tensor, not walking the
model's modules as PEFT's ``set_adapter`` does.

:func:`read_adapter` parses a PEFT LoRA folder (``adapter_config.json`` +
``adapter_model.safetensors``) into per-module tensors, and :func:`check_compatible` refuses an
adapter whose base fingerprint, target modules or shapes do not match the loaded base.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import IncompatibleAdapterError

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."
_KEY_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


class AdapterContext:
    """The adapter choice of the current forward pass, shared by all slot layers of a model.

    ``indices`` is a ``[batch]`` long tensor of slot numbers (0 = no adapter); ``uniform`` is
    the single slot when every row uses the same one (a faster path), else ``None``.
    """

    def __init__(self) -> None:
        self.indices: torch.Tensor | None = None
        self.uniform: int | None = 0

    def set(self, slots: list[int], device: torch.device | str = "cpu") -> None:
        first = slots[0] if slots else 0
        if all(s == first for s in slots):
            self.uniform, self.indices = first, None
        else:
            self.uniform = None
            self.indices = torch.tensor(slots, dtype=torch.long, device=device)

    @contextmanager
    def use(self, slots: list[int], device: torch.device | str = "cpu"):
        """Run forwards with ``slots`` (one per batch row); restores "no adapter" after."""
        self.set(slots, device)
        try:
            yield self
        finally:
            self.uniform, self.indices = 0, None


class SlotLoraLinear(nn.Module):
    """An ``nn.Linear`` plus stacked LoRA slots; the slot per row comes from the context."""

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    scaling: torch.Tensor

    def __init__(self, base: nn.Linear, context: AdapterContext, num_slots: int, r_max: int):
        super().__init__()
        self.base = base
        self.context = context
        self.in_features = base.in_features
        self.out_features = base.out_features
        w = base.weight
        self.register_buffer(
            "lora_A",
            torch.zeros(num_slots, r_max, self.in_features, dtype=w.dtype, device=w.device),
            persistent=False,
        )
        self.register_buffer(
            "lora_B",
            torch.zeros(num_slots, self.out_features, r_max, dtype=w.dtype, device=w.device),
            persistent=False,
        )
        self.register_buffer(
            "scaling", torch.zeros(num_slots, dtype=w.dtype, device=w.device), persistent=False
        )
        # Python-side rank per slot: 0 means this module has nothing in that slot (skip it).
        self.ranks: list[int] = [0] * num_slots

    @property
    def weight(self) -> torch.Tensor:  # some model code reads .weight of projections
        return self.base.weight

    @property
    def r_max(self) -> int:
        return self.lora_A.shape[1]

    def grow(self, r_max: int) -> None:
        """Zero-pad every slot to rank ``r_max`` (a rare reallocation, when a bigger rank comes)."""
        if r_max <= self.r_max:
            return
        pad = r_max - self.r_max
        self.lora_A = F.pad(self.lora_A, (0, 0, 0, pad))
        self.lora_B = F.pad(self.lora_B, (0, pad))

    def write_slot(self, slot: int, a: torch.Tensor, b: torch.Tensor, scaling: float) -> None:
        r = a.shape[0]
        self.grow(r)
        self.lora_A[slot].zero_()
        self.lora_B[slot].zero_()
        self.lora_A[slot, :r].copy_(a)
        self.lora_B[slot, :, :r].copy_(b)
        self.scaling[slot] = scaling
        self.ranks[slot] = r

    def clear_slot(self, slot: int) -> None:
        self.lora_A[slot].zero_()
        self.lora_B[slot].zero_()
        self.scaling[slot] = 0.0
        self.ranks[slot] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        ctx = self.context
        if ctx.uniform is not None:
            slot = ctx.uniform
            r = self.ranks[slot]
            if r == 0:
                return out
            a = self.lora_A[slot, :r]
            b = self.lora_B[slot, :, :r]
            return out + F.linear(F.linear(x, a), b) * self.scaling[slot]
        idx = ctx.indices
        if idx is None:
            return out
        # Mixed batch: gather each row's (zero-padded) matrices and use batched matmuls.
        a = self.lora_A.index_select(0, idx)  # [b, r, in]
        b = self.lora_B.index_select(0, idx)  # [b, out, r]
        scale = self.scaling.index_select(0, idx).view(-1, *([1] * (x.dim() - 1)))
        x3 = x if x.dim() == 3 else x.unsqueeze(1)
        delta = torch.bmm(torch.bmm(x3, a.transpose(1, 2)), b.transpose(1, 2))
        if x.dim() != 3:
            delta = delta.squeeze(1)
        return out + delta * scale


@dataclass
class AdapterWeights:
    """A PEFT LoRA adapter read into memory: per-module (A, B, scaling)."""

    path: Path
    digest: str
    rank: int
    alpha: float
    target_modules: list[str]
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(repr=False)
    base_model_name_or_path: str | None = None

    @property
    def nbytes(self) -> int:
        return sum(
            a.numel() * a.element_size() + b.numel() * b.element_size()
            for a, b, _ in self.modules.values()
        )


def folder_digest(folder: Path) -> str:
    """``sha256:<hex>`` over the adapter's config and weights (for plain folders)."""
    h = hashlib.sha256(b"loraroute-adapter-folder-v1\0")
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        h.update(name.encode() + b"\0")
        with open(folder / name, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return "sha256:" + h.hexdigest()


def _pattern_value(patterns: dict, module: str, default):
    # PEFT matches pattern keys as a suffix of the module name, or as a regex.
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(folder: Path | str, *, digest: str | None = None) -> AdapterWeights:
    """Read a PEFT LoRA folder; refuses features our layer does not implement.

    Example::

        >>> w = read_adapter("out/legal")  # doctest: +SKIP
        >>> sorted(w.modules)[:1]  # doctest: +SKIP
        ['model.layers.0.self_attn.q_proj']
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise IncompatibleAdapterError(
            f"adapter folder {str(folder)!r} must hold {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}; "
            f"save it with PeftModel.save_pretrained (safe_serialization=True)"
        )
    cfg = json.loads(cfg_path.read_text())
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise IncompatibleAdapterError(
            f"adapter {str(folder)!r} has peft_type {peft_type!r}; only LORA adapters are served"
        )
    unsupported = {
        "use_dora": bool(cfg.get("use_dora")),
        "bias": cfg.get("bias", "none") not in (None, "none"),
        "fan_in_fan_out": bool(cfg.get("fan_in_fan_out")),
        "modules_to_save": bool(cfg.get("modules_to_save")),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise IncompatibleAdapterError(
            f"adapter {str(folder)!r} uses {', '.join(bad)}, which the loraroute runtime does not "
            f"serve; retrain with plain LoRA (no DoRA, bias='none', no modules_to_save)"
        )
    r_default = int(cfg.get("r", 8))
    alpha_default = float(cfg.get("lora_alpha", r_default))
    rslora = bool(cfg.get("use_rslora"))
    tensors = load_file(str(w_path))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key[len(_PEFT_PREFIX) :] if key.startswith(_PEFT_PREFIX) else key
        m = _KEY_RE.match(name)
        if m is None:
            raise IncompatibleAdapterError(
                f"adapter {str(folder)!r} has tensor {key!r}, which is not a LoRA A/B weight of a "
                f"linear layer; only linear LoRA layers are served"
            )
        parts.setdefault(m["module"], {})[m["which"]] = tensor
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise IncompatibleAdapterError(
                f"adapter {str(folder)!r} has only lora_{''.join(ab)} for module {module!r}"
            )
        r = ab["A"].shape[0]
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), module, alpha_default))
        scaling = alpha / math.sqrt(r) if rslora else alpha / r
        modules[module] = (ab["A"], ab["B"], scaling)
    if not modules:
        raise IncompatibleAdapterError(f"adapter {str(folder)!r} holds no LoRA weights")
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    return AdapterWeights(
        path=folder,
        digest=digest or folder_digest(folder),
        rank=max(a.shape[0] for a, _, _ in modules.values()),
        alpha=alpha_default,
        target_modules=sorted(targets) or sorted({m.rsplit(".", 1)[-1] for m in modules}),
        modules=modules,
        base_model_name_or_path=cfg.get("base_model_name_or_path"),
    )


def check_compatible(
    weights: AdapterWeights,
    model: nn.Module,
    *,
    label: str,
    base_fingerprint: str,
    recorded_fingerprint: str | None,
) -> None:
    """Raise :class:`IncompatibleAdapterError` unless ``weights`` fit ``model``."""
    if recorded_fingerprint and recorded_fingerprint != base_fingerprint:
        raise IncompatibleAdapterError(
            f"adapter {label!r} was trained on base {recorded_fingerprint}, but the loaded base is "
            f"{base_fingerprint}; load the matching base model or retrain the adapter on this one"
        )
    named = dict(model.named_modules())
    for module, (a, b, _) in weights.modules.items():
        layer = named.get(module)
        if isinstance(layer, SlotLoraLinear):
            layer = layer.base
        if layer is None:
            raise IncompatibleAdapterError(
                f"adapter {label!r} targets module {module!r}, which the loaded base "
                f"({base_fingerprint}) does not have; it was made for another architecture"
            )
        if not isinstance(layer, nn.Linear):
            raise IncompatibleAdapterError(
                f"adapter {label!r} targets {module!r}, a {type(layer).__name__}; only nn.Linear "
                f"layers are served"
            )
        want_a, want_b = (a.shape[0], layer.in_features), (layer.out_features, b.shape[1])
        if tuple(a.shape) != want_a or tuple(b.shape) != want_b or a.shape[0] != b.shape[1]:
            raise IncompatibleAdapterError(
                f"adapter {label!r} has shapes A{tuple(a.shape)} B{tuple(b.shape)} for {module!r}, "
                f"but the loaded base ({base_fingerprint}) needs A{want_a} B{want_b}; it was made "
                f"for another base model"
            )


class SlotLayers:
    """All :class:`SlotLoraLinear` wrappers of one model, created on first use per module."""

    def __init__(self, model: nn.Module, num_slots: int, r_max: int = 16):
        self.model = model
        self.context = AdapterContext()
        self.num_slots = num_slots
        self.r_max = r_max
        self.layers: dict[str, SlotLoraLinear] = {}

    def _wrap(self, name: str) -> SlotLoraLinear:
        layer = self.layers.get(name)
        if layer is not None:
            return layer
        parent_name, _, child = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        base = getattr(parent, child)
        layer = SlotLoraLinear(base, self.context, self.num_slots, self.r_max)
        setattr(parent, child, layer)
        self.layers[name] = layer
        return layer

    def write(self, slot: int, weights: AdapterWeights) -> None:
        """Copy ``weights`` into ``slot`` of every module (clearing modules it does not target)."""
        if weights.rank > self.r_max:
            self.r_max = weights.rank
            for layer in self.layers.values():
                layer.grow(self.r_max)
        for name in weights.modules:
            self._wrap(name)
        with torch.no_grad():
            for name, layer in self.layers.items():
                entry = weights.modules.get(name)
                if entry is None:
                    layer.clear_slot(slot)
                else:
                    a, b, scaling = entry
                    layer.write_slot(
                        slot, a.to(layer.lora_A.dtype), b.to(layer.lora_B.dtype), scaling
                    )

    def clear(self, slot: int) -> None:
        with torch.no_grad():
            for layer in self.layers.values():
                layer.clear_slot(slot)

    def slot_bytes(self) -> int:
        """Memory held by all slot buffers (preallocated, independent of how many are used)."""
        return sum(
            layer.lora_A.numel() * layer.lora_A.element_size()
            + layer.lora_B.numel() * layer.lora_B.element_size()
            for layer in self.layers.values()
        )
