"""Answers held to a GBNF grammar by the batched engine on the bundled model."""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import json
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import llama_cpp
import numpy as np
import pytest
from llama_cpp.llama_grammar import JSON_GBNF

import qfserve.engines.llamacpp as llamacpp_engine
from qfserve.engines.base import GenerationRequest, SamplingParams
from qfserve.engines.llamacpp import LlamaCppEngine
from qfserve.engines.sampling import SequenceSampler
from qfserve.errors import InternalError, InvalidArgument, OverloadedError
from tests.integration.test_llamacpp_engine import collect, make_engine, request, wait_until_idle
from tests.waiting import async_wait_until

pytestmark = pytest.mark.model

YES_NO = 'root ::= "yes" | "no"'
YES_NO_QUESTIONS = [
    "Is the sky blue? Answer yes or no.",
    "Is fire cold? Answer yes or no.",
    "Can a fish fly? Answer yes or no.",
    "Is Paris in France? Answer yes or no.",
]
JSON_QUESTIONS = [
    "Describe a cat as a JSON object with its name and age.",
    "Give the capital of France as JSON.",
    "List three colors as a JSON array.",
    "Describe a book as a JSON object with a title and an author.",
]


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    # A context per sequence: in a shared pool the greedy JSON answers depend on what earlier
    # tests left cached there, and one of them runs past its tokens listing keys.
    eng = make_engine(kv_cache_tokens=8 * 1024)
    asyncio.run(eng.start())
    yield eng
    asyncio.run(eng.close())


def held(eng: LlamaCppEngine, question: str, grammar: str, **sampling: Any) -> GenerationRequest:
    sampling.setdefault("max_tokens", 160)
    return dataclasses.replace(request(eng, question, **sampling), grammar=grammar)


def answers(
    eng: LlamaCppEngine, requests: list[GenerationRequest]
) -> list[tuple[str, int, str | None]]:
    async def together() -> list[tuple[str, int, str | None]]:
        return list(await asyncio.gather(*(collect(eng.generate(r)) for r in requests)))

    return asyncio.run(together())


def test_a_yes_no_grammar_answers_yes_or_no(engine: LlamaCppEngine) -> None:
    requests = [held(engine, q, YES_NO) for q in YES_NO_QUESTIONS]
    requests += [
        held(engine, q, YES_NO, temperature=0.9, seed=i) for i, q in enumerate(YES_NO_QUESTIONS)
    ]
    for text, count, reason in answers(engine, requests):
        assert text in ("yes", "no") and reason == "stop" and count >= 2


def test_the_json_grammar_answers_parseable_json(engine: LlamaCppEngine) -> None:
    requests = [held(engine, q, JSON_GBNF) for q in JSON_QUESTIONS[2:]]
    for text, _, reason in answers(engine, requests):
        assert reason == "stop", text
        json.loads(text)


def test_a_grammar_llama_cpp_cannot_parse_is_refused_before_generating(
    engine: LlamaCppEngine,
) -> None:
    before = engine.stats().generated_tokens

    async def first() -> None:
        await anext(engine.generate(held(engine, "Hello", "root ::= undefined-rule")))

    with pytest.raises(InvalidArgument):
        asyncio.run(first())
    assert engine.stats().generated_tokens == before and engine.stats().running == 0


def test_constrained_and_free_sequences_share_the_batch(engine: LlamaCppEngine) -> None:
    requests = [held(engine, q, JSON_GBNF) for q in JSON_QUESTIONS[:2]]
    requests += [held(engine, q, YES_NO) for q in YES_NO_QUESTIONS[:2]]
    requests += [
        request(engine, q, 32)
        for q in ("Tell me a story.", "Name a fruit.", "What is 2+2?", "Describe the sea.")
    ]
    results = answers(engine, requests)
    for text, _, reason in results[:2]:
        assert reason == "stop", text
        json.loads(text)
    assert all(text in ("yes", "no") for text, _, _ in results[2:4])
    assert all(reason in ("stop", "length") and count > 0 for _, count, reason in results[4:])


class Twins:
    """The engine's sampler, shadowed by a grammar-first one fed the same logits."""

    picks: ClassVar[list[tuple[int, int]]] = []
    made: ClassVar[list[Twins]] = []

    def __init__(
        self,
        params: SamplingParams,
        *,
        n_vocab: int,
        default_seed: int,
        grammar: Any,
        dry: Any = None,
    ) -> None:
        self.n_vocab = n_vocab
        self.fast = SequenceSampler(
            params, n_vocab=n_vocab, default_seed=default_seed, grammar=grammar, dry=dry
        )
        self.first = SequenceSampler(
            params,
            n_vocab=n_vocab,
            default_seed=default_seed,
            dry=dry,
            grammar=llama_cpp.llama_sampler_clone(grammar) if grammar else None,
            grammar_first=True,
        )
        self.made.append(self)

    def sample(self, ctx: Any, index: int) -> int:
        logits = llama_cpp.llama_get_logits_ith(ctx, index)
        logits = np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).copy()
        fast, first = self.fast.sample_logits(logits), self.first.sample_logits(logits)
        self.picks.append((fast, first))
        return fast

    def close(self) -> None:
        self.fast.close()
        self.first.close()


def test_greedy_picks_are_those_of_the_grammar_first_chain(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llamacpp_engine, "SequenceSampler", Twins)
    requests = [held(engine, q, JSON_GBNF, max_tokens=48) for q in JSON_QUESTIONS[:2]]
    requests += [held(engine, q, YES_NO, repeat_penalty=1.3) for q in YES_NO_QUESTIONS]
    answers(engine, requests)
    assert len(Twins.picks) > 60
    assert all(fast == first for fast, first in Twins.picks)
    # Most tokens the model picks keep to the grammar: the vocabulary is masked only for the rest.
    assert sum(twin.fast.resamples for twin in Twins.made) < len(Twins.picks) / 2


def test_a_grammar_that_allows_nothing_ends_only_its_own_sequence(engine: LlamaCppEngine) -> None:
    async def scenario() -> tuple[str, int, str | None]:
        free = asyncio.create_task(collect(engine.generate(request(engine, "Name a fruit.", 16))))
        with pytest.raises(InternalError):
            await collect(engine.generate(held(engine, "Hello", r'root ::= "\x00"')))
        return await free

    assert asyncio.run(scenario())[1] > 0
    assert engine.ready


class GrammarCount:
    """The grammar samplers copied for sequences and not freed yet, by address."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.live: set[int | None] = set()
        self.copied = 0
        real_clone, real_free = llama_cpp.llama_sampler_clone, llama_cpp.llama_sampler_free

        def clone(compiled: Any) -> Any:
            copy = real_clone(compiled)
            self.live.add(address(copy))
            self.copied += 1
            return copy

        def free(sampler: Any) -> None:
            self.live.discard(address(sampler))
            real_free(sampler)

        monkeypatch.setattr(llama_cpp, "llama_sampler_clone", clone)
        monkeypatch.setattr(llama_cpp, "llama_sampler_free", free)


def address(sampler: Any) -> int | None:
    return ctypes.cast(sampler, ctypes.c_void_p).value


def test_every_way_a_constrained_request_ends_frees_its_grammar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    count = GrammarCount(monkeypatch)
    eng = make_engine(n_parallel=1, max_waiting=1, max_wait_seconds=0.5)
    story = "Write a very long story."

    async def scenario() -> None:
        await eng.start()
        try:
            # Cancelled while generating, many times over.
            for i in range(40):
                stream = eng.generate(held(eng, story, JSON_GBNF, seed=i, temperature=0.8))
                await anext(stream)
                await stream.aclose()
            await wait_until_idle(eng)
            # Finished normally.
            await collect(eng.generate(held(eng, YES_NO_QUESTIONS[0], YES_NO)))
            running = eng.generate(request(eng, story, 1000))
            await anext(running)
            # Cancelled while waiting for a slot.
            waiting = asyncio.create_task(collect(eng.generate(held(eng, story, JSON_GBNF))))
            await async_wait_until(lambda: eng.stats().waiting == 1, what="a waiting request")
            waiting.cancel()
            await async_wait_until(lambda: eng.stats().waiting == 0, what="the wait cancelled")
            # Refused at once (no room to wait), then refused when the wait ran out.
            waiting = asyncio.create_task(collect(eng.generate(held(eng, story, JSON_GBNF))))
            await async_wait_until(lambda: eng.stats().waiting == 1, what="a waiting request")
            with pytest.raises(OverloadedError):
                await collect(eng.generate(held(eng, story, YES_NO)))
            with pytest.raises(OverloadedError):
                await waiting
            await running.aclose()
            await wait_until_idle(eng)
        finally:
            await eng.close()

    asyncio.run(scenario())
    assert count.copied == 44
    assert not count.live


def test_a_request_cancelled_while_its_grammar_compiles_frees_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    count = GrammarCount(monkeypatch)
    eng = make_engine(n_parallel=1)
    entered, release = threading.Event(), threading.Event()

    async def scenario() -> None:
        await eng.start()
        assert eng._grammars is not None
        real_sampler = eng._grammars.sampler

        def slow_sampler(grammar: str) -> Any:
            entered.set()
            release.wait(10)
            return real_sampler(grammar)

        monkeypatch.setattr(eng._grammars, "sampler", slow_sampler)
        try:
            task = asyncio.create_task(collect(eng.generate(held(eng, "Hi", YES_NO))))
            await async_wait_until(entered.is_set, what="the grammar compiling")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            release.set()
            await async_wait_until(
                lambda: count.copied == 1 and not count.live, what="the grammar freed"
            )
        finally:
            release.set()
            await eng.close()

    asyncio.run(scenario())
