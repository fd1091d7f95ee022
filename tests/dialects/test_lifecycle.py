"""A client going away and a server shutting down mid-answer, in every dialect."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dialects.dialects import V1, Ask, Dialect
from tests.fake_engine import FakeEngine, Script, words
from tests.inprocess import Exchange, InProcess, post_asgi, running

LONG = "One two three. " * 100  # 300 tokens, a sentence every 3


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_going_away_cancels_the_generation(
    qf: InProcess, dialect: Dialect, secret: str, stream: bool
) -> None:
    qf.engine.script = Script(answer=LONG, token_delay=0.005)

    def some_answer_arrived(exchange: Exchange) -> bool:
        if stream:
            return len(exchange.chunks) >= 2
        return qf.engine.stats().generated_tokens >= 6

    sent = dialect.request(secret, Ask(stream=stream))
    exchange = post_asgi(
        qf, sent.path, sent.body, sent.headers, disconnect_when=some_answer_arrived
    )
    assert qf.engine.cancelled == [qf.engine.last.request_id]
    assert qf.engine.running == 0
    assert qf.engine.stats().generated_tokens < len(words(LONG))
    if stream:
        assert exchange.status_code == 200 and not exchange.complete


def test_shutdown_ends_a_running_stream_with_error_2(tmp_path: Path, dialect: Dialect) -> None:
    """The drain lets running answers go on for most of the grace period, then ends them with
    an error event (EngineUnavailable), and the stream is closed properly; new requests get 2."""
    engine = FakeEngine(script=Script(answer=LONG, token_delay=0.01))
    with running(tmp_path, engine, shutdown_grace_seconds=0.4) as qf:
        secret = dialect.secret(qf, qf.new_app())

        def shut_down_once_streaming(exchange: Exchange) -> None:
            if len(exchange.chunks) == 2:
                qf.service.begin_shutdown()

        sent = dialect.request(secret, Ask(stream=True))
        exchange = post_asgi(
            qf, sent.path, sent.body, sent.headers, on_chunk=shut_down_once_streaming
        )
        assert exchange.complete
        text, failure = dialect.stream_failure(exchange)
        assert text and LONG.startswith(text) and len(text) < len(LONG)
        unavailable = dialect.code(2, "service_unavailable")
        assert failure.code == unavailable
        assert engine.failed == [engine.last.request_id] and engine.running == 0
        refused = dialect.failure(dialect.post(qf, secret, Ask()))
        assert (refused.code, refused.status) == (unavailable, 200 if dialect is V1 else 503)
