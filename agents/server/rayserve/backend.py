"""The ingress's backend: generation on the engine replicas of a Ray Serve deployment.

Beside :class:`~..backends.LocalBackend` (an engine in this process) and
:class:`~..proxy.ProxyBackend` (an engine behind HTTP), :class:`RayBackend` sends each request
through a Serve ``DeploymentHandle`` to an engine replica (:mod:`.replica`). The adapter
reference is resolved here, once, to an immutable version; its digest is Serve's multiplexed
model id, so Serve routes the request to a replica that holds the adapter when one does.

A replica that dies (``ray.kill``, a lost node) fails its requests with a Ray actor error; each
is sent again, up to ``retries`` times, to a live replica. A request whose answer had already
begun streaming to the client resumes only if the new answer starts with the text already
sent (greedy or seeded requests); otherwise the stream ends with an error.

Each answer reports where it ran (``placement``: the replica, whether it already held the
adapter, the attempts), in the ``X-LoraRoute-Replica`` header and the ``loraroute`` field.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from ..backends import Delta, Final, Prepared, QueuedChoice, Target, _run, layout_strings
from ..errors import APIError
from .config import RayServeArgs

logger = logging.getLogger(__name__)


def _retryable() -> tuple[type[BaseException], ...]:
    """Errors that mean "the replica is gone", not "the request is bad"."""
    from ray.exceptions import RayActorError, WorkerCrashedError
    from ray.serve.exceptions import ReplicaUnavailableError

    return (RayActorError, WorkerCrashedError, ReplicaUnavailableError)


def _replica_gone(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    seen = 0
    while exc is not None and seen < 5:  # a RayTaskError may wrap the actor's death
        if isinstance(exc, kinds):
            return True
        exc = getattr(exc, "cause", None) or exc.__cause__  # type: ignore[assignment]
        seen += 1
    return False


def _error(event: dict[str, Any]) -> APIError:
    err = event.get("error") or {}
    return APIError(
        int(event.get("status", 500)),
        str(err.get("message", "the engine replica failed")),
        code=err.get("code"),
        param=err.get("param"),
        type=err.get("type"),
        headers=event.get("headers") or {},
    )


class RayChoice(QueuedChoice):
    """One choice of a request on an engine replica, fed by :class:`RayRunning`'s reader."""

    def __init__(self, index: int, running: RayRunning):
        super().__init__(index, running)
        self.text = ""  # text handed to the caller
        self.entries = 0  # log-probability entries handed to the caller
        self.replay: list[Any] | None = None  # [text, entries] of a resent answer, until past
        self.ended = False
        self._final: Final | None = None

    def final(self) -> Final:
        if self._final is None:
            raise APIError(502, "the engine replica's answer is incomplete")
        return self._final

    def _delta(self, delta: Delta) -> None:
        text, logprobs = delta.text, list(delta.logprobs)
        if self.replay is not None:
            replay = self.replay
            replay[0] += text
            replay[1] += len(logprobs)
            if not (self.text.startswith(replay[0]) or replay[0].startswith(self.text)):
                raise RayRunning.diverged()
            if len(replay[0]) <= len(self.text):
                return
            text = replay[0][len(self.text) :]
            logprobs = logprobs[max(0, len(logprobs) - (replay[1] - self.entries)) :]
            self.replay = None
        if text or logprobs:
            self.text += text
            self.entries += len(logprobs)
            self.times.tokens.append(time.perf_counter())
            self.queue.put_nowait(Delta(text, logprobs))

    def _end(self, final: Final | None, outcome: BaseException | None = None) -> None:
        if final is not None:
            if self.replay is not None and self.replay[0] != self.text:
                raise RayRunning.diverged()
            self._final = final
        if not self.ended:
            self.ended = True
            if outcome is not None:
                self.queue.put_nowait(outcome)
            self.queue.put_nowait(None)


class RayRunning:
    """One request on an engine replica, its choices dealt to one :class:`RayChoice` each;
    sent again elsewhere if its replica dies."""

    def __init__(self, backend: RayBackend, target: Target, prepared: Prepared):
        self.backend = backend
        self.target = target
        self.prepared = prepared
        self.stream = bool(prepared.body.get("stream"))
        self.adapter_ref: str | None = target.adapter
        self.adapter_digest: str | None = None
        self.placement: dict[str, Any] = {"replica": None, "attempts": 0}
        self.started = time.perf_counter()
        self.streams = [RayChoice(i, self) for i in range(prepared.choices)]
        self._gen: Any = None
        self._reader: asyncio.Future[None] | None = None
        self._done = False

    async def begin(self, digest: str | None) -> None:
        """Send the request and wait for its replica's ``start`` event (retrying)."""
        self.adapter_digest = digest
        await self._attempt()

    async def _attempt(self) -> None:
        kinds = _retryable()
        while True:
            self.placement["attempts"] += 1
            gen = self.backend._call(self.target, self.prepared, self.adapter_digest)
            self._gen = gen
            try:
                first = await gen.__anext__()
            except StopAsyncIteration:
                raise APIError(
                    502, "the engine replica ended the request without an answer"
                ) from None
            except Exception as exc:
                await self._retry_or_raise(exc, kinds)
                continue
            if first.get("event") == "error":
                raise _error(first)
            self.adapter_ref = first.get("adapter_ref")
            self.adapter_digest = first.get("adapter_digest")
            self.placement.update(
                replica=first["replica"], adapter_was_resident=first["adapter_was_resident"]
            )
            self.backend._seen(first)
            return

    async def _retry_or_raise(self, exc: BaseException, kinds: tuple[type[BaseException], ...]):
        from ray.serve.exceptions import BackPressureError

        if isinstance(exc, BackPressureError):
            raise APIError(
                503,
                "every engine replica's queue is full; retry shortly",
                code="replicas_busy",
                headers={"Retry-After": "1"},
            ) from exc
        if not _replica_gone(exc, kinds):
            raise exc
        self.backend.retried += 1
        attempts = self.placement["attempts"]
        if attempts > self.backend.retries:
            raise APIError(
                503,
                f"the engine replica failed {attempts} times ({type(exc).__name__}); retry "
                f"the request once the deployment has recovered",
                code="replica_unavailable",
                headers={"Retry-After": "1"},
            ) from exc
        logger.warning("engine replica failed (%s); sending the request again", type(exc).__name__)
        await asyncio.sleep(min(2.0, 0.1 * 2 ** (attempts - 1)))

    def start_reader(self) -> None:
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        kinds = _retryable()
        outcome: BaseException | None = None
        try:
            while True:
                try:
                    async for event in self._gen:
                        self._event(event)
                        if all(s.ended for s in self.streams):
                            return
                    raise APIError(502, "the engine replica ended the answer without finishing it")
                except APIError:
                    raise
                except Exception as exc:
                    await self._retry_or_raise(exc, kinds)
                    await self._attempt()
                    self._resume()
        except asyncio.CancelledError:
            outcome = APIError(499, "the request was cancelled", code="client_disconnected")
        except Exception as exc:  # noqa: BLE001 - handed to the choices' readers
            outcome = exc
        finally:
            unfinished = not all(s.ended for s in self.streams)
            for s in self.streams:
                s._end(None, outcome or APIError(502, "the engine replica's answer is incomplete"))
            if unfinished:  # abandoned (client gone, timeout, error): stop the replica
                self._stop()
            self._done = True

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "error":
            raise _error(event)
        index = int(event.get("index", 0))
        if not 0 <= index < len(self.streams) or self.streams[index].ended:
            return  # a choice already finished before a resend
        choice = self.streams[index]
        if kind == "delta":
            choice._delta(event["delta"])
        elif kind == "final":
            choice._end(event["final"])

    def _resume(self) -> None:
        """After a resend: a streamed choice resumes after the text already sent; a whole one
        (nothing shown yet) starts over."""
        for s in self.streams:
            if s.ended:
                continue
            if self.stream and s.text:
                s.replay = ["", 0]
            else:
                s.text, s.entries = "", 0

    @staticmethod
    def diverged() -> APIError:
        return APIError(
            502,
            "an engine replica failed mid-answer and the answer sent again differs from the "
            "text already streamed (sampled output); send the request again",
            code="replica_failed_mid_stream",
        )

    def _stop(self) -> None:
        if self._gen is not None:
            self._gen.cancel()  # the replica's generator ends and cancels its request

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            if self._reader is not None:
                self._reader.cancel()
            else:
                self._stop()

    def done(self) -> bool:
        return self._done


class RayBackend:
    """Generates on the engine replicas behind ``handle`` (a Serve ``DeploymentHandle``)."""

    kind = "ray"

    def __init__(self, handle: Any, args: RayServeArgs):
        self.handle = handle
        self.args = args
        self.retries = args.retries
        self.affinity = args.affinity
        self.concurrency = args.max_replicas * args.ongoing_per_replica
        self.max_context: int | None = None  # each replica's engine enforces its own
        self.base_fingerprint: str | None = None
        self._base_model = args.base_model or args.settings().base_model
        self._registry: Any = None
        self.replicas: dict[str, dict[str, Any]] = {}  # replica -> last facts it reported
        self.retried = 0
        self.requests = 0
        self.held_requests = 0

    @property
    def base_model(self) -> str:
        return self._base_model

    @property
    def registry(self) -> Any:
        if self._registry is None:
            self._registry = self.args.open_registry()
        return self._registry

    def base_names(self) -> set[str]:
        return {self.base_model.lower()}

    def private_strings(self) -> dict[str, str]:
        """Folders and URLs that error messages to clients must not show: the replicas'
        errors reach clients through this ingress, and theirs name the same home, base model
        folder and registry (its URL and folders) as this process's settings."""
        settings = self.args.settings()
        base = Path(self._base_model).expanduser()
        try:
            registry = self.registry
        except Exception:  # noqa: BLE001 - it cannot open yet: its URL, as configured, is hidden
            registry = None
        hide = layout_strings(settings.home, base if base.exists() else None, registry)
        if registry is None:
            hide[self.args.registry or settings.registry_url] = "the server's registry"
        return hide

    def _call(self, target: Target, prepared: Prepared, digest: str | None) -> Any:
        options: dict[str, Any] = {"stream": True}
        if self.affinity and digest:
            options["multiplexed_model_id"] = digest
        return self.handle.options(**options).generate.remote(target, prepared, digest)

    def _seen(self, start: dict[str, Any]) -> None:
        self._learn(start)
        self.requests += 1
        self.held_requests += int(bool(start.get("adapter_was_resident")))
        self.replicas[start["replica"]] = {
            "resident": start.get("resident", []),
            "loads": start.get("loads", 0),
            "max_resident": start.get("max_resident"),
            "seen": time.time(),
        }

    def _learn(self, facts: dict[str, Any]) -> None:
        """The base model's name and fingerprint as the replicas' engines report them."""
        self._base_model = facts.get("base_model") or self._base_model
        self.base_fingerprint = facts.get("base_fingerprint") or self.base_fingerprint

    async def start(self, target: Target, prepared: Prepared) -> RayRunning:
        digest = None
        if target.adapter is not None:
            version = await _run(self.registry.resolve, target.adapter)
            target = dataclasses.replace(target, adapter=version.ref)
            digest = version.digest
        running = RayRunning(self, target, prepared)
        await running.begin(digest)
        return running

    async def prompt_text(self, prompt: str | list[int]) -> str:
        if isinstance(prompt, str):
            return prompt
        answer = await self.handle.prompt_text.remote(prompt)
        if answer.get("event") == "error":
            raise _error(answer)
        return str(answer["text"])

    async def adapter_cards(self) -> list[dict[str, Any]]:
        cards: dict[str, dict[str, Any]] = {}
        for replica, facts in self.replicas.items():
            for entry in facts["resident"]:
                card = cards.setdefault(
                    entry["ref"],
                    {
                        "id": entry["ref"],
                        "digest": entry["digest"],
                        "resident": True,
                        "kind": "replica",
                        "replicas": [],
                    },
                )
                card["replicas"].append(replica)
        return list(cards.values())

    async def load_adapter(self, name: str, path: str, inplace: bool) -> str:
        raise APIError(
            400,
            f"cannot load {name!r} from a path: engine replicas of the Ray deployment load "
            f"adapters from the registry on demand; push the folder (adapters push PATH --name "
            f"{name}) and ask for it by name",
            param="lora_path",
            code="adapter_loading_unsupported",
        )

    async def unload_adapter(self, name: str) -> str:
        raise APIError(
            400,
            f"cannot unload {name!r}: engine replicas of the Ray deployment free adapters "
            f"themselves, least recently used first",
            param="lora_name",
            code="adapter_loading_unsupported",
        )

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        detail: dict[str, Any] = {"backend": "ray", "base_model": self.base_model}
        try:
            info = await asyncio.wait_for(self.handle.info.remote(), timeout=10.0)
        except Exception as exc:  # noqa: BLE001 - not ready: said in the probe's answer
            detail["error"] = f"no engine replica answered: {type(exc).__name__}: {exc}"
            return False, detail
        self._learn(info)
        detail.update(replica=info["replica"], replicas_seen=len(self.replicas))
        return True, detail

    def stats(self) -> dict[str, Any]:
        facts = list(self.replicas.values())
        return {
            "resident": sum(len(f["resident"]) for f in facts),
            "max_resident": sum(f["max_resident"] or 0 for f in facts) or None,
            "loads": sum(f["loads"] for f in facts),
            "replicas": len(facts),
            "requests": self.requests,
            "held_requests": self.held_requests,
            "retried": self.retried,
        }

    async def aclose(self) -> None:
        return None
