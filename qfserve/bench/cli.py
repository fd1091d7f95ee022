"""The `qfserve bench` command (also `python -m qfserve.bench`)."""

from __future__ import annotations

import json
import shlex
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from qfserve.bench.client import Sampling

# Only what the options need at import time: `qfserve bench --help` and a bad option should not
# pay for httpx, rich's progress or psutil.
from qfserve.bench.workload import (
    ANSWER_TOKENS,
    DEFAULT_CONVERSATIONS,
    DEFAULT_TURNS,
    MANY_CONVERSATIONS,
    SCENARIOS,
    VARIANTS,
    default_dir,
)

_STANDARD = "Start qfserve itself on the bundled model (or --model)."
_SCENARIOS = (
    f"Comma-separated subset to run; or {MANY_CONVERSATIONS} alone: more conversations than "
    "slots, qfserve with and without its prefix-cache tiers vs llama-server (its own report)."
)


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"not a list of integers: {text}") from exc
    if not levels or any(level < 1 for level in levels):
        raise typer.BadParameter("concurrency levels must be positive")
    return levels


def _scenarios(text: str) -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    if MANY_CONVERSATIONS in chosen:
        if len(chosen) > 1:
            raise typer.BadParameter(f"{MANY_CONVERSATIONS} runs alone, with its own report")
        return chosen
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        raise typer.BadParameter(f"choose among {', '.join(SCENARIOS)}, or {MANY_CONVERSATIONS}")
    return chosen


def bench(
    url: Annotated[
        str | None,
        typer.Option(
            metavar="URL", help="Base URL of a running qfserve, measured on the Qianfan route."
        ),
    ] = None,
    ak: Annotated[
        str | None, typer.Option("--ak", metavar="AK", help="API Key, for --url.")
    ] = None,
    sk: Annotated[
        str | None, typer.Option("--sk", metavar="SK", help="Secret Key, for --url.")
    ] = None,
    access_token: Annotated[
        str | None, typer.Option(metavar="TOKEN", help="Access token, for --url.")
    ] = None,
    openai_url: Annotated[
        str | None,
        typer.Option(
            metavar="URL", help="Base URL of any OpenAI-compatible server, also measured."
        ),
    ] = None,
    openai_key: Annotated[
        str | None, typer.Option(metavar="KEY", help="Bearer key for --openai-url.")
    ] = None,
    endpoint: Annotated[
        str, typer.Option(metavar="NAME", help="Qianfan {endpoint}; OpenAI `model`.")
    ] = "llama_2_7b",
    concurrency: Annotated[
        str, typer.Option(metavar="LEVELS", help="Concurrency levels, comma-separated.")
    ] = "1,8",
    requests: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Requests per server and level in all (default: 16, or 4 x level if more).",
        ),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="max output tokens of every request (default: 128; "
            f"{MANY_CONVERSATIONS}: {ANSWER_TOKENS}; --loops: 1024).",
        ),
    ] = None,
    temperature: Annotated[
        float, typer.Option(metavar="T", help="In (0, 1], as Qianfan requires.")
    ] = 0.1,
    seed: Annotated[int, typer.Option(metavar="N", help="Sampling seed of every request.")] = 42,
    rounds: Annotated[
        int, typer.Option(metavar="N", help="Rounds; servers alternate within each.")
    ] = 2,
    scenarios: Annotated[str, typer.Option(metavar="LIST", help=_SCENARIOS)] = ",".join(SCENARIOS),
    conversations: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Play only the first N conversations "
            f"({MANY_CONVERSATIONS}: play N, default {DEFAULT_CONVERSATIONS}).",
        ),
    ] = None,
    turns: Annotated[
        int,
        typer.Option(
            metavar="T", help=f"{MANY_CONVERSATIONS}: turns of each conversation, 2 to 8."
        ),
    ] = DEFAULT_TURNS,
    parallel: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help=f"{MANY_CONVERSATIONS}: slots of every server and clients at once "
            "(default: qfserve's engine.n_parallel).",
        ),
    ] = None,
    clients: Annotated[
        int, typer.Option(metavar="N", help="Clients of the disconnect scenario.")
    ] = 16,
    standard: Annotated[bool, typer.Option(help=_STANDARD)] = False,
    compare: Annotated[
        bool, typer.Option(help="Also start llama_cpp.server on the same model and threads.")
    ] = False,
    model: Annotated[
        Path | None,
        typer.Option(metavar="GGUF", help="GGUF for --standard, --compare and the baseline."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(metavar="N", help="Threads of every model (default: qfserve's own)."),
    ] = None,
    pid: Annotated[
        int | None,
        typer.Option(metavar="PID", help="Process of the --url server, for its peak memory."),
    ] = None,
    workload: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Folder of prompts.json and conversations.json."),
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", metavar="FILE", help="Write the results here.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Write a markdown report here, and its JSON beside it."),
    ] = None,
    llama_server: Annotated[
        Path | None,
        typer.Option(
            metavar="BINARY",
            envvar="QFSERVE_BENCH_LLAMA_SERVER",
            exists=True,
            dir_okay=False,
            help="A llama.cpp `llama-server` binary: also start it on the same model, threads "
            "and parallel sequences as qfserve, as the C++ reference.",
        ),
    ] = None,
    reference: Annotated[
        bool,
        typer.Option(
            help="Without --llama-server: measure the llama-server that scripts/llama_server.sh "
            "built, when it has (with --standard's load, and many-conversations)."
        ),
    ] = True,
    gateway: Annotated[
        bool,
        typer.Option(
            help="Only measure what qfserve adds to time to first token in front of an upstream, "
            "in each of --dialects (--requests pairs per dialect in front of an upstream pausing "
            "100 ms, default 200; 4 x as many in front of the model and of an upstream that "
            "answers at once)."
        ),
    ] = False,
    dialects: Annotated[
        str,
        typer.Option(
            metavar="LIST", help="With --gateway: qfserve's dialects to measure, comma-separated."
        ),
    ] = "v1,openai,v2",
    kernels: Annotated[
        bool,
        typer.Option(
            help="Only compare the bundled model's weight types (--variants) in this process: "
            "prefill, decode, a batch of 8, file size, greedy answers against the shipped Q4_1."
        ),
    ] = False,
    memory: Annotated[
        bool,
        typer.Option(
            help="Only measure qfserve's peak RSS at concurrency 8, started on each of --variants."
        ),
    ] = False,
    variants: Annotated[
        str | None,
        typer.Option(
            metavar="LIST",
            help="With --kernels or --memory: weight types, each optionally with `:KV_TYPE`, "
            "`:CONTEXT` and `:POOL` (q4_0:f16:6144:49152, the KV pool's cells). Default: "
            "q4_1,q4_0,q8_0,q4_k_m,q4_1:q8_0 (--kernels); q4_0,q4_0:f16:6144:49152,q4_0:q8_0 "
            "(--memory). With "
            f"{MANY_CONVERSATIONS}: the variants to run (default: {','.join(VARIANTS)}).",
        ),
    ] = None,
    loops: Annotated[
        bool,
        typer.Option(
            help="Only compare loop-guard settings (--guards) in this process: looping answers "
            "over the bench prompts and the README's examples, greedy and at default sampling."
        ),
    ] = False,
    guards: Annotated[
        str, typer.Option(metavar="LIST", help="With --loops: guard presets, comma-separated.")
    ] = "off,dry,dry+presence",
    prompts: Annotated[
        int | None,
        typer.Option(metavar="N", help="With --kernels or --loops: only the first N prompts."),
    ] = None,
    repeats: Annotated[
        int, typer.Option(metavar="N", help="With --kernels: speed samples per round.")
    ] = 3,
) -> None:
    """Measure the throughput and latency of qfserve and OpenAI-compatible servers.

    Output tokens/s, and time to first token, inter-token and end-to-end latency (p50/p95/p99),
    at each concurrency level; then long conversations resent turn by turn, structured output
    (the same prompts free and with a JSON schema), and clients that all disconnect at once.
    Each is checked against qfserve's performance targets (listed in the report and in
    bench/README.md).
    """

    from rich.console import Console

    from qfserve.bench.client import Sampling
    from qfserve.bench.suite import BenchOptions, run_suite
    from qfserve.config import EngineSettings

    console = Console(stderr=True)
    if kernels or loops or memory:
        from qfserve.bench.engine_modes import kernels_mode, loops_mode, memory_mode

        folder = workload or default_dir()
        try:
            if kernels:
                text = kernels_mode(
                    variants or "q4_1,q4_0,q8_0,q4_k_m,q4_1:q8_0", folder, prompts, threads,
                    rounds, repeats, max_tokens or 128, output, _command_line(), console,
                )  # fmt: skip
            elif memory:
                text = memory_mode(
                    variants or "q4_0,q4_0:f16:6144:49152,q4_0:q8_0", folder, threads, requests,
                    max_tokens or 128, output, _command_line(), console,
                )  # fmt: skip
            else:
                text = loops_mode(
                    guards, model, folder, prompts, threads, max_tokens or 1024, output,
                    _command_line(), console,
                )  # fmt: skip
        except (RuntimeError, OSError, ValueError) as exc:
            console.print(f"[red]bench failed: {exc}[/red]")
            raise typer.Exit(1) from exc
        typer.echo(text)
        return
    if gateway:
        tokens = 128 if max_tokens is None else max_tokens
        _gateway(model, threads, requests, tokens, temperature, seed, output, dialects, console)
        return
    chosen = _scenarios(scenarios)
    if not 0 < temperature <= 1:
        raise typer.BadParameter("--temperature must be in (0, 1]")
    many = chosen == (MANY_CONVERSATIONS,)
    if llama_server is None and reference and ((standard and "load" in chosen) or many):
        from qfserve.bench.peers import find_llama_server

        llama_server = find_llama_server()
        if llama_server is not None:
            console.print(f"llama-server as the reference: {llama_server}", soft_wrap=True)
    if many:
        if url or openai_url:
            raise typer.BadParameter(
                f"{MANY_CONVERSATIONS} starts its own servers, restarting some: no --url or "
                "--openai-url"
            )
        _many_conversations(
            model=model, threads=threads, parallel=parallel, conversations=conversations,
            turns=turns, sampling=Sampling(
                max_tokens=ANSWER_TOKENS if max_tokens is None else max_tokens,
                temperature=temperature, seed=seed,
            ),
            llama_server=llama_server, workload=workload, endpoint=endpoint,
            variants=variants or ",".join(VARIANTS), output=output, console=console,
        )  # fmt: skip
        return
    if standard and url:
        raise typer.BadParameter("--standard starts its own qfserve: give it or --url, not both")
    if not (standard or url or openai_url or compare or llama_server):
        raise typer.BadParameter("nothing to measure: give --standard, --url or --openai-url")
    if url and not (access_token or (ak and sk)):
        raise typer.BadParameter("--url needs --access-token, or --ak and --sk")
    engine = EngineSettings()
    options = BenchOptions(
        url=url, access_token=access_token, ak=ak, sk=sk,
        openai_url=openai_url, openai_key=openai_key, endpoint=endpoint,
        concurrency=_levels(concurrency), requests=requests,
        sampling=Sampling(
            max_tokens=128 if max_tokens is None else max_tokens, temperature=temperature,
            seed=seed,
        ),
        rounds=max(1, rounds), scenarios=chosen, conversations=conversations,
        disconnect_clients=clients, standard=standard, compare=compare, model=model,
        threads=threads or engine.n_threads, n_ctx=engine.context_length, pid=pid,
        workload=workload, llama_server=llama_server, n_parallel=engine.n_parallel,
    )  # fmt: skip

    results = _run_stoppable(run_suite(options, console), console)
    _write(results, json_file, output)
    _show(results)


def _many_conversations(
    *,
    model: Path | None,
    threads: int | None,
    parallel: int | None,
    conversations: int | None,
    turns: int,
    sampling: Sampling,
    llama_server: Path | None,
    workload: Path | None,
    endpoint: str,
    variants: str,
    output: Path | None,
    console: Any,
) -> None:

    from qfserve.bench.many_conversations_report import markdown, write
    from qfserve.bench.many_conversations_run import ManyOptions, run_many
    from qfserve.bench.workload import default_dir
    from qfserve.config import EngineSettings
    from qfserve.engines.registry import default_model_path

    chosen = tuple(dict.fromkeys(v.strip() for v in variants.split(",") if v.strip()))
    if not chosen or any(v not in VARIANTS for v in chosen):
        raise typer.BadParameter(f"--variants: choose among {', '.join(VARIANTS)}")
    if not 2 <= turns <= DEFAULT_TURNS:
        raise typer.BadParameter(f"--turns must be between 2 and {DEFAULT_TURNS}")
    if (parallel is not None and parallel < 1) or (conversations is not None and conversations < 1):
        raise typer.BadParameter("--parallel and --conversations must be positive")
    if llama_server is None:
        console.print(
            "[yellow]no llama-server binary (--llama-server, or scripts/llama_server.sh): "
            "its variant is left out[/yellow]"
        )
    engine = EngineSettings()
    options = ManyOptions(
        model=model or default_model_path(engine), threads=threads or engine.n_threads,
        n_ctx=engine.context_length, parallel=parallel or engine.n_parallel,
        conversations=conversations or DEFAULT_CONVERSATIONS, turns=turns, sampling=sampling,
        workload=workload or default_dir(), llama_server=llama_server, endpoint=endpoint,
        only=chosen,
    )  # fmt: skip

    results = _run_stoppable(run_many(options, console), console)
    if output is None:
        text = markdown(results, command=_command_line())
    else:
        text = write(results, output, _command_line())
    typer.echo(text)


def _gateway(
    model: Path | None,
    threads: int | None,
    requests: int | None,
    max_tokens: int,
    temperature: float,
    seed: int,
    output: Path | None,
    dialects: str,
    console: Any,
) -> None:
    import asyncio

    from qfserve.bench.client import Sampling
    from qfserve.bench.gateway import DEFAULT_PAIRS, DIALECTS, run_gateway
    from qfserve.bench.gateway_report import report, write
    from qfserve.config import EngineSettings
    from qfserve.engines.registry import default_model_path

    chosen = list(dict.fromkeys(d.strip() for d in dialects.split(",") if d.strip()))
    if not chosen or any(d not in DIALECTS for d in chosen):
        raise typer.BadParameter(f"--dialects: choose among {', '.join(DIALECTS)}")
    if requests is not None and requests < 1:
        raise typer.BadParameter("--requests must be positive")
    try:
        results = asyncio.run(
            run_gateway(
                model=model or default_model_path(EngineSettings()),
                threads=threads or EngineSettings().n_threads,
                requests=requests or DEFAULT_PAIRS,
                sampling=Sampling(
                    max_tokens=min(max_tokens, 4), temperature=temperature, seed=seed
                ),
                console=console,
                dialects=chosen,
            )
        )
    except (RuntimeError, OSError, ValueError) as exc:
        console.print(f"[red]bench failed: {exc}[/red]")
        raise typer.Exit(1) from exc
    if output is None:
        text = report(results, command=_command_line())
    else:
        text = write(results, output, _command_line())
    typer.echo(text)


def _command_line() -> str:
    args = sys.argv[1:]
    if "bench" in args:
        args = args[args.index("bench") + 1 :]
    return " ".join(["qfserve", "bench", *map(shlex.quote, args)])


def _write(results: dict[str, Any], json_file: Path | None, output: Path | None) -> None:
    from qfserve.bench.report import markdown

    text = json.dumps(results, ensure_ascii=False, indent=1) + "\n"
    if json_file is not None:
        json_file.write_text(text, encoding="utf-8")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(markdown(results, _command_line()), encoding="utf-8")
        output.with_suffix(".json").write_text(text, encoding="utf-8")


def _show(results: dict[str, Any]) -> None:
    from qfserve.bench.report import load_table

    rows = list(results.get("load", []))
    if results.get("baseline"):
        rows.append(results["baseline"])
    lines = ["| | target | measured | goal | met |", "|---|---|---:|---|---|"]
    for t in results["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "no")
        lines.append(f"| {t['id']} | {t['what']} | {value} | {t['goal']} | {met} |")
    # Plain markdown: readable at any terminal width, and ready to paste into a report.
    typer.echo("\n".join([*load_table(rows), "", *lines]))


def main() -> None:
    from qfserve.cli.common import TYPER_OPTIONS

    command = typer.Typer(add_completion=False, **TYPER_OPTIONS)
    command.command()(bench)
    command()


def _run_stoppable(run: Coroutine[Any, Any, dict[str, Any]], console: Any) -> dict[str, Any]:
    """Run a bench to its results. SIGTERM (a timeout's, a CI runner's) cancels it like Ctrl-C
    does, so that the servers it started are stopped on the way out rather than left running."""
    import asyncio

    async def stoppable() -> dict[str, Any]:
        task = asyncio.current_task()
        if task is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await run

    try:
        return asyncio.run(stoppable())
    except asyncio.CancelledError as exc:
        raise typer.Exit(128 + signal.SIGTERM) from exc
    except (RuntimeError, OSError, ValueError) as exc:
        console.print(f"[red]bench failed: {exc}[/red]")
        raise typer.Exit(1) from exc
