"""Fixtures shared by the graph tests: a real store on disk and a way to run episodes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
