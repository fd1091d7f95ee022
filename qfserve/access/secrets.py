"""Making and checking credentials. Nothing here stores or logs them."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import hashlib
import hmac
import secrets
import string
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

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

    def __init__(self, threads: int, *, release_memory: Callable[[], object] | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="secret-check")
        self._release_memory = release_memory or _malloc_trim()
        self._lock = threading.Lock()
        self._pending = 0

    async def run(self, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        with self._lock:
            self._pending += 1
        future = self._pool.submit(functools.partial(call, *args, **kwargs))
        answer = asyncio.wrap_future(future)
        # Callbacks run in the order added: the answer goes out before any memory is released.
        future.add_done_callback(self._finished)
        return await answer

    def _finished(self, _future: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1
            idle = self._pending == 0
        if idle:
            # The queue is empty: the arenas' free pages go back to the system, on a checking
            # thread (this callback may run on the event loop's).
            with contextlib.suppress(RuntimeError):  # closed
                self._pool.submit(self._release_memory)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _malloc_trim() -> Callable[[], object]:
    """glibc's `malloc_trim(0)`, or nothing where the C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


def token_digest(token: str) -> str:
    """The key under which a high-entropy bearer token is stored (it is never stored itself)."""
    return hashlib.sha256(token.encode()).hexdigest()
