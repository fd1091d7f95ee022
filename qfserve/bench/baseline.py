"""llama-cpp-python's own generation speed, without HTTP: the yardstick of concurrency 1.

`python -m qfserve.bench.baseline` loads `llama_cpp.Llama` with the servers' model and threads,
renders each prompt with the GGUF's chat template as `create_chat_completion` does, and streams
tokens from `Llama.generate` (what `create_completion` iterates over), one prompt after another.
Streaming the tokens themselves gives exact counts and times; the text chunks of
`create_completion` merge tokens that split a UTF-8 character and would have to be counted again.

It runs in a subprocess so that its model and threads are gone before the next measurement, and
so that its memory is measured the same way as a server's. It reads a JSON list of message lists
on stdin and writes one JSON line per answer, then one with the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

from rich.progress import Progress

from qfserve.bench.client import RequestRecord, Sampling
from qfserve.bench.memory import peak_rss
from qfserve.bench.peers import die_with_parent
from qfserve.bench.stats import RunResult
from qfserve.bench.workload import WARM_UP, Prompt, request_messages

NAME = "llama-cpp-python (no HTTP)"


async def run_baseline(
    *,
    model: Path,
    threads: int,
    n_ctx: int,
    prompts: Sequence[Prompt],
    requests: int,
    sampling: Sampling,
    progress: Progress | None = None,
    log: Path | None = None,
    label: str = NAME,
    tag: str = "",
) -> RunResult:
    conversations = [request_messages(prompts, i, tag) for i in range(requests)]
    s = sampling
    command = [
        sys.executable, "-m", "qfserve.bench.baseline",
        "--model", str(model), "--threads", str(threads), "--n-ctx", str(n_ctx),
        "--max-tokens", str(s.max_tokens), "--temperature", str(s.temperature),
        "--top-p", str(s.top_p), "--top-k", str(s.top_k), "--seed", str(s.seed),
    ]  # fmt: skip
    task = progress.add_task(label, total=requests) if progress else None
    with _log_file(log) as stderr:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            preexec_fn=die_with_parent,
        )
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(conversations).encode())
        await process.stdin.drain()
        process.stdin.close()
        records: list[RequestRecord] = []
        wall_s = 0.0
        async with peak_rss(process.pid) as peak:
            async for line in process.stdout:
                item = json.loads(line)
                if "wall_s" in item:
                    wall_s = float(item["wall_s"])
                    continue
                records.append(_record(item))
                if progress is not None and task is not None:
                    progress.advance(task)
        code = await process.wait()
    if code != 0 or len(records) != requests:
        raise RuntimeError(f"the llama-cpp-python baseline failed (exit {code}); see {log}")
    return RunResult(NAME, 1, records, wall_s, peak.bytes)


def _log_file(log: Path | None) -> BinaryIO:
    # Closed by the caller's `with`.
    return open(log or os.devnull, "ab")


def _record(item: dict[str, Any]) -> RequestRecord:
    times = [float(t) for t in item["token_times"]]
    return RequestRecord(
        start_s=float(item["start_s"]),
        e2e_s=float(item["e2e_s"]),
        first_event_s=times[0] if times else None,
        token_times=times,
        output_tokens=len(times),
        prompt_tokens=int(item["prompt_tokens"]),
        counted_by="generate",
        finish=str(item["finish"]),
    )


def _generate_all(args: argparse.Namespace, conversations: list[list[dict[str, str]]]) -> None:
    import llama_cpp
    from llama_cpp import llama_chat_format

    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_batch=512,
        seed=args.seed,
        verbose=False,
    )
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    # The formatter `Llama` itself builds from the GGUF's template (llama.py, __init__).
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm.detokenize([llm.token_eos()], special=True).decode(),
        bos_token=llm.detokenize([llm.token_bos()], special=True).decode(),
    )

    def one(messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        rendered = formatter(messages=cast(Any, messages))
        tokens = llm.tokenize(
            rendered.prompt.encode(), add_bos=not rendered.added_special, special=True
        )
        began = time.perf_counter()
        times: list[float] = []
        finish = "length"
        for token in llm.generate(
            tokens, top_k=args.top_k, top_p=args.top_p, min_p=0.0, temp=args.temperature,
            repeat_penalty=1.0,
        ):  # fmt: skip
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            # Servers must turn tokens into text too: do the same work here.
            llm.detokenize([token])
            times.append(time.perf_counter() - began)
            if len(times) >= max_tokens:
                break
        e2e = time.perf_counter() - began
        return {"prompt_tokens": len(tokens), "token_times": times, "e2e_s": e2e, "finish": finish}

    # As the servers get a warm-up request before they are measured.
    one(WARM_UP, 8)
    began = time.perf_counter()
    for messages in conversations:
        start = time.perf_counter() - began
        print(json.dumps({"start_s": start, **one(messages, args.max_tokens)}), flush=True)
    print(json.dumps({"wall_s": time.perf_counter() - began}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    _generate_all(args, json.load(sys.stdin))


if __name__ == "__main__":
    main()
