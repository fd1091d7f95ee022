from __future__ import annotations

import pytest

from qfserve.chat.params import RequestedSampling, resolve_sampling, structured_guard
from qfserve.config import EndpointSettings
from qfserve.engines.base import LoopGuard
from qfserve.errors import RuleViolation

ENDPOINT = EndpointSettings()


def test_defaults_come_from_the_endpoint() -> None:
    params = resolve_sampling(RequestedSampling(), ENDPOINT)
    assert params.temperature == 0.6 and params.top_p == 0.9
    assert params.max_tokens == ENDPOINT.default_max_output_tokens
    assert params.stop == ()


def test_asked_values_win() -> None:
    asked = RequestedSampling(temperature=1.0, top_p=0.0, top_k=3, stop=["x"], max_output_tokens=2)
    params = resolve_sampling(asked, ENDPOINT)
    assert (params.temperature, params.top_p, params.top_k, params.max_tokens) == (1.0, 0.0, 3, 2)
    assert params.stop == ("x",)


@pytest.mark.parametrize(
    "asked",
    [
        RequestedSampling(temperature=0),
        RequestedSampling(temperature=1.01),
        RequestedSampling(top_p=-0.1),
        RequestedSampling(top_k=0),
        RequestedSampling(penalty_score=0.9),
        RequestedSampling(stop=["a"] * 5),
        RequestedSampling(stop=["a" * 21]),
        RequestedSampling(max_output_tokens=1),
        RequestedSampling(max_output_tokens=2049),
    ],
)
def test_out_of_range_is_336003(asked: RequestedSampling) -> None:
    with pytest.raises(RuleViolation):
        resolve_sampling(asked, ENDPOINT)


def test_the_endpoint_loop_guard_reaches_every_request() -> None:
    endpoint = EndpointSettings(
        dry_multiplier=1.2, dry_base=2.0, dry_allowed_length=3, dry_last_n=256,
        presence_penalty=0.4, frequency_penalty=0.1, penalty_last_n=128,
    )  # fmt: skip
    guard = resolve_sampling(RequestedSampling(temperature=0.5), endpoint).loop_guard
    assert guard == LoopGuard(
        dry_multiplier=1.2, dry_base=2.0, dry_allowed_length=3, dry_last_n=256,
        presence_penalty=0.4, frequency_penalty=0.1, penalty_last_n=128,
    )  # fmt: skip


def test_the_default_endpoint_guards_with_dry() -> None:
    guard = resolve_sampling(RequestedSampling(), ENDPOINT).loop_guard
    assert guard is not None and guard.dry_multiplier > 0


def test_a_structured_answer_is_guarded_by_dry_breaking_at_newlines_only() -> None:
    endpoint = EndpointSettings(presence_penalty=0.3, frequency_penalty=0.1)
    guard = resolve_sampling(RequestedSampling(), endpoint).loop_guard
    assert guard is not None and '"' in guard.dry_breakers and ":" in guard.dry_breakers
    structured = structured_guard(guard)
    assert structured is not None
    assert structured.dry_multiplier == guard.dry_multiplier
    assert (structured.presence_penalty, structured.frequency_penalty) == (0.0, 0.0)
    assert structured.dry_breakers == ("\n",)
    assert structured_guard(None) is None
