"""A per-sequence llama.cpp sampler chain built from `SamplingParams`.

Each sequence owns its chain because the chain holds state: the penalties' window of recent
tokens and the random generator of `dist`. Runs on the engine thread only.
"""

from __future__ import annotations

from typing import Any

import llama_cpp

from qfserve.engines.base import SamplingParams

# How many recent tokens the repeat penalty looks at (llama.cpp's own default).
PENALTY_LAST_N = 64
_UINT32 = 0xFFFFFFFF


def resolve_seed(request_seed: int | None, default_seed: int) -> int:
    """A uint32 seed; a negative one means llama.cpp's LLAMA_DEFAULT_SEED, i.e. random."""
    seed = default_seed if request_seed is None else request_seed
    return llama_cpp.LLAMA_DEFAULT_SEED if seed < 0 else seed & _UINT32


class SequenceSampler:
    """grammar (if any), penalties (if repeat_penalty != 1), top_k, top_p, temp, dist; greedy if
    temperature <= 0. The chain takes ownership of the grammar sampler given."""

    __slots__ = ("_chain",)

    def __init__(
        self,
        params: SamplingParams,
        *,
        n_vocab: int,
        default_seed: int = -1,
        grammar: Any = None,
    ) -> None:
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self._chain: Any = llama_cpp.llama_sampler_chain_init(chain_params)
        # A grammar first: every later sampler then sees only the tokens it allows.
        parts: list[Any] = [grammar] if grammar else []
        if params.repeat_penalty != 1.0:
            parts.append(
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab, PENALTY_LAST_N, params.repeat_penalty, 0.0, 0.0
                )
            )
        if params.temperature <= 0:
            parts.append(llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                parts.append(llama_cpp.llama_sampler_init_top_k(params.top_k))
            if 0.0 < params.top_p < 1.0:
                parts.append(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            parts.append(llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = resolve_seed(params.seed, default_seed)
            parts.append(llama_cpp.llama_sampler_init_dist(seed))
        for part in parts:
            # The chain takes ownership: freeing the chain frees its parts.
            llama_cpp.llama_sampler_chain_add(self._chain, part)

    def sample(self, ctx: Any, index: int) -> int:
        """Sample (and accept) a token from the logits of batch position `index`."""
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, index))

    def close(self) -> None:
        """Free the chain; idempotent."""
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
