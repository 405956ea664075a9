"""What a training run is told (:class:`TrainConfig`) and what it gives back (:class:`TrainResult`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import TrainingError

TRAINING_FILE = "loraroute_training.json"
CHECKPOINT_DIR = "checkpoints"
DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

ProgressFn = Callable[[int, int, dict[str, Any]], None]
Data = Path | str | Iterable[dict[str, Any]]


@dataclass
class TrainConfig:
    """How to train; every field is recorded in ``loraroute_training.json``.

    ``target_modules`` is a list of module names or ``"all-linear"``. ``max_steps`` (when set)
    overrides ``epochs``. ``overlong`` says what to do with conversations longer than
    ``max_length`` tokens: cut the middle of the prompt so the answer stays (``"middle"``), keep
    the first ``max_length`` tokens (``"truncate"``) or leave them out (``"drop"``).
    ``init_adapter`` continues training an existing LoRA folder (its rank, alpha, targets and
    layers replace this config's).

    Example::

        >>> TrainConfig(rank=16, target_modules="all-linear").alpha
        32
    """

    epochs: float = 3.0
    max_steps: int | None = None
    learning_rate: float = 2e-4
    rank: int = 8
    alpha: int | None = None  # None -> 2 * rank
    dropout: float = 0.05
    target_modules: list[str] | str = field(default_factory=lambda: list(DEFAULT_TARGETS))
    last_layers: int | None = None  # adapt only the top N decoder layers (backward stops there)
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 512
    overlong: Literal["middle", "truncate", "drop"] = "middle"
    packing: bool = False
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: float = 0.05  # a fraction of the steps if < 1, else a step count
    weight_decay: float = 0.0
    seed: int = 0
    early_stopping_patience: int | None = None  # evaluations without improvement; needs dev data
    save_every: int | None = None  # steps between checkpoints; None -> once an epoch
    keep_checkpoints: bool = False
    routing_examples: int = 64
    init_adapter: str | None = None  # a LoRA folder to start from (its rank and targets win)

    def __post_init__(self) -> None:
        if self.alpha is None:
            self.alpha = 2 * self.rank
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            self.target_modules = [t.strip() for t in self.target_modules.split(",") if t.strip()]
        elif not isinstance(self.target_modules, str):
            self.target_modules = list(self.target_modules)
        if self.init_adapter is not None:
            self.init_adapter = str(self.init_adapter)
        checks = [
            (self.rank >= 1, "rank", self.rank, "an integer >= 1"),
            (self.alpha >= 1, "alpha", self.alpha, "an integer >= 1"),
            (0.0 <= self.dropout < 1.0, "dropout", self.dropout, "in [0, 1)"),
            (self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0"),
            (self.epochs > 0, "epochs", self.epochs, "> 0"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps", self.max_steps, ">= 1"),
            (self.batch_size >= 1, "batch_size", self.batch_size, ">= 1"),
            (self.grad_accum >= 1, "grad_accum", self.grad_accum, ">= 1"),
            (self.max_length >= 8, "max_length", self.max_length, ">= 8 tokens"),
            (
                self.overlong in ("middle", "truncate", "drop"),
                "overlong",
                self.overlong,
                "'middle', 'truncate' or 'drop'",
            ),
            (
                self.lr_scheduler in ("cosine", "linear", "constant"),
                "lr_scheduler",
                self.lr_scheduler,
                "'cosine', 'linear' or 'constant'",
            ),
            (self.warmup >= 0, "warmup", self.warmup, ">= 0"),
            (
                self.last_layers is None or self.last_layers >= 1,
                "last_layers",
                self.last_layers,
                ">= 1",
            ),
            (
                bool(self.target_modules),
                "target_modules",
                self.target_modules,
                "a non-empty list of module names or 'all-linear'",
            ),
        ]
        for ok, name, value, allowed in checks:
            if not ok:
                raise TrainingError(
                    f"training setting {name}={value!r} is invalid; it must be {allowed}"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What :func:`train_adapter` produced; the fields map onto ``registry.push`` arguments."""

    output_dir: Path
    metrics: dict[str, float]
    data_digest: str
    base_model_id: str
    base_fingerprint: str
    training_config: dict[str, Any]
    routing_examples: list[str]
    train_seconds: float
    data_report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["output_dir"] = str(self.output_dir)
        return out
