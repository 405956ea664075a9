"""Continuous batching: one background thread decodes every running request together.

Two paths share this thread, the requests' bookkeeping (tokens, text, stop conditions,
streaming, cancellation) and the sampling seam (:func:`~.sampling.choose_tokens`, once a step):

- the paged path (:mod:`.paged`; the default on CUDA for Llama-family models): a paged KV
  cache, prompts prefilled in chunks inside the same steps that decode the running rows,
  admission by free blocks, preemption, prefix reuse, fused kernels and graphed decode steps;
- the dense path, below (the default on CPU, and for every other model).

Dense path: each new request is prefilled alone (its KV cache has no padding, so its numbers are exactly
those of a single-request run) and then merged into the running batch by left-padding the
shorter cache. Every decode step is one forward over all running rows, each with its own
adapter slot (set in the :class:`~loraroute.agents.lora.AdapterContext`), position and
attention mask. Requests join and leave between steps; a cancelled request leaves at the next
step and frees its row.

We do not use ``transformers``' ``generate``: it takes one adapter state per call, and its
continuous-batching manager (``generate_batch``) builds its own paged cache and forward
arguments, leaving no place for a per-row adapter index. A short own loop over
``DynamicCache`` keeps the adapter choice as data.

With ``static_decode`` (the default on CUDA) the running batch's KV cache lives in
preallocated buffers instead and each decode step is replayed as a CUDA graph
(:mod:`loraroute.agents._static_decode`); prefills, merging by left padding and leaving rows
work the same way, on those buffers.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from ..errors import EngineClosedError
from ..lora import AdapterContext
from .requests import Generation, RequestHandle
from .rows import EMIT_INTERVAL, Row, holdback, text_decoder
from .sampling import choose_tokens

logger = logging.getLogger(__name__)

# Schedulers whose thread is running. At interpreter exit a daemon thread stopped in the middle
# of a torch op aborts the process ("terminate called without an active exception"), so the
# threads are stopped first, whether or not the user closed the engine.
_LIVE: weakref.WeakSet[BatchScheduler] = weakref.WeakSet()


@atexit.register
def _close_live_schedulers() -> None:
    for scheduler in list(_LIVE):
        scheduler.close()


def attention_backends(device: torch.device) -> Any:
    """Scaled-dot-product attention without the cuDNN backend on CUDA.

    cuDNN builds an execution plan for every new sequence length (tens of milliseconds), and a
    decode batch meets a new length at every step; flash and memory-efficient attention have no
    such cost.
    """
    if device.type != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )


_Row = Row  # the name older code and tests use


class BatchScheduler:
    """Runs requests on ``model`` in a daemon thread; ``submit`` is thread-safe."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        context: AdapterContext,
        *,
        model_lock: threading.Lock,
        eos_ids: set[int],
        max_batch_size: int = 8,
        max_context: int = 2048,
        on_release: Callable[[RequestHandle], None] | None = None,
        static_decode: bool = False,
        cuda_graphs: bool = False,
        paged: Callable[[], Any] | None = None,
    ):
        """``paged``: makes the :class:`~.paged.PagedBatch` of this model (``None``: the
        dense path only); it is made here, so that its KV cache is reserved up front."""
        self.model = model
        self.tokenizer = tokenizer
        self._decode = text_decoder(tokenizer)
        self.context = context
        self.model_lock = model_lock
        self.eos_ids = eos_ids
        self.max_batch_size = max_batch_size
        self.max_context = max_context
        self.on_release = on_release
        self.device = next(model.parameters()).device
        # transformers 5.2x renamed ``past_key_values`` to ``cache``; accept both
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._pending: deque[RequestHandle] = deque()
        self._cond = threading.Condition()
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor = torch.zeros(0, 0, dtype=torch.long)  # [rows, kv length]
        self._closed = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (for tests and stats)
        self.max_rows_seen = 0
        self.decode_tokens = 0  # tokens produced by decode steps (not by prefills)
        # wall time of decode steps, sampling included (paged path: steps that only decode;
        # steps with prefill chunks, their decode rows included, count in prefill_tokens /
        # prefill_seconds)
        self.decode_seconds = 0.0
        self.prefill_tokens = 0
        self.prefill_seconds = 0.0
        # decode over static KV buffers (set before the first request), replayed as CUDA
        # graphs when ``cuda_graphs`` and the model is on a GPU
        self.static_decode = static_decode
        self.cuda_graphs = cuda_graphs
        self._static: Any = None  # the StaticDecoder, made at the first static merge
        self._paged_factory = paged
        self.paged: Any = paged() if paged is not None else None

    # -- public ----------------------------------------------------------------------------
    def submit(self, handle: RequestHandle) -> RequestHandle:
        with self._cond:
            if self._closed:
                raise EngineClosedError("the engine is closed; create a new Engine")
            self._pending.append(handle)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="loraroute-batcher", daemon=True
                )
                self._thread.start()
                _LIVE.add(self)
            self._cond.notify_all()
        return handle

    def close(self) -> None:
        _LIVE.discard(self)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def set_decode(self, *, static: bool, graphs: bool, paged: bool | None = None) -> None:
        """Switch between dynamic and static decode (and CUDA graphs), and between the paged
        and the dense path (``paged``; ``None`` keeps it), once no request runs (for
        benchmarks and tests; waits up to 10 s for the last step to end)."""
        deadline = time.monotonic() + 10
        while self._rows or self._pending or (self.paged is not None and self.paged.busy):
            if time.monotonic() > deadline:
                raise RuntimeError("set_decode needs an idle scheduler")
            time.sleep(0.001)
        with self.model_lock:
            self.static_decode, self.cuda_graphs = static, graphs
            self._static = None
            if paged is False:
                self.paged = None
            elif paged and self.paged is None:
                if self._paged_factory is None:
                    raise RuntimeError("this scheduler was made without a paged path")
                self.paged = self._paged_factory()
            if self.paged is not None:
                self.paged.set_graphs(graphs, static=static)

    @property
    def running(self) -> int:
        return len(self._rows)

    def _busy(self) -> bool:
        return bool(
            self._closed
            or self._pending
            or self._rows
            or (self.paged is not None and self.paged.waiting)
        )

    # -- worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    self._cond.wait_for(self._busy)
                    if self._closed:
                        break
                    if self.paged is not None:  # the paged batch queues and admits them
                        room = len(self._pending)
                    else:
                        room = self.max_batch_size - len(self._rows)
                    new = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
                try:
                    self._step(new)
                except Exception as exc:  # noqa: BLE001 - hand the error to every waiting caller
                    logger.exception("batch step failed")
                    rows = list(self._rows)
                    if self.paged is not None:
                        rows = self.paged.reset()
                    for row in rows:
                        self._end(row, None, error=exc)
                    for handle in new:
                        if not handle.done():
                            handle._finish(None, exc)
                            self._release(handle)
                    self._rows, self._cache = [], None
                    if self.paged is not None:
                        self._rows = self.paged.running
        rows = list(self._rows)
        if self.paged is not None:
            rows = self.paged.reset()
        for row in rows:
            self._end(row, "cancelled")
        while self._pending:
            handle = self._pending.popleft()
            handle._finish(None, EngineClosedError("the engine was closed before this request ran"))
            self._release(handle)

    def _release(self, handle: RequestHandle) -> None:
        if self.on_release is not None:
            self.on_release(handle)

    def _step(self, new: list[RequestHandle]) -> None:
        if self.paged is not None:
            self._step_paged(new)
            return
        for handle in new:
            if handle.cancelled:
                self._finish_unstarted(handle)
                continue
            self._prefill(handle)
        self._drop_finished()
        if not self._rows:
            return
        started = time.perf_counter()
        if self._static is not None:
            logits = self._step_static()
        else:
            ids = torch.tensor([[row.tokens[-1]] for row in self._rows], device=self.device)
            pos = torch.tensor([[row.position] for row in self._rows], device=self.device)
            self._mask = torch.cat(
                [
                    self._mask,
                    torch.ones(len(self._rows), 1, dtype=self._mask.dtype, device=self.device),
                ],
                1,
            )
            with (
                self.model_lock,
                attention_backends(self.device),
                self.context.use([r.handle.slot for r in self._rows], self.device),
            ):
                out = self.model(
                    input_ids=ids,
                    attention_mask=self._mask,
                    position_ids=pos,
                    use_cache=True,
                    **{self._cache_kw: self._cache},
                )
            logits = out.logits[:, -1, :]
        chosen = choose_tokens(logits, self._rows)
        for row, token in zip(self._rows, chosen, strict=True):
            row.position += 1
            self._next_token(row, token)
        self.steps += 1
        self.decode_tokens += len(self._rows)
        self.decode_seconds += time.perf_counter() - started
        self._drop_finished()

    def _new_row(self, handle: RequestHandle) -> _Row:
        """A row for ``handle``: the tokens its grammar forces at the start are fed with the
        prompt (jump-forward); its own generator when it has a seed."""
        forced: list[int] = []
        if handle.constraint is not None:
            forced = handle.constraint.jump_forward(handle.params.max_new_tokens - 1)
        row = _Row(handle, tokens=forced, position=len(handle.prompt_ids) + len(forced))
        if handle.params.seed is not None:
            row.generator = torch.Generator(device="cpu").manual_seed(handle.params.seed)
        return row

    def _step_paged(self, new: list[RequestHandle]) -> None:
        """One step of the paged path (:mod:`.paged.batch`): chunks of new prompts and the
        running rows' next tokens in one forward, then one choice of tokens."""
        paged = self.paged
        for handle in new:
            if handle.cancelled:
                self._finish_unstarted(handle)
            else:
                paged.add(self._new_row(handle))
        paged.drop(self._end)
        self._rows = paged.running
        started = time.perf_counter()
        with self.model_lock:
            plan = paged.schedule()
            if not plan:
                return
            out = paged.run(plan)
        self.max_rows_seen = max(self.max_rows_seen, len(paged.running))
        if out.rows:
            chosen = choose_tokens(out.logits, out.rows)
            for row, token in zip(out.rows, chosen, strict=True):
                row.position = row.computed
                self._next_token(row, token)
        self.steps += 1
        elapsed = time.perf_counter() - started
        if out.decode_only:
            self.decode_tokens += out.decode_rows
            self.decode_seconds += elapsed
        else:  # its decode rows' tokens count here, not as decode tokens
            self.prefill_tokens += out.tokens
            self.prefill_seconds += elapsed
        paged.drop(self._end)

    def _step_static(self) -> torch.Tensor:
        """One decode step over the static buffers; returns ``[rows, vocab]`` logits."""
        st = self._static
        rows = len(self._rows)
        width = self._mask.shape[1]
        if width + 1 > st.capacity:  # full: first drop leading columns no row uses
            start = int((self._mask.sum(0) > 0).nonzero()[0])
            if start:
                st.trim(rows, start, width)
                self._mask = self._mask[:, start:]
                width -= start
            st.reserve(width, rows, width + 1)
        with self.model_lock, attention_backends(self.device):
            logits = st.step(
                [row.tokens[-1] for row in self._rows],
                [row.position for row in self._rows],
                [row.handle.slot for row in self._rows],
                self._mask,
            )
        self._mask = torch.cat(
            [self._mask, torch.ones(rows, 1, dtype=self._mask.dtype, device=self.device)], 1
        )
        return logits

    def _static_buffers(self) -> Any:
        if self._static is None:
            from .static_decode import StaticDecoder, supports_static

            reason = supports_static(self.model)
            if reason is not None:
                logger.info("decoding without static buffers: the model has %s", reason)
                self.static_decode = False
                return None
            self._static = StaticDecoder(
                self.model,
                self.context,
                max_rows=self.max_batch_size,
                max_context=self.max_context,
                cache_kw=self._cache_kw,
                graphs=self.cuda_graphs,
            )
        return self._static

    def _finish_unstarted(self, handle: RequestHandle) -> None:
        handle._finish(self._generation(_Row(handle), "", "cancelled"))
        self._release(handle)

    def _prefill(self, handle: RequestHandle) -> None:
        from transformers import DynamicCache

        handle.mark_scheduled()
        row = self._new_row(handle)
        forced = list(row.tokens)
        n = row.position
        ids = torch.tensor([handle.prompt_ids + forced], device=self.device)
        cache = DynamicCache(config=self.model.config)
        with (
            self.model_lock,
            attention_backends(self.device),
            self.context.use([handle.slot], self.device),
        ):
            out = self.model(
                input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_kw: cache}
            )
        mask = torch.ones(1, n, dtype=torch.long, device=self.device)
        self._merge(row, cache, mask)
        self._next_token(row, choose_tokens(out.logits[:, -1, :], [row])[0])
        self.max_rows_seen = max(self.max_rows_seen, len(self._rows))

    def _merge(self, row: _Row, cache: Any, mask: torch.Tensor) -> None:
        if self.static_decode and self._static_buffers() is not None:
            self._merge_static(row, cache, mask)
            return
        if self._cache is None or not self._rows:
            self._rows, self._cache, self._mask = [row], cache, mask
            return
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        length = max(old_len, new_len)
        for old_layer, new_layer in zip(self._cache.layers, cache.layers, strict=True):
            for attr in ("keys", "values"):
                a, b = getattr(old_layer, attr), getattr(new_layer, attr)
                a = torch.nn.functional.pad(a, (0, 0, length - old_len, 0))
                b = torch.nn.functional.pad(b, (0, 0, length - new_len, 0))
                setattr(old_layer, attr, torch.cat([a, b], 0))
        self._mask = torch.cat(
            [
                torch.nn.functional.pad(self._mask, (length - old_len, 0)),
                torch.nn.functional.pad(mask, (length - new_len, 0)),
            ],
            0,
        )
        self._rows.append(row)

    def _merge_static(self, row: _Row, cache: Any, mask: torch.Tensor) -> None:
        """``_merge`` into the static buffers: the new row goes below the others, the shorter
        side left-padded (the running rows move right when the new prompt is longer)."""
        st = self._static
        old = len(self._rows)
        width = self._mask.shape[1] if old else 0
        n = mask.shape[1]
        length = max(width, n)
        st.reserve(width, old, length + 1, cache)
        if old and length > width:
            st.widen(old, width, length - width)
        st.insert(old, cache, length)
        pad = torch.nn.functional.pad
        self._mask = (
            torch.cat([pad(self._mask, (length - width, 0)), pad(mask, (length - n, 0))], 0)
            if old
            else mask
        )
        self._rows.append(row)

    def _next_token(self, row: _Row, token: int | BaseException) -> None:
        """Accept ``token``, or end the row with the error its choice raised. A failure here
        (sampling, a grammar) belongs to this request alone: the row ends with the error at the
        next drop and the other rows go on."""
        try:
            if isinstance(token, BaseException):
                raise token
            self._accept(row, token)
        except Exception as exc:  # noqa: BLE001 - handed to this request's caller
            logger.exception("request %s failed while choosing its next token", row.handle.id)
            row.done, row.error = "error", exc

    def _accept(self, row: _Row, token: int) -> None:
        """Add ``token`` to ``row``; stream what is safe to stream; mark the row done if it is.

        Decoding text costs more host time than a GPU decode step spends per row, so a row
        without stop sequences decodes and streams its text at its first token and then at
        most every :data:`EMIT_INTERVAL` seconds (the rest goes out when it ends); a row with
        stop sequences checks its text at every token.
        """
        h = row.handle
        if h.cancelled:
            row.done = "cancelled"
            return
        if h.constraint is not None and not h.constraint.accept(token):
            raise RuntimeError(f"token {token} was rejected by the request's grammar")
        if token in self.eos_ids or (h.constraint is not None and h.constraint.is_terminated()):
            row.done = "stop"
            return
        row.tokens.append(token)
        if token in h.params.stop_token_ids:  # kept, as vLLM keeps it (special ones show no text)
            row.done = "stop"
            return
        stops = h.params.stop
        full = len(row.tokens) >= h.params.max_new_tokens or row.position + 1 >= self.max_context
        now = time.perf_counter()
        if not stops and row.emitted_at is not None and now - row.emitted_at < EMIT_INTERVAL:
            if full:
                row.done = "length"
            return
        text = row.text(self._decode)
        for stop in stops:
            at = text.find(stop)
            if at >= 0:
                row.done = ("stop", stop, at)
                return
        if full:
            row.done = "length"
            return
        safe = len(text) - holdback(text, stops)
        if text.endswith("\ufffd"):  # half of a multi-byte character; wait for the rest
            safe = min(safe, len(text) - 1)
        if safe > row.emitted:
            h._emit(text[row.emitted : safe])
            row.emitted = safe
            row.emitted_at = now

    def _drop_finished(self) -> None:
        keep = []
        for i, row in enumerate(self._rows):
            state = row.done
            if state is None and row.handle.cancelled:
                state = "cancelled"
            if state is None:
                keep.append(i)
            else:
                self._end(row, state, error=row.error)
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache = [], None
            return
        index = torch.tensor(keep, device=self.device)
        self._rows = [self._rows[i] for i in keep]
        self._mask = self._mask.index_select(0, index)
        if self._static is not None:  # columns are dropped when the buffers are full
            self._static.keep(keep, self._mask.shape[1])
            return
        start = int((self._mask.sum(0) > 0).nonzero()[0])  # drop columns no row uses any more
        self._mask = self._mask[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]

    def _end(self, row: _Row, state: Any, error: BaseException | None = None) -> None:
        if error is not None:
            row.handle._finish(None, error)
            self._release(row.handle)
            return
        text = self._decode(row.tokens)
        stop_seq = None
        if isinstance(state, tuple):
            _, stop_seq, at = state
            text, state = text[:at], "stop"
        if len(text) > row.emitted:
            row.handle._emit(text[row.emitted :])
        row.handle._finish(self._generation(row, text, state, stop_seq))
        self._release(row.handle)

    def _generation(
        self, row: _Row, text: str, reason: str, stop_seq: str | None = None
    ) -> Generation:
        h = row.handle
        return Generation(
            text=text,
            prompt_tokens=len(h.prompt_ids),
            completion_tokens=len(row.tokens),
            finish_reason=reason,
            adapter_ref=h.adapter_ref,
            adapter_digest=h.adapter_digest,
            truncated_turns=h.truncated_turns,
            stop_sequence=stop_seq,
            token_ids=list(row.tokens),
        )
