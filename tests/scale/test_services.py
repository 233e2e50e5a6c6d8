"""The loopback services start, serve and go away: PostgreSQL, Chroma server, Ray cluster.

Marker ``scale``. The Ray tests share one cluster (module fixture); the node-death
test runs last because it leaves a worker node dead.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from insitu.testing.services import PostgresServer, ServiceError
from insitu.tool_store import ToolStore
from insitu.tool_store.testing import make_spec

from .conftest import LoopbackCluster, require

pytestmark = pytest.mark.scale


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie counts: this machine's init may not reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


# ---------------------------------------------------------------- PostgreSQL


def test_postgres_serves_over_tcp_and_its_socket(postgres_server, postgres_dsn) -> None:
    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE tools (name text PRIMARY KEY, version int NOT NULL)")
        conn.execute("INSERT INTO tools VALUES ('parse_csv', 1), ('count_lines', 2)")
        assert conn.execute("SELECT count(*) FROM tools").fetchone() == (2,)
        owner = conn.execute("SELECT current_user").fetchone()
    assert owner == (postgres_server.user,)
    dbname = postgres_dsn.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server.socket_dsn(dbname)) as conn:
        assert conn.execute("SELECT sum(version) FROM tools").fetchone() == (3,)


def test_postgres_is_stopped_and_removed_even_when_the_test_fails() -> None:
    require("postgres")
    with pytest.raises(RuntimeError, match="the test failed"), PostgresServer.start() as server:
        assert _listening(server.port)
        pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        raise RuntimeError("the test failed")
    assert not server.root.exists()
    assert not _listening(server.port)
    assert _gone(pid)


# ------------------------------------------------------------------- Chroma


def test_store_in_server_mode_adds_and_searches_on_the_chroma_server(
    tmp_path: Path, chroma_server
) -> None:
    with ToolStore.open(
        tmp_path / "lib", embedding="hashing", chroma_url=chroma_server.url
    ) as store:
        store.add(make_spec("count_lines", "Counts the lines of a text."))
        store.add(make_spec("parse_csv_rows", "Parses CSV text into rows of fields."))
        assert store._index is not None and store._index.count() == 2
        for mode in ("hybrid", "lexical", "dense"):
            assert store.search("count the lines", k=1, mode=mode)[0].record.name == "count_lines"
    # A second process-like opening sees the same index on the server.
    with ToolStore.open(tmp_path / "lib", chroma_url=chroma_server.url) as again:
        assert again.search("csv rows", k=1)[0].record.name == "parse_csv_rows"


# ---------------------------------------------------------------------- Ray


def _result(stdout: str) -> dict:
    """The driver's ``RESULT {json}`` line (Ray prints its own lines on stdout too)."""
    [line] = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def test_a_cluster_without_ray_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from insitu.testing import services

    monkeypatch.setattr(services, "missing_reason", lambda component: "no `ray` here")
    with pytest.raises(ServiceError, match="no `ray` here"):
        services.RayCluster.start(None)  # type: ignore[arg-type]


VISIT_BOTH_WORKERS = """
import json, sys, time, urllib.request

import psycopg
import ray

from insitu.testing.services import RAY_WORKER_RESOURCE, node_ids_by_name

dsn, chroma_url = sys.argv[1], sys.argv[2]
ray.init(log_to_driver=False)


@ray.remote(num_cpus=1, resources={RAY_WORKER_RESOURCE: 1})
def visit(task):
    node = ray.get_runtime_context().get_node_id()
    # The services of the namespace are reachable from every node.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO visits (task, node) VALUES (%s, %s)", (task, node))
    urllib.request.urlopen(chroma_url + "/api/v2/heartbeat", timeout=5).read()
    time.sleep(0.5)  # each worker node offers one slot: four tasks need both nodes
    return node


nodes = ray.get([visit.remote(task) for task in range(4)], timeout=90)
print("RESULT", json.dumps({"nodes": nodes, "by_name": node_ids_by_name()}))
"""


def test_tasks_run_on_both_worker_nodes_and_reach_the_services(
    loopback_cluster: LoopbackCluster,
) -> None:
    import psycopg

    postgres = loopback_cluster.postgres
    dsn = postgres.create_database("visits")  # over TCP: the driver and tasks are inside
    with psycopg.connect(postgres.socket_dsn("visits"), autocommit=True) as conn:
        conn.execute("CREATE TABLE visits (task int PRIMARY KEY, node text NOT NULL)")
    done = loopback_cluster.ray.run_driver(VISIT_BOTH_WORKERS, dsn, loopback_cluster.chroma.url)
    assert done.returncode == 0, done.stderr[-3000:]
    report = _result(done.stdout)
    by_name = report["by_name"]
    assert set(by_name) == {"head", "worker-1", "worker-2"}
    assert set(report["nodes"]) == {by_name["worker-1"], by_name["worker-2"]}
    with psycopg.connect(postgres.socket_dsn("visits")) as conn:
        rows = conn.execute("SELECT task, node FROM visits ORDER BY task").fetchall()
    assert [(task, node) for task, node in rows] == list(enumerate(report["nodes"]))


RETRY_AFTER_NODE_DEATH = """
import json, sys, time
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from insitu.testing.services import RAY_WORKER_RESOURCE, node_ids_by_name

markers = Path(sys.argv[1])
ray.init(log_to_driver=False)
ids = node_ids_by_name()
names = {node: name for name, node in ids.items()}


@ray.remote(num_cpus=1, resources={RAY_WORKER_RESOURCE: 1}, max_retries=3)
def long_job():
    name = names[ray.get_runtime_context().get_node_id()]
    (markers / f"attempt-on-{name}").touch()
    if name == "worker-1":
        time.sleep(120)  # its node is killed long before this ends
    return name


# Soft affinity: worker-1 first, any worker node when worker-1 is gone.
strategy = NodeAffinitySchedulingStrategy(ids["worker-1"], soft=True)
started = time.monotonic()
finished_on = ray.get(long_job.options(scheduling_strategy=strategy).remote(), timeout=120)
print("RESULT", json.dumps({"finished_on": finished_on, "seconds": time.monotonic() - started}))
"""


def test_a_task_whose_worker_node_is_killed_completes_on_the_other(
    loopback_cluster: LoopbackCluster, tmp_path: Path
) -> None:
    cluster = loopback_cluster.ray
    markers = tmp_path / "markers"
    markers.mkdir()
    script = cluster.write_script(RETRY_AFTER_NODE_DEATH)
    driver = subprocess.Popen(
        cluster.driver_command(script, str(markers)),
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not (markers / "attempt-on-worker-1").exists():
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the task never started on worker-1"
            time.sleep(0.1)
        killed_at = time.monotonic()
        cluster.kill_node("worker-1")
        assert not cluster.nodes["worker-1"].alive
        out, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, err[-3000:]
    report = _result(out)
    assert report["finished_on"] == "worker-2"
    assert (markers / "attempt-on-worker-2").exists()
    recovery_s = time.monotonic() - killed_at
    print(f"worker-1 killed; the retried task finished on worker-2 after {recovery_s:.1f} s")
