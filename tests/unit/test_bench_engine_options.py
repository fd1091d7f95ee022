"""The options of `qfserve bench --kernels / --memory / --loops`, and the peers' flags. Pure."""

from __future__ import annotations

import pytest

from qfserve.bench.kernels import Variant, parse_variants
from qfserve.bench.loopguard import GUARDS, guard_lines, parse_guards
from qfserve.bench.peers import qfserve_kv_flags, qfserve_sampling_flags
from qfserve.config import EndpointSettings, EngineSettings


def test_variants_name_weights_kv_type_context_and_pool() -> None:
    assert parse_variants("q4_1, Q8_0,q4_1:q8_0,q4_0:q8_0:4096,q4_0:f16:6144:49152") == [
        Variant("q4_1"),
        Variant("q8_0"),
        Variant("q4_1", "q8_0"),
        Variant("q4_0", "q8_0", 4096),
        Variant("q4_0", "f16", 6144, 49152),
    ]
    assert Variant("q4_0", "q8_0", 4096).name == "Q4_0, KV q8_0, ctx 4096"
    assert Variant("q4_0", kv_cache_tokens=49152).name == "Q4_0, pool 49152"


@pytest.mark.parametrize(
    "text", ["", "q5_k", "q4_1:q9", "q4_1:f16:big", "q4_1:f16:1:big", "q4_1:f16:1:2:3"]
)
def test_a_wrong_variant_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_variants(text)


def test_guards_are_presets() -> None:
    assert parse_guards("off, dry") == ["off", "dry"]
    with pytest.raises(ValueError, match="choose among"):
        parse_guards("off,nope")
    assert len(guard_lines()) == 2 + len(GUARDS)


def test_llama_server_samples_with_qfserves_loop_guard() -> None:
    flags = qfserve_sampling_flags()
    given = dict(zip(flags[::2], flags[1::2], strict=True))
    endpoint = EndpointSettings()
    assert float(given["--dry-multiplier"]) == endpoint.dry_multiplier > 0
    assert int(given["--dry-penalty-last-n"]) == endpoint.dry_last_n
    assert given["--cache-type-k"] == given["--cache-type-v"] == EngineSettings().kv_type


def test_llama_server_lays_its_kv_cache_out_as_qfserve_does() -> None:
    assert qfserve_kv_flags(8, 6144) == ["--ctx-size", str(2 * 6144), "--kv-unified"]
    assert qfserve_kv_flags(1, 6144) == ["--ctx-size", "6144", "--no-kv-unified"]
