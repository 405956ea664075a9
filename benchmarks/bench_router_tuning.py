"""Does fine-tuning the encoder on the routing examples (SetFit-style) route better?

The router issue asks for contrastive fine-tuning of the encoder "when that measures better".
This script measures it on the issue's CLINC150 protocol (10 domains, K routing examples per
domain, fitted on val + oos_val, measured on test + oos_test), once with the packaged MiniLM as
shipped and once after a supervised contrastive fine-tune on the K x 10 routing examples
(SupCon loss, temperature 0.05, AdamW lr 2e-5, batches of 8 routes x 4 examples; SetFit's
recipe with in-batch positives instead of sampled pairs). Only the routing examples train the
encoder: the labelled fit requests stay held out for calibration, as in ``Router.fit``.

Two scorers: the default (``auto``, which is knn over routing examples + fit requests once
fitted) and ``centroid`` (routing examples only, where a tuned encoder has the most to add).

    nice .venv/bin/python benchmarks/bench_router_tuning.py          # ~6 min on 2 cores

Writes ``results/router_tuning.json`` and ``.md``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_router import load, metrics  # noqa: E402

from loraroute.models import minilm_dir  # noqa: E402
from loraroute.router import Router  # noqa: E402
from loraroute.router.encoders.base import Encoder  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: Optimiser steps per K: each routing example is seen about 13 (K=10) or 6 (K=50) times.
STEPS = {10: 40, 50: 100}
SCORERS = ("auto", "centroid")


class ModelEncoder(Encoder):
    """An in-memory sentence-transformers model behind the router's encoder interface."""

    def __init__(self, model, name: str) -> None:
        self.model, self.name = model, name
        self.dim = model.get_embedding_dimension()
        self.max_tokens = model.max_seq_length
        super().__init__(cache_dir=None)

    def truncate(self, text: str) -> tuple[str, bool]:
        return text, False  # CLINC150 requests are short

    def _embed(self, texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return self.model.encode(texts, batch_size=64, convert_to_numpy=True)


def supcon_tune(model, routes: dict[str, list[str]], steps: int, *, seed: int = 0) -> float:
    """Supervised contrastive fine-tune on the routing examples; returns the final loss."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    names = sorted(routes)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        texts, ys = [], []
        for y, name in enumerate(rng.sample(names, min(8, len(names)))):
            pick = rng.sample(routes[name], min(4, len(routes[name])))
            texts += pick
            ys += [y] * len(pick)
        emb = torch.nn.functional.normalize(model(model.preprocess(texts))["sentence_embedding"])
        eye = torch.eye(len(texts), dtype=torch.bool)
        y = torch.tensor(ys)
        pos = (y[:, None] == y[None, :]) & ~eye
        sim = (emb @ emb.T / 0.05).masked_fill(eye, -1e9)
        logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
        loss = (-(logp * pos).sum(1) / pos.sum(1).clamp_min(1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def run_one(routes, val, test, encoder: Encoder, scoring: str) -> dict:
    router = Router.from_examples(routes, encoder=encoder, scoring=scoring)
    router.fit([t for t, _ in val], [label for _, label in val])
    ds = router.route_batch([t for t, _ in test])
    res = metrics([d.adapter for d in ds], np.array([d.score for d in ds]), [g for _, g in test])
    res["val_in_scope_accuracy"] = router.calibration.fit_in_scope_accuracy
    res["val_oos_recall"] = router.calibration.fit_oos_recall
    res["knn_m"] = router.knn_m if router.scorer == "knn" else None
    return res


def main() -> None:
    from sentence_transformers import SentenceTransformer

    out: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "steps": STEPS,
        "runs": {},
    }
    for k in (10, 50):
        routes, val, test = load(k, "domains")
        for tuned in (False, True):
            model = SentenceTransformer(str(minilm_dir()), device="cpu")
            t0 = time.perf_counter()
            loss = supcon_tune(model, routes, STEPS[k]) if tuned else None
            tune_s = time.perf_counter() - t0
            enc = ModelEncoder(model, f"minilm-{'tuned' if tuned else 'as-shipped'}-k{k}")
            for scoring in SCORERS:
                res = run_one(routes, val, test, enc, scoring)
                res.update(tune_seconds=tune_s if tuned else 0.0, final_loss=loss)
                key = f"K={k} {scoring} {'tuned' if tuned else 'as shipped'}"
                out["runs"][key] = res
                print(key, json.dumps(res), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "router_tuning.json").write_text(json.dumps(out, indent=2))
    (RESULTS / "router_tuning.md").write_text(render(out))
    print(render(out))


def render(out: dict) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    lines = [
        "# Encoder fine-tuning on the routing examples (CLINC150, 10 domains)",
        "",
        "Command: `nice .venv/bin/python benchmarks/bench_router_tuning.py`. SupCon fine-tune of "
        f"the packaged MiniLM on the routing examples only ({out['steps']} steps per K); "
        "thresholds fitted on val + oos_val, measured on test + oos_test.",
        "",
        "| run | in-scope acc | OOS recall | OOS precision | AUROC | val acc / OOS recall "
        "| tune s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, r in out["runs"].items():
        lines.append(
            f"| {key} | {pct(r['in_scope_accuracy'])} | {pct(r['oos_recall'])} | "
            f"{pct(r['oos_precision'])} | {r['auroc']:.3f} | "
            f"{pct(r['val_in_scope_accuracy'])} / {pct(r['val_oos_recall'])} | "
            f"{r['tune_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
