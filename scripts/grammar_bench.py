"""What a grammar costs the embedded engine's decoding, in-process on the bundled model.

Scenarios, each run `--rounds` times in rotation on one engine (8 slots):
  c1 free / c1 json    one greedy request, free or held to llama-cpp-python's JSON grammar;
  c8 free / c8 json    eight at once;
  free+7free           c8 free, seen from one free request (the first);
  free+7json           one free request decoded beside seven held to the JSON grammar.
Prints per scenario the median over rounds of: the decode speed of the requests measured (tokens
after the first over the time after the first, per request, then their mean), the batch's
tokens per wall second, and the tokens generated (a short answer makes a faster batch).

Compare source trees by running it under each, alternately (the machine drifts between runs):
    PYTHONPATH=/tmp/before .venv/bin/python scripts/grammar_bench.py
    PYTHONPATH=$PWD .venv/bin/python scripts/grammar_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass

from llama_cpp.llama_grammar import JSON_GBNF

from qfserve.config import EngineSettings
from qfserve.engines.base import GenerationRequest, SamplingParams
from qfserve.engines.llamacpp import LlamaCppEngine
from qfserve.engines.registry import bundled_model_path

FREE_QUESTION = "Write a long story about a dragon who learns to cook."
JSON_QUESTION = (
    "Answer in JSON: an array of 20 European countries, each an object with its name, capital, "
    "population and three famous dishes."
)
# (name, requests as "free" or "json", how many of them, from the first, are measured)
SCENARIOS = [
    ("c1 free", ["free"], 1),
    ("c1 json", ["json"], 1),
    ("c8 free", ["free"] * 8, 8),
    ("c8 json", ["json"] * 8, 8),
    ("free+7free", ["free"] * 8, 1),
    ("free+7json", ["free"] + ["json"] * 7, 1),
]


@dataclass
class Timing:
    tokens: int
    first: float
    last: float

    @property
    def decode_rate(self) -> float:
        return (self.tokens - 1) / (self.last - self.first) if self.last > self.first else 0.0


def chat(question: str) -> str:
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )


async def timed(engine: LlamaCppEngine, request: GenerationRequest) -> Timing:
    tokens, first, last = 0, 0.0, 0.0
    async for delta in engine.generate(request):
        if delta.token_count:
            last = time.perf_counter()
            first = first or last
            tokens += delta.token_count
    return Timing(tokens, first, last)


async def run(rounds: int, max_tokens: int) -> None:
    settings = EngineSettings(n_threads=2, context_length=1024, n_parallel=8, seed=7)
    engine = LlamaCppEngine(settings, str(bundled_model_path()), "bench")
    await engine.start()
    try:
        prompts = {
            q: engine.tokenize(chat(question))
            for q, question in (("free", FREE_QUESTION), ("json", JSON_QUESTION))
        }
        grammars = {"free": None, "json": JSON_GBNF}
        results: dict[str, list[tuple[float, float, int]]] = {name: [] for name, _, _ in SCENARIOS}
        for r in range(rounds):
            shift = r % len(SCENARIOS)
            for name, kinds, measured in SCENARIOS[shift:] + SCENARIOS[:shift]:
                requests = [
                    GenerationRequest(
                        f"{name}-{i}",
                        prompts[kind],
                        # The others outlast the one measured, so it is decoded beside all 7.
                        SamplingParams(
                            max_tokens=max_tokens * (1 if i < measured else 2), temperature=0.0
                        ),
                        grammar=grammars[kind],
                    )
                    for i, kind in enumerate(kinds)
                ]
                start = time.perf_counter()
                timings = await asyncio.gather(*(timed(engine, q) for q in requests))
                wall = time.perf_counter() - start
                rate = statistics.fmean(t.decode_rate for t in timings[:measured])
                total = sum(t.tokens for t in timings)
                results[name].append((rate, total / wall, total))
        print(f"{'scenario':<12} {'decode tok/s':>12} {'batch tok/s':>12} {'tokens':>7}")
        for name, runs in results.items():
            rate, batch, total = (statistics.median(column) for column in zip(*runs, strict=True))
            print(f"{name:<12} {rate:>12.1f} {batch:>12.1f} {total:>7.0f}")
    finally:
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=96, help="max tokens per measured answer")
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.tokens))


if __name__ == "__main__":
    main()
