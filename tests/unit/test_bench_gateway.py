"""The gateway bench without running it: each dialect's request, the first token on canned
streams, the pair schedule, the settings it gives qfserve, and the report's rows."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from qfserve.bench import client as bench_client
from qfserve.bench.client import Dialect, RequestRecord, Sampling, Target, stream_chat
from qfserve.bench.gateway import (
    DIALECTS,
    V1_STREAM,
    GatewayKeys,
    _Tally,
    held_back,
    remote_endpoint,
    schedule,
    stream_settings,
    summary,
    through,
)
from qfserve.bench.gateway_report import overhead_rows, ttft_rows, write
from qfserve.bench.peers import Peer
from qfserve.config import StreamSettings, load_settings
from tests.fake_engine import FakeEngine, Script
from tests.inprocess import Exchange, post_asgi, running

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
KEYS = GatewayKeys("24.token", "sk-qf-appkey", "bce-v3/ALTAK-id/secret")


def _gateway() -> Peer:
    target = Target("qfserve", Dialect.QIANFAN, "http://gw", access_token="24.token")
    return Peer("qfserve", cast(Any, None), target, Path("qfserve.log"), app_id=1)


# ---- each dialect's request through the gateway


def test_v1_goes_to_the_endpoint_with_the_access_token() -> None:
    target = through(_gateway(), "via", "instant", dialect="v1", keys=KEYS)
    assert target.chat_url() == "http://gw/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/instant"
    assert target.params() == {"access_token": "24.token"} and target.headers() == {}
    body = bench_client.request_body(target, QUESTION, Sampling(max_tokens=4))
    assert body["max_output_tokens"] == 4 and body["stream"] and "model" not in body


def test_openai_goes_with_the_app_key() -> None:
    target = through(_gateway(), "via", "instant", dialect="openai", keys=KEYS)
    assert target.chat_url() == "http://gw/v1/chat/completions"
    assert target.headers() == {"Authorization": "Bearer sk-qf-appkey"} and target.params() == {}
    body = bench_client.request_body(target, QUESTION, Sampling(max_tokens=4))
    assert body["model"] == "instant" and body["max_tokens"] == 4


def test_v2_goes_with_the_v2_key_and_asks_the_same() -> None:
    target = through(_gateway(), "via", "instant", dialect="v2", keys=KEYS)
    assert target.chat_url() == "http://gw/v2/chat/completions"
    assert target.headers() == {"Authorization": "Bearer bce-v3/ALTAK-id/secret"}
    assert target.params() == {}
    sampling = Sampling(max_tokens=4, temperature=0.1, seed=7)
    v2 = bench_client.request_body(target, QUESTION, sampling)
    direct = bench_client.request_body(Target("d", Dialect.OPENAI, "http://up"), QUESTION, sampling)
    for field in ("model", "messages", "stream", "stream_options", "max_tokens", "temperature"):
        assert v2[field] == {**direct, "model": "instant"}[field], field
    assert v2["seed"] == 7 and v2["penalty_score"] == 1.0 and "top_k" not in v2


def test_without_keys_every_dialect_uses_the_access_token() -> None:
    sent = {
        dialect: {**through(_gateway(), "via", "instant", dialect=dialect).params(),
                  **through(_gateway(), "via", "instant", dialect=dialect).headers()}
        for dialect in DIALECTS
    }  # fmt: skip
    assert sent == {
        "v1": {"access_token": "24.token"},
        "openai": {"Authorization": "Bearer 24.token"},
        "v2": {"Authorization": "Bearer 24.token"},
    }
    with pytest.raises(ValueError, match="unknown dialect"):
        through(_gateway(), "via", "instant", dialect="v3")


# ---- the first token, on canned streams


class _Clock:
    """perf_counter for the bench's client: one second more at each reading, so that each
    event's time says which event it was (the request starts at 0, the first event reads 1)."""

    def __init__(self) -> None:
        self.now = -1.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def ticking(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(bench_client, "time", _Clock())
    yield


def _read(target: Target, body: str, check: Callable[[httpx.Request], None]) -> RequestRecord:
    def handler(request: httpx.Request) -> httpx.Response:
        check(request)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    async def run() -> RequestRecord:
        transport = httpx.MockTransport(handler)
        async with httpx.AsyncClient(transport=transport) as client:
            return await stream_chat(client, target, QUESTION, Sampling(max_tokens=4))

    return asyncio.run(run())


def _v1_event(result: str, completion: int, *, end: bool = False) -> str:
    usage = {"prompt_tokens": 9, "completion_tokens": completion, "total_tokens": 9 + completion}
    event = {"id": "as-1", "sentence_id": 0, "is_end": end, "result": result, "usage": usage}
    return f"data: {json.dumps(event)}\n\n"


@pytest.mark.usefixtures("ticking")
def test_v1_first_token_is_the_first_event_with_text_not_backdated() -> None:
    body = (
        _v1_event("", 0)
        + _v1_event("Paris", 1)
        + _v1_event(" is the capital.", 3)
        + _v1_event("", 0, end=True)
    )

    def check(request: httpx.Request) -> None:
        assert request.url.params["access_token"] == "24.token"
        assert request.url.path.endswith("/chat/instant")

    target = through(_gateway(), "via", "instant", dialect="v1", keys=KEYS)
    record = _read(target, body, check)
    assert record.ok and record.text == "Paris is the capital."
    assert (record.first_event_s, record.first_text_s, record.first_text) == (1.0, 2.0, "Paris")


def _chunk(delta: dict[str, str], **extra: Any) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": None, **extra}
    return f"data: {json.dumps({'id': 'c', 'choices': [choice]})}\n\n"


@pytest.mark.usefixtures("ticking")
@pytest.mark.parametrize(("dialect", "key"), [("openai", "sk-qf-appkey"), ("v2", KEYS.v2_key)])
def test_openai_shaped_first_token_is_the_first_content_chunk(dialect: str, key: str) -> None:
    flags = {"flag": 0, "ban_round": -1} if dialect == "v2" else {}
    body = (
        _chunk({"role": "assistant", "content": ""}, **flags)
        + _chunk({"content": "Paris"}, **flags)
        + _chunk({"content": " is"}, **flags)
        + 'data: {"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2}}\n\n'
        + "data: [DONE]\n\n"
    )

    def check(request: httpx.Request) -> None:
        assert request.headers["authorization"] == f"Bearer {key}"

    record = _read(through(_gateway(), "via", "instant", dialect=dialect, keys=KEYS), body, check)
    assert record.ok and record.text == "Paris is" and record.output_tokens == 2
    assert (record.first_event_s, record.first_text_s, record.first_text) == (1.0, 2.0, "Paris")


def test_an_error_answer_has_no_first_token() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        error = {"error": {"code": "invalid_iam_token", "message": "bad key"}}
        return httpx.Response(401, json=error)

    async def run() -> RequestRecord:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            target = through(_gateway(), "via", "instant", dialect="v2", keys=KEYS)
            return await stream_chat(client, target, QUESTION, Sampling())

    record = asyncio.run(run())
    assert record.first_text_s is None and "401" in (record.error or "")


def test_text_held_back_is_told_apart() -> None:
    # Through qfserve the safety guard held "L" until "'" showed no listed term was coming.
    assert held_back("L", "L'")
    assert not held_back("The", "The") and not held_back("The", "A") and not held_back("", "")


# ---- the pairs


def test_pairs_alternate_which_path_goes_first_in_every_dialect() -> None:
    """Each pair asks both paths once, back to back; which goes first alternates from one pair of
    a dialect to the next, and the dialects take turns, so that the machine's drift over the run
    falls on every dialect alike."""
    dialects = ["v1", "openai", "v2"]
    order = schedule(30, dialects)
    assert len(order) == 30 * 3 * 2
    assert [d for _, d, _ in order[:6]] == ["v1", "v1", "openai", "openai", "v2", "v2"]
    for position in range(0, len(order), 2):
        first, second = order[position], order[position + 1]
        assert first[:2] == second[:2] and first[2] != second[2]
    for dialect in dialects:
        firsts = [direct for _, d, direct in order[::2] if d == dialect]
        assert firsts == [index % 2 == firsts.index(True) % 2 for index in range(30)]
        assert firsts.count(True) == firsts.count(False) == 15
    # Consecutive pairs alternate too, across dialects.
    assert [direct for _, _, direct in order[:12:2]] == [True, False, True, False, True, False]


def test_one_dialect_alternates_as_before() -> None:
    order = schedule(4)
    assert [(i, direct) for i, _, direct in order] == [
        (0, True), (0, False), (1, False), (1, True), (2, True), (2, False), (3, False), (3, True),
    ]  # fmt: skip


# ---- the settings the bench gives qfserve


def test_the_gateways_settings_file_is_what_qfserve_reads(tmp_path: Path) -> None:
    text = stream_settings(V1_STREAM) + remote_endpoint("instant", "instant", "http://up:1")
    assert tomllib.loads(text)["stream"] == V1_STREAM
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    settings = load_settings(config)
    assert settings.stream == StreamSettings.model_validate(V1_STREAM)
    assert [(e.name, e.engine, e.upstreams) for e in settings.endpoints] == [
        ("instant", "remote", ["http://up:1"])
    ]


def _first_text_event_tokens(tmp_path: Path, stream: StreamSettings) -> tuple[str, int]:
    """A V1 stream from qfserve on a fake engine that pauses before each token: the first event
    carrying text, and how many tokens the engine had produced when qfserve sent it."""
    engine = FakeEngine(script=Script(answer="Paris is the capital.", token_delay=0.2))
    seen: list[tuple[str, int]] = []

    def on_chunk(exchange: Exchange) -> None:
        for block in exchange.text.split("\n\n"):
            if block.startswith("data: ") and not seen:
                result = json.loads(block.removeprefix("data: ")).get("result")
                if result:
                    seen.append((result, engine._generated_total))

    with running(tmp_path, engine, stream=stream) as qf:
        url = qf.v1_url(qf.token(qf.new_app()))
        body = {"messages": QUESTION, "stream": True}
        post_asgi(qf, url, body, {}, on_chunk=on_chunk, disconnect_when=lambda _: bool(seen))
    assert seen, "no event with text"
    return seen[0]


def test_v1_stream_settings_send_the_first_token_with_nothing_held(tmp_path: Path) -> None:
    # With these settings the first event leaves as soon as the first token is out of the engine,
    # before the engine has made a second one: its time is the first token's.
    assert _first_text_event_tokens(tmp_path, StreamSettings.model_validate(V1_STREAM)) == (
        "Paris",
        1,
    )


def test_v1_default_stream_settings_wait_for_a_sentence(tmp_path: Path) -> None:
    # Why the bench sets them: by default the first event is the first sentence.
    text, tokens = _first_text_event_tokens(tmp_path, StreamSettings())
    assert text == "Paris is the capital." and tokens == 4


# ---- the report


def _part(paired: list[float], *, errors: list[str] | None = None, held: int = 0) -> dict[str, Any]:
    tally = _Tally([10.0] * len(paired), [10.0 + p for p in paired], paired, errors or [], held)
    return summary(tally, "instant upstream", "qfserve V1 -> instant upstream", len(paired))


def _results() -> dict[str, Any]:
    machine = {
        "date": "2026-01-01T00:00:00+00:00",
        "cpu": "Test CPU",
        "logical_cores": 2,
        "ram_bytes": 2**32,
        "load_average_at_start": [0.1, 0.1, 0.1],
        "llama_cpp_python": "0.3.36",
        "git_commit": "abc",
    }
    return {
        "machine": machine,
        "max_tokens": 4,
        "question": "What color is the sky?",
        "upstream_threads": 1,
        "target_ms": 2.0,
        "dialects": ["v1", "v2"],
        "v1_stream": V1_STREAM,
        "pause_seconds": 0.1,
        "instant_upstream": {
            "upstream": "instant upstream",
            "pairs": 5,
            "dialects": {
                "v1": _part([0.5, 0.75, 1.0, 1.25, 1.5]),
                "v2": _part([2.0, 2.5, 3.0, 3.5], errors=["HTTP 500: boom"], held=2),
            },
        },
        "pausing_upstream": {
            "upstream": "upstream pausing 100 ms",
            "pairs": 5,
            "dialects": {"v1": _part([]), "v2": _part([1.0])},
        },
    }


def test_one_row_per_upstream_and_dialect() -> None:
    rows = overhead_rows(_results())
    assert rows[2:] == [
        "| instant | Qianfan V1 | 5 | 0 | 0 | 1.00 | 0.6 | 1.4 | met |",
        "| instant | Qianfan V2 | 4 | 1 | 2 | 2.75 | 2.1 | 3.4 | **not met** |",
        "| pausing 100 ms | Qianfan V1 | 0 | 0 | 0 | n/a | n/a | n/a | n/a |",
        "| pausing 100 ms | Qianfan V2 | 1 | 0 | 0 | 1.00 | 1.0 | 1.0 | met |",
    ]
    assert "| instant | Qianfan V1 | qfserve V1 -> instant upstream | 5 | 11.0 |" in "\n".join(
        ttft_rows(_results())
    )


def test_the_report_and_its_json_beside_it(tmp_path: Path) -> None:
    results = _results()
    page = write(results, tmp_path / "bench" / "GATEWAY.md", "qfserve bench --gateway")
    assert (tmp_path / "bench" / "GATEWAY.md").read_text() == page
    assert json.loads((tmp_path / "bench" / "GATEWAY.json").read_text()) == results
    assert "`stream.max_segment_seconds = 0.0`" in page and "Test CPU" in page
    assert "instant, v2: ['HTTP 500: boom']" in page and "Every figure: `GATEWAY.json`." in page
    assert "- command: `qfserve bench --gateway`" in page
    assert all(row in page for row in [*overhead_rows(results), *ttft_rows(results)])


def test_the_dialects_option_is_checked() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qfserve.bench", "--gateway", "--dialects", "v1,v3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "choose among v1, openai, v2" in done.stderr
