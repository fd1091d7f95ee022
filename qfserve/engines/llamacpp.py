"""The embedded engine: one llama.cpp model and context, continuous batching on one thread.

The engine thread is the only code that touches the context, the KV cache, the batch and the
samplers. The event loop talks to it through `_inbox` (new requests, aborts, stop) and gets
results back through `loop.call_soon_threadsafe`, one call per step. Each step decodes ONE
`llama_batch` holding a token for every generating sequence plus prompt chunks (see
`scheduler.py` for the plan), then samples every sequence whose logits were asked for.

Errors: a failed `llama_decode` fails the sequences of that batch with InternalError; a fatal one
(< -1) or a bug in the loop kills the engine: everything in flight gets EngineUnavailable or
InternalError, `ready` turns false and new requests get EngineUnavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from qfserve.config import EngineSettings, check_kv_pool
from qfserve.engines.base import Delta, EngineInfo, EngineStats, FinishReason, GenerationRequest
from qfserve.engines.grammar import GrammarCache
from qfserve.engines.model import LlamaModel
from qfserve.engines.prefix_store import BLOCK, PrefixCache, Restorable, model_fingerprint
from qfserve.engines.sampling import DrySamplers, SequenceSampler
from qfserve.engines.scheduler import (
    KEEP_AT_LEAST,
    MIN_RESTORE_GAIN,
    Admission,
    Scheduler,
    SeqState,
    Step,
)
from qfserve.engines.stops import StopMatcher
from qfserve.errors import EngineUnavailable, InternalError, OverloadedError, QfserveError

logger = logging.getLogger(__name__)

Item = Delta | QfserveError

_UNQUANTIZED = (llama_cpp.GGML_TYPE_F16, llama_cpp.GGML_TYPE_F32)


def kv_ggml_type(kv_type: str) -> int:
    """llama.cpp's `ggml_type` for one of `config.KV_TYPES` (`f16`, `q8_0`, ...)."""
    value = getattr(llama_cpp, f"GGML_TYPE_{kv_type.upper()}", None)
    if not isinstance(value, int):
        raise EngineUnavailable(f"llama.cpp has no KV cache type {kv_type}")
    return value


@dataclass(eq=False, slots=True)
class _Live:
    """What the engine thread keeps with a running request besides the scheduler's state."""

    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Item]
    request: GenerationRequest
    stops: StopMatcher
    sampler: SequenceSampler | None = None
    # The sequence's own grammar sampler until its SequenceSampler takes it over in `_begin`.
    grammar: Any = None

    def free_grammar(self) -> None:
        if self.grammar:
            llama_cpp.llama_sampler_free(self.grammar)
        self.grammar = None


Seq = SeqState[_Live]


def _deliver(items: list[tuple[asyncio.Queue[Item], Item]]) -> None:
    for out, item in items:
        out.put_nowait(item)


class LlamaCppEngine:
    """The Engine protocol over llama.cpp, several sequences per `llama_decode`.

    The KV cache is one pool of `kv_cache_tokens` cells shared by the slots (`kv_unified`): any
    sequence may use up to `context_length` of them, and the scheduler admits a request only
    when the pool can hold its prompt and `max_tokens`, so no decode runs out of cells. A pool of
    `n_parallel * context_length` cells or more gives each slot a stream of its own instead.
    In the shared pool every token's attention spans the cells of all sequences, masked, so
    flash attention is turned on: ggml's CPU kernel skips masked cells, the other path does not.
    Which attention kernel runs depends on the batch and on the cells in use, so a greedy answer
    may change with the load (also with a stream per slot, once a context passes 512
    tokens).
    """

    def __init__(self, settings: EngineSettings, model_path: str, name: str) -> None:
        self.settings = settings
        self.model_path = model_path
        self.name = name
        self.kv_unified = settings.kv_shared
        self._model: LlamaModel | None = None
        self._ctx: Any = None
        self._mem: Any = None
        self._seq_ptrs: list[Any] = []
        self._batch: Any = None
        self._thread: threading.Thread | None = None
        self._free_lock = threading.Lock()
        self._dead = False
        self._closing = False
        self._n_ctx_seq = settings.context_length
        self._info = EngineInfo(name=name, model_path=model_path, context_length=self._n_ctx_seq)
        self._inbox: queue.SimpleQueue[Seq | int | None] = queue.SimpleQueue()
        self._admission = Admission(settings.n_parallel + settings.max_waiting)
        # Slot states saved outside the slots: None when both tiers are off.
        tiers = PrefixCache(
            ram_budget=settings.cache_ram_mb << 20,
            disk_root=Path(settings.cache_dir).expanduser() if settings.cache_dir else None,
            disk_budget=settings.cache_disk_mb << 20,
        )
        self._tiers = tiers if tiers.enabled else None
        # States of the slots taken at shutdown, for the disk tier.
        self._slot_states: list[tuple[list[int], bytearray]] = []
        self._sched: Scheduler[_Live] = Scheduler(
            n_slots=settings.n_parallel,
            max_wait_seconds=settings.max_wait_seconds,
            prefill_chunk=settings.prefill_chunk,
            stored_prefix=self._tiers.longest if self._tiers is not None else None,
            pool_cells=settings.kv_pool_tokens if self.kv_unified else None,
            max_seq_cells=settings.context_length,
        )
        self._keys = itertools.count(1)
        self._out: list[tuple[_Live, Item]] = []
        self._grammars: GrammarCache | None = None
        self._dry: DrySamplers | None = None

    # -- the event loop's side ------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def ready(self) -> bool:
        alive = self._thread is not None and self._thread.is_alive()
        return alive and self._model is not None and not (self._dead or self._closing)

    def stats(self) -> EngineStats:
        """Gauges and totals for /metrics; cheap, callable from any thread."""
        stats = self._sched.stats()
        if self._tiers is None:
            return stats
        return dataclasses.replace(stats, prefix_tiers=tuple(self._tiers.stats()))

    async def start(self) -> None:
        if self._thread is not None:
            return
        loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._thread = threading.Thread(
            target=self._main, args=(loaded,), name=f"qfserve-engine-{self.name}", daemon=True
        )
        self._thread.start()
        try:
            await loaded
        except QfserveError:
            raise
        except Exception as exc:
            logger.exception("engine %s failed to load %s", self.name, self.model_path)
            raise EngineUnavailable(f"cannot load {self.model_path}") from exc
        logger.info("engine %s serves %s (%s)", self.name, self._info.model_name, self.model_path)

    def _main(self, loaded: asyncio.Future[None]) -> None:
        """Engine thread: load, then serve. Loading here, not in a worker thread, matters: the
        llama.cpp build parallelises with OpenMP, whose thread team belongs to the thread that
        computes. A warm-up decode on another thread leaves a second team whose workers compete
        with the engine's for the cores; measured on 2 cores, decoding ran 4x slower."""
        loop = loaded.get_loop()
        try:
            self._load()
        except BaseException as exc:  # handed to `start`, which answers it
            loop.call_soon_threadsafe(_settle, loaded, exc)
            return
        loop.call_soon_threadsafe(_settle, loaded, None)
        self._run()

    async def drain(self, grace_seconds: float) -> None:
        """Refuse new requests, give those in flight up to `grace_seconds` to finish, then end
        the rest with EngineUnavailable (as `close` does), so their clients get an error event
        rather than a cut connection."""
        self._closing = True
        self._admission.close()
        await asyncio.to_thread(self._admission.wait_idle, grace_seconds)
        if self._admission.in_flight:
            await self._stop_thread()

    async def close(self) -> None:
        """Fail what is still running or waiting with EngineUnavailable, stop the engine thread,
        free the model. Idempotent, and safe to call while a `drain` is ending."""
        await self._stop_thread()
        await asyncio.to_thread(self._free)

    async def _stop_thread(self) -> None:
        """The engine thread fails what is in flight with EngineUnavailable and exits."""
        self._closing = True
        self._admission.close()
        if self._thread is not None:
            self._inbox.put(None)
            await asyncio.to_thread(self._thread.join)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        if self._model is None:
            raise EngineUnavailable()
        return self._model.tokenize(text, special=special)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """Stream the answer. Refusals (OverloadedError, EngineUnavailable) come before any delta;
        closing or cancelling the iterator aborts the sequence within one decode step."""
        model = self._model
        if model is None or not self.ready:
            raise EngineUnavailable()
        tokens = list(request.prompt_tokens) or ([model.bos_id] if model.bos_id >= 0 else [])
        if not tokens:
            raise InternalError("empty prompt")
        if len(tokens) >= self._n_ctx_seq or request.sampling.max_tokens <= 0:
            yield Delta("", 0, "length")
            return
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[Item] = asyncio.Queue()
        live = _Live(loop, out, request, StopMatcher(request.sampling.stop))
        if request.grammar is not None:
            live.grammar = await self._grammar_sampler(request.grammar)
        seq: Seq = SeqState(
            next(self._keys),
            tokens,
            time.monotonic(),
            live,
            max_tokens=request.sampling.max_tokens,
        )
        # Under the admission lock, so a request is either refused or seen by the engine thread.
        try:
            self._admission.enter(then=lambda: self._inbox.put(seq))
        except BaseException:
            live.free_grammar()
            raise
        finished, pending = False, None
        try:
            while not finished:
                item = pending or await out.get()
                pending = None
                if isinstance(item, QfserveError):
                    finished = True
                    raise item
                # A consumer that fell behind gets what piled up as one delta.
                while item.finish_reason is None and not out.empty():
                    more = out.get_nowait()
                    if isinstance(more, QfserveError):
                        pending = more
                        break
                    text, count = item.text + more.text, item.token_count + more.token_count
                    item = Delta(text, count, more.finish_reason)
                finished = item.finish_reason is not None
                yield item
        finally:
            if not finished:
                self._inbox.put(seq.key)

    async def _grammar_sampler(self, grammar: str) -> Any:
        """The sequence's own grammar sampler. Compiled in a worker thread, not on the engine
        thread, where a large grammar would stall every running sequence."""
        grammars = self._grammars
        if grammars is None:
            raise EngineUnavailable()
        compiling = asyncio.ensure_future(asyncio.to_thread(grammars.sampler, grammar))
        try:
            return await asyncio.shield(compiling)
        except asyncio.CancelledError:
            # The thread runs on: free what it compiles for nobody.
            compiling.add_done_callback(_free_unclaimed_grammar)
            raise

    # -- loading and freeing (worker threads, never concurrently with the engine thread) --------

    def _load(self) -> None:
        model = LlamaModel(self.model_path)
        try:
            s = self.settings
            self._n_ctx_seq = min(s.context_length, model.n_ctx_train or s.context_length)
            if s.n_parallel > llama_cpp.llama_max_parallel_sequences():
                raise EngineUnavailable(f"n_parallel {s.n_parallel} exceeds llama.cpp's maximum")
            try:
                check_kv_pool(s)
            except ValueError as exc:
                raise EngineUnavailable(str(exc)) from None
            # The scheduler's sequences may use up to this many cells each.
            self._sched.max_seq_cells = self._n_ctx_seq
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = s.kv_pool_tokens if self.kv_unified else s.n_parallel * self._n_ctx_seq
            # One step holds at most one token per slot plus the prefill budget.
            params.n_batch = s.prefill_chunk + s.n_parallel
            params.n_ubatch = min(params.n_batch, 512)
            params.n_seq_max = s.n_parallel
            params.n_threads = params.n_threads_batch = s.n_threads
            params.kv_unified = self.kv_unified
            params.no_perf = True
            params.type_k = params.type_v = kv_ggml_type(s.kv_type)
            if self.kv_unified or params.type_v not in _UNQUANTIZED:
                # llama.cpp refuses a quantized V cache without flash attention, and in a shared
                # pool attention without it computes over every sequence's cells.
                params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            ctx = llama_cpp.llama_init_from_model(model.ptr, params)
            if not ctx:
                raise EngineUnavailable(f"llama.cpp could not create a context for {self.name}")
            if self._tiers is not None:
                self._tiers.open(self._state_identity(params))
        except BaseException:
            model.close()
            raise
        self._model, self._ctx = model, ctx
        self._grammars = GrammarCache(model.vocab)
        self._dry = DrySamplers(model.vocab)
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        b = self._batch
        for i in range(params.n_batch):
            b.n_seq_id[i] = 1
        # Resolved once: the per-step loop then writes plain ctypes items.
        self._seq_ptrs = [b.seq_id[i] for i in range(params.n_batch)]
        self._info = EngineInfo(
            name=self.name,
            model_path=self.model_path,
            context_length=self._n_ctx_seq,
            chat_template=model.chat_template,
            bos_token=model.bos_token,
            eos_token=model.eos_token,
            model_name=model.name,
            metadata=model.metadata,
        )
        # The first decode allocates compute buffers; pay that at start, not in the first answer.
        self._fill([(0, 0, max(0, model.bos_id), True)])
        llama_cpp.llama_decode(self._ctx, self._batch)
        llama_cpp.llama_memory_clear(self._mem, True)

    def _free(self) -> None:
        # Under a lock: a shutdown's drain and the server's close may both end here at once, and
        # freeing a llama.cpp context twice crashes the process.
        with self._free_lock:
            self._free_unlocked()

    def _state_identity(self, params: Any) -> dict[str, object]:
        """What a saved sequence state depends on besides its tokens: the model file's contents,
        the library that wrote it, and the KV cache's layout and types."""
        return {
            "model": model_fingerprint(self.model_path),
            "llama_cpp": llama_cpp.__version__,
            "type_k": int(params.type_k),
            "type_v": int(params.type_v),
            "flash_attn": int(params.flash_attn_type),
            "n_seq_max": int(params.n_seq_max),
            "n_ctx": int(params.n_ctx),
            "kv_unified": bool(params.kv_unified),
        }

    def _free_unlocked(self) -> None:
        if self._tiers is not None:
            states, self._slot_states = self._slot_states, []
            self._tiers.close(also=states)
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._grammars is not None:
            self._grammars.close()
            self._grammars = None
        if self._dry is not None:
            self._dry.close()
            self._dry = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            self._model.close()
            self._model = None

    # -- the engine thread ----------------------------------------------------------------------

    def _run(self) -> None:
        """Engine thread: loop until stopped or dead, then end everything still in flight."""
        ending: type[QfserveError] = EngineUnavailable
        try:
            while not self._dead and self._drain(block=not self._sched.has_work):
                self._step()
        except Exception:
            logger.exception("engine %s crashed", self.name)
            self._dead, ending = True, InternalError
        finally:
            self._admission.close()
            self._drain(block=False, final=True)
            # Shutting down or dead: whoever still waits for an answer gets an error event.
            for seq in self._sched.drain():
                self._end(seq, ending(), keep_cache=not self._dead)
            self._publish()
            if not self._dead:
                self._take_slot_states()

    def _drain(self, *, block: bool, final: bool = False) -> bool:
        """Engine thread: apply queued requests and aborts; False when asked to stop. A `final`
        drain (after the admission closed) ignores the stop and empties the inbox."""
        try:
            msg = self._inbox.get() if block else self._inbox.get_nowait()
        except queue.Empty:
            return True
        while True:
            if msg is None:
                if not final:
                    return False
            elif isinstance(msg, int):
                seq = self._sched.abort(msg)
                if seq is not None:
                    logger.info(
                        "request %s cancelled after %d tokens",
                        seq.payload.request.request_id,
                        seq.n_generated,
                    )
                    self._end(seq, Delta("", 0, "cancelled"))
            else:
                self._sched.add(msg)
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return True

    def _step(self) -> None:
        """Engine thread: schedule, decode one batch, sample, publish."""
        step = self._sched.admit(time.monotonic())
        for seq in step.expired:
            self._end(seq, OverloadedError())
        for seq in step.admitted:
            self._begin(seq)
        # After `_begin`: a restored state or a forgotten prefix moves where prefilling starts.
        self._sched.plan(step)
        if step.chunks:
            self._decode(step)
        self._publish()

    def _begin(self, seq: Seq) -> None:
        if self._tiers is not None:
            try:
                self._use_tiers(seq, self._tiers)
            except Exception:  # the cache is an optimisation: prefill instead
                logger.exception("engine %s: the prefix cache failed", self.name)
                llama_cpp.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
                self._sched.forget_prefix(seq)
        # The cells the scheduler counted as freed for this request must be free before it
        # decodes (done already, after saving them, if the tiers are on).
        self._evict(seq, None)
        # Drop the slot's cached tokens past the shared prefix; only recurrent models refuse a
        # partial removal, and they start from scratch.
        if not llama_cpp.llama_memory_seq_rm(self._mem, seq.slot, seq.n_past, -1):
            llama_cpp.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
            self._sched.forget_prefix(seq)
        assert self._model is not None
        live = seq.payload
        live.sampler = SequenceSampler(
            live.request.sampling,
            n_vocab=self._model.n_vocab,
            default_seed=self.settings.seed,
            grammar=live.grammar,
            dry=self._dry,
        )
        live.grammar = None  # the sampler owns it now

    def _use_tiers(self, seq: Seq, tiers: PrefixCache) -> None:
        """Engine thread, as a request takes its slot: save what the slot held if the request
        would lose most of it (llama-server's rule), and restore a saved state of the prompt if
        one covers more of it than the slot does."""
        # Fetched first: saving may push the wanted state out of RAM.
        found = None
        if seq.n_stored:
            better_than = seq.n_past + MIN_RESTORE_GAIN - 1
            found = tiers.fetch(seq.tokens, limit=seq.n_prompt - 1, better_than=better_than)
        else:
            tiers.missed()
        displaced = seq.displaced
        seq.displaced = []
        if seq.n_past < KEEP_AT_LEAST * len(displaced):
            self._save(tiers, seq.slot, displaced)
        # Before restoring: the restored state needs the cells they free.
        self._evict(seq, tiers)
        if found is not None:
            if self._write_state(seq.slot, found):
                self._sched.restored(seq, found.length)
            else:
                logger.warning("engine %s: a saved state did not restore", self.name)
                tiers.discard(found)
                self._sched.forget_prefix(seq)

    def _save(self, tiers: PrefixCache, slot: int, cached: list[int]) -> None:
        """Save the slot's state of `cached` to the tiers, unless it is short or held already."""
        if len(cached) >= BLOCK and not tiers.holds(cached):
            state = self._read_state(slot)
            if state is not None:
                tiers.save(cached, state)

    def _evict(self, seq: Seq, tiers: PrefixCache | None) -> None:
        """Clear the idle slots whose cached prefixes the scheduler evicted to make room for
        `seq`, saving each to the tiers first (as a displaced slot is) if `tiers` is given."""
        evicted, seq.evicted = seq.evicted, []
        try:
            if tiers is not None:
                for slot, cached in evicted:
                    self._save(tiers, slot, cached)
        finally:
            for slot, _ in evicted:
                llama_cpp.llama_memory_seq_rm(self._mem, slot, -1, -1)

    def _read_state(self, slot: int) -> bytearray | None:
        size = llama_cpp.llama_state_seq_get_size_ext(self._ctx, slot, 0)
        if size <= 0:
            return None
        try:
            state = bytearray(size)
        except MemoryError:
            logger.warning("engine %s: no memory to save a %d-byte state", self.name, size)
            return None
        view = (ctypes.c_uint8 * size).from_buffer(state)
        written = llama_cpp.llama_state_seq_get_data_ext(self._ctx, view, size, slot, 0)
        del view  # releases the bytearray's buffer
        return state if written == size else None

    def _write_state(self, slot: int, found: Restorable) -> bool:
        """Replace the slot's KV cache with the saved state; False (the slot left empty) if
        llama.cpp refuses it."""
        llama_cpp.llama_memory_seq_rm(self._mem, slot, -1, -1)
        size = len(found.state)
        view = (ctypes.c_uint8 * size).from_buffer(found.state)
        read = llama_cpp.llama_state_seq_set_data_ext(self._ctx, view, size, slot, 0)
        del view
        if read != size:
            llama_cpp.llama_memory_seq_rm(self._mem, slot, -1, -1)
            return False
        return True

    def _take_slot_states(self) -> None:
        """Engine thread, stopping: the idle slots' states, for the disk tier to keep."""
        tiers = self._tiers
        if tiers is None or tiers.disk is None:
            return
        for slot in self._sched.slots:
            if len(slot.cached) >= BLOCK and not tiers.holds(slot.cached):
                state = self._read_state(slot.seq_id)
                if state is not None:
                    self._slot_states.append((list(slot.cached), state))

    def _decode(self, step: Step[_Live]) -> None:
        entries: list[tuple[int, int, int, bool]] = []
        sampled: list[tuple[Seq, int]] = []
        for seq, n in step.chunks:
            start, tokens = seq.n_past, seq.tokens
            for j in range(start, start + n):
                entries.append((seq.slot, j, tokens[j], False))
            if start + n == len(tokens):
                entries[-1] = (seq.slot, start + n - 1, tokens[-1], True)
                sampled.append((seq, len(entries) - 1))
        self._fill(entries)
        rc = llama_cpp.llama_decode(self._ctx, self._batch)
        if rc != 0:
            self._decode_failed(rc, step)
            return
        self._sched.advance(step)
        for seq, index in sampled:
            sampler = seq.payload.sampler
            assert sampler is not None
            try:
                token = sampler.sample(self._ctx, index)
            except QfserveError as exc:  # a grammar that allows no next token
                logger.warning("request %s: %s", seq.payload.request.request_id, exc.message)
                self._end(seq, exc)
                continue
            self._emit(seq, token)

    def _fill(self, entries: list[tuple[int, int, int, bool]]) -> None:
        b = self._batch
        token, pos, logits, seq_ptrs = b.token, b.pos, b.logits, self._seq_ptrs
        for i, (slot, position, tok, wants_logits) in enumerate(entries):
            token[i] = tok
            pos[i] = position
            seq_ptrs[i][0] = slot
            logits[i] = wants_logits
        b.n_tokens = len(entries)

    def _emit(self, seq: Seq, token: int) -> None:
        assert self._model is not None
        live = seq.payload
        self._sched.append(seq, token)
        if self._model.is_eog(token):
            self._end(seq, Delta(live.stops.flush(), 1, "stop", cached_tokens=seq.n_cached))
            return
        text = live.stops.feed(self._model.token_piece(token))
        reason: FinishReason | None = None
        if live.stops.stopped:
            reason = "stop"
        elif seq.n_generated >= live.request.sampling.max_tokens or (
            len(seq.tokens) >= self._n_ctx_seq
        ):
            reason, text = "length", text + live.stops.flush()
        if reason is None:
            self._out.append((live, Delta(text, 1)))
        else:
            self._end(seq, Delta(text, 1, reason, cached_tokens=seq.n_cached))

    def _end(self, seq: Seq, last: Item, *, keep_cache: bool = True) -> None:
        """Engine thread: free the sequence (slot, sampler, admission) and post its last item."""
        self._sched.finish(seq, keep_cache=keep_cache)
        live = seq.payload
        if live.sampler is not None:
            live.sampler.close()
            live.sampler = None
        live.free_grammar()  # ended before it began
        self._admission.leave()
        self._out.append((live, last))

    def _decode_failed(self, rc: int, step: Step[_Live]) -> None:
        # 1: no room in the KV cache (state restored): free idle caches and retry next step.
        if rc == 1:
            evicted = self._sched.evict_idle()
            for seq_id in evicted:
                llama_cpp.llama_memory_seq_rm(self._mem, seq_id, -1, -1)
            if evicted:
                return
        logger.error("engine %s: llama_decode returned %d", self.name, rc)
        if rc < -1:  # fatal: the context is in an unknown state; `_run` ends everything
            self._dead = True
            return
        for seq, _ in step.chunks:
            llama_cpp.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
            self._end(seq, InternalError(), keep_cache=False)

    def _publish(self) -> None:
        """Engine thread: hand this step's items to their event loops, one wake-up per loop."""
        if not self._out:
            return
        out, self._out = self._out, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Item], Item]]] = {}
        for live, item in out:
            by_loop.setdefault(live.loop, []).append((live.out, item))
        for loop, items in by_loop.items():
            # A closed event loop raises RuntimeError: nobody is listening there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, items)


def _free_unclaimed_grammar(compiled: asyncio.Future[Any]) -> None:
    if not compiled.cancelled() and compiled.exception() is None:
        llama_cpp.llama_sampler_free(compiled.result())


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
