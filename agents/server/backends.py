"""What the server generates with: the in-process engine, or an external one (see ``proxy``).

A backend takes a routed request (:class:`Target` + :class:`Prepared`) and returns a
:class:`Running` generation whose text deltas the server streams or collects. The server does
routing, admission, timeouts, metrics and the wire format; backends only generate.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import AgentError, PoolFullError, ToolSchemaError, UnknownAdapterError
from .errors import APIError
from .params import Prepared

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
class LogprobEntry:
    """One token's log-probability as the wire shows it (``logprob`` ``None``: the first
    prompt token of an echo, which has no context); ``top``: ``(token, logprob, bytes)``."""

    token: str
    logprob: float | None
    bytes: list[int] | None = None
    top: list[tuple[str, float, list[int] | None]] | None = None


@dataclass
class Delta:
    """New text of one choice, with the log-probabilities of the tokens it completes."""

    text: str
    logprobs: list[LogprobEntry] = field(default_factory=list)


@dataclass
class Final:
    """One choice, finished. ``echo`` (and ``echo_logprobs``) is the prompt a completion
    repeats before ``content`` when a backend adds it itself."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: list[LogprobEntry] | None = None
    echo: str = ""
    echo_logprobs: list[LogprobEntry] | None = None
    stop_reason: str | int | None = None


@dataclass
class Timings:
    """``perf_counter`` times of one choice: queued, taken into the batch (``None``: not known),
    each token chosen."""

    submitted: float | None = None
    scheduled: float | None = None
    tokens: list[float] = field(default_factory=list)


class ChoiceStream(Protocol):
    """One choice of a running request: its deltas, then its :class:`Final`."""

    index: int
    sent_logprobs: int  # log-probabilities of generated tokens already given in deltas

    def deltas(self) -> AsyncIterator[Delta]: ...

    def final(self) -> Final: ...

    def timings(self) -> Timings: ...


class QueuedChoice:
    """A choice of an external engine's request, fed by its request's reader task: deltas
    arrive on ``queue``; an exception put there is raised to the caller, ``None`` ends it.
    ``running`` starts its reader on first use and has ``started`` (``perf_counter``)."""

    def __init__(self, index: int, running: Any):
        self.index = index
        self.running = running
        self.queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()
        self.sent_logprobs = 0
        self.times = Timings(submitted=running.started)

    async def deltas(self) -> AsyncIterator[Delta]:
        self.running.start_reader()
        while True:
            item = await self.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            self.sent_logprobs += len(item.logprobs)
            yield item

    def timings(self) -> Timings:
        return self.times


class Running(Protocol):
    adapter_ref: str | None
    adapter_digest: str | None
    streams: list[Any]  # ChoiceStream, one per choice, in index order

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

    async def prompt_text(self, prompt: str | list[int]) -> str: ...

    async def adapter_cards(self) -> list[dict[str, Any]]: ...

    async def load_adapter(self, name: str, path: str, inplace: bool) -> str: ...

    async def unload_adapter(self, name: str) -> str: ...

    async def ready(self) -> tuple[bool, dict[str, Any]]: ...

    def stats(self) -> dict[str, Any]: ...

    def base_names(self) -> set[str]: ...

    async def aclose(self) -> None: ...


def layout_strings(home: Path, base_path: Path | None, registry: Any) -> dict[str, str]:
    """A server's layout that error messages to clients must not show, with a label for each:
    its home folder, a local base model's folder, and the registry's URL and folders (for
    ``loraroute.redact.Scrubber``)."""
    hide = {str(home): "<home>"}
    if base_path is not None:
        hide[str(base_path)] = "<base model>"
    if registry is not None and hasattr(registry, "private_strings"):
        hide.update(registry.private_strings())
    return hide


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run blocking work (tokenising, reading adapter files, registry I/O) off the event loop,
    in the caller's context (so log lines keep the request id)."""
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    return loop.run_in_executor(None, functools.partial(ctx.run, fn, *args, **kwargs))


# -- the in-process engine ------------------------------------------------------------------


class LocalChoice:
    """One choice in the engine's continuous batch (``handle`` ``None``: nothing generated)."""

    def __init__(
        self,
        index: int,
        handle: Any,
        backend: LocalBackend,
        prepared: Prepared,
        *,
        prompt_tokens: int,
        tools: bool = False,
        echo: str = "",
        echo_logprobs: list[LogprobEntry] | None = None,
    ):
        self.index = index
        self.handle = handle
        self.backend = backend
        self.prepared = prepared
        self.prompt_tokens = prompt_tokens
        self.tools = tools
        self.echo = echo
        self.echo_logprobs = echo_logprobs
        self.sent_logprobs = 0

    async def deltas(self) -> AsyncIterator[Delta]:
        if self.echo:
            yield Delta(self.echo, list(self.echo_logprobs or []))
        if self.handle is None:
            return
        want = self.prepared.logprobs is not None
        async for text in self.handle.astream():
            if self.tools:  # tool calls parse only when complete: sent with final()
                continue
            entries: list[LogprobEntry] = []
            if want:
                new = self.handle.logprobs_so_far()[self.sent_logprobs :]
                self.sent_logprobs += len(new)
                entries = [self.backend.entry(t, self.prepared.tokens_as_ids) for t in new]
            yield Delta(text, entries)

    def final(self) -> Final:
        p = self.prepared
        if self.handle is None:
            return Final(
                "",
                self.prompt_tokens,
                0,
                "length",
                logprobs=[] if p.logprobs is not None else None,
                echo=self.echo,
                echo_logprobs=self.echo_logprobs,
            )
        from ..runtime.constrained import parse_tool_calls

        gen = self.handle.result(timeout=0)
        content, calls = gen.text, None
        stop_reason: str | int | None = gen.stop_sequence
        if gen.stop_sequence and p.include_stop_str:
            content += gen.stop_sequence
        if (
            stop_reason is None
            and gen.finish_reason == "stop"
            and gen.token_ids
            and gen.token_ids[-1] in p.sampling["stop_token_ids"]
        ):
            stop_reason = gen.token_ids[-1]
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
        logprobs = None
        if gen.logprobs is not None:
            logprobs = [self.backend.entry(t, p.tokens_as_ids) for t in gen.logprobs]
        return Final(
            content=content,
            prompt_tokens=gen.prompt_tokens,
            completion_tokens=gen.completion_tokens,
            finish_reason="tool_calls" if calls else gen.finish_reason,
            tool_calls=calls,
            logprobs=logprobs,
            echo=self.echo,
            echo_logprobs=self.echo_logprobs,
            stop_reason=stop_reason,
        )

    def timings(self) -> Timings:
        h = self.handle
        if h is None:
            return Timings()
        return Timings(h.submitted_at, h.scheduled_at, list(h.token_times))


class LocalRunning:
    """A request's choices in the engine's continuous batch."""

    def __init__(self, streams: list[LocalChoice], adapter_ref: str | None, digest: str | None):
        self.streams = streams
        self.adapter_ref = adapter_ref
        self.adapter_digest = digest

    def cancel(self) -> None:
        for s in self.streams:
            if s.handle is not None:
                s.handle.cancel()

    def done(self) -> bool:
        return all(s.handle is None or s.handle.done() for s in self.streams)


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
        self._tokens: dict[int, str] = {}  # token id -> its text, for log-probabilities

    @property
    def registry(self) -> Any:
        return self.engine.registry

    def base_names(self) -> set[str]:
        return {self.base_model.lower()}

    async def start(self, target: Target, prepared: Prepared) -> Running:
        return await _run(self._start, target, prepared)

    async def prompt_text(self, prompt: str | list[int]) -> str:
        if isinstance(prompt, str):
            return prompt
        vocab = self.engine.vocab_size
        outside = next((i for i in prompt if not 0 <= i < vocab), None)
        if outside is not None:
            raise APIError(
                400,
                f"prompt token id {outside} is outside the vocabulary (ids 0..{vocab - 1})",
                param="prompt",
            )
        return str(self.engine.tokenizer.decode(prompt, skip_special_tokens=True))

    def entry(self, lp: Any, as_ids: bool) -> LogprobEntry:
        """A runtime ``TokenLogprob`` as the wire shows it."""
        token, raw = self._token(lp.token_id, as_ids)
        top: list[tuple[str, float, list[int] | None]] = []
        for token_id, value in lp.top:
            alt, alt_raw = self._token(token_id, as_ids)
            top.append((alt, value, alt_raw))
        return LogprobEntry(token, lp.logprob, raw, top)

    def _token(self, token_id: int, as_ids: bool) -> tuple[str, list[int]]:
        text = self._tokens.get(token_id)
        if text is None:
            text = self._tokens[token_id] = self.engine.tokenizer.decode([token_id])
        return (f"token_id:{token_id}" if as_ids else text), list(text.encode("utf-8"))

    def _start(self, target: Target, p: Prepared) -> LocalRunning:
        from ..runtime.requests import SamplingParams

        engine = self.engine
        entry = engine.load_adapter(target.adapter) if target.adapter else None
        adapter = entry.ref if entry is not None else None
        constraint, tools, dropped = p.constraint, False, 0
        if p.kind == "chat":
            ids, dropped, constraint, tools = self._chat_prompt(p)
            prompts: list[tuple[list[int], str]] = [(ids, "")]
        else:
            prompts = [self._completion_prompt(x, p) for x in p.prompts]
        streams: list[LocalChoice] = []
        try:
            for ids, text in prompts:
                echo_logprobs = None
                if p.echo and p.logprobs is not None:
                    echo_logprobs = self._score(ids, adapter, p)
                for _ in range(p.n):
                    handle = None
                    if p.max_tokens > 0:
                        fields = dict(p.sampling)
                        if fields["seed"] is not None:  # vLLM's rule: choice i draws with seed + i
                            fields["seed"] = (fields["seed"] + len(streams)) % (2**63)
                        handle = engine.submit_ids(
                            ids,
                            adapter,
                            SamplingParams(**fields),
                            constraint=constraint,
                            truncated_turns=dropped,
                        )
                    streams.append(
                        LocalChoice(
                            len(streams),
                            handle,
                            self,
                            p,
                            prompt_tokens=len(ids),
                            tools=tools,
                            echo=text if p.echo else "",
                            echo_logprobs=echo_logprobs,
                        )
                    )
        except BaseException as exc:
            for s in streams:
                if s.handle is not None:
                    s.handle.cancel()
            if isinstance(exc, ToolSchemaError) and p.constraint_param:
                raise APIError(400, str(exc), param=p.constraint_param) from exc
            raise
        return LocalRunning(streams, adapter, entry.digest if entry is not None else None)

    def _chat_prompt(self, p: Prepared) -> tuple[list[int], int, dict[str, Any] | None, bool]:
        from ..runtime.constrained import (
            normalize_tool_choice,
            tool_grammar_spec,
            tools_system_prompt,
        )
        from ..runtime.prompts import to_chat_dicts

        chat = to_chat_dicts(p.messages)
        constraint, tools = p.constraint, False
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
        ids, dropped = self.engine.render(chat, p.sampling["max_new_tokens"])
        if p.truncate_prompt_tokens:
            ids = ids[-p.truncate_prompt_tokens :]
        return ids, dropped, constraint, tools

    def _completion_prompt(self, prompt: str | list[int], p: Prepared) -> tuple[list[int], str]:
        """A completion prompt's ids, and its text (what echo repeats)."""
        tok = self.engine.tokenizer
        if isinstance(prompt, str):
            ids = list(tok(prompt, add_special_tokens=p.add_special_tokens)["input_ids"])
            if not ids:
                raise APIError(400, "prompt has no tokens; send a text", param="prompt")
        else:
            ids = list(prompt)
            vocab = self.engine.vocab_size
            if max(ids) >= vocab:
                raise APIError(
                    400,
                    f"prompt holds token id {max(ids)}, outside the vocabulary "
                    f"(ids 0..{vocab - 1})",
                    param="prompt",
                )
        if p.truncate_prompt_tokens:
            ids = ids[-p.truncate_prompt_tokens :]
        context = self.engine.max_context
        if len(ids) + p.max_tokens > context:
            raise APIError(
                400,
                f"the prompt has {len(ids)} tokens and max_tokens asks for {p.max_tokens} more, "
                f"beyond the model's context of {context} tokens; shorten the prompt, lower "
                f"max_tokens or send truncate_prompt_tokens",
                param="prompt",
                code="context_length_exceeded",
            )
        text = prompt if isinstance(prompt, str) else tok.decode(ids, skip_special_tokens=True)
        return ids, text

    def _score(self, ids: list[int], adapter: str | None, p: Prepared) -> list[LogprobEntry]:
        """Log-probabilities of the prompt's own tokens (echo with logprobs), in one forward."""
        import torch

        from ..runtime.sampling import prompt_logprobs

        logits = self.engine.logits(torch.tensor([ids]), [adapter])[0]
        out = []
        for lp in prompt_logprobs(logits, ids, p.logprobs or 0):
            if lp is None:
                token, raw = self._token(ids[0], p.tokens_as_ids)
                out.append(LogprobEntry(token, None, raw, None))
            else:
                out.append(self.entry(lp, p.tokens_as_ids))
        return out

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
        hide = layout_strings(self.engine.settings.home, self.engine.base_path, self.registry)
        for root in self.adapter_roots:
            hide[str(root)] = "<adapter root>"
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
