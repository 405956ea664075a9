"""``adapters demo``: train, push, route and chat, end to end, on the embedded defaults.

The demo keeps its own registry under ``<home>/demo`` so it never mixes with a user's
adapters. Adapters are reused when the registry already holds a version trained on the same
data and base model, so a second run only loads and chats.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loraroute.models import fingerprint, resolve_base_model
from loraroute.settings import Settings, get_settings

from .demo_data import CALIBRATION, DOMAINS, SCRIPT, DemoDomain

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Knobs of the demo; the defaults are sized for a 2-core CPU and SmolLM2-135M."""

    base_model: str | None = None
    max_steps: int = 60
    batch_size: int = 8
    learning_rate: float = 2e-3
    rank: int = 8
    max_new_tokens: int = 48
    domains: tuple[DemoDomain, ...] = DOMAINS
    script: tuple[str, ...] = SCRIPT
    calibration: tuple[tuple[str, str | None], ...] = CALIBRATION
    encoder: str | None = None


@dataclass
class DemoTurn:
    request: str
    adapter: str | None
    score: float
    answer: str


@dataclass
class DemoResult:
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    turns: list[DemoTurn] = field(default_factory=list)
    seconds: float = 0.0


def demo_registry_url(settings: Settings) -> str:
    return f"sqlite:///{settings.home / 'demo' / 'registry.db'}"


def run_demo(
    config: DemoConfig | None = None,
    *,
    settings: Settings | None = None,
    say: Callable[[str], None] | None = None,
    on_turn: Callable[[DemoTurn], None] | None = None,
) -> DemoResult:
    """Run the whole demo; ``say`` receives progress lines, ``on_turn`` each chat turn."""
    from langchain_core.messages import AIMessage, HumanMessage

    from loraroute.registry import open_registry
    from loraroute.router import Router

    from .chat_model import ChatLoraRoute
    from .engine import Engine
    from .training import TrainConfig, load_chat_records, train_adapter

    config = config or DemoConfig()
    settings = settings or get_settings()
    say = say or (lambda msg: logger.info("%s", msg))
    started = time.perf_counter()
    result = DemoResult()
    demo_dir = settings.home / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)

    say(f"base model: resolving {config.base_model or settings.base_model}")
    base = resolve_base_model(config.base_model, settings=settings, on_stage=say)
    base_fp = fingerprint(base.path, settings=settings)
    say(f"base model: {base.name} at {base.path} ({base_fp[:19]}...)")
    registry = open_registry(demo_registry_url(settings), settings=settings)
    say(f"registry: {demo_registry_url(settings)}")

    for domain in config.domains:
        data_path = demo_dir / "data" / f"{domain.name}.jsonl"
        data_path.parent.mkdir(parents=True, exist_ok=True)
        records = domain.records()
        data_path.write_text("".join(json.dumps(r) + "\n" for r in records))
        dataset = load_chat_records(data_path)
        existing = [
            v
            for v in registry.list(name=domain.name)
            if v.data_digest == dataset.digest and v.base_fingerprint == base_fp
        ]
        if existing:
            say(f"adapter {existing[-1].ref}: reusing (same data and base)")
            result.reused.append(existing[-1].ref)
            continue
        say(
            f"adapter {domain.name}: training on {len(records)} examples ({config.max_steps} steps)"
        )
        train_cfg = TrainConfig(
            max_steps=config.max_steps,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            rank=config.rank,
            alpha=2 * config.rank,
        )
        trained = train_adapter(
            data_path,
            demo_dir / "runs" / domain.name,
            base_model=str(base.path) if config.base_model else None,
            config=train_cfg,
            settings=settings,
            progress=_progress_printer(say, domain.name),
        )
        version = registry.push(
            trained.output_dir,
            domain.name,
            domain=domain.name,
            description=domain.description,
            routing_examples=trained.routing_examples,
            metrics=trained.metrics,
            data_digest=trained.data_digest,
            training_config=trained.training_config,
            base_model_id=trained.base_model_id,
            base_fingerprint=trained.base_fingerprint,
        )
        say(
            f"adapter {version.ref}: pushed ({version.digest[:19]}..., "
            f"train loss {trained.metrics.get('train_loss', float('nan')):.3f}, "
            f"{trained.train_seconds:.0f} s)"
        )
        result.trained.append(version.ref)

    say("router: embedding routing examples and calibrating on held-out requests")
    router = Router(registry, encoder=config.encoder or settings.embedder)
    texts = [t for t, _ in config.calibration]
    labels = [label for _, label in config.calibration]
    router.fit(texts, labels)

    say("engine: loading the shared base model")
    engine = Engine(str(base.path), registry=registry, settings=settings)
    chat = ChatLoraRoute(engine=engine, router=router, max_tokens=config.max_new_tokens)
    history: list = []
    say("chat: a scripted conversation, each turn routed with its history")
    for request in config.script:
        history.append(HumanMessage(request))
        reply = chat.invoke(history)
        meta = reply.response_metadata
        turn = DemoTurn(
            request=request,
            adapter=meta.get("adapter"),
            score=float(meta.get("route_score") or 0.0),
            answer=str(reply.content).strip(),
        )
        history.append(AIMessage(turn.answer))
        result.turns.append(turn)
        if on_turn:
            on_turn(turn)
    result.seconds = time.perf_counter() - started
    return result


def _progress_printer(say: Callable[[str], None], name: str):
    last = [0.0]

    def progress(step: int, total: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        if step == total or now - last[0] > 5:
            last[0] = now
            loss = (logs or {}).get("loss")
            extra = f", loss {loss:.3f}" if isinstance(loss, float) else ""
            say(f"adapter {name}: step {step}/{total}{extra}")

    return progress


__all__ = ["DemoConfig", "DemoResult", "DemoTurn", "demo_registry_url", "run_demo", "Path"]
