"""Each API dialect's way to ask for a chat answer and to read one, so the same test runs in every
dialect. A dialect renders a dialect-free `Ask` as its HTTP request and parses its answers (plain
or streamed) into a dialect-free `Reply`; a new dialect is one more class here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tests.inprocess import ENDPOINT, ClientApp, InProcess, Response, bearer, sse_data, sse_json

Credential = Literal["valid", "missing", "forged"]
HI = [{"role": "user", "content": "Hi there"}]
# Shaped as a real access token (a malformed one is 100, not 110), but never issued.
FORGED_TOKEN = "24." + "0" * 32 + ".2592000.1798375918.157874-1"


@dataclass(frozen=True, slots=True)
class Ask:
    """A chat request, whatever the dialect.

    `max_tokens` is each dialect's answer-length field; `wire` fields go into the body as they are
    (a wrong type, say); `content` replaces the whole body (bytes that are not JSON, say)."""

    messages: list[dict[str, str]] = field(default_factory=lambda: list(HI))
    system: str | None = None
    stream: bool = False
    include_usage: bool = False
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    max_tokens: int | None = None
    endpoint: str = ENDPOINT
    credential: Credential = "valid"
    wire: dict[str, Any] = field(default_factory=dict)
    content: bytes | None = None


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An `Ask` as one dialect puts it on the wire: a POST of JSON (or of raw `content`)."""

    path: str
    headers: Mapping[str, str]
    body: dict[str, Any] = field(default_factory=dict)
    content: bytes | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer as the client reads it, in any dialect."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    finish: str  # "stop", "length" or "content_filter"
    flagged: bool = False
    # V2's safety `flag` and `ban_round` on the choice (the finishing chunk's, in a stream), and
    # its `prompt_tokens_details.cached_tokens`: None in the dialects that have none.
    flag: int | None = None
    ban_round: int | None = None
    cached_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """An error as the client reads it: the Qianfan V1 code (V2's code name in V2), and the HTTP
    status."""

    code: int | str
    status: int
    message: str


class Dialect:
    name: str
    # The rate-limit headers of every chat answer, refused ones too.
    rate_limit_headers: tuple[str, ...] = (
        "X-Ratelimit-Limit-Requests",
        "X-Ratelimit-Limit-Tokens",
        "X-Ratelimit-Remaining-Requests",
        "X-Ratelimit-Remaining-Tokens",
    )

    def secret(self, qf: InProcess, app: ClientApp) -> str:
        raise NotImplementedError

    def code(self, v1: int, v2: str) -> int | str:
        """The code a `Failure` of this dialect carries for an error: V1's, or V2's name."""
        return v1

    def request(self, secret: str, ask: Ask) -> HttpRequest:
        raise NotImplementedError

    def post(self, qf: InProcess, secret: str, ask: Ask) -> Response:
        sent = self.request(secret, ask)
        if sent.content is not None:
            return qf.client.post(sent.path, content=sent.content, headers=sent.headers)
        return qf.client.post(sent.path, json=sent.body, headers=sent.headers)

    def reply(self, response: Response, ask: Ask) -> Reply:
        """The answer of a plain or streamed reply, its framing checked on the way."""
        raise NotImplementedError

    def failure(self, response: Response) -> Failure:
        """The error of a reply refused before its answer began."""
        raise NotImplementedError

    def stream_failure(self, response: Response) -> tuple[str, Failure]:
        """A stream that began and then failed: the text sent before, and the error."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class QianfanV1(Dialect):
    """`/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{endpoint}?access_token=...`: errors as HTTP 200
    bodies with `error_code`, streams as sentence events with `is_end` on the last."""

    name = "v1"

    def secret(self, qf: InProcess, app: ClientApp) -> str:
        return qf.token(app)

    def request(self, secret: str, ask: Ask) -> HttpRequest:
        token = {"valid": secret, "missing": None, "forged": FORGED_TOKEN}[ask.credential]
        url = InProcess.v1_url(token, ask.endpoint)
        if ask.content is not None:
            return HttpRequest(url, {}, content=ask.content)
        body: dict[str, Any] = {"messages": ask.messages}
        fields = {
            "system": ask.system,
            "stream": ask.stream or None,
            "temperature": ask.temperature,
            "top_p": ask.top_p,
            "stop": ask.stop,
            "max_output_tokens": ask.max_tokens,
        }
        body.update({k: v for k, v in fields.items() if v is not None})
        return HttpRequest(url, {}, {**body, **ask.wire})

    def reply(self, response: Response, ask: Ask) -> Reply:
        assert response.status_code == 200
        if not ask.stream:
            assert response.headers["content-type"].startswith("application/json")
            body = response.json()
            assert "error_code" not in body, body
            assert body["object"] == "chat.completion" and body["id"].startswith("as-")
            return self._reply(body, body["result"], body["usage"]["completion_tokens"])
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_json(response)
        assert events and all("error_code" not in e for e in events), events
        assert [e["sentence_id"] for e in events] == list(range(len(events)))
        assert [e["is_end"] for e in events] == [False] * (len(events) - 1) + [True]
        assert len({e["id"] for e in events}) == 1
        prompt = events[0]["usage"]["prompt_tokens"]
        generated = 0
        for event in events:
            # Each event's usage: the prompt, its own tokens, and the running total.
            generated += event["usage"]["completion_tokens"]
            assert event["usage"]["prompt_tokens"] == prompt
            assert event["usage"]["total_tokens"] == prompt + generated
        text = "".join(e["result"] for e in events)
        return self._reply(events[-1], text, generated)

    @staticmethod
    def _reply(last: dict[str, Any], text: str, generated: int) -> Reply:
        usage = last["usage"]
        flagged = last["need_clear_history"]
        finish = "content_filter" if flagged else "length" if last["is_truncated"] else "stop"
        return Reply(
            text, usage["prompt_tokens"], generated, usage["total_tokens"], finish, flagged
        )

    def failure(self, response: Response) -> Failure:
        assert response.headers["content-type"].startswith("application/json")
        return self._failure(response.json(), response.status_code)

    @staticmethod
    def _failure(body: dict[str, Any], status: int) -> Failure:
        assert set(body) == {"error_code", "error_msg", "id"}, body
        assert body["id"].startswith("as-") and body["error_msg"]
        return Failure(body["error_code"], status, body["error_msg"])

    def stream_failure(self, response: Response) -> tuple[str, Failure]:
        assert response.headers["content-type"].startswith("text/event-stream")
        *answered, last = sse_json(response)
        assert all(not e["is_end"] for e in answered), "an is_end event before the error"
        return "".join(e["result"] for e in answered), self._failure(last, response.status_code)


class OpenAI(Dialect):
    """`/v1/chat/completions` with `Authorization: Bearer`: real HTTP statuses, streams as chunks,
    a finish chunk, an optional usage chunk, then `data: [DONE]`."""

    name = "openai"
    path = "/v1/chat/completions"
    id_prefix = "chatcmpl-"
    forged_key = "sk-qf-" + "0" * 40  # shaped as a key, never issued

    def secret(self, qf: InProcess, app: ClientApp) -> str:
        return qf.app_key(app)

    def request(self, secret: str, ask: Ask) -> HttpRequest:
        headers = {
            "valid": bearer(secret),
            "missing": {},
            "forged": bearer(self.forged_key),
        }[ask.credential]
        url = self.path
        if ask.content is not None:
            return HttpRequest(url, headers, content=ask.content)
        system = [{"role": "system", "content": ask.system}] if ask.system else []
        body: dict[str, Any] = {"model": ask.endpoint, "messages": system + ask.messages}
        fields = {
            "stream": ask.stream or None,
            "stream_options": {"include_usage": True} if ask.include_usage else None,
            "temperature": ask.temperature,
            "top_p": ask.top_p,
            "stop": ask.stop,
            "max_tokens": ask.max_tokens,
        }
        body.update({k: v for k, v in fields.items() if v is not None})
        return HttpRequest(url, headers, {**body, **ask.wire})

    def reply(self, response: Response, ask: Ask) -> Reply:
        assert response.status_code == 200, response.text
        if not ask.stream:
            body = response.json()
            assert body["object"] == "chat.completion" and body["id"].startswith(self.id_prefix)
            assert body["model"] == ask.endpoint
            (choice,) = body["choices"]
            assert choice["message"]["role"] == "assistant"
            usage = body["usage"]
            return Reply(
                choice["message"]["content"],
                usage["prompt_tokens"],
                usage["completion_tokens"],
                usage["total_tokens"],
                choice["finish_reason"],
                choice["finish_reason"] == "content_filter",
            )
        assert response.headers["content-type"].startswith("text/event-stream")
        assert sse_data(response)[-1] == "[DONE]"
        chunks = sse_json(response)
        assert all("error" not in c for c in chunks), chunks
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith(self.id_prefix)
        usage_chunks = [c for c in chunks if "usage" in c]
        if ask.include_usage:
            # The usage chunk comes last, after the finish, with no choices.
            assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0]
            assert chunks[-1]["choices"] == []
            chunks = chunks[:-1]
        else:
            assert not usage_chunks
        choices = [c["choices"][0] for c in chunks]
        assert choices[0]["delta"].get("role") == "assistant"
        finishes = [c["finish_reason"] for c in choices]
        assert finishes[:-1] == [None] * (len(finishes) - 1) and finishes[-1] is not None
        assert choices[-1]["delta"] == {}
        text = "".join(c["delta"].get("content", "") for c in choices)
        if not usage_chunks:
            return Reply(text, -1, -1, -1, finishes[-1], finishes[-1] == "content_filter")
        usage = usage_chunks[0]["usage"]
        return Reply(
            text,
            usage["prompt_tokens"],
            usage["completion_tokens"],
            usage["total_tokens"],
            finishes[-1],
            finishes[-1] == "content_filter",
        )

    def failure(self, response: Response) -> Failure:
        assert response.headers["content-type"].startswith("application/json")
        return self._failure(response.json(), response.status_code)

    def _failure(self, body: dict[str, Any], status: int) -> Failure:
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert error["message"] and error["type"]
        return Failure(int(error["code"]), status, error["message"])

    def stream_failure(self, response: Response) -> tuple[str, Failure]:
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = sse_data(response)
        assert payloads[-1] == "[DONE]", "a stream that failed must still end with [DONE]"
        *answered, last = [json.loads(p) for p in payloads[:-1]]
        assert all("error" not in c for c in answered)
        assert all(c["choices"][0]["finish_reason"] is None for c in answered), "finished"
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in answered)
        return text, self._failure(last, response.status_code)


class QianfanV2(OpenAI):
    """`/v2/chat/completions` with `Authorization: Bearer bce-v3/ALTAK-...`: OpenAI's shapes with
    `as-` ids, a safety `flag` and `ban_round` on every choice, cached prompt tokens in the usage,
    and errors as `{"error": {"code", "message", "type"}, "id"}` with V2's code names."""

    name = "v2"
    path = "/v2/chat/completions"
    id_prefix = "as-"
    forged_key = "bce-v3/ALTAK-" + "0" * 20 + "/" + "0" * 40
    rate_limit_headers = (
        "X-Ratelimit-Limit-Requests",
        "X-Ratelimit-Limit-Input-Tokens",
        "X-Ratelimit-Limit-Output-Tokens",
        "X-Ratelimit-Remaining-Requests",
        "X-Ratelimit-Remaining-Input-Tokens",
        "X-Ratelimit-Remaining-Output-Tokens",
    )

    def secret(self, qf: InProcess, app: ClientApp) -> str:
        return qf.v2_key(app)

    def code(self, v1: int, v2: str) -> int | str:
        return v2

    def reply(self, response: Response, ask: Ask) -> Reply:
        reply = super().reply(response, ask)  # OpenAI's framing and fields
        if not ask.stream:
            body = response.json()
            choices, usage = body["choices"], body["usage"]
        else:
            chunks = sse_json(response)
            choices = [c["choices"][0] for c in chunks if c["choices"]]
            usage = chunks[-1]["usage"] if ask.include_usage else None
        for choice in choices:
            assert isinstance(choice["flag"], int) and isinstance(choice["ban_round"], int), choice
        finishing = choices[-1]
        # A flag says the answer was filtered, and only then.
        assert (finishing["flag"] != 0) == reply.flagged, finishing
        cached = None
        if usage is not None:
            cached = usage["prompt_tokens_details"]["cached_tokens"]
            assert isinstance(cached, int) and 0 <= cached <= usage["prompt_tokens"], usage
        return replace(
            reply, flag=finishing["flag"], ban_round=finishing["ban_round"], cached_tokens=cached
        )

    def _failure(self, body: dict[str, Any], status: int) -> Failure:
        assert set(body) == {"error", "id"}, body
        assert body["id"].startswith("as-"), body
        error = body["error"]
        assert set(error) == {"code", "message", "type"}, error
        assert isinstance(error["code"], str) and error["message"] and error["type"], error
        return Failure(error["code"], status, error["message"])


V1 = QianfanV1()
OPENAI = OpenAI()
V2 = QianfanV2()
DIALECTS: list[Dialect] = [V1, OPENAI, V2]
