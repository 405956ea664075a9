"""Scale-out backend: route here, generate on an external OpenAI-compatible engine.

For GPU fleets the server keeps the router and the registry and forwards generation to an
engine such as vLLM (``--enable-lora``, runtime LoRA updating on) or another ``adapters serve``.
Before forwarding a request for an adapter, it makes sure the engine has it: if the engine does
not list it in ``/v1/models``, the adapter's verified folder (``registry.local_path``) is pushed
through the engine's ``POST /v1/load_lora_adapter``. The engine sees immutable version names
(``legal@3``), so re-pointing an alias never serves stale weights. If the engine answers 404
for a name we loaded (it was evicted or the engine restarted), the adapter is loaded again and
the request retried once.

Chat and text completions are forwarded as they came (every parameter the server accepted,
``n``, ``logprobs``, ``echo``, ``guided_*`` included: the engine honours them or answers with
its own 4xx), always streamed upstream; the chunks of several choices are dealt to their
choices by index. The request id goes along in ``X-Request-Id``.

The engine must be able to read the adapter folder: on the same host, the path is passed as
it is; on another host, put the registry's checkouts on shared storage and pass
``adapter_dir`` (``--engine-adapter-dir``), the folder where the engine sees them: the engine
is then told ``adapter_dir/<digest folder>``.

Example::

    >>> backend = ProxyBackend("http://gpu-1:8000", registry=open_registry())  # doctest: +SKIP
    >>> app = create_app(backend)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import PurePosixPath
from typing import Any

import httpx

from .backends import Delta, Final, LogprobEntry, QueuedChoice, Target, _run
from .errors import APIError
from .logs import current_request_id
from .params import Prepared

logger = logging.getLogger(__name__)


def _upstream_message(resp: httpx.Response, text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:500] or resp.reason_phrase
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if data.get("message") or data.get("detail"):
            return str(data.get("message") or data.get("detail"))
    return text.strip()[:500]


def _is_loaded_adapter(card: dict[str, Any]) -> bool:
    """An adapter the engine holds now (vLLM lists only those; ours marks ``resident``)."""
    if not card.get("parent") or card.get("id") == "auto":
        return False
    extra = card.get("loraroute")
    return not isinstance(extra, dict) or bool(extra.get("resident", True))


def _chat_logprobs(data: Any) -> list[LogprobEntry]:
    """A chat chunk's ``logprobs.content`` entries."""
    out = []
    for e in (data or {}).get("content") or []:
        top = [(t["token"], t["logprob"], t.get("bytes")) for t in e.get("top_logprobs") or []]
        out.append(LogprobEntry(e["token"], e.get("logprob"), e.get("bytes"), top))
    return out


def _completion_logprobs(data: Any) -> list[LogprobEntry]:
    """A completion chunk's ``logprobs`` (parallel lists)."""
    if not data:
        return []
    tokens = data.get("tokens") or []
    values = data.get("token_logprobs") or [None] * len(tokens)
    tops = data.get("top_logprobs") or [None] * len(tokens)
    return [
        LogprobEntry(t, v, None, [(k, x, None) for k, x in top.items()] if top else None)
        for t, v, top in zip(tokens, values, tops, strict=False)
    ]


class ProxyChoice(QueuedChoice):
    """One choice of a proxied request, fed by :class:`ProxyRunning`'s reader."""

    def __init__(self, index: int, running: ProxyRunning):
        super().__init__(index, running)
        self.text: list[str] = []
        self.logprobs: list[LogprobEntry] = []
        self.finish = "stop"
        self.stop_reason: str | int | None = None
        self.calls: dict[int, dict[str, Any]] = {}

    def final(self) -> Final:
        usage = self.running.usage if self.index == 0 else {}  # the engine counts the request
        calls = [self.calls[i] for i in sorted(self.calls)] or None
        return Final(
            "".join(self.text),
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
            self.finish,
            calls,
            logprobs=self.logprobs if self.running.logprobs else None,
            stop_reason=self.stop_reason,
        )

    def _merge_call(self, call: dict[str, Any]) -> None:
        slot = self.calls.setdefault(
            int(call.get("index", len(self.calls))),
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if call.get("id"):
            slot["id"] = call["id"]
        fn = call.get("function") or {}
        if fn.get("name"):
            slot["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            slot["function"]["arguments"] += fn["arguments"]


class ProxyRunning:
    """One request streamed from the external engine (always streamed upstream, so a client
    disconnect closes the upstream connection and the engine stops generating); its chunks are
    dealt to one :class:`ProxyChoice` per choice index."""

    def __init__(
        self,
        resp: httpx.Response,
        adapter_ref: str | None,
        digest: str | None,
        *,
        kind: str,
        choices: int,
        logprobs: bool,
    ):
        self.resp = resp
        self.adapter_ref = adapter_ref
        self.adapter_digest = digest
        self.kind = kind
        self.logprobs = logprobs
        self.started = time.perf_counter()
        self.usage: dict[str, Any] = {}
        self.streams = [ProxyChoice(i, self) for i in range(choices)]
        self._reader: asyncio.Future[None] | None = None
        self._done = False

    def start_reader(self) -> None:
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for line in self.resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                self._chunk(json.loads(data))
            outcome: BaseException | None = None
        except APIError as exc:
            outcome = exc
        except (httpx.HTTPError, ValueError) as exc:
            outcome = APIError(502, f"the engine connection failed: {exc}", code="engine_error")
        except asyncio.CancelledError:
            outcome = APIError(499, "the request was cancelled", code="client_disconnected")
        finally:
            self._done = True
            await self.resp.aclose()
        for s in self.streams:
            if outcome is not None:
                s.queue.put_nowait(outcome)
            s.queue.put_nowait(None)

    def _chunk(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk:
            err = chunk["error"]
            msg = err.get("message") if isinstance(err, dict) else str(err)
            raise APIError(502, f"the engine failed mid-stream: {msg}", code="engine_error")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        now = time.perf_counter()
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index", 0))
            if not 0 <= index < len(self.streams):
                continue
            s = self.streams[index]
            if self.kind == "chat":
                delta = choice.get("delta") or {}
                for call in delta.get("tool_calls") or []:
                    s._merge_call(call)
                text = delta.get("content") or ""
                entries = _chat_logprobs(choice.get("logprobs"))
            else:
                text = choice.get("text") or ""
                entries = _completion_logprobs(choice.get("logprobs"))
            if choice.get("finish_reason"):
                s.finish = choice["finish_reason"]
            if choice.get("stop_reason") is not None:
                s.stop_reason = choice["stop_reason"]
            if text or entries:
                s.times.tokens.append(now)
                s.text.append(text)
                s.logprobs.extend(entries)
                s.queue.put_nowait(Delta(text, entries))

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            if self._reader is not None:
                self._reader.cancel()
            else:
                asyncio.ensure_future(self.resp.aclose())

    def done(self) -> bool:
        return self._done


class ProxyBackend:
    """Forwards generation to the OpenAI-compatible engine at ``url``.

    ``registry`` supplies adapters to push; without one, adapter names are forwarded as they
    are. ``base_model`` is the engine's name for its base model (default: the first model in
    the engine's ``/v1/models`` without a ``parent``).
    """

    kind = "proxy"

    def __init__(
        self,
        url: str,
        *,
        registry: Any = None,
        api_key: str | None = None,
        base_model: str | None = None,
        concurrency: int = 64,
        timeout: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
        adapter_dir: str | None = None,
    ):
        url = url.rstrip("/")
        if url.endswith("/v1"):
            url = url[: -len("/v1")]
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"engine url must start with http:// or https://, got {url!r}")
        self.url = url
        self._registry = registry
        self.adapter_dir = adapter_dir
        self.concurrency = concurrency
        self.max_context: int | None = None  # the engine enforces its own limit
        self._base_model = base_model
        self.base_fingerprint: str | None = None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(
            base_url=url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=concurrency + 16),
            transport=transport,
        )
        self._loaded: set[str] = set()  # adapter names we know the engine holds
        self._locks: dict[str, asyncio.Lock] = {}
        self.pushes = 0

    # -- engine facts ----------------------------------------------------------------------
    @property
    def registry(self) -> Any:
        if isinstance(self._registry, str):
            from loraroute.registry import open_registry

            self._registry = open_registry(self._registry)
        return self._registry

    @property
    def base_model(self) -> str:
        return self._base_model or "base"

    def base_names(self) -> set[str]:
        return {self.base_model.lower()}

    async def _get(self, path: str) -> httpx.Response:
        try:
            return await self.client.get(path)
        except httpx.HTTPError as exc:
            raise APIError(
                502, f"the engine at {self.url} cannot be reached: {exc}", code="engine_unreachable"
            ) from exc

    async def _engine_models(self) -> list[dict[str, Any]]:
        resp = await self._get("/v1/models")
        if resp.status_code != 200:
            raise APIError(
                502,
                f"the engine at {self.url} answered {resp.status_code} to GET /v1/models: "
                f"{_upstream_message(resp, resp.text)}",
                code="engine_error",
            )
        data = resp.json().get("data") or []
        if self._base_model is None:
            bases = [m["id"] for m in data if not m.get("parent")]
            if bases:
                self._base_model = bases[0]
        self._loaded = {m["id"] for m in data if _is_loaded_adapter(m)}
        return data

    async def _base_id(self) -> str:
        if self._base_model is None:
            await self._engine_models()
        if self._base_model is None:
            raise APIError(
                502,
                f"the engine at {self.url} lists no base model in /v1/models; start the server "
                f"with --engine-base-model NAME",
                code="engine_error",
            )
        return self._base_model

    # -- adapters --------------------------------------------------------------------------
    async def _ensure(self, name: str, version: Any, *, force: bool = False) -> None:
        if name in self._loaded and not force:
            return
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if not force:
                await self._engine_models()
                if name in self._loaded:
                    return
            folder = await _run(self.registry.local_path, version)
            lora_path = str(folder)
            if self.adapter_dir:  # the same checkout, as the engine's host mounts it
                lora_path = str(PurePosixPath(self.adapter_dir) / folder.name)
            resp = await self._post(
                "/v1/load_lora_adapter", {"lora_name": name, "lora_path": lora_path}
            )
            text = resp.text
            if resp.status_code >= 400 and "already" not in text.lower():
                raise APIError(
                    502,
                    f"the engine refused to load adapter {name!r} from {lora_path}: "
                    f"{resp.status_code} {_upstream_message(resp, text)}",
                    code="engine_load_failed",
                )
            self._loaded.add(name)
            self.pushes += 1
            logger.info("pushed adapter %s to the engine at %s", name, self.url)

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return await self.client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise APIError(
                502, f"the engine at {self.url} cannot be reached: {exc}", code="engine_unreachable"
            ) from exc

    async def _resolve(self, target: Target) -> tuple[str, Any]:
        if target.adapter is None:
            return await self._base_id(), None
        if self.registry is None:
            return target.adapter, None
        version = await _run(self.registry.resolve, target.adapter)
        await self._ensure(version.ref, version)
        return version.ref, version

    # -- generation ------------------------------------------------------------------------
    async def start(self, target: Target, prepared: Prepared) -> ProxyRunning:
        name, version = await self._resolve(target)
        body = dict(prepared.body)
        body.update(model=name, stream=True, stream_options={"include_usage": True})
        path = "/v1/chat/completions" if prepared.kind == "chat" else "/v1/completions"
        headers = {"X-Request-Id": current_request_id() or ""}
        for attempt in range(2):
            request = self.client.build_request("POST", path, json=body, headers=headers)
            try:
                resp = await self.client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise APIError(
                    502,
                    f"the engine at {self.url} cannot be reached: {exc}",
                    code="engine_unreachable",
                ) from exc
            if resp.status_code == 404 and version is not None and attempt == 0:
                await resp.aclose()  # evicted or engine restarted: push again, retry once
                self._loaded.discard(name)
                await self._ensure(name, version, force=True)
                continue
            if resp.status_code >= 400:
                text = (await resp.aread()).decode(errors="replace")
                await resp.aclose()
                raise self._engine_error(resp, text)
            ref = version.ref if version is not None else (target.adapter or None)
            return ProxyRunning(
                resp,
                ref,
                version.digest if version is not None else None,
                kind=prepared.kind,
                choices=prepared.choices,
                logprobs=prepared.logprobs is not None,
            )
        raise APIError(502, f"the engine does not serve {name!r} even after loading it")

    async def prompt_text(self, prompt: str | list[int]) -> str:
        if isinstance(prompt, str):
            return prompt
        raise APIError(
            400,
            'model="auto" routes by text, and token-id prompts cannot be read here (the '
            "engine holds the tokenizer); send the prompt as text or name an adapter",
            param="prompt",
        )

    def _engine_error(self, resp: httpx.Response, text: str) -> APIError:
        msg = f"engine: {_upstream_message(resp, text)}"
        if resp.status_code >= 500:
            return APIError(502, msg, code="engine_error")
        headers = {}
        if resp.headers.get("retry-after"):
            headers["Retry-After"] = resp.headers["retry-after"]
        return APIError(resp.status_code, msg, code="engine_rejected", headers=headers)

    async def adapter_cards(self) -> list[dict[str, Any]]:
        data = await self._engine_models()
        return [
            {"id": m["id"], "digest": None, "resident": True, "kind": "engine"}
            for m in data
            if _is_loaded_adapter(m)
        ]

    async def load_adapter(self, name: str, path: str, inplace: bool) -> str:
        body = {"lora_name": name, "lora_path": path, "load_inplace": inplace}
        return await self._forward_admin("/v1/load_lora_adapter", body, name, loaded=True)

    async def unload_adapter(self, name: str) -> str:
        return await self._forward_admin(
            "/v1/unload_lora_adapter", {"lora_name": name}, name, loaded=False
        )

    async def _forward_admin(self, path: str, body: dict, name: str, *, loaded: bool) -> str:
        resp = await self._post(path, body)
        if resp.status_code >= 400:
            raise self._engine_error(resp, resp.text)
        if loaded:
            self._loaded.add(name)
        else:
            self._loaded.discard(name)
        return resp.text

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        try:
            resp = await self.client.get("/health", timeout=5.0)
        except httpx.HTTPError as exc:
            return False, {"backend": "proxy", "engine": self.url, "error": str(exc)}
        ok = resp.status_code == 200
        return ok, {"backend": "proxy", "engine": self.url, "engine_status": resp.status_code}

    def stats(self) -> dict[str, Any]:
        return {"resident": len(self._loaded), "loads": self.pushes}

    async def aclose(self) -> None:
        await self.client.aclose()
