"""Who may call, and the bookkeeping of every call: quotas charged and settled, the usage ledger,
the request counters. Shared by every API dialect; no HTTP here.

A `Call` is opened when a request arrives and finished exactly once, whatever happens: with the
error code it ended with (0 for success, 499 when the client left) and the tokens it used.
Finishing returns once the call's usage row is committed (or the bounded wait for it is over):
the routes finish a call before the last byte of its answer, so an answer a client has received
whole is billed even if the process dies the next instant. Each finished call is one line of the
`qfserve.requests` log: ids, codes, counts and times, never a credential or any text.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
from sqlalchemy.exc import SQLAlchemyError

from qfserve.access import signature
from qfserve.access.app_keys import KEY_PREFIX, AppKeys
from qfserve.access.apps import App
from qfserve.access.iam_keys import IamKeys
from qfserve.access.quota import QuotaEnforcer, QuotaLimits, Ticket
from qfserve.access.tokens import TokenIssuer
from qfserve.access.usage import UsageLedger, UsageRecord
from qfserve.access.v2_keys import SCHEME as V2_SCHEME
from qfserve.access.v2_keys import V2Keys
from qfserve.errors import EngineUnavailable, InvalidAppId, NoPermission
from qfserve.metrics import Metrics

log = logging.getLogger(__name__)
requests_log = logging.getLogger("qfserve.requests")

# Endpoint names as an operator configures them; anything else a client sent is not logged.
_LOGGABLE_ENDPOINT = re.compile(r"[\w.:/-]{1,128}", re.ASCII)

CLIENT_GONE = 499  # nginx's code for a client that closed the connection first

K = TypeVar("K")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request presents: an access token, or a signed request (spec section 5), or a
    bearer credential; and, on V2, the app it means to act for."""

    access_token: str | None
    authorization: str | None = None
    # `Authorization: Bearer`: an access token, an app key, a V2 API key or bearer token
    bearer: str | None = None
    method: str = "POST"
    path: str = ""
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    app_id_header: str | None = None  # V2's `appid` header, when sent


@dataclass(slots=True)
class Call:
    request_id: str
    endpoint: str
    gate: AccessGate
    user_id: str | None = None
    app: App | None = None
    ticket: Ticket | None = None
    rate_limit_headers: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 0
    safety_category: str | None = None  # what was flagged, for the ledger; never the text
    # Set only when the request log records text (`AccessGate.records_text`).
    question: str | None = None
    answer: str | None = None
    started: float = field(default_factory=time.monotonic)
    finished: bool = False

    def headers(self) -> dict[str, str]:
        """The X-Ratelimit-* headers, once the quotas have been consulted."""
        return self.rate_limit_headers

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
        app_keys: AppKeys,
        ledger: UsageLedger,
        metrics: Metrics,
        quotas: QuotaEnforcer,
        default_limits: QuotaLimits,
        *,
        v2_keys: V2Keys,
        inline_lookups: bool = False,
        log_requests: bool = True,
    ) -> None:
        self._tokens = tokens
        self._v2_keys = v2_keys
        self._log_requests = log_requests
        self._inline_lookups = inline_lookups
        self._iam_keys = iam_keys
        self._app_keys = app_keys
        self._ledger = ledger
        self._metrics = metrics
        self._quotas = quotas
        self._default_limits = default_limits

    @property
    def records_text(self) -> bool:
        """Whether calls should carry their question and answer, for the request log."""
        return self._ledger.records_text

    def open_call(self, request_id: str, endpoint: str) -> Call:
        return Call(request_id, endpoint, self)

    async def _lookup(self, find: Callable[[K], T], key: K) -> T:
        """One indexed read of the store. On SQLite (a local file in WAL mode, where readers
        never wait for writers) it runs inline: the read takes about 0.3 ms, and the hop to a
        worker thread and back added 0.4 ms more, on every request. A networked database is
        waited for in a worker thread."""
        try:
            if self._inline_lookups:
                return find(key)
            return await anyio.to_thread.run_sync(find, key)
        except SQLAlchemyError as exc:
            # The store is down or unreachable: a retryable answer, not a bug of ours.
            log.warning("the store could not be read: %s", type(exc).__name__)
            raise EngineUnavailable("the store is unavailable, try again shortly") from exc

    async def verify(self, credentials: Credentials) -> App:
        """The calling app, by its access token, key or signature (100, 110, 111, 14, 15); the
        `appid` header, when sent, must name it (6, V2's `invalid_appid`)."""
        app = await self._resolve(credentials)
        named = (credentials.app_id_header or "").strip()
        if named and named != str(app.app_id):
            raise InvalidAppId()
        return app

    async def _resolve(self, credentials: Credentials) -> App:
        if credentials.bearer and credentials.bearer.startswith(V2_SCHEME):
            return await self._lookup(self._v2_keys.verify, credentials.bearer)
        if credentials.bearer and credentials.bearer.startswith(KEY_PREFIX):
            return await self._lookup(self._app_keys.verify, credentials.bearer)
        if credentials.bearer:
            return await self._lookup(self._tokens.verify, credentials.bearer)
        authorization = credentials.authorization or ""
        if credentials.access_token or not authorization.startswith(signature.PREFIX):
            return await self._lookup(self._tokens.verify, credentials.access_token)
        signed = signature.parse_authorization(authorization)
        app, secret = await self._lookup(self._iam_keys.resolve, signed.access_key)
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

    def limits(self, app: App) -> QuotaLimits:
        overrides = {name: value for name, value in app.quota.items() if value is not None}
        return self._default_limits.overridden(**overrides)

    async def admit(self, call: Call, reserve_tokens: int) -> None:
        """Charge the app's quotas for this call, before any byte of its answer; raises the
        QuotaExceeded error of the first spent quota (or 2 if the shared counters are down)."""
        if call.app is None:
            return
        decision = await self._quotas.decide(call.app.app_id, self.limits(call.app), reserve_tokens)
        call.rate_limit_headers = decision.headers()
        error = decision.error()
        if error is not None:
            raise error
        call.ticket = decision.ticket

    async def close_call(self, call: Call, error_code: int, completion_tokens: int) -> None:
        latency_ms = round((time.monotonic() - call.started) * 1000)
        self._metrics.count(call.endpoint, error_code)
        if self._log_requests:
            _log_request(call, error_code, completion_tokens, latency_ms)
        if call.app is None:
            return  # unauthenticated: nothing to charge or to attribute
        # Recorded before anything is awaited: a cancelled wait can no longer lose the row.
        committed = self._ledger.record_awaited(
            UsageRecord(
                request_id=call.request_id,
                app_id=call.app.app_id,
                endpoint=call.endpoint,
                user_id=call.user_id,
                prompt_tokens=call.prompt_tokens,
                completion_tokens=completion_tokens,
                latency_ms=latency_ms,
                error_code=error_code,
                safety_category=call.safety_category,
                question=call.question,
                answer=call.answer,
            )
        )
        if call.ticket is not None:
            await self._quotas.settle(call.ticket, call.prompt_tokens + completion_tokens)
        await self._ledger.committed(committed)


def _log_request(call: Call, error_code: int, completion_tokens: int, latency_ms: int) -> None:
    endpoint = call.endpoint if _LOGGABLE_ENDPOINT.fullmatch(call.endpoint) else "?"
    requests_log.info(
        "request_id=%s app_id=%s endpoint=%s code=%d prompt_tokens=%d completion_tokens=%d "
        "latency_ms=%d",
        call.request_id,
        call.app.app_id if call.app is not None else "-",
        endpoint,
        error_code,
        call.prompt_tokens,
        completion_tokens,
        latency_ms,
    )
