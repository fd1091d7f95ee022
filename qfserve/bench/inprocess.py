"""The embedded engine measured in this process, without HTTP: what the kernel and loop-guard
comparisons share. Prompts go through the model's chat template as the server renders them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from qfserve.bench.workload import Prompt
from qfserve.chat.conversation import Message
from qfserve.chat.template import ChatTemplate
from qfserve.config import EngineSettings
from qfserve.engines.base import GenerationRequest, SamplingParams
from qfserve.engines.llamacpp import LlamaCppEngine


@dataclass(slots=True)
class Answer:
    """One generation, timed from its submission (seconds)."""

    text: str = ""
    tokens: int = 0
    first_s: float | None = None
    last_s: float = 0.0
    finish: str | None = None

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens after the first over the time after the first."""
        if self.first_s is None or self.tokens < 2 or self.last_s <= self.first_s:
            return None
        return (self.tokens - 1) / (self.last_s - self.first_s)


@asynccontextmanager
async def started(model: Path, settings: EngineSettings) -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(settings, str(model), "bench")
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


def chat_tokens(engine: LlamaCppEngine, question: str) -> list[int]:
    """`question` as the only user message, through the model's template with its default
    system prompt, as the server would send it."""
    text = ChatTemplate(engine.info).render([Message("user", question)], None)
    return engine.tokenize(text)


async def generate(
    engine: LlamaCppEngine, prompt: list[int], sampling: SamplingParams, name: str = "bench"
) -> Answer:
    answer = Answer()
    parts: list[str] = []
    began = time.perf_counter()
    async for delta in engine.generate(GenerationRequest(name, prompt, sampling)):
        now = time.perf_counter() - began
        if delta.token_count:
            if answer.first_s is None:
                answer.first_s = now
            answer.last_s = now
            answer.tokens += delta.token_count
        parts.append(delta.text)
        answer.finish = delta.finish_reason or answer.finish
    answer.text = "".join(parts)
    return answer


async def answer_all(
    engine: LlamaCppEngine,
    prompts: Sequence[Prompt],
    sampling: SamplingParams,
    concurrency: int,
) -> tuple[list[Answer], float]:
    """Every prompt answered, `concurrency` at a time; the answers in prompt order and the wall
    time of the whole run."""
    limit = asyncio.Semaphore(concurrency)
    tokens = [chat_tokens(engine, p.text) for p in prompts]

    async def one(i: int) -> Answer:
        async with limit:
            return await generate(engine, tokens[i], sampling, f"bench-{i}")

    began = time.perf_counter()
    answers = await asyncio.gather(*(one(i) for i in range(len(prompts))))
    return list(answers), time.perf_counter() - began
