"""Train a LoRA adapter on chat data: ``train_adapter(data, output_dir, config=TrainConfig(...))``.

The result is a standard PEFT folder (``adapter_model.safetensors`` + ``adapter_config.json``,
``base_model_name_or_path`` set to the base's Hub id, e.g. ``HuggingFaceTB/SmolLM2-135M-Instruct``
for the embedded default, or to its absolute folder) plus ``loraroute_training.json`` with
metrics, data digest, base fingerprint and the training configuration, ready for
``registry.push``.

We use ``transformers.Trainer`` with our own collator rather than a hand-written loop: the step
is all forward/backward compute, so both run at the same speed (benchmarks/results/training.md),
and Trainer gives gradient accumulation, LR schedules, checkpoints with exact resume and early
stopping for free.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from loraroute.settings import Settings, get_settings

from ..errors import TrainingError
from .config import CHECKPOINT_DIR, TRAINING_FILE, Data, ProgressFn, TrainConfig, TrainResult
from .data import ChatExample, data_digest, load_examples, routing_examples

logger = logging.getLogger(__name__)


def _set_threads(device: str, settings: Settings) -> None:
    """Use every core we may run on, unless OMP_NUM_THREADS says otherwise (a shared box)."""
    if device != "cpu" or settings.omp_num_threads:
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
    settings: Settings | None = None,
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

    from .loop import run_training

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
    _set_threads(device, settings)
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
    # portable: the base's Hub id (the embedded default's is its source model's), else the
    # absolute folder, so PEFT, vLLM or LoRAX elsewhere load the base it names; the exact
    # weights are pinned by the fingerprint the registry records
    adapter_cfg["base_model_name_or_path"] = resolved.portable_name
    cfg_path.write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True))

    result = TrainResult(
        output_dir=output_dir,
        metrics=metrics,
        data_digest=data_digest(examples),
        base_model_id=resolved.portable_name,
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
