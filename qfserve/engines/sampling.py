"""A per-sequence llama.cpp sampler chain built from `SamplingParams`, optionally held to a grammar.

Each sequence owns its chain because the chain holds state: the penalties' window of recent
tokens and the random generator of `dist`. Runs on the engine thread only.

A grammar is checked the way llama.cpp's own `common_sampler_sample` does it, because checking it
against the whole vocabulary costs more than decoding the token: sample with the chain alone,
then ask the grammar about that one token. Only if it refuses is the token sampled again, from
the model's `SHORTLIST` likeliest tokens that the grammar allows, and from the whole vocabulary
masked by the grammar only when none of those is allowed. Greedy picks the same token either
way (the likeliest allowed token is on the shortlist whenever any allowed token is); with a
temperature, a resampled token is drawn from the allowed part of the shortlist, which top_k and
top_p would cut the vocabulary to in any case.

A loop guard (penalties, DRY) changes logits before the chain cuts them, so with a grammar it runs
as a chain of its own ahead of the shortlist: the shortlist is then of the guarded logits, the
ones the chain would choose from.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import llama_cpp
import numpy as np
from numpy.typing import NDArray

from qfserve.engines.base import LoopGuard, SamplingParams
from qfserve.errors import InternalError

# How many recent tokens the repeat penalty looks at (llama.cpp's own default).
PENALTY_LAST_N = 64
# The likeliest tokens a refused token is resampled from (more than any top_k asked in practice).
SHORTLIST = 64
_UINT32 = 0xFFFFFFFF
_NEG_INF = -math.inf

# llama_token_data's layout, so that a numpy array can be the candidates llama.cpp samples from.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


def resolve_seed(request_seed: int | None, default_seed: int) -> int:
    """A uint32 seed; a negative one means llama.cpp's LLAMA_DEFAULT_SEED, i.e. random."""
    seed = default_seed if request_seed is None else request_seed
    return llama_cpp.LLAMA_DEFAULT_SEED if seed < 0 else seed & _UINT32


class DrySamplers:
    """DRY samplers for one vocabulary, each a clone of a template kept per loop guard. Making
    one from scratch matches every sequence breaker against the whole vocabulary, milliseconds
    on the engine thread at every admission, while the batch waits; a clone copies the matches.
    A template never samples, so its clones start with no history. Guards come from the
    endpoints' settings (and a constrained answer's variant of them), so the templates are as
    few as those. Engine thread only; `close()` frees the templates (not the clones: their
    chains own them)."""

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self._templates: dict[tuple[Any, ...], Any] = {}

    def new(self, guard: LoopGuard) -> Any:
        key = (
            guard.dry_multiplier,
            guard.dry_base,
            guard.dry_allowed_length,
            guard.dry_last_n,
            guard.dry_breakers,
        )
        template = self._templates.get(key)
        if template is None:
            encoded = [breaker.encode() for breaker in guard.dry_breakers]
            template = llama_cpp.llama_sampler_init_dry(
                self._vocab,
                guard.dry_multiplier,
                guard.dry_base,
                guard.dry_allowed_length,
                guard.dry_last_n,
                (ctypes.c_char_p * len(encoded))(*encoded),
                len(encoded),
            )
            self._templates[key] = template
        return llama_cpp.llama_sampler_clone(template)

    def __len__(self) -> int:
        """How many templates are kept."""
        return len(self._templates)

    def close(self) -> None:
        for template in self._templates.values():
            llama_cpp.llama_sampler_free(template)
        self._templates.clear()


def _guard_parts(params: SamplingParams, n_vocab: int, dry: DrySamplers | None) -> list[Any]:
    """The penalties and DRY samplers, in llama.cpp's `common_sampler` order; none if all off."""
    guard = params.loop_guard or LoopGuard(dry_multiplier=0.0)
    parts: list[Any] = []
    last_n = guard.penalty_last_n if params.loop_guard else PENALTY_LAST_N
    if last_n > 0 and (
        params.repeat_penalty != 1.0 or guard.presence_penalty or guard.frequency_penalty
    ):
        parts.append(
            llama_cpp.llama_sampler_init_penalties(
                n_vocab,
                last_n,
                params.repeat_penalty,
                guard.frequency_penalty,
                guard.presence_penalty,
            )
        )
    if guard.dry_multiplier > 0 and guard.dry_last_n > 0:
        if dry is None:
            raise InternalError("the DRY sampler needs the model's DrySamplers")
        parts.append(dry.new(guard))
    return parts


def _new_chain(parts: list[Any]) -> Any:
    chain_params = llama_cpp.llama_sampler_chain_default_params()
    chain_params.no_perf = True
    chain = llama_cpp.llama_sampler_chain_init(chain_params)
    for part in parts:
        # The chain takes ownership: freeing the chain frees its parts.
        llama_cpp.llama_sampler_chain_add(chain, part)
    return chain


def _choice_parts(params: SamplingParams, default_seed: int) -> list[Any]:
    """The samplers that cut the candidates and choose one: greedy, or top_k, top_p, temp, dist."""
    parts: list[Any] = []
    if params.temperature <= 0:
        parts.append(llama_cpp.llama_sampler_init_greedy())
    else:
        if params.top_k > 0:
            parts.append(llama_cpp.llama_sampler_init_top_k(params.top_k))
        if 0.0 < params.top_p < 1.0:
            parts.append(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        parts.append(llama_cpp.llama_sampler_init_temp(params.temperature))
        parts.append(llama_cpp.llama_sampler_init_dist(resolve_seed(params.seed, default_seed)))
    return parts


class _Candidates:
    """Every token of the vocabulary with its logit, as a `llama_token_data_array` over a numpy
    buffer allocated once: llama.cpp's samplers sort and cut it in place, so it is rewritten
    from the logits before each pass."""

    __slots__ = ("_buffer", "_data", "_ids", "array", "pointer")

    def __init__(self, n_vocab: int) -> None:
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._buffer = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._data = self._buffer.ctypes.data_as(llama_cpp.llama_token_data_p)
        self.array: Any = llama_cpp.llama_token_data_array(self._data, n_vocab, -1, False)
        self.pointer = ctypes.pointer(self.array)

    def fill(self, logits: NDArray[np.float32]) -> None:
        buffer, array = self._buffer, self.array
        buffer["id"] = self._ids
        buffer["logit"] = logits
        buffer["p"] = 0.0
        # A sampler may move the start (llama.cpp's xtc does).
        array.data, array.size, array.selected, array.sorted = (
            self._data,
            len(self._ids),
            -1,
            False,
        )

    def selected(self) -> tuple[int, float]:
        """The token the chain chose and its logit; -inf when nothing was left to choose."""
        array = self.array
        if array.selected < 0:
            return -1, _NEG_INF
        chosen = array.data[array.selected]
        return int(chosen.id), float(chosen.logit)


class _OneToken:
    """A one-token `llama_token_data_array`, for asking the grammar about a single token."""

    __slots__ = ("_array", "_token", "pointer")

    def __init__(self) -> None:
        self._token: Any = llama_cpp.llama_token_data(0, 0.0, 0.0)
        self._array: Any = llama_cpp.llama_token_data_array(
            ctypes.pointer(self._token), 1, -1, False
        )
        self.pointer = ctypes.pointer(self._array)

    def allowed_by(self, grammar: Any, token: int) -> bool:
        one, array = self._token, self._array
        one.id, one.logit, one.p = token, 1.0, 0.0
        array.size, array.selected, array.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(grammar, self.pointer)
        return bool(one.logit != _NEG_INF)


class SequenceSampler:
    """penalties (if any is on), DRY (if on), top_k, top_p, temp, dist; greedy if temperature
    <= 0. DRY needs `dry`, the model's DRY samplers.

    With a grammar (a grammar sampler, which this object then owns and frees), every token
    sampled keeps to it. `grammar_first` masks the whole vocabulary with the grammar before every
    token instead of checking the sampled one: slower, kept to compare against."""

    __slots__ = (
        "_candidates",
        "_chain",
        "_grammar",
        "_grammar_first",
        "_guard",
        "_n_vocab",
        "_one",
        "_shortlist",
        "masked_vocabularies",
        "resamples",
    )

    def __init__(
        self,
        params: SamplingParams,
        *,
        n_vocab: int,
        default_seed: int = -1,
        grammar: Any = None,
        grammar_first: bool = False,
        dry: DrySamplers | None = None,
    ) -> None:
        guard_parts = _guard_parts(params, n_vocab, dry)
        choice_parts = _choice_parts(params, default_seed)
        # Without a grammar one chain does it all, sampled by llama.cpp in one call; with one, the
        # guard is a chain of its own, for the resample's shortlist to come after it.
        self._guard: Any = None
        if grammar and guard_parts:
            self._guard = _new_chain(guard_parts)
            self._chain: Any = _new_chain(choice_parts)
        else:
            self._chain = _new_chain(guard_parts + choice_parts)
        self._grammar: Any = grammar or None
        self._grammar_first = grammar_first
        self._n_vocab = n_vocab
        self._candidates: _Candidates | None = None
        self._one: _OneToken | None = None
        self._shortlist: Any = None
        # How many tokens the grammar refused, each sampled again from the allowed ones; and of
        # those, how many the shortlist held no allowed token for (the whole vocabulary masked).
        self.resamples = 0
        self.masked_vocabularies = 0

    def sample(self, ctx: Any, index: int) -> int:
        """Sample (and accept) a token from the logits of batch position `index`."""
        if self._grammar is None:
            return int(llama_cpp.llama_sampler_sample(self._chain, ctx, index))
        logits = llama_cpp.llama_get_logits_ith(ctx, index)
        return self.sample_logits(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)))

    def sample_logits(self, logits: NDArray[np.float32]) -> int:
        """Sample (and accept) a token from one position's logits (`n_vocab` floats)."""
        if self._candidates is None:
            self._candidates, self._one = _Candidates(self._n_vocab), _OneToken()
        candidates, chain, grammar = self._candidates, self._chain, self._grammar
        self._fill_guarded(logits)
        if grammar is not None and self._grammar_first:
            llama_cpp.llama_sampler_apply(grammar, candidates.pointer)
        llama_cpp.llama_sampler_apply(chain, candidates.pointer)
        token, logit = candidates.selected()
        if grammar is not None:
            assert self._one is not None
            if not self._grammar_first and not self._one.allowed_by(grammar, token):
                self.resamples += 1
                token, logit = self._resample(logits)
            # llama.cpp aborts the process when a grammar accepts a token it refuses: a grammar
            # that allows nothing more ends this sequence, not the server.
            if logit == _NEG_INF:
                raise InternalError("the answer's grammar allows no next token")
            llama_cpp.llama_sampler_accept(grammar, token)
        if self._guard is not None:
            llama_cpp.llama_sampler_accept(self._guard, token)
        llama_cpp.llama_sampler_accept(chain, token)
        return token

    def _fill_guarded(self, logits: NDArray[np.float32]) -> None:
        """The candidates from `logits`, penalised by the loop guard when it runs apart."""
        candidates = self._candidates
        assert candidates is not None
        candidates.fill(logits)
        if self._guard is not None:
            llama_cpp.llama_sampler_apply(self._guard, candidates.pointer)

    def _resample(self, logits: NDArray[np.float32]) -> tuple[int, float]:
        """A token the grammar allows: from the shortlist if it holds one, else from the whole
        vocabulary (the grammar over every token costs milliseconds; over the shortlist, not)."""
        candidates, chain, grammar = self._candidates, self._chain, self._grammar
        assert candidates is not None
        if self._shortlist is None:
            self._shortlist = llama_cpp.llama_sampler_init_top_k(SHORTLIST)
        self._fill_guarded(logits)
        llama_cpp.llama_sampler_apply(self._shortlist, candidates.pointer)
        llama_cpp.llama_sampler_apply(grammar, candidates.pointer)
        # The grammar's -inf leaves the shortlist out of order: a top_k that trusted the flag
        # would cut allowed tokens and keep refused ones.
        candidates.array.sorted = False
        llama_cpp.llama_sampler_apply(chain, candidates.pointer)
        token, logit = candidates.selected()
        if logit != _NEG_INF:
            return token, logit
        self.masked_vocabularies += 1
        self._fill_guarded(logits)
        llama_cpp.llama_sampler_apply(grammar, candidates.pointer)
        llama_cpp.llama_sampler_apply(chain, candidates.pointer)
        return candidates.selected()

    def stages(self) -> list[str]:
        """The chain's samplers by llama.cpp's names, in order (`penalties`, `dry`, ...)."""
        chains = [c for c in (self._guard, self._chain) if c]
        return [
            llama_cpp.llama_sampler_name(llama_cpp.llama_sampler_chain_get(chain, i)).decode()
            for chain in chains
            for i in range(llama_cpp.llama_sampler_chain_n(chain))
        ]

    def close(self) -> None:
        """Free the chains, the grammar and the shortlist; idempotent."""
        if self._guard:
            llama_cpp.llama_sampler_free(self._guard)
            self._guard = None
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None
        if self._shortlist:
            llama_cpp.llama_sampler_free(self._shortlist)
            self._shortlist = None
