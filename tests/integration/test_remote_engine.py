"""The remote engine: against in-process fake upstreams (aiohttp servers on loopback, each
misbehaving on demand) for the faults a real model server will not show when asked, then against
two real `python -m llama_cpp.server` replicas.

The fake-upstream tests need no model and run in well under a second each; the real ones are
marked `model` and `slow`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp
import httpx
import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from qfserve.chat.formats import ToolCall, ToolChoice, ToolSpec
from qfserve.engines.base import Delta, GenerationRequest, SamplingParams
from qfserve.engines.registry import bundled_model_path
from qfserve.engines.remote import RemoteEngine, RemoteSettings
from qfserve.engines.remote.pool import Replica, base_url, choose
from qfserve.engines.remote.tokens import estimate_token_count
from qfserve.engines.remote.wire import Failure, SchemaFormat, request_body, translate
from qfserve.errors import EngineUnavailable, InternalError, OverloadedError
from tests.llama_servers import LlamaServer, running_llama_servers
from tests.servers import free_port
from tests.waiting import async_wait_until, wait_until

T = TypeVar("T")

_CUT = b"(the fake cuts the connection here)"
# The fakes started by the running scenario: `run` stops them, whatever the scenario did.
_fakes: list[FakeUpstream] = []


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def scenario() -> T:
        try:
            return await asyncio.wait_for(coro, 60)
        finally:
            for fake in _fakes:
                await fake.stop()
            _fakes.clear()

    return asyncio.run(scenario())


def chat(max_tokens: int = 8, stop: tuple[str, ...] = (), **sampling: Any) -> GenerationRequest:
    return GenerationRequest(
        "req",
        [1, 2, 3],
        SamplingParams(max_tokens=max_tokens, stop=stop, **sampling),
        messages=(("system", "Be brief."), ("user", "Say hello.")),
    )


async def collect(engine: RemoteEngine, request: GenerationRequest) -> list[Delta]:
    generator = engine.generate(request)
    try:
        return [delta async for delta in generator]
    finally:
        await generator.aclose()  # type: ignore[attr-defined]


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


async def first_text(generator: AsyncIterator[Delta]) -> str:
    """The first delta with text: the engine yields an empty one when an upstream takes the
    request, before its first token."""
    while not (delta := await anext(generator)).text:
        assert delta.token_count == 0 and delta.finish_reason is None
    return delta.text


# -- the fake upstream -----------------------------------------------------------------------


@dataclass
class FakeUpstream:
    """Replicas by name, each a real HTTP server on loopback doing as `behaviors` says (default
    "ok"): ok, 503, 429, 400, hang (no headers), stall (headers, then nothing), die
    (connection cut after the first chunk, once `gate` is set), gated (waits on `gate` after
    chunk number `gate_after`), error_event (a vLLM-style error),
    stale (its next GET is met by a closed connection, as a keep-alive connection the upstream
    closed just as it was reused is, then "ok"), stale_post (the same for its next POST).
    `kill` stops a replica for good: its port then refuses connections."""

    behaviors: dict[str, str] = field(default_factory=dict)
    chunks: list[str] = field(default_factory=lambda: ["Hel", "lo", " world"])
    usage: dict[str, int] | None = field(
        default_factory=lambda: {"prompt_tokens": 11, "completion_tokens": 3}
    )
    finish: str = "stop"
    # Chat deltas sent after the chunks' (tool call fragments, say).
    deltas: list[dict[str, Any]] = field(default_factory=list)
    gate_after: int = 0
    gap: float = 0.0  # seconds between two chunks
    health: dict[str, int] = field(default_factory=dict)  # "name/path": status
    posts: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    gets: list[str] = field(default_factory=list)
    cookies: list[str | None] = field(default_factory=list)  # each POST's Cookie header
    closed: dict[str, int] = field(default_factory=dict)  # streams the client walked away from
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    at_gate: int = 0  # gated streams that reached the gate
    _runners: dict[str, web.AppRunner] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _fakes.append(self)

    async def serve(self, name: str) -> str:
        """Start replica `name`; its base URL."""

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(name, request)

        app = web.Application()
        app.router.add_route("*", "/{path:.*}", handle)
        # Cancelled handlers are how a client's disconnect shows on the server side.
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self._runners[name] = runner
        return f"http://127.0.0.1:{port}"

    async def kill(self, name: str) -> None:
        await self._runners.pop(name).cleanup()

    async def stop(self) -> None:
        for name in list(self._runners):
            await self.kill(name)

    def served(self, name: str) -> int:
        return sum(1 for n, _, _ in self.posts if n == name)

    async def _handle(self, name: str, request: web.Request) -> web.StreamResponse:
        behavior = self.behaviors.get(name, "ok")
        if (behavior, request.method) in (("stale", "GET"), ("stale_post", "POST")):
            self.behaviors[name] = "ok"
            assert request.transport is not None
            request.transport.close()  # no answer at all: the connection just closes
            return web.Response()
        if request.method == "GET":
            self.gets.append(f"{name}{request.path}")
            return web.json_response({}, status=self.health.get(f"{name}{request.path}", 200))
        body = await request.json()
        self.posts.append((name, request.path, body))
        self.cookies.append(request.headers.get("Cookie"))
        if behavior in ("503", "429", "400"):
            return web.json_response({"error": behavior}, status=int(behavior))
        if behavior == "hang":
            await asyncio.sleep(3600)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        response.set_cookie("session", f"for-post-{len(self.posts)}")
        await response.prepare(request)
        if behavior == "stall":
            await response.write(b": ping\n\n")
            await asyncio.sleep(3600)
        chat = request.path.endswith("/chat/completions")
        try:
            async for event in self._events(behavior, chat=chat):
                if event == _CUT:
                    assert request.transport is not None
                    request.transport.abort()  # a reset, mid-body
                    return response
                if behavior == "dribble":  # a few bytes per read, cutting lines and characters
                    for start in range(0, len(event), 5):
                        await response.write(event[start : start + 5])
                        await asyncio.sleep(0.001)
                    continue
                await response.write(event)
        except asyncio.CancelledError:
            self.closed[name] = self.closed.get(name, 0) + 1
            raise
        await response.write_eof()
        return response

    async def _events(self, behavior: str, *, chat: bool) -> AsyncIterator[bytes]:
        def event(payload: object) -> bytes:
            return f"data: {json.dumps(payload)}\n\n".encode()

        if behavior == "error_event":
            yield event({"error": {"message": "engine died", "code": 500}})
            return
        yield b": ping\n\n"
        if chat:
            yield event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        for n, text in enumerate(self.chunks):
            if n and self.gap:
                await asyncio.sleep(self.gap)
            part = {"delta": {"content": text}} if chat else {"text": text}
            yield event({"choices": [{"index": 0, **part, "finish_reason": None}]})
            if n == 0 and behavior == "die":
                await self.gate.wait()  # the first chunk has reached the client
                yield _CUT
                return
            if n == self.gate_after and behavior == "gated":
                self.at_gate += 1
                await self.gate.wait()
        for delta in self.deltas if chat else ():
            yield event({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        done: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
        yield event({"choices": [{"index": 0, **done, "finish_reason": self.finish}]})
        if self.usage is not None:
            yield event({"choices": [], "usage": self.usage})
        yield b"data: [DONE]\n\n"


async def started(fake: FakeUpstream, *names: str, **settings: Any) -> RemoteEngine:
    """An engine on replicas `names` (default a and b), started; one whose behavior is
    "refuse" gets a port nothing listens on."""
    upstreams = []
    for name in names or ("a", "b"):
        if fake.behaviors.get(name) == "refuse":
            upstreams.append(f"http://127.0.0.1:{free_port()}")
        else:
            upstreams.append(await fake.serve(name))
    options: dict[str, Any] = {"model": "m", "health_interval": 3600.0, **settings}
    engine = RemoteEngine("remote", RemoteSettings(upstreams=tuple(upstreams), **options))
    await engine.start()
    return engine


# -- pure parts ------------------------------------------------------------------------------


def test_choose_least_outstanding_then_round_robin() -> None:
    a, b, c = Replica("a", healthy=True), Replica("b", healthy=True), Replica("c", healthy=True)
    assert [choose([a, b, c], [], turn) for turn in range(4)] == [a, b, c, a]
    a.outstanding, b.outstanding, c.outstanding = 2, 1, 1
    assert choose([a, b, c], [], 0) is b
    assert choose([a, b, c], [], 1) is c
    assert choose([a, b, c], [b, c], 0) is a
    c.healthy = False
    assert choose([a, b, c], [b], 5) is a
    assert choose([a, b, c], [a, b], 0) is None


def test_base_url_accepts_v1_and_slashes() -> None:
    assert base_url("http://h:8000/v1/") == "http://h:8000"
    assert base_url(" http://h:8000/ ") == "http://h:8000"


def test_request_body_maps_sampling_and_messages() -> None:
    request = chat(
        max_tokens=5, stop=("###",), temperature=0.2, top_k=7, repeat_penalty=1.2, seed=3
    )
    path, body = request_body("llama", request)
    assert path == "/v1/chat/completions"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello."},
    ]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("llama", 5, 0.2)
    assert (body["top_k"], body["stop"], body["seed"]) == (7, ["###"], 3)
    assert body["repeat_penalty"] == body["repetition_penalty"] == 1.2
    plain = GenerationRequest("r", [1], SamplingParams(max_tokens=1), prompt_text="<s>hi")
    path, body = request_body("", plain)
    assert path == "/v1/completions" and body["prompt"] == "<s>hi" and "model" not in body
    # 1.0 is sent too: left out, the upstream's own default penalty would apply.
    assert body["repeat_penalty"] == 1.0 and body["min_p"] == 0.0
    with pytest.raises(InternalError):
        request_body("m", GenerationRequest("r", [1], SamplingParams(max_tokens=1)))


def test_request_body_passes_response_format_through() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    asked = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": True}}
    request = replace(chat(max_tokens=5), grammar='root ::= "{}"', response_format=asked)
    _, body = request_body("m", request)
    assert body["response_format"] == asked and "grammar" not in body
    # llama-cpp-python's server reads a schema only inside json_object.
    _, body = request_body("m", request, "json_object")
    assert body["response_format"] == {"type": "json_object", "schema": schema}
    any_object = replace(request, response_format={"type": "json_object"})
    both: tuple[SchemaFormat, ...] = ("json_schema", "json_object")
    for schema_format in both:
        _, body = request_body("m", any_object, schema_format)
        assert body["response_format"] == {"type": "json_object"}
    _, body = request_body("m", chat(max_tokens=5))
    assert "response_format" not in body


def test_aiohttp_exceptions_are_translated() -> None:
    key: Any = SimpleNamespace(host="h", port=8000, ssl=True)  # the connection's, as printed
    url = URL("http://h:8000/v1/chat/completions")
    asked = aiohttp.RequestInfo(url, "POST", CIMultiDictProxy(CIMultiDict()), url)
    refused = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused"))
    expected: list[tuple[aiohttp.ClientError | HttpProcessingError, Failure]] = [
        (refused, Failure.CONNECT),
        (aiohttp.ClientConnectorDNSError(key, OSError(-2, "unknown host")), Failure.CONNECT),
        (aiohttp.ConnectionTimeoutError("connect"), Failure.CONNECT),
        (aiohttp.InvalidURL("nowhere"), Failure.CONNECT),
        (aiohttp.SocketTimeoutError("read"), Failure.TIMEOUT),
        (aiohttp.ServerTimeoutError("read"), Failure.TIMEOUT),
        (aiohttp.ServerDisconnectedError(), Failure.CONNECT),
        (aiohttp.ClientConnectionResetError("reset"), Failure.CONNECT),
        (aiohttp.ClientOSError(104, "reset"), Failure.CONNECT),
        (aiohttp.ClientPayloadError("cut short"), Failure.CONNECT),
        (aiohttp.TooManyRedirects(asked, ()), Failure.PROTOCOL),
        (LineTooLong(b"data: ...", 131072), Failure.PROTOCOL),
        (BadHttpMessage("not HTTP"), Failure.PROTOCOL),
    ]
    for exc, kind in expected:
        assert translate(exc).kind is kind, exc


def test_estimate_is_qianfans_rule() -> None:
    assert estimate_token_count("") == 0
    assert estimate_token_count("你好，世界") == 4
    assert estimate_token_count("hello big world") == 4  # 3 words x 1.3, rounded up
    assert estimate_token_count("你好 world!") == 4


# -- against the fake upstream ---------------------------------------------------------------


def test_idle_requests_go_round_robin() -> None:
    async def scenario() -> None:
        fake = FakeUpstream()
        engine = await started(fake)
        try:
            for _ in range(4):
                assert text_of(await collect(engine, chat())) == "Hello world"
        finally:
            await engine.close()
        assert (fake.served("a"), fake.served("b")) == (2, 2)
        assert [r.requests for r in engine.replica_stats()] == [2, 2]

    run(scenario())


def test_an_upstreams_cookies_are_not_sent_back() -> None:
    """One session carries every app's requests: a cookie set in answer to one must not ride
    along on the next."""

    async def scenario() -> None:
        fake = FakeUpstream()
        # By a host name: aiohttp's default jar ignores cookies from IP addresses.
        url = (await fake.serve("a")).replace("127.0.0.1", "localhost")
        engine = RemoteEngine("remote", RemoteSettings(upstreams=(url,), model="m"))
        await engine.start()
        try:
            for _ in range(2):
                assert text_of(await collect(engine, chat())) == "Hello world"
        finally:
            await engine.close()
        assert fake.cookies == [None, None]

    run(scenario())


def test_busy_replica_is_avoided() -> None:
    async def scenario() -> None:
        fake = FakeUpstream(behaviors={"a": "gated", "b": "gated"})
        engine = await started(fake)
        try:
            first = engine.generate(chat())
            assert await first_text(first) == "Hel"
            busy = [r.url for r in engine.replica_stats() if r.outstanding]
            second = engine.generate(chat())
            await first_text(second)
            assert [r.outstanding for r in engine.replica_stats()] == [1, 1]
            assert fake.posts[0][0] != fake.posts[1][0], busy
            fake.gate.set()
            rest = [d async for d in first] + [d async for d in second]
            assert text_of(rest) == "lo worldlo world"
            assert engine.stats().running == 0
        finally:
            await engine.close()

    run(scenario())


def test_failover_on_503_before_the_first_token() -> None:
    async def scenario() -> None:
        fake = FakeUpstream(behaviors={"a": "503"})
        engine = await started(fake)
        try:
            deltas = await collect(engine, chat())
            a, b = engine.replica_stats()
        finally:
            await engine.close()
        assert text_of(deltas) == "Hello world"
        assert [h for h, _, _ in fake.posts] == ["a", "b"]
        assert (a.failures, a.healthy, b.requests) == (1, True, 1)  # a 5xx is not a dead replica

    run(scenario())


def test_connection_error_fails_over_and_marks_the_replica_down() -> None:
    async def scenario() -> None:
        fake = FakeUpstream()
        engine = await started(fake)
        await fake.kill("a")  # up at the health check, gone by the request
        try:
            assert text_of(await collect(engine, chat())) == "Hello world"
            assert [r.healthy for r in engine.replica_stats()] == [False, True]
            assert text_of(await collect(engine, chat())) == "Hello world"
            assert engine.replica_stats()[0].requests == 1  # not tried again while down
        finally:
            await engine.close()

    run(scenario())


def test_error_event_before_the_first_token_fails_over() -> None:
    async def scenario() -> None:
        fake = FakeUpstream(behaviors={"a": "error_event"})
        engine = await started(fake)
        try:
            assert text_of(await collect(engine, chat())) == "Hello world"
        finally:
            await engine.close()

    run(scenario())


def test_no_first_token_in_time_fails_over() -> None:
    async def scenario() -> None:
        fake = FakeUpstream(behaviors={"a": "hang"})
        engine = await started(fake, first_token_timeout=0.2)
        try:
            began = time.monotonic()
            assert text_of(await collect(engine, chat())) == "Hello world"
            assert time.monotonic() - began < 2
            assert engine.replica_stats()[0].outstanding == 0
        finally:
            await engine.close()

    run(scenario())


def test_the_request_is_taken_before_the_first_token_and_still_fails_over() -> None:
    """One empty delta once a replica answers 2xx, so the API can start its response as the
    upstream did; a replica that then sends no token in time is still failed over."""

    async def scenario() -> None:
        fake = FakeUpstream(behaviors={"a": "stall"})
        engine = await started(fake, first_token_timeout=0.3)
        try:
            deltas = await collect(engine, chat())
        finally:
            await engine.close()
        assert deltas[0] == Delta("", 0)
        assert text_of(deltas) == "Hello world" and all(d.text for d in deltas[1:-1])
        assert [n for n, _, _ in fake.posts] == ["a", "b"]

    run(scenario())


@pytest.mark.parametrize(
    ("behaviors", "error"),
    [
        ({"a": "429", "b": "429"}, OverloadedError),
        ({"a": "503", "b": "429"}, OverloadedError),
        ({"a": "503", "b": "refuse"}, EngineUnavailable),
        ({"a": "400"}, InternalError),  # our request is at fault: not sent elsewhere
    ],
)
def test_when_no_replica_answers(behaviors: dict[str, str], error: type[Exception]) -> None:
    async def scenario() -> None:
        fake = FakeUpstream()
        engine = await started(fake)
        for name, behavior in behaviors.items():
            if behavior == "refuse":
                await fake.kill(name)
            fake.behaviors[name] = behavior
        try:
            with pytest.raises(error):
                await collect(engine, chat())
        finally:
            await engine.close()
        if error is InternalError:
            assert fake.served("b") == 0

    run(scenario())


def test_failure_after_the_first_token_ends_with_an_error() -> None:
    async def scenario() -> None:
        fake = FakeUpstream(behaviors={"a": "die"})
        engine = await started(fake)
        got: list[Delta] = []
        try:
            with pytest.raises(EngineUnavailable):
                async for delta in engine.generate(chat()):
                    got.append(delta)
                    if delta.text:
                        fake.gate.set()
        finally:
            await engine.close()
        assert text_of(got) == "Hel"
        assert fake.served("b") == 0  # the client holds part of an answer: no retry
        assert engine.replica_stats()[0].failures == 1

    run(scenario())


def test_the_read_timeout_runs_from_chunk_to_chunk() -> None:
    """Chunks that each come within the read timeout make an answer, however long it takes."""

    async def scenario() -> None:
        fake = FakeUpstream(chunks=["a", "b", "c", "d", "e"], gap=0.1)
        engine = await started(fake, "a", read_timeout=0.25)
        try:
            assert text_of(await collect(engine, chat())) == "abcde"
        finally:
            await engine.close()

    run(scenario())


def test_a_stream_that_stalls_mid_answer_ends_at_the_read_timeout() -> None:
    async def scenario() -> None:
        fake = FakeUpstream(behaviors={"a": "gated"}, gate_after=1, gap=0.05)
        engine = await started(fake, "a", read_timeout=0.3, first_token_timeout=60.0)
        got: list[Delta] = []
        began = time.monotonic()
        try:
            with pytest.raises(EngineUnavailable):
                async for delta in engine.generate(chat()):
                    got.append(delta)
        finally:
            await engine.close()
        assert 0.3 <= time.monotonic() - began < 2
        assert text_of(got) == "Hello"
        assert engine.replica_stats()[0].failures == 1

    run(scenario())


def test_events_cut_anywhere_by_the_network_are_read_whole() -> None:
    async def scenario() -> None:
        fake = FakeUpstream(behaviors={"a": "dribble"}, chunks=["你好", "，世界", " and more"])
        engine = await started(fake, "a")
        try:
            deltas = await collect(engine, chat())
        finally:
            await engine.close()
        assert text_of(deltas) == "你好，世界 and more"
        assert deltas[-1].finish_reason == "stop" and deltas[-1].prompt_tokens == 11

    run(scenario())


def test_a_line_past_the_limit_is_a_protocol_failure() -> None:
    async def scenario() -> None:
        fake = FakeUpstream(chunks=["x" * 600_000])
        engine = await started(fake)
        try:
            with pytest.raises(EngineUnavailable):
                await collect(engine, chat())
        finally:
            await engine.close()
        assert [stats.failures for stats in engine.replica_stats()] == [1, 1]

    run(scenario())


def test_usage_reconciles_the_token_counts() -> None:
    async def scenario() -> None:
        fake = FakeUpstream(usage={"prompt_tokens": 11, "completion_tokens": 5})
        engine = await started(fake)
        try:
            deltas = await collect(engine, chat())
            assert sum(d.token_count for d in deltas) == 5
            assert deltas[-1].prompt_tokens == 11 and deltas[-1].finish_reason == "stop"
            assert (engine.stats().prompt_tokens, engine.stats().generated_tokens) == (11, 5)

            fake.usage = {"prompt_tokens": 11, "completion_tokens": 1}  # fewer than the chunks
            deltas = await collect(engine, chat())
            assert [d.token_count for d in deltas] == [0, 1, 1, 1, 0]  # never negative

            fake.usage = None  # llama-cpp-python's server: no usage in streams
            deltas = await collect(engine, chat())
            assert sum(d.token_count for d in deltas) == 3 and deltas[-1].prompt_tokens is None
            assert engine.stats().prompt_tokens == 11 + 11 + 3  # len(prompt_tokens) at last
        finally:
            await engine.close()

    run(scenario())


def test_stop_strings_and_finish_reasons() -> None:
    async def scenario() -> None:
        fake = FakeUpstream(
            chunks=["Hello", " ST", "OP", " more"], usage=None, finish="length", gate_after=2
        )
        fake.behaviors["a"] = "gated"  # the answer goes on after "OP" only if read further
        engine = await started(fake, "a")
        try:
            deltas = await collect(engine, chat(stop=("STOP",)))
            assert (text_of(deltas), deltas[-1].finish_reason) == ("Hello ", "stop")
            assert sum(d.token_count for d in deltas) == 3
            # The upstream was not read to the end.
            await async_wait_until(lambda: fake.closed == {"a": 1}, what="the stream closed")
            fake.behaviors["a"] = "ok"
            deltas = await collect(engine, chat())
            assert (text_of(deltas), deltas[-1].finish_reason) == ("Hello STOP more", "length")
        finally:
            await engine.close()

    run(scenario())


def test_tools_go_upstream_and_its_calls_come_back() -> None:
    def fragment(**call: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": 0, **call}]}

    async def scenario() -> None:
        fake = FakeUpstream(
            chunks=[],
            finish="tool_calls",
            deltas=[
                fragment(id="call_up", type="function", function={"name": "weather"}),
                fragment(function={"arguments": '{"city": '}),
                fragment(function={"arguments": '"Paris"}'}),
            ],
        )
        engine = await started(fake, "a")
        earlier = ToolCall("call_0", "weather", '{"city": "Rome"}')
        request = replace(
            chat(),
            messages=(
                ("system", "Be brief."),
                ("user", "Weather?"),
                ("assistant", ""),
                ("tool", "Rainy"),
                ("assistant", "Rainy."),
                ("user", "And Paris?"),
            ),
            message_calls=(
                ((), None),
                ((), None),
                ((earlier,), None),
                ((), "call_0"),
                ((), None),
                ((), None),
            ),
            tools=(ToolSpec("weather", "The weather", {"type": "object"}),),
            tool_choice=ToolChoice("function", "weather"),
            parallel_tool_calls=False,
        )
        try:
            deltas = await collect(engine, request)
        finally:
            await engine.close()
        assert deltas[-1].finish_reason == "stop" and text_of(deltas) == ""
        assert deltas[-1].tool_calls == (ToolCall("call_up", "weather", '{"city": "Paris"}'),)
        ((_, _, body),) = fake.posts
        assert body["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "The weather",
                    "parameters": {"type": "object"},
                },
            }
        ]
        assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
        assert body["parallel_tool_calls"] is False
        called, answered = body["messages"][2], body["messages"][3]
        assert called["content"] is None
        assert called["tool_calls"] == [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Rome"}'},
            }
        ]
        assert answered == {"role": "tool", "content": "Rainy", "tool_call_id": "call_0"}
        assert "tools" not in request_body("m", chat())[1]

    run(scenario())


def test_completions_route_when_only_prompt_text() -> None:
    async def scenario() -> None:
        fake = FakeUpstream()
        engine = await started(fake, "a")
        request = GenerationRequest("g", [1], SamplingParams(max_tokens=4), prompt_text="Q: hi")
        try:
            assert text_of(await collect(engine, request)) == "Hello world"
        finally:
            await engine.close()
        assert fake.posts[0][1] == "/v1/completions"

    run(scenario())


def test_closing_or_cancelling_the_generator_closes_the_upstream_stream() -> None:
    async def scenario() -> None:
        fake = FakeUpstream(behaviors={"a": "gated"})
        engine = await started(fake, "a")
        try:
            generator = engine.generate(chat())
            await first_text(generator)
            assert engine.replica_stats()[0].outstanding == 1
            await generator.aclose()  # type: ignore[attr-defined]
            assert engine.replica_stats()[0].outstanding == 0 and engine.stats().running == 0
            await async_wait_until(lambda: fake.closed == {"a": 1}, what="the stream closed")

            async def consume() -> None:
                async for _ in engine.generate(chat()):
                    pass

            task = asyncio.create_task(consume())
            await async_wait_until(lambda: fake.at_gate == 2, what="the stream at the gate")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert engine.stats().running == 0
            await async_wait_until(lambda: fake.closed == {"a": 2}, what="the stream closed")
        finally:
            await engine.close()

    run(scenario())


def test_drain_refuses_new_requests_and_ends_running_ones() -> None:
    async def scenario() -> None:
        fake = FakeUpstream(behaviors={"a": "gated"})
        engine = await started(fake, "a")
        try:
            generator = engine.generate(chat())
            await first_text(generator)
            began = time.monotonic()
            drained = asyncio.create_task(engine.drain(0.2))
            with pytest.raises(EngineUnavailable):
                await anext(generator)
            await drained
            assert 0.15 < time.monotonic() - began < 2
            assert not engine.ready
            with pytest.raises(EngineUnavailable):
                await collect(engine, chat())
            await async_wait_until(lambda: fake.closed == {"a": 1}, what="the stream closed")
        finally:
            await engine.close()

    run(scenario())


def test_health_checks() -> None:
    async def scenario() -> None:
        # a: llama-cpp-python (no /health); b: refuses; c: a llama-server still loading (503).
        fake = FakeUpstream(behaviors={"b": "refuse"}, health={"a/health": 404, "c/health": 503})
        engine = await started(fake, "a", "b", "c", health_interval=0.05)
        try:
            assert engine.ready
            assert [r.healthy for r in engine.replica_stats()] == [True, False, False]
            assert "a/v1/models" in fake.gets
            await fake.kill("a")
            fake.health["c/health"] = 200
            await async_wait_until(
                lambda: [r.healthy for r in engine.replica_stats()] == [False, False, True],
                what="a and c healthy as checked",
            )
        finally:
            await engine.close()

        none_up = await started(FakeUpstream(behaviors={"a": "refuse"}), "a")
        try:
            assert not none_up.ready  # start() returned all the same
            with pytest.raises(EngineUnavailable):
                await collect(none_up, chat())
        finally:
            await none_up.close()

    run(scenario())


def test_a_probe_on_a_closed_keepalive_connection_is_sent_again() -> None:
    """A mock, as the race it stands for (the upstream closing an idle connection just as we
    reuse it) cannot be made to happen on demand."""

    async def scenario() -> None:
        fake = FakeUpstream()
        engine = await started(fake, "a", health_interval=0.05)
        try:
            assert engine.ready
            fake.behaviors["a"] = "stale"
            seen: set[bool] = set()

            def probed_again() -> bool:
                seen.add(engine.ready)
                return fake.behaviors["a"] == "ok" and len(fake.gets) >= 4

            await async_wait_until(probed_again, interval=0.002, what="probes after the stale one")
            assert seen == {True}, "one stale connection took the replica down"
        finally:
            await engine.close()

    run(scenario())


def test_a_request_on_a_closed_keepalive_connection_is_sent_again() -> None:
    async def scenario() -> None:
        fake = FakeUpstream(behaviors={"a": "stale_post"})
        engine = await started(fake, "a")
        try:
            deltas = await collect(engine, chat())
            assert text_of(deltas) == "Hello world" and deltas[-1].finish_reason == "stop"
            assert fake.served("a") == 1 and engine.ready
        finally:
            await engine.close()

    run(scenario())


@pytest.mark.model
def test_a_local_gguf_gives_exact_token_counts_and_the_template() -> None:
    async def scenario() -> None:
        fake = FakeUpstream()
        url = await fake.serve("a")
        settings = RemoteSettings(upstreams=(url,), tokenizer=str(bundled_model_path()))
        engine = RemoteEngine("remote", settings)
        with pytest.raises(EngineUnavailable):
            engine.tokenize("not loaded yet")
        await engine.start()
        try:
            assert engine.tokenize("<|im_start|>user") == [1, 4093]  # SmolLM2's vocabulary
            assert len(engine.tokenize("<|im_start|>user", special=False)) > 2
            info = engine.info
            assert info.eos_token == "<|im_end|>" and "<|im_start|>" in (info.chat_template or "")
        finally:
            await engine.close()

    run(scenario())


# -- two real llama-cpp-python servers -------------------------------------------------------


@pytest.fixture(scope="module")
def llama_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LlamaServer]]:
    folder = tmp_path_factory.mktemp("replicas")
    with running_llama_servers(folder) as servers:
        yield servers


@pytest.fixture
def replicas(llama_servers: list[LlamaServer]) -> list[LlamaServer]:
    """Both replicas up, whatever an earlier test killed."""
    for server in llama_servers:
        if not server.alive():
            server.port = free_port()
            server.start()
            server.wait_ready()
    return llama_servers


async def real_engine(servers: list[LlamaServer], **settings: Any) -> RemoteEngine:
    options: dict[str, Any] = {"health_interval": 0.5, "first_token_timeout": 60.0, **settings}
    upstreams = tuple(server.url for server in servers)
    engine = RemoteEngine("remote", RemoteSettings(upstreams=upstreams, **options))
    await engine.start()
    assert engine.ready
    return engine


def greedy(max_tokens: int, question: str = "Say hello.") -> GenerationRequest:
    return GenerationRequest(
        "real",
        [0] * 10,
        SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=1),
        messages=(("user", question),),
    )


@pytest.mark.model
@pytest.mark.slow
def test_traffic_spreads_over_both_replicas(replicas: list[LlamaServer]) -> None:
    before = [server.served() for server in replicas]

    async def scenario() -> None:
        engine = await real_engine(replicas)
        try:
            for _ in range(4):
                deltas = await collect(engine, greedy(4))
                assert deltas[-1].finish_reason in ("stop", "length") and text_of(deltas)
            answers = await asyncio.gather(*(collect(engine, greedy(4)) for _ in range(4)))
            assert all(text_of(deltas) for deltas in answers)
            assert [r.requests for r in engine.replica_stats()] == [4, 4]
        finally:
            await engine.close()

    run(scenario())
    # Each replica writes its access log line as the response ends.
    wait_until(
        lambda: [server.served() - n for server, n in zip(replicas, before, strict=True)] == [4, 4],
        what="four requests in each replica's log",
    )


@pytest.mark.model
@pytest.mark.slow
def test_closing_the_generator_disconnects_the_upstream(replicas: list[LlamaServer]) -> None:
    server = replicas[0]

    async def scenario() -> None:
        engine = await real_engine([server])
        seen = len(server.log())
        try:
            generator = engine.generate(greedy(400, "Write a very long story about a dragon."))
            await first_text(generator)
            await generator.aclose()  # type: ignore[attr-defined]
            assert engine.replica_stats()[0].outstanding == 0  # at once
            await async_wait_until(
                lambda: "Disconnected from client" in server.log()[seen:],
                interval=0.05,
                what="the upstream seeing the disconnect",
            )
            # One request at a time on llama-cpp-python's server: the next one is served at
            # once only because the abandoned 400-token answer stopped.
            began = time.monotonic()
            assert text_of(await collect(engine, greedy(4)))
            assert time.monotonic() - began < 10
        finally:
            await engine.close()

    run(scenario())


@pytest.mark.model
@pytest.mark.slow
def test_token_counts_match_the_upstreams_usage(replicas: list[LlamaServer]) -> None:
    server = replicas[0]
    body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 12}
    body |= {"temperature": 0.0, "seed": 1, "top_p": 0.9, "top_k": 40}
    usage = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).json()["usage"]

    async def scenario() -> None:
        engine = await real_engine([server])
        try:
            deltas = await collect(engine, greedy(12))
            assert sum(d.token_count for d in deltas) == usage["completion_tokens"]
            assert engine.stats().generated_tokens == usage["completion_tokens"]
        finally:
            await engine.close()

    run(scenario())


@pytest.mark.model
@pytest.mark.slow
def test_requests_keep_succeeding_when_a_replica_dies(replicas: list[LlamaServer]) -> None:
    async def scenario() -> None:
        # No background checks: the first request after the kill must fail over by itself.
        engine = await real_engine(replicas, health_interval=3600.0)
        try:
            for _ in range(2):
                assert text_of(await collect(engine, greedy(4)))
            replicas[1].kill()
            for _ in range(4):
                deltas = await collect(engine, greedy(4))
                assert text_of(deltas) and deltas[-1].finish_reason in ("stop", "length")
            a, b = engine.replica_stats()
            assert (a.requests, b.requests, b.failures, b.healthy) == (5, 2, 1, False)
        finally:
            await engine.close()

        # A fresh engine's health checks find the dead replica down, and it serves regardless.
        engine = await real_engine(replicas, health_interval=0.2)
        try:
            assert [r.healthy for r in engine.replica_stats()] == [True, False]
            assert text_of(await collect(engine, greedy(4)))
        finally:
            await engine.close()

    run(scenario())
