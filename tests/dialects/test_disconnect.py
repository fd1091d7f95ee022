"""A client that goes away mid-answer stops its generation, in every dialect, plain or streamed."""

from __future__ import annotations

from typing import Any

import pytest

from tests.dialects.dialects import OPENAI, V1, Dialect
from tests.fake_engine import Script, words
from tests.inprocess import ENDPOINT, Exchange, InProcess, bearer, post_then_disconnect

LONG = "One two three. " * 100  # 300 tokens, a sentence every 3
HI = [{"role": "user", "content": "Hi there"}]


def _request(dialect: Dialect, secret: str, stream: bool) -> tuple[str, dict[str, Any], Any]:
    if dialect is V1:
        return InProcess.v1_url(secret), {"messages": HI, "stream": stream}, {}
    if dialect is OPENAI:
        body = {"model": ENDPOINT, "messages": HI, "stream": stream}
        return "/v1/chat/completions", body, bearer(secret)
    raise AssertionError(f"no request for {dialect}")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_going_away_cancels_the_generation(
    qf: InProcess, dialect: Dialect, secret: str, stream: bool
) -> None:
    qf.engine.script = Script(answer=LONG, token_delay=0.005)

    def some_answer_arrived(exchange: Exchange) -> bool:
        if stream:
            return len(exchange.chunks) >= 2
        return qf.engine.stats().generated_tokens >= 6

    path, body, headers = _request(dialect, secret, stream)
    exchange = post_then_disconnect(qf, path, body, headers, some_answer_arrived)
    assert qf.engine.cancelled == [qf.engine.last.request_id]
    assert qf.engine.running == 0
    assert qf.engine.stats().generated_tokens < len(words(LONG))
    if stream:
        assert exchange.status == 200 and not exchange.complete
