"""Fixtures of the scale tests: real PostgreSQL, Chroma server and Ray cluster on loopback.

The services themselves live in :mod:`insitu.testing.services` (benchmarks use
them too); these fixtures only scope them and decide what a missing component
means: a skip with its reason on a workstation, a failure in CI (``CI=true``),
where ``.ci/run`` installs everything.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from insitu.testing.services import (
    ChromaServer,
    Component,
    NetworkNamespace,
    PostgresServer,
    RayCluster,
    missing_reason,
)

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


@dataclass
class LoopbackCluster:
    """A Ray cluster with a PostgreSQL and a Chroma server, all in one loopback namespace."""

    netns: NetworkNamespace
    ray: RayCluster
    postgres: PostgresServer
    chroma: ChromaServer


@pytest.fixture(scope="module")
def loopback_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackCluster]:
    """Head + two worker nodes (one CPU each), PostgreSQL and Chroma, reachable from drivers.

    Module-scoped: starting a cluster takes tens of seconds on two cores. A test that
    kills a node leaves it dead for the tests after it in the module.
    """
    require("ray", "postgres", "chroma")
    with ExitStack() as stack:  # unwound in reverse: Ray, Chroma, PostgreSQL, namespace
        netns = stack.enter_context(NetworkNamespace.start())
        postgres = stack.enter_context(PostgresServer.start(netns=netns))
        chroma = stack.enter_context(
            ChromaServer.start(tmp_path_factory.mktemp("cluster-chroma"), netns=netns)
        )
        ray = stack.enter_context(RayCluster.start(netns, workers=2, cpus_per_node=1))
        STARTUP_S["PostgreSQL in the namespace"] = postgres.started_in_s
        STARTUP_S["Chroma server in the namespace"] = chroma.started_in_s
        STARTUP_S["Ray cluster (head, then 2 workers together)"] = ray.started_in_s
        for name, node in ray.nodes.items():
            STARTUP_S[f"  Ray {name}"] = node.started_in_s
        yield LoopbackCluster(netns, ray, postgres, chroma)
        began = time.monotonic()
        stack.close()
        STARTUP_S["(teardown of the cluster and its services)"] = time.monotonic() - began


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the services' measured start-up (and teardown) times; docs/scaling.md quotes them."""
    if STARTUP_S:
        terminalreporter.section("scale services: start-up times")
        for what, seconds in STARTUP_S.items():
            terminalreporter.write_line(f"{what}: {seconds:.1f} s")
