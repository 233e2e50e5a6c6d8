"""Fixtures shared by the tests: a real store on disk, a way to run episodes, real services.

The loopback services (PostgreSQL, a Chroma server; :mod:`insitu.testing.services`)
are here so that tests anywhere can use them: the store's contract tests run on
both record backends through :func:`open_library`. A missing component skips
its tests with the reason on a workstation and fails them in CI (``CI=true``),
where ``.ci/run`` installs everything. ``tests/scale/conftest.py`` adds the Ray
cluster.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from insitu.api import EpisodeResult, run_task
from insitu.sandbox import Sandbox, SandboxSettings, ToolEnvironment
from insitu.testing.services import ChromaServer, Component, PostgresServer, missing_reason
from insitu.tool_store import ToolStore

IN_CI = os.environ.get("CI", "").lower() == "true"

#: Start-up times of the services these tests started, for the terminal summary.
STARTUP_S: dict[str, float] = {}


def require(*components: Component) -> None:
    """Skip (locally) or fail (in CI) unless every component can run here."""
    for component in components:
        reason = missing_reason(component)
        if reason is None:
            continue
        if IN_CI:
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (each test takes a database of its own)."""
    require("postgres")
    with PostgresServer.start() as server:
        STARTUP_S["PostgreSQL (initdb + start)"] = server.started_in_s
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's server."""
    return postgres_server.create_database(f"test_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """One Chroma server for the session."""
    require("chroma")
    with ChromaServer.start(tmp_path_factory.mktemp("chroma-server")) as server:
        STARTUP_S["Chroma server"] = server.started_in_s
        yield server


#: The record backends the store's contract tests run on (PostgreSQL: marker ``scale``).
RECORD_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.scale)]


@pytest.fixture(params=RECORD_BACKENDS)
def open_library(request: pytest.FixtureRequest) -> Callable[..., ToolStore]:
    """``ToolStore.open`` on each record backend: the store's contract holds on both.

    ``sqlite``: records in ``tools.db`` and the index embedded, as by default.
    ``postgresql``: records in a fresh database of the session's PostgreSQL server
    and the index on its Chroma server; every call of one test opens the same library.
    """
    if request.param == "sqlite":
        return ToolStore.open
    dsn = request.getfixturevalue("postgres_dsn")
    chroma_url = request.getfixturevalue("chroma_server").url

    def open_shared(path: Path | str, **options: Any) -> ToolStore:
        return ToolStore.open(path, records_url=dsn, chroma_url=chroma_url, **options)

    return open_shared


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the services' measured start-up (and teardown) times; docs/scaling.md quotes them."""
    if STARTUP_S:
        terminalreporter.section("scale services: start-up times")
        for what, seconds in STARTUP_S.items():
            terminalreporter.write_line(f"{what}: {seconds:.1f} s")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One real sandbox (warm workers) shared by the graph tests, as one process would."""
    toolenv = ToolEnvironment(tmp_path_factory.mktemp("toolenv"))
    shared = Sandbox(SandboxSettings(), toolenv=toolenv)
    yield shared
    shared.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ToolStore]:
    """An empty library on disk with the fast deterministic embedding."""
    opened = ToolStore.open(tmp_path / "store", embedding="hashing")
    yield opened
    opened.close()


@pytest.fixture
def run_episode(
    store: ToolStore, sandbox: Sandbox
) -> Callable[..., tuple[EpisodeResult, list[dict[str, Any]]]]:
    """Run one task through the real episode graph; return the result and its events."""

    def run(
        task: str, models: Any, files: tuple[Any, ...] = (), **context: Any
    ) -> tuple[EpisodeResult, list[dict[str, Any]]]:
        events: list[dict[str, Any]] = []
        result = run_task(
            task,
            files=files,
            models=models,
            tool_store=store,
            sandbox=sandbox,
            context={"store_dir": str(store.path), **context},
            on_event=events.append,
            checkpoint=False,
        )
        return result, events

    return run


@contextmanager
def _greeting_server(host: str) -> Iterator[int]:
    """A TCP server on ``host`` that greets each client ("hello from the host"); yields its port.

    The sandbox tests use it as a service on the host that a tool must (not) reach.
    """
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"hello from the host")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        server.close()


@pytest.fixture(scope="session")
def greeting_server() -> Callable[[str], Any]:
    """``with greeting_server(host) as port:`` a TCP service on the host for sandbox tests."""
    return _greeting_server


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory for a tool call."""
    path = tmp_path / "work"
    path.mkdir()
    return path
