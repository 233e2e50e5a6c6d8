"""Real services on loopback for tests and benchmarks: PostgreSQL, a Chroma server, a Ray cluster.

Each service is a real server process, started from a temporary directory and
removed at :meth:`stop` (every class is also a context manager). They exist
so that the scale work (issue #14) is tested against the real thing, on one
machine, with no traffic beyond loopback:

- :class:`PostgresServer`: a throw-away PostgreSQL cluster (``initdb`` +
  ``pg_ctl``), run as the unprivileged ``postgres`` user when we are root
  (PostgreSQL refuses to run as root), listening on ``127.0.0.1`` and on a
  Unix socket in its own directory.
- :class:`ChromaServer`: ``chroma run`` on ``127.0.0.1``, ready once its
  heartbeat answers.
- :class:`RayCluster`: a head node and worker nodes, each a separate ``ray
  start --block`` process tree in a PID namespace of its own, all inside one
  :class:`NetworkNamespace` with only loopback up. Ray never uses loopback by
  itself (it reports and dials the machine's interface address); in a
  namespace without other interfaces it falls back to ``127.0.0.1``. A node
  in its own PID namespace dies as a whole: killing it (``kill_node``) is the
  ``kill -9`` of every process of that node at once, as when a machine dies,
  and nothing of it can survive teardown.

Anything that must reach a service inside a namespace runs inside it too:
the drivers of Ray tests (:meth:`RayCluster.run_driver`), and PostgreSQL and
Chroma servers started with ``netns=``. A Unix socket is a file, not a
network address, so :meth:`PostgresServer.socket_dsn` reaches a server in a
namespace from outside it as well.

:func:`missing_reason` says why a component cannot run here (``None`` when it
can), for tests that skip locally and fail in CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

LOOPBACK = "127.0.0.1"
#: The unprivileged account PostgreSQL runs as when we are root (Debian's package creates it).
POSTGRES_ACCOUNT = "postgres"
#: Where Debian installs PostgreSQL's server binaries (one folder per major version).
POSTGRES_LIBDIR = Path("/usr/lib/postgresql")
#: The GCS port of the head node. Inside a private network namespace no other
#: process can hold it, so a fixed port is safe (and keeps addresses readable).
RAY_HEAD_PORT = 6379
#: The smallest object store Ray accepts (75 MiB) plus a little: the tests move tiny objects.
RAY_OBJECT_STORE_BYTES = 80 * 1024 * 1024
#: The custom resource every worker node (not the head) offers once, so a task can
#: ask for "a worker node" without naming one.
RAY_WORKER_RESOURCE = "insitu_worker"

Component = Literal["postgres", "chroma", "ray", "netns"]


class ServiceError(RuntimeError):
    """A service did not start (or stop) as it should; the message quotes its log."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that nothing listens on right now (in this network namespace)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _is_root() -> bool:
    return os.geteuid() == 0


def _tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def postgres_bindir() -> Path | None:
    """The folder of PostgreSQL's server binaries (``initdb``, ``pg_ctl``), or ``None``.

    Debian keeps them out of ``PATH``, under ``/usr/lib/postgresql/<major>/bin``:
    the newest major version installed there wins, else ``initdb`` on ``PATH``.
    """
    versions = sorted(
        (p for p in POSTGRES_LIBDIR.glob("*/bin") if (p / "pg_ctl").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def missing_reason(component: Component) -> str | None:
    """Why ``component`` cannot run on this machine, or ``None`` when it can.

    Args:
        component: ``postgres``, ``chroma``, ``ray`` (the cluster, which needs a
            network namespace too) or ``netns``.

    Returns:
        A reason a person can act on (what to install, or what is needed).
    """
    if component == "postgres":
        if postgres_bindir() is None:
            return "PostgreSQL server binaries not found (Debian: apt-get install postgresql)"
        if _is_root():
            try:
                pwd.getpwnam(POSTGRES_ACCOUNT)
            except KeyError:
                return f"running as root and no {POSTGRES_ACCOUNT!r} account to run PostgreSQL as"
            if shutil.which("runuser") is None:
                return "running as root and no `runuser` (util-linux) to drop to postgres"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg is not installed (pip install -e '.[scale]')"
        return None
    if component == "chroma":
        return None if shutil.which("chroma") else "no `chroma` CLI (pip install chromadb)"
    if component == "netns":
        if not _is_root():
            return "a network namespace needs root (unshare -n)"
        for tool, package in (
            ("unshare", "util-linux"),
            ("nsenter", "util-linux"),
            ("setpriv", "util-linux"),
            ("ip", "iproute2"),
        ):
            if shutil.which(tool) is None:
                return f"no `{tool}` ({package})"
        return None
    if component == "ray":
        if shutil.which("ray") is None:
            return "Ray is not installed (pip install -e '.[scale]')"
        return missing_reason("netns")
    raise ValueError(f"unknown component {component!r}")


# ----------------------------------------------------------------- namespace


class NetworkNamespace:
    """A network namespace with only loopback up, held open by a sleeping process.

    Commands enter it with ``nsenter --net=/proc/PID/ns/net`` (:meth:`command`).
    The holder gets SIGKILL when the process that started it dies, so a
    crashed test run leaves no namespace behind. Needs root.
    """

    def __init__(self, holder: subprocess.Popen[bytes]) -> None:
        self.holder = holder

    @classmethod
    def start(cls) -> NetworkNamespace:
        """Create the namespace and bring ``lo`` up in it.

        Raises:
            ServiceError: The namespace could not be made (not root, no unshare).
        """
        reason = missing_reason("netns")
        if reason:
            raise ServiceError(reason)
        # The holder prints once lo is up, so that start() returns a usable namespace.
        holder = subprocess.Popen(
            [
                "setpriv",
                "--pdeathsig",
                "KILL",
                "--",
                "unshare",
                "--net",
                "--",
                "sh",
                "-c",
                "ip link set lo up && echo up && exec sleep infinity",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert holder.stdout is not None
        line = holder.stdout.readline().strip()
        if line != b"up":
            holder.kill()
            _, err = holder.communicate(timeout=10)
            raise ServiceError(f"could not create a network namespace: {err.decode().strip()}")
        return cls(holder)

    @property
    def path(self) -> str:
        """The namespace's handle in ``/proc``."""
        return f"/proc/{self.holder.pid}/ns/net"

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as a command that runs inside the namespace."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` of ``argv`` inside the namespace."""
        return subprocess.run(self.command(argv), check=False, **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` of ``argv`` inside the namespace."""
        return subprocess.Popen(self.command(argv), **kwargs)

    def close(self) -> None:
        """Release the namespace (it disappears once nothing runs in it)."""
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait(timeout=10)
        for stream in (self.holder.stdout, self.holder.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> NetworkNamespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _inside(netns: NetworkNamespace | None, argv: Sequence[str]) -> list[str]:
    return netns.command(argv) if netns is not None else list(argv)


_HTTP_WAIT = """
import sys, time, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while True:
    try:
        urllib.request.urlopen(url, timeout=2).read()
        sys.exit(0)
    except Exception as exc:
        if time.monotonic() > deadline:
            sys.exit(f"{url}: {exc}")
        time.sleep(0.1)
"""


def _wait_for_http(
    url: str, server: subprocess.Popen[Any], timeout: float, netns: NetworkNamespace | None
) -> str | None:
    """Poll ``url`` until it answers; return why not (``None`` when it answered).

    Inside a namespace the poll runs there too (as a small subprocess): the URL
    is not reachable from here.
    """
    deadline = time.monotonic() + timeout
    if netns is not None:
        poller = netns.popen(
            [sys.executable, "-c", _HTTP_WAIT, url, str(timeout)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        while poller.poll() is None:
            if server.poll() is not None:
                poller.kill()
                poller.wait()
                return f"the server exited with status {server.returncode}"
            time.sleep(0.1)
        return None if poller.returncode == 0 else (poller.stderr.read() if poller.stderr else "")
    while True:
        if server.poll() is not None:
            return f"the server exited with status {server.returncode}"
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return None
        except Exception as exc:
            if time.monotonic() > deadline:
                return f"{url}: {exc}"
            time.sleep(0.1)


def _stop_process(process: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# ------------------------------------------------------------------ postgres


@dataclass
class PostgresServer:
    """A throw-away PostgreSQL server on 127.0.0.1 (and a Unix socket in ``root``).

    Start with :meth:`start`; :meth:`stop` shuts it down and deletes every file
    of it. Authentication is ``trust`` for the one role ``user`` (a superuser):
    this is a test server, reachable from loopback only.

    Attributes:
        root: The server's directory: ``data/`` (the cluster), ``server.log``,
            and the Unix socket.
        port: Its TCP port on 127.0.0.1 (also the socket's number).
        user: The superuser role every DSN logs in as.
        netns: The network namespace it listens in (``None``: this one).
        started_in_s: How long the start took (``initdb`` + ``pg_ctl start``).
    """

    root: Path
    port: int
    user: str
    bindir: Path
    netns: NetworkNamespace | None = None
    started_in_s: float = 0.0
    _stopped: bool = field(default=False, repr=False)

    @classmethod
    def start(
        cls,
        *,
        netns: NetworkNamespace | None = None,
        user: str = "insitu",
        port: int | None = None,
        timeout: float = 60.0,
    ) -> PostgresServer:
        """``initdb`` a fresh cluster and start its server.

        The directory is a short path under the system's temporary folder (a
        Unix socket path is limited to 107 bytes) owned by the ``postgres``
        account when we are root, since PostgreSQL refuses to run as root.

        Args:
            netns: Listen inside this network namespace.
            user: The superuser role to create.
            port: The TCP port (default: a free one).
            timeout: Seconds ``pg_ctl`` may wait for the server to accept connections.

        Raises:
            ServiceError: PostgreSQL is missing or did not start (with its log).
        """
        reason = missing_reason("postgres")
        if reason:
            raise ServiceError(reason)
        bindir = postgres_bindir()
        assert bindir is not None
        began = time.monotonic()
        root = Path(tempfile.mkdtemp(prefix="insitu-pg-"))
        server = cls(root=root, port=port or free_port(), user=user, bindir=bindir, netns=netns)
        try:
            if _is_root():
                account = pwd.getpwnam(POSTGRES_ACCOUNT)
                os.chown(root, account.pw_uid, account.pw_gid)
            server._run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(server.data_dir),
                    "--auth=trust",
                    f"--username={user}",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                what="initdb",
            )
            # fsync off: a throw-away server's durability is worth nothing, its speed a lot.
            options = (
                f"-c listen_addresses={LOOPBACK} -p {server.port} -k {root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=100"
            )
            server._run(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(server.data_dir),
                    "-l",
                    str(server.log),
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "-o",
                    options,
                    "start",
                ],
                what="pg_ctl start",
                timeout=timeout + 10,
            )
        except BaseException:
            server.stop()
            raise
        server.started_in_s = time.monotonic() - began
        return server

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    @property
    def log(self) -> Path:
        """The server's log file."""
        return self.root / "server.log"

    def _as_owner(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run as the account that owns the cluster (root may not run PostgreSQL)."""
        if _is_root():
            return ["runuser", "-u", POSTGRES_ACCOUNT, "--", *argv]
        return list(argv)

    def _run(self, argv: Sequence[str], *, what: str, timeout: float = 120.0) -> None:
        done = subprocess.run(
            _inside(self.netns, self._as_owner(argv)),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )
        if done.returncode != 0:
            raise ServiceError(
                f"PostgreSQL {what} failed ({done.returncode}): {done.stderr.strip()}\n"
                f"{_tail(self.log)}"
            )

    def dsn(self, dbname: str = "postgres") -> str:
        """A ``postgresql://`` URL over TCP (reachable where the server listens)."""
        return f"postgresql://{self.user}@{LOOPBACK}:{self.port}/{dbname}"

    def socket_dsn(self, dbname: str = "postgres") -> str:
        """A URL over the server's Unix socket: reachable from any network namespace."""
        return f"postgresql://{self.user}@/{dbname}?host={self.root}&port={self.port}"

    def create_database(self, name: str) -> str:
        """Create a database (once per test, for isolation); return its TCP DSN."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.socket_dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def stop(self) -> None:
        """Shut the server down (immediately: nothing here needs a clean checkpoint), delete it."""
        if self._stopped:
            return
        self._stopped = True
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists():
            done = subprocess.run(
                self._as_owner(
                    [
                        str(self.bindir / "pg_ctl"),
                        "-D",
                        str(self.data_dir),
                        "-m",
                        "immediate",
                        "-w",
                        "-t",
                        "30",
                        "stop",
                    ]
                ),
                capture_output=True,
                check=False,
                cwd=self.root,
            )
            if done.returncode != 0 and pid_file.exists():
                # pg_ctl could not stop it: kill the postmaster (its children follow it).
                with contextlib.suppress(OSError, ValueError, IndexError):
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -------------------------------------------------------------------- chroma


@dataclass
class ChromaServer:
    """``chroma run`` on 127.0.0.1, serving a data directory.

    Attributes:
        url: ``http://127.0.0.1:PORT`` (the store's ``chroma_url``).
        process: The server process.
        data_dir: Where it keeps its data.
        log: Its output.
        started_in_s: How long until its heartbeat answered.
    """

    url: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    log: Path
    started_in_s: float = 0.0

    @classmethod
    def start(
        cls,
        directory: Path,
        *,
        netns: NetworkNamespace | None = None,
        port: int | None = None,
        timeout: float = 60.0,
    ) -> ChromaServer:
        """Start a server on ``directory/db`` and wait until its heartbeat answers.

        Args:
            directory: Holds the data (``db/``) and the log (``server.log``).
            netns: Listen inside this network namespace.
            port: The TCP port (default: a free one).
            timeout: Seconds to wait for the heartbeat.

        Raises:
            ServiceError: No ``chroma`` CLI, or the server did not answer (with its log).
        """
        reason = missing_reason("chroma")
        if reason:
            raise ServiceError(reason)
        began = time.monotonic()
        directory.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        log = directory / "server.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                _inside(
                    netns,
                    [
                        "chroma",
                        "run",
                        "--host",
                        LOOPBACK,
                        "--port",
                        str(port),
                        "--path",
                        str(directory / "db"),
                    ],
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
            )
        url = f"http://{LOOPBACK}:{port}"
        problem = _wait_for_http(f"{url}/api/v2/heartbeat", process, timeout, netns)
        if problem is not None:
            _stop_process(process, 5)
            raise ServiceError(f"the Chroma server did not start: {problem}\n{_tail(log)}")
        return cls(url, process, directory / "db", log, time.monotonic() - began)

    def stop(self) -> None:
        """Stop the server (its data stays in ``data_dir``)."""
        _stop_process(self.process, 10)

    def __enter__(self) -> ChromaServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------- ray


@dataclass
class RayNode:
    """One Ray node: a ``ray start --block`` process tree in a PID namespace of its own.

    Attributes:
        name: ``head``, ``worker-1``, ``worker-2``, ...
        process: The ``unshare`` process holding the node's PID namespace; killing
            it kills every process of the node (see :meth:`RayCluster.kill_node`).
        temp_dir: The node's Ray temp dir (sessions, sockets, logs).
        log: The output of ``ray start``.
        resource: A custom resource only this node has (one unit), which tells
            the node apart in ``ray.nodes()`` and can pin a task to it.
        started_in_s: How long until the node said "Ray runtime started".
    """

    name: str
    process: subprocess.Popen[bytes]
    temp_dir: Path
    log: Path
    resource: str
    started_in_s: float = 0.0

    @property
    def alive(self) -> bool:
        """Whether the node's processes still run."""
        return self.process.poll() is None


def node_resource(name: str) -> str:
    """The custom resource that tells node ``name`` apart (``insitu_node_worker_1``)."""
    return "insitu_node_" + name.replace("-", "_")


def node_ids_by_name() -> dict[str, str]:
    """In a connected Ray driver: the id of every alive node of a :class:`RayCluster`, by name."""
    import ray

    found: dict[str, str] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for resource in node.get("Resources", {}):
            if resource.startswith("insitu_node_"):
                name = resource.removeprefix("insitu_node_").replace("_", "-")
                found[name] = node["NodeID"]
    return found


class RayCluster:
    """A Ray cluster on loopback: a head node and ``workers`` worker nodes, one CPU each.

    Every node runs in the cluster's :class:`NetworkNamespace`, each in a PID
    namespace of its own (so a node can die as a whole), with its own Ray temp
    dir: nodes started at the same moment in one temp dir race for the same
    socket and log names. Drivers run inside the namespace as well
    (:meth:`run_driver`, :meth:`driver_command`), with ``RAY_ADDRESS`` set, so
    ``ray.init()`` connects. Usage statistics are off, the dashboard is not
    started, and the GCS health checks are frequent (a dead node is noticed in
    about 2 s instead of 30 s).

    Attributes:
        root: The cluster's directory (node temp dirs, logs, driver scripts).
        netns: Its network namespace.
        nodes: Every node by name, the head first.
        env: The environment of its nodes and drivers.
    """

    def __init__(self, root: Path, netns: NetworkNamespace, env: Mapping[str, str]) -> None:
        self.root = root
        self.netns = netns
        self.env = dict(env)
        self.nodes: dict[str, RayNode] = {}
        self.started_in_s = 0.0

    @property
    def address(self) -> str:
        """The GCS address drivers and worker nodes connect to (inside the namespace)."""
        return f"{LOOPBACK}:{RAY_HEAD_PORT}"

    @classmethod
    def start(
        cls,
        netns: NetworkNamespace,
        *,
        workers: int = 2,
        cpus_per_node: int = 1,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> RayCluster:
        """Start the head, then the worker nodes together; wait until each has started.

        Args:
            netns: The network namespace (loopback only) the cluster lives in.
            workers: How many worker nodes.
            cpus_per_node: CPUs each node offers (head included).
            env: Extra environment for nodes and drivers (``PYTHONPATH`` is passed on).
            timeout: Seconds each start may take.

        Raises:
            ServiceError: Ray is missing, or a node did not start (with its log).
        """
        reason = missing_reason("ray")
        if reason:
            raise ServiceError(reason)
        began = time.monotonic()
        # Short: Ray puts Unix sockets under the temp dir (107-byte limit on their paths).
        root = Path(tempfile.mkdtemp(prefix="insitu-ray-"))
        node_env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ADDRESS": f"{LOOPBACK}:{RAY_HEAD_PORT}",
            # Notice a dead node within ~2 s (defaults: 3 s period, 5 failures).
            "RAY_health_check_initial_delay_ms": "1000",
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_timeout_ms": "500",
            "RAY_health_check_failure_threshold": "3",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        cluster = cls(root, netns, node_env)
        try:
            cluster._start_nodes(["head"], cpus_per_node, timeout)
            cluster._start_nodes(
                [f"worker-{i}" for i in range(1, workers + 1)], cpus_per_node, timeout
            )
        except BaseException:
            cluster.stop()
            raise
        cluster.started_in_s = time.monotonic() - began
        return cluster

    def _node_command(self, name: str, index: int, cpus: int) -> list[str]:
        temp_dir = self.root / name
        # Every node shares one address (127.0.0.1), so each gets its own ports.
        base = 7000 + 20 * index
        options: dict[str, object] = {
            "--num-cpus": cpus,
            "--object-store-memory": RAY_OBJECT_STORE_BYTES,
            "--temp-dir": temp_dir,
            "--include-log-monitor": "false",  # streams worker logs to drivers: not needed
            "--node-manager-port": base,
            "--object-manager-port": base + 1,
            "--metrics-export-port": base + 2,
            "--dashboard-agent-listen-port": base + 3,
            "--dashboard-agent-grpc-port": base + 4,
            "--runtime-env-agent-port": base + 5,
            "--min-worker-port": 20000 + 1000 * index,
            "--max-worker-port": 20999 + 1000 * index,
        }
        argv = ["ray", "start", "--block", "--disable-usage-stats"]
        for option, value in options.items():
            argv += [option, str(value)]
        resources = {node_resource(name): 1}
        if name == "head":
            argv += ["--head", "--port", str(RAY_HEAD_PORT), "--include-dashboard", "false"]
        else:
            argv += ["--address", self.address]
            resources[RAY_WORKER_RESOURCE] = 1
        argv += ["--resources", json.dumps(resources)]
        # setpriv: the node dies with this process. unshare --pid --fork: the node is
        # one PID namespace, whose processes all die when its first one does
        # (--kill-child: when unshare itself is killed); --mount-proc so that Ray's
        # own view of its pids (psutil reads /proc) matches the namespace.
        return [
            "setpriv",
            "--pdeathsig",
            "KILL",
            "--",
            *self.netns.command(
                [
                    "unshare",
                    "--pid",
                    "--fork",
                    "--mount",
                    "--mount-proc",
                    "--kill-child=SIGKILL",
                    "--",
                    *argv,
                ]
            ),
        ]

    def _start_nodes(self, names: Sequence[str], cpus: int, timeout: float) -> None:
        began = time.monotonic()
        for name in names:
            index = len(self.nodes)
            log = self.root / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    self._node_command(name, index, cpus),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                )
            self.nodes[name] = RayNode(name, process, self.root / name, log, node_resource(name))
        waiting = set(names)
        deadline = began + timeout
        while waiting:
            for name in sorted(waiting):
                node = self.nodes[name]
                text = node.log.read_text(errors="replace")
                if "Ray runtime started" in text:
                    node.started_in_s = time.monotonic() - began
                    waiting.discard(name)
                elif not node.alive or time.monotonic() > deadline:
                    why = "exited" if not node.alive else f"not up after {timeout:g} s"
                    raise ServiceError(f"Ray node {name} {why}:\n{_tail(node.log)}")
            time.sleep(0.1)

    def driver_command(self, script: str | Path, *args: str) -> list[str]:
        """The command that runs a Python driver script inside the cluster's namespace."""
        return self.netns.command([sys.executable, str(script), *args])

    def run_driver(
        self, code: str, *args: str, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run Python ``code`` as a driver inside the namespace (``ray.init()`` connects).

        Args:
            code: The driver's source (dedented).
            args: Its command-line arguments.
            timeout: Seconds it may run.

        Returns:
            The finished process, output captured as text.
        """
        script = self.write_script(code)
        return subprocess.run(
            self.driver_command(script, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )

    def write_script(self, code: str) -> Path:
        """Write a driver script into the cluster's directory; return its path."""
        handle, name = tempfile.mkstemp(prefix="driver-", suffix=".py", dir=self.root)
        with os.fdopen(handle, "w") as out:
            out.write(textwrap.dedent(code))
        return Path(name)

    def kill_node(self, name: str) -> None:
        """``kill -9`` every process of node ``name`` at once (raylet, workers, agents).

        SIGKILL to the node's ``unshare`` makes the kernel SIGKILL the node's
        first process, which ends its PID namespace, which SIGKILLs the rest:
        no process gets to clean up, as when a machine dies.
        """
        node = self.nodes[name]
        node.process.kill()
        node.process.wait(timeout=30)

    def stop(self, grace: float = 2.0) -> None:
        """Stop every node (workers first), then delete the cluster's files.

        Each node's ``ray start --block`` gets SIGTERM and ``grace`` seconds to
        stop its processes; whatever remains is killed with its PID namespace.
        Only this cluster's processes are touched (never ``ray stop``, which
        kills every Ray process of the machine).
        """
        # All nodes at once: each takes a while to stop its processes, and the head
        # going first only makes the workers' shutdown noisier, not slower.
        running = [node for node in reversed(self.nodes.values()) if node.alive]
        for node in running:
            for child in _children(node.process.pid):  # `ray start --block`, the node's init
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for node in running:
            try:
                node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _children(pid: int) -> list[int]:
    """The direct children of process ``pid`` (Linux ``/proc``)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]
