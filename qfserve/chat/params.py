"""Sampling parameters of a chat request: range rules and the endpoint's defaults."""

from __future__ import annotations

from dataclasses import dataclass

from qfserve.config import EndpointSettings
from qfserve.engines.base import SamplingParams
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


def resolve_sampling(asked: RequestedSampling, endpoint: EndpointSettings) -> SamplingParams:
    """Check each field's range (336003 with the rule) and fill the gaps from the endpoint."""
    if asked.temperature is not None and not 0 < asked.temperature <= 1:
        raise RuleViolation("temperature must be in (0, 1]")
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
    if asked.max_output_tokens is not None and not 2 <= asked.max_output_tokens <= ceiling:
        raise RuleViolation(f"max_output_tokens must be in [2, {ceiling}]")
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
    )
