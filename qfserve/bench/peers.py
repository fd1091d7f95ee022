"""Servers the bench starts itself: qfserve, llama-cpp-python's own OpenAI server, and, given its
binary, llama.cpp's C++ `llama-server` (the reference that the batching target quotes).

All on the same GGUF with the same threads, on free loopback ports, logging to files in a
temporary directory, and stopped (SIGTERM, then SIGKILL) by the handle that started them.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from qfserve.bench.client import Dialect, Target
from qfserve.config import EndpointSettings, EngineSettings

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
RESTART_STOP_TIMEOUT_S = 120.0
LLAMA_CPP_SERVER = "llama_cpp.server"
LLAMA_SERVER = "llama-server"
# Everything `python -m llama_cpp.server` imports beyond qfserve's own dependencies: the `server`
# extra of llama-cpp-python, installed alone so that the library itself is not rebuilt.
LLAMA_CPP_SERVER_EXTRAS = ("sse_starlette", "starlette_context", "yaml")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _qfserve_command() -> list[str]:
    # The console script beside this interpreter is what users run; `-m` where there is none.
    script = Path(sys.executable).with_name("qfserve")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "qfserve"]


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without its QFSERVE_* settings: the standard run measures
    qfserve's defaults, not whatever configuration the shell happens to carry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QFSERVE_")}
    env.update(extra)
    return env


@dataclass
class Peer:
    name: str
    process: subprocess.Popen[bytes]
    target: Target
    log: Path
    # qfserve only: the environment its CLI needs to reach the same store, and its app.
    env: dict[str, str] = field(default_factory=dict)
    app_id: int | None = None
    # What started it, for `restart_qfserve`.
    command: list[str] = field(default_factory=list)

    async def wait_ready(self, path: str) -> None:
        url = self.target.base_url.rstrip("/") + path
        deadline = time.monotonic() + READY_TIMEOUT_S
        async with httpx.AsyncClient(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited at start-up; see {self.log}")
                try:
                    if (await client.get(url)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.25)
        raise RuntimeError(
            f"{self.name} was not ready after {READY_TIMEOUT_S:.0f}s; see {self.log}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Idempotent: SIGTERM (both servers shut down cleanly on it), SIGKILL if it hangs."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _find_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up here, in the parent: between fork and exec the child should call, not load.
_prctl = _find_prctl()


def die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it when the bench dies without stopping it
    (SIGKILL, a crash), rather than leave a server holding a model and two cores."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        # The child keeps its own copy of the descriptor; ours can close at once.
        return subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=die_with_parent,
        )


async def start_qfserve(
    *,
    model: Path | None,
    threads: int,
    workdir: Path,
    endpoint: str = "llama_2_7b",
    config: Path | None = None,
    settings: dict[str, str] | None = None,
) -> Peer:
    """`qfserve serve` on a fresh data directory, with an app and an access token made for it;
    `config`, a settings file (say, endpoints on remote upstreams); `settings`, more `QFSERVE_*`
    environment variables (`QFSERVE_ENGINE__N_PARALLEL`...): a setting the qfserve being
    measured does not know is ignored."""
    env = _qfserve_env(workdir, threads, config)
    env.update(settings or {})
    keys = await qfserve_cli(env, "app", "create", "--name", "bench", "--json")
    port = free_port()
    command = [*_qfserve_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    if model is not None:
        command += ["--model", str(model)]
    log = workdir / "qfserve.log"
    base_url = f"http://127.0.0.1:{port}"
    process = _spawn(command, env, log)
    target = Target("qfserve", Dialect.QIANFAN, base_url, endpoint)
    peer = Peer(
        "qfserve", process, target, log, env=env, app_id=int(keys["app_id"]), command=command
    )
    try:
        await peer.wait_ready("/health")
        token = await fetch_access_token(base_url, keys["api_key"], keys["secret_key"])
    except BaseException:
        peer.stop()
        raise
    peer.target = Target(
        "qfserve", Dialect.QIANFAN, base_url, endpoint, access_token=token, pid=process.pid
    )
    return peer


async def restart_qfserve(peer: Peer) -> Peer:
    """Stop a started qfserve (SIGTERM: a clean shutdown, which may write a prefix cache's RAM
    tier to its disk tier, so it is given longer) and start it again with the same command,
    environment and data directory: same port, same app, same access token."""
    await asyncio.to_thread(peer.stop, RESTART_STOP_TIMEOUT_S)
    process = _spawn(peer.command, peer.env, peer.log)
    again = dataclasses.replace(
        peer, process=process, target=dataclasses.replace(peer.target, pid=process.pid)
    )
    try:
        await again.wait_ready("/health")
    except BaseException:
        again.stop()
        raise
    return again


def _qfserve_env(workdir: Path, threads: int, config: Path | None) -> dict[str, str]:
    data_dir = workdir / "qfserve-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    return _clean_env(
        QFSERVE_DATA_DIR=str(data_dir),
        QFSERVE_ENGINE__N_THREADS=str(threads),
        QFSERVE_LOG_LEVEL="warning",
        **({"QFSERVE_CONFIG": str(config)} if config else {}),
    )


async def qfserve_cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    """A `qfserve ... --json` command on a started qfserve's data directory (`Peer.env`): its
    one JSON object."""
    done = await asyncio.to_thread(
        subprocess.run, [*_qfserve_command(), *args], env=env, capture_output=True, check=False
    )
    if done.returncode != 0:
        error = done.stderr.decode("utf-8", "replace")[-300:]
        raise RuntimeError(f"qfserve {' '.join(args[:3])} failed: {error}")
    answer = json.loads(done.stdout)
    if not isinstance(answer, dict):
        raise RuntimeError(f"qfserve {' '.join(args[:3])} printed no JSON object")
    return answer


async def fetch_access_token(base_url: str, api_key: str, secret_key: str) -> str:
    params = {"grant_type": "client_credentials", "client_id": api_key, "client_secret": secret_key}
    async with httpx.AsyncClient(timeout=30.0) as client:
        response = await client.post(base_url.rstrip("/") + "/oauth/2.0/token", params=params)
    body = response.json()
    if response.status_code != 200 or "access_token" not in body:
        raise RuntimeError(f"no access token from {base_url}: {response.text[:300]}")
    return str(body["access_token"])


def missing_llama_cpp_server_modules() -> list[str]:
    return [name for name in LLAMA_CPP_SERVER_EXTRAS if importlib.util.find_spec(name) is None]


async def _start_openai_server(
    name: str, command: list[str], port: int, endpoint: str, log: Path, ready_path: str
) -> Peer:
    """Spawn an OpenAI-compatible server listening on `port`, and wait until `ready_path`
    answers 200; stopped again if it never does."""
    process = _spawn(command, _clean_env(), log)
    base_url = f"http://127.0.0.1:{port}"
    target = Target(name, Dialect.OPENAI, base_url, endpoint, pid=process.pid)
    peer = Peer(name, process, target, log)
    try:
        await peer.wait_ready(ready_path)
    except BaseException:
        peer.stop()
        raise
    return peer


async def start_llama_cpp_server(
    *, model: Path, threads: int, n_ctx: int, workdir: Path, endpoint: str = "llama_2_7b"
) -> Peer:
    """`python -m llama_cpp.server` with `--interrupt_requests False`: by default each new request
    cuts off the running one, and at concurrency 8 all answers but one would come back empty."""
    missing = missing_llama_cpp_server_modules()
    if missing:
        raise RuntimeError(
            f"{LLAMA_CPP_SERVER} needs {', '.join(missing)}: pip install 'qfserve[bench]'"
        )
    port = free_port()
    command = [
        sys.executable, "-m", LLAMA_CPP_SERVER,
        "--model", str(model), "--model_alias", endpoint,
        "--n_threads", str(threads), "--n_threads_batch", str(threads),
        "--n_ctx", str(n_ctx), "--interrupt_requests", "False",
        "--host", "127.0.0.1", "--port", str(port), "--verbose", "False",
    ]  # fmt: skip
    log = workdir / "llama_cpp_server.log"
    # llama-cpp-python's server has no /health.
    return await _start_openai_server(LLAMA_CPP_SERVER, command, port, endpoint, log, "/v1/models")


async def start_llama_server(
    *,
    binary: Path,
    model: Path,
    threads: int,
    n_ctx: int,
    n_parallel: int,
    workdir: Path,
    endpoint: str = "llama_2_7b",
) -> Peer:
    """llama.cpp's own C++ server with as many slots as qfserve has sequences, its KV cache laid
    out as qfserve's default (one pool of as many cells, or a context of `n_ctx` per slot),
    qfserve's default loop guard and KV cache type, and its other settings at their defaults
    (its host-RAM prompt cache, `--cache-ram`, among them). `scripts/llama_server.sh` builds the
    binary from the llama.cpp that llama-cpp-python vendors, to compare like with like."""
    port = free_port()
    command = [
        str(binary), "--model", str(model), "--alias", endpoint,
        "--threads", str(threads), "--threads-batch", str(threads),
        "--parallel", str(n_parallel), *qfserve_kv_flags(n_parallel, n_ctx),
        "--host", "127.0.0.1", "--port", str(port),
        *qfserve_sampling_flags(),
    ]  # fmt: skip
    log = workdir / "llama_server.log"
    return await _start_openai_server(LLAMA_SERVER, command, port, endpoint, log, "/health")


def shared_pool(n_parallel: int, n_ctx: int) -> int | None:
    """The cells of the KV pool qfserve's slots share by default, for `n_parallel` sequences of
    `n_ctx` tokens; None when the pool holds a context per slot (each slot has its own)."""
    engine = EngineSettings(context_length=n_ctx, n_parallel=n_parallel)
    return engine.kv_pool_tokens if engine.kv_shared else None


def qfserve_kv_flags(n_parallel: int, n_ctx: int) -> list[str]:
    """llama-server's flags for the KV cache laid out as qfserve's default."""
    pool = shared_pool(n_parallel, n_ctx)
    if pool is None:
        return ["--ctx-size", str(n_parallel * n_ctx), "--no-kv-unified"]
    return ["--ctx-size", str(pool), "--kv-unified"]


def qfserve_sampling_flags() -> list[str]:
    """llama-server's flags for what qfserve's embedded endpoints do by default beyond the
    request's own sampling: the DRY loop guard, the penalties, and the KV cache's type. Its DRY
    sequence breakers are already qfserve's."""
    endpoint, engine = EndpointSettings(), EngineSettings()
    return [
        "--dry-multiplier", str(endpoint.dry_multiplier),
        "--dry-base", str(endpoint.dry_base),
        "--dry-allowed-length", str(endpoint.dry_allowed_length),
        "--dry-penalty-last-n", str(endpoint.dry_last_n),
        "--presence-penalty", str(endpoint.presence_penalty),
        "--frequency-penalty", str(endpoint.frequency_penalty),
        "--repeat-last-n", str(endpoint.penalty_last_n),
        "--cache-type-k", engine.kv_type, "--cache-type-v", engine.kv_type,
    ]  # fmt: skip


# Prints the cached binary's path (`--check`: only if already built); in a source checkout.
LLAMA_SERVER_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "llama_server.sh"


def find_llama_server() -> Path | None:
    """The llama-server that `scripts/llama_server.sh` built and cached for the pinned
    llama-cpp-python, if it has; never builds it."""
    if not LLAMA_SERVER_SCRIPT.is_file():
        return None
    try:
        done = subprocess.run(  # noqa: S603 - our own script, no input
            ["bash", str(LLAMA_SERVER_SCRIPT), "--check"],  # noqa: S607 - bash from PATH
            capture_output=True, text=True, timeout=30, check=False,
            env={**os.environ, "PYTHON": sys.executable},
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = Path(done.stdout.strip()) if done.returncode == 0 else None
    return found if found is not None and found.is_file() else None


async def start_instant_upstream(*, workdir: Path, first_token_delay: float = 0.0) -> Peer:
    """The gateway bench's upstream that answers at once (`instant_upstream`), or after
    `first_token_delay` seconds of doing nothing."""
    port = free_port()
    command = [sys.executable, "-m", "qfserve.bench.instant_upstream", "--port", str(port)]
    command += ["--first-token-delay", str(first_token_delay)]
    name = (
        f"upstream pausing {first_token_delay * 1000:.0f} ms"
        if first_token_delay
        else "instant upstream"
    )
    log = workdir / f"instant_upstream_{port}.log"
    return await _start_openai_server(name, command, port, "instant", log, "/health")
