from __future__ import annotations

from qfserve.access.secrets import hash_secret, random_key, verify_secret


def test_hash_is_salted_and_verifies() -> None:
    secret = random_key(32)
    first, second = hash_secret(secret), hash_secret(secret)
    assert first != second and secret not in first
    assert verify_secret(secret, first) and verify_secret(secret, second)
    assert not verify_secret(secret + "x", first)
    assert not verify_secret(secret, "garbage")
