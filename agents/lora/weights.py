"""A PEFT LoRA adapter read into memory, and the check that it fits the loaded base.

:func:`read_adapter` parses a PEFT LoRA folder (``adapter_config.json`` +
``adapter_model.safetensors``) into per-module ``(A, B, scaling)``; :func:`check_compatible`
refuses an adapter whose base fingerprint, target modules or shapes do not match the base.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import IncompatibleAdapterError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


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


def read_adapter(
    folder: Path | str,
    *,
    digest: str | None = None,
    base_shapes: Mapping[str, tuple[int, int]] | None = None,
    files: Mapping[str, str] | None = None,
) -> AdapterWeights:
    """Read a PEFT LoRA folder, checked by the registry's validator first
    (:func:`loraroute.registry.validate_folder`: safetensors only, no symlinks, every tensor a
    LoRA A/B of a declared target, ranks and shapes consistent, finite values; with
    ``base_shapes``, ``{module: (in_features, out_features)}`` of the loaded base, every module
    exists there with matching shapes).

    ``digest`` is the version digest when the caller already knows it; without it the folder's
    content is hashed. ``files`` (``{relative path: "sha256:..."}``, a registry version's
    files) makes the bytes read here be checked against their recorded digests, so a checkout
    altered on disk (even at the same size) is refused. Refusals raise
    :class:`IncompatibleAdapterError`.

    Example::

        >>> w = read_adapter("out/legal")  # doctest: +SKIP
        >>> sorted(w.modules)[:1]  # doctest: +SKIP
        ['model.layers.0.self_attn.q_proj']
    """
    from safetensors.torch import load

    from loraroute.registry import InvalidAdapterError, validate_folder

    folder = Path(folder)
    try:
        info = validate_folder(folder, base_shapes=base_shapes)
    except InvalidAdapterError as exc:
        raise IncompatibleAdapterError(f"adapter {folder.name!r} is refused: {exc}") from exc
    cfg_bytes = (folder / ADAPTER_CONFIG).read_bytes()
    # one read into memory, then parsed: cheaper than load_file's memory map for a few MB
    data = (folder / ADAPTER_WEIGHTS).read_bytes()
    if files is not None:
        _check_digests(folder, files, {ADAPTER_CONFIG: cfg_bytes, ADAPTER_WEIGHTS: data})
    if digest is None:
        digest = _content_digest(cfg_bytes, data)
    tensors = load(data)
    del data
    config = info.adapter_config
    modules = {
        name: (tensors[m.a_key], tensors[m.b_key], m.scaling)
        for name, m in sorted(info.modules.items())
    }
    if not modules:
        raise IncompatibleAdapterError(f"adapter {folder.name!r} holds no LoRA weights")
    return AdapterWeights(
        path=folder,
        digest=digest,
        rank=max(m.rank for m in info.modules.values()),
        alpha=float(config.lora_alpha),
        target_modules=sorted(config.target_list)
        or sorted({m.rsplit(".", 1)[-1] for m in modules}),
        modules=modules,
        base_model_name_or_path=config.base_model_name_or_path,
    )


def _check_digests(folder: Path, files: Mapping[str, str], read: Mapping[str, bytes]) -> None:
    """Refuse a folder whose bytes differ from a registry version's recorded digests."""
    for rel, want in files.items():
        data = read.get(rel)
        if data is None:
            data = (folder / rel).read_bytes()
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if got != want:
            raise IncompatibleAdapterError(
                f"adapter folder {folder.name!r}: {rel} does not match the registry's digest "
                f"({got[:19]}... instead of {want[:19]}...); the checkout was altered on disk, "
                f"so it is not loaded (remove the folder to fetch it again)"
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
