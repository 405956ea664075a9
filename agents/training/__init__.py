"""Training LoRA adapters on chat data, and merging them.

- :mod:`.config`: :class:`TrainConfig` and :class:`TrainResult`;
- :mod:`.data`: reading and checking chat JSONL;
- :mod:`.tokenize`: chat examples to token ids with the answer's labels;
- :mod:`.loop`: the run itself (``transformers.Trainer``);
- :mod:`.train`: :func:`train_adapter`, the public entry point;
- :mod:`.merge`: merging adapters into one.
"""

from __future__ import annotations

from .config import CHECKPOINT_DIR, TRAINING_FILE, TrainConfig, TrainResult
from .train import read_training_record, train_adapter

__all__ = [
    "CHECKPOINT_DIR",
    "TRAINING_FILE",
    "TrainConfig",
    "TrainResult",
    "read_training_record",
    "train_adapter",
]
