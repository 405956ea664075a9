"""The runtime: one base model per process, a pool of resident LoRA adapters, batched generation.

Example::

    >>> engine = Engine("smollm2-135m-instruct", registry=open_registry())  # doctest: +SKIP
    >>> engine.generate([{"role": "user", "content": "Hi"}], adapter="legal:prod").text  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from loraroute.settings import Settings, get_settings

from ..errors import AgentError, IncompatibleAdapterError, UnknownAdapterError
from ..lora import (
    AdapterWeights,
    LoraKernelConfig,
    PackedAdapter,
    SlotLayers,
    check_compatible,
    read_adapter,
)
from .config import EngineConfig
from .pool import AdapterPool, ResidentAdapter
from .prompts import render_prompt, to_chat_dicts
from .requests import Generation, RequestHandle, SamplingParams
from .scheduler import BatchScheduler, attention_backends

logger = logging.getLogger(__name__)

BASE_REFS = frozenset({"base", "none", ""})


class Engine:
    """One base model with a resident adapter pool and a continuous-batching scheduler.

    ``registry`` is a registry object (``resolve``/``local_path``) or a URL for
    ``loraroute.registry.open_registry``; without one, adapters come from
    :meth:`load_adapter_folder`. Requests name an adapter by registry ref (``legal``,
    ``legal:prod``, ``legal@3``), by a name given to ``load_adapter_folder``, by digest, or
    ``None``/``"base"`` for the bare base model.
    """

    def __init__(
        self,
        base_model: str | Path | None = None,
        *,
        registry: Any = None,
        settings: Settings | None = None,
        config: EngineConfig | None = None,
        **options: Any,
    ):
        """Load ``base_model`` (default: the settings' base model) on the configured device.

        ``config`` holds the engine's options (:class:`EngineConfig`); keyword ``options``
        (``device="cpu"``, ``max_resident=4``, ...) override single fields of it.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from loraroute.models import fingerprint, resolve_base_model

        config = (config or EngineConfig()).merged(**options)
        settings = settings or get_settings()
        resolved = resolve_base_model(base_model, settings=settings)
        torch_device = torch.device(config.device or settings.torch_device())
        dtype = config.dtype
        if dtype is None:
            dtype = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(str(resolved.path))
        model = AutoModelForCausalLM.from_pretrained(str(resolved.path), dtype=dtype)
        model.to(torch_device)  # type: ignore[arg-type]
        self._setup(
            model,
            tokenizer,
            settings=settings,
            config=config,
            base_model_id=resolved.name,
            base_path=resolved.path,
            base_fingerprint=fingerprint(resolved.path, settings=settings),
            registry=registry,
        )

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "in-memory",
        base_fingerprint: str | None = None,
        registry: Any = None,
        settings: Settings | None = None,
        config: EngineConfig | None = None,
        **options: Any,
    ) -> Engine:
        """An engine around a model already in memory (on its device and dtype), e.g. one
        built from a config for a benchmark. Without ``base_fingerprint``, one is derived from
        the config and a sample of every weight (adapters that record another base are
        refused as usual)."""
        engine = cls.__new__(cls)
        engine._setup(
            model,
            tokenizer,
            settings=settings or get_settings(),
            config=(config or EngineConfig()).merged(**options),
            base_model_id=name,
            base_path=None,
            base_fingerprint=base_fingerprint or _memory_fingerprint(model),
            registry=registry,
        )
        return engine

    def _setup(
        self,
        model: Any,
        tokenizer: Any,
        *,
        settings: Settings,
        config: EngineConfig,
        base_model_id: str,
        base_path: Path | None,
        base_fingerprint: str,
        registry: Any,
    ) -> None:
        self.settings = settings
        self.config = config
        self.base_model_id = base_model_id
        self.base_path = base_path
        self.base_fingerprint = base_fingerprint
        self.tokenizer = tokenizer
        self.model = model
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self.model.eval()
        self.model.requires_grad_(False)
        from torch import nn

        # the base's linear layers, for the validator: {module: (in_features, out_features)}
        self.base_shapes = {
            name: (m.in_features, m.out_features)
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear)
        }
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 2048))
        max_cpu_adapters = config.max_cpu_adapters
        if max_cpu_adapters is None:
            max_cpu_adapters = 4 * config.max_resident if self.device.type == "cuda" else 0
        self.pool = AdapterPool(
            max_resident=config.max_resident,
            max_bytes=config.max_bytes,
            max_host=max_cpu_adapters,
            max_host_bytes=config.max_cpu_bytes,
        )
        self.slots = SlotLayers(
            self.model,
            self.pool.num_slots,
            r_max=config.r_max,
            config=LoraKernelConfig.from_settings(settings, backend=config.lora_backend),
            adapter_weights=config.adapter_weights,
        )
        self._registry = registry
        self._names: dict[str, str] = {}  # folder-loaded name -> digest
        self._lock = threading.RLock()  # pool bookkeeping and adapter loads
        self._model_lock = threading.Lock()  # forwards vs. writes into slot buffers
        self._ids = itertools.count(1)
        self._grammar: Any = None
        self.scheduler = BatchScheduler(
            self.model,
            self.tokenizer,
            self.slots.context,
            model_lock=self._model_lock,
            eos_ids=self._eos_ids(),
            max_batch_size=config.max_batch_size,
            max_context=self.max_context,
            on_release=self._on_release,
            static_decode=config.cuda_graphs and self.device.type == "cuda",
            cuda_graphs=config.cuda_graphs,
            paged=self._paged_factory(),
        )
        logger.info(
            "engine ready: base %s (%s) on %s/%s, LoRA backend %s",
            self.base_model_id,
            self.base_fingerprint,
            self.device,
            self.dtype,
            self.slots.backend,
        )

    def _paged_factory(self) -> Any:
        """What makes the scheduler's paged batch, when this engine uses the paged path
        (``EngineConfig.kv_cache``; ``None``: the dense path)."""
        import functools

        from .paged import PagedBatch, cache_blocks, supports_paged

        config = self.config
        mode = config.kv_cache
        if mode == "dense":
            return None
        reason = supports_paged(self.model)
        if reason is not None:
            if config.kv_cache == "paged":
                raise AgentError(
                    f"kv_cache='paged' cannot serve this model: {reason}; use kv_cache='dense'"
                )
            logger.info("dense KV cache: the paged path does not run %s", reason)
            return None
        cuda = self.device.type == "cuda"
        blocks = cache_blocks(
            self.model,
            block_size=config.kv_block_size,
            max_rows=config.max_batch_size,
            max_context=self.max_context,
            tokens=config.kv_cache_tokens,
            memory_fraction=config.kv_memory_fraction,
        )
        return functools.partial(
            PagedBatch,
            self.model,
            self.slots.context,
            max_rows=config.max_batch_size,
            max_context=self.max_context,
            block_size=config.kv_block_size,
            blocks=blocks,
            max_step_tokens=config.max_step_tokens or (2048 if cuda else 512),
            prefix_caching=config.prefix_caching,
            graphs=config.cuda_graphs,
            # the kernels run where the LoRA's Triton kernels run (CUDA, or the interpreter)
            triton=self.slots.backend == "triton" and (cuda or self.slots.config.interpret),
        )

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (
            self.tokenizer.eos_token_id,
            getattr(self.model.generation_config, "eos_token_id", None),
        ):
            if isinstance(value, int):
                ids.add(value)
            elif value:
                ids.update(int(v) for v in value)
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            ids.add(im_end)
        return ids

    # -- registry --------------------------------------------------------------------------
    @property
    def registry(self) -> Any:
        if isinstance(self._registry, str):
            from loraroute.registry import open_registry  # type: ignore[attr-defined]

            self._registry = open_registry(self._registry, settings=self.settings)
        return self._registry

    # -- adapters --------------------------------------------------------------------------
    def load_adapter_folder(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        base_fingerprint: str | None = None,
        pin: bool = False,
    ) -> ResidentAdapter:
        """Load a plain PEFT LoRA folder and make it addressable as ``name`` (default: folder name).

        The base fingerprint to check against is ``base_fingerprint`` if given, else that of
        the ``base_model_name_or_path`` recorded in ``adapter_config.json`` when it is a local
        folder. The folder passes the registry's validator against this base's module shapes
        and, under a trust policy (``LORAROUTE_TRUST_POLICY``), its signature (``model.sig``).
        """
        path = Path(path)
        name = name or path.name
        self._verify_signature(path)
        weights = read_adapter(path, base_shapes=self.base_shapes)
        recorded = base_fingerprint or self._recorded_fingerprint(weights)
        entry = self._install(weights, ref=name, recorded_fingerprint=recorded)
        if entry is None:  # pragma: no cover - _install loads unless told not to
            raise AgentError(f"adapter {name!r} did not reach a device slot")
        with self._lock:
            self._names[name] = weights.digest
            if pin:
                self.pool.pin(weights.digest)
        return entry

    def _verify_signature(self, folder: Path) -> None:
        """Under the settings' trust policy, refuse a folder without a trusted signature."""
        if not self.settings.trust_policy:
            return
        from loraroute.registry import RegistryError
        from loraroute.registry.signing import load_trust_policy, verify_signatures

        try:
            verify_signatures(folder, load_trust_policy(self.settings))
        except RegistryError as exc:
            raise IncompatibleAdapterError(str(exc)) from exc

    def _recorded_fingerprint(self, weights: AdapterWeights) -> str | None:
        from loraroute.models import fingerprint

        base = weights.base_model_name_or_path
        if not base:
            return None
        folder = Path(base).expanduser()
        if not folder.is_dir() or not (folder / "config.json").is_file():
            return None
        if self.base_path is not None and folder.resolve() == Path(self.base_path).resolve():
            return self.base_fingerprint
        if not any(folder.glob("*.safetensors")):
            return None
        return fingerprint(folder, settings=self.settings)

    def add_adapter(
        self,
        weights: AdapterWeights,
        *,
        name: str,
        pin: bool = False,
        load: bool = True,
        packed: PackedAdapter | None = None,
        base_fingerprint: str | None = None,
    ) -> ResidentAdapter | None:
        """Register adapter weights already in memory (e.g. from :func:`read_adapter` or a
        training run) under ``name``.

        With ``load=False`` the adapter only enters the CPU tier and moves to a device slot on
        its first request. ``packed`` may be a host buffer already packed for this engine
        (``engine.slots.pack(weights)``); it is used as is, without a copy.
        """
        entry = self._install(
            weights,
            ref=name,
            recorded_fingerprint=base_fingerprint,
            packed=packed,
            load=load,
        )
        with self._lock:
            self._names[name] = weights.digest
            if pin and entry is not None:
                self.pool.pin(weights.digest)
        return entry

    def _install(
        self,
        weights: AdapterWeights,
        *,
        ref: str,
        recorded_fingerprint: str | None,
        packed: PackedAdapter | None = None,
        load: bool = True,
    ) -> ResidentAdapter | None:
        with self._lock:
            entry = self.pool.get(weights.digest)
            if entry is not None:
                return entry
            host = self.pool.host_get(weights.digest)
            if host is None:
                check_compatible(
                    weights,
                    self.model,
                    label=ref,
                    base_fingerprint=self.base_fingerprint,
                    recorded_fingerprint=recorded_fingerprint,
                    named=self.slots.named_modules,
                )
                with self._model_lock:
                    self.slots.ensure(weights)
                source: PackedAdapter | AdapterWeights | None = weights
                if packed is not None or not self._direct_loads():
                    if packed is None or packed.layout is not self.slots.layout:
                        packed = self.slots.pack(weights)
                    self._keep_on_host(weights, ref, packed)
                    source = packed
            else:
                source = host.payload
            if not load or source is None:
                return None
            return self._to_device(
                weights.digest,
                ref,
                source,
                nbytes=weights.nbytes,
                rank=weights.rank,
                target_modules=weights.target_modules,
            )

    def _keep_on_host(self, weights: AdapterWeights, ref: str, packed: PackedAdapter) -> None:
        for old in self.pool.host_put(
            weights.digest,
            ref,
            packed,
            nbytes=packed.nbytes,
            rank=weights.rank,
            target_modules=weights.target_modules,
        ):
            logger.info("dropped adapter %s from the CPU tier to keep %s", old.ref, ref)

    def _direct_loads(self) -> bool:
        """Whether new adapters go from their weights straight into a slot: on CPU without a
        CPU tier (on CUDA one contiguous host-to-device copy of a packed buffer is cheaper
        than a copy per module)."""
        return self.device.type == "cpu" and self.pool.max_host == 0

    def _to_device(
        self,
        digest: str,
        ref: str,
        packed: PackedAdapter | AdapterWeights,
        *,
        nbytes: int,
        rank: int,
        target_modules: list[str],
    ) -> ResidentAdapter:
        """Give ``digest`` a device slot and copy ``packed`` (or, on the direct CPU path, the
        weights themselves) into it. Caller holds ``_lock``."""
        slot, evicted = self.pool.reserve(
            digest, ref, nbytes=nbytes, rank=rank, target_modules=target_modules
        )
        try:
            loaded: PackedAdapter | None = None
            if isinstance(packed, AdapterWeights):
                with self._model_lock:
                    self.slots.load_weights(slot, packed)
            elif self.device.type == "cuda":
                # the slot is free and the copy is queued on a side stream: no need to stop
                # the running decode steps
                loaded = self.slots.load(slot, packed)
            else:
                with self._model_lock:
                    loaded = self.slots.load(slot, packed)
        except BaseException:
            self.pool.evict(digest)
            raise
        if loaded is not None and loaded is not packed:
            self.pool.host_update(digest, loaded)
        for old in evicted:
            where = "to the CPU tier" if self.pool.host_get(old.digest, touch=False) else "out"
            logger.info("evicted adapter %s %s to load %s", old.ref, where, ref)
        logger.info("loaded adapter %s (%s) into slot %d", ref, digest, slot)
        return self.pool.get(digest)  # type: ignore[return-value]

    def _from_host(self, digest: str) -> ResidentAdapter | None:
        """Bring ``digest`` from the CPU tier to a device slot; ``None`` if it is not there."""
        host = self.pool.host_get(digest)
        if host is None:
            return None
        return self._to_device(
            digest,
            host.ref,
            host.payload,
            nbytes=host.nbytes,
            rank=host.rank,
            target_modules=host.target_modules,
        )

    def load_adapter(self, ref: str, *, pin: bool = False) -> ResidentAdapter | None:
        """Make ``ref`` resident (loading it from the registry if needed); ``None`` for base."""
        entry = self._resolve(ref)
        if entry is not None and pin:
            with self._lock:
                self.pool.pin(entry.digest)
        return entry

    def preload(self, refs: Sequence[str], *, pin: bool = False) -> list[ResidentAdapter]:
        """Load several adapters ahead of their first request."""
        return [e for e in (self.load_adapter(r, pin=pin) for r in refs) if e is not None]

    def pin(self, ref: str) -> None:
        self.load_adapter(ref, pin=True)

    def unpin(self, ref: str) -> None:
        entry = self._resolve(ref, load=False)
        if entry is not None:
            with self._lock:
                self.pool.pin(entry.digest, False)

    def evict(self, ref: str) -> None:
        """Free ``ref``'s device slot; its CPU-tier copy (if any) stays for a fast reload."""
        entry = self._resolve(ref, load=False)
        if entry is not None:
            with self._lock:
                self.pool.evict(entry.digest)
                with self._model_lock:
                    self.slots.clear(entry.slot)

    def resident(self) -> list[dict]:
        """Adapters in device slots, least recently used first."""
        with self._lock:
            return [e.to_dict() for e in self.pool.entries()]

    def tiers(self) -> dict[str, list[dict]]:
        """Both tiers: ``{"device": [...], "cpu": [...]}``, least recently used first."""
        with self._lock:
            return {
                "device": [e.to_dict() for e in self.pool.entries()],
                "cpu": [e.to_dict() for e in self.pool.host_entries()],
            }

    def _resolve(self, ref: str | None, *, load: bool = True) -> ResidentAdapter | None:
        if ref is None or ref.lower() in BASE_REFS:
            return None
        with self._lock:
            digest = self._names.get(ref)
            if (
                digest is None
                and ref.startswith("sha256:")
                and (ref in self.pool or self.pool.host_get(ref, touch=False))
            ):
                digest = ref
            if digest is not None:
                entry = self.pool.get(digest)
                if entry is not None or not load:
                    return entry
                entry = self._from_host(digest)
                if entry is not None:
                    return entry
                if ref in self._names:
                    raise UnknownAdapterError(
                        f"adapter {ref!r} was evicted from the pool and the CPU tier and came "
                        f"from a folder or from memory; load it again (load_adapter_folder / "
                        f"add_adapter), or raise max_resident / max_cpu_adapters"
                    )
            if ref.startswith("sha256:"):  # a bare digest the engine does not hold (any more)
                if not load:
                    return None  # nothing to evict
                raise UnknownAdapterError(
                    f"no adapter with digest {ref} is loaded; ask for it by name "
                    f"(name@sha256:..., name@3 or name:alias)"
                )
        registry = self.registry
        if registry is None:
            close = difflib.get_close_matches(ref, list(self._names), n=3, cutoff=0.4)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownAdapterError(
                f"unknown adapter {ref!r}: no registry is configured and no folder was loaded under "
                f"that name (loaded: {', '.join(sorted(self._names)) or 'none'}){hint}"
            )
        version = registry.resolve(ref)
        with self._lock:
            entry = self.pool.get(version.digest)
            if entry is not None or not load:
                return entry
            entry = self._from_host(version.digest)
            if entry is not None:
                return entry
        # the registry verified the checkout (and, under its trust policy, the signatures);
        # the bytes read here are checked against the version's digests once more
        folder = Path(registry.local_path(version))
        weights = read_adapter(
            folder,
            digest=version.digest,
            base_shapes=self.base_shapes,
            files={f.path: f.digest for f in version.files},
        )
        return self._install(
            weights, ref=version.ref, recorded_fingerprint=version.base_fingerprint
        )

    def _on_release(self, handle: RequestHandle) -> None:
        if handle.adapter_digest is not None:
            with self._lock:
                self.pool.release(handle.adapter_digest)

    # -- generation ------------------------------------------------------------------------
    def submit(
        self,
        messages: Sequence[Any] | str,
        adapter: str | None = None,
        *,
        params: SamplingParams | None = None,
        constraint: dict | None = None,
        **sampling: Any,
    ) -> RequestHandle:
        """Queue a request; returns at once with a :class:`RequestHandle`. Thread-safe.

        ``params`` says how to pick tokens (:class:`SamplingParams`); or give its fields as
        keywords (``max_new_tokens=64, temperature=0.7, top_k=40, ...``), not both.
        ``constraint`` limits the output to a grammar (see :mod:`.constrained`): e.g.
        ``{"kind": "json_schema", "schema": {...}}``, ``{"kind": "regex", "regex": ...}``,
        ``{"kind": "choice", "choices": [...]}`` or a ``tool_grammar_spec(...)``.
        """
        params = _params(params, sampling)
        ids, dropped = self.render(messages, params.max_new_tokens)
        if dropped:
            logger.info("dropped %d oldest turn(s) to fit the context window", dropped)
        return self.submit_ids(ids, adapter, params, truncated_turns=dropped, constraint=constraint)

    def render(self, messages: Sequence[Any] | str, max_new_tokens: int) -> tuple[list[int], int]:
        """Prompt ids of ``messages`` in the chat template, leaving room for
        ``max_new_tokens`` (at most half the context), and how many old turns were dropped."""
        chat = to_chat_dicts(messages)
        budget = self.max_context - min(max_new_tokens, self.max_context // 2)
        return render_prompt(self.tokenizer, chat, max_prompt_tokens=budget)

    def submit_ids(
        self,
        ids: list[int],
        adapter: str | None = None,
        params: SamplingParams | None = None,
        *,
        truncated_turns: int = 0,
        constraint: dict | None = None,
        **sampling: Any,
    ) -> RequestHandle:
        """Queue already tokenized prompt ids (a completion prompt, or :meth:`submit`'s
        rendered chat); ``params`` or its fields as keywords, as in :meth:`submit`."""
        params = _params(params, sampling)
        vocab = self.vocab_size
        outside = [i for i in ids if not 0 <= i < vocab][:1] or (
            [params.max_token_id()] if params.max_token_id() >= vocab else []
        )
        if outside:
            raise ValueError(
                f"token id {outside[0]} is outside the vocabulary of {self.base_model_id} "
                f"(ids 0..{vocab - 1})"
            )
        with self._lock:
            entry = self._resolve(adapter)
            if entry is not None:
                self.pool.acquire(entry.digest)
        handle = RequestHandle(
            id=next(self._ids),
            prompt_ids=ids,
            slot=entry.slot if entry else 0,
            adapter_ref=entry.ref if entry else None,
            adapter_digest=entry.digest if entry else None,
            params=params,
            truncated_turns=truncated_turns,
            eos_ids=frozenset(self.scheduler.eos_ids),
        )
        try:
            if constraint is not None:
                handle.constraint = self.grammar.constraint(constraint)
        except BaseException:
            self._on_release(handle)
            raise
        try:
            return self.scheduler.submit(handle)
        except BaseException:
            self._on_release(handle)
            raise

    _submit_ids = submit_ids  # the name benchmarks and older callers use

    @property
    def vocab_size(self) -> int:
        """Rows of the model's logits: token ids are below this."""
        return int(self.model.config.vocab_size)

    def generate(
        self, messages: Sequence[Any] | str, adapter: str | None = None, **kwargs: Any
    ) -> Generation:
        """Generate one answer (blocking). Keyword arguments as in :meth:`submit`."""
        return self.submit(messages, adapter, **kwargs).result()

    def stream(
        self, messages: Sequence[Any] | str, adapter: str | None = None, **kwargs: Any
    ) -> Iterator[str]:
        """Text deltas of one answer; stopping the iteration early cancels the request."""
        handle = self.submit(messages, adapter, **kwargs)
        try:
            yield from handle
        finally:
            if not handle.done():
                handle.cancel()

    async def agenerate(
        self, messages: Sequence[Any] | str, adapter: str | None = None, **kwargs: Any
    ) -> Generation:
        handle = await self._asubmit(messages, adapter, **kwargs)
        return await handle.aresult()

    async def astream(
        self, messages: Sequence[Any] | str, adapter: str | None = None, **kwargs: Any
    ) -> AsyncIterator[str]:
        handle = await self._asubmit(messages, adapter, **kwargs)
        try:
            async for delta in handle.astream():
                yield delta
        finally:
            if not handle.done():
                handle.cancel()

    async def _asubmit(self, messages: Any, adapter: str | None, **kwargs: Any) -> RequestHandle:
        import asyncio
        import functools

        # submit may load an adapter from disk: keep that off the event loop
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, functools.partial(self.submit, messages, adapter, **kwargs)
        )

    @property
    def grammar(self) -> Any:
        """The xgrammar compiler for this tokenizer (built on first use)."""
        if self._grammar is None:
            from .constrained import GrammarCompiler

            with self._lock:
                if self._grammar is None:
                    self._grammar = GrammarCompiler(
                        self.tokenizer,
                        int(self.model.config.vocab_size),
                        sorted(self.scheduler.eos_ids),
                    )
        return self._grammar

    def logits(
        self, input_ids: Any, adapters: Sequence[str | None], attention_mask: Any = None
    ) -> Any:
        """One forward with an adapter per row (``None`` = base); returns logits (the server's
        echo scoring, tests, benchmarks)."""
        import torch

        slots, held = [], []
        try:
            with self._lock:  # held entries cannot be evicted by a later row's load
                for ref in adapters:
                    entry = self._resolve(ref)
                    if entry is not None:
                        self.pool.acquire(entry.digest)
                        held.append(entry.digest)
                    slots.append(entry.slot if entry else 0)
            with (
                torch.inference_mode(),
                self._model_lock,
                attention_backends(self.device),
                self.slots.context.use(slots, self.device),
            ):
                if attention_mask is not None:
                    attention_mask = attention_mask.to(self.device)
                return self.model(
                    input_ids=input_ids.to(self.device), attention_mask=attention_mask
                ).logits
        finally:
            with self._lock:
                for digest in held:
                    self.pool.release(digest)

    def count_tokens(self, messages: Sequence[Any] | str) -> int:
        ids, _ = render_prompt(self.tokenizer, to_chat_dicts(messages), max_prompt_tokens=10**9)
        return len(ids)

    def close(self) -> None:
        """Stop the scheduler thread; pending requests fail with EngineClosedError."""
        self.scheduler.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Engine(base={self.base_model_id!r}, fingerprint={self.base_fingerprint[:19]}..., "
            f"device={self.device}, resident={len(self.pool)}/{self.pool.max_resident})"
        )


def _params(params: SamplingParams | None, sampling: dict[str, Any]) -> SamplingParams:
    """``params``, or a :class:`SamplingParams` from keyword fields (never both)."""
    if params is not None:
        if sampling:
            raise TypeError(
                f"give sampling settings either as params=SamplingParams(...) or as keywords, "
                f"not both (got params and {', '.join(sorted(sampling))})"
            )
        return params
    return SamplingParams(**sampling)


def _memory_fingerprint(model: Any) -> str:
    """``memory:sha256:...`` over a model's config and a sample of every parameter."""
    import hashlib

    import torch

    h = hashlib.sha256(b"loraroute-memory-model-v1\0")
    h.update(model.config.to_json_string(use_diff=False).encode())
    for name, param in model.named_parameters():
        sample = param.detach().reshape(-1)[:64].to("cpu", torch.float32)
        h.update(name.encode() + str(tuple(param.shape)).encode() + sample.numpy().tobytes())
    return "memory:sha256:" + h.hexdigest()


__all__ = ["BASE_REFS", "Engine"]
