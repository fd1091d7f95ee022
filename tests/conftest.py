from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import Server, running_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real qfserve on the bundled model, shared by the tests that only read from it."""
    with running_server(tmp_path_factory.mktemp("qfserve")) as running:
        yield running


@pytest.fixture(scope="session")
def app(server: Server) -> dict[str, str]:
    return server.create_app("session")


@pytest.fixture(scope="session")
def token(server: Server, app: dict[str, str]) -> str:
    return server.token(app)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reverse",
        action="store_true",
        help="Run the tests in reverse order: a test that needs another to run first fails.",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--reverse"):
        items.reverse()
