"""``ChatLoraRoute``: a LangChain chat model over the shared engine, routing each call.

Example::

    >>> from loraroute.agents import ChatLoraRoute
    >>> llm = ChatLoraRoute()                      # routes each call with the router  # doctest: +SKIP
    >>> llm.invoke("Is this clause enforceable?").response_metadata["adapter_ref"]  # doctest: +SKIP
    'legal@3'
    >>> llm.invoke("hi", model="base")             # pin per call (or ChatLoraRoute(model="legal:prod"))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from .runtime.constrained import (
    normalize_tool_choice,
    parse_tool_calls,
    tool_grammar_spec,
    tools_system_prompt,
    validate,
)
from .runtime.engine import BASE_REFS, Engine
from .runtime.prompts import to_chat_dicts
from .runtime.requests import Generation

logger = logging.getLogger(__name__)

AUTO = "auto"

_ENGINES: dict[tuple, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def shared_engine(
    base_model: str | None = None, *, registry: Any = None, device: str | None = None
) -> Engine:
    """The process-wide engine for ``base_model`` (one base model per process and registry)."""
    from loraroute.settings import get_settings

    settings = get_settings()
    key = (
        str(base_model or settings.base_model),
        device or settings.torch_device(),
        registry if isinstance(registry, str) or registry is None else id(registry),
    )
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = Engine(base_model, registry=registry, settings=settings, device=device)
            _ENGINES[key] = engine
        return engine


@dataclass
class _Route:
    requested: str
    adapter: str | None
    score: float | None = None
    confidence: float | None = None
    alternatives: list = field(default_factory=list)
    routed: bool = False


class ChatLoraRoute(BaseChatModel):
    """A chat model that serves many LoRA adapters on one base model and routes each call.

    ``model="auto"`` routes the whole conversation with the router; ``"base"`` uses the bare
    base model; any other value (``"legal"``, ``"legal:prod"``, ``"legal@3"``) pins an adapter.
    Pass ``model=...`` to ``invoke``/``stream``/``batch`` to override it per call. Nothing is
    loaded until the first call. ``batch`` runs its inputs on threads, so they meet in the
    engine's continuous batch and decode together.
    """

    model: str = Field(default=AUTO, alias="model_name")
    base_model: str | None = None
    registry: Any = None  # a registry URL or object; None -> the default registry (settings)
    router: Any = None  # an object with .route(messages); None -> built lazily for "auto"
    engine: Any = Field(default=None, exclude=True)
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    timeout: float | None = None
    max_retries: int = 0  # local generation does not retry; kept for the standard interface
    device: str | None = None

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    _router_obj: Any = PrivateAttr(default=None)
    _router_failed: str | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "loraroute"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "base_model": self.base_model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "loraroute"
        params["ls_model_name"] = kwargs.get("model") or self.model
        params["ls_max_tokens"] = kwargs.get("max_tokens", self.max_tokens)
        params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # -- lazy parts ------------------------------------------------------------------------
    def _engine(self) -> Engine:
        if self.engine is None:
            self.engine = shared_engine(
                self.base_model, registry=self._registry_for_engine(), device=self.device
            )
        return self.engine

    def _registry_for_engine(self) -> Any:
        if self.registry is not None:
            return self.registry
        try:
            import loraroute.registry as reg
        except ImportError:
            return None
        if not hasattr(reg, "open_registry"):
            return None
        from loraroute.settings import get_settings

        return get_settings().registry_url

    def _router(self) -> Any:
        if self.router is not None:
            return self.router
        if self._router_obj is None and self._router_failed is None:
            try:
                from loraroute.router import Router  # type: ignore[attr-defined]
            except ImportError as exc:
                self._router_failed = f"the router package is not available ({exc})"
            else:
                self._router_obj = Router.open(self._engine().registry)
        return self._router_obj

    def _route(self, messages: list[BaseMessage], requested: str) -> _Route:
        if requested.lower() in BASE_REFS:
            return _Route(requested, None)
        if requested != AUTO:
            return _Route(requested, requested)
        router = self._router()
        if router is None:
            logger.warning(
                "model='auto' but %s; answering with the base model", self._router_failed
            )
            return _Route(requested, None)
        decision = router.route(messages)
        return _Route(
            requested,
            decision.ref,
            score=float(decision.score),
            confidence=float(decision.confidence),
            alternatives=[list(a) for a in (decision.alternatives or [])],
            routed=True,
        )

    def _prepare(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[_Route, list[dict], dict[str, Any]]:
        """Route the call and build the engine's arguments (chat dicts, sampling, constraint)."""
        kwargs = dict(kwargs)
        tools = kwargs.pop("tools", None)
        tool_choice = kwargs.pop("tool_choice", None)
        kwargs.pop("ls_structured_output_format", None)  # tracing hint from with_structured_output
        unknown = set(kwargs) - {"max_tokens", "temperature", "top_p", "seed", "model"}
        if unknown:
            raise TypeError(
                f"unsupported generation arguments: {sorted(unknown)}; "
                f"use max_tokens, temperature, top_p, seed, stop, model or bind_tools"
            )
        chat = to_chat_dicts(messages)
        params: dict[str, Any] = {
            "max_new_tokens": kwargs.get("max_tokens", self.max_tokens),
            "temperature": kwargs.get("temperature", self.temperature),
            "top_p": kwargs.get("top_p", self.top_p),
            "seed": kwargs.get("seed", self.seed),
            "stop": stop if stop is not None else self.stop,
        }
        if tools and tool_choice != "none":
            prompt = tools_system_prompt(tools)
            if chat[0]["role"] == "system":
                chat[0] = {"role": "system", "content": chat[0]["content"] + "\n\n" + prompt}
            else:
                chat.insert(0, {"role": "system", "content": prompt})
            params["constraint"] = tool_grammar_spec(tools, tool_choice or "auto")
        route = self._route(messages, kwargs.get("model") or self.model)
        return route, chat, params

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | dict | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; generation is constrained to their JSON schemas when the model calls one.

        ``tool_choice``: ``"auto"`` (default: the model may answer in text), ``"any"`` (must call
        a tool), a tool name (must call that one) or ``"none"``. A schema that cannot be
        compiled into a constraint raises :class:`~loraroute.agents.errors.ToolSchemaError` here.
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        if not formatted:
            return self.bind(**kwargs)
        choice = normalize_tool_choice(tool_choice, formatted)
        if choice != "none":
            validate(tool_grammar_spec(formatted, choice))
        return super().bind(tools=formatted, tool_choice=choice, **kwargs)

    def _metadata(
        self,
        route: _Route,
        gen: Generation | None,
        adapter_ref: str | None,
        adapter_digest: str | None,
    ) -> dict[str, Any]:
        pinned = route.requested != AUTO
        meta: dict[str, Any] = {
            "model_name": route.requested if pinned else (adapter_ref or "base"),
            "model_provider": "loraroute",
            "adapter_ref": adapter_ref,
            "adapter_digest": adapter_digest,
            "routed": route.routed,
            "route_score": route.score,
            "route_confidence": route.confidence,
            "alternatives": route.alternatives,
            "base_fingerprint": self._engine().base_fingerprint,
        }
        if gen is not None:
            meta.update(
                finish_reason=gen.finish_reason,
                truncated_turns=gen.truncated_turns,
                stop_sequence=gen.stop_sequence,
            )
        return meta

    @staticmethod
    def _usage(gen: Generation) -> UsageMetadata:
        return UsageMetadata(
            input_tokens=gen.prompt_tokens,
            output_tokens=gen.completion_tokens,
            total_tokens=gen.prompt_tokens + gen.completion_tokens,
        )

    def _message(self, route: _Route, gen: Generation, tools: bool) -> AIMessage:
        content, calls, invalid = parse_tool_calls(gen.text) if tools else (gen.text, [], [])
        meta = self._metadata(route, gen, gen.adapter_ref, gen.adapter_digest)
        if calls:
            meta["finish_reason"] = "tool_calls"
        return AIMessage(
            content=content,
            tool_calls=calls,
            invalid_tool_calls=invalid,
            response_metadata=meta,
            usage_metadata=self._usage(gen),
        )

    def _result(self, route: _Route, gen: Generation, tools: bool) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._message(route, gen, tools))])

    def _final_chunks(
        self, route: _Route, gen: Generation, tools: bool
    ) -> list[ChatGenerationChunk]:
        """With tools, the whole answer comes as one chunk (tool calls parse only when complete)."""
        meta = self._metadata(route, gen, gen.adapter_ref, gen.adapter_digest)
        out = []
        if tools:
            msg = self._message(route, gen, tools)
            meta = msg.response_metadata
            chunks = [
                tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
                for i, c in enumerate(msg.tool_calls)
            ]
            out.append(
                ChatGenerationChunk(
                    message=AIMessageChunk(content=msg.content, tool_call_chunks=chunks)
                )
            )
        out.append(
            ChatGenerationChunk(
                message=AIMessageChunk(
                    content="",
                    chunk_position="last",
                    usage_metadata=self._usage(gen),
                    response_metadata=meta,
                )
            )
        )
        return out

    # -- sync ------------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        route, chat, params = self._prepare(messages, stop, kwargs)
        gen = self._engine().submit(chat, route.adapter, **params).result(timeout=self.timeout)
        return self._result(route, gen, "constraint" in params)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        route, chat, params = self._prepare(messages, stop, kwargs)
        tools = "constraint" in params
        handle = self._engine().submit(chat, route.adapter, **params)
        try:
            for delta in handle:
                if tools:
                    continue
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
                if run_manager:
                    run_manager.on_llm_new_token(delta, chunk=chunk)
                yield chunk
            yield from self._final_chunks(route, handle.result(), tools)
        finally:
            if not handle.done():
                handle.cancel()

    # -- async -----------------------------------------------------------------------------
    async def _asubmit(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[_Route, Any, bool]:
        loop = asyncio.get_running_loop()

        def prepare() -> tuple[_Route, Any, bool]:  # routing encodes text, loading reads files
            route, chat, params = self._prepare(messages, stop, kwargs)
            return (
                route,
                self._engine().submit(chat, route.adapter, **params),
                "constraint" in params,
            )

        return await loop.run_in_executor(None, prepare)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        route, handle, tools = await self._asubmit(messages, stop, kwargs)
        try:
            gen = await asyncio.wait_for(handle.aresult(), self.timeout)
        finally:
            if not handle.done():
                handle.cancel()
        return self._result(route, gen, tools)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        route, handle, tools = await self._asubmit(messages, stop, kwargs)
        try:
            async for delta in handle.astream():
                if tools:
                    continue
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
                if run_manager:
                    await run_manager.on_llm_new_token(delta, chunk=chunk)
                yield chunk
            for chunk in self._final_chunks(route, handle.result(timeout=0), tools):
                yield chunk
        finally:
            if not handle.done():
                handle.cancel()


__all__ = ["ChatLoraRoute", "shared_engine"]
