"""What the gateway adds: time to first token of an upstream, directly and through qfserve, in
each of qfserve's dialects.

Three upstreams, each a remote endpoint of one qfserve:
- llama-cpp-python's OpenAI server on the bundled model: what the target is about, a real model
  behind the gateway. Every request asks it the same question (`QUESTION`), so its prompt cache
  (llama-cpp-python keeps the last prompt's evaluated tokens) leaves only the prompt's last token
  to evaluate: a first token in about 20 ms, with a jitter of a few. A new question each time
  costs a prefill of about 200 ms on one thread of this machine, which varies by tens of ms from
  one request to the next even for the same question: the paired differences' p5-p95 spread was
  -39 to +61 ms in a run of 400 pairs that read 6.1 ms of gateway overhead (the run before read
  4.3). No affordable number of pairs makes that small next to 2 ms, and the gateway's own work
  does not depend on what the model computes. The model runs on one thread (`UPSTREAM_THREADS`),
  leaving a core to the gateway and the client, as a GPU server would leave the gateway's CPU
  alone;
- an upstream that answers at once (`instant_upstream`): the difference is then the gateway's
  own cost, with nothing to bury it;
- the same upstream pausing `PAUSE_SECONDS` before its first token, using no CPU meanwhile: a
  long prefill's wait without its jitter. qfserve then passes the first token on after sitting
  idle, with cold caches, which costs it more than back to back.

In front of each, every dialect of qfserve (`DIALECTS`) is paired with the upstream asked
directly on its OpenAI route: the same question, streaming, one request at a time, alternating
which path of a pair goes first; the dialects take turns pair by pair, so that the machine's
drift over the run falls on all of them alike. A Qianfan V1 stream carries sentence segments;
the qfserve under test is set to send each token as its own event (`V1_STREAM`), so that V1's
first event is its first token. Time to first token is the first event carrying answer text.
The target: qfserve adds under 2 ms to the median time to first token, in every dialect.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from qfserve.bench.client import Dialect, Sampling, Target, stream_chat
from qfserve.bench.peers import (
    Peer,
    qfserve_cli,
    start_instant_upstream,
    start_llama_cpp_server,
    start_qfserve,
)
from qfserve.bench.report import machine
from qfserve.bench.stats import distribution, percentile

TARGET_MS = 2.0
# Asked of every upstream by every request; the bundled model answers it from its prompt cache.
# Its answer must not start like a term of the safety lists: qfserve holds an answer's text back
# while a listed term could still complete, which is the guard's job, not a gateway cost. Asked
# "What is the capital of France?", the model answers "L'..." (as "lsd..." could) and each first
# token came out a token or two late through qfserve. Pairs where it happens are counted
# (`held_back`).
QUESTION = "What color is the sky?"
UPSTREAM_THREADS = 1
# qfserve's dialects, by the names `--dialects` takes, and how the report calls them.
DIALECTS: dict[str, Dialect] = {
    "v1": Dialect.QIANFAN,
    "openai": Dialect.OPENAI,
    "v2": Dialect.QIANFAN_V2,
}
DIALECT_LABELS = {"v1": "Qianfan V1", "openai": "OpenAI", "v2": "Qianfan V2"}
# Pairs per dialect in front of the pausing upstream; 4 x as many in front of the model and of
# the instant upstream (`FAST_FACTOR`).
DEFAULT_PAIRS = 200
# The model's paired differences spread over about 9 ms (p5-p95) and the instant upstream's
# over about 1.3; the pausing upstream's over about 3 ms, at 200 ms a pair. The model's pairs
# take most of the run's time.
FAST_FACTOR = 4
PAUSE_SECONDS = 0.1
# Every token its own V1 event: a segment is cut at one token and sent at once, not held for the
# next delta (`serving.chat._SegmentStream` flushes a held segment after `max_segment_seconds`).
V1_STREAM = {"min_segment_chars": 1, "max_segment_tokens": 1, "max_segment_seconds": 0.0}


@dataclass(frozen=True, slots=True)
class GatewayKeys:
    """The credential of each dialect, for the app the bench made: V1's access token, an OpenAI
    app key (`sk-qf-...`), a V2 API key (`bce-v3/ALTAK-...`)."""

    access_token: str
    app_key: str
    v2_key: str


async def run_gateway(
    *,
    model: Path,
    threads: int,
    requests: int,
    sampling: Sampling,
    console: Console,
    dialects: Sequence[str] = tuple(DIALECTS),
) -> dict[str, Any]:
    # Each server is stopped on the way out, in reverse order, whatever fails after it started.
    with tempfile.TemporaryDirectory(prefix="qfserve-gateway-") as folder, ExitStack() as stops:
        workdir = Path(folder)
        upstream = await start_llama_cpp_server(
            model=model, threads=UPSTREAM_THREADS, n_ctx=2048, workdir=workdir
        )
        stops.callback(upstream.stop)
        instant = await start_instant_upstream(workdir=workdir)
        stops.callback(instant.stop)
        pausing = await start_instant_upstream(workdir=workdir, first_token_delay=PAUSE_SECONDS)
        stops.callback(pausing.stop)
        config = workdir / "gateway.toml"
        config.write_text(
            stream_settings(V1_STREAM)
            + remote_endpoint("llama_2_7b", "llama_2_7b", upstream.target.base_url)
            + remote_endpoint("instant", "instant", instant.target.base_url)
            + remote_endpoint("pausing", "instant", pausing.target.base_url)
        )
        gateway = await start_qfserve(
            model=None, threads=threads, workdir=workdir / "gateway", config=config
        )
        stops.callback(gateway.stop)
        keys = await gateway_keys(gateway)
        sections = {
            "model_upstream": (upstream.target, "llama_2_7b", requests * FAST_FACTOR),
            "instant_upstream": (instant.target, "instant", requests * FAST_FACTOR),
            "pausing_upstream": (pausing.target, "pausing", requests),
        }
        measured: dict[str, Any] = {}
        for key, (direct, endpoint, pairs) in sections.items():
            vias = {
                dialect: through(
                    gateway, f"qfserve {DIALECT_LABELS[dialect]} -> {direct.name}", endpoint,
                    dialect=dialect, keys=keys,
                )
                for dialect in dialects
            }  # fmt: skip
            began = time.monotonic()
            by_dialect = await _pairs(direct, vias, pairs, sampling, console)
            measured[key] = {
                "upstream": direct.name,
                "pairs": pairs,
                # What the section took, to size its pairs against the run's length.
                "seconds": round(time.monotonic() - began, 1),
                "dialects": by_dialect,
            }
    return {
        "machine": machine(),
        "max_tokens": sampling.max_tokens,
        "question": QUESTION,
        "upstream_threads": UPSTREAM_THREADS,
        "target_ms": TARGET_MS,
        "dialects": list(dialects),
        "v1_stream": V1_STREAM,
        "pause_seconds": PAUSE_SECONDS,
        **measured,
    }


def stream_settings(settings: dict[str, float]) -> str:
    """A settings file's `[stream]` table (before any `[[endpoints]]`, which would swallow it)."""
    lines = [f"{name} = {value}" for name, value in settings.items()]
    return "\n".join(["[stream]", *lines, "", ""])


def remote_endpoint(name: str, model: str, upstream_url: str) -> str:
    """A settings file's `[[endpoints]]` table for one remote endpoint on one upstream."""
    return (
        f'[[endpoints]]\nname = "{name}"\nengine = "remote"\nmodel = "{model}"\n'
        f'upstreams = ["{upstream_url}"]\ncontext_length = 2048\n\n'
    )


async def gateway_keys(gateway: Peer) -> GatewayKeys:
    """An OpenAI app key and a V2 API key for the bench's app, made with qfserve's own CLI on
    the gateway's store, beside the access token it was started with."""
    token = gateway.target.access_token
    if gateway.app_id is None or token is None:
        raise RuntimeError("the gateway was started without an app")
    app_id = str(gateway.app_id)
    app_key = await qfserve_cli(gateway.env, "app", "key", "create", app_id, "--json")
    v2_key = await qfserve_cli(gateway.env, "app", "v2-key", "create", app_id, "--json")
    return GatewayKeys(token, str(app_key["key"]), str(v2_key["api_key"]))


def through(
    gateway: Peer,
    name: str,
    endpoint: str,
    *,
    dialect: str = "openai",
    keys: GatewayKeys | None = None,
) -> Target:
    """`gateway`'s streaming route of `dialect` to `endpoint`, with that dialect's credential
    from `keys`; without them, the gateway's access token (which every route accepts)."""
    base = gateway.target.base_url
    token = gateway.target.access_token
    if dialect == "v1":
        return Target(name, Dialect.QIANFAN, base, endpoint, access_token=token)
    if dialect == "openai":
        key = keys.app_key if keys else token
        return Target(name, Dialect.OPENAI, base + "/v1", endpoint, api_key=key)
    if dialect == "v2":
        key = keys.v2_key if keys else token
        return Target(name, Dialect.QIANFAN_V2, base, endpoint, api_key=key)
    raise ValueError(f"unknown dialect {dialect!r}: choose among {', '.join(DIALECTS)}")


def schedule(pairs: int, dialects: Sequence[str] = ("openai",)) -> list[tuple[int, str, bool]]:
    """(pair index, dialect, direct?) for each request in order: the dialects take turns pair by
    pair; each pair asks both paths once, one after the other. Which goes first alternates from
    one pair of a dialect to its next, and from one dialect to the next, so that neither path
    always follows the other."""
    order: list[tuple[int, str, bool]] = []
    for index in range(pairs):
        for turn, dialect in enumerate(dialects):
            direct_first = (index + turn) % 2 == 0
            order += [(index, dialect, direct_first), (index, dialect, not direct_first)]
    return order


@dataclass(slots=True)
class _Tally:
    """One dialect's requests in front of one upstream."""

    direct: list[float]
    via: list[float]
    paired: list[float]  # via minus direct, for the same question
    errors: list[str]
    # Pairs whose first text through qfserve was longer than directly: text held back.
    held_back: int = 0


async def _pairs(
    direct: Target,
    vias: dict[str, Target],
    pairs: int,
    sampling: Sampling,
    console: Console,
) -> dict[str, dict[str, Any]]:
    tallies = {dialect: _Tally([], [], [], []) for dialect in vias}
    messages = [{"role": "user", "content": QUESTION}]
    async with httpx.AsyncClient() as client:
        for target in (direct, *vias.values()):  # warm up: first requests pay for lazy set-up
            await stream_chat(client, target, messages, sampling)
        pair: dict[bool, float] = {}
        first_text: dict[bool, str] = {}
        for position, (index, dialect, is_direct) in enumerate(schedule(pairs, list(vias))):
            tally = tallies[dialect]
            record = await stream_chat(
                client, direct if is_direct else vias[dialect], messages, sampling
            )
            if record.first_text_s is None:
                tally.errors.append(record.error or "no answer text")
            else:
                pair[is_direct] = record.first_text_s * 1000
                first_text[is_direct] = record.first_text
                (tally.direct if is_direct else tally.via).append(pair[is_direct])
            if position % 2 == 1:  # the pair's second request
                if len(pair) == 2:
                    tally.paired.append(pair[False] - pair[True])
                    tally.held_back += held_back(first_text[True], first_text[False])
                pair, first_text = {}, {}
                console.print(f"gateway, {direct.name}: {index + 1}/{pairs}", end="\r")
    return {
        dialect: summary(tally, direct.name, vias[dialect].name, pairs)
        for dialect, tally in tallies.items()
    }


def held_back(direct_text: str, via_text: str) -> bool:
    """The through path's first event carried more than the upstream's first token."""
    return len(via_text) > len(direct_text) and via_text.startswith(direct_text)


def summary(tally: _Tally, direct_name: str, via_name: str, pairs: int) -> dict[str, Any]:
    # The median of per-pair differences: the difference of the two medians would mix in how the
    # machine's speed drifted over the run, which each pair sees on both paths alike.
    added = distribution(tally.paired)["p50"]
    return {
        "pairs": pairs,
        "ttft_ms": {direct_name: distribution(tally.direct), via_name: distribution(tally.via)},
        "added_ms_p50": added,
        "paired_differences_ms": distribution(tally.paired),
        "paired_spread_ms": [percentile(tally.paired, 5), percentile(tally.paired, 95)],
        "met": added is not None and added < TARGET_MS,
        "held_back": tally.held_back,
        "errors": len(tally.errors),
        "first_errors": sorted(set(tally.errors))[:3],
    }
