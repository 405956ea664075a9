"""``adapters demo``: train, push, route and chat, end to end, on the embedded defaults.

The demo writes its data and training runs under ``<home>/demo``, pushes its adapters
(cooking, space, gardening, tech) into the local registry under home, promotes them with the
serving alias (``prod``) and saves the fitted router where ``Router.open`` finds it, so
``adapters ls``, ``adapters route``, ``adapters chat`` and ``ChatLoraRoute()`` see the demo's
adapters afterwards (``adapters rm --force cooking`` removes one). It never pushes into a registry named by
``LORAROUTE_REGISTRY``. Adapters are reused when the registry already holds a version trained
on the same data, base model and recipe, so a second run only loads and chats.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraroute.models import fingerprint, resolve_base_model
from loraroute.settings import Settings, get_settings

from .data import CALIBRATION, DOMAINS, SCRIPT, DemoDomain

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Knobs of the demo; the defaults are sized for a 2-core CPU and SmolLM2-135M."""

    base_model: str | None = None
    # Rank 8 on the attention projections of every layer, 3 epochs: the adapter picks up the
    # domain's voice and still answers from the base model's knowledge. (Adapting only the top
    # 8 layers trains ~2x faster but collapses to the opening and sign-off with no answer.)
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 8
    max_length: int = 128
    learning_rate: float = 1e-3
    rank: int = 8
    target_modules: str = "q_proj,k_proj,v_proj,o_proj"
    last_layers: int | None = None
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
    """The local registry under home, whatever ``LORAROUTE_REGISTRY`` says: the demo never
    pushes its toy adapters into a team registry."""
    return f"sqlite:///{settings.registry_dir / 'registry.db'}"


def demo_router_dir(settings: Settings) -> Path:
    """Where ``Router.open`` (and so ``adapters route``/``chat``, ``ChatLoraRoute``) looks."""
    return settings.home / "router" / settings.serving_alias


def demo_router(registry: Any = None, *, settings: Settings | None = None) -> tuple[Any, Any]:
    """The demo's registry and its fitted router (what ``adapters demo`` left), for examples.

    ``registry`` is a URL or registry object; by default the local registry the demo fills.
    """
    from loraroute.registry import open_registry
    from loraroute.router import Router

    settings = settings or get_settings()
    if registry is None or isinstance(registry, str):
        registry = open_registry(registry or demo_registry_url(settings), settings=settings)
    state = demo_router_dir(settings)
    if (state / "state.json").is_file():
        return registry, Router.load(state, registry, settings=settings)
    return registry, Router(registry, settings=settings)


def run_demo(
    config: DemoConfig | None = None,
    *,
    settings: Settings | None = None,
    say: Callable[[str], None] | None = None,
    on_turn: Callable[[DemoTurn], None] | None = None,
) -> DemoResult:
    """Run the whole demo; ``say`` receives progress lines, ``on_turn`` each chat turn."""
    from loraroute.registry import open_registry
    from loraroute.router import Router

    from ..runtime.engine import Engine
    from ..training import TrainConfig, train_adapter
    from ..training.data import data_digest, load_examples

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
        digest = data_digest(load_examples(data_path))
        train_cfg = TrainConfig(
            epochs=config.epochs,
            max_steps=config.max_steps,
            batch_size=config.batch_size,
            max_length=config.max_length,
            learning_rate=config.learning_rate,
            rank=config.rank,
            target_modules=config.target_modules,
            last_layers=config.last_layers,
        )
        existing = [
            v
            for v in registry.list(name=domain.name)
            if v.data_digest == digest
            and v.base_fingerprint == base_fp
            and v.training_config == train_cfg.to_dict()
        ]
        if existing:
            registry.alias_set(domain.name, settings.serving_alias, existing[-1].version)
            say(f"adapter {existing[-1].ref}: reusing (same data, base and recipe)")
            result.reused.append(existing[-1].ref)
            continue
        say(f"adapter {domain.name}: training on {len(records)} examples")
        trained = train_adapter(
            data_path,
            demo_dir / "runs" / domain.name,
            base_model=config.base_model,
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
        # promoted explicitly: a pushed version is not live (routed to) until the alias says so
        registry.alias_set(domain.name, settings.serving_alias, version.version)
        say(
            f"adapter {version.ref}: pushed ({version.digest[:19]}..., "
            f"train loss {trained.metrics.get('train_loss', float('nan')):.3f}, "
            f"{trained.train_seconds:.0f} s)"
        )
        result.trained.append(version.ref)

    say("router: embedding routing examples and calibrating on held-out requests")
    router = Router(registry, encoder=config.encoder or settings.embedder, settings=settings)
    texts = [t for t, _ in config.calibration]
    labels = [label for _, label in config.calibration]
    router.fit(texts, labels)
    router.save(demo_router_dir(settings))

    say("engine: loading the shared base model")
    engine = Engine(config.base_model, registry=registry, settings=settings)
    say("chat: a scripted conversation, each turn routed with its history")
    try:
        _chat(engine, router, config, result, on_turn)
    finally:
        engine.close()
    result.seconds = time.perf_counter() - started
    return result


def _chat(engine, router, config: DemoConfig, result: DemoResult, on_turn) -> None:
    from langchain_core.messages import AIMessage, HumanMessage

    from ..chat_model import ChatLoraRoute

    chat = ChatLoraRoute(engine=engine, router=router, max_tokens=config.max_new_tokens)
    history: list = []
    for request in config.script:
        history.append(HumanMessage(request))
        reply = chat.invoke(history)
        meta = reply.response_metadata
        turn = DemoTurn(
            request=request,
            adapter=meta.get("adapter_ref"),
            score=float(meta.get("route_score") or 0.0),
            answer=str(reply.content).strip(),
        )
        history.append(AIMessage(turn.answer))
        result.turns.append(turn)
        if on_turn:
            on_turn(turn)


def _progress_printer(say: Callable[[str], None], name: str):
    last = [0.0, -1]

    def progress(step: int, total: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        if step != last[1] and (step == total or now - last[0] > 5):
            last[0], last[1] = now, step
            loss = (logs or {}).get("loss")
            extra = f", loss {loss:.3f}" if isinstance(loss, float) else ""
            say(f"adapter {name}: step {step}/{total}{extra}")

    return progress


__all__ = [
    "DemoConfig",
    "DemoResult",
    "DemoTurn",
    "demo_registry_url",
    "demo_router",
    "demo_router_dir",
    "run_demo",
]
