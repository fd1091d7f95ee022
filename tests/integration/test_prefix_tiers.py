"""The prefix cache's RAM and disk tiers on the bundled model: real llama.cpp states, greedy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qfserve.config import EngineSettings
from qfserve.engines.base import Delta, GenerationRequest, SamplingParams, TierStats
from qfserve.engines.llamacpp import LlamaCppEngine
from qfserve.engines.model import LlamaModel
from qfserve.engines.registry import bundled_model_path

pytestmark = pytest.mark.model

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
TOPICS = ["the moon", "volcanoes", "honey bees", "the river Nile"]


def question(topic: str) -> str:
    return (
        f"<|im_start|>user\nI am writing a school report about {topic}. Tell me three facts "
        f"about {topic} that a ten-year-old would find surprising, and explain each one in a "
        f"sentence or two.<|im_end|>\n<|im_start|>assistant\n"
    )


def make_engine(**overrides: object) -> LlamaCppEngine:
    # Two slots share a pool of one and a half contexts (states saved from and restored into it).
    settings = EngineSettings(
        n_threads=2, context_length=1024, kv_cache_tokens=1536, n_parallel=2, seed=7
    )
    return LlamaCppEngine(settings.model_copy(update=overrides), str(bundled_model_path()), "test")


async def answer(eng: LlamaCppEngine, prompt: list[int], max_tokens: int = 16) -> tuple[str, int]:
    """The greedy answer's text and the prompt tokens the engine did not prefill."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=1)
    text, cached = "", -1
    stream: AsyncIterator[Delta] = eng.generate(GenerationRequest("r", prompt, params))
    async for delta in stream:
        text += delta.text
        if delta.finish_reason is not None:
            cached = delta.cached_tokens if delta.cached_tokens is not None else -1
    return text, cached


def tiers(eng: LlamaCppEngine) -> dict[str, TierStats]:
    return {t.tier: t for t in eng.stats().prefix_tiers}


def test_a_restored_state_continues_like_the_slot_that_held_it() -> None:
    eng = make_engine(n_parallel=1)

    async def scenario() -> None:
        await eng.start()
        try:
            prompt = eng.tokenize(SYSTEM + question("the moon"))
            fresh, cached = await answer(eng, prompt)
            assert cached == 0
            # Asked again at once: the slot itself holds the prompt.
            from_slot, cached = await answer(eng, prompt)
            assert cached == len(prompt) - 1
            # Another conversation takes the only slot; the moon's state goes to RAM...
            await answer(eng, eng.tokenize(SYSTEM + question("volcanoes")), 4)
            assert tiers(eng)["ram"].entries == 1
            # ...and comes back from there, cut to the prompt (it also held the answer).
            restored, cached = await answer(eng, prompt)
            assert cached == len(prompt) - 1
            ram = tiers(eng)["ram"]
            assert ram.hits == 1 and ram.restored_tokens == len(prompt) - 1
            # The same KV bytes under the same last token: the same greedy answer.
            assert restored == from_slot
            # A prefilled prompt's logits come from a batched decode: they may drift late.
            assert eng.tokenize(restored)[:8] == eng.tokenize(fresh)[:8], (restored, fresh)

            # A state llama.cpp refuses (its magic number damaged here): the slot is cleared and
            # the prompt prefilled as if nothing had been saved.
            await answer(eng, eng.tokenize(SYSTEM + question("volcanoes")), 4)
            assert eng._tiers is not None
            entry, _ = eng._tiers.ram.find(prompt)
            assert entry is not None
            entry.state[0:4] = b"\0\0\0\0"
            before = tiers(eng)["ram"]
            refused, cached = await answer(eng, prompt)
            assert cached == 0 and refused == fresh
            # Dropped: what RAM still has of the prompt is another conversation's opening.
            assert eng._tiers.ram.find(prompt)[1] < len(prompt) // 2
            after = tiers(eng)["ram"]
            assert (after.hits, after.misses) == (before.hits, before.misses + 1)
        finally:
            await eng.close()

    asyncio.run(scenario())


def run_conversations(eng: LlamaCppEngine) -> list[tuple[int, int]]:
    """Four conversations over two slots, round robin, two turns each: per returning turn, the
    cached tokens it reported and the length of the history it repeats."""

    async def scenario() -> list[tuple[int, int]]:
        await eng.start()
        try:
            histories: list[list[int]] = []
            for topic in TOPICS:
                prompt = eng.tokenize(SYSTEM + question(topic))
                text, _ = await answer(eng, prompt, 8)
                histories.append(prompt + eng.tokenize(text + "<|im_end|>\n"))
            returning = []
            for history in histories:
                follow_up = "<|im_start|>user\nAnd one more?<|im_end|>\n<|im_start|>assistant\n"
                _, cached = await answer(eng, history + eng.tokenize(follow_up), 4)
                returning.append((cached, len(history)))
            return returning
        finally:
            await eng.close()

    return asyncio.run(scenario())


def test_more_conversations_than_slots_come_back_to_their_cache_from_ram() -> None:
    eng = make_engine()
    returning = run_conversations(eng)
    # Each returning turn finds its slot taken by a later conversation; its first turn's prompt
    # and most of its answer (re-tokenized) come back from RAM.
    for cached, history in returning:
        assert cached >= history - 8, returning
    ram = tiers(eng)["ram"]
    assert ram.hits == 4 and ram.bytes <= ram.budget_bytes
    assert eng.stats().cached_prompt_tokens >= sum(cached for cached, _ in returning)


def test_no_ram_budget_turns_the_tier_off() -> None:
    eng = make_engine(cache_ram_mb=0)
    returning = run_conversations(eng)
    model = LlamaModel(str(bundled_model_path()))
    try:
        system = len(model.tokenize(SYSTEM))
    finally:
        model.close()
    # Only the shared opening of the template, at most, from another conversation's slot.
    for cached, _ in returning:
        assert cached <= system + 16, returning
    assert eng.stats().prefix_tiers == ()


def test_the_disk_tier_serves_a_returning_turn_after_a_restart(tmp_path: Path) -> None:
    settings = {"n_parallel": 1, "cache_dir": str(tmp_path), "cache_ram_mb": 64}

    async def first_turn() -> list[int]:
        eng = make_engine(**settings)
        await eng.start()
        try:
            prompt = eng.tokenize(SYSTEM + question("honey bees"))
            text, _ = await answer(eng, prompt, 8)
            return prompt + eng.tokenize(text + "<|im_end|>\n")
        finally:
            await eng.close()  # writes the slot's state to disk

    async def returning_turn(**changed: object) -> tuple[str, int, dict[str, TierStats]]:
        eng = make_engine(**{**settings, **changed})
        await eng.start()
        try:
            follow_up = "<|im_start|>user\nAnd one more?<|im_end|>\n<|im_start|>assistant\n"
            text, cached = await answer(eng, history + eng.tokenize(follow_up), 8)
            return text, cached, tiers(eng)
        finally:
            await eng.close()

    history = asyncio.run(first_turn())
    assert list(tmp_path.iterdir()), "the state was written"
    text, cached, after_restart = asyncio.run(returning_turn())
    assert cached >= len(history) - 8
    assert after_restart["disk"].hits == 1 and after_restart["disk"].entries >= 1
    assert after_restart["disk"].bytes <= after_restart["disk"].budget_bytes

    # Other KV settings (here the context size): the saved state is never restored.
    other_text, other_cached, other = asyncio.run(returning_turn(context_length=512))
    assert other_cached == 0 and other["disk"].hits == 0
    assert text.split()[:3] == other_text.split()[:3], (text, other_text)
