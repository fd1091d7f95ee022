"""The embedded engine, one sequence at a time, over llama-cpp-python's high-level `Llama`.

One worker thread owns the model and its context; requests reach it through a thread-safe queue
and their deltas come back through `loop.call_soon_threadsafe`, so the event loop never waits on
llama.cpp. A request whose consumer goes away sets its `cancelled` flag, which the worker checks
between tokens: the sequence stops within one token.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from qfserve.config import EngineSettings
from qfserve.engines.base import Delta, EngineInfo, EngineStats, FinishReason, GenerationRequest
from qfserve.engines.stops import StopMatcher
from qfserve.errors import EngineUnavailable, InternalError, OverloadedError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Delta | BaseException]
    enqueued_at: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Set with `cancelled` when the engine, not the client, ends the job (shutdown).
    failure: BaseException | None = None

    def send(self, item: Delta | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class LlamaCppEngine:
    def __init__(self, settings: EngineSettings, model_path: str, name: str) -> None:
        self._settings = settings
        self._model_path = model_path
        self._name = name
        self._llm: Any = None
        self._info = EngineInfo(name=name, model_path=model_path, context_length=0)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._waiting = 0  # jobs queued but not started; touched on the event loop only
        self._thread: threading.Thread | None = None
        self._running: _Job | None = None  # set and cleared on the worker thread
        self._closing = False
        self._prompt_tokens = self._generated_tokens = 0  # written by the worker thread only

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def ready(self) -> bool:
        return self._llm is not None and not self._closing

    async def start(self) -> None:
        await anyio.to_thread.run_sync(self._load)
        self._thread = threading.Thread(target=self._work, name=f"engine-{self._name}", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        from llama_cpp import Llama

        try:
            llm = Llama(
                model_path=self._model_path,
                n_ctx=self._settings.context_length,
                n_threads=self._settings.n_threads,
                n_batch=512,
                seed=self._settings.seed,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise EngineUnavailable(f"could not load {self._model_path}") from exc
        meta: dict[str, str] = dict(llm.metadata)
        model = llm._model  # the vocabulary's token texts are only on the internal model
        self._info = EngineInfo(
            name=self._name,
            model_path=self._model_path,
            context_length=min(self._settings.context_length, llm.n_ctx()),
            chat_template=meta.get("tokenizer.chat_template"),
            bos_token=model.token_get_text(llm.token_bos()),
            eos_token=model.token_get_text(llm.token_eos()),
            model_name=meta.get("general.name", ""),
            metadata=meta,
        )
        self._llm = llm

    async def drain(self, grace_seconds: float) -> None:
        self._closing = True
        deadline = time.monotonic() + grace_seconds
        # Polled: the worker thread has no loop to signal on. Shutdown only.
        while (self._running or not self._jobs.empty()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        self._fail_queued()
        if (job := self._running) is not None:
            job.failure = EngineUnavailable()
            job.cancelled.set()

    def _fail_queued(self) -> None:
        while not self._jobs.empty():
            job = self._jobs.get_nowait()
            if job is not None:
                job.send(EngineUnavailable())

    async def close(self) -> None:
        self._closing = True
        if self._thread is not None:
            self._jobs.put(None)
            await anyio.to_thread.run_sync(self._thread.join)
        self._fail_queued()
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def stats(self) -> EngineStats:
        running = 1 if self._running is not None else 0
        return EngineStats(running, self._waiting, self._prompt_tokens, 0, self._generated_tokens)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        if self._llm is None:
            raise EngineUnavailable()
        tokens: list[int] = self._llm.tokenize(text.encode(), add_bos=False, special=special)
        return tokens

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if not self.ready:
            raise EngineUnavailable()
        if self._waiting >= self._settings.max_waiting:
            raise OverloadedError()
        job = _Job(request, asyncio.get_running_loop(), asyncio.Queue())
        self._waiting += 1
        self._jobs.put(job)
        started = False
        try:
            while True:
                item = await job.out.get()
                if not started:
                    started = True
                    self._waiting -= 1
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if not started:
                self._waiting -= 1
            job.cancelled.set()  # idempotent; the worker drops a cancelled job

    def _work(self) -> None:
        """The worker thread: the only code that touches the model after loading."""
        while (job := self._jobs.get()) is not None:
            if job.cancelled.is_set():
                continue
            if time.monotonic() - job.enqueued_at > self._settings.max_wait_seconds:
                job.send(OverloadedError())
                continue
            self._running = job
            try:
                self._run(job)
            except Exception as exc:
                log.exception("request %s: generation failed", job.request.request_id)
                job.send(InternalError() if not isinstance(exc, InternalError) else exc)
            finally:
                self._running = None

    def _piece(self, token: int) -> bytes:
        # Not `_model.token_to_piece`: in 0.3.36 it returns its whole 32-byte buffer, NULs included.
        from llama_cpp import llama_token_to_piece

        buffer = ctypes.create_string_buffer(64)
        length = llama_token_to_piece(self._llm._model.vocab, token, buffer, 64, 0, False)
        return buffer.raw[: max(0, length)]

    def _run(self, job: _Job) -> None:
        from llama_cpp import llama_token_is_eog

        llm, sampling = self._llm, job.request.sampling
        if sampling.seed is not None:
            llm.set_seed(sampling.seed)
        prompt = job.request.prompt_tokens
        self._prompt_tokens += len(prompt)
        budget = min(sampling.max_tokens, self._info.context_length - len(prompt))
        stops = StopMatcher(sampling.stop)
        vocab = llm._model.vocab
        produced = pending = 0
        finish: FinishReason = "length"
        if budget > 0:
            tokens = llm.generate(
                prompt,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                min_p=0.0,
                temp=sampling.temperature,
                repeat_penalty=sampling.repeat_penalty,
            )
            for token in tokens:
                if job.cancelled.is_set():
                    finish = "cancelled"
                    log.info(
                        "request %s cancelled after %d tokens", job.request.request_id, produced
                    )
                    if job.failure is not None:
                        job.send(job.failure)
                        return
                    break
                if llama_token_is_eog(vocab, token):
                    finish = "stop"
                    break
                produced += 1
                pending += 1
                self._generated_tokens += 1
                text = stops.feed(self._piece(token))
                if text or stops.stopped:
                    job.send(Delta(text, pending))
                    pending = 0
                if stops.stopped:
                    finish = "stop"
                    break
                if produced >= budget:
                    break
        job.send(Delta(stops.flush(), pending, finish))
