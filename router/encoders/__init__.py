"""Encoders: a small interface and its implementations (one per file)."""

from __future__ import annotations

from pathlib import Path

from ...settings import Settings
from .base import Encoder
from .hashing import HashingEncoder

__all__ = ["Encoder", "HashingEncoder", "SentenceTransformerEncoder", "load_encoder"]


def __getattr__(name: str):
    # Lazy: importing the router must not import torch.
    if name == "SentenceTransformerEncoder":
        from .sentence_transformers import SentenceTransformerEncoder

        return SentenceTransformerEncoder
    raise AttributeError(name)


def load_encoder(
    spec: str | Encoder | None, *, settings: Settings | None = None, cache_dir: Path | None = None
) -> Encoder:
    """An encoder from a name: ``"hashing"`` / ``"hashing-<dim>"`` or a sentence-transformers name.

    ``None`` means the configured embedder (``settings.embedder``, MiniLM by default).
    """
    if isinstance(spec, Encoder):
        return spec
    if spec is not None and (spec == "hashing" or spec.startswith("hashing-")):
        dim = int(spec.split("-", 1)[1]) if "-" in spec else 256
        return HashingEncoder(dim=dim, cache_dir=cache_dir)
    from .sentence_transformers import SentenceTransformerEncoder

    return SentenceTransformerEncoder(spec, settings=settings, cache_dir=cache_dir)
