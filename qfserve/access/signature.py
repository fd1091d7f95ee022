"""Baidu's BCE signature, `bce-auth-v1`, verified as the server side of the SDK's signer.

    Authorization: bce-auth-v1/{AK}/{UTC time}/{expiration}/{signed headers}/{signature}
    signingKey = hex(HMAC-SHA256(SK, "bce-auth-v1/{AK}/{UTC time}/{expiration}"))
    signature  = hex(HMAC-SHA256(signingKey, "METHOD\\nURI\\nquery\\nheaders")), canonical forms:

Canonical query: every `k=v`, both percent-encoded (RFC 3986: all but `A-Za-z0-9-_.~`), sorted,
joined by `&`. Canonical headers: the signed ones (and any `x-bce-*`), lower-case names, trimmed
non-empty values, both encoded, `name:value`, sorted, joined by newlines. Pure: the caller finds
the Secret Key for the AK.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from qfserve.errors import SignatureInvalid

PREFIX = "bce-auth-v1"
# A signature may be dated this far in the future (clock skew between client and server).
MAX_CLOCK_SKEW_SECONDS = 300


@dataclass(frozen=True, slots=True)
class SignedRequest:
    access_key: str
    timestamp: str
    expiration_seconds: int
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(header: str) -> SignedRequest:
    parts = header.strip().split("/")
    if len(parts) != 6 or parts[0] != PREFIX:
        raise SignatureInvalid()
    _, access_key, timestamp, expiration, signed, signature = parts
    try:
        seconds = int(expiration)
    except ValueError as exc:
        raise SignatureInvalid() from exc
    headers = tuple(h for h in signed.split(";") if h)
    return SignedRequest(access_key, timestamp, seconds, headers, signature)


def _encode(text: str) -> str:
    return quote(text, safe="-_.~")


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    pairs = [f"{_encode(k)}={_encode(v)}" for k, v in params if k.lower() != "authorization"]
    return "&".join(sorted(pairs))


def canonical_headers(headers: Mapping[str, str], signed: Iterable[str]) -> str:
    wanted = {name.lower() for name in signed}
    lines = []
    for name, value in headers.items():
        key, text = name.strip().lower(), value.strip()
        if text and (key in wanted or key.startswith("x-bce-")):
            lines.append(f"{_encode(key)}:{_encode(text)}")
    return "\n".join(sorted(lines))


def expected_signature(
    secret_key: str,
    signed: SignedRequest,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
) -> str:
    key_info = f"{PREFIX}/{signed.access_key}/{signed.timestamp}/{signed.expiration_seconds}"
    signing_key = hmac.new(secret_key.encode(), key_info.encode(), hashlib.sha256).hexdigest()
    text = "\n".join(
        [
            method.upper(),
            path,
            canonical_query(query),
            canonical_headers(headers, signed.signed_headers),
        ]
    )
    return hmac.new(signing_key.encode(), text.encode(), hashlib.sha256).hexdigest()


def verify(
    secret_key: str,
    signed: SignedRequest,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    now: datetime | None = None,
) -> None:
    """Raise 14 unless the signature is right and within its validity period."""
    try:
        issued = datetime.strptime(signed.timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise SignatureInvalid() from exc
    age = ((now or datetime.now(UTC)) - issued).total_seconds()
    if age > signed.expiration_seconds or age < -MAX_CLOCK_SKEW_SECONDS:
        raise SignatureInvalid()
    expected = expected_signature(secret_key, signed, method, path, query, headers)
    if not hmac.compare_digest(expected, signed.signature):
        raise SignatureInvalid()
