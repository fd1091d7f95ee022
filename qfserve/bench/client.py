"""One streaming chat request, timed: first token, each token after it, and the end.

Output tokens come from the server's own count: Qianfan's last event (`total_tokens` minus
`prompt_tokens`), OpenAI's `usage` chunk when the server honours `stream_options.include_usage`.
`llama_cpp.server` does not, so for it: an answer cut by `max_tokens` has exactly that many
tokens; another is counted by the server's tokenizer route; and only when there is none, by
content chunks. Each record says which of these it used (`counted_by`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx

from qfserve.bench import sse

QIANFAN_CHAT = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/"
QIANFAN_V2_CHAT = "/v2/chat/completions"
# Long enough for a request that waits behind seven others on a server that runs one at a time.
TIMEOUT = httpx.Timeout(600.0, connect=10.0)


class Dialect(StrEnum):
    QIANFAN = "qianfan"
    OPENAI = "openai"
    # OpenAI-shaped, at `/v2/chat/completions`, with a `bce-v3/ALTAK-...` Bearer key.
    QIANFAN_V2 = "qianfan_v2"


@dataclass(frozen=True, slots=True)
class Target:
    """A server to measure. `pid`, when known, is sampled for memory."""

    name: str
    dialect: Dialect
    base_url: str
    endpoint: str = "llama_2_7b"
    access_token: str | None = None
    api_key: str | None = None
    pid: int | None = None

    def chat_url(self) -> str:
        base = self.base_url.rstrip("/")
        if self.dialect is Dialect.QIANFAN:
            return f"{base}{QIANFAN_CHAT}{self.endpoint}"
        if self.dialect is Dialect.QIANFAN_V2:
            return f"{base}{QIANFAN_V2_CHAT}"
        return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"

    def params(self) -> dict[str, str]:
        if self.dialect is Dialect.QIANFAN and self.access_token:
            return {"access_token": self.access_token}
        return {}

    def headers(self) -> dict[str, str]:
        if self.dialect is not Dialect.QIANFAN and self.api_key:
            return {"Authorization": f"Bearer {self.api_key}"}
        return {}


@dataclass(frozen=True, slots=True)
class Sampling:
    """The same for every server, so that answers (and their lengths) are comparable."""

    max_tokens: int = 128
    # Qianfan requires a temperature in (0, 1]: near-greedy without being greedy.
    temperature: float = 0.1
    top_p: float = 0.9
    top_k: int = 40
    seed: int = 42


def request_body(
    target: Target,
    messages: list[dict[str, str]],
    sampling: Sampling,
    response_format: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The streaming request of `target`'s dialect; `response_format` (OpenAI's, for the
    OpenAI-shaped routes only) asks for an answer in that shape."""
    if response_format is not None and target.dialect is Dialect.QIANFAN:
        raise ValueError("response_format is asked on an OpenAI-shaped route, not on Qianfan V1")
    body = _sampled_body(target, messages, sampling)
    if response_format is not None:
        body["response_format"] = dict(response_format)
    return body


def _sampled_body(
    target: Target, messages: list[dict[str, str]], sampling: Sampling
) -> dict[str, Any]:
    if target.dialect is Dialect.QIANFAN:
        return {
            "messages": messages,
            "stream": True,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "penalty_score": 1.0,
            "max_output_tokens": sampling.max_tokens,
            "seed": sampling.seed,
        }
    if target.dialect is Dialect.QIANFAN_V2:
        # V2 has no top_k; penalty_score 1.0 is no repeat penalty, as on the other two.
        return {
            "model": target.endpoint,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "penalty_score": 1.0,
            "seed": sampling.seed,
        }
    return {
        "model": target.endpoint,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": sampling.seed,
        # Extensions of llama.cpp's servers (others ignore them): the sampler chain qfserve runs,
        # no min_p and no repeat penalty, where llama_cpp.server's defaults would add both.
        "top_k": sampling.top_k,
        "min_p": 0.0,
        "repeat_penalty": 1.0,
    }


@dataclass(slots=True)
class RequestRecord:
    """Times in seconds; `start_s` from the run's start, the others from the request's."""

    start_s: float = 0.0
    e2e_s: float = 0.0
    first_event_s: float | None = None
    # The first event carrying answer text, as it arrived (a Qianfan segment is not backdated),
    # and that text.
    first_text_s: float | None = None
    first_text: str = ""
    token_times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    counted_by: str = ""
    finish: str | None = None
    text: str = ""
    error: str | None = None
    # The prompt's language (bench/prompts.json's `lang`), for counting looping answers by it.
    lang: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft_s(self) -> float | None:
        return self.token_times[0] if self.token_times else self.first_event_s

    @property
    def itl_s(self) -> list[float]:
        return sse.gaps(self.token_times)


class ServerTokenCounter:
    """Counts text with an OpenAI-compatible server's own tokenizer (`llama_cpp.server`'s
    `/extras/tokenize/count`), minus what it adds to an empty string (BOS)."""

    def __init__(self, target: Target) -> None:
        self._url = target.base_url.rstrip("/").removesuffix("/v1") + "/extras/tokenize/count"
        self._headers = target.headers()
        self._offset: int | None = None
        self._usable = True

    async def count(self, client: httpx.AsyncClient, text: str) -> int | None:
        if not self._usable:
            return None
        if self._offset is None:
            self._offset = await self._raw(client, "")
            if self._offset is None:
                self._usable = False
                return None
        raw = await self._raw(client, text)
        return None if raw is None else max(0, raw - self._offset)

    async def _raw(self, client: httpx.AsyncClient, text: str) -> int | None:
        try:
            response = await client.post(self._url, json={"input": text}, headers=self._headers)
            body = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        value = body.get("count") if isinstance(body, dict) else None
        return value if isinstance(value, int) else None


async def stream_chat(
    client: httpx.AsyncClient,
    target: Target,
    messages: list[dict[str, str]],
    sampling: Sampling,
    response_format: Mapping[str, Any] | None = None,
) -> RequestRecord:
    """Stream one answer. Without usage in the stream, `output_tokens` is left for
    `count_tokens`.

    llama-server closes the connection after each streamed answer although it announced
    keep-alive; the next request, sent before the client has seen the close, meets a dead
    connection and no response. Such a request never reached the server, so it is sent again
    once, on a new connection, and timed from then."""
    record, answered = await _stream_once(client, target, messages, sampling, response_format)
    if not answered:
        record, _ = await _stream_once(client, target, messages, sampling, response_format)
    return record


async def _stream_once(
    client: httpx.AsyncClient,
    target: Target,
    messages: list[dict[str, str]],
    sampling: Sampling,
    response_format: Mapping[str, Any] | None,
) -> tuple[RequestRecord, bool]:
    """One attempt, and whether the server answered it (its response began), or the
    connection was found closed before that."""
    record = RequestRecord()
    answered = False
    began = time.perf_counter()
    try:
        async with client.stream(
            "POST",
            target.chat_url(),
            params=target.params(),
            headers=target.headers(),
            json=request_body(target, messages, sampling, response_format),
            timeout=TIMEOUT,
        ) as response:
            answered = True
            if response.status_code != 200 or "event-stream" not in response.headers.get(
                "content-type", ""
            ):
                # Qianfan answers errors before the stream as one JSON body with HTTP 200.
                body = (await response.aread()).decode("utf-8", "replace")
                record.error = f"HTTP {response.status_code}: {body[:300]}"
            elif target.dialect is Dialect.QIANFAN:
                await _read_qianfan(response, record, began)
            else:
                await _read_openai(response, record, began)
    except httpx.RemoteProtocolError as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    except httpx.HTTPError as exc:
        # Anything else (a refused connection, a timeout) is the server's answer to this request.
        answered = True
        record.error = f"{type(exc).__name__}: {exc}"
    record.e2e_s = time.perf_counter() - began
    return record, answered


async def _read_qianfan(response: httpx.Response, record: RequestRecord, began: float) -> None:
    events: list[tuple[float, int]] = []
    last: sse.QianfanEvent | None = None
    parts: list[str] = []
    async for line in response.aiter_lines():
        payload = sse.data_payload(line)
        if payload is None:
            continue
        now = time.perf_counter() - began
        event = sse.qianfan_event(payload)
        if event.error is not None:
            record.error = event.error
            break
        if record.first_event_s is None:
            record.first_event_s = now
        if event.text and record.first_text_s is None:
            record.first_text_s, record.first_text = now, event.text
        events.append((now, event.completion_tokens))
        parts.append(event.text)
        last = event
    record.text = "".join(parts)
    record.token_times = sse.spread_token_times(events)
    if last is None:
        record.error = record.error or "the stream ended without an event"
        return
    record.prompt_tokens = last.prompt_tokens
    record.finish = "length" if last.is_truncated else ("stop" if last.is_end else None)
    counted = sse.qianfan_output_tokens(last)
    if counted is None:
        record.output_tokens, record.counted_by = sum(n for _, n in events), "events"
    else:
        record.output_tokens, record.counted_by = counted, "usage"
    if record.error is None and not last.is_end:
        record.error = "the stream ended before is_end"


async def _read_openai(response: httpx.Response, record: RequestRecord, began: float) -> None:
    parts: list[str] = []
    async for line in response.aiter_lines():
        payload = sse.data_payload(line)
        if payload is None:
            continue
        now = time.perf_counter() - began
        chunk = sse.openai_chunk(payload)
        if chunk.error is not None:
            record.error = chunk.error
            break
        if chunk.done:
            # Read on to the end of the body, as the SDKs do: a response left unfinished closes
            # its connection, and every request would then pay for a new one on both paths.
            continue
        if record.first_event_s is None:
            record.first_event_s = now
        if chunk.text:
            if record.first_text_s is None:
                record.first_text_s, record.first_text = now, chunk.text
            record.token_times.append(now)
            parts.append(chunk.text)
        record.finish = chunk.finish_reason or record.finish
        if chunk.completion_tokens is not None:
            record.output_tokens, record.counted_by = chunk.completion_tokens, "usage"
            record.prompt_tokens = chunk.prompt_tokens
        if chunk.cached_tokens is not None:
            record.cached_tokens = chunk.cached_tokens
    record.text = "".join(parts)


async def count_tokens(
    client: httpx.AsyncClient,
    records: list[RequestRecord],
    sampling: Sampling,
    counter: ServerTokenCounter | None,
) -> None:
    """Fill in the output tokens of answers whose stream carried no usage. Called after the run's
    clock has stopped: a tokenizer request of `llama_cpp.server` waits for the model's lock, and
    during the run it would hold up the very server being measured."""
    for record in records:
        if not record.ok or record.counted_by:
            continue
        if record.finish == "length":
            record.output_tokens, record.counted_by = sampling.max_tokens, "length"
        elif counter is not None and (n := await counter.count(client, record.text)) is not None:
            record.output_tokens, record.counted_by = n, "tokenizer"
        else:
            record.output_tokens, record.counted_by = len(record.token_times), "chunks"
