"""A PEFT LoRA adapter read into memory, and the check that it fits the loaded base.

:func:`read_adapter` parses a PEFT LoRA folder (``adapter_config.json`` +
``adapter_model.safetensors``) into per-module ``(A, B, scaling)``; :func:`check_compatible`
refuses an adapter whose base fingerprint, target modules or shapes do not match the base.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import IncompatibleAdapterError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."
_KEY_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


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
    folder = Path(folder)
    return _content_digest(
        (folder / ADAPTER_CONFIG).read_bytes(), (folder / ADAPTER_WEIGHTS).read_bytes()
    )


def _content_digest(config: bytes, weights: bytes) -> str:
    """:func:`folder_digest` of bytes already in memory (read once, hashed and parsed)."""
    h = hashlib.sha256(b"loraroute-adapter-folder-v1\0")
    for name, data in ((ADAPTER_CONFIG, config), (ADAPTER_WEIGHTS, weights)):
        h.update(name.encode() + b"\0")
        h.update(data)
    return "sha256:" + h.hexdigest()


def _pattern_value(patterns: dict, module: str, default):
    # PEFT matches pattern keys as a suffix of the module name, or as a regex.
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(folder: Path | str, *, digest: str | None = None) -> AdapterWeights:
    """Read a PEFT LoRA folder; refuses features our layer does not implement.

    ``digest`` is the version digest when the caller already knows it (the registry verified
    the files when it wrote its checkout); without it the folder's content is hashed, from
    the same bytes that are parsed, so the file is read once.

    Example::

        >>> w = read_adapter("out/legal")  # doctest: +SKIP
        >>> sorted(w.modules)[:1]  # doctest: +SKIP
        ['model.layers.0.self_attn.q_proj']
    """
    from safetensors.torch import load

    folder = Path(folder)
    cfg_path, w_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise IncompatibleAdapterError(
            f"adapter folder {str(folder)!r} must hold {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}; "
            f"save it with PeftModel.save_pretrained (safe_serialization=True)"
        )
    cfg_bytes = cfg_path.read_bytes()
    cfg = json.loads(cfg_bytes)
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
    # one read into memory, then parsed: cheaper than load_file's memory map for a few MB
    data = w_path.read_bytes()
    if digest is None:
        digest = _content_digest(cfg_bytes, data)
    tensors = load(data)
    del data
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
        digest=digest,
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
    named: Mapping[str, nn.Module] | None = None,
) -> None:
    """Raise :class:`IncompatibleAdapterError` unless ``weights`` fit ``model``.

    ``named`` is ``dict(model.named_modules())`` when the caller keeps one (walking the
    model's modules costs about as much as the rest of the check)."""
    if recorded_fingerprint and recorded_fingerprint != base_fingerprint:
        raise IncompatibleAdapterError(
            f"adapter {label!r} was trained on base {recorded_fingerprint}, but the loaded base is "
            f"{base_fingerprint}; load the matching base model or retrain the adapter on this one"
        )
    if named is None:
        named = dict(model.named_modules())
    for module, (a, b, _) in weights.modules.items():
        layer = named.get(module)
        wrapped = getattr(layer, "base", None)
        if isinstance(wrapped, nn.Linear):  # a module the slot layers wrapped
            layer = wrapped
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
