"""Fixtures shared by the graph tests: a real store on disk and a way to run episodes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from insitu.api import EpisodeResult, run_task
from insitu.sandbox import Sandbox, SandboxSettings, ToolEnvironment
from insitu.tool_store import ToolStore


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
