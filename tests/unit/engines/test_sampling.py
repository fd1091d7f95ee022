"""SequenceSampler on hand-made logits, with the bundled model's vocabulary (no decoding)."""

from __future__ import annotations

import ctypes
import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import llama_cpp
import numpy as np
import pytest
from llama_cpp.llama_grammar import JSON_GBNF
from numpy.typing import NDArray

from qfserve.engines.base import LoopGuard, SamplingParams
from qfserve.engines.grammar import GrammarCache
from qfserve.engines.model import LlamaModel
from qfserve.engines.registry import bundled_model_path
from qfserve.engines.sampling import SHORTLIST, DrySamplers, SequenceSampler
from qfserve.errors import InternalError, InvalidArgument

pytestmark = pytest.mark.model

YES_NO = 'root ::= "yes" | "no"'
WORDS = "root ::= [a-z ]+"
GREEDY = SamplingParams(max_tokens=64, temperature=0.0)


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    loaded = LlamaModel(str(bundled_model_path()))
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def grammars(model: LlamaModel) -> Iterator[GrammarCache]:
    cache = GrammarCache(model.vocab)
    yield cache
    cache.close()


@pytest.fixture(scope="module")
def dry(model: LlamaModel) -> Iterator[DrySamplers]:
    samplers = DrySamplers(model.vocab)
    yield samplers
    samplers.close()


def one_token(model: LlamaModel, text: str) -> int:
    (token,) = model.tokenize(text, special=False)
    return token


def favouring(model: LlamaModel, *tokens: int) -> NDArray[np.float32]:
    """Logits where `tokens` come first, in that order, and the rest trail far behind."""
    logits = np.full(model.n_vocab, -5.0, dtype=np.float32)
    for rank, token in enumerate(tokens):
        logits[token] = 10.0 - rank
    return logits


def sampler(
    model: LlamaModel,
    grammars: GrammarCache,
    grammar: str | None,
    params: SamplingParams = GREEDY,
    **options: Any,
) -> SequenceSampler:
    compiled = grammars.sampler(grammar) if grammar is not None else None
    return SequenceSampler(params, n_vocab=model.n_vocab, grammar=compiled, **options)


def test_a_token_the_grammar_allows_is_taken_without_masking(
    model: LlamaModel, grammars: GrammarCache
) -> None:
    yes = one_token(model, "yes")
    s = sampler(model, grammars, YES_NO)
    assert s.sample_logits(favouring(model, yes)) == yes
    assert s.resamples == 0
    s.close()


def test_a_refused_token_is_sampled_again_from_what_the_grammar_allows(
    model: LlamaModel, grammars: GrammarCache
) -> None:
    maybe, no = one_token(model, "maybe"), one_token(model, "no")
    s = sampler(model, grammars, YES_NO)
    # The model prefers "maybe"; of what the grammar allows it prefers "no".
    assert s.sample_logits(favouring(model, maybe, no)) == no
    assert s.resamples == 1
    # The answer is complete: only the end of generation is left, whatever the model prefers.
    assert model.is_eog(s.sample_logits(favouring(model, maybe, no)))
    s.close()


def test_a_refused_token_is_found_beyond_the_shortlist_when_it_holds_none(
    model: LlamaModel, grammars: GrammarCache
) -> None:
    """The model's likeliest tokens are all refused: the whole vocabulary is masked instead."""
    refused = [
        token
        for token in range(1000, 4000)
        if model.token_piece(token).lstrip()[:1] not in (b"y", b"n", b"")
    ][: SHORTLIST + 10]
    s = sampler(model, grammars, YES_NO)
    chosen = model.token_piece(s.sample_logits(favouring(model, *refused)))
    assert chosen and (b"yes".startswith(chosen) or b"no".startswith(chosen))
    assert s.resamples == 1
    s.close()


def test_greedy_picks_what_the_grammar_first_chain_picks(
    model: LlamaModel, grammars: GrammarCache, dry: DrySamplers
) -> None:
    rng = np.random.default_rng(3)
    guarded = [
        SamplingParams(max_tokens=64, temperature=0.0, repeat_penalty=1.5),
        dataclasses.replace(GREEDY, loop_guard=DRY),
        dataclasses.replace(GREEDY, loop_guard=dataclasses.replace(DRY, presence_penalty=1.0)),
    ]
    kept_own_choice = 0
    for grammar in (WORDS, JSON_GBNF):
        for params in (GREEDY, *guarded):
            fast = sampler(model, grammars, grammar, params, dry=dry)
            first = sampler(model, grammars, grammar, params, grammar_first=True, dry=dry)
            for _ in range(40):
                logits = rng.normal(0.0, 3.0, model.n_vocab).astype(np.float32)
                assert fast.sample_logits(logits) == first.sample_logits(logits)
            assert fast.resamples > 0, grammar
            kept_own_choice += fast.resamples < 40
            fast.close()
            first.close()
    # Both ways were taken: the model's own choice, and a masked resample.
    assert kept_own_choice


def test_a_loop_guard_keeps_the_resample_on_the_shortlist(
    model: LlamaModel, grammars: GrammarCache, dry: DrySamplers
) -> None:
    """The guard's penalties come before the shortlist, so the resample finds the allowed token
    the chain would choose on it, without masking the whole vocabulary."""
    maybe, no, yes = (one_token(model, w) for w in ("maybe", "no", "yes"))
    params = dataclasses.replace(
        GREEDY, loop_guard=LoopGuard(dry_multiplier=0.0, presence_penalty=2.0, penalty_last_n=8)
    )
    twins = [
        sampler(model, grammars, 'root ::= ("yes" | "no")+', params, dry=dry, **options)
        for options in ({}, {"grammar_first": True})
    ]
    assert twins[0].stages() == ["penalties", "greedy"]
    # "no" is said; then the grammar refuses the favourite, "maybe", and the presence penalty
    # puts "yes" ahead of "no" among the allowed tokens.
    logits = favouring(model, maybe, no, yes)
    logits[no], logits[yes] = 9.0, 8.5
    for s in twins:
        assert s.sample_logits(favouring(model, no)) == no
        assert s.sample_logits(logits) == yes
    assert (twins[0].resamples, twins[0].masked_vocabularies) == (1, 0)
    for s in twins:
        s.close()


def test_sampled_tokens_keep_to_the_grammar_and_follow_the_seed(
    model: LlamaModel, grammars: GrammarCache
) -> None:
    params = SamplingParams(max_tokens=64, temperature=0.9, top_k=40, top_p=0.95, seed=11)
    runs = []
    for _ in range(2):
        rng = np.random.default_rng(5)
        s = sampler(model, grammars, WORDS, params)
        runs.append(
            [s.sample_logits(rng.normal(0, 3, model.n_vocab).astype(np.float32)) for _ in range(30)]
        )
        s.close()
    assert runs[0] == runs[1]
    text = b"".join(model.token_piece(token) for token in runs[0]).decode()
    assert re.fullmatch("[a-z ]+", text), text


def test_a_free_sampler_samples_the_logits_as_they_are(
    model: LlamaModel, grammars: GrammarCache
) -> None:
    maybe = one_token(model, "maybe")
    s = sampler(model, grammars, None)
    assert s.sample_logits(favouring(model, maybe)) == maybe
    s.close()


def test_a_grammar_that_allows_nothing_fails_the_sequence_not_the_process(
    model: LlamaModel, grammars: GrammarCache
) -> None:
    # No token's text starts with a NUL byte, and the grammar is not complete before one.
    s = sampler(model, grammars, r'root ::= "\x00"')
    with pytest.raises(InternalError):
        s.sample_logits(favouring(model, one_token(model, "yes")))
    s.close()


def test_close_frees_the_grammar_once(
    model: LlamaModel, grammars: GrammarCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = grammars.sampler(YES_NO)
    freed: list[Any] = []
    real_free = llama_cpp.llama_sampler_free

    def counting_free(ptr: Any) -> None:
        freed.append(ctypes.cast(ptr, ctypes.c_void_p).value)
        real_free(ptr)

    monkeypatch.setattr(llama_cpp, "llama_sampler_free", counting_free)
    s = SequenceSampler(GREEDY, n_vocab=model.n_vocab, grammar=compiled)
    s.close()
    s.close()
    address = ctypes.cast(compiled, ctypes.c_void_p).value
    assert freed.count(address) == 1 and len(freed) == 2  # the grammar and the chain


@pytest.mark.parametrize("text", ["", "root ::= undefined-rule", 'root ::= "a" \0 "b"'])
def test_a_grammar_llama_cpp_cannot_use_is_an_invalid_argument(
    grammars: GrammarCache, text: str
) -> None:
    with pytest.raises(InvalidArgument):
        grammars.sampler(text)


DRY = LoopGuard(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2, dry_last_n=64)


@pytest.mark.parametrize(
    ("params", "stages"),
    [
        (GREEDY, ["greedy"]),
        (dataclasses.replace(GREEDY, loop_guard=LoopGuard()), ["greedy"]),
        (dataclasses.replace(GREEDY, loop_guard=DRY), ["dry", "greedy"]),
        (
            SamplingParams(
                max_tokens=8,
                temperature=0.7,
                repeat_penalty=1.1,
                loop_guard=dataclasses.replace(DRY, presence_penalty=0.5),
            ),
            ["penalties", "dry", "top-k", "top-p", "temp", "dist"],
        ),
        (
            dataclasses.replace(GREEDY, loop_guard=LoopGuard(frequency_penalty=0.3)),
            ["penalties", "greedy"],
        ),
    ],
)
def test_the_loop_guard_settings_reach_the_chain(
    model: LlamaModel, dry: DrySamplers, params: SamplingParams, stages: list[str]
) -> None:
    s = SequenceSampler(params, n_vocab=model.n_vocab, dry=dry)
    assert s.stages() == stages
    s.close()


def _repeat_then_choose(model: LlamaModel, s: SequenceSampler) -> int:
    """apple pear plum apple pear, then "plum" (which would repeat a sequence of three) a
    little ahead of "fig": what `s` chooses."""
    apple, pear, plum, fig = (one_token(model, w) for w in (" apple", " pear", " plum", " fig"))
    for token in (apple, pear, plum, apple, pear):
        assert s.sample_logits(favouring(model, token)) == token
    logits = favouring(model, plum, fig)
    logits[fig] = logits[plum] - 0.5
    chosen = s.sample_logits(logits)
    s.close()
    return chosen


def test_dry_turns_away_from_repeating_a_sequence(model: LlamaModel, dry: DrySamplers) -> None:
    plum, fig = one_token(model, " plum"), one_token(model, " fig")
    chosen = {
        name: _repeat_then_choose(
            model,
            SequenceSampler(
                dataclasses.replace(GREEDY, loop_guard=guard), n_vocab=model.n_vocab, dry=dry
            ),
        )
        for name, guard in (("off", None), ("dry", DRY))
    }
    assert chosen == {"off": plum, "dry": fig}


def test_every_dry_sampler_starts_afresh(model: LlamaModel) -> None:
    """Cloned from one template per guard, a sequence's DRY sampler carries no other
    sequence's history, and the breakers of its own guard."""
    samplers = DrySamplers(model.vocab)
    fig = one_token(model, " fig")
    params = dataclasses.replace(GREEDY, loop_guard=DRY)
    for _ in range(3):
        s = SequenceSampler(params, n_vocab=model.n_vocab, dry=samplers)
        assert _repeat_then_choose(model, s) == fig
    # A sequence that saw nothing yet takes the favourite.
    fresh = SequenceSampler(params, n_vocab=model.n_vocab, dry=samplers)
    plum = one_token(model, " plum")
    assert fresh.sample_logits(favouring(model, plum)) == plum
    fresh.close()
    # Another guard, another template; the same guard again, none.
    other = dataclasses.replace(DRY, dry_breakers=(" pear",))
    SequenceSampler(
        dataclasses.replace(GREEDY, loop_guard=other), n_vocab=model.n_vocab, dry=samplers
    ).close()
    assert len(samplers) == 2
    samplers.close()
    assert len(samplers) == 0


def test_dry_breakers_stop_a_match(model: LlamaModel, dry: DrySamplers) -> None:
    """With " pear" a breaker, "apple pear" is no repeated sequence to extend: "plum" stays."""
    guard = dataclasses.replace(DRY, dry_breakers=(" pear",))
    s = SequenceSampler(
        dataclasses.replace(GREEDY, loop_guard=guard), n_vocab=model.n_vocab, dry=dry
    )
    assert _repeat_then_choose(model, s) == one_token(model, " plum")


def test_dry_needs_the_vocabulary(model: LlamaModel) -> None:
    with pytest.raises(InternalError):
        SequenceSampler(dataclasses.replace(GREEDY, loop_guard=DRY), n_vocab=model.n_vocab)
