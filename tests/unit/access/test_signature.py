"""Our verifier against the SDK's own signer (baidubce's bce_v1_signer), the real peer."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from baidubce.auth.bce_credentials import BceCredentials
from baidubce.auth.bce_v1_signer import sign
from baidubce.utils import get_canonical_time

from qfserve.access.signature import parse_authorization, verify
from qfserve.errors import SignatureInvalid

PATH = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/llama_2_7b"


def signed(
    ak: str, sk: str, query: dict[str, str], expiration: int = 1800
) -> tuple[str, dict[str, str]]:
    stamp = time.time()
    headers = {
        "Content-Type": "application/json",
        "Host": "127.0.0.1:8000",
        "x-bce-date": get_canonical_time(stamp).decode(),
    }
    authorization = sign(
        BceCredentials(ak, sk),
        b"POST",
        PATH.encode(),
        {k.encode(): v for k, v in headers.items()},
        {k.encode(): v for k, v in query.items()},
        timestamp=stamp,
        expiration_in_seconds=expiration,
        headers_to_sign={k.lower().encode() for k in headers},
    ).decode()
    return authorization, headers


def test_accepts_the_sdk_signature() -> None:
    authorization, headers = signed("AK1", "SECRET", {"a": "x y", "b": "中文"})
    request = parse_authorization(authorization)
    assert request.access_key == "AK1"
    verify("SECRET", request, "POST", PATH, [("a", "x y"), ("b", "中文")], headers)


@pytest.mark.parametrize(
    "tamper",
    ["secret", "path", "query", "header", "method"],
)
def test_refuses_any_change(tamper: str) -> None:
    authorization, headers = signed("AK1", "SECRET", {"a": "1"})
    request = parse_authorization(authorization)
    secret, method, path, query = "SECRET", "POST", PATH, [("a", "1")]
    if tamper == "secret":
        secret = "OTHER"
    elif tamper == "path":
        path = PATH + "x"
    elif tamper == "query":
        query = [("a", "2")]
    elif tamper == "header":
        headers = {**headers, "Host": "evil:1"}
    else:
        method = "GET"
    with pytest.raises(SignatureInvalid):
        verify(secret, request, method, path, query, headers)


def test_expired_and_malformed() -> None:
    authorization, headers = signed("AK1", "SECRET", {}, expiration=60)
    request = parse_authorization(authorization)
    later = datetime.now(UTC) + timedelta(seconds=120)
    with pytest.raises(SignatureInvalid):
        verify("SECRET", request, "POST", PATH, [], headers, now=later)
    for bad in ("bce-auth-v1/a/b", "Bearer x", "bce-auth-v1/a/2024-01-01T00:00:00Z/x/host/sig"):
        with pytest.raises(SignatureInvalid):
            parse_authorization(bad)
