"""The engine replica of the Ray Serve deployment: one base model, an adapter pool, and Ray
Serve's model multiplexing in front of the pool.

The ingress sends each request with the adapter version's digest as Serve's multiplexed model
id; Serve prefers a replica that already holds that id. On a replica, the multiplexed loader
(``serve.multiplexed``, ``max_num_models_per_replica`` = the pool's slots) loads the adapter
into the engine's pool, and when Serve's least-recently-used order drops a digest, the pool
frees its slot too, so what Serve routes by is what the replica holds.

A request is an async generator of events: ``start`` (which replica, whether the adapter was
already resident when the request arrived, the replica's pool and load count), then ``delta``
events of each choice (its index and a :class:`~..backends.Delta`), then each choice's
``final`` (or ``error``, an OpenAI-shaped error body), so the ingress can report
placement before the first token and retry on another replica if this one dies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..backends import LocalBackend, Prepared, Target, _run
from ..errors import map_exception
from .config import RayServeArgs

logger = logging.getLogger(__name__)


class _Held:
    """What Serve's multiplexer keeps per adapter: dropping it frees the pool's slot."""

    def __init__(self, replica: EngineReplica, digest: str):
        self.replica = replica
        self.digest = digest
        self.released = False

    def __del__(self) -> None:  # Serve calls it on eviction; the GC may call it again
        if not self.released:
            self.released = True
            self.replica._release(self.digest)


class EngineReplica:
    """A Serve deployment class (wrapped by ``serve.deployment`` in :func:`.app.build_app`)."""

    def __init__(self, args: RayServeArgs):
        from ray import serve

        from ...runtime import Engine

        self.args = args
        registry = args.open_registry()
        self.engine = Engine(
            args.base_model,
            registry=registry,
            settings=args.settings(),
            config=args.engine_config(),
        )
        self.backend = LocalBackend(self.engine, own_engine=True)
        self.replica = serve.get_replica_context().replica_id.to_full_id_str()
        self._refs: dict[str, str] = {}  # digest -> the version ref to load it by
        self._unwanted: set[str] = set()  # dropped by Serve's cache, still in use here
        self.requests = 0
        self.held_requests = 0

        async def load(digest: str) -> _Held:
            return await self._load(digest)

        # an instance attribute, so each deployment's pool size can differ (Serve detects it)
        self._adapter = serve.multiplexed(max_num_models_per_replica=args.max_resident)(load)

    async def _load(self, digest: str) -> _Held:
        ref = self._refs.get(digest)
        if ref is None:  # pragma: no cover - generate() records the ref before loading
            raise KeyError(f"no adapter reference is known for digest {digest}")
        self._unwanted.discard(digest)
        entry = await self._when_free(lambda: _run(self.engine.load_adapter, ref))
        if entry is None or entry.digest != digest:
            got = None if entry is None else entry.digest
            raise ValueError(f"adapter {ref!r} resolved to digest {got}, not {digest}")
        return _Held(self, digest)

    async def _when_free(self, attempt: Callable[[], Awaitable[Any]]) -> Any:
        """``await attempt()``; while every slot is in use, wait for requests on this replica to
        end (a request that reached its replica is not refused for want of a slot)."""
        from ...errors import PoolFullError

        deadline = time.monotonic() + self.args.server.request_timeout
        while True:
            self._evict_unwanted()
            try:
                return await attempt()
            except PoolFullError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

    def _release(self, digest: str) -> None:
        self._unwanted.add(digest)
        self._evict_unwanted()

    def _evict_unwanted(self) -> None:
        """Free the slots of adapters Serve's cache has dropped, once no request uses them, so
        the pool holds what Serve routes by (not whatever its own order would keep)."""
        from ...errors import PoolFullError, UnknownAdapterError

        for digest in list(self._unwanted):
            try:
                self.engine.evict(digest)
            except PoolFullError:  # still in use: tried again before the next load
                continue
            except UnknownAdapterError:
                pass
            except Exception:  # noqa: BLE001 - one failed eviction must not fail every request
                logger.warning("could not free the slot of %s", digest, exc_info=True)
            self._unwanted.discard(digest)

    def _resident(self) -> list[dict[str, Any]]:
        return [{"ref": e["ref"], "digest": e["digest"]} for e in self.engine.resident()]

    def info(self) -> dict[str, Any]:
        """The replica's facts, for the ingress's ``/ready`` and ``/v1/models``."""
        stats = self.backend.stats()
        return {
            "replica": self.replica,
            "base_model": self.engine.base_model_id,
            "base_fingerprint": self.engine.base_fingerprint,
            "max_context": self.engine.max_context,
            "resident": self._resident(),
            "loads": stats["loads"],
            "max_resident": stats["max_resident"],
            "requests": self.requests,
            "held_requests": self.held_requests,
            "running": stats["running"],
        }

    async def generate(
        self, target: Target, prepared: Prepared, digest: str | None
    ) -> AsyncIterator[dict[str, Any]]:
        """One request's events (see the module docstring)."""
        from ray import serve

        running = None
        try:
            held = digest is not None and any(e["digest"] == digest for e in self._resident())
            model_id = serve.get_multiplexed_model_id()
            if model_id:
                self._refs[model_id] = target.adapter or ""
                await self._adapter(model_id)
            running = await self._when_free(lambda: self.backend.start(target, prepared))
            self.requests += 1
            self.held_requests += int(held)
            yield {
                "event": "start",
                "replica": self.replica,
                "adapter_was_resident": held,
                "adapter_ref": running.adapter_ref,
                "adapter_digest": running.adapter_digest,
                "resident": self._resident(),
                "loads": self.backend.stats()["loads"],
                "max_resident": self.engine.pool.max_resident,
                "base_model": self.engine.base_model_id,
                "base_fingerprint": self.engine.base_fingerprint,
            }
            async for event in self._choices(running):
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:  # noqa: BLE001 - sent to the ingress as an error answer
            err = map_exception(exc)
            yield {"event": "error", "status": err.status, "headers": err.headers, **err.body()}
        finally:
            if running is not None and not running.done():
                running.cancel()

    @staticmethod
    async def _choices(running: Any) -> AsyncIterator[dict[str, Any]]:
        """Each choice's ``delta`` events as they come, interleaved, and its ``final``."""
        queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()

        async def pump(stream: Any) -> None:
            try:
                async for delta in stream.deltas():
                    await queue.put({"event": "delta", "index": stream.index, "delta": delta})
                await queue.put({"event": "final", "index": stream.index, "final": stream.final()})
            except Exception as exc:  # noqa: BLE001 - raised in the generator below
                await queue.put(exc)

        tasks = [asyncio.ensure_future(pump(s)) for s in running.streams]
        try:
            finished = 0
            while finished < len(tasks):
                event = await queue.get()
                if isinstance(event, BaseException):
                    raise event
                finished += event["event"] == "final"
                yield event
        finally:
            for task in tasks:
                task.cancel()

    async def prompt_text(self, prompt: list[int]) -> dict[str, Any]:
        """A token-id prompt as text (the ingress routes ``model="auto"`` by text)."""
        try:
            return {"event": "text", "text": await self.backend.prompt_text(prompt)}
        except Exception as exc:  # noqa: BLE001 - sent to the ingress as an error answer
            err = map_exception(exc)
            return {"event": "error", "status": err.status, "headers": err.headers, **err.body()}

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
