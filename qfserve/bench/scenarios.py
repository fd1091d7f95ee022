"""The targets beyond plain load: a growing conversation, and clients that all go away."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from qfserve.bench.client import TIMEOUT, Dialect, Sampling, Target, request_body, stream_chat
from qfserve.bench.loops import loops
from qfserve.bench.runner import client_for
from qfserve.bench.sse import data_payload
from qfserve.bench.stats import ratio
from qfserve.bench.workload import Conversation, Prompt, request_messages

RUNNING = "qfserve_running_sequences"
QUEUED = "qfserve_queue_depth"
# Qianfan's smallest max_output_tokens: the probe's one event comes after prefill and two decode
# steps, so its time is the turn's time to first token plus one step, the same for every turn.
PROBE_TOKENS = 2
# Clients queued behind full batch slots get no first event until a slot frees, which may take
# the whole answer of another: past this grace after the first event, the disconnect goes ahead.
FIRST_EVENT_GRACE_S = 3.0
# Long answers, so that every sequence is still decoding when its client leaves.
DISCONNECT_MAX_TOKENS = 512
START_TIMEOUT_S = 120.0
POLL_S = 0.02
SETTLE_S = 30.0
STAY_ZERO_S = 1.0


@dataclass(slots=True)
class _Playing:
    conversation: Conversation
    history: list[dict[str, str]] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.turns) and self.turns[-1]["error"] is not None


async def run_conversations(
    target: Target, conversations: Sequence[Conversation], sampling: Sampling
) -> list[dict[str, Any]]:
    """Play the conversations side by side: turn 1 of each, then turn 2 of each, and so on. Each
    turn resends the whole history with the model's own earlier answers (what a chat app does,
    and what a prefix cache is for), each answer trimmed to the conversation's budget so that
    the last turn lands just under the spec's limit.

    Side by side, because a server has many users: the request before a turn is another
    conversation's, so a cache that keeps only the last prompt (as `llama_cpp.Llama` does) finds
    nothing, and only one that keeps several histories does."""
    playing = [_Playing(c) for c in conversations]
    longest = max((len(c.turns) for c in conversations), default=0)
    async with client_for(1) as client:
        for number in range(1, longest + 1):
            for play in playing:
                if not play.failed and number <= len(play.conversation.turns):
                    await _play_turn(client, target, play, number, sampling)
    return [_result(target, play) for play in playing]


async def _play_turn(
    client: httpx.AsyncClient, target: Target, play: _Playing, number: int, sampling: Sampling
) -> None:
    """Two requests with the same messages: a 2-token probe, whose one event times the turn's
    prefill, then the answer that goes into the history. The probe comes first, so it meets
    the cache exactly as the conversation's previous answer left it."""
    question = play.conversation.turns[number - 1]
    messages = [*play.history, {"role": "user", "content": question}]
    probe = await stream_chat(
        client, target, messages, dataclasses.replace(sampling, max_tokens=PROBE_TOKENS)
    )
    answer = await stream_chat(client, target, messages, sampling)
    play.turns.append(
        {
            "turn": number,
            "history_chars": sum(len(m["content"]) for m in messages),
            "prompt_tokens": probe.prompt_tokens,
            "ttft_s": probe.ttft_s,
            "answer_chars": len(answer.text),
            "loops": loops(answer.text) if answer.ok else None,
            "error": probe.error or answer.error,
        }
    )
    # An empty assistant message would be refused by the spec's validation.
    kept = answer.text[: play.conversation.answer_budget()] or "OK."
    play.history += [
        {"role": "user", "content": question},
        {"role": "assistant", "content": kept},
    ]


def _result(target: Target, play: _Playing) -> dict[str, Any]:
    turns = play.turns
    complete = len(turns) == len(play.conversation.turns) and not play.failed
    return {
        "peer": target.name,
        "conversation": play.conversation.id,
        "lang": play.conversation.lang,
        "turns": turns,
        "ttft_ratio_last_to_first": (
            ratio(turns[-1]["ttft_s"], turns[0]["ttft_s"]) if complete else None
        ),
    }


def gauge_value(text: str, name: str) -> float | None:
    """The sum over all label sets of a metric in Prometheus' text format; None if absent."""
    total: float | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(name + "{"):
            rest = line[line.rindex("}") + 1 :]
        elif line.startswith(name + " "):
            rest = line[len(name) :]
        else:
            continue
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        total = value if total is None else total + value
    return total


async def read_gauges(client: httpx.AsyncClient, url: str) -> dict[str, float | None] | None:
    """Running sequences and queue depth; None when the server has no such metrics."""
    try:
        response = await client.get(url)
    except httpx.HTTPError:
        return None
    running = gauge_value(response.text, RUNNING) if response.status_code == 200 else None
    if running is None:
        return None
    return {"running": running, "queued": gauge_value(response.text, QUEUED)}


async def run_disconnect(
    target: Target, prompts: Sequence[Prompt], sampling: Sampling, clients: int = 16
) -> dict[str, Any]:
    """Open `clients` streams, wait for their first events, drop them all at once, and time how
    long `qfserve_running_sequences` takes to read 0 on `GET /metrics`."""
    result: dict[str, Any] = {"peer": target.name, "clients": clients, "available": False}
    if target.dialect is not Dialect.QIANFAN:
        result["note"] = "only for qfserve's Qianfan route"
        return result
    metrics_url = target.base_url.rstrip("/") + "/metrics"
    long = dataclasses.replace(sampling, max_tokens=DISCONNECT_MAX_TOKENS)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as poller:
        if await read_gauges(poller, metrics_url) is None:
            result["note"] = f"not available: GET /metrics has no {RUNNING}"
            return result
        result["available"] = True
        first_events: list[float] = []
        errors: list[str] = []
        someone, everyone = asyncio.Event(), asyncio.Event()
        began = time.perf_counter()

        async def hold(index: int) -> None:
            body = request_body(target, request_messages(prompts, index, "d"), long)
            # A client of its own per stream: leaving its block closes that stream's connection.
            async with (
                httpx.AsyncClient(timeout=TIMEOUT) as client,
                client.stream(
                    "POST", target.chat_url(), params=target.params(), json=body
                ) as response,
            ):
                if "event-stream" not in response.headers.get("content-type", ""):
                    errors.append((await response.aread()).decode("utf-8", "replace")[:200])
                    return
                async for line in response.aiter_lines():
                    if data_payload(line) is not None:
                        first_events.append(time.perf_counter() - began)
                        someone.set()
                        if len(first_events) == clients:
                            everyone.set()
                        # Hold the stream open and read no more, until cancelled.
                        await asyncio.Event().wait()

        tasks = [asyncio.create_task(hold(i)) for i in range(clients)]
        # Until a first event, or every stream has failed, or the server seems stuck.
        waiter = asyncio.create_task(someone.wait())
        await asyncio.wait(
            [waiter, *tasks], timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everyone.wait(), FIRST_EVENT_GRACE_S)
        before = await read_gauges(poller, metrics_url)
        dropped = time.perf_counter()
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        closed_s = time.perf_counter() - dropped
        errors += [repr(o) for o in outcomes if isinstance(o, Exception)]
        seconds_to_zero, after = await _until_zero(poller, metrics_url, dropped)
    result.update(
        {
            "streaming_at_disconnect": len(first_events),
            "running_before": before and before["running"],
            "queued_before": before and before["queued"],
            "all_closed_s": closed_s,
            "seconds_to_zero": seconds_to_zero,
            "stayed_zero_s": STAY_ZERO_S if after else None,
            "errors": errors[:3],
        }
    )
    return result


async def _until_zero(
    poller: httpx.AsyncClient, url: str, since: float
) -> tuple[float | None, bool]:
    """Seconds from `since` until running sequences read 0, and whether they (and the queue)
    then stay at 0: a queued request the engine started after its client left would show."""
    reached: float | None = None
    while time.perf_counter() - since < SETTLE_S:
        gauges = await read_gauges(poller, url)
        if gauges is not None and gauges["running"] == 0:
            reached = time.perf_counter() - since
            break
        await asyncio.sleep(POLL_S)
    if reached is None:
        return None, False
    checked_until = time.perf_counter() + STAY_ZERO_S
    while time.perf_counter() < checked_until:
        gauges = await read_gauges(poller, url)
        if gauges is None or gauges["running"] != 0 or (gauges["queued"] or 0) != 0:
            return reached, False
        await asyncio.sleep(POLL_S)
    return reached, True
