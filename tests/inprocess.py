"""qfserve in-process on a `FakeEngine`: the real app (routes, access, quotas, safety, the usage
ledger on SQLite), its lifespan run by Starlette's TestClient, no model and no socket.

    with running(tmp_path) as qf:
        app = qf.new_app()
        reply = qf.client.post(qf.v1_url(qf.token(app)), json={"messages": [...]})

The store is opened a second time beside the server's, as the `qfserve app ...` CLI does beside a
running server, to create apps and keys and set quotas directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
from sqlalchemy import select
from starlette.testclient import TestClient

from qfserve.config import EndpointSettings, Settings
from qfserve.process import Service
from qfserve.server import Store, create_app, open_store
from qfserve.store.schema import UsageRow
from tests.fake_engine import FakeEngine, fake_registry

ENDPOINT = "llama_2_7b"
V1_PREFIX = "/rpc/2.0/ai_custom/v1/wenxinworkshop"


class Response(Protocol):
    """What the tests read of a TestClient response (httpx's or httpx2's, as Starlette picks)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class ClientApp:
    app_id: int
    api_key: str
    secret_key: str


@dataclass
class InProcess:
    client: TestClient
    engine: FakeEngine
    settings: Settings
    store: Store
    service: Service  # the app, and the hook a shutdown calls

    def new_app(self, name: str = "test", **quota: int) -> ClientApp:
        """An app as `qfserve app create` makes it; `quota` as `qfserve app quota` sets it."""
        created = self.store.apps.create(name)
        if quota:
            self.store.apps.set_access(created.app.app_id, quota, None)
        return ClientApp(created.app.app_id, created.app.api_key, created.secret_key)

    def token(self, app: ClientApp) -> str:
        """A V1 access token from the real `/oauth/2.0/token` route."""
        reply = self.client.post(
            "/oauth/2.0/token",
            params={
                "grant_type": "client_credentials",
                "client_id": app.api_key,
                "client_secret": app.secret_key,
            },
        )
        reply.raise_for_status()
        return str(reply.json()["access_token"])

    def app_key(self, app: ClientApp) -> str:
        """A long-lived key for the OpenAI routes (`Authorization: Bearer sk-qf-...`)."""
        return self.store.app_keys.create(app.app_id).key

    def v2_key(self, app: ClientApp) -> str:
        """A V2 API key for the `/v2` routes (`Authorization: Bearer bce-v3/ALTAK-.../...`)."""
        return self.store.v2_keys.create(app.app_id).api_key

    def usage(self, app: ClientApp, rows: int, deadline_seconds: float = 10.0) -> list[UsageRow]:
        """The app's usage ledger rows in order, once there are `rows` of them (the ledger
        writes in batches, off the event loop)."""
        query = select(UsageRow).where(UsageRow.app_id == app.app_id).order_by(UsageRow.id)
        give_up = time.monotonic() + deadline_seconds
        while True:
            with self.store.database.session() as session:
                found = list(session.scalars(query))
                session.expunge_all()
            if len(found) >= rows or time.monotonic() > give_up:
                assert len(found) == rows, f"{len(found)} usage rows, {rows} expected"
                return found
            time.sleep(0.05)

    @staticmethod
    def v1_url(token: str | None, endpoint: str = ENDPOINT, kind: str = "chat") -> str:
        query = f"?access_token={token}" if token is not None else ""
        return f"{V1_PREFIX}/{kind}/{endpoint}{query}"


@dataclass
class Exchange:
    """A request sent straight to the ASGI app, and what the app sent back so far. Reads as a
    `Response` once complete."""

    status_code: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False  # the app ended its response (more_body false)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode()

    def json(self) -> Any:
        return json.loads(self.text)


def post_asgi(
    qf: InProcess,
    path: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    *,
    disconnect_when: Callable[[Exchange], bool] | None = None,
    on_chunk: Callable[[Exchange], None] | None = None,
    deadline_seconds: float = 10.0,
) -> Exchange:
    """POST to the app in its own event loop and see the answer's chunks as they are sent (the
    TestClient reads whole responses only). `on_chunk` runs after each; the client goes away
    (`http.disconnect`) once `disconnect_when` holds, as one closing its connection mid-answer."""
    exchange = Exchange()
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            *((k.lower().encode(), v.encode()) for k, v in headers.items()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    request_body = json.dumps(body).encode()

    def gone() -> bool:
        return disconnect_when is not None and disconnect_when(exchange)

    async def exchange_once() -> None:
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": request_body, "more_body": False}
            give_up = time.monotonic() + deadline_seconds
            while not gone() and not exchange.complete:
                assert time.monotonic() < give_up, "the answer did not end in time"
                await anyio.sleep(0.005)
            return {"type": "http.disconnect"}

        async def send(message: Mapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                exchange.status_code = message["status"]
                exchange.headers = {k.decode(): v.decode() for k, v in message["headers"]}
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    exchange.chunks.append(message["body"])
                    if on_chunk is not None:
                        on_chunk(exchange)
                exchange.complete = not message.get("more_body", False)

        await qf.service.app(scope, receive, send)

    qf.client.portal.call(exchange_once)  # type: ignore[union-attr]
    return exchange


@contextmanager
def running(
    data_dir: Path,
    engine: FakeEngine | None = None,
    *,
    endpoints: tuple[str, ...] = (ENDPOINT,),
    **settings: Any,
) -> Iterator[InProcess]:
    """qfserve on `engine` (a new FakeEngine if none) for every endpoint, its store in
    `data_dir`. `settings` are more `Settings` fields (quota, stream, safety, ...)."""
    engine = engine or FakeEngine()
    config = Settings(
        data_dir=data_dir,
        endpoints=[EndpointSettings(name=name) for name in endpoints],
        **settings,
    )
    service = create_app(config, engines=fake_registry(engine, *endpoints))
    store = open_store(config)
    try:
        with TestClient(service.app) as client:
            yield InProcess(client, engine, config, store, service)
    finally:
        store.database.close()


def sse_data(response: Response) -> list[str]:
    """The `data:` payloads of an event stream, in order (`[DONE]` included). Fails on any other
    kind of line: clients of both dialects parse `data:` lines only."""
    payloads = []
    for block in response.text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: ") and "\n" not in block, f"not a data event: {block!r}"
        payloads.append(block.removeprefix("data: "))
    return payloads


def sse_json(response: Response) -> list[dict[str, Any]]:
    """The JSON events of a stream; a `[DONE]` must be the last payload and is left out."""
    payloads = sse_data(response)
    if "[DONE]" in payloads:
        assert payloads.index("[DONE]") == len(payloads) - 1, "events after [DONE]"
        payloads = payloads[:-1]
    return [json.loads(p) for p in payloads]


def bearer(key: str) -> Mapping[str, str]:
    return {"Authorization": f"Bearer {key}"}
