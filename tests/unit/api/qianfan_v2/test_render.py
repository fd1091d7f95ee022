"""Qianfan V2's stream chunks: `usage` is null on every chunk but the usage chunk."""

from __future__ import annotations

import json
from typing import Any

from qfserve.api.openai.render import OPENAI
from qfserve.api.qianfan_v2.render import QIANFAN_V2
from qfserve.serving.request import Usage


def event(data: bytes) -> dict[str, Any]:
    assert data.startswith(b"data: ") and data.endswith(b"\n\n")
    return dict(json.loads(data[6:]))


def test_v2_chunks_say_usage_is_null() -> None:
    chunk = event(QIANFAN_V2.chunk("as-1", "m", {"content": "Hi"}))
    assert "usage" in chunk and chunk["usage"] is None
    assert chunk["choices"][0]["flag"] == 0 and chunk["choices"][0]["ban_round"] == -1
    last = event(QIANFAN_V2.usage_chunk("as-1", "m", Usage(3, 2, 1)))
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens_details"] == {"cached_tokens": 1}


def test_openai_chunks_are_unchanged() -> None:
    assert "usage" not in event(OPENAI.chunk("chatcmpl-1", "m", {"content": "Hi"}))
