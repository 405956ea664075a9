"""sentence-transformers encoder; the default is the packaged all-MiniLM-L6-v2 (offline)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...models import resolve_embedder
from ...settings import Settings, get_settings, library_default
from ..errors import EncoderError
from .base import Encoder

logger = logging.getLogger(__name__)

# Cut far beyond any window before tokenising, so a 100k-character request costs no more
# than a long one; ~12 characters per word piece is generous for every script.
_CHARS_PER_TOKEN_CEILING = 12
_SHORT_TEXT_MARGIN = 8


class SentenceTransformerEncoder(Encoder):
    """A sentence-transformers model resolved through :func:`loraroute.models.resolve_embedder`.

    Example::

        >>> enc = SentenceTransformerEncoder("all-minilm-l6-v2")  # doctest: +SKIP
        >>> enc.encode(["what is my balance"]).shape  # doctest: +SKIP
        (1, 384)
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        settings: Settings | None = None,
        device: str | None = None,
        batch_size: int = 64,
        cache_dir: Path | str | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        resolved = resolve_embedder(model, settings=self.settings)
        self.path = resolved.path
        self.device = device or "cpu"
        self._model: Any = None
        self._max_tokens_override = max_tokens
        # Name = model + weights stamp, so a changed model folder never reuses old vectors.
        st = max(
            (p.stat() for p in self.path.glob("*.safetensors")),
            key=lambda s: s.st_mtime_ns,
            default=None,
        )
        stamp = f"{st.st_size:x}" if st is not None else "nostamp"
        self.name = f"st-{resolved.name.replace('/', '_')}-{stamp}"
        self.dim = self._read_dim()
        self.max_tokens = max_tokens or self._read_max_seq()
        if cache_dir is None:
            cache_dir = self.settings.cache_dir / "embeddings"
        super().__init__(cache_dir=cache_dir or None, batch_size=batch_size)

    def _read_dim(self) -> int:
        import json

        pooling = self.path / "1_Pooling" / "config.json"
        if pooling.is_file():
            return int(json.loads(pooling.read_text())["word_embedding_dimension"])
        config = self.path / "config.json"
        if config.is_file():
            return int(json.loads(config.read_text())["hidden_size"])
        raise EncoderError(
            f"embedder folder {str(self.path)!r} has neither 1_Pooling/config.json nor "
            f"config.json; pass a sentence-transformers folder"
        )

    def _read_max_seq(self) -> int:
        import json

        cfg = self.path / "sentence_bert_config.json"
        if cfg.is_file():
            return int(json.loads(cfg.read_text()).get("max_seq_length", 256))
        return 256

    @property
    def model(self) -> Any:
        if self._model is None:
            library_default("TOKENIZERS_PARALLELISM", "false")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:  # pragma: no cover - a declared dependency
                raise ImportError(
                    "the sentence-transformers encoder needs sentence-transformers: "
                    "pip install sentence-transformers"
                ) from exc
            logger.info("loading embedder %s from %s", self.name, self.path)
            self._model = SentenceTransformer(str(self.path), device=self.device)
            self._model.max_seq_length = self.max_tokens
        return self._model

    def truncate(self, text: str) -> tuple[str, bool]:
        """Cut ``text`` to the model window (special tokens included); say whether it was cut."""
        limit = self.max_tokens - 2  # [CLS] and [SEP]
        # Short texts skip the tokenizer (a third of a millisecond a request): no tokenizer in
        # use makes more tokens than UTF-8 bytes plus a few (byte-level BPE: at most one per
        # byte; WordPiece and SentencePiece: at most one per character, plus a leading piece).
        if len(text.encode("utf-8")) + _SHORT_TEXT_MARGIN <= limit:
            return text, False
        cut = len(text) > limit * _CHARS_PER_TOKEN_CEILING
        if cut:
            text = text[: limit * _CHARS_PER_TOKEN_CEILING]
        tok = self.model.tokenizer
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if len(offsets) <= limit:
            return text, cut
        return text[: offsets[limit - 1][1]], True

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
