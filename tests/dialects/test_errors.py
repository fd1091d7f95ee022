"""One table of error cases, each checked in every dialect's own shape.

A row is the case, the request (a dialect-free `Ask`, which each dialect renders as its own HTTP
request), what the engine does and the state of the calling app, and one column per dialect: the
V1 `error_code` (HTTP 200), the OpenAI HTTP status (its body carries the same Qianfan code), V2's
code name and HTTP status. A new dialect adds a column and a line to `expected`. Known
divergences are listed in `known`, by dialect: strict xfails that the shared request pipeline is
to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import pytest

from qfserve.errors import EngineUnavailable, OverloadedError
from tests.dialects.dialects import DIALECTS, OPENAI, V1, V2, Ask, Dialect
from tests.fake_engine import Script
from tests.inprocess import InProcess

# Fails after its first sentence went out: a V1 stream has sent an event, the others chunks.
SENTENCE_THEN_MORE = "Hello there. More text follows here."
EVEN = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


@dataclass(frozen=True, slots=True)
class V2Answer:
    """V2's column: the error's code name and the HTTP status, as API-v2.md gives them."""

    code: str
    status: int


INVALID_ARGUMENT = V2Answer("invalid_argument", 400)
INVALID_MESSAGES = V2Answer("invalid_messages", 400)
OVERLOADED = V2Answer("server_overloaded", 503)


@dataclass(frozen=True, slots=True)
class ErrorCase:
    name: str
    ask: Ask
    v1_code: int
    openai_status: int
    v2: V2Answer
    script: Script | None = None
    engine_ready: bool = True
    app_state: Literal["live", "disabled", "other endpoints only"] = "live"
    known: Mapping[str, str] = field(default_factory=dict)

    @property
    def mid_stream(self) -> bool:
        """The error comes after the answer began: an event at the end of the stream."""
        return self.ask.stream and self.script is not None and self.script.error_after > 0


def mid_answer(error: BaseException) -> Script:
    return Script(answer=SENTENCE_THEN_MORE, error=error, error_after=3)


ERRORS = [
    ErrorCase(
        "missing credentials",
        Ask(credential="missing"),
        100,
        401,
        V2Answer("invalid_iam_token", 401),
    ),
    ErrorCase("bad token", Ask(credential="forged"), 110, 401, V2Answer("invalid_iam_token", 401)),
    ErrorCase(
        "app disabled", Ask(), 15, 403, V2Answer("invalid_iam_token", 401), app_state="disabled"
    ),
    ErrorCase(
        "endpoint not permitted",
        Ask(),
        6,
        403,
        V2Answer("no_parameter_permission", 401),
        app_state="other endpoints only",
    ),
    ErrorCase(
        "unknown endpoint",
        Ask(endpoint="no_such_model"),
        336005,
        404,
        V2Answer("invalid_model", 400),
    ),
    ErrorCase("not JSON", Ask(content=b"not json {"), 336002, 400, V2Answer("malformed_json", 400)),
    ErrorCase("body not an object", Ask(content=b"[1, 2]"), 336001, 400, INVALID_ARGUMENT),
    ErrorCase("wrong field type", Ask(wire={"temperature": "hot"}), 336001, 400, INVALID_ARGUMENT),
    ErrorCase("messages not a list", Ask(wire={"messages": "Hi"}), 336001, 400, INVALID_ARGUMENT),
    ErrorCase("empty messages", Ask(messages=[]), 336003, 400, INVALID_MESSAGES),
    ErrorCase("even message count", Ask(messages=EVEN), 336003, 400, INVALID_MESSAGES),
    ErrorCase("temperature out of range", Ask(temperature=9.0), 336003, 400, INVALID_ARGUMENT),
    ErrorCase(
        "engine not ready", Ask(), 2, 503, V2Answer("service_unavailable", 503), engine_ready=False
    ),
    ErrorCase("engine overloaded", Ask(), 336100, 503, OVERLOADED, Script(error=OverloadedError())),
    ErrorCase(
        "engine overloaded, stream",
        Ask(stream=True),
        336100,
        503,
        OVERLOADED,
        Script(error=OverloadedError()),
    ),
    ErrorCase(
        "engine fails mid-answer",
        Ask(),
        336000,
        500,
        V2Answer("internal_error", 500),
        mid_answer(RuntimeError("decode failed")),
    ),
    ErrorCase(
        "engine unavailable mid-answer",
        Ask(),
        2,
        503,
        V2Answer("service_unavailable", 503),
        mid_answer(EngineUnavailable("drained")),
    ),
    ErrorCase(
        "engine unavailable mid-stream",
        Ask(stream=True),
        2,
        200,
        V2Answer("service_unavailable", 200),
        mid_answer(EngineUnavailable("drained")),
    ),
    ErrorCase(
        "engine fails mid-stream",
        Ask(stream=True),
        336000,
        200,
        V2Answer("internal_error", 200),
        mid_answer(RuntimeError("decode failed")),
    ),
]


def expected(case: ErrorCase, dialect: Dialect) -> tuple[int | str, int]:
    """The code and the HTTP status the dialect answers the case with."""
    if dialect is V1:
        return case.v1_code, 200
    if dialect is OPENAI:
        return case.v1_code, case.openai_status
    if dialect is V2:
        return case.v2.code, case.v2.status
    raise AssertionError(f"no column for {dialect}")


def _cases() -> list[object]:
    return [
        pytest.param(
            case,
            dialect,
            id=f"{dialect.name}-{case.name.replace(' ', '-')}",
            marks=[pytest.mark.xfail(strict=True, reason=case.known[dialect.name])]
            if dialect.name in case.known
            else [],
        )
        for case in ERRORS
        for dialect in DIALECTS
    ]


@pytest.mark.parametrize(("case", "dialect"), _cases())
def test_error(qf: InProcess, case: ErrorCase, dialect: Dialect) -> None:
    app = qf.new_app()
    secret = dialect.secret(qf, app)
    if case.app_state == "disabled":
        qf.store.apps.set_disabled(app.app_id, True)
    elif case.app_state == "other endpoints only":
        qf.store.apps.set_access(app.app_id, {}, ["other_model"])
    if case.script is not None:
        qf.engine.script = case.script
    qf.engine.available = case.engine_ready
    response = dialect.post(qf, secret, case.ask)
    code, status = expected(case, dialect)
    if case.mid_stream:
        sent, failure = dialect.stream_failure(response)
        assert sent and SENTENCE_THEN_MORE.startswith(sent)
    else:
        failure = dialect.failure(response)
    assert (failure.code, failure.status) == (code, status), failure.message
    # Whatever failed, no generation is left running.
    assert qf.engine.running == 0
    if case.script is None:
        assert qf.engine.requests == []
