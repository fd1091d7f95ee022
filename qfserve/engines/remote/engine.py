"""`RemoteEngine`: the Engine protocol over a pool of OpenAI-compatible upstream replicas.

One generation:
1. the healthy replica with the fewest requests in flight is chosen (`pool.choose`);
2. the chat request is POSTed with `stream: true`. The first replica to answer 2xx makes the
   generator yield an empty delta, before any token: the request is taken, and the API may start
   its response now, as the upstream did, rather than after the first token (then the client
   would read the response's head inside its time to first token, which it does not directly);
3. the stream is read up to its first token. A connection error, a timeout, a 5xx or a 429
   before then sends it to another replica, each tried at most once; a connection error also
   marks the replica down until a health check finds it up;
4. after the first token nothing is retried (the client holds part of an answer): an upstream
   failure ends the generator with EngineUnavailable, or InternalError for a malformed stream;
5. the answer ends at the upstream's finish_reason or at one of our stop strings; the last delta
   reconciles the token count with the upstream's usage when it sends one.

Cancellation: closing or cancelling the generator closes the upstream response, which closes its
connection (a half-read one never goes back to the pool), so the upstream sees the disconnect
and stops generating. `drain` and `close` end running generations by cancelling the
read they wait in (`Call.abort`), so nothing polls.

Everything runs on the event loop; `stats` and `replica_stats` only read counters.

The HTTP client is aiohttp: in front of an upstream that answers at once, its first token came
0.4-0.5 ms sooner than httpx's (0.4 against 0.85-0.95 ms per request, on this project's 2-core
machine), and that per-request cost is most of what a gateway adds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import aiohttp
import anyio

from qfserve.engines.base import Delta, EngineInfo, EngineStats, FinishReason, GenerationRequest
from qfserve.engines.remote.attempt import Attempt, Call
from qfserve.engines.remote.pool import HealthChecker, Replica, ReplicaStats, base_url, choose
from qfserve.engines.remote.tokens import GgufVocab, estimate_tokens
from qfserve.engines.remote.wire import (
    CHAT_PATH,
    AttemptFailed,
    CallJoiner,
    Failure,
    SchemaFormat,
    Usage,
    finish_reason,
    request_body,
)
from qfserve.engines.stops import StopMatcher
from qfserve.errors import EngineUnavailable, InternalError, OverloadedError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteSettings:
    """One remote endpoint. Timeouts are in seconds."""

    upstreams: tuple[str, ...]  # base URLs: "http://host:8000" (a trailing "/v1" is accepted)
    model: str = ""  # the model name the upstreams serve; empty: the upstream's only model
    api_key: str = ""  # sent as a Bearer token (vLLM's --api-key, llama-server's --api-key)
    context_length: int = 4096  # the upstream model's context, for the chat layer's checks
    tokenizer: str = ""  # a GGUF of the same model for exact token counts; empty: estimates
    connect_timeout: float = 5.0
    first_token_timeout: float = 60.0  # per try: queueing and prefill on the upstream
    read_timeout: float = 30.0  # between two chunks once the answer flows
    health_interval: float = 5.0
    health_timeout: float = 5.0
    max_connections: int = 256  # over all replicas; streams and health checks share them
    # How a `response_format` JSON Schema is sent: "json_schema" (OpenAI's shape: vLLM, SGLang,
    # llama-server) or "json_object" (`{"type": "json_object", "schema": ...}`: llama-cpp-python).
    schema_format: SchemaFormat = "json_schema"


class RemoteEngine:
    def __init__(self, name: str, settings: RemoteSettings) -> None:
        if not settings.upstreams:
            raise ValueError(f"endpoint {name}: a remote engine needs at least one upstream")
        self._name = name
        self._settings = settings
        self._replicas = [Replica(base_url(url)) for url in settings.upstreams]
        # Made in `start`: an aiohttp session belongs to the running event loop.
        self._session: aiohttp.ClientSession | None = None
        self._checker: HealthChecker | None = None
        self._vocab: GgufVocab | None = None
        self._info = EngineInfo(
            name=name,
            model_path=settings.model,
            context_length=settings.context_length,
            model_name=settings.model,
            metadata={"upstreams": ",".join(r.url for r in self._replicas)},
        )
        self._calls: set[Call] = set()
        self._idle = asyncio.Event()  # set while no call runs; drain waits on it
        self._idle.set()
        self._health_task: asyncio.Task[None] | None = None
        self._started = self._closing = False
        self._turn = 0  # advances per routing choice: round robin among tied replicas
        self._prompt_tokens = self._generated_tokens = 0

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def ready(self) -> bool:
        return self._started and not self._closing and any(r.healthy for r in self._replicas)

    async def start(self) -> None:
        """Load the tokenizer if one is set, run one round of health checks (each bounded by
        `health_timeout`), then keep checking in the background. Returns even when no replica
        is up: `ready` says so, and a replica coming up later makes the engine ready."""
        if self._settings.tokenizer:
            vocab = await anyio.to_thread.run_sync(GgufVocab, self._settings.tokenizer)
            self._vocab = vocab
            self._info = replace(
                self._info,
                chat_template=vocab.metadata.get("tokenizer.chat_template"),
                bos_token=vocab.bos_token,
                eos_token=vocab.eos_token,
                model_name=self._settings.model or vocab.metadata.get("general.name", ""),
                metadata={**vocab.metadata, **self._info.metadata},
            )
        settings = self._settings
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        self._session = aiohttp.ClientSession(
            headers=headers,
            # Reads and waits for a pooled connection are bounded by our own deadlines (first
            # token, then per chunk); aiohttp bounds only the TCP connect.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout),
            connector=aiohttp.TCPConnector(
                limit=settings.max_connections,
                # Under the 5 s idle timeout of uvicorn (vLLM's and SGLang's server) and
                # llama-server: we drop an idle connection before the upstream does, instead of
                # reusing one it is closing.
                keepalive_timeout=4.0,
            ),
            # Upstreams are on the serving network: an HTTP(S)_PROXY meant for the internet
            # must not capture them.
            trust_env=False,
            # One session carries every app's requests: a cookie an upstream sets in answer to
            # one must not ride along on everybody's next ones.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._checker = HealthChecker(
            self._session, self._replicas, timeout=settings.health_timeout
        )
        await self._checker.check_all()
        self._started = True
        self._health_task = asyncio.create_task(self._watch(), name=f"health-{self._name}")
        up = sum(r.healthy for r in self._replicas)
        level = logging.INFO if up else logging.WARNING
        log.log(level, "endpoint %s: %d of %d upstreams up", self._name, up, len(self._replicas))

    async def _watch(self) -> None:
        assert self._checker is not None  # made before this task
        while True:
            await asyncio.sleep(self._settings.health_interval)
            try:
                await self._checker.check_all()
            except Exception:
                # A bug in one round must not stop the checks: replicas would stay as they are.
                log.exception("endpoint %s: health checks failed", self._name)

    async def drain(self, grace_seconds: float) -> None:
        self._closing = True
        with anyio.move_on_after(grace_seconds):
            await self._idle.wait()
        self._abort_all()

    async def close(self) -> None:
        self._closing = True
        self._abort_all()
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.wait([self._health_task])
            self._health_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._vocab is not None:
            self._vocab.close()
            self._vocab = None

    def _abort_all(self) -> None:
        for call in list(self._calls):
            call.abort(EngineUnavailable())

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Exact with a local tokenizer; else Qianfan's estimate, placeholder ids of the right
        count (see `tokens.estimate_token_count`)."""
        if self._vocab is not None:
            return self._vocab.tokenize(text, special=special)
        if self._settings.tokenizer:
            raise EngineUnavailable()  # configured but not loaded yet: start() not done
        return estimate_tokens(text)

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self._calls),
            waiting=0,  # the upstreams queue; we send at once
            prompt_tokens=self._prompt_tokens,
            cached_prompt_tokens=0,
            generated_tokens=self._generated_tokens,
        )

    def replica_stats(self) -> list[ReplicaStats]:
        return [replica.snapshot() for replica in self._replicas]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        session = self._session
        if self._closing or not self._started or session is None:
            raise EngineUnavailable()
        path, body = request_body(self._settings.model, request, self._settings.schema_format)
        call = Call(request.request_id)
        self._calls.add(call)
        self._idle.clear()
        attempt: Attempt | None = None
        stops = StopMatcher(request.sampling.stop)
        # Token counts: `sent` reported in deltas so far, `pending` counted (one per content
        # chunk) but held back with text the stop matcher has not released yet.
        sent = pending = 0
        usage: Usage | None = None
        finish: FinishReason | None = None
        calls = CallJoiner()  # the answer's tool calls, given whole on the last delta
        try:
            # Failover up to the first token, each healthy replica tried at most once.
            tried: list[Replica] = []
            failures: list[AttemptFailed] = []
            taken = False  # a replica has answered 2xx: the empty delta went out
            while attempt is None:
                replica = choose(self._replicas, tried, self._turn)
                if replica is None:
                    raise self._no_answer(call, tried, failures)
                self._turn += 1
                tried.append(replica)
                candidate = Attempt(replica, chat=path == CHAT_PATH)
                deadline = asyncio.get_running_loop().time() + self._settings.first_token_timeout
                try:
                    await candidate.send(session, call, replica.url + path, body, deadline)
                    if not taken:
                        taken = True
                        yield Delta("", 0)
                    await candidate.first_token(call, deadline)
                    attempt = candidate
                except AttemptFailed as exc:
                    if exc.kind is Failure.REJECTED:
                        # Our request is at fault, and every replica would say so.
                        log.error(
                            "request %s: %s refused it: %s", call.request_id, replica.url, exc
                        )
                        raise InternalError() from exc
                    self._failed(call, replica, exc, "before the first token")
                    failures.append(exc)
                finally:
                    if attempt is not candidate:
                        candidate.close()
            loop, read_timeout = asyncio.get_running_loop(), self._settings.read_timeout
            while True:
                try:
                    chunk = await attempt.next(call, loop.time() + read_timeout)
                except AttemptFailed as exc:
                    self._read_failed(call, attempt, exc, finished=finish is not None)
                    break  # the answer was whole: only its trailing usage chunk was lost
                if chunk is None:
                    break
                usage = chunk.usage or usage
                if chunk.calls and finish is None:
                    calls.add(chunk.calls)
                    pending += 1
                if chunk.text and finish is None:
                    pending += 1
                    text = stops.feed(chunk.text.encode())
                    if text or stops.stopped:
                        yield Delta(text, pending)
                        sent, pending = sent + pending, 0
                    if stops.stopped:
                        finish = "stop"
                        break
                if chunk.finish_reason and finish is None:
                    finish = finish_reason(chunk.finish_reason)
            if finish is None:
                if not attempt.done:
                    cut = AttemptFailed(Failure.SERVER, "the stream ended without a finish reason")
                    self._failed(call, attempt.replica, cut, "mid-answer")
                    raise EngineUnavailable() from cut
                finish = "stop"
            attempt.close()  # the answer is complete: free the replica before the caller
            last = pending
            if usage is not None and usage.completion_tokens is not None:
                last = max(0, usage.completion_tokens - sent)
            prompt = usage.prompt_tokens if usage is not None else None
            cached = usage.cached_tokens if usage is not None else None
            sent, pending = sent + last, 0
            yield Delta(stops.flush(), last, finish, prompt, cached, calls.calls())
        finally:
            if attempt is not None:
                attempt.close()
                known = usage.prompt_tokens if usage is not None else None
                self._prompt_tokens += len(request.prompt_tokens) if known is None else known
            self._generated_tokens += sent + pending
            call.close()
            self._calls.discard(call)
            if not self._calls:
                self._idle.set()

    def _no_answer(
        self, call: Call, tried: list[Replica], failures: list[AttemptFailed]
    ) -> Exception:
        if any(f.kind is Failure.BUSY for f in failures):
            # Some replica is alive but full: waiting and retrying is the right advice.
            return OverloadedError()
        log.warning("request %s: no upstream could answer (%d tried)", call.request_id, len(tried))
        return EngineUnavailable()

    def _read_failed(
        self, call: Call, attempt: Attempt, exc: AttemptFailed, *, finished: bool
    ) -> None:
        """A read after the first token failed: the answer fails, unless it was whole."""
        if finished:
            log.info("request %s: no usage from %s: %s", call.request_id, attempt.replica.url, exc)
            return
        self._failed(call, attempt.replica, exc, "mid-answer")
        if exc.kind is Failure.PROTOCOL:
            raise InternalError() from exc
        raise EngineUnavailable() from exc

    def _failed(self, call: Call, replica: Replica, exc: AttemptFailed, when: str) -> None:
        replica.failures += 1
        if exc.kind is Failure.CONNECT:
            replica.mark(False, exc.detail)
        log.warning(
            "request %s: upstream %s failed %s: %s", call.request_id, replica.url, when, exc
        )
