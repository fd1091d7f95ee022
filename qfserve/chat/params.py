"""Sampling parameters of a chat request: range rules and the endpoint's defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qfserve.config import EndpointSettings
from qfserve.engines.base import LoopGuard, SamplingParams
from qfserve.errors import RuleViolation

MAX_STOPS, MAX_STOP_CHARS = 4, 20


@dataclass(frozen=True, slots=True)
class RequestedSampling:
    """What the client asked for; None means "the endpoint's default"."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    penalty_score: float | None = None
    stop: list[str] | None = None
    max_output_tokens: int | None = None
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class DialectRules:
    """Where the dialects differ: Qianfan's temperature is in (0, 1] and V1's output at least 2
    tokens; OpenAI's temperature is in [0, 2] (0: greedy) and its output at least 1 token."""

    zero_temperature: bool = False
    max_temperature: float = 1.0
    min_output_tokens: int = 2


QIANFAN = DialectRules()
OPENAI = DialectRules(zero_temperature=True, max_temperature=2.0, min_output_tokens=1)
# Qianfan V2: V1's temperature range, OpenAI's output floor.
QIANFAN_V2 = DialectRules(min_output_tokens=1)


def resolve_sampling(
    asked: RequestedSampling, endpoint: EndpointSettings, rules: DialectRules = QIANFAN
) -> SamplingParams:
    """Check each field's range (336003 with the rule) and fill the gaps from the endpoint."""
    temperature = asked.temperature
    if temperature is not None:
        low_ok = temperature >= 0 if rules.zero_temperature else temperature > 0
        if not low_ok or temperature > rules.max_temperature:
            opening = "[" if rules.zero_temperature else "("
            raise RuleViolation(f"temperature must be in {opening}0, {rules.max_temperature:g}]")
    if asked.top_k is not None and asked.top_k < 1:
        raise RuleViolation("top_k must be >= 1")
    if asked.top_p is not None and not 0 <= asked.top_p <= 1:
        raise RuleViolation("top_p must be in [0, 1]")
    if asked.penalty_score is not None and not 1 <= asked.penalty_score <= 2:
        raise RuleViolation("penalty_score must be in [1, 2]")
    if asked.stop is not None:
        if len(asked.stop) > MAX_STOPS:
            raise RuleViolation(f"the length of stop must be at most {MAX_STOPS}")
        if any(len(s) > MAX_STOP_CHARS for s in asked.stop):
            raise RuleViolation(f"each stop must be at most {MAX_STOP_CHARS} characters")
    ceiling = endpoint.max_output_tokens
    floor = rules.min_output_tokens
    if asked.max_output_tokens is not None and not floor <= asked.max_output_tokens <= ceiling:
        raise RuleViolation(f"max_output_tokens must be in [{floor}, {ceiling}]")
    return SamplingParams(
        max_tokens=asked.max_output_tokens or min(endpoint.default_max_output_tokens, ceiling),
        temperature=asked.temperature if asked.temperature is not None else endpoint.temperature,
        top_p=asked.top_p if asked.top_p is not None else endpoint.top_p,
        top_k=asked.top_k if asked.top_k is not None else endpoint.top_k,
        repeat_penalty=(
            asked.penalty_score if asked.penalty_score is not None else endpoint.penalty_score
        ),
        stop=tuple(s for s in asked.stop or () if s),
        seed=asked.seed,
        loop_guard=loop_guard(endpoint),
    )


def loop_guard(endpoint: EndpointSettings) -> LoopGuard:
    """The endpoint's loop guard settings, for every request it serves."""
    return LoopGuard(
        dry_multiplier=endpoint.dry_multiplier,
        dry_base=endpoint.dry_base,
        dry_allowed_length=endpoint.dry_allowed_length,
        dry_last_n=endpoint.dry_last_n,
        presence_penalty=endpoint.presence_penalty,
        frequency_penalty=endpoint.frequency_penalty,
        penalty_last_n=endpoint.penalty_last_n,
    )


def structured_guard(guard: LoopGuard | None) -> LoopGuard | None:
    """The loop guard of an answer held to a grammar (JSON, a tool call): DRY only, breaking
    at newlines only. Presence and frequency penalties would push it away from the quotes,
    commas and braces its structure repeats by design, and a small model then wanders until
    the token cap. DRY's usual breakers, quotes and colons, stand between every key and value
    of JSON, so with them DRY never sees a repeated pair, nor `{ "2": { "2": ...` nesting
    forever, as a loop; the grammar forces the structural tokens anyway, so penalising them
    costs nothing."""
    if guard is None:
        return None
    return dataclasses.replace(
        guard, presence_penalty=0.0, frequency_penalty=0.0, dry_breakers=("\n",)
    )
