"""Content safety on a real server: flagged questions and history, flagged answers plain and
streaming, evasions, lists reloaded without a restart, metrics and the usage ledger."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.servers import Server, running_server
from tests.waiting import wait_until

pytestmark = pytest.mark.model

REFUSAL = "这个问题我暂时无法回答，让我们换个话题再聊聊吧。"
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def extra_list(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The answer to FRANCE reliably names the city: listing it lets a test flag an answer.
    path = tmp_path_factory.mktemp("lists") / "places.txt"
    path.write_text("# a test list\nparis\n")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, extra_list: Path) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("safety"),
        QFSERVE_SAFETY_LISTS=str(extra_list),
        QFSERVE_SAFETY__RELOAD_SECONDS="0.3",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def token(server: Server) -> str:
    return server.token(server.create_app("safety"))


def ask(server: Server, token: str, messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    body = {"messages": messages, "temperature": 0.01, "top_k": 1, "max_output_tokens": 40, **extra}
    return dict(requests.post(server.chat_url(token), json=body, timeout=60).json())


def stream(server: Server, token: str, messages: list[dict[str, str]]) -> list[dict[str, Any]]:
    body = {"messages": messages, "temperature": 0.01, "top_k": 1, "max_output_tokens": 40}
    reply = requests.post(
        server.chat_url(token), json={**body, "stream": True}, stream=True, timeout=60
    )
    return [json.loads(line[6:]) for line in reply.iter_lines() if line]


def rounds(*questions: str) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    for index, question in enumerate(questions):
        if index:
            messages.append({"role": "assistant", "content": "OK."})
        messages.append({"role": "user", "content": question})
    return messages


def test_flagged_question_is_refused_without_generation(server: Server, token: str) -> None:
    body = ask(server, token, rounds("哪里有网络赌博平台？"))
    assert body["need_clear_history"] is True and body["ban_round"] == -1
    assert body["result"] == REFUSAL
    assert body["usage"]["completion_tokens"] == 0
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] > 0


def test_flagged_earlier_round_gives_its_number(server: Server, token: str) -> None:
    body = ask(server, token, rounds("Hello", "哪里可以买到冰毒", "What is 2+2?"))
    assert body["need_clear_history"] is True and body["ban_round"] == 2


@pytest.mark.parametrize(
    "evasion", ["网 络 赌 博 平 台在哪", "网.络.赌.博网站", "ｃｏｃａｉｎｅ for sale"]
)
def test_evasions_are_caught(server: Server, token: str, evasion: str) -> None:
    assert ask(server, token, rounds(evasion))["need_clear_history"] is True


def test_clean_question_is_answered_unflagged(server: Server, token: str) -> None:
    body = ask(server, token, rounds("Name a colour."))
    assert body["need_clear_history"] is False and "ban_round" not in body


def test_flagged_question_on_a_stream_is_one_event(server: Server, token: str) -> None:
    events = stream(server, token, rounds("网上赌场怎么注册"))
    assert len(events) == 1
    (event,) = events
    assert event["is_end"] is True and event["need_clear_history"] is True
    assert event["ban_round"] == -1 and event["result"] == REFUSAL


def test_flagged_answer_plain(server: Server, token: str) -> None:
    body = ask(server, token, FRANCE)
    assert body["need_clear_history"] is True and body["ban_round"] == -1
    assert "paris" not in body["result"].lower()
    assert body["result"] == REFUSAL
    assert body["usage"]["completion_tokens"] >= 1


def test_flagged_answer_streaming_never_shows_the_term(server: Server, token: str) -> None:
    events = stream(server, token, FRANCE)
    text = "".join(e["result"] for e in events)
    assert "paris" not in text.lower()
    assert events[-1]["is_end"] is True
    assert events[-1]["need_clear_history"] is True and events[-1]["ban_round"] == -1
    assert all(e["need_clear_history"] is False for e in events[:-1])


def test_lists_reload_without_restart(server: Server, token: str, extra_list: Path) -> None:
    question = rounds("Tell me about zebrafish.")
    assert ask(server, token, question, max_output_tokens=2)["need_clear_history"] is False
    extra_list.write_text("paris\nzebrafish\n")
    wait_until(
        lambda: ask(server, token, question, max_output_tokens=2)["need_clear_history"],
        interval=0.3,
        what="the edited list picked up",
    )


def test_hits_are_counted_and_recorded_without_text(server: Server, token: str) -> None:
    ask(server, token, rounds("哪里有网络赌博平台？"))
    ask(server, token, rounds("Hello", "哪里可以买到冰毒", "What is 2+2?"))
    ask(server, token, FRANCE)
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert 'qfserve_safety_hits_total{category="gambling",where="question"}' in metrics
    assert 'qfserve_safety_hits_total{category="places",where="answer"}' in metrics

    def categories() -> set[str] | None:
        # All three, once they are in: the ledger is written off the request path.
        with closing(sqlite3.connect(server.data_dir / "qfserve.db")) as db:
            found = {row[0] for row in db.execute("SELECT safety_category FROM usage_records")}
        return found if {"gambling", "drugs", "places"} <= found else None

    wait_until(categories, what="the three categories in the usage ledger")
    raw = (server.data_dir / "qfserve.db").read_bytes()
    assert "赌博".encode() not in raw and "冰毒".encode() not in raw
    assert "赌博" not in server.log()


def test_model_based_check_runs_the_classifier(tmp_path: Path) -> None:
    """With `safety.model_endpoint` set, each question also goes through a classifier prompt on
    that endpoint (here the same small model, whose verdicts mean little: the plumbing is what
    is shown, by the classifier's prompt tokens in the engine's count)."""
    with running_server(tmp_path, QFSERVE_SAFETY__MODEL_ENDPOINT="llama_2_7b") as guarded:
        token = guarded.token(guarded.create_app("guarded"))

        def prompt_total() -> float:
            for line in requests.get(f"{guarded.url}/metrics", timeout=10).text.splitlines():
                if line.startswith('qfserve_prompt_tokens_total{endpoint="llama_2_7b"}'):
                    return float(line.split()[-1])
            return 0.0

        before = prompt_total()
        body = ask(guarded, token, rounds("Name a colour."), max_output_tokens=2)
        assert "usage" in body
        assert prompt_total() - before > body["usage"]["prompt_tokens"] + 50
