"""The many-conversations scenario's pure parts: its conversations, their round-robin order, the
history kept within the limit, the kinds of turn, the play against a fake server, the goals and
the report."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from qfserve.bench import cli as bench_cli
from qfserve.bench import peers, sse
from qfserve.bench.cli import _scenarios
from qfserve.bench.client import Dialect, Sampling, Target
from qfserve.bench.many_conversations import (
    AFTER_RESTART,
    FRESH,
    RETURNING,
    Conversations,
    chars,
    fit_history,
    kept_answer,
    kind_of,
    many,
    schedule,
)
from qfserve.bench.many_conversations_report import (
    cache_samples,
    goals,
    markdown,
    metrics_cached_share,
    summaries,
    write,
)
from qfserve.bench.many_conversations_run import no_tier_conversations, restart_turn, variants
from qfserve.bench.workload import (
    ANSWER_TOKENS,
    DISK_TIER,
    LLAMA_SERVER_VARIANT,
    NO_TIER,
    RAM_TIER,
    SPEC_TOTAL_CHARS,
    Conversation,
    default_dir,
    load_conversations,
)
from qfserve.cli import cli

# ---- the conversations and their order


def test_many_cycles_through_the_workload_with_a_distinct_opening_each() -> None:
    base = load_conversations(default_dir() / "conversations.json")
    played = many(base, 64, 8)
    assert len(played) == 64 and len({c.id for c in played}) == 64
    assert len({c.turns[0] for c in played}) == 64
    assert {c.lang for c in played} == {"en", "zh"}
    assert all(len(c.turns) == 8 for c in played)
    # Past the opening, a conversation asks what its source asks.
    assert played[len(base)].turns[1:] == base[0].turns[1:]


def test_many_takes_only_the_turns_asked_and_refuses_too_many() -> None:
    base = [Conversation("a", "en", ("q1", "q2", "q3"), 1900)]
    assert [len(c.turns) for c in many(base, 3, 2)] == [2, 2, 2]
    with pytest.raises(ValueError, match="4 turns"):
        many(base, 3, 4)


def test_schedule_is_round_robin_so_every_other_conversation_goes_between_two_turns() -> None:
    order = schedule(4, 1, 3)
    assert order[:5] == [(0, 1), (1, 1), (2, 1), (3, 1), (0, 2)]
    assert len(order) == 12
    for conversation in range(4):
        positions = [i for i, (c, _) in enumerate(order) if c == conversation]
        assert [b - a for a, b in itertools.pairwise(positions)] == [4, 4]
    assert schedule(3, 2, 3)[0] == (0, 2)


def test_a_turn_is_fresh_returning_or_the_first_after_a_restart() -> None:
    assert kind_of(1, None) == FRESH
    assert kind_of(2, None) == RETURNING
    assert kind_of(5, 5) == AFTER_RESTART
    assert kind_of(6, 5) == RETURNING
    assert kind_of(1, 1) == FRESH


def test_the_history_drops_its_oldest_rounds_past_the_limit() -> None:
    messages = []
    for n in range(6):
        messages += [
            {"role": "user", "content": f"q{n}" * 100},
            {"role": "assistant", "content": "a" * 300},
        ]
    messages.append({"role": "user", "content": "last" * 100})
    assert chars(messages) > SPEC_TOTAL_CHARS
    kept = fit_history(messages)
    assert chars(kept) <= SPEC_TOTAL_CHARS
    assert kept[0]["role"] == "user" and kept[-1]["content"] == "last" * 100
    assert kept == messages[len(messages) - len(kept) :]
    # Within the limit nothing is dropped; an oversized question alone is still sent.
    assert fit_history(messages[-3:]) == messages[-3:]
    assert fit_history([{"role": "user", "content": "x" * 3000}]) == [
        {"role": "user", "content": "x" * 3000}
    ]


def test_an_answer_is_kept_up_to_its_budget_and_never_empty() -> None:
    assert kept_answer("Hello there.", 5) == "Hello"
    assert kept_answer("Hello", 50) == "Hello"
    assert kept_answer("", 50) == "OK."


# ---- the play, against a fake OpenAI-compatible server


def _answer_stream(text: str, prompt_tokens: int, cached: int) -> bytes:
    words = re.findall(r"\S+\s*", text)
    chunks: list[dict[str, Any]] = [{"choices": [{"delta": {"content": w}}]} for w in words]
    chunks.append({
        "choices": [{"delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(chunks),
                  "prompt_tokens_details": {"cached_tokens": cached}},
    })  # fmt: skip
    lines = [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
    return "".join(lines).encode()


class _FakeServer:
    """Answers every chat with "Answer <n> of <conversation>." and remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[list[dict[str, str]]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        messages = json.loads(request.content)["messages"]
        self.asked.append(messages)
        opening = re.match(r"\[(\d+)\]", messages[0]["content"])
        number = opening.group(1) if opening else "?"
        text = f"Answer {len(messages) // 2 + 1} of {number}."
        body = _answer_stream(text, prompt_tokens=10 * len(messages), cached=5 * len(messages))
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler))


TARGET = Target("fake", Dialect.OPENAI, "http://fake/v1", "llama_2_7b")


def _opening(messages: list[dict[str, str]]) -> int:
    found = re.match(r"\[(\d+)\]", messages[0]["content"])
    assert found is not None
    return int(found.group(1))


def test_play_asks_round_robin_and_resends_each_history_with_its_answers() -> None:
    base = load_conversations(default_dir() / "conversations.json")
    state = Conversations(many(base, 4, 3))
    server = _FakeServer()

    async def run() -> list[dict[str, Any]]:
        async with server.client() as client:
            return await state.play(
                TARGET, first_turn=1, last_turn=3, parallel=2, sampling=Sampling(max_tokens=8),
                client=client,
            )  # fmt: skip

    records = asyncio.run(run())
    asked = [(_opening(m), (len(m) + 1) // 2) for m in server.asked]
    assert asked == [(c + 1, t) for c, t in schedule(4, 1, 3)]
    # Turn 3 of conversation 2 resends both earlier questions and the server's own answers.
    third = next(m for m in server.asked if _opening(m) == 2 and len(m) == 5)
    assert [m["role"] for m in third] == ["user", "assistant", "user", "assistant", "user"]
    assert third[1]["content"] == "Answer 1 of 2." and third[3]["content"] == "Answer 2 of 2."
    assert [r["kind"] for r in records].count(FRESH) == 4
    assert [r["kind"] for r in records].count(RETURNING) == 8
    assert all(r["error"] is None and r["ttft_s"] is not None for r in records)
    assert {r["cached_tokens"] for r in records if r["turn"] == 2} == {15}


def test_play_after_a_restart_marks_the_first_turn_and_keeps_the_histories() -> None:
    base = load_conversations(default_dir() / "conversations.json")
    state = Conversations(many(base, 3, 3))
    server = _FakeServer()

    async def run() -> list[dict[str, Any]]:
        async with server.client() as client:
            first = await state.play(
                TARGET, first_turn=1, last_turn=1, parallel=2, sampling=Sampling(), client=client
            )
            return first + await state.play(
                TARGET, first_turn=2, last_turn=3, parallel=2, sampling=Sampling(),
                first_after_restart=2, client=client,
            )  # fmt: skip

    records = asyncio.run(run())
    kinds = {(r["turn"], r["kind"]) for r in records}
    assert kinds == {(1, FRESH), (2, AFTER_RESTART), (3, RETURNING)}
    assert max(len(m) for m in server.asked) == 5


def test_play_keeps_every_request_within_the_conversations_limit() -> None:
    question = "q" * 120
    long = Conversation("long", "en", (f"[1] {question}", question, question), 300)
    others = [Conversation(f"c{n}", "en", (f"[{n}] hi", "more", "more"), 300) for n in (2, 3)]
    state = Conversations([long, *others])
    server = _FakeServer()

    async def run() -> list[dict[str, Any]]:
        async with server.client() as client:
            return await state.play(
                TARGET, first_turn=1, last_turn=3, parallel=2, sampling=Sampling(), client=client
            )

    records = asyncio.run(run())
    assert all(chars(m) <= 300 for m in server.asked)
    last = next(r for r in records if r["conversation"] == "long" and r["turn"] == 3)
    # The oldest round went; the answers had no room left and were kept as "OK.".
    assert last["messages"] == 3 and last["history_chars"] == 2 * 120 + len("OK.")


def test_a_failed_turn_ends_its_conversation_only() -> None:
    state = Conversations(
        [Conversation(f"c{n}", "en", (f"[{n}] hi", "more", "more"), 1900) for n in (1, 2, 3)]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        messages = json.loads(request.content)["messages"]
        if _opening(messages) == 2:
            return httpx.Response(500, json={"error": {"message": "boom"}})
        body = _answer_stream("Fine.", 10, 0)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    async def run() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await state.play(
                TARGET, first_turn=1, last_turn=3, parallel=2, sampling=Sampling(), client=client
            )

    records = asyncio.run(run())
    assert [r["turn"] for r in records if r["conversation"] == "c2"] == [1]
    assert len([r for r in records if r["conversation"] != "c2"]) == 6


# ---- the variants


def test_variants_restart_half_way_and_the_untiered_one_plays_fewer_conversations() -> None:
    found = {v.key: v for v in variants(8, Path("/tmp/tier"), True, 64, 8)}
    assert list(found) == [RAM_TIER, NO_TIER, DISK_TIER, LLAMA_SERVER_VARIANT]
    assert restart_turn(8) == 4 and restart_turn(2) == 1
    assert found[RAM_TIER].restart_after is None and found[RAM_TIER].conversations is None
    assert found[NO_TIER].settings == {"QFSERVE_ENGINE__CACHE_RAM_MB": "0"}
    assert (found[NO_TIER].restart_after, found[NO_TIER].conversations) == (4, 12)
    assert found[DISK_TIER].settings == {"QFSERVE_ENGINE__CACHE_DIR": "/tmp/tier"}
    assert (found[DISK_TIER].restart_after, found[DISK_TIER].last_turn) == (4, 5)
    assert LLAMA_SERVER_VARIANT not in {v.key for v in variants(8, Path("/t"), False, 64, 8)}
    assert no_tier_conversations(5, 2) == 3 and no_tier_conversations(2, 1) == 2


# ---- goals and report


def _turn(kind: str, turn: int, ttft: float, error: str | None = None) -> dict[str, Any]:
    return {"conversation": "c", "lang": "en", "turn": turn, "kind": kind, "history_chars": 100,
            "messages": 2 * turn - 1, "prompt_tokens": 100, "cached_tokens": None,
            "output_tokens": 8, "ttft_s": ttft, "e2e_s": ttft + 1, "error": error}  # fmt: skip


def _variant(key: str, fresh: float, back: float | None, after: float | None) -> dict[str, Any]:
    turns = [_turn(FRESH, 1, fresh), _turn(FRESH, 1, fresh)]
    if back is not None:
        turns += [_turn(RETURNING, 3, back), _turn(RETURNING, 4, back)]
    if after is not None:
        turns += [_turn(AFTER_RESTART, 2, after)]
    return {"variant": key, "label": key, "server": "qfserve", "settings": {},
            "restart_after": None, "last_turn": 4, "conversations": 2, "wall_s": 12.0,
            "peak_rss_bytes": 300 * 2**20, "turns": turns}  # fmt: skip


def _results(*played: dict[str, Any]) -> dict[str, Any]:
    results = {
        "machine": {"date": "2026-11-27T17:50:00+00:00", "cpu": "Xeon", "logical_cores": 2,
                    "ram_bytes": 2**34, "load_average_at_start": [0.1, 0.1, 0.1],
                    "python": "3.11", "llama_cpp_python": "0.3.36", "qfserve": "0.1.0",
                    "git_commit": "abc"},
        "settings": {"model": "m.gguf", "threads": 2, "n_ctx": 4096, "parallel": 8,
                     "conversations": 64, "turns": 8, "restart_after": 4, "answer_tokens": 24,
                     "temperature": 0.1, "seed": 42, "languages": ["en", "zh"],
                     "qfserve_engine": {"cache_ram_mb": 512}},
        "variants": list(played),
        "wall_s": 600.0,
    }  # fmt: skip
    results["goals"] = goals(results)
    return results


def test_goals_met_and_not_met() -> None:
    results = _results(
        _variant(RAM_TIER, 0.2, 0.25, None),
        _variant(NO_TIER, 0.2, 2.0, 2.4),
        _variant(DISK_TIER, 0.2, None, 0.5),
        _variant(LLAMA_SERVER_VARIANT, 0.2, 0.3, None),
    )
    by_id = {g["id"]: g for g in results["goals"]}
    assert by_id["m1"]["value"] == pytest.approx(1.25) and by_id["m1"]["met"] is True
    assert by_id["m2"]["value"] == pytest.approx(0.25 / 0.3) and by_id["m2"]["met"] is True
    assert by_id["m3"]["value"] == pytest.approx(2.5) and by_id["m3"]["met"] is False
    assert "without the tier 12.00x" in by_id["m3"]["detail"]

    slow = _results(
        _variant(RAM_TIER, 0.2, 0.4, None), _variant(LLAMA_SERVER_VARIANT, 0.2, 0.3, None)
    )
    by_id = {g["id"]: g for g in slow["goals"]}
    assert by_id["m1"]["met"] is False and by_id["m2"]["met"] is False
    assert by_id["m3"]["met"] is None


def test_goals_are_not_measured_without_their_variants() -> None:
    results = _results(_variant(RAM_TIER, 0.2, 0.25, None))
    by_id = {g["id"]: g for g in results["goals"]}
    assert by_id["m1"]["met"] is True
    assert by_id["m2"]["met"] is None and "llama-server not measured" in by_id["m2"]["detail"]
    assert by_id["m3"]["value"] is None
    assert by_id["m3"]["detail"].endswith("without the tier not measured")


def test_summaries_leave_failed_turns_out_of_the_times() -> None:
    played = _variant(RAM_TIER, 0.2, 0.3, None)
    played["turns"].append(_turn(RETURNING, 5, 99.0, error="HTTP 500"))
    played["turns"][0]["cached_tokens"] = 40
    s = summaries(played)
    assert s[RETURNING]["turns"] == 3 and s[RETURNING]["errors"] == 1
    assert s[RETURNING]["ttft_s"]["max"] == pytest.approx(0.3)
    assert s[FRESH]["cached_share"] == pytest.approx(0.4)
    assert s[AFTER_RESTART]["ttft_s"]["n"] == 0


def test_the_report_shows_machine_goals_and_every_variant(tmp_path: Path) -> None:
    results = _results(
        _variant(RAM_TIER, 0.2, 0.25, None),
        _variant(DISK_TIER, 0.2, None, 0.3),
    )
    page = write(results, tmp_path / "CONVERSATIONS.md", "qfserve bench --scenarios x")
    assert page == markdown(results, "qfserve bench --scenarios x")
    assert page.startswith("# qfserve bench: many conversations")
    assert "2026-11-27T17:50:00+00:00 on Xeon" in page and "512 MB" in page
    assert (
        "| m1 | RAM tier: returning turns' TTFT p50 vs fresh turns' | 1.25 | <= 1.5 | yes |" in page
    )
    assert "| m3 |" in page and "| 1.50 | <= 2.0 | yes |" in page
    assert "| ram | 2 x 4 | 200 / 200 | 250 / 250 | 1.25 | - | - |" in page
    assert json.loads((tmp_path / "CONVERSATIONS.json").read_text()) == results


# ---- the pieces it adds to the bench


def test_cached_tokens_are_read_from_openai_usage_or_llama_cpp_timings() -> None:
    openai = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1,
                                       "prompt_tokens_details": {"cached_tokens": 7}}}  # fmt: skip
    assert sse.openai_chunk(json.dumps(openai)).cached_tokens == 7
    llama = {"choices": [], "timings": {"cache_n": 5}, "usage": {"prompt_tokens": 9}}
    assert sse.openai_chunk(json.dumps(llama)).cached_tokens == 5
    assert sse.openai_chunk(json.dumps({"choices": []})).cached_tokens is None


def test_many_conversations_runs_alone() -> None:
    assert _scenarios("many-conversations") == ("many-conversations",)
    with pytest.raises(typer.BadParameter, match="alone"):
        _scenarios("load,many-conversations")
    with pytest.raises(typer.BadParameter, match="many-conversations"):
        _scenarios("nonsense")


def test_no_cached_llama_server_without_its_script(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "LLAMA_SERVER_SCRIPT", Path("/nonexistent/llama_server.sh"))
    assert peers.find_llama_server() is None


def test_qfserve_cache_metrics_are_kept_and_give_the_cached_share() -> None:
    text = """# HELP qfserve_prompt_tokens_total Prompt tokens.
# TYPE qfserve_prompt_tokens_total counter
qfserve_prompt_tokens_total{endpoint="llama_2_7b"} 1000.0
qfserve_prompt_tokens_created{endpoint="llama_2_7b"} 1.7e9
qfserve_prompt_tokens_cached_total{endpoint="llama_2_7b"} 600.0
qfserve_prefix_cache_hits_total{tier="ram"} 12.0
qfserve_generation_tokens_total{endpoint="llama_2_7b"} 50.0
"""
    samples = cache_samples(text)
    assert samples == {
        'qfserve_prompt_tokens_total{endpoint="llama_2_7b"}': 1000.0,
        'qfserve_prompt_tokens_cached_total{endpoint="llama_2_7b"}': 600.0,
        'qfserve_prefix_cache_hits_total{tier="ram"}': 12.0,
    }
    played = _variant(RAM_TIER, 0.2, 0.25, None)
    assert metrics_cached_share(played) is None
    # A restart starts the counters again: the phases add up.
    played["metrics"] = [samples, {"qfserve_prompt_tokens_total": 1000.0}]
    assert metrics_cached_share(played) == pytest.approx(0.3)
    assert "| 30% |" in markdown(_results(played))


@pytest.mark.parametrize(("asked", "expected"), [([], ANSWER_TOKENS), (["--max-tokens", "7"], 7)])
def test_many_conversations_answers_are_short_unless_asked(
    monkeypatch: pytest.MonkeyPatch, asked: list[str], expected: int
) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(bench_cli, "_many_conversations", lambda **kwargs: seen.update(kwargs))
    args = ["bench", "--scenarios", "many-conversations", "--no-reference", *asked]
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert seen["sampling"].max_tokens == expected
