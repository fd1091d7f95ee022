"""Qianfan V2's stream chunks: only the usage chunk has a `usage` field. The qianfan SDK's async
stream reads `body.get("usage", {}).get(...)` on every chunk: `"usage": null` would crash it."""

from __future__ import annotations

import json
from typing import Any

from qfserve.api.qianfan_v2.render import QIANFAN_V2
from qfserve.serving.request import Usage


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
