"""Chat against a real server and the real bundled model: plain, streaming, multi-turn, forgetting,
truncation, stop strings, the completions and tokenizer routes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import requests

from tests.servers import Server

pytestmark = pytest.mark.model

ID = re.compile(r"^as-[a-z0-9]{10}$")


def chat(server: Server, token: str, **body: Any) -> requests.Response:
    body.setdefault("temperature", 0.1)
    return requests.post(server.chat_url(token), json=body, timeout=120)


def stream_events(reply: requests.Response) -> list[dict[str, Any]]:
    """Parse an SSE body, checking the framing the SDK needs on the way."""
    events = []
    for line in reply.iter_lines(decode_unicode=True):
        if not line:
            continue
        assert line.startswith("data: "), f"unexpected line {line!r}"
        events.append(json.loads(line[len("data: ") :]))
    return events


def test_plain_chat(server: Server, token: str) -> None:
    reply = chat(
        server,
        token,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_output_tokens=96,
    )
    assert reply.status_code == 200
    assert reply.headers["Statement"] == "AI-generated"
    assert reply.headers["content-type"].startswith("application/json")
    assert "\n" not in reply.text
    body = reply.json()
    assert ID.match(body["id"])
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["result"].strip()
    assert body["is_truncated"] is (body["usage"]["completion_tokens"] == 96)
    assert body["need_clear_history"] is False
    assert "ban_round" not in body
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_ids_are_unique(server: Server, token: str) -> None:
    ids = {
        chat(
            server, token, messages=[{"role": "user", "content": "Hi"}], max_output_tokens=2
        ).json()["id"]
        for _ in range(5)
    }
    assert len(ids) == 5


def test_streaming_chat(server: Server, token: str) -> None:
    reply = requests.post(
        server.chat_url(token),
        json={
            "messages": [{"role": "user", "content": "Give me five tips for a road trip."}],
            "stream": True,
            "temperature": 0.1,
            "max_output_tokens": 160,
        },
        stream=True,
        timeout=120,
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/event-stream;charset=utf-8"
    assert reply.headers["cache-control"] == "no-cache"
    assert reply.headers["Statement"] == "AI-generated"
    events = stream_events(reply)
    assert len(events) > 1, "a long answer comes in several sentence segments"
    assert [e["sentence_id"] for e in events] == list(range(len(events)))
    assert len({e["id"] for e in events}) == 1 and ID.match(events[0]["id"])
    assert [e["is_end"] for e in events] == [False] * (len(events) - 1) + [True]
    prompt = events[0]["usage"]["prompt_tokens"]
    running = prompt
    for event in events:
        assert event["object"] == "chat.completion"
        assert event["need_clear_history"] is False
        assert event["usage"]["prompt_tokens"] == prompt
        running += event["usage"]["completion_tokens"]
        assert event["usage"]["total_tokens"] == running
    assert "".join(e["result"] for e in events).strip()


def test_stream_text_equals_plain_text(server: Server, token: str) -> None:
    body = {
        "messages": [{"role": "user", "content": "Name three colours."}],
        "temperature": 0.01,
        "top_k": 1,
        "seed": 7,
        "max_output_tokens": 48,
    }
    plain = chat(server, token, **body).json()
    streamed = stream_events(
        requests.post(
            server.chat_url(token), json={**body, "stream": True}, stream=True, timeout=120
        )
    )
    assert "".join(e["result"] for e in streamed) == plain["result"]
    assert streamed[-1]["usage"]["total_tokens"] == plain["usage"]["total_tokens"]


def test_multi_turn(server: Server, token: str) -> None:
    first = [{"role": "user", "content": "My name is Ada. Remember it."}]
    one = chat(server, token, messages=first, max_output_tokens=16).json()
    turns = [
        *first,
        {"role": "assistant", "content": one["result"]},
        {"role": "user", "content": "What is my name?"},
    ]
    two = chat(server, token, messages=turns, max_output_tokens=16).json()
    assert two["result"].strip()
    assert two["usage"]["prompt_tokens"] > one["usage"]["prompt_tokens"]


def test_system_prompt_is_counted(server: Server, token: str) -> None:
    question = [{"role": "user", "content": "Hello"}]
    bare = chat(server, token, messages=question, max_output_tokens=2).json()
    with_system = chat(
        server, token, messages=question, system="You are a pirate. " * 10, max_output_tokens=2
    ).json()
    assert with_system["usage"]["prompt_tokens"] > bare["usage"]["prompt_tokens"] + 20


def test_history_is_forgotten_oldest_round_first(server: Server, token: str) -> None:
    old_round = [
        {"role": "user", "content": "a" * 600},
        {"role": "assistant", "content": "b" * 600},
    ]
    recent = [
        {"role": "user", "content": "tell me about rivers " * 20},
        {"role": "assistant", "content": "rivers are long " * 25},
        {"role": "user", "content": "And lakes?"},
    ]
    assert sum(len(m["content"]) for m in old_round + recent) > 2000
    assert sum(len(m["content"]) for m in recent) <= 2000
    everything = chat(server, token, messages=old_round + recent, max_output_tokens=2).json()
    only_recent = chat(server, token, messages=recent, max_output_tokens=2).json()
    assert everything["usage"]["prompt_tokens"] == only_recent["usage"]["prompt_tokens"]


def test_output_length_cut_sets_is_truncated(server: Server, token: str) -> None:
    question = [{"role": "user", "content": "Write a long essay about the sea."}]
    body = chat(server, token, messages=question, max_output_tokens=5).json()
    assert body["is_truncated"] is True
    assert body["usage"]["completion_tokens"] == 5
    events = stream_events(
        requests.post(
            server.chat_url(token),
            json={"messages": question, "max_output_tokens": 5, "stream": True},
            stream=True,
            timeout=120,
        )
    )
    assert events[-1]["is_end"] is True and events[-1]["is_truncated"] is True


def test_stop_string_ends_the_answer_and_is_not_returned(server: Server, token: str) -> None:
    question = [{"role": "user", "content": "Tell me about the moon in two sentences."}]
    # Every answer has a space within its first tokens: the stop string always ends it.
    body = chat(server, token, messages=question, stop=[" "], max_output_tokens=64).json()
    assert " " not in body["result"]
    assert body["is_truncated"] is False
    assert body["usage"]["completion_tokens"] < 64


def test_completions_route(server: Server, token: str) -> None:
    reply = requests.post(
        f"{server.url}/rpc/2.0/ai_custom/v1/wenxinworkshop/completions/llama_2_7b",
        params={"access_token": token},
        json={"prompt": "Say hello.", "max_output_tokens": 8},
        timeout=60,
    )
    body = reply.json()
    assert body["object"] == "completion"
    assert body["result"].strip()


def test_tokenizer_route(server: Server, token: str) -> None:
    def count(prompt: str, model: str = "llama_2_7b") -> dict[str, Any]:
        return dict(
            requests.post(
                f"{server.url}/rpc/2.0/ai_custom/v1/wenxinworkshop/tokenizer/erniebot",
                params={"access_token": token},
                json={"prompt": prompt, "model": model},
                timeout=30,
            ).json()
        )

    short, longer = count("hello"), count("hello world, how are you today?")
    assert short["object"] == "tokenizer.erniebot"
    assert ID.match(short["id"])
    assert short["usage"]["prompt_tokens"] == short["usage"]["total_tokens"] >= 1
    assert short["usage"]["completion_tokens"] == 0
    assert longer["usage"]["prompt_tokens"] > short["usage"]["prompt_tokens"]
    assert count("hi", model="nope")["error_code"] == 336005
