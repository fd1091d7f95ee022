"""The remote engine: a pool of OpenAI-compatible upstream replicas (vLLM, SGLang, TGI,
llama.cpp's llama-server, llama-cpp-python's server) behind the Engine protocol.

    engine.py   RemoteEngine and RemoteSettings: routing, failover, cancellation, drain
    pool.py     replica state, the least-outstanding choice, active health checks
    wire.py     request bodies, the streamed chunks, aiohttp's exceptions translated
    tokens.py   token counts: a local GGUF's vocabulary, or Qianfan's estimate
"""

from qfserve.engines.remote.engine import RemoteEngine, RemoteSettings
from qfserve.engines.remote.pool import ReplicaStats

__all__ = ["RemoteEngine", "RemoteSettings", "ReplicaStats"]
