"""Making and checking credentials. Nothing here stores or logs them."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import string
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")

_ALNUM = string.ascii_letters + string.digits
# scrypt's cost: about 50 ms and 16 MiB per check on this kind of machine. Secret Keys are checked
# only when a token is issued, so a slow hash costs nothing on the chat path.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
# Checked in place of a missing hash (an unknown client id), so that answering one costs what
# answering a wrong secret does. No secret hashes to an all-zero digest.
DUMMY_SECRET_HASH = f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${'00' * 16}${'00' * 32}"


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


class SecretCheckThreads:
    """A few dedicated threads, the only ones that check secret hashes.

    Each scrypt check holds 16 MiB while it runs. Checks wait in a queue (as futures, not as
    threads) for one of `threads`, so at most that many run at once whatever the load, and only
    these threads' malloc arenas ever hold scrypt's memory: what glibc keeps after a burst is
    bounded by their number, not by how many worker threads the burst went through.
    """

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="secret-check")

    async def run(self, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await asyncio.wrap_future(self._pool.submit(call, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def token_digest(token: str) -> str:
    """The key under which a high-entropy bearer token is stored (it is never stored itself)."""
    return hashlib.sha256(token.encode()).hexdigest()
