"""The API's new paths, priced on SmolLM2-135M (CPU, fp32) with one random LoRA adapter.

Each pair of figures is measured alternately, ``--reps`` times, and the ratio is the median of
the paired ratios (the shared machine's load drifts).

1. ``n`` choices in one request against the same choices as sequential requests (the official
   openai client against the server on loopback; sampled, seeded, ``ignore_eos`` so every
   choice has ``max_tokens`` tokens): wall time, and the most rows the engine decoded at once.
2. The sampling path: decode tokens/s of 8 requests decoded together, greedy with nothing to
   apply (one shared argmax) against every sampling parameter at once (temperature, top_k,
   top_p, min_p, repetition/presence/frequency penalties, logit_bias, 5 logprobs).
3. Scoring a prompt the way lm-evaluation-harness does (``/v1/completions`` with echo,
   ``max_tokens=1``, ``logprobs=1``) against generating one token without echo.

    nice .venv/bin/python benchmarks/bench_api.py [--max-tokens 32] [--n 8]

Writes benchmarks/results/api.json and api.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "Write a short story about a lighthouse keeper."
SAMPLED = dict(
    temperature=0.8,
    top_p=0.9,
    top_k=50,
    min_p=0.05,
    repetition_penalty=1.1,
    presence_penalty=0.5,
    frequency_penalty=0.5,
    logit_bias=((13, 2.0), (198, -1.0)),
    logprobs=5,
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    import openai
    import torch

    from loraroute.agents.runtime import Engine, SamplingParams
    from loraroute.agents.server import BackgroundServer, LocalBackend, create_app
    from loraroute.registry import open_registry
    from loraroute.settings import Settings, get_settings
    from loraroute.testing import make_random_lora

    torch.manual_seed(0)
    home = Path(tempfile.mkdtemp(prefix="bench-api-"))
    settings = Settings(home=home)
    models = get_settings()  # the converted SmolLM2 in the user's cache
    reg = open_registry(settings=settings)
    engine = Engine(None, registry=reg, settings=models, device="cpu", max_batch_size=args.n)
    lora = make_random_lora(engine.base_path, home / "legal", seed=1)
    reg.push(lora, "legal", base_fingerprint=engine.base_fingerprint)
    engine.load_adapter("legal")
    res: dict = {
        "command": "nice .venv/bin/python benchmarks/bench_api.py"
        + (f" --max-tokens {args.max_tokens}" if args.max_tokens != 32 else "")
        + (f" --n {args.n}" if args.n != 8 else "")
        + (f" --reps {args.reps}" if args.reps != 5 else ""),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "model": engine.base_model_id,
        "max_tokens": args.max_tokens,
        "choices": args.n,
    }
    app = create_app(LocalBackend(engine), open_router=False)
    with BackgroundServer(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="-", max_retries=0)
        ask = dict(
            model="legal",
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=args.max_tokens,
            temperature=0.8,
            extra_body={"ignore_eos": True},
        )
        client.chat.completions.create(**ask)  # warm up
        log(f"n={args.n} in one request vs {args.n} sequential requests")

        def one_request() -> None:
            engine.scheduler.max_rows_seen = 0
            out = client.chat.completions.create(n=args.n, seed=1, **ask)
            assert len(out.choices) == args.n

        def sequential() -> None:
            for i in range(args.n):
                client.chat.completions.create(seed=1 + i, **ask)

        batched, one_by_one, rows = [], [], 0
        for _ in range(args.reps):  # paired, alternating
            batched.append(median_time(one_request, 1))
            rows = max(rows, engine.scheduler.max_rows_seen)
            one_by_one.append(median_time(sequential, 1))
        res["n"] = {
            "one_request_s": round(statistics.median(batched), 3),
            "sequential_s": round(statistics.median(one_by_one), 3),
            "speedup": round(
                statistics.median(b / a for a, b in zip(batched, one_by_one, strict=True)), 2
            ),
            "rows_decoded_together": rows,
        }
        log(f"  {res['n']}")

        log("lm-eval style scoring (echo, max_tokens=1, logprobs=1) vs one token")
        ids = engine.tokenizer(PROMPT * 4)["input_ids"]

        def score() -> None:
            client.completions.create(
                model="legal", prompt=ids, max_tokens=1, echo=True, logprobs=1, temperature=0
            )

        def one_token() -> None:
            client.completions.create(model="legal", prompt=ids, max_tokens=1, temperature=0)

        scored, plain = [], []
        for _ in range(args.reps * 3):  # paired, alternating
            scored.append(median_time(score, 1))
            plain.append(median_time(one_token, 1))
        res["scoring"] = {
            "prompt_tokens": len(ids),
            "echo_logprobs_s": round(statistics.median(scored), 4),
            "one_token_s": round(statistics.median(plain), 4),
            "ratio": round(statistics.median(a / b for a, b in zip(scored, plain, strict=True)), 2),
        }
        log(f"  {res['scoring']}")

    log(f"decode tok/s: {args.n} rows, greedy vs every sampling parameter")
    prompt_ids, _ = engine.render(PROMPT, args.max_tokens)

    def decode(params: SamplingParams) -> float:
        sched = engine.scheduler
        tokens, seconds = sched.decode_tokens, sched.decode_seconds
        with engine._model_lock:  # queue every row before the first step
            handles = [engine.submit_ids(prompt_ids, "legal", params) for _ in range(args.n)]
        for h in handles:
            h.result()
        return (sched.decode_tokens - tokens) / (sched.decode_seconds - seconds)

    greedy = SamplingParams(max_new_tokens=args.max_tokens, ignore_eos=False)
    greedy_plain = SamplingParams(max_new_tokens=args.max_tokens)
    every = SamplingParams(max_new_tokens=args.max_tokens, ignore_eos=True, seed=3, **SAMPLED)
    decode(greedy_plain)  # warm up
    engine.scheduler.eos_ids = set()  # every row decodes max_tokens
    plain_rates, sampled_rates = [], []
    for _ in range(args.reps):  # paired, alternating: the shared machine's load drifts
        plain_rates.append(decode(greedy))
        sampled_rates.append(decode(every))
    ratios = [s / g for s, g in zip(sampled_rates, plain_rates, strict=True)]
    res["sampling"] = {
        "greedy_tok_s": round(statistics.median(plain_rates), 1),
        "every_parameter_tok_s": round(statistics.median(sampled_rates), 1),
        "ratio": round(statistics.median(ratios), 2),
    }
    log(f"  {res['sampling']}")
    engine.close()

    res["goals"] = {
        "n_in_one_batch": {
            "met": res["n"]["rows_decoded_together"] == args.n and res["n"]["speedup"] > 1.5,
            "detail": f"{args.n} choices decoded {res['n']['rows_decoded_together']} rows at "
            f"once, {res['n']['speedup']}x faster than {args.n} sequential requests "
            f"(goal: all rows together, > 1.5x)",
        },
        "sampling_path_cost": {
            "met": res["sampling"]["ratio"] >= 0.8,
            "detail": f"every sampling parameter and 5 logprobs decode at "
            f"{res['sampling']['ratio']}x the plain greedy rate (goal: >= 0.8x on CPU)",
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "api.json").write_text(json.dumps(res, indent=2))
    (RESULTS / "api.md").write_text(write_md(res))
    log("wrote benchmarks/results/api.json and api.md")


def write_md(res: dict) -> str:
    n, s, sc = res["n"], res["sampling"], res["scoring"]
    lines = [
        f"# API paths ({res['model']}, CPU, fp32)",
        "",
        f"Command: `{res['command']}`; {res['machine']} (shared 2-core machine: noisy). One "
        f"random rank-8 LoRA adapter, max_tokens={res['max_tokens']}.",
        "",
        "| what | ours | against | ratio |",
        "|---|---|---|---|",
        f"| n={res['choices']} choices, one request | {n['one_request_s']} s "
        f"({n['rows_decoded_together']} rows "
        f"decoded together) | the same as sequential requests: {n['sequential_s']} s | "
        f"{n['speedup']}x faster |",
        f"| decode, every sampling parameter + 5 logprobs | {s['every_parameter_tok_s']} tok/s "
        f"| plain greedy: {s['greedy_tok_s']} tok/s | {s['ratio']}x |",
        f"| lm-eval scoring: echo + logprobs, {sc['prompt_tokens']}-token prompt | "
        f"{sc['echo_logprobs_s']} s | one token without echo: {sc['one_token_s']} s | "
        f"{sc['ratio']}x |",
        "",
        "## Goals",
        "",
    ]
    for name, goal in res["goals"].items():
        lines.append(f"- {name}: {'met' if goal['met'] else 'MISSED'}: {goal['detail']}")
    lines += [
        "",
        "## Reading the numbers",
        "",
        "- The choices of one request are submitted together and share every decode step; "
        "sequential requests each decode alone.",
        "- The sampling path works row by row (softmax, top-k candidates, penalties, log-softmax "
        "for the logprobs); greedy rows with nothing to apply share one argmax.",
        "- Scoring with echo runs one more forward over the prompt beside the engine's prefill "
        "(which keeps only the last position's logits); if the scheduler returned prompt "
        "log-probabilities from its prefill, as vLLM's engine does, it would cost about one "
        "prefill.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
