"""Stream events made from a format are byte for byte the events rendered from their bodies."""

from __future__ import annotations

import pytest

from qfserve.api.openai.render import OPENAI, OpenAIShape
from qfserve.api.qianfan_v1 import render as v1_render
from qfserve.api.qianfan_v1 import routes as v1_routes
from qfserve.api.qianfan_v2.render import QIANFAN_V2
from qfserve.api.responses import json_text
from qfserve.serving.request import Piece, Usage

TEXTS = [
    "",
    "Paris",
    'a "quote", a \\ backslash and a / slash',
    "percent signs: %d %s %% %",
    "中文，标点。",
    "emoji 😀 and é",
    "controls \x00\x01\x1f\n\r\t and \u2028\u2029",
]
NOW = 1795806653.75


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.time", lambda: NOW)


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("kind", ["chat.completion", "completion"])
def test_v1_events_before_the_last(text: str, kind: str) -> None:
    piece = Piece(text, 2, Usage(17, 5))
    request_id = "as-0123456789"
    expected = v1_render.sse(v1_routes._event(request_id, kind, 3, piece))
    made = v1_routes._middle_format(kind) % (
        json_text(request_id),
        int(NOW),
        3,
        json_text(text),
        17,
        2,
        22,
    )
    assert made == expected


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("shape", [OPENAI, QIANFAN_V2], ids=["openai", "v2"])
@pytest.mark.parametrize("model", ["instant", 'a 100% "odd" name'])
def test_openai_shaped_chunks_of_text(text: str, shape: OpenAIShape, model: str) -> None:
    response_id = shape.response_id("as-0123456789")
    expected = shape.chunk(response_id, model, {"content": text})
    made = shape.text_format(model) % (json_text(response_id), int(NOW), json_text(text))
    assert made == expected
