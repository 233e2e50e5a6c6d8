"""Fixtures of the scale tests: a Ray cluster with PostgreSQL and Chroma in one namespace.

The services themselves live in :mod:`insitu.testing.services` (benchmarks use
them too). The plain PostgreSQL and Chroma server fixtures (``postgres_server``,
``postgres_dsn``, ``chroma_server``) and :func:`require` (a skip with its reason on
a workstation, a failure in CI, ``CI=true``) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from insitu.testing.services import ChromaServer, NetworkNamespace, PostgresServer, RayCluster

# PostgreSQL, the Chroma server and what a missing component means are shared with
# the store's contract tests, which run outside this folder too.
from ..conftest import STARTUP_S, require

__all__ = ["STARTUP_S", "LoopbackCluster", "require"]


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
