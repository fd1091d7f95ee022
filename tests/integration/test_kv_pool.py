"""The KV pool shared by the slots, on the bundled model: a pool too small for every slot's
longest answer makes requests queue, and each still gets its whole answer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from qfserve.config import EngineSettings
from qfserve.engines.base import GenerationRequest, SamplingParams
from qfserve.engines.llamacpp import LlamaCppEngine
from qfserve.engines.model import LlamaModel
from qfserve.engines.registry import bundled_model_path
from tests.integration.test_llamacpp_engine import QUESTIONS, chat, collect

pytestmark = pytest.mark.model

CONTEXT = 200
N_PARALLEL = 4
# Each request reserves its prompt (about 30 tokens) and this many answer tokens: two at a time
# fit in a pool of two contexts, where the slots would take four.
MAX_TOKENS = 150


def make_engine(kv_cache_tokens: int) -> LlamaCppEngine:
    settings = EngineSettings(
        n_threads=2,
        context_length=CONTEXT,
        n_parallel=N_PARALLEL,
        seed=7,
        # Small steps and a pool under 512 cells keep every attention on the kernel path that
        # adds a sequence's cells alone, in order: ggml takes other paths for 64 queries or
        # more, and for one query over 512 cells or more, whose sums depend on where the cells
        # of other sequences are.
        prefill_chunk=24,
        max_wait_seconds=600,  # the queue is the point here, however slow the machine
        cache_ram_mb=0,
        kv_cache_tokens=kv_cache_tokens,
    )
    return LlamaCppEngine(settings, str(bundled_model_path()), "test")


@dataclass
class Observed:
    answers: list[tuple[str, int, str | None]] = field(default_factory=list)
    most_running: int = 0
    queued_beside_an_idle_slot: bool = False
    most_cells_held: int = 0


async def ask_all(eng: LlamaCppEngine) -> Observed:
    seen = Observed()
    done = False

    async def watch() -> None:
        while not done:
            stats = eng.stats()
            seen.most_running = max(seen.most_running, stats.running)
            if stats.waiting and stats.running < N_PARALLEL:
                seen.queued_beside_an_idle_slot = True
            held = stats.kv_cells_reserved + stats.kv_cells_cached
            seen.most_cells_held = max(seen.most_cells_held, held)
            await asyncio.sleep(0.002)

    await eng.start()
    watcher = asyncio.create_task(watch())
    try:
        params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, seed=1)
        requests = [
            GenerationRequest(f"q{i}", eng.tokenize(chat(q)), params)
            for i, q in enumerate(QUESTIONS)
        ]
        seen.answers = list(await asyncio.gather(*(collect(eng.generate(r)) for r in requests)))
    finally:
        done = True
        await watcher
        await eng.close()
    return seen


def test_a_small_pool_queues_requests_and_answers_like_a_big_one() -> None:
    small = asyncio.run(ask_all(make_engine(2 * CONTEXT)))
    big = asyncio.run(ask_all(make_engine(N_PARALLEL * CONTEXT)))
    assert big.most_running == N_PARALLEL
    assert small.queued_beside_an_idle_slot and small.most_running == 2
    assert 0 < small.most_cells_held <= 2 * CONTEXT
    model = LlamaModel(str(bundled_model_path()))
    try:
        for (text, count, reason), (expected, _, _) in zip(small.answers, big.answers, strict=True):
            assert reason in ("stop", "length") and 0 < count <= MAX_TOKENS
            # In a shared pool a sequence's cells sit among other sequences', and once the pool
            # wraps around they are no longer in order: the float sums differ, so a long answer
            # may drift late.
            assert model.tokenize(text)[:40] == model.tokenize(expected)[:40], (text, expected)
    finally:
        model.close()


def test_an_evicted_cached_prefix_is_saved_to_ram_and_comes_back() -> None:
    settings = EngineSettings(
        n_threads=2, context_length=256, kv_cache_tokens=256, n_parallel=2, seed=7
    )
    eng = LlamaCppEngine(settings, str(bundled_model_path()), "test")
    follow_up = "<|im_start|>user\nAnd one more?<|im_end|>\n<|im_start|>assistant\n"

    async def answer(prompt: list[int], max_tokens: int) -> tuple[str, int | None]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=1)
        text = ""
        async for delta in eng.generate(GenerationRequest("r", prompt, params)):
            text += delta.text
            if delta.finish_reason is not None:
                return text, delta.cached_tokens
        raise AssertionError("no finish reason")

    async def scenario() -> tuple[list[int], int | None]:
        await eng.start()
        try:
            histories = []
            for question in QUESTIONS[:2]:  # one conversation cached in each slot
                prompt = eng.tokenize(chat(question))
                text, _ = await answer(prompt, 8)
                histories.append(prompt + eng.tokenize(text + "<|im_end|>\n"))
            assert eng.stats().kv_cells_cached > 0
            # A long answer needs more cells than the slot it takes plus what is free: the other
            # slot's conversation is evicted, saved to RAM first.
            await answer(eng.tokenize(chat(QUESTIONS[2])), 200)
            ram = {t.tier: t for t in eng.stats().prefix_tiers}["ram"]
            assert ram.entries == 2
            # Both come back from RAM (the first's slot was taken too).
            cached = []
            for history in histories:
                _, n = await answer(history + eng.tokenize(follow_up), 4)
                cached.append(n)
            return [len(h) for h in histories], cached[1]
        finally:
            await eng.close()

    lengths, cached = asyncio.run(scenario())
    assert cached is not None and cached >= lengths[1] - 8, (lengths, cached)
