"""The bench's pure parts: percentiles, aggregation, targets, reports, both SSE dialects."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from qfserve.bench import sse
from qfserve.bench.client import (
    Dialect,
    RequestRecord,
    Sampling,
    ServerTokenCounter,
    Target,
    count_tokens,
    request_body,
    stream_chat,
)
from qfserve.bench.report import markdown, targets
from qfserve.bench.scenarios import gauge_value
from qfserve.bench.stats import RunResult, distribution, merge, percentile, ratio, summarize
from qfserve.bench.workload import (
    SPEC_TOTAL_CHARS,
    Conversation,
    default_dir,
    load_conversations,
    load_prompts,
    request_messages,
)

# ---- percentiles and aggregation


def test_percentile_interpolates_linearly_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0


def test_percentile_of_one_and_of_none() -> None:
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    assert distribution([]) == {
        "p50": None,
        "p95": None,
        "p99": None,
        "mean": None,
        "max": None,
        "n": 0,
    }


def _record(tokens: int, e2e: float, times: list[float], error: str | None = None) -> RequestRecord:
    return RequestRecord(
        e2e_s=e2e,
        first_event_s=times[0] if times else None,
        token_times=times,
        output_tokens=tokens,
        prompt_tokens=10,
        counted_by="usage",
        finish="length",
        error=error,
    )


def test_throughput_is_all_answered_tokens_over_wall_time() -> None:
    run = RunResult(
        "qfserve",
        2,
        [
            _record(100, 2.0, [0.1, 0.2, 0.4]),
            _record(50, 1.0, [0.3, 0.5]),
            _record(999, 9.0, [], error="HTTP 500: boom"),
        ],
        wall_s=2.5,
        peak_rss_bytes=123,
    )
    summary = summarize(run)
    assert summary["output_tokens_per_s"] == pytest.approx(150 / 2.5)
    assert summary["errors"] == 1 and summary["first_errors"] == ["HTTP 500: boom"]
    assert summary["requests"] == 3
    assert summary["ttft_s"]["n"] == 2 and summary["ttft_s"]["p50"] == pytest.approx(0.2)
    # Gaps within each request only: 0.1, 0.2 and 0.2.
    assert summary["itl_s"]["n"] == 3 and summary["itl_s"]["max"] == pytest.approx(0.2)
    assert summary["e2e_s"]["max"] == 2.0
    assert summary["counted_by"] == {"usage": 2}
    assert summary["peak_rss_bytes"] == 123


def test_merged_rounds_add_wall_time_and_keep_the_highest_peak() -> None:
    first = RunResult("p", 8, [_record(10, 1.0, [0.1])], wall_s=1.0, peak_rss_bytes=5)
    second = RunResult("p", 8, [_record(30, 1.0, [0.1])], wall_s=3.0, peak_rss_bytes=None)
    merged = merge([first, second])
    assert merged.wall_s == 4.0 and merged.peak_rss_bytes == 5 and merged.rounds == 2
    assert summarize(merged)["output_tokens_per_s"] == pytest.approx(10.0)


def test_ratio_without_a_denominator_is_none() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(3.0, None) is None
    assert ratio(3.0, 0.0) is None


# ---- SSE lines


@pytest.mark.parametrize(
    ("line", "payload"),
    [
        ('data: {"a":1}', '{"a":1}'),
        ('data:{"a":1}', '{"a":1}'),
        ("data: [DONE]", "[DONE]"),
        (": ping - 2024-01-01", None),
        ("", None),
        ("event: message", None),
    ],
)
def test_data_payload(line: str, payload: str | None) -> None:
    assert sse.data_payload(line) == payload


def _qianfan(result: str, completion: int, total: int, *, end: bool = False) -> str:
    return json.dumps(
        {
            "id": "as-abcdefghij",
            "object": "chat.completion",
            "sentence_id": 0,
            "is_end": end,
            "is_truncated": False,
            "result": result,
            "need_clear_history": False,
            "usage": {"prompt_tokens": 11, "completion_tokens": completion, "total_tokens": total},
        },
        ensure_ascii=False,
    )


def test_qianfan_events_and_the_answer_tokens_from_the_last_usage() -> None:
    event = sse.qianfan_event(_qianfan("以下是", 16, 27))
    assert (event.text, event.completion_tokens, event.is_end, event.error) == (
        "以下是",
        16,
        False,
        None,
    )
    last = sse.qianfan_event(_qianfan("。", 3, 40, end=True))
    assert last.is_end and sse.qianfan_output_tokens(last) == 29


def test_qianfan_error_event() -> None:
    event = sse.qianfan_event('{"error_code":336100,"error_msg":"busy","id":"as-x"}')
    assert event.error == "336100: busy" and event.is_end
    assert sse.qianfan_event("not json").error is not None


def test_openai_chunks() -> None:
    chunk = sse.openai_chunk(
        '{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}'
    )
    assert chunk.text == "Hi" and chunk.finish_reason is None and not chunk.done
    usage = sse.openai_chunk(
        '{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}'
    )
    assert (usage.prompt_tokens, usage.completion_tokens, usage.text) == (9, 4, "")
    assert sse.openai_chunk("[DONE]").done
    error = sse.openai_chunk('{"error":{"message":"bad model"}}')
    assert error.done and error.error == "bad model"


def test_segment_tokens_are_spread_over_their_gap() -> None:
    # 3 tokens at 1.0 s, then 2 at 1.2 s, then 2 at 1.4 s: a pace of 0.1 s per token.
    times = sse.spread_token_times([(1.0, 3), (1.2, 2), (1.4, 2)])
    assert times == pytest.approx([0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4])
    assert sse.gaps(times) == pytest.approx([0.1] * 6)


def test_one_segment_gives_no_gaps_and_empty_segments_are_skipped() -> None:
    assert sse.spread_token_times([(0.5, 16)]) == [0.5]
    assert sse.spread_token_times([(0.5, 0), (0.7, 2), (0.9, 0)]) == [0.7]
    assert sse.spread_token_times([]) == []


# ---- one request against a mock transport, in both dialects


def _serve(body: str, content_type: str = "text/event-stream") -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/tokenize/count"):
            text = json.loads(request.content)["input"]
            return httpx.Response(200, json={"count": 1 + len(text.split())})
        return httpx.Response(200, headers={"content-type": content_type}, content=body.encode())

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def test_stream_chat_reads_a_qianfan_stream() -> None:
    target = Target("qfserve", Dialect.QIANFAN, "http://x", access_token="t")
    body = "".join(
        f"data: {e}\n\n" for e in (_qianfan("Hello.", 3, 14), _qianfan(" Bye.", 2, 16, end=True))
    )

    async def run() -> RequestRecord:
        async with _serve(body) as client:
            return await stream_chat(
                client, target, [{"role": "user", "content": "hi"}], Sampling()
            )

    record = asyncio.run(run())
    assert record.ok and record.text == "Hello. Bye."
    assert (record.output_tokens, record.prompt_tokens, record.counted_by) == (5, 11, "usage")
    assert len(record.token_times) == 5 and record.finish == "stop"


def _closing_server(
    failures: int, error: type[httpx.TransportError]
) -> tuple[httpx.AsyncClient, list[int]]:
    """A server that drops the first `failures` requests before answering, then streams "Hi"."""
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) <= failures:
            raise error("Server disconnected without sending a response.", request=request)
        body = 'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n'
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler)), calls


def _ask(client: httpx.AsyncClient) -> RequestRecord:
    target = Target("llama-server", Dialect.OPENAI, "http://x/v1")

    async def run() -> RequestRecord:
        async with client:
            return await stream_chat(
                client, target, [{"role": "user", "content": "hi"}], Sampling()
            )

    return asyncio.run(run())


def test_stream_chat_asks_again_once_on_a_connection_closed_before_any_response() -> None:
    client, calls = _closing_server(1, httpx.RemoteProtocolError)
    record = _ask(client)
    assert record.ok and record.text == "Hi" and len(calls) == 2

    client, calls = _closing_server(5, httpx.RemoteProtocolError)
    record = _ask(client)
    assert record.error is not None and record.error.startswith("RemoteProtocolError")
    assert len(calls) == 2

    # A server that is not there is an answer: not asked again.
    client, calls = _closing_server(5, httpx.ConnectError)
    assert _ask(client).error is not None and len(calls) == 1


def test_stream_chat_reports_a_qianfan_error_body() -> None:
    target = Target("qfserve", Dialect.QIANFAN, "http://x")
    error = '{"error_code":110,"error_msg":"Access token invalid or no longer valid"}'

    async def run() -> RequestRecord:
        async with _serve(error, "application/json") as client:
            return await stream_chat(
                client, target, [{"role": "user", "content": "hi"}], Sampling()
            )

    record = asyncio.run(run())
    assert not record.ok and "110" in (record.error or "")


def test_openai_stream_without_usage_is_counted_after_the_run() -> None:
    target = Target("llama_cpp.server", Dialect.OPENAI, "http://x")
    chunks = [
        '{"choices":[{"delta":{"role":"assistant"},"finish_reason":null}]}',
        '{"choices":[{"delta":{"content":"two"},"finish_reason":null}]}',
        '{"choices":[{"delta":{"content":" words"},"finish_reason":null}]}',
        '{"choices":[{"delta":{},"finish_reason":"stop"}]}',
        "[DONE]",
    ]
    body = "".join(f"data: {c}\r\n\r\n" for c in chunks) + ": ping\r\n\r\n"

    async def run() -> RequestRecord:
        async with _serve(body) as client:
            record = await stream_chat(
                client, target, [{"role": "user", "content": "x"}], Sampling()
            )
            assert record.output_tokens == 0 and record.counted_by == ""
            await count_tokens(client, [record], Sampling(), ServerTokenCounter(target))
            return record

    record = asyncio.run(run())
    # The mock tokenizer counts words plus one for BOS; the BOS is taken off.
    assert (record.output_tokens, record.counted_by) == (2, "tokenizer")
    assert record.text == "two words" and len(record.token_times) == 2 and record.finish == "stop"


def test_an_answer_cut_at_max_tokens_has_exactly_max_tokens() -> None:
    record = RequestRecord(token_times=[0.1, 0.2], finish="length")

    async def run() -> None:
        async with _serve("") as client:
            await count_tokens(client, [record], Sampling(max_tokens=64), None)

    asyncio.run(run())
    assert (record.output_tokens, record.counted_by) == (64, "length")


def test_request_bodies_ask_both_dialects_the_same() -> None:
    messages = [{"role": "user", "content": "hi"}]
    sampling = Sampling(max_tokens=32, temperature=0.1, seed=7)
    qianfan = request_body(Target("q", Dialect.QIANFAN, "http://x"), messages, sampling)
    openai = request_body(Target("o", Dialect.OPENAI, "http://x"), messages, sampling)
    assert qianfan["max_output_tokens"] == openai["max_tokens"] == 32
    assert qianfan["temperature"] == openai["temperature"] == 0.1
    assert 0 < qianfan["temperature"] <= 1 and qianfan["stream"] and openai["stream"]
    assert openai["stream_options"] == {"include_usage": True}
    assert Target("o", Dialect.OPENAI, "http://x/v1").chat_url() == "http://x/v1/chat/completions"


# ---- metrics


def test_gauge_value_sums_label_sets() -> None:
    text = (
        "# HELP qfserve_running_sequences Sequences decoding.\n"
        "# TYPE qfserve_running_sequences gauge\n"
        'qfserve_running_sequences{endpoint="a"} 3.0\n'
        'qfserve_running_sequences{endpoint="b b"} 2.0\n'
        "qfserve_running_sequences_total 99\n"
        "qfserve_queue_depth 0.0 1700000000000\n"
    )
    assert gauge_value(text, "qfserve_running_sequences") == 5.0
    assert gauge_value(text, "qfserve_queue_depth") == 0.0
    assert gauge_value(text, "qfserve_missing") is None
    assert gauge_value('{"error_code":3,"error_msg":"Unsupported openapi method"}', "x") is None


# ---- workload


def test_shipped_workload_fits_the_spec() -> None:
    prompts = load_prompts(default_dir() / "prompts.json")
    assert len(prompts) == 16 and {p.lang for p in prompts} == {"en", "zh"}
    assert all(0 < len(p.text) <= SPEC_TOTAL_CHARS for p in prompts)
    conversations = load_conversations(default_dir() / "conversations.json")
    assert conversations and all(len(c.turns) == 8 for c in conversations)
    for conversation in conversations:
        last = sum(len(t) for t in conversation.turns) + 7 * conversation.answer_budget()
        assert conversation.history_chars * 0.95 <= last <= conversation.history_chars
        assert conversation.history_chars <= SPEC_TOTAL_CHARS
    # The English ones go to the limit; the Chinese one stops where its tokens would fill the
    # context (about 2 tokens a character with the bundled model).
    assert {c.lang: c.history_chars for c in conversations} == {"en": 1900, "zh": 1200}


def test_requests_share_no_more_than_the_template() -> None:
    prompts = load_prompts(default_dir() / "prompts.json")
    first, again = request_messages(prompts, 0, "1.1."), request_messages(prompts, 16, "1.1.")
    assert first[0]["content"] == f"[1.1.0] {prompts[0].text}"
    assert again[0]["content"].endswith(prompts[0].text) and again != first
    assert request_messages(prompts, 0, "2.1.") != first


def test_answer_budget() -> None:
    assert Conversation("c", "en", ("a" * 100, "b" * 100, "c" * 100), 1000).answer_budget() == 350
    assert Conversation("c", "en", ("a" * 900, "b" * 200), 1000).answer_budget() == 0


# ---- targets and the report


def _summary(peer: str, concurrency: int, tps: float | None) -> dict[str, object]:
    run = RunResult(peer, concurrency, [_record(int((tps or 0) * 10), 10.0, [0.1, 0.2])], 10.0)
    return summarize(run)


def _results() -> dict[str, Any]:
    return {
        "machine": {
            "date": "2026-01-01T00:00:00+00:00",
            "cpu": "Test CPU",
            "logical_cores": 2,
            "ram_bytes": 2**32,
            "load_average_at_start": [0.1, 0.1, 0.1],
            "python": "3.11",
            "llama_cpp_python": "0.3.36",
            "qfserve": "0.1.0",
            "git_commit": "abc",
        },
        "settings": {
            "model": "m.gguf",
            "threads": 2,
            "max_tokens": 128,
            "temperature": 0.1,
            "top_p": 0.9,
            "top_k": 40,
            "seed": 42,
            "rounds": 2,
        },
        "load": [
            _summary("qfserve", 1, 90.0),
            _summary("llama_cpp.server", 1, 70.0),
            _summary("qfserve", 8, 160.0),
            _summary("llama_cpp.server", 8, 47.0),
        ],
        "baseline": _summary("llama-cpp-python (no HTTP)", 1, 100.0),
        "conversations": [
            {
                "peer": "qfserve",
                "conversation": "a",
                "lang": "en",
                "ttft_ratio_last_to_first": 1.2,
                "turns": [{"turn": 1, "ttft_s": 0.1, "history_chars": 100}],
            },
            {
                "peer": "qfserve",
                "conversation": "b",
                "lang": "en",
                "ttft_ratio_last_to_first": 1.6,
                "turns": [{"turn": 1, "ttft_s": 0.1, "history_chars": 100}],
            },
            {
                "peer": "qfserve",
                "conversation": "c",
                "lang": "zh",
                "ttft_ratio_last_to_first": 1.4,
                "turns": [{"turn": 1, "ttft_s": None, "history_chars": 100}],
            },
        ],
        "disconnect": {
            "peer": "qfserve",
            "clients": 16,
            "available": False,
            "note": "not available",
        },
    }


def test_markdown_of_a_measured_disconnect() -> None:
    results = _results()
    results["disconnect"] = {
        "peer": "qfserve",
        "clients": 16,
        "available": True,
        "streaming_at_disconnect": 8,
        "running_before": 8.0,
        "queued_before": 8.0,
        "all_closed_s": 0.004,
        "seconds_to_zero": 0.25,
        "stayed_zero_s": 1.0,
    }
    results["targets"] = targets(results)
    page = markdown(results)
    assert "| qfserve | 8 | 8 / 8 | 4 | 0.25 | yes |" in page
    assert next(t for t in results["targets"] if t["id"] == "d")["met"] is True


def test_targets_from_one_run() -> None:
    found = {t["id"]: t for t in targets(_results())}
    assert found["a"]["value"] == pytest.approx(0.9) and found["a"]["met"]
    assert found["b1"]["value"] == pytest.approx(160 / 47) and found["b1"]["met"]
    assert found["b1"]["goal"] == ">= 1.5"
    assert found["b2"]["value"] == pytest.approx(160 / 90) and found["b2"]["met"] is None
    assert found["c"]["value"] == pytest.approx(1.4) and found["c"]["met"]
    assert found["d"]["value"] is None and found["d"]["met"] is None
    assert found["d"]["detail"] == "not available"


def test_targets_not_measured_are_none() -> None:
    found = {t["id"]: t for t in targets({"load": [_summary("qfserve", 1, 90.0)]})}
    assert all(found[key]["met"] is None for key in ("a", "b1", "b2", "r1", "r2", "r3", "c", "d"))


def test_markdown_report() -> None:
    results = _results()
    results["targets"] = targets(results)
    page = markdown(results, "qfserve bench --standard --compare")
    assert page.startswith("# qfserve bench results")
    for heading in ("## Targets", "## Load", "## Conversations", "## Disconnect"):
        assert heading in page
    assert "qfserve: not available" in page
    assert "Test CPU" in page and "`qfserve bench --standard --compare`" in page
    assert "| qfserve | 8 | 1 | 0 | 160.0 |" in page
    assert "| llama-cpp-python (no HTTP) | 1 |" in page
    assert "| c | 8th turn's" in page and "| 1.40 | <= 1.5 | yes |" in page


def test_reference_rows_are_goals_against_llama_server() -> None:
    unmeasured = {t["id"]: t for t in targets(_results())}
    assert all(unmeasured[key]["met"] is None for key in ("r1", "r2", "r3"))
    assert "llama-server not measured" in unmeasured["r2"]["detail"]
    results = _results()
    loads = results["load"]
    assert isinstance(loads, list)
    results["load"] = [
        *loads,
        _summary("llama-server", 1, 80.0),
        _summary("llama-server", 8, 100.0),
    ]
    found = {t["id"]: t for t in targets(results)}
    assert found["r1"]["value"] == pytest.approx(100 / 80)
    assert found["r2"]["value"] == pytest.approx(160 / 100)
    assert found["r3"]["value"] == pytest.approx(90 / 80)
    assert found["r1"]["met"] is None
    assert found["r2"]["met"] is True and found["r3"]["met"] is True
    assert found["r2"]["goal"] == found["r3"]["goal"] == ">= 1.0"
    assert "not measured" not in found["r2"]["detail"]
    results["load"] = [*loads, _summary("llama-server", 1, 95.0)]
    found = {t["id"]: t for t in targets(results)}
    assert found["r3"]["met"] is False and found["r2"]["met"] is None
