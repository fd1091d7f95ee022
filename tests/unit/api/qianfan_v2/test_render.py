"""V2's error statuses: the spec's table by code name, and what the spec leaves open."""

from __future__ import annotations

import json

from qfserve.api.qianfan_v2.render import QIANFAN_V2
from qfserve.errors import BodyTooLarge, InvalidArgument, UnknownRoute


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
