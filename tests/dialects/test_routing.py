"""Unknown paths and wrong methods are answered in the shape of the dialect the path belongs to:
`/v2/...` (and IAM's bearer-token route) in V2's, `/v1/...` in OpenAI's, everything else in
Qianfan V1's (HTTP 200 and an `error_code`)."""

from __future__ import annotations

import pytest

from tests.dialects.dialects import OPENAI, V1, V2, Dialect
from tests.inprocess import V1_PREFIX, InProcess


@pytest.mark.parametrize(
    ("method", "path", "dialect", "code", "status"),
    [
        ("POST", "/v2/nothing", V2, "not_found", 404),
        ("GET", "/v2/nothing", V2, "not_found", 404),
        ("GET", "/v2", V2, "not_found", 404),
        ("GET", "/v2/chat/completions", V2, "method_not_supported", 405),
        ("POST", "/v2/models", V2, "method_not_supported", 405),
        ("POST", "/v1/BCE-BEARER/token", V2, "method_not_supported", 405),
        ("POST", "/v1/nothing", OPENAI, 3, 404),
        ("GET", "/v1/chat/completions", OPENAI, 336101, 405),
        ("POST", "/v1/models", OPENAI, 336101, 405),
        ("POST", f"{V1_PREFIX}/nothing", V1, 3, 200),
        ("POST", "/rpc/2.0/nothing", V1, 3, 200),
        ("GET", "/whatever", V1, 3, 200),
        ("POST", "/", V1, 3, 200),
        ("GET", f"{V1_PREFIX}/chat/llama_2_7b", V1, 336101, 200),
        ("PUT", f"{V1_PREFIX}/chat/llama_2_7b", V1, 336101, 200),
    ],
    ids=lambda value: value.name if isinstance(value, Dialect) else str(value),
)
def test_unknown_paths_and_wrong_methods(
    qf: InProcess, method: str, path: str, dialect: Dialect, code: int | str, status: int
) -> None:
    response = qf.client.request(method, path, json={})
    failure = dialect.failure(response)
    assert (failure.code, failure.status) == (code, status), failure.message
