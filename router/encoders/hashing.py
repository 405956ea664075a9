"""A tiny deterministic encoder: hashed words and character trigrams, no model, no download.

Good enough to route "contract clause liability" away from "solve 2x + 3"; meant for unit
tests and for machines without the MiniLM package, not for production routing.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from .base import Encoder

_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEncoder(Encoder):
    """Signed feature hashing of lower-cased words (weight 1) and char trigrams (weight 0.5).

    Example::

        >>> enc = HashingEncoder(dim=128)
        >>> v = enc.encode(["legal contract", "legal contracts"])
        >>> float(v[0] @ v[1]) > 0.5
        True
    """

    def __init__(self, dim: int = 256, *, max_tokens: int = 256, **kwargs) -> None:
        if dim < 8:
            raise ValueError(f"HashingEncoder dim must be >= 8, got {dim}")
        self.dim = dim
        self.max_tokens = max_tokens
        self.name = f"hashing-{dim}"
        super().__init__(**kwargs)

    def truncate(self, text: str) -> tuple[str, bool]:
        for count, match in enumerate(_WORD.finditer(text), 1):
            if count > self.max_tokens:
                return text[: match.start()], True
        return text, False

    def _embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            feats = [(w, 1.0) for w in words]
            for w in words:
                padded = f"#{w}#"
                feats.extend((padded[i : i + 3], 0.5) for i in range(len(padded) - 2))
            if not feats:  # empty or punctuation only: a fixed "nothing" direction
                feats = [("\0empty", 1.0)]
            for feat, weight in feats:
                h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
                sign = 1.0 if (h >> 63) & 1 else -1.0
                out[row, h % self.dim] += sign * weight
        return out
