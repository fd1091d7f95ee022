"""Reading the two streaming dialects, line by line. Pure: no I/O, no clocks.

Qianfan (spec section 2) sends one `data: {json}` event per sentence segment, several tokens each,
with `usage` in every event and `is_end` on the last; an error is an event holding `error_code`.
OpenAI sends one chunk per token (or per few, where UTF-8 characters span tokens), then `usage` in
a last chunk if `stream_options.include_usage` was honoured, then `data: [DONE]`.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

DONE = "[DONE]"


def data_payload(line: str) -> str | None:
    """The payload of an SSE `data:` line; None for blank, comment (`: ping`) and other fields."""
    if not line.startswith("data:"):
        return None
    payload = line[5:]
    # SSE strips exactly one space after the colon.
    return payload[1:] if payload.startswith(" ") else payload


@dataclass(frozen=True, slots=True)
class QianfanEvent:
    text: str
    # Tokens of this segment, and the prompt's and the running total from `usage`.
    completion_tokens: int
    prompt_tokens: int | None
    total_tokens: int | None
    is_end: bool
    is_truncated: bool
    error: str | None = None


def qianfan_event(payload: str) -> QianfanEvent:
    body = _object(payload)
    if body is None:
        return QianfanEvent("", 0, None, None, True, False, f"not JSON: {payload[:200]}")
    if "error_code" in body:
        error = f"{body.get('error_code')}: {body.get('error_msg', '')}"
        return QianfanEvent("", 0, None, None, True, False, error)
    usage = body.get("usage") or {}
    return QianfanEvent(
        text=str(body.get("result") or ""),
        completion_tokens=_int(usage.get("completion_tokens")) or 0,
        prompt_tokens=_int(usage.get("prompt_tokens")),
        total_tokens=_int(usage.get("total_tokens")),
        is_end=bool(body.get("is_end")),
        is_truncated=bool(body.get("is_truncated")),
    )


@dataclass(frozen=True, slots=True)
class OpenAIChunk:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    done: bool = False
    error: str | None = None
    # Prompt tokens the server took from its cache rather than prefilled, where it says.
    cached_tokens: int | None = None


def openai_chunk(payload: str) -> OpenAIChunk:
    if payload.strip() == DONE:
        return OpenAIChunk("", None, None, None, done=True)
    body = _object(payload)
    if body is None:
        return OpenAIChunk("", None, None, None, done=True, error=f"not JSON: {payload[:200]}")
    if "error" in body:
        error = body["error"]
        message = error.get("message") if isinstance(error, dict) else error
        return OpenAIChunk("", None, None, None, done=True, error=str(message))
    text, finish = "", None
    for choice in body.get("choices") or []:
        delta = choice.get("delta") or {}
        text += str(delta.get("content") or "")
        finish = choice.get("finish_reason") or finish
    usage = body.get("usage") or {}
    return OpenAIChunk(
        text=text,
        finish_reason=finish,
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        cached_tokens=_cached_tokens(body, usage),
    )


def _cached_tokens(body: dict[str, Any], usage: dict[str, Any]) -> int | None:
    """OpenAI's `usage.prompt_tokens_details.cached_tokens`, or llama.cpp's `timings.cache_n`."""
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and (cached := _int(details.get("cached_tokens"))) is not None:
        return cached
    timings = body.get("timings")
    return _int(timings.get("cache_n")) if isinstance(timings, dict) else None


def qianfan_output_tokens(last: QianfanEvent) -> int | None:
    """The answer's tokens, as the brief defines them: the last event's total minus the prompt."""
    if last.total_tokens is None or last.prompt_tokens is None:
        return None
    return last.total_tokens - last.prompt_tokens


def spread_token_times(events: list[tuple[float, int]]) -> list[float]:
    """Estimated arrival time of each token from `(time, tokens)` per event.

    A Qianfan event carries a whole segment, so the client never sees single tokens. The tokens of
    a later event are spread evenly over the gap since the event before it; the first event's
    extra tokens are put back in time at the request's own decode pace, measured over the later
    events, so that the first estimate is the time of the first token rather than of the first
    segment. With one event only there is no pace to go by: it gives one time, an upper bound
    of the first token's, and no gaps (zeros would pass for a fast server).
    """
    events = [(t, n) for t, n in events if n > 0]
    if not events:
        return []
    first_time, first_count = events[0]
    if len(events) == 1:
        return [first_time]
    pace = (events[-1][0] - first_time) / sum(n for _, n in events[1:])
    times = [max(0.0, first_time - pace * (first_count - 1 - k)) for k in range(first_count)]
    previous = first_time
    for when, count in events[1:]:
        step = (when - previous) / count
        times.extend(previous + step * (k + 1) for k in range(count))
        previous = when
    return times


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def _object(payload: str) -> dict[str, Any] | None:
    try:
        body = json.loads(payload)
    except json.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
