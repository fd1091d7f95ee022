"""`qfserve bench --kernels` and `--loops`: the in-process comparisons, run and reported."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from qfserve.bench import kernels as kernels_mod
from qfserve.bench import loopguard, loops
from qfserve.bench.client import Sampling
from qfserve.bench.peers import start_qfserve
from qfserve.bench.report import machine
from qfserve.bench.runner import run_load, warm_up
from qfserve.bench.stats import summarize
from qfserve.bench.workload import SPEC_TOTAL_CHARS, Prompt, load_prompts
from qfserve.config import EndpointSettings, EngineSettings, context_needed, load_settings
from qfserve.engines.registry import default_model_path

MEMORY_LEVEL = 8


def _prompts(folder: Path, limit: int | None) -> list[Prompt]:
    prompts = load_prompts(folder / "prompts.json")
    if limit is not None and limit < 1:
        raise ValueError("--prompts must be positive")
    return prompts[:limit] if limit else prompts


def _header(title: str, results: dict[str, Any], command: str, what: str) -> list[str]:
    m = results["machine"]
    return [
        f"# {title}",
        "",
        f"Measured {m['date']} on {m['cpu']} ({m['logical_cores']} logical cores, load average "
        f"{m['load_average_at_start']} at start), llama-cpp-python {m['llama_cpp_python']}, "
        f"qfserve {m['git_commit']}. {what}",
        "",
        f"Command: `{command}`",
        "",
    ]


def _write(text: str, results: dict[str, Any], output: Path | None) -> None:
    if output is None:
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    dumped = json.dumps(results, ensure_ascii=False, indent=1) + "\n"
    output.with_suffix(".json").write_text(dumped, encoding="utf-8")


def kernels_mode(
    variants_text: str,
    folder: Path,
    limit: int | None,
    threads: int | None,
    rounds: int,
    repeats: int,
    max_tokens: int,
    output: Path | None,
    command: str,
    console: Console,
) -> str:
    """The table (markdown), also written to `output` with its JSON beside it."""
    variants = kernels_mod.parse_variants(variants_text)
    prompts = _prompts(folder, limit)
    settings = load_settings()
    n_threads = threads or settings.engine.n_threads

    def model_for(variant: kernels_mod.Variant) -> Path:
        # The same file, in the same place, that `engine.model_quant` would serve.
        engine = EngineSettings(model_quant=variant.quant, n_threads=n_threads)
        return default_model_path(engine, settings.data_dir)

    for variant in variants:  # made (once) before anything is timed
        model_for(variant)
    results: dict[str, Any] = {"machine": machine()}
    results |= asyncio.run(
        kernels_mod.run_kernels(
            model_for=model_for, variants=variants, prompts=prompts, threads=n_threads,
            rounds=max(1, rounds), repeats=max(1, repeats), max_tokens=max_tokens,
            log=console.print,
        )
    )  # fmt: skip
    results["settings"] = {
        "threads": n_threads, "rounds": max(1, rounds), "repeats": max(1, repeats),
        "max_tokens": max_tokens, "prompts": len(prompts),
    }  # fmt: skip
    what = (
        f"{n_threads} threads, {max(1, rounds)} round(s) x {max(1, repeats)} repeat(s); answers "
        f"of at most {max_tokens} tokens, greedy, no loop guard, over {len(prompts)} bench "
        "prompts."
    )
    lines = _header("The bundled model's weight types", results, command, what)
    lines += kernels_mod.table(results)
    lines += ["", kernels_mod.NOTE]
    text = "\n".join(lines) + "\n"
    _write(text, results, output)
    return text


def loops_mode(
    guards_text: str,
    model: Path | None,
    folder: Path,
    limit: int | None,
    threads: int | None,
    max_tokens: int,
    output: Path | None,
    command: str,
    console: Console,
) -> str:
    guards = loopguard.parse_guards(guards_text)
    prompts = [*_prompts(folder, limit), *loopguard.README_PROMPTS[: limit or None]]
    settings = load_settings()
    n_threads = threads or settings.engine.n_threads
    path = model or default_model_path(settings.engine, settings.data_dir)
    results: dict[str, Any] = {"machine": machine()}
    results |= asyncio.run(
        loopguard.run_loops(
            model=path, prompts=prompts, guards=guards, samplings=loopguard.SAMPLINGS,
            threads=n_threads, max_tokens=max_tokens, log=console.print,
        )
    )  # fmt: skip
    results["settings"] = {
        "model": path.name, "threads": n_threads, "max_tokens": max_tokens,
        "prompts": [p.id for p in prompts],
    }  # fmt: skip
    what = (
        f"Model {path.name}, {n_threads} threads, {len(prompts)} prompts (the bench's and the "
        f"README's), answers of at most {max_tokens} tokens, 8 at a time; greedy, and at the "
        f"endpoint's default sampling with seed {loopguard.SEED}."
    )
    lines = _header("Loop guards", results, command, what)
    lines += loopguard.table(results)
    lines += ["", *loopguard.guard_lines()]
    text = "\n".join(lines) + "\n"
    _write(text, results, output)
    return text


def memory_mode(
    variants_text: str,
    folder: Path,
    threads: int | None,
    requests: int | None,
    max_tokens: int,
    output: Path | None,
    command: str,
    console: Console,
) -> str:
    """qfserve itself started on each variant in turn (a fresh data directory, its defaults
    otherwise), the bench prompts at concurrency 8: the server's peak RSS, with tokens/s."""
    variants = kernels_mod.parse_variants(variants_text)
    prompts = load_prompts(folder / "prompts.json")
    settings = load_settings()
    n_threads = threads or settings.engine.n_threads
    sampling = Sampling(max_tokens=max_tokens)
    paths = {
        v: default_model_path(
            EngineSettings(model_quant=v.quant, n_threads=n_threads), settings.data_dir
        )
        for v in variants
    }

    async def measure(index: int, variant: kernels_mod.Variant, workdir: Path) -> dict[str, Any]:
        config = workdir / "engine.toml"
        # The prefix cache's RAM tier off: it grows to its own budget, a setting counted apart
        # from the engine's memory.
        lines = ["[engine]", f'kv_type = "{variant.kv_type}"', "cache_ram_mb = 0"]
        if variant.context_length:
            lines.append(f"context_length = {variant.context_length}")
        if variant.kv_cache_tokens:
            lines.append(f"kv_cache_tokens = {variant.kv_cache_tokens}")
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        console.print(f"qfserve on {variant.name}")
        peer = await start_qfserve(
            model=paths[variant], threads=n_threads, workdir=workdir, config=config
        )
        try:
            error = await warm_up(peer.target, sampling)
            if error is not None:
                raise RuntimeError(f"qfserve on {variant.name} cannot answer: {error}")
            run = await run_load(
                peer.target, prompts, requests=requests or 32, concurrency=MEMORY_LEVEL,
                sampling=sampling, tag=f"m{index}.",
            )  # fmt: skip
        except BaseException:
            console.print(f"logs kept in {workdir}")
            raise
        finally:
            peer.stop()
        summary = summarize(run)
        context = variant.context_length or context_needed(
            SPEC_TOTAL_CHARS, EndpointSettings().max_output_tokens
        )
        engine = EngineSettings(context_length=context, kv_cache_tokens=variant.kv_cache_tokens)
        return {
            "name": variant.name,
            "quant": variant.quant,
            "kv_type": variant.kv_type,
            "context_length": context,
            "kv_cache_tokens": engine.kv_pool_tokens,
            "kv_shared": engine.kv_shared,
            **{k: summary[k] for k in ("requests", "errors", "output_tokens_per_s", "loops")},
            "peak_rss_bytes": summary["peak_rss_bytes"],
        }

    async def run_all() -> list[dict[str, Any]]:
        rows = []
        for i, variant in enumerate(variants):
            with tempfile.TemporaryDirectory(prefix="qfserve-memory-") as workdir:
                rows.append(await measure(i, variant, Path(workdir)))
        return rows

    results: dict[str, Any] = {"machine": machine(), "rows": asyncio.run(run_all())}
    results["settings"] = {"threads": n_threads, "max_tokens": max_tokens}
    what = (
        f"{n_threads} threads; qfserve at concurrency {MEMORY_LEVEL}, the bench prompts, at most "
        f"{max_tokens} output tokens each; peak RSS of the server process and its children."
    )
    lines = _header("qfserve's memory", results, command, what)
    lines += [
        "| weights, KV cache | context per sequence | KV cells | peak RSS MB | output tok/s "
        "| errors | looping answers |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        rss = "-" if r["peak_rss_bytes"] is None else f"{r['peak_rss_bytes'] / 2**20:.0f}"
        tps = "-" if r["output_tokens_per_s"] is None else f"{r['output_tokens_per_s']:.1f}"
        layout = "one pool" if r["kv_shared"] else "a context per sequence"
        lines.append(
            f"| {r['name']} | {r['context_length']} | {r['kv_cache_tokens']}, {layout} | {rss} "
            f"| {tps} | {r['errors']} | {loops.cell(r['loops'])} |"
        )
    text = "\n".join(lines) + "\n"
    _write(text, results, output)
    return text
