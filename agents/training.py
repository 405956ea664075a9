"""Train a LoRA adapter on chat data: ``train_adapter(data, output_dir, config=TrainConfig(...))``.

The result is a standard PEFT folder (``adapter_model.safetensors`` + ``adapter_config.json``,
``base_model_name_or_path`` set to the base model name) plus ``loraroute_training.json`` with
metrics, data digest, base fingerprint and the training configuration, ready for
``registry.push``.

We use ``transformers.Trainer`` with our own collator rather than a hand-written loop: measured
on SmolLM2-135M (batch 8 x 128 tokens, 2 CPU cores) both run at ~0.3 steps/s, since the step is
all forward/backward compute (benchmarks/results/training.md), and Trainer gives gradient
accumulation, LR schedules, checkpoints with exact resume (optimizer, scheduler, RNG) and early
stopping for free.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ._data import ChatExample, data_digest, load_examples, routing_examples
from .errors import TrainingError

logger = logging.getLogger(__name__)

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


def _set_threads(device: str) -> None:
    """Use every core we may run on, unless OMP_NUM_THREADS says otherwise (a shared box)."""
    if device != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    torch.set_num_threads(cores)


def _checkpoint_to_resume(ckpt_root: Path, resume: bool | str | Path) -> str | None:
    if resume is False or resume is None:
        return None
    if resume is True:
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(str(ckpt_root)) if ckpt_root.is_dir() else None
        if last is None:
            raise TrainingError(
                f"nothing to resume: no checkpoint under {str(ckpt_root)!r}; train without resume "
                f"or pass the checkpoint folder"
            )
        return last
    path = Path(resume)
    if not path.is_dir():
        raise TrainingError(f"checkpoint {str(path)!r} to resume from does not exist")
    return str(path)


def train_adapter(
    data: Data,
    output_dir: Path | str,
    *,
    base_model: str | Path | None = None,
    config: TrainConfig | None = None,
    settings: Any = None,
    progress: ProgressFn | None = None,
    dev: Data | None = None,
    resume: bool | str | Path = False,
) -> TrainResult:
    """Train a LoRA adapter on chat JSONL (or records) and write a PEFT folder to ``output_dir``.

    ``dev`` data is evaluated once an epoch (loss, perplexity) and before training (the base
    model's loss); ``resume=True`` continues from the last checkpoint in
    ``output_dir/checkpoints``. ``progress(step, total_steps, logs)`` is called after each step.

    Example::

        >>> result = train_adapter("legal.jsonl", "out/legal",
        ...                        config=TrainConfig(epochs=2, rank=8))  # doctest: +SKIP
        >>> result.metrics["eval_loss"]  # doctest: +SKIP
    """
    from loraroute.models import fingerprint, resolve_base_model
    from loraroute.settings import get_settings

    from ._train_run import run_training

    config = config or TrainConfig()
    settings = settings or get_settings()
    output_dir = Path(output_dir)
    examples = load_examples(data)
    dev_examples: list[ChatExample] | None = load_examples(dev) if dev is not None else None
    if config.early_stopping_patience is not None and dev_examples is None:
        raise TrainingError("early_stopping_patience needs dev data to evaluate; pass dev=...")
    resolved = resolve_base_model(base_model or settings.base_model, settings=settings)
    base_fp = fingerprint(resolved.path, settings=settings)
    device = settings.torch_device()
    _set_threads(device)
    ckpt_root = output_dir / CHECKPOINT_DIR
    resume_from = _checkpoint_to_resume(ckpt_root, resume)
    output_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    metrics, report = run_training(
        resolved.path,
        examples,
        dev_examples,
        output_dir=output_dir,
        ckpt_root=ckpt_root,
        config=config,
        device=device,
        progress=progress,
        resume_from=resume_from,
    )
    train_seconds = time.perf_counter() - started

    cfg_path = output_dir / "adapter_config.json"
    adapter_cfg = json.loads(cfg_path.read_text())
    adapter_cfg["base_model_name_or_path"] = resolved.name
    cfg_path.write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True))

    result = TrainResult(
        output_dir=output_dir,
        metrics=metrics,
        data_digest=data_digest(examples),
        base_model_id=resolved.name,
        base_fingerprint=base_fp,
        training_config=config.to_dict(),
        routing_examples=routing_examples(
            examples, limit=config.routing_examples, seed=config.seed
        ),
        train_seconds=round(train_seconds, 3),
        data_report=report,
    )
    record = result.to_dict()
    record["dev_data_digest"] = data_digest(dev_examples) if dev_examples else None
    (output_dir / TRAINING_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False))
    if not config.keep_checkpoints and ckpt_root.is_dir():
        shutil.rmtree(ckpt_root)
    logger.info("trained %s in %.1fs: %s", output_dir, train_seconds, metrics)
    return result


def read_training_record(folder: Path | str) -> dict[str, Any]:
    """The ``loraroute_training.json`` written next to a trained adapter."""
    path = Path(folder) / TRAINING_FILE
    if not path.is_file():
        raise TrainingError(
            f"{str(folder)!r} has no {TRAINING_FILE}; was it written by train_adapter?"
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def perplexity(loss: float) -> float:
    """``exp(loss)``, capped so that a diverged run reports a large number, not an overflow."""
    return math.exp(min(loss, 50.0))
