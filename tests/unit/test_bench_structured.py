"""The structured-output scenario's pure parts, and its runs against a mock server."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from qfserve.bench import runner
from qfserve.bench.client import Dialect, RequestRecord, Sampling, Target, request_body
from qfserve.bench.report import markdown, targets
from qfserve.bench.runner import Lane, run_lanes
from qfserve.bench.stats import FullBatch, RunResult, full_batch, per_stream_tokens_per_s
from qfserve.bench.structured import mixed_level, openai_route, plan, run_structured
from qfserve.bench.structured_report import (
    MIXED_FREE,
    MIXED_SCHEMA,
    SCHEMA,
    case_summary,
    json_object_so_far,
    structured_lines,
    structured_targets,
)
from qfserve.bench.workload import (
    SPEC_TOTAL_CHARS,
    Prompt,
    StructuredWorkload,
    default_dir,
    load_structured,
)

FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": True}}

# ---- the workload


def _objects(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if schema.get("type") == "object":
        yield schema
    for child in schema.get("properties", {}).values():
        yield from _objects(child)
    if isinstance(schema.get("items"), dict):
        yield from _objects(schema["items"])


def test_shipped_structured_workload_is_a_strict_schema_and_fitting_prompts() -> None:
    workload = load_structured(default_dir() / "structured.json")
    jsonschema.Draft202012Validator.check_schema(dict(workload.schema))
    # OpenAI's strict mode: every object closed, every property required.
    for node in _objects(dict(workload.schema)):
        assert node["additionalProperties"] is False
        assert set(node["required"]) == set(node["properties"])
    assert any(p.get("type") == "array" for p in workload.schema["properties"].values())
    assert len(workload.prompts) >= 8 and {p.lang for p in workload.prompts} == {"en", "zh"}
    assert all(0 < len(p.text) <= SPEC_TOTAL_CHARS for p in workload.prompts)
    assert len({p.id for p in workload.prompts}) == len(workload.prompts)
    assert workload.response_format() == {
        "type": "json_schema",
        "json_schema": {"name": "trip_plan", "schema": workload.schema, "strict": True},
    }


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"prompts": [{"id": "a", "prompt": "b"}]}, "JSON Schema of an object"),
        ({"schema": {"type": "array"}, "prompts": [{"id": "a", "prompt": "b"}]}, "of an object"),
        ({"schema": {"type": "object"}, "prompts": []}, "no prompts"),
    ],
)
def test_a_structured_workload_needs_an_object_schema_and_prompts(
    tmp_path: Path, data: dict[str, Any], error: str
) -> None:
    path = tmp_path / "structured.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=error):
        load_structured(path)


# ---- requests


def test_response_format_goes_to_openai_shaped_routes_only() -> None:
    messages = [{"role": "user", "content": "hi"}]
    for dialect in (Dialect.OPENAI, Dialect.QIANFAN_V2):
        target = Target("t", dialect, "http://x")
        assert request_body(target, messages, Sampling(), FORMAT)["response_format"] == FORMAT
        assert "response_format" not in request_body(target, messages, Sampling())
    with pytest.raises(ValueError, match="OpenAI-shaped"):
        request_body(Target("q", Dialect.QIANFAN, "http://x"), messages, Sampling(), FORMAT)


def test_qfserve_is_asked_through_its_openai_route_with_its_access_token() -> None:
    qfserve = Target("qfserve", Dialect.QIANFAN, "http://x:1/", "ep", access_token="tok", pid=7)
    route = openai_route(qfserve)
    assert route.chat_url() == "http://x:1/v1/chat/completions"
    assert route.headers() == {"Authorization": "Bearer tok"} and route.params() == {}
    assert (route.name, route.endpoint, route.pid) == ("qfserve", "ep", 7)
    assert openai_route(route) == route


# ---- the plan of a run


def test_each_level_asks_free_then_with_the_schema_then_both_side_by_side() -> None:
    runs = plan(8, 16, 1, FORMAT, mixed=True)
    assert [[(lane.name, lane.streams, lane.requests) for lane in run] for run in runs] == [
        [("free", 8, 16)],
        [("schema", 8, 16)],
        [("mixed_free", 4, 8), ("mixed_schema", 4, 8)],
    ]
    formats = {lane.name: lane.response_format for run in runs for lane in run}
    assert formats == {
        "free": None,
        "schema": FORMAT,
        "mixed_free": None,
        "mixed_schema": FORMAT,
    }
    # The mixed run asks the prompts the others ask: the schema half takes up where the free
    # half stops.
    assert [lane.first for run in runs for lane in run] == [0, 0, 0, 8]
    assert [len(run) for run in plan(1, 16, 1, FORMAT, mixed=False)] == [1, 1]
    # A level of 1 cannot be split in two.
    assert len(plan(1, 16, 1, FORMAT, mixed=True)) == 2


def test_every_other_round_runs_the_cases_in_reverse() -> None:
    first, second = plan(8, 16, 1, FORMAT, mixed=True), plan(8, 16, 2, FORMAT, mixed=True)
    assert [run[0].name for run in second] == [run[0].name for run in reversed(first)]


def test_no_two_lanes_share_a_tag() -> None:
    tags = [
        lane.tag
        for round_number in (1, 2)
        for level in (1, 8)
        for run in plan(level, 16, round_number, FORMAT, mixed=level == 8)
        for lane in run
    ]
    assert len(tags) == len(set(tags)) == 2 * (2 + 4)


def test_an_odd_level_splits_with_the_free_half_the_larger() -> None:
    mixed = plan(3, 6, 1, FORMAT, mixed=True)[-1]
    assert [(lane.streams, lane.requests) for lane in mixed] == [(2, 4), (1, 2)]
    tiny = plan(2, 1, 1, FORMAT, mixed=True)[-1]
    assert [lane.requests for lane in tiny] == [1, 1]


@pytest.mark.parametrize(
    ("levels", "mixed"),
    [([1, 8], 8), ([1, 8, 16], 8), ([1, 2], 2), ([4, 1], 4), ([1], None)],
)
def test_the_mixed_run_is_at_8_or_else_the_highest_level(
    levels: list[int], mixed: int | None
) -> None:
    assert mixed_level(levels) == mixed


# ---- figures


@pytest.mark.parametrize(
    ("text", "finish", "expected"),
    [
        ('{"a": [1, 2]}', "stop", True),
        (' \n{"a": 1}\n', "stop", True),
        ('{"a": ', "stop", False),
        ("[1, 2]", "stop", False),
        ('{"destination": "Kyo', "length", True),
        ("Sure! Here is", "length", False),
        ("```json\n{", "length", False),
        ("", None, False),
    ],
)
def test_json_object_so_far(text: str, finish: str | None, expected: bool) -> None:
    assert json_object_so_far(text, finish) is expected


def _answer(tokens: int, e2e: float, text: str = "", finish: str = "length") -> RequestRecord:
    return RequestRecord(
        e2e_s=e2e,
        first_event_s=0.1,
        token_times=[0.1, 0.2],
        output_tokens=tokens,
        counted_by="usage",
        finish=finish,
        text=text,
    )


def test_tokens_per_stream_are_answered_tokens_over_their_requests_time() -> None:
    records = [_answer(100, 2.0), _answer(50, 3.0), RequestRecord(e2e_s=9.0, error="HTTP 500")]
    assert per_stream_tokens_per_s(records) == pytest.approx(150 / 5.0)
    assert per_stream_tokens_per_s([]) is None


def _decoding(start: float, first: float, last: float, tokens: int) -> RequestRecord:
    """A stream from `start`, its first token at `first` and its last at `last` (run times),
    one event every 0.1 s."""
    times = [round(first + 0.1 * k, 6) for k in range(round((last - first) / 0.1) + 1)]
    return RequestRecord(
        start_s=start, e2e_s=last - start + 0.01, token_times=[t - start for t in times],
        output_tokens=tokens, finish="length",
    )  # fmt: skip


def test_the_full_batch_is_while_every_stream_of_the_run_decodes() -> None:
    # Two streams: the free one decodes 1.0-3.0 s, the other 1.5-2.5 s; all of the run's 2
    # decode from 1.5 to 2.5 s. An answer that errored, or of one event, counts for nothing.
    free = RunResult("qfserve", 2, [_decoding(0.0, 1.0, 3.0, 42), RequestRecord(error="x")])
    other = RunResult("qfserve", 2, [_decoding(0.5, 1.5, 2.5, 11)])
    shares = full_batch({"free": free, "other": other}, 2)
    # The free stream: events at 1.6 ... 2.5 (10 of its 21), 2 tokens each.
    assert shares["free"].stream_s == pytest.approx(1.0)
    assert shares["free"].tokens == pytest.approx(10 * 2)
    # The other: events at 1.6 ... 2.5, 1 token each.
    assert shares["other"].tokens == pytest.approx(10) and shares["other"].stream_s == 1.0
    assert shares["other"].tokens_per_s == pytest.approx(10.0)
    # Never all 3 at once: nothing measured.
    assert full_batch({"free": free, "other": other}, 3)["free"].tokens_per_s is None


def test_full_batch_shares_add_up_over_rounds() -> None:
    share = FullBatch(10, 2.0)
    share.add(FullBatch(30, 2.0))
    assert share.tokens_per_s == pytest.approx(10.0)


def test_a_case_summary() -> None:
    run = RunResult(
        "qfserve",
        8,
        [
            _answer(100, 2.0, '{"days": 3'),
            _answer(60, 2.0, '{"days": 3}', "stop"),
            RequestRecord(error="HTTP 400: bad schema"),
        ],
        wall_s=4.0,
        peak_rss_bytes=2**30,
    )
    summary = case_summary(SCHEMA, 4, run)
    assert (summary["case"], summary["streams"], summary["concurrency"]) == (SCHEMA, 4, 8)
    assert summary["output_tokens_per_s"] == pytest.approx(160 / 4.0)
    assert summary["per_stream_tokens_per_s"] == pytest.approx(160 / 4.0)
    assert summary["tokens_per_answer"] == pytest.approx(80.0)
    assert summary["json_answers"] == 2 and summary["errors"] == 1
    assert summary["peak_rss_bytes"] == 2**30


def _case(
    case: str,
    level: int,
    streams: int,
    tokens: int,
    wall: float,
    e2e: float,
    full: FullBatch | None = None,
) -> dict[str, Any]:
    """A case whose answers total `tokens` over `wall` seconds, each answer taking `e2e`; the
    batch full all along unless said otherwise."""
    records = [_answer(tokens // 4, e2e, "{") for _ in range(4)]
    full = full or FullBatch(tokens, 4 * e2e)
    return case_summary(case, streams, RunResult("qfserve", level, records, wall_s=wall), full)


def _structured() -> dict[str, Any]:
    return {
        "peer": "qfserve",
        "route": "/v1/chat/completions",
        "schema_name": "trip_plan",
        "prompts": 8,
        "available": True,
        "cases": [
            _case("free", 1, 1, 900, 10.0, 1.0),
            _case("schema", 1, 1, 800, 10.0, 1.0),
            _case("free", 8, 8, 1600, 10.0, 2.0),
            _case("schema", 8, 8, 1200, 10.0, 2.0),
            _case(MIXED_FREE, 8, 4, 800, 10.0, 2.1),
            _case(MIXED_SCHEMA, 8, 4, 600, 10.0, 2.5),
        ],
    }


def test_structured_targets() -> None:
    found = {t["id"]: t for t in structured_targets(_structured())}
    assert list(found) == ["s1", "s2", "s3"]
    assert found["s1"]["value"] == pytest.approx(80 / 90) and found["s1"]["met"] is True
    assert found["s2"]["value"] == pytest.approx(120 / 160) and found["s2"]["met"] is False
    assert "concurrency 8" in found["s2"]["what"] and found["s2"]["goal"] == ">= 0.85"
    assert found["s2"]["detail"] == "120.0 vs 160.0 tokens/s"
    # Per stream: 800 tokens over 4 x 2.1 s beside the schema, 1600 over 4 x 2.0 s alone.
    assert found["s3"]["value"] == pytest.approx((800 / 8.4) / (1600 / 8.0))
    assert found["s3"]["goal"] == ">= 0.95" and found["s3"]["met"] is False
    assert found["s3"]["detail"] == "95.2 vs 200.0 tokens/s per stream, every stream decoding"


def test_s3_compares_streams_while_every_stream_decodes() -> None:
    structured = _structured()
    # Alone, the free streams went faster at the end of their runs, the batch having shrunk as
    # early answers ended; while all 8 decoded, they kept the pace of those beside the schema.
    structured["cases"][2] = _case("free", 8, 8, 1600, 10.0, 1.6, FullBatch(200, 2.0))
    structured["cases"][4] = _case(MIXED_FREE, 8, 4, 800, 10.0, 2.0, FullBatch(100, 1.0))
    found = {t["id"]: t for t in structured_targets(structured)}
    assert found["s3"]["value"] == pytest.approx(1.0) and found["s3"]["met"] is True


def test_free_streams_that_keep_their_pace_beside_the_schema_meet_s3() -> None:
    structured = _structured()
    # 800 tokens over 4 x 2.0 / 1.92 s: 192 tokens/s per stream, against 200 alone.
    structured["cases"][4] = _case(MIXED_FREE, 8, 4, 800, 10.0, 2.0 / 1.92)
    found = {t["id"]: t for t in structured_targets(structured)}
    assert found["s3"]["value"] == pytest.approx(0.96) and found["s3"]["met"] is True


def test_structured_targets_not_available() -> None:
    note = "not available: HTTP 400: response_format is not supported"
    refused = {"peer": "qfserve", "available": False, "note": note, "levels": [1, 4]}
    found = structured_targets({**refused, "mixed_level": 4})
    assert [(t["value"], t["met"], t["detail"]) for t in found] == [(None, None, note)] * 3
    # The levels asked, though nothing was measured.
    assert "concurrency 4" in found[1]["what"] and "concurrency 4" in found[2]["what"]


def _results(structured: dict[str, Any] | None) -> dict[str, Any]:
    results: dict[str, Any] = {
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
        "load": [],
    }
    if structured is not None:
        results["structured"] = structured
    results["targets"] = targets(results)
    return results


def test_the_structured_rows_are_targets_only_when_the_scenario_ran() -> None:
    assert not {"s1", "s2", "s3"} & {t["id"] for t in _results(None)["targets"]}
    assert [t["id"] for t in _results(_structured())["targets"]][-3:] == ["s1", "s2", "s3"]


def test_the_structured_section_of_the_report() -> None:
    page = markdown(_results(_structured()))
    assert "## Structured output: a JSON schema vs free text" in page
    assert "qfserve's `/v1/chat/completions`: 8 prompts asking for a `trip_plan` object" in page
    assert "| free | 1 | 1 | 4 | 0 | 90.0 | 225.0 | 225.0 | n/a | 225.0 | 4 / 4 |" in page
    assert "| JSON schema | 8 | 8 | 4 | 0 | 120.0 | 150.0 | 150.0 | 0.75 | 300.0 | 4 / 4 |" in page
    assert "| mixed: the free half | 8 | 4 | 4 | 0 | 80.0 | 95.2 | 95.2 | 0.48 |" in page
    assert "| mixed: the schema half | 8 | 4 | 4 | 0 | 60.0 | 60.0 | 60.0 | 0.30 |" in page
    assert "| s3 | concurrency 8, half the streams with a schema" in page
    assert page.index("## Structured output") < page.index("## How to read this")


def test_the_report_says_why_structured_output_was_not_measured() -> None:
    structured = {"peer": "qfserve", "available": False, "note": "not available: HTTP 400: no"}
    assert structured_lines(structured)[-1] == "qfserve: not available: HTTP 400: no"
    assert structured_lines(None) == []


# ---- runs against a mock server


# Between an answer's two halves: long enough that every stream of a run started together is
# decoding at once for a while, so the runs have a full batch to measure.
HALVES_APART_S = 0.05


async def _stream(text: str, finish: str, tokens: int) -> AsyncIterator[bytes]:
    """The answer in two halves, a pause between them."""
    middle = len(text) // 2
    chunks = [
        {"choices": [{"delta": {"role": "assistant"}, "finish_reason": None}]},
        {"choices": [{"delta": {"content": text[:middle]}, "finish_reason": None}]},
        None,
        {"choices": [{"delta": {"content": text[middle:]}, "finish_reason": None}]},
        {"choices": [{"delta": {}, "finish_reason": finish}]},
        {"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": tokens}},
    ]
    for chunk in chunks:
        if chunk is None:
            await asyncio.sleep(HALVES_APART_S)
        else:
            yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"


class _MockServer:
    """An OpenAI route that answers JSON when asked a response_format (or refuses it), holding
    the first answers until `together` requests are in flight at once, and counting them per
    kind (constrained or not)."""

    def __init__(self, *, together: int = 1, refuse_formats: bool = False) -> None:
        self.together = together
        self.refuse_formats = refuse_formats
        self.bodies: list[dict[str, Any]] = []
        self.in_flight: Counter[bool] = Counter()
        self.most_in_flight: Counter[bool] = Counter()
        self._enough = asyncio.Event()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        constrained = "response_format" in body
        if constrained and self.refuse_formats:
            return httpx.Response(400, json={"error": {"message": "response_format unsupported"}})
        self.in_flight[constrained] += 1
        self.most_in_flight[constrained] = max(
            self.most_in_flight[constrained], self.in_flight[constrained]
        )
        if sum(self.in_flight.values()) >= self.together:
            self._enough.set()
        # Once that many were in flight, the event stays set and nothing waits any more; a run
        # that never has them all in flight fails here.
        await asyncio.wait_for(self._enough.wait(), 10.0)
        self.in_flight[constrained] -= 1
        text, finish = ('{"days": 3}', "stop") if constrained else ("Day one: the temple", "length")
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=_stream(text, finish, 3 if constrained else 5),
        )


def _serve(monkeypatch: pytest.MonkeyPatch, mock: _MockServer) -> _MockServer:
    def client_for(concurrency: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(mock.handle))

    monkeypatch.setattr(runner, "client_for", client_for)
    return mock


PROMPTS = [Prompt("a", "en", "Plan a trip."), Prompt("b", "en", "Plan another.")]
TARGET = Target("qfserve", Dialect.OPENAI, "http://x/v1", api_key="k")


def test_lanes_run_side_by_side_each_at_its_own_concurrency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every answer waits until all 8 streams are in flight: each lane then holds its own share.
    server = _serve(monkeypatch, _MockServer(together=8))
    lanes = [Lane("free", 5, 10, "f."), Lane("schema", 3, 6, "s.", FORMAT, first=1)]
    runs = asyncio.run(run_lanes(TARGET, PROMPTS, lanes, sampling=Sampling()))
    assert set(runs) == {"free", "schema"}
    free, schema = runs["free"], runs["schema"]
    assert len(free.records) == 10 and len(schema.records) == 6
    assert free.concurrency == schema.concurrency == 8 and free.wall_s == schema.wall_s
    assert all(r.ok and r.counted_by == "usage" for r in [*free.records, *schema.records])
    assert {r.output_tokens for r in free.records} == {5}
    assert {r.text for r in schema.records} == {'{"days": 3}'}
    assert server.most_in_flight == Counter({False: 5, True: 3})
    asked = sorted(b["messages"][0]["content"] for b in server.bodies if "response_format" in b)
    # The schema lane's requests from the second prompt on.
    assert asked == sorted(f"[s.{i}] {PROMPTS[i % 2].text}" for i in range(1, 7))
    assert all(b["response_format"] == FORMAT for b in server.bodies if "[s." in str(b))
    assert not any("response_format" in b for b in server.bodies if "[f." in str(b))


def _workload() -> StructuredWorkload:
    return StructuredWorkload("x", {"type": "object"}, tuple(PROMPTS))


def test_a_structured_run_measures_every_case_at_every_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = _serve(monkeypatch, _MockServer())
    qfserve = Target("qfserve", Dialect.QIANFAN, "http://x", access_token="tok")
    result = asyncio.run(
        run_structured(
            qfserve, _workload(), levels=[1, 8], requests_for=lambda level: 2 * level,
            sampling=Sampling(max_tokens=16), rounds=2,
        )
    )  # fmt: skip
    assert result["available"] and result["route"] == "/v1/chat/completions"
    assert (result["levels"], result["mixed_level"]) == ([1, 8], 8)
    cases = [(c["case"], c["concurrency"], c["streams"], c["requests"]) for c in result["cases"]]
    assert cases == [
        ("free", 1, 1, 4),
        ("schema", 1, 1, 4),
        ("free", 8, 8, 32),
        ("schema", 8, 8, 32),
        ("mixed_free", 8, 4, 16),
        ("mixed_schema", 8, 4, 16),
    ]
    for case in result["cases"]:
        assert case["errors"] == 0 and case["output_tokens_per_s"] > 0
        constrained = case["case"] in ("schema", "mixed_schema")
        assert case["json_answers"] == (case["requests"] if constrained else 0)
    # Two warm-ups (free, then with the schema), then the runs; all through the OpenAI route.
    assert len(server.bodies) == 2 + 2 * (2 + 2 + 16 + 16 + 16)
    assert "response_format" not in server.bodies[0] and "response_format" in server.bodies[1]
    assert {b["max_tokens"] for b in server.bodies[2:]} == {16}
    found = {t["id"]: t for t in structured_targets(result)}
    assert all(found[key]["value"] is not None for key in ("s1", "s2", "s3"))


def test_a_server_that_refuses_the_schema_is_not_measured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mock = _serve(monkeypatch, _MockServer(refuse_formats=True))
    qfserve = Target("qfserve", Dialect.QIANFAN, "http://x", access_token="tok")
    result = asyncio.run(
        run_structured(
            qfserve, _workload(), levels=[1, 8], requests_for=lambda level: 2,
            sampling=Sampling(), rounds=1,
        )
    )  # fmt: skip
    assert not result["available"] and "cases" not in result
    assert result["note"].startswith("not available: HTTP 400:")
    assert "response_format unsupported" in result["note"]
    assert len(mock.bodies) == 2
