"""The training run itself: tokenizer, LoRA model, Trainer, callbacks (called by :mod:`.train`)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from ..errors import TrainingError
from .config import ProgressFn, TrainConfig
from .data import ChatExample
from .tokenize import EncodedDataset, Overlong, PadCollator, encode_all, pack

logger = logging.getLogger(__name__)

_MIN_SAVE_STEPS = 50


def _progress_callback(progress: ProgressFn) -> Any:
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.logs: dict[str, Any] = {}
            self.t0 = 0.0
            self.step0 = 0

        def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.t0, self.step0 = time.perf_counter(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            self.logs.update({k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))})
            if "eval_loss" in (logs or {}):
                self.logs["eval_perplexity"] = perplexity(float(self.logs["eval_loss"]))
            progress(state.global_step, state.max_steps, dict(self.logs))

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            done = state.global_step - self.step0
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / done * (state.max_steps - state.global_step) if done else None
            logs = dict(self.logs, epoch=state.epoch or 0.0, elapsed_seconds=elapsed)
            if eta is not None:
                logs["eta_seconds"] = eta
            progress(state.global_step, state.max_steps, logs)

    return _Progress()


def _load_tokenizer(base_path: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_path))
    if not getattr(tok, "chat_template", None):
        raise TrainingError(
            f"the tokenizer of base model {str(base_path)!r} has no chat template; chat training "
            f"needs one (add chat_template to tokenizer_config.json)"
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_init_adapter(model: Any, folder: Path, base_path: Path) -> Any:
    """The base model wearing the trainable LoRA of ``folder`` (training continues from it)."""
    from peft import PeftModel

    if not (folder / "adapter_config.json").is_file():
        raise TrainingError(
            f"adapter {str(folder)!r} to start from has no adapter_config.json; pass a PEFT "
            f"LoRA folder"
        )
    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise TrainingError(
            f"adapter {str(folder)!r} does not fit base model {str(base_path)!r}: {exc}"
        ) from exc


def run_training(
    base_path: Path,
    examples: list[ChatExample],
    dev_examples: list[ChatExample] | None,
    *,
    output_dir: Path,
    ckpt_root: Path,
    config: TrainConfig,
    device: str,
    progress: ProgressFn | None,
    resume_from: str | None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Train and save the adapter into ``output_dir``; return ``(metrics, data_report)``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        EarlyStoppingCallback,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(config.seed)
    tok = _load_tokenizer(base_path)
    train_enc, train_report = encode_all(
        tok, examples, max_length=config.max_length, overlong=config.overlong
    )
    if not train_enc:
        raise TrainingError(
            f"no training example fits max_length={config.max_length} tokens with its assistant "
            f"turn; raise max_length"
        )
    if config.packing:
        train_enc = pack(train_enc, config.max_length)
    dev_enc = None
    dev_report = None
    if dev_examples:
        # dev examples are never dropped: every one counts in the loss, cut like training ones
        dev_cut: Overlong = "truncate" if config.overlong == "truncate" else "middle"
        dev_enc, rep = encode_all(tok, dev_examples, max_length=config.max_length, overlong=dev_cut)
        dev_report = rep.as_dict()
        dev_enc = dev_enc or None

    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32)
    model.config.use_cache = False
    layers = None
    if config.last_layers is not None:
        n_layers = int(model.config.num_hidden_layers)
        layers = list(range(max(0, n_layers - config.last_layers), n_layers))
    if config.init_adapter is not None:
        peft_model = _load_init_adapter(model, Path(config.init_adapter), base_path)
    else:
        lora = LoraConfig(
            r=config.rank,
            lora_alpha=int(config.alpha or 2 * config.rank),
            lora_dropout=config.dropout,
            target_modules=config.target_modules,
            task_type="CAUSAL_LM",
            bias="none",
            layers_to_transform=layers,
        )
        try:
            peft_model = get_peft_model(model, lora)
        except ValueError as exc:  # peft names the modules it could not find
            raise TrainingError(
                f"LoRA target modules {config.target_modules!r} do not fit base model "
                f"{str(base_path)!r}: {exc}"
            ) from exc

    effective = config.batch_size * config.grad_accum
    steps_per_epoch = max(1, math.ceil(len(train_enc) / effective))
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    use_best = dev_enc is not None and config.early_stopping_patience is not None
    eval_every = min(steps_per_epoch, total_steps)
    # Checkpoints exist to resume a long run; on tiny epochs saving every epoch would cost more
    # than the training, so save at most every _MIN_SAVE_STEPS unless early stopping needs them.
    every = config.save_every or (eval_every if use_best else max(steps_per_epoch, _MIN_SAVE_STEPS))
    every = min(every, total_steps)
    args = TrainingArguments(
        output_dir=str(ckpt_root),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup,
        max_steps=total_steps,
        seed=config.seed,
        logging_strategy="steps",
        logging_steps=1,
        eval_strategy="steps" if dev_enc is not None else "no",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=2 if use_best else 1,
        load_best_model_at_end=use_best,
        metric_for_best_model="eval_loss" if use_best else None,
        greater_is_better=False if use_best else None,
        use_cpu=device == "cpu",
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        label_names=["labels"],
        report_to="none",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=peft_model,
        args=args,
        data_collator=PadCollator(tok.pad_token_id),
        train_dataset=EncodedDataset(train_enc),
        eval_dataset=EncodedDataset(dev_enc) if dev_enc is not None else None,
    )
    trainer.remove_callback(PrinterCallback)  # library code does not print; progress() reports
    metrics: dict[str, float] = {}
    if dev_enc is not None and resume_from is None:
        # LoRA's B starts at zero, so this is the base model's loss on the dev set.
        # With init_adapter it is the starting adapter's loss, recorded as such.
        key = "base_eval" if config.init_adapter is None else "init_eval"
        start = trainer.evaluate(metric_key_prefix=key)
        metrics[f"{key}_loss"] = float(start[f"{key}_loss"])
        metrics[f"{key}_perplexity"] = perplexity(metrics[f"{key}_loss"])
    if use_best and config.early_stopping_patience is not None:
        trainer.add_callback(
            EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience)
        )
    if progress is not None:
        trainer.add_callback(_progress_callback(progress))

    out = trainer.train(resume_from_checkpoint=resume_from)
    # one entry per dev evaluation during training (once an epoch by default)
    history = [
        {
            "step": h.get("step"),
            "epoch": h.get("epoch"),
            "eval_loss": h["eval_loss"],
            "eval_perplexity": perplexity(float(h["eval_loss"])),
        }
        for h in trainer.state.log_history
        if "eval_loss" in h
    ]
    metrics["train_loss"] = float(out.training_loss)
    metrics["train_steps"] = float(trainer.state.global_step)
    metrics["epochs"] = float(trainer.state.epoch or 0.0)
    metrics["train_runtime"] = float(out.metrics.get("train_runtime", 0.0))
    metrics["steps_per_second"] = float(out.metrics.get("train_steps_per_second", 0.0))
    last_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if last_losses:
        metrics["final_train_loss"] = float(last_losses[-1])
    if dev_enc is not None:
        ev = trainer.evaluate()
        metrics["eval_loss"] = float(ev["eval_loss"])
        metrics["eval_perplexity"] = perplexity(metrics["eval_loss"])
    peft_model.save_pretrained(str(output_dir))
    report = {
        "eval_history": history,
        "train": train_report.as_dict(),
        "dev": dev_report,
        "packed_sequences": len(train_enc) if config.packing else None,
    }
    metrics["train_examples"] = float(train_report.examples)
    metrics["truncated_examples"] = float(train_report.truncated)
    metrics["dropped_examples"] = float(train_report.dropped)
    return metrics, report


def perplexity(loss: float) -> float:
    """``exp(loss)``, capped so that a diverged run reports a large number, not an overflow."""
    return math.exp(min(loss, 50.0))
