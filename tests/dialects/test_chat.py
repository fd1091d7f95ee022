"""Answers in every dialect, in-process on the scripted engine: body shapes, usage arithmetic,
stream framing, sampling reaching the engine, safety refusals and quotas."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from qfserve.config import SafetySettings, StreamSettings
from tests.dialects.dialects import DIALECTS, HI, V1, V2, Ask, Dialect
from tests.fake_engine import ANSWER, FakeEngine, Script, words
from tests.inprocess import InProcess, Response, running, sse_json

FLAGGED_QUESTION = "哪里有网络赌博平台"  # a term of qfserve/chat/safety_lists/gambling.txt
FLAGGED_ANSWER = "You could try 网络赌博 tonight, it is fun."
SENTENCES = "First comes one sentence. Then another one follows! And the last one ends here."


def prompt_tokens(messages: list[dict[str, str]], system: str | None = None) -> int:
    """What the fake tokenizer counts in the fake template's prompt: a role marker per message
    (the system prompt included), the words of each content, and the closing assistant marker."""
    contents = [m["content"] for m in messages] + ([system] if system else [])
    return len(contents) + sum(len(c.split()) for c in contents) + 1


def test_plain_answer_and_its_usage(qf: InProcess, dialect: Dialect, secret: str) -> None:
    reply = dialect.reply(dialect.post(qf, secret, Ask()), Ask())
    assert reply.text == ANSWER
    assert reply.finish == "stop" and not reply.flagged
    assert reply.prompt_tokens == prompt_tokens(HI) == 4
    assert reply.completion_tokens == len(words(ANSWER)) == 5
    assert reply.total_tokens == reply.prompt_tokens + reply.completion_tokens
    # What the engine was given: the template's prompt, counted by its own tokenizer.
    sent = qf.engine.last
    assert sent.prompt_text == "<s><|user|> Hi there\n<|assistant|>"
    assert len(sent.prompt_tokens) == reply.prompt_tokens
    assert sent.messages == (("user", "Hi there"),)
    assert qf.engine.finished == [sent.request_id] and qf.engine.running == 0


def test_system_prompt_and_history_reach_the_engine_and_are_counted(
    qf: InProcess, dialect: Dialect, secret: str
) -> None:
    messages = [
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And three more?"},
    ]
    ask = Ask(messages=messages, system="Answer in numbers only")
    reply = dialect.reply(dialect.post(qf, secret, ask), ask)
    assert reply.prompt_tokens == prompt_tokens(messages, ask.system) == 18
    assert qf.engine.last.messages == (
        ("system", "Answer in numbers only"),
        ("user", "What is two plus two?"),
        ("assistant", "Four."),
        ("user", "And three more?"),
    )
    assert qf.engine.last.prompt_text.startswith("<s><|system|> Answer in numbers only\n")


@pytest.mark.parametrize("include_usage", [True, False], ids=["usage", "no-usage"])
def test_stream_framing_and_usage(
    qf: InProcess, dialect: Dialect, secret: str, include_usage: bool
) -> None:
    if dialect is V1 and not include_usage:
        pytest.skip("every V1 event carries its usage")
    qf.engine.script = Script(answer=SENTENCES)
    ask = Ask(stream=True, include_usage=include_usage)
    response = dialect.post(qf, secret, ask)
    reply = dialect.reply(response, ask)  # checks the framing
    assert reply.text == SENTENCES and reply.finish == "stop"
    if include_usage:
        assert reply.prompt_tokens == 4
        assert reply.completion_tokens == len(words(SENTENCES)) == 14
        assert reply.total_tokens == 18
    if dialect is V1:
        # One event per sentence.
        assert response.text.count("sentence_id") == 3


def test_stream_text_equals_the_plain_text(qf: InProcess, dialect: Dialect, secret: str) -> None:
    qf.engine.script = Script(answer=SENTENCES)
    plain = dialect.reply(dialect.post(qf, secret, Ask()), Ask())
    ask = Ask(stream=True, include_usage=True)
    streamed = dialect.reply(dialect.post(qf, secret, ask), ask)
    assert streamed == plain


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_length_finish(qf: InProcess, dialect: Dialect, secret: str, stream: bool) -> None:
    qf.engine.script = Script(finish_reason="length")
    ask = Ask(stream=stream, include_usage=True)
    reply = dialect.reply(dialect.post(qf, secret, ask), ask)
    assert reply.finish == "length" and reply.text == ANSWER


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_sampling_parameters_reach_the_engine(
    qf: InProcess, dialect: Dialect, secret: str, stream: bool
) -> None:
    ask = Ask(
        temperature=0.5, top_p=0.25, stop=["fake"], max_tokens=3, stream=stream, include_usage=True
    )
    reply = dialect.reply(dialect.post(qf, secret, ask), ask)
    sampling = qf.engine.last.sampling
    assert (sampling.temperature, sampling.top_p) == (0.5, 0.25)
    assert sampling.stop == ("fake",) and sampling.max_tokens == 3
    # The engine cut the answer at the stop string, within the 3 tokens allowed.
    assert reply.text == "Hello from the" and reply.finish == "stop"
    assert reply.completion_tokens == 3


def test_max_tokens_cuts_the_answer(qf: InProcess, dialect: Dialect, secret: str) -> None:
    ask = Ask(max_tokens=2)
    reply = dialect.reply(dialect.post(qf, secret, ask), ask)
    assert (reply.text, reply.finish, reply.completion_tokens) == ("Hello from", "length", 2)


def test_endpoint_defaults_fill_what_is_not_asked(
    qf: InProcess, dialect: Dialect, secret: str
) -> None:
    dialect.reply(dialect.post(qf, secret, Ask()), Ask())
    endpoint = qf.settings.endpoints[0]
    sampling = qf.engine.last.sampling
    assert sampling.temperature == endpoint.temperature and sampling.top_p == endpoint.top_p
    assert sampling.max_tokens == endpoint.default_max_output_tokens and sampling.stop == ()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_flagged_question_is_refused_without_generating(
    qf: InProcess, dialect: Dialect, secret: str, stream: bool
) -> None:
    messages = [{"role": "user", "content": FLAGGED_QUESTION}]
    ask = Ask(messages=messages, stream=stream, include_usage=True)
    response = dialect.post(qf, secret, ask)
    reply = dialect.reply(response, ask)
    assert reply.flagged and reply.finish == "content_filter"
    assert reply.text == qf.settings.safety.refusal
    assert (reply.prompt_tokens, reply.completion_tokens) == (prompt_tokens(messages), 0)
    assert reply.total_tokens == reply.prompt_tokens
    assert qf.engine.requests == []
    if dialect is V1:
        last = response.text if not stream else response.text.strip().splitlines()[-1]
        assert '"ban_round":-1' in last  # the current question
    if dialect is V2:
        # Do not continue the conversation; the current question is the flagged one.
        assert (reply.flag, reply.ban_round) == (2, -1)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_flagged_history_names_its_round(
    qf: InProcess, dialect: Dialect, secret: str, stream: bool
) -> None:
    messages = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi"},
        {"role": "user", "content": FLAGGED_QUESTION},
        {"role": "assistant", "content": "No"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    ask = Ask(messages=messages, stream=stream, include_usage=True)
    response = dialect.post(qf, secret, ask)
    reply = dialect.reply(response, ask)
    assert reply.flagged and reply.text == qf.settings.safety.refusal
    assert qf.engine.requests == []
    if dialect is V1:
        last = response.text if not stream else response.text.strip().splitlines()[-1]
        assert '"ban_round":2' in last
    if dialect is V2:
        assert (reply.flag, reply.ban_round) == (2, 2)


def test_flagged_answer_is_replaced_by_the_refusal(
    qf: InProcess, dialect: Dialect, secret: str
) -> None:
    qf.engine.script = Script(answer=FLAGGED_ANSWER)
    reply = dialect.reply(dialect.post(qf, secret, Ask()), Ask())
    assert reply.flagged and reply.text == qf.settings.safety.refusal
    assert reply.finish == "content_filter"
    if dialect is V2:
        assert (reply.flag, reply.ban_round) == (3, -1)  # do not show it
    # The generation was stopped at the flagged term.
    assert qf.engine.running == 0 and qf.engine.cancelled == [qf.engine.last.request_id]


def test_flagged_answer_in_a_stream_ends_with_content_filter(
    qf: InProcess, dialect: Dialect, secret: str
) -> None:
    qf.engine.script = Script(answer=FLAGGED_ANSWER)
    ask = Ask(stream=True, include_usage=True)
    reply = dialect.reply(dialect.post(qf, secret, ask), ask)
    assert reply.flagged and reply.finish == "content_filter"
    # Nothing of the flagged term went out.
    assert "网络赌博" not in reply.text
    if dialect is V2:
        assert (reply.flag, reply.ban_round) == (4, -1)  # retract what was shown
    assert qf.engine.running == 0 and qf.engine.cancelled == [qf.engine.last.request_id]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_the_ledger_charges_what_the_client_was_told(
    qf: InProcess, dialect: Dialect, stream: bool
) -> None:
    app = qf.new_app("metered")
    secret = dialect.secret(qf, app)
    qf.engine.script = Script(answer=SENTENCES)
    user = {"user_id": "u1"} if dialect is V1 else {"user": "u1"}
    ask = Ask(stream=stream, include_usage=True, wire=user)
    reply = dialect.reply(dialect.post(qf, secret, ask), ask)
    refused = dialect.failure(dialect.post(qf, secret, Ask(messages=[])))
    assert refused.code == dialect.code(336003, "invalid_messages")
    told, failed = qf.usage(app, rows=2)
    assert (told.prompt_tokens, told.completion_tokens) == (4, 14)
    assert (told.prompt_tokens, told.completion_tokens) == (
        reply.prompt_tokens,
        reply.completion_tokens,
    )
    assert (told.error_code, told.endpoint, told.user_id) == (0, "llama_2_7b", "u1")
    # A refused request is a row too, with its error (V1's code, whatever the dialect) and no
    # tokens charged for an answer.
    assert (failed.error_code, failed.completion_tokens) == (336003, 0)


@pytest.mark.parametrize(
    ("quota", "window_seconds", "v1_code"), [("qps", 1, 18), ("rpm", 60, 336501)]
)
def test_quota_refuses_the_second_request(
    qf: InProcess, dialect: Dialect, quota: str, window_seconds: int, v1_code: int
) -> None:
    """V2 has no code of its own for qfserve's qps quota: the closest, rpm's."""
    # Quota windows are aligned to the clock: two requests that straddle a window's end are both
    # admitted, rightly. Only a pair seen within one window proves the refusal; try a new app
    # until one is (on a loaded machine a pair can take most of a second).
    give_up = time.monotonic() + 30
    while True:
        secret = dialect.secret(qf, qf.new_app("limited", **{quota: 1}))
        generated_before = len(qf.engine.requests)
        before = time.time()
        first = dialect.post(qf, secret, Ask())
        second = dialect.post(qf, secret, Ask())
        if before // window_seconds == time.time() // window_seconds:
            break
        assert time.monotonic() < give_up, "no two requests fell within one window"
    dialect.reply(first, Ask())
    failure = dialect.failure(second)
    assert failure.code == dialect.code(v1_code, "rpm_rate_limit_exceeded")
    assert failure.status == (200 if dialect is V1 else 429)
    assert len(qf.engine.requests) == generated_before + 1  # the refused one never got there
    # The answer and the refusal both say how much is left, under the dialect's header names.
    for response in (first, second):
        assert rate_limit_headers(response) == {h.lower() for h in dialect.rate_limit_headers}
    assert second.headers["X-Ratelimit-Remaining-Requests"] == "0"


def rate_limit_headers(response: Response) -> set[str]:
    return {name.lower() for name in response.headers if name.lower().startswith("x-ratelimit-")}


def _upstream_count_cases() -> list[object]:
    cases: list[object] = []
    for dialect in DIALECTS:
        for stream in ("plain", "stream"):
            for safety in ("safety", "no-safety"):
                cases.append(
                    pytest.param(
                        dialect,
                        stream == "stream",
                        safety == "safety",
                        id=f"{dialect.name}-{stream}-{safety}",
                    )
                )
    return cases


@pytest.mark.parametrize(("dialect", "stream", "safety"), _upstream_count_cases())
def test_a_remote_upstreams_prompt_count_is_reported(
    tmp_path: Path, dialect: Dialect, stream: bool, safety: bool
) -> None:
    """A remote engine's last delta carries the upstream's own count of the prompt (its model's
    tokenizer): that count is the one to report and to charge."""
    engine = FakeEngine(script=Script(prompt_tokens=11, taken_first=True))
    with running(tmp_path, engine, safety=SafetySettings(enabled=safety)) as served:
        app = served.new_app()
        secret = dialect.secret(served, app)
        ask = Ask(stream=stream, include_usage=True)
        reply = dialect.reply(dialect.post(served, secret, ask), ask)
        (charged,) = served.usage(app, rows=1)
    assert (reply.prompt_tokens, reply.completion_tokens, reply.total_tokens) == (11, 5, 16)
    assert (charged.prompt_tokens, charged.completion_tokens) == (11, 5)


def test_a_v1_stream_shows_no_event_for_the_engine_taking_the_request(tmp_path: Path) -> None:
    """A remote engine's empty first delta (the upstream took the request) lets the response's
    head go out early; V1's events still start at sentence 0 with text, one after another."""
    engine = FakeEngine(script=Script(taken_first=True))
    with running(tmp_path, engine) as served:
        secret = V1.secret(served, served.new_app())
        response = V1.post(served, secret, Ask(stream=True))
    events = sse_json(response)
    assert [e["sentence_id"] for e in events] == list(range(len(events)))
    assert all(e["result"] for e in events[:-1]) and events[-1]["is_end"] is True
    assert "".join(e["result"] for e in events).strip() == ANSWER


def test_a_v1_stream_sends_held_text_when_its_time_limit_passes(tmp_path: Path) -> None:
    """Words too short to make a segment each go out on their own once the segment's time limit
    passes while the engine is slow, each exactly once, and the last event still says `is_end`."""
    answer = "One two three four"
    engine = FakeEngine(script=Script(answer=answer, token_delay=0.15))
    stream = StreamSettings(min_segment_chars=100, max_segment_seconds=0.03)
    with running(tmp_path, engine, stream=stream) as served:
        secret = V1.secret(served, served.new_app())
        response = V1.post(served, secret, Ask(stream=True))
    events = sse_json(response)
    texts = [e["result"] for e in events]
    assert "".join(texts) == answer
    assert [t for t in texts if t] == words(answer)
    assert events[-1]["is_end"] is True and not any(e["is_end"] for e in events[:-1])
    assert [e["sentence_id"] for e in events] == list(range(len(events)))
