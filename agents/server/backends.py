"""What the server generates with: the in-process engine, or an external one (see ``proxy``).

A backend takes a routed request (:class:`Target` + :class:`Prepared`) and returns a
:class:`Running` generation whose text deltas the server streams or collects. The server does
routing, admission, timeouts, metrics and the wire format; backends only generate.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import AgentError, PoolFullError, UnknownAdapterError
from .errors import APIError

logger = logging.getLogger(__name__)

RESERVED_NAMES = frozenset({"auto", "base", "none"})


@dataclass
class Target:
    """Where a request goes: ``adapter`` is a reference for the backend, ``None`` the base."""

    requested: str
    adapter: str | None
    routed: bool = False
    reason: str | None = None
    score: float | None = None
    confidence: float | None = None
    alternatives: list[list[Any]] = field(default_factory=list)


@dataclass
class Prepared:
    """A validated request: messages as dicts plus generation settings."""

    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    body: dict[str, Any] = field(default_factory=dict)  # the request as sent (proxy forwards it)


@dataclass
class Final:
    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    tool_calls: list[dict[str, Any]] | None = None


class Running(Protocol):
    adapter_ref: str | None
    adapter_digest: str | None

    def deltas(self) -> AsyncIterator[str]: ...

    def final(self) -> Final: ...

    def cancel(self) -> None: ...

    def done(self) -> bool: ...


class Backend(Protocol):
    kind: str
    base_fingerprint: str | None
    concurrency: int
    max_context: int | None

    @property
    def base_model(self) -> str: ...

    @property
    def registry(self) -> Any: ...

    async def start(self, target: Target, prepared: Prepared) -> Running: ...

    async def adapter_cards(self) -> list[dict[str, Any]]: ...

    async def load_adapter(self, name: str, path: str, inplace: bool) -> str: ...

    async def unload_adapter(self, name: str) -> str: ...

    async def ready(self) -> tuple[bool, dict[str, Any]]: ...

    def stats(self) -> dict[str, Any]: ...

    def base_names(self) -> set[str]: ...

    async def aclose(self) -> None: ...


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run blocking work (tokenising, reading adapter files, registry I/O) off the event loop."""
    loop = asyncio.get_running_loop()
    return loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


# -- the in-process engine ------------------------------------------------------------------


class LocalRunning:
    """A request in the engine's continuous batch."""

    def __init__(self, handle: Any, tools: bool):
        self.handle = handle
        self.tools = tools
        self.adapter_ref: str | None = handle.adapter_ref
        self.adapter_digest: str | None = handle.adapter_digest

    async def deltas(self) -> AsyncIterator[str]:
        async for delta in self.handle.astream():
            if not self.tools:  # tool calls parse only when complete: sent with final()
                yield delta

    def final(self) -> Final:
        from ..runtime.constrained import parse_tool_calls

        gen = self.handle.result(timeout=0)
        content, calls = gen.text, None
        if self.tools:
            content, parsed, _invalid = parse_tool_calls(gen.text)
            calls = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": json.dumps(c["args"])},
                }
                for c in parsed
            ] or None
        return Final(
            content=content,
            prompt_tokens=gen.prompt_tokens,
            completion_tokens=gen.completion_tokens,
            finish_reason="tool_calls" if calls else gen.finish_reason,
            tool_calls=calls,
        )

    def cancel(self) -> None:
        self.handle.cancel()

    def done(self) -> bool:
        return bool(self.handle.done())


def _json_schema_constraint(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    if not fmt:
        return None
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"kind": "json_schema", "schema": {"type": "object"}}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise APIError(
                400,
                "response_format.json_schema.schema must be a JSON-schema object",
                param="response_format",
                code="invalid_response_format",
            )
        return {"kind": "json_schema", "schema": schema}
    raise APIError(
        400,
        f"response_format type {kind!r} is not supported; use text, json_object or json_schema",
        param="response_format",
        code="invalid_response_format",
    )


class LocalBackend:
    """Generates with an in-process :class:`~loraroute.agents.engine.Engine`."""

    kind = "local"

    def __init__(
        self,
        engine: Any,
        *,
        own_engine: bool = False,
        adapter_roots: Sequence[str | Path] = (),
    ):
        """``adapter_roots``: the folders under which ``/v1/load_lora_adapter`` may read
        adapter folders, besides the registry's own checkouts (and registry refs)."""
        self.engine = engine
        self.own_engine = own_engine
        self.adapter_roots = [Path(r).expanduser().resolve() for r in adapter_roots]
        self.base_model: str = engine.base_model_id
        self.base_fingerprint: str | None = engine.base_fingerprint
        self.concurrency: int = engine.scheduler.max_batch_size
        self.max_context: int | None = engine.max_context
        self._loaded: dict[str, str] = {}  # names given to /v1/load_lora_adapter -> digest

    @property
    def registry(self) -> Any:
        return self.engine.registry

    def base_names(self) -> set[str]:
        return {self.base_model.lower()}

    async def start(self, target: Target, prepared: Prepared) -> Running:
        return await _run(self._submit, target, prepared)

    def _submit(self, target: Target, p: Prepared) -> LocalRunning:
        from ..runtime.constrained import (
            normalize_tool_choice,
            tool_grammar_spec,
            tools_system_prompt,
        )
        from ..runtime.prompts import to_chat_dicts

        chat = to_chat_dicts(p.messages)
        constraint = None
        tools = False
        if p.tools and p.tool_choice != "none":
            for tool in p.tools:  # a tool without parameters takes none
                tool["function"].setdefault("parameters", {"type": "object", "properties": {}})
            choice = normalize_tool_choice(p.tool_choice, p.tools)
            if choice != "none":
                prompt = tools_system_prompt(p.tools)
                if chat[0]["role"] == "system":
                    chat[0] = {"role": "system", "content": chat[0]["content"] + "\n\n" + prompt}
                else:
                    chat.insert(0, {"role": "system", "content": prompt})
                constraint = tool_grammar_spec(p.tools, choice)
                tools = True
        if constraint is None:
            constraint = _json_schema_constraint(p.response_format)
        handle = self.engine.submit(
            chat,
            target.adapter,
            max_new_tokens=p.max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            stop=p.stop,
            seed=p.seed,
            constraint=constraint,
        )
        return LocalRunning(handle, tools)

    async def adapter_cards(self) -> list[dict[str, Any]]:
        cards = []
        for entry in self.engine.resident():
            cards.append(
                {
                    "id": entry["ref"],
                    "digest": entry["digest"],
                    "resident": True,
                    "kind": "loaded" if entry["ref"] in self._loaded else "resident",
                }
            )
        return cards

    def private_strings(self) -> dict[str, str]:
        """Folders and URLs of this server that error messages to clients must not show."""
        hide = {str(self.engine.settings.home): "<home>"}
        if self.engine.base_path is not None:
            hide[str(self.engine.base_path)] = "<base model>"
        for root in self.adapter_roots:
            hide[str(root)] = "<adapter root>"
        registry = self.registry
        if registry is not None and hasattr(registry, "private_strings"):
            hide.update(registry.private_strings())
        return hide

    async def load_adapter(self, name: str, path: str, inplace: bool) -> str:
        return await _run(self._load, name, path, inplace)

    def _load(self, name: str, path: str, inplace: bool) -> str:
        from ..lora import read_adapter

        if name.lower() in RESERVED_NAMES or name.lower() in self.base_names():
            raise APIError(
                400, f"lora_name {name!r} is reserved; choose another name", param="lora_name"
            )
        folder, recorded = self._load_source(path)
        try:
            if name in self._loaded and not inplace:
                digest = read_adapter(folder).digest
                if digest == self._loaded[name] and self._resident(digest):
                    return f"Success: LoRA adapter '{name}' is already loaded."
                if digest != self._loaded[name]:
                    raise APIError(
                        409,
                        f"a different adapter is already loaded as {name!r}; unload it first "
                        f"or send load_inplace=true",
                        param="lora_name",
                        code="adapter_exists",
                    )
            old = self._loaded.get(name)
            entry = self.engine.load_adapter_folder(folder, name=name, base_fingerprint=recorded)
            if old is not None and old != entry.digest and self._resident(old):
                try:  # replaced in place: the old weights leave the pool unless still in use
                    self.engine.evict(old)
                except PoolFullError:
                    logger.info("adapter %s replaced; old weights stay until requests end", name)
        except APIError:
            raise
        except PoolFullError:
            raise
        except (AgentError, OSError, ValueError, KeyError) as exc:
            raise APIError(400, f"cannot load adapter {name!r}: {exc}", param="lora_path") from exc
        self._loaded[name] = entry.digest
        return f"Success: LoRA adapter '{name}' added successfully."

    def _load_source(self, path: str) -> tuple[Path, str | None]:
        """The folder ``lora_path`` names, and the base fingerprint its registry version
        records: a registry ref (``legal``, ``legal:prod``, ``legal@3``), or a folder under
        one of the adapter roots or the registry's checkouts. Anything else is refused with the
        same message whether or not it exists on this server."""
        registry = self.registry
        looks_like_ref = "/" not in path and "\\" not in path and not path.startswith((".", "~"))
        if looks_like_ref and registry is not None:
            version = registry.resolve(path)  # a registry error -> 404 with near misses
            return Path(registry.local_path(version)), version.base_fingerprint
        roots = list(self.adapter_roots)
        checkouts = getattr(registry, "checkout_dir", None)
        if checkouts is not None:
            roots.append(Path(checkouts).resolve())
        refused = APIError(
            400,
            "lora_path must be a registry reference (legal, legal:prod, legal@3) or a folder "
            "under one of this server's adapter roots (adapters serve --adapter-root DIR); "
            "this one is neither",
            param="lora_path",
            code="invalid_path",
        )
        try:
            folder = Path(path).expanduser().resolve()  # symlinks followed before the check
        except (RuntimeError, OSError, ValueError):  # "~nobody", NUL bytes, too long
            raise refused from None
        if not any(folder.is_relative_to(root) for root in roots):
            raise refused
        if not folder.is_dir():
            raise APIError(
                400,
                "lora_path names no adapter folder under this server's adapter roots",
                param="lora_path",
                code="invalid_path",
            )
        return folder, None

    def _resident(self, digest: str) -> bool:
        return any(e["digest"] == digest for e in self.engine.resident())

    async def unload_adapter(self, name: str) -> str:
        return await _run(self._unload, name)

    def _unload(self, name: str) -> str:
        refs = {e["ref"] for e in self.engine.resident()}
        if name not in self._loaded and name not in refs:
            raise APIError(
                404,
                f"no adapter named {name!r} is loaded (loaded: {', '.join(sorted(refs)) or 'none'})",
                param="lora_name",
                code="adapter_not_found",
            )
        try:
            self.engine.evict(name)
        except PoolFullError as exc:
            raise APIError(409, str(exc), param="lora_name", code="adapter_in_use") from exc
        except UnknownAdapterError:
            pass  # already evicted by the pool: unloading is done
        self._loaded.pop(name, None)
        return f"Success: LoRA adapter '{name}' removed successfully."

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        return True, {"backend": "local", "base_model": self.base_model}

    def stats(self) -> dict[str, Any]:
        pool = self.engine.pool
        resident, evictions = len(pool), pool.evictions
        return {
            "resident": resident,
            "max_resident": pool.max_resident,
            # every slot reservation ends resident or evicted, so loads = resident + evictions
            "loads": resident + evictions,
            "evictions": evictions,
            "running": self.engine.scheduler.running,
        }

    async def aclose(self) -> None:
        if self.own_engine:
            await _run(self.engine.close)
