"""The batched engine on the bundled model: real llama.cpp, real KV cache, greedy decoding."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from qfserve.config import EngineSettings
from qfserve.engines.base import Delta, GenerationRequest, SamplingParams
from qfserve.engines.llamacpp import LlamaCppEngine
from qfserve.engines.registry import bundled_model_path
from qfserve.errors import EngineUnavailable, InternalError, OverloadedError
from tests.waiting import async_wait_until

pytestmark = pytest.mark.model

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "How many legs does a spider have?",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
    "What is the largest planet in our solar system?",
    "Give me a synonym for happy.",
    "What gas do plants absorb from the air?",
]


def chat(question: str) -> str:
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )


def make_engine(**overrides: object) -> LlamaCppEngine:
    settings = EngineSettings(n_threads=2, context_length=1024, n_parallel=8, seed=7)
    return LlamaCppEngine(settings.model_copy(update=overrides), str(bundled_model_path()), "test")


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    eng = make_engine()
    asyncio.run(eng.start())
    yield eng
    asyncio.run(eng.close())


def request(
    eng: LlamaCppEngine, question: str, max_tokens: int = 48, **sampling: Any
) -> GenerationRequest:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=1)
    params = dataclasses.replace(params, **sampling)
    return GenerationRequest(f"req-{question[:8]}", eng.tokenize(chat(question)), params)


async def collect(stream: AsyncIterator[Delta]) -> tuple[str, int, str | None]:
    text, count, reason = "", 0, None
    async for delta in stream:
        assert reason is None, "nothing may follow the delta with a finish reason"
        text, count, reason = text + delta.text, count + delta.token_count, delta.finish_reason
    return text, count, reason


async def first_delta(stream: AsyncIterator[Delta]) -> Delta:
    return await anext(stream)


async def wait_until_idle(eng: LlamaCppEngine, timeout: float = 5.0) -> float:
    start = time.monotonic()
    await async_wait_until(
        lambda: not (eng.stats().running or eng.stats().waiting), timeout, what="an idle engine"
    )
    return time.monotonic() - start


def test_one_greedy_request_answers_coherently(engine: LlamaCppEngine) -> None:
    assert engine.ready and engine.info.context_length == 1024
    assert engine.info.chat_template and engine.info.eos_token == "<|im_end|>"
    text, count, reason = asyncio.run(collect(engine.generate(request(engine, QUESTIONS[0]))))
    assert "Paris" in text
    assert reason == "stop" and 0 < count < 48


def test_concurrent_answers_start_like_sequential_ones() -> None:
    # A context of its own per sequence, not the shared pool: see test_batching.
    engine = make_engine(kv_cache_tokens=8 * 1024)

    async def scenario() -> None:
        await engine.start()
        try:
            alone = [(await collect(engine.generate(request(engine, q, 32))))[0] for q in QUESTIONS]
            together = await asyncio.gather(
                *(collect(engine.generate(request(engine, q, 32))) for q in QUESTIONS)
            )
            # Batched float arithmetic is not bit-identical to single-sequence decoding, so
            # answers may drift late; their first 20 tokens must agree.
            for a, (b, _, _) in zip(alone, together, strict=True):
                assert engine.tokenize(a)[:20] == engine.tokenize(b)[:20], (a, b)
        finally:
            await engine.close()

    asyncio.run(scenario())


def test_closing_the_iterator_frees_the_sequence(engine: LlamaCppEngine) -> None:
    async def scenario() -> float:
        stream = engine.generate(request(engine, "Write a very long story.", 500))
        for _ in range(3):
            await anext(stream)
        assert engine.stats().running == 1
        await stream.aclose()
        return await wait_until_idle(engine)

    assert asyncio.run(scenario()) < 1.0


def test_cancelling_the_consumer_task_frees_the_sequence(engine: LlamaCppEngine) -> None:
    async def scenario() -> float:
        got = asyncio.Event()

        async def consume() -> None:
            async for _ in engine.generate(request(engine, "Write a very long story.", 500)):
                got.set()

        task = asyncio.create_task(consume())
        await got.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await wait_until_idle(engine)

    assert asyncio.run(scenario()) < 1.0


def test_prefix_cache_serves_the_shared_history(engine: LlamaCppEngine) -> None:
    async def scenario() -> tuple[int, int, int]:
        first = request(engine, "Tell me about the moon.", 24)
        answer, _, _ = await collect(engine.generate(first))
        follow_up_prompt = (
            first.prompt_tokens
            + engine.tokenize(answer + "<|im_end|>\n<|im_start|>user\nAnd the sun?<|im_end|>\n")
            + engine.tokenize("<|im_start|>assistant\n")
        )
        before = engine.stats().cached_prompt_tokens
        params = SamplingParams(max_tokens=8, temperature=0.0)
        await collect(engine.generate(GenerationRequest("follow-up", follow_up_prompt, params)))
        return (
            engine.stats().cached_prompt_tokens - before,
            len(first.prompt_tokens),
            len(engine.tokenize(answer)),
        )

    cached, history, answer_tokens = asyncio.run(scenario())
    # The whole first prompt and (re-tokenized) most of the answer come from the KV cache.
    assert cached >= history + answer_tokens // 2


def test_max_tokens_and_stop_strings_set_the_finish_reason(engine: LlamaCppEngine) -> None:
    question = "Describe a cat in two sentences."
    text, count, reason = asyncio.run(collect(engine.generate(request(engine, question, 5))))
    assert (count, reason) == (5, "length") and text

    full, _, _ = asyncio.run(collect(engine.generate(request(engine, question, 24))))
    words = full.split()
    stop = words[2]
    cut = full.index(stop)
    text, _, reason = asyncio.run(
        collect(engine.generate(request(engine, question, 24, stop=(stop,))))
    )
    assert reason == "stop" and text == full[:cut]


def test_a_full_context_finishes_with_length() -> None:
    eng = make_engine(n_parallel=1, context_length=64)
    params = SamplingParams(max_tokens=100, temperature=0.0)

    async def scenario() -> list[tuple[str, int, str | None]]:
        await eng.start()
        try:
            too_long = GenerationRequest("too-long", [198] * 64, params)
            near_the_end = GenerationRequest("near-the-end", [198] * 58, params)
            return [await collect(eng.generate(r)) for r in (too_long, near_the_end)]
        finally:
            await eng.close()

    too_long, near_the_end = asyncio.run(scenario())
    assert too_long == ("", 0, "length")
    assert near_the_end[2] == "length" and near_the_end[1] == 6


def test_overload_and_wait_deadline_refuse_with_336100() -> None:
    eng = make_engine(n_parallel=1, max_waiting=1, max_wait_seconds=0.3)

    async def scenario() -> None:
        await eng.start()
        try:
            running = eng.generate(request(eng, "Write a very long story.", 1000))
            await anext(running)
            waiting = eng.generate(request(eng, QUESTIONS[1]))
            waiter = asyncio.create_task(first_delta(waiting))
            await async_wait_until(lambda: eng.stats().waiting == 1, what="a waiting request")
            with pytest.raises(OverloadedError) as refused:
                await anext(eng.generate(request(eng, QUESTIONS[2])))
            assert refused.value.code == 336100
            # The waiting request is refused too once its deadline passes.
            with pytest.raises(OverloadedError):
                await waiter
            await running.aclose()
            await wait_until_idle(eng)
        finally:
            await eng.close()

    asyncio.run(scenario())
    assert not eng.ready
    with pytest.raises(EngineUnavailable):
        asyncio.run(first_delta(eng.generate(request_for_closed())))


def request_for_closed() -> GenerationRequest:
    return GenerationRequest("closed", [1, 2, 3], SamplingParams(max_tokens=4))


def test_close_fails_what_is_in_flight() -> None:
    eng = make_engine()

    async def scenario() -> None:
        await eng.start()
        stream = eng.generate(request(eng, "Write a very long story.", 1000))
        await anext(stream)
        await eng.close()
        with pytest.raises(EngineUnavailable):
            async for _ in stream:
                pass

    asyncio.run(scenario())


def test_decode_failures_become_qianfan_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = make_engine(n_parallel=2)
    real_decode = llama_cpp.llama_decode
    codes: list[int] = []

    def failing_decode(ctx: object, batch: object) -> int:
        return codes.pop(0) if codes else int(real_decode(ctx, batch))

    async def scenario() -> None:
        await eng.start()
        monkeypatch.setattr(llama_cpp, "llama_decode", failing_decode)
        try:
            codes.append(-1)  # an invalid batch fails that batch's sequences only
            with pytest.raises(InternalError):
                await collect(eng.generate(request(eng, QUESTIONS[0], 4)))
            assert eng.ready
            assert (await collect(eng.generate(request(eng, QUESTIONS[0], 4))))[1] == 4
            codes.append(-3)  # a fatal error kills the engine
            with pytest.raises(EngineUnavailable):
                await collect(eng.generate(request(eng, QUESTIONS[0], 4)))
            await async_wait_until(lambda: not eng.ready, what="the engine down")
            with pytest.raises(EngineUnavailable):
                await first_delta(eng.generate(request(eng, QUESTIONS[0], 4)))
        finally:
            await eng.close()

    asyncio.run(scenario())


def test_a_model_that_cannot_load_is_unavailable(tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-model.gguf"
    garbage.write_bytes(b"GGUF" + b"\0" * 64)
    for path in (garbage, tmp_path / "missing.gguf"):
        eng = LlamaCppEngine(EngineSettings(n_threads=1), str(path), "broken")
        with pytest.raises(EngineUnavailable):
            asyncio.run(eng.start())
        assert not eng.ready
