"""Qianfan V2's rendering: error statuses by code name (the spec's table, and what it leaves open),
and stream chunks where only the usage chunk has a `usage` field. The qianfan SDK's async stream
reads `body.get("usage", {}).get(...)` on every chunk: `"usage": null` would crash it."""

from __future__ import annotations

import json
from typing import Any

from qfserve.api.qianfan_v2.render import QIANFAN_V2
from qfserve.errors import BodyTooLarge, InvalidArgument, UnknownRoute
from qfserve.serving.request import Usage


def test_a_body_over_its_bound_is_413_with_the_code_invalid_argument() -> None:
    response = QIANFAN_V2.error_response(BodyTooLarge("the request body is too large"))
    assert response.status_code == 413
    body = json.loads(bytes(response.body))
    assert body["error"]["code"] == "invalid_argument"
    assert body["error"]["type"] == "invalid_request_error"


def test_other_invalid_arguments_stay_400() -> None:
    assert QIANFAN_V2.error_status(InvalidArgument("bad")) == 400


def test_an_unknown_path_is_404_not_found() -> None:
    response = QIANFAN_V2.error_response(UnknownRoute())
    assert response.status_code == 404
    assert json.loads(bytes(response.body))["error"]["code"] == "not_found"


def event(data: bytes) -> dict[str, Any]:
    assert data.startswith(b"data: ") and data.endswith(b"\n\n")
    return dict(json.loads(data[6:]))


def test_only_the_usage_chunk_has_a_usage() -> None:
    chunk = event(QIANFAN_V2.chunk("as-1", "m", {"content": "Hi"}))
    assert "usage" not in chunk
    assert chunk["choices"][0]["flag"] == 0 and chunk["choices"][0]["ban_round"] == -1
    last = event(QIANFAN_V2.usage_chunk("as-1", "m", Usage(3, 2, 1)))
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens_details"] == {"cached_tokens": 1}
