"""Who may call, and the bookkeeping of every call: quotas charged and settled, the usage ledger,
the request counters. Shared by every API dialect; no HTTP here.

A `Call` is opened when a request arrives and finished exactly once, whatever happens: with the
error code it ended with (0 for success, 499 when the client left) and the tokens it used.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from qfserve.access import signature
from qfserve.access.apps import App
from qfserve.access.iam_keys import IamKeys
from qfserve.access.tokens import TokenIssuer
from qfserve.access.usage import UsageLedger, UsageRecord
from qfserve.errors import NoPermission
from qfserve.metrics import Metrics

log = logging.getLogger(__name__)

CLIENT_GONE = 499  # nginx's code for a client that closed the connection first


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request presents: an access token, or a signed request (spec section 5)."""

    access_token: str | None
    authorization: str | None = None
    method: str = "POST"
    path: str = ""
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()


class QuotaTicket(Protocol):
    def headers(self) -> dict[str, str]: ...


class Quotas(Protocol):
    """Admission by the app's quotas (see access/quota): raises a QuotaExceeded error."""

    async def admit(self, app: App, reserve_tokens: int) -> QuotaTicket: ...

    async def settle(self, ticket: QuotaTicket, actual_tokens: int) -> None: ...


@dataclass(slots=True)
class Call:
    request_id: str
    endpoint: str
    gate: AccessGate
    user_id: str | None = None
    app: App | None = None
    ticket: QuotaTicket | None = None
    prompt_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: bool = False

    def headers(self) -> dict[str, str]:
        return self.ticket.headers() if self.ticket is not None else {}

    async def finish(self, error_code: int, completion_tokens: int = 0) -> None:
        """Idempotent: the first call counts."""
        if self.finished:
            return
        self.finished = True
        await self.gate.close_call(self, error_code, completion_tokens)


class AccessGate:
    def __init__(
        self,
        tokens: TokenIssuer,
        iam_keys: IamKeys,
        ledger: UsageLedger,
        metrics: Metrics,
        quotas: Quotas | None = None,
    ) -> None:
        self._tokens = tokens
        self._iam_keys = iam_keys
        self._ledger = ledger
        self._metrics = metrics
        self._quotas = quotas

    def open_call(self, request_id: str, endpoint: str) -> Call:
        return Call(request_id, endpoint, self)

    async def verify(self, credentials: Credentials) -> App:
        """The calling app, by its access token or else its signature (100, 110, 111, 14, 15)."""
        authorization = credentials.authorization or ""
        if credentials.access_token or not authorization.startswith(signature.PREFIX):
            return await anyio.to_thread.run_sync(self._tokens.verify, credentials.access_token)
        signed = signature.parse_authorization(authorization)
        app, secret = await anyio.to_thread.run_sync(self._iam_keys.resolve, signed.access_key)
        signature.verify(
            secret,
            signed,
            credentials.method,
            credentials.path,
            credentials.query,
            dict(credentials.headers),
        )
        return app

    async def authenticate(self, call: Call, credentials: Credentials) -> App:
        call.app = await self.verify(credentials)
        return call.app

    def permit(self, app: App, endpoint: str) -> None:
        if not app.may_use(endpoint):
            raise NoPermission()

    async def admit(self, call: Call, reserve_tokens: int) -> None:
        """Charge the app's quotas for this call, before any byte of its answer."""
        if self._quotas is not None and call.app is not None:
            call.ticket = await self._quotas.admit(call.app, reserve_tokens)

    async def close_call(self, call: Call, error_code: int, completion_tokens: int) -> None:
        self._metrics.count(call.endpoint, error_code)
        if call.app is None:
            return  # unauthenticated: nothing to charge or to attribute
        if call.ticket is not None and self._quotas is not None:
            try:
                await self._quotas.settle(call.ticket, call.prompt_tokens + completion_tokens)
            except Exception:
                log.warning("request %s: quota settlement failed", call.request_id, exc_info=True)
        self._ledger.record(
            UsageRecord(
                request_id=call.request_id,
                app_id=call.app.app_id,
                endpoint=call.endpoint,
                user_id=call.user_id,
                prompt_tokens=call.prompt_tokens,
                completion_tokens=completion_tokens,
                latency_ms=round((time.monotonic() - call.started) * 1000),
                error_code=error_code,
            )
        )
