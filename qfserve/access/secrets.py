"""Making and checking credentials. Nothing here stores or logs them."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string

_ALNUM = string.ascii_letters + string.digits
# scrypt's cost: about 50 ms and 16 MiB per check on this kind of machine. Secret Keys are checked
# only when a token is issued, so a slow hash costs nothing on the chat path.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def random_key(length: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(length))


def hash_secret(secret: str) -> str:
    """A salted scrypt hash, self-describing: `scrypt$N$r$p$salt$digest`."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        secret.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = hashlib.scrypt(
            secret.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except ValueError:
        return False
    return hmac.compare_digest(candidate.hex(), digest)


def token_digest(token: str) -> str:
    """The key under which a high-entropy bearer token is stored (it is never stored itself)."""
    return hashlib.sha256(token.encode()).hexdigest()
