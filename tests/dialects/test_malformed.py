"""Malformed and hostile bodies, in every dialect: each is the client's error (V1's 336001 or
336002 at HTTP 200, a 400 in OpenAI's and V2's), never an internal error, and never a traceback
in the server's log."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dialects.dialects import DIALECTS, V1, Ask, Dialect
from tests.fake_engine import Script
from tests.inprocess import InProcess, running

# Stands for a value the test writes into the body's JSON text by hand.
MARK = 987654321
HUGE_INTEGER = "9" * 5000
DEPTH = 100_000


@dataclass(frozen=True, slots=True)
class Malformed:
    name: str
    body: bytes
    v1_code: int  # V1 and OpenAI (the code in OpenAI's body)
    v2_code: str
    names: str | None = None  # what the error's message must name


def spliced(dialect: Dialect, ask: Ask, text: str, *, mark: str = str(MARK)) -> bytes:
    """The dialect's body for `ask`, its JSON with `mark` replaced by `text`."""
    body = json.dumps(dialect.request("unused", ask).body)
    assert body.count(mark) == 1, body
    return body.replace(mark, text).encode()


def user_field(dialect: Dialect) -> str:
    return "user_id" if dialect is V1 else "user"


def cases(dialect: Dialect) -> list[Malformed]:
    question = Ask(messages=[{"role": "user", "content": f"Hi {MARK}"}])
    nested = "[" * DEPTH + "]" * DEPTH
    return [
        Malformed(
            "huge integer in an integer field",
            spliced(dialect, Ask(max_tokens=MARK), HUGE_INTEGER),
            336001,
            "invalid_argument",
        ),
        Malformed(
            "huge integer in a number field",
            spliced(dialect, Ask(wire={"temperature": MARK}), HUGE_INTEGER),
            336001,
            "invalid_argument",
        ),
        Malformed(
            "huge negative integer in an integer field",
            spliced(dialect, Ask(max_tokens=MARK), "-" + HUGE_INTEGER),
            336001,
            "invalid_argument",
        ),
        Malformed(
            "escaped lone surrogate in content",
            spliced(dialect, question, "\\ud800"),
            336001,
            "invalid_argument",
        ),
        Malformed(
            "escaped lone low surrogate in content",
            spliced(dialect, question, "\\udc00 and more"),
            336001,
            "invalid_argument",
        ),
        Malformed(
            "raw lone surrogate in content",
            spliced(dialect, question, "@@").replace(b"@@", b"\xed\xa0\x80"),
            336001,
            "invalid_argument",
        ),
        Malformed(
            "deep nesting in an unknown field",
            spliced(dialect, Ask(wire={"extra": MARK}), nested),
            336001,
            "invalid_argument",
        ),
        Malformed("deep nesting as the body", nested.encode(), 336001, "invalid_argument"),
        Malformed(
            "deep nesting in the messages",
            spliced(dialect, Ask(wire={"messages": MARK}), nested),
            336001,
            "invalid_argument",
        ),
        Malformed(
            "user of 300 characters",
            json.dumps(
                dialect.request("unused", Ask(wire={user_field(dialect): "u" * 300})).body
            ).encode(),
            336001,
            "invalid_argument",
            names=user_field(dialect),
        ),
        Malformed("empty body", b"", 336002, "malformed_json"),
        Malformed("whitespace body", b"  \n", 336002, "malformed_json"),
        Malformed("null body", b"null", 336001, "invalid_argument"),
        Malformed("array body", b'[{"messages": []}]', 336001, "invalid_argument"),
        Malformed("string body", b'"hello"', 336001, "invalid_argument"),
        # The parser says no more of these bytes than of a surrogate's: an invalid code point.
        Malformed("not UTF-8", b'{"messages": "\xff\xfe"}', 336001, "invalid_argument"),
    ]


def _cases() -> list[object]:
    return [
        pytest.param(dialect, index, id=f"{dialect.name}-{case.name.replace(' ', '-')}")
        for dialect in DIALECTS
        for index, case in enumerate(cases(dialect))
    ]


@pytest.fixture
def server_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The server's log while the test runs; afterwards, it must hold no error and no traceback."""
    caplog.set_level(logging.INFO)
    yield caplog
    faults = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not faults, [f"{r.name}: {r.getMessage()}" for r in faults]


@pytest.mark.parametrize(("dialect", "index"), _cases())
def test_malformed_body_is_the_clients_error(
    qf: InProcess, server_log: pytest.LogCaptureFixture, dialect: Dialect, index: int
) -> None:
    case = cases(dialect)[index]
    secret = dialect.secret(qf, qf.new_app())
    failure = dialect.failure(dialect.post(qf, secret, Ask(content=case.body)))
    assert (failure.code, failure.status) == expected(dialect, case.v1_code, case.v2_code, 400)
    if case.names is not None:
        assert case.names in failure.message, failure.message
    assert qf.engine.requests == []


def expected(dialect: Dialect, v1_code: int, v2_code: str, status: int) -> tuple[int | str, int]:
    return dialect.code(v1_code, v2_code), 200 if dialect is V1 else status


def test_the_log_check_sees_a_traceback(
    qf: InProcess, caplog: pytest.LogCaptureFixture, dialect: Dialect, secret: str
) -> None:
    """The server's errors do reach `caplog` (no logger of the app stops them on the way), so
    the check above can fail."""
    qf.engine.script = Script(error=RuntimeError("decode failed"))
    dialect.failure(dialect.post(qf, secret, Ask()))
    assert any(r.levelno >= logging.ERROR and r.exc_info for r in caplog.records)


# Bodies over the bound.

LIMIT = 4096


@pytest.fixture
def bounded(tmp_path: Path) -> Iterator[InProcess]:
    with running(tmp_path, max_request_bytes=LIMIT) as serving:
        yield serving


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_body_over_the_bound_is_refused(
    bounded: InProcess, server_log: pytest.LogCaptureFixture, dialect: Dialect, declared: bool
) -> None:
    secret = dialect.secret(bounded, bounded.new_app())
    long = Ask(messages=[{"role": "user", "content": "word " * LIMIT}])
    sent = dialect.request(secret, long)
    if declared:
        response = bounded.client.post(sent.path, json=sent.body, headers=sent.headers)
    else:
        # No Content-Length: the body's length is only known as it is read.
        def chunks() -> Iterator[bytes]:
            text = json.dumps(sent.body).encode()
            for start in range(0, len(text), 1000):
                yield text[start : start + 1000]

        response = bounded.client.post(sent.path, content=chunks(), headers=sent.headers)
    failure = dialect.failure(response)
    assert (failure.code, failure.status) == expected(dialect, 336001, "invalid_argument", 413)
    assert str(LIMIT) in failure.message
    assert bounded.engine.requests == []
    # A body within the bound is answered.
    dialect.reply(dialect.post(bounded, secret, Ask()), Ask())
