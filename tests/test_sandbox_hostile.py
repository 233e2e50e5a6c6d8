"""Hostile tools: each must be contained with the right error kind, the host must be
unharmed, and the next call must work, for both backends and (where it matters)
both warm and cold mode. bwrap cases are skipped when bwrap does not work here.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from insitu.sandbox import ErrorKind, Sandbox, SandboxSettings, probe_backend
from insitu.sandbox import backend as backends
from insitu.testing.probe import fork_bomb, probe_tool

INFO = probe_backend()
BWRAP = pytest.param(
    "bwrap",
    marks=pytest.mark.skipif(
        not INFO.bwrap_works, reason=f"bwrap backend unavailable here: {INFO.bwrap_error}"
    ),
)
BACKENDS = [BWRAP, "degraded"]
ROOT = backends.is_root()
UID_RANGE = (61000, 61999)

SETTINGS = {
    "timeout_s": 3.0,
    "cpu_s": 30.0,
    "memory_mb": 512,
    "file_size_mb": 16,
    "processes": 48,
    "grace_s": 1.5,
}

OK_TOOL = """
from pydantic import BaseModel
__TOOL_META__ = {"name": "echo_text", "description": "Echoes.", "dependencies": []}
class InputModel(BaseModel):
    text: str
class OutputModel(BaseModel):
    text: str
def run(input: InputModel) -> OutputModel:
    return OutputModel(text=input.text)
"""


def hostile(body: str) -> str:
    """A tool whose run() executes ``body`` and returns {"value": value}."""
    return probe_tool(body, name="hostile_tool", modules="ctypes, os, signal, socket, sys, time")


@pytest.fixture(scope="module", params=BACKENDS)
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    with Sandbox(SandboxSettings(backend=request.param, **SETTINGS)) as sb:
        yield sb


def assert_next_call_works(sandbox: Sandbox, workdir: Path, warm: bool = True) -> None:
    out = sandbox.call(OK_TOOL, {"text": "still alive"}, workdir=workdir, warm=warm)
    assert out.ok, out
    assert out.output == {"text": "still alive"}


def sandbox_uid_processes() -> list[tuple[int, int, str]]:
    """(pid, uid, state) of every process running under a sandbox uid."""
    found = []
    for uid in range(UID_RANGE[0], UID_RANGE[0] + 64):
        found.extend((pid, uid, state) for pid, state in backends.processes_of_uid(uid))
    return found


def peak_rss_kib() -> int:
    """This process's peak resident set size, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


MODES = [pytest.param(True, id="warm"), pytest.param(False, id="cold")]


# -- time -----------------------------------------------------------------------------


@pytest.mark.parametrize("warm", MODES)
def test_infinite_loop_times_out(sandbox: Sandbox, workdir: Path, warm: bool) -> None:
    started = time.monotonic()
    out = sandbox.call(
        hostile("while True:\n    pass"), {}, workdir=workdir, warm=warm, timeout_s=1.5
    )
    assert out.kind is ErrorKind.TIMEOUT, out
    assert "wall-clock limit of 1.5 s" in out.message
    assert time.monotonic() - started < 6
    assert_next_call_works(sandbox, workdir, warm)


def test_cpu_burn_hits_the_cpu_limit(workdir: Path, request: pytest.FixtureRequest) -> None:
    backend = "bwrap" if INFO.bwrap_works else "degraded"
    settings = SandboxSettings(backend=backend, timeout_s=20, cpu_s=1)
    with Sandbox(settings) as sb:
        burn = "import threading\n" + "\n".join(
            [
                "def spin():",
                "    while True:",
                "        pass",
                "for _ in range(2):",
                "    threading.Thread(target=spin, daemon=True).start()",
                "spin()",
            ]
        )
        started = time.monotonic()
        out = sb.call(hostile(burn), {}, workdir=workdir)
        assert out.kind is ErrorKind.TIMEOUT, out
        assert "CPU time limit of 1 s" in out.message
        assert time.monotonic() - started < 10
        assert_next_call_works(sb, workdir)


# -- memory ---------------------------------------------------------------------------


@pytest.mark.parametrize("warm", MODES)
def test_memory_bomb(sandbox: Sandbox, workdir: Path, warm: bool) -> None:
    out = sandbox.call(hostile("value = bytearray(4 * 1024**3)"), {}, workdir=workdir, warm=warm)
    assert out.kind is ErrorKind.MEMORY, out
    assert "memory limit of 512 MiB" in out.message
    growing = "chunks = []\nwhile True:\n    chunks.append(bytearray(8 * 1024**2))\nvalue = 0"
    out = sandbox.call(hostile(growing), {}, workdir=workdir, warm=warm)
    assert out.kind is ErrorKind.MEMORY, out
    assert_next_call_works(sandbox, workdir, warm)


def test_native_abort_after_allocation_failure_is_memory(sandbox: Sandbox, workdir: Path) -> None:
    body = """
sys.stderr.write("terminate called after throwing an instance of 'std::bad_alloc'\\n")
sys.stderr.flush()
os.abort()
"""
    out = sandbox.call(hostile(body), {}, workdir=workdir)
    assert out.kind is ErrorKind.MEMORY, out
    assert "SIGABRT" in out.message and "out of memory" in out.message
    assert "std::bad_alloc" in out.stderr


# -- processes ------------------------------------------------------------------------


@pytest.mark.skipif(not ROOT, reason="process limits need a dedicated uid (run as root)")
@pytest.mark.parametrize("warm", MODES)
def test_fork_bomb_is_contained_and_leaves_nothing(
    sandbox: Sandbox, workdir: Path, warm: bool
) -> None:
    bomb = """
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    # Other sandboxes of this process (other tests' fixtures) may hold warm workers
    # under sandbox uids too: only processes that appear from now on count.
    before = {pid for pid, _uid, _state in sandbox_uid_processes()}
    out = sandbox.call(hostile(bomb), {}, workdir=workdir, warm=warm, timeout_s=1.5)
    assert out.kind is ErrorKind.TIMEOUT, out
    assert_next_call_works(sandbox, workdir, warm)
    # Only respawned idle workers (and their pre-forked children) may be new.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leftovers = [p for p in sandbox_uid_processes() if p[0] not in before]
        if len(leftovers) <= 3 * sandbox.worker_count:
            break
        time.sleep(0.05)
    assert len(leftovers) <= 3 * sandbox.worker_count, leftovers


@pytest.mark.skipif(not ROOT, reason="process limits need a dedicated uid (run as root)")
def test_process_limit_is_enforced(sandbox: Sandbox, workdir: Path) -> None:
    body = fork_bomb(500)
    out = sandbox.call(hostile(body), {}, workdir=workdir)
    assert out.ok, out
    count, error = out.output["value"]
    assert count < SETTINGS["processes"], out.output
    assert "Resource temporarily unavailable" in error
    assert_next_call_works(sandbox, workdir)


@pytest.mark.skipif(not ROOT, reason="sweeping strays needs a dedicated uid (run as root)")
def test_processes_a_call_leaves_behind_die_with_it(sandbox: Sandbox, workdir: Path) -> None:
    daemon = """
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            with open("heartbeat.txt", "a") as handle:
                handle.write("x")
            time.sleep(0.02)
    os._exit(0)
time.sleep(0.2)
value = "left a daemon"
"""
    out = sandbox.call(hostile(daemon), {}, workdir=workdir)
    assert out.ok, out
    beats = workdir / "heartbeat.txt"
    assert beats.exists()
    time.sleep(0.2)
    size = beats.stat().st_size
    time.sleep(0.5)
    assert beats.stat().st_size == size, "a process of the call outlived it"
    assert_next_call_works(sandbox, workdir)


def test_no_sandbox_process_survives_close(workdir: Path) -> None:
    backend = "bwrap" if INFO.bwrap_works else "degraded"
    sb = Sandbox(SandboxSettings(backend=backend, **SETTINGS))
    daemon = """
if os.fork() == 0:
    os.setsid()
    time.sleep(60)
    os._exit(0)
value = os.getuid()
"""
    out = sb.call(hostile(daemon), {}, workdir=workdir)
    assert out.ok, out
    uid = out.output["value"]
    sb.close()
    if ROOT:
        assert UID_RANGE[0] <= uid <= UID_RANGE[1]
        deadline = time.monotonic() + 5
        while backends.processes_of_uid(uid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert backends.processes_of_uid(uid) == []


# -- disk and output ------------------------------------------------------------------


def test_disk_fill_hits_the_file_size_limit(sandbox: Sandbox, workdir: Path) -> None:
    body = """
with open("big.bin", "wb") as handle:
    for _ in range(100):
        handle.write(b"x" * 1024 * 1024)
value = 0
"""
    out = sandbox.call(hostile(body), {}, workdir=workdir)
    assert out.kind in (ErrorKind.EXCEPTION, ErrorKind.CRASH), out
    assert "File too large" in out.message
    assert "limits any file to 16 MiB" in out.message
    assert (workdir / "big.bin").stat().st_size <= 16 * 1024 * 1024
    assert_next_call_works(sandbox, workdir)


@pytest.mark.parametrize("warm", MODES)
def test_hundred_megabytes_of_stdout_is_truncated(
    sandbox: Sandbox, workdir: Path, warm: bool
) -> None:
    body = """
chunk = "y" * (1024 * 1024)
for _ in range(100):
    sys.stdout.write(chunk)
sys.stdout.flush()
value = "done"
"""
    with contextlib.suppress(OSError):  # reset the peak, so the check below means something
        Path("/proc/self/clear_refs").write_text("5")
    before = peak_rss_kib()
    out = sandbox.call(hostile(body), {}, workdir=workdir, warm=warm, timeout_s=20)
    after = peak_rss_kib()
    assert out.ok, out.message
    cap = sandbox.settings.output_bytes
    dropped = 100 * 1024 * 1024 - cap
    assert out.stdout == "y" * cap + f"\n…[truncated {dropped} bytes]"
    assert (after - before) < 40 * 1024, (before, after)  # the host never held the 100 MB
    assert_next_call_works(sandbox, workdir, warm)


def test_oversized_result_is_refused(workdir: Path) -> None:
    backend = "bwrap" if INFO.bwrap_works else "degraded"
    with Sandbox(SandboxSettings(backend=backend, result_bytes=1 << 20)) as sb:
        out = sb.call(hostile("value = 'z' * (5 * 1024 * 1024)"), {}, workdir=workdir)
        assert out.kind is ErrorKind.INVALID_OUTPUT, out
        assert "larger than the sandbox's limit of 1048576 bytes" in out.message
        assert_next_call_works(sb, workdir)


# -- secrets and visibility -----------------------------------------------------------


def test_host_environment_is_invisible_and_declared_secrets_visible(
    sandbox: Sandbox, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSITU_TEST_SECRET", "hunter2-host-only")
    body = f"""
found = dict(os.environ)
try:
    found["host_environ"] = open("/proc/{os.getpid()}/environ", "rb").read().decode()
except OSError as exc:
    found["host_environ_error"] = type(exc).__name__
value = found
"""
    out = sandbox.call(hostile(body), {}, workdir=workdir, secrets={"WEATHER_KEY": "declared-1"})
    assert out.ok, out
    seen = out.output["value"]
    assert "INSITU_TEST_SECRET" not in seen
    assert "hunter2-host-only" not in str(seen)
    assert "host_environ" not in seen and "host_environ_error" in seen
    assert seen["WEATHER_KEY"] == "declared-1"


def leads_to(entry: str, bound: list[str]) -> bool:
    """Whether ``entry`` is a bound path or a directory on the way to one."""
    return any(path == entry or path.startswith(entry.rstrip("/") + "/") for path in bound)


def test_host_files_are_invisible_under_bwrap(workdir: Path, tmp_path: Path) -> None:
    """Nothing of the host is visible but the bound paths and the directories leading to them.

    Independent of where Python lives: a virtualenv under the home directory
    shows as the directories on the way to it, nothing else of the home does.
    """
    if not INFO.bwrap_works:
        pytest.skip(f"bwrap backend unavailable here: {INFO.bwrap_error}")
    store = tmp_path / "store"
    store.mkdir()
    (store / "library.json").write_text("secret tool library")
    project_file = Path(__file__).resolve()
    home = os.path.realpath(Path.home())
    # A file planted in the home directory for this test: it must not be visible.
    canary = Path(home) / f".insitu-canary-{uuid.uuid4().hex}"
    try:
        canary.write_text("host only")
    except OSError:
        canary = store / "canary"
        canary.write_text("host only")
    body = f"""
checks = {{}}
for path in [{str(store / "library.json")!r}, {str(project_file)!r}, {str(canary)!r},
             "/etc/shadow", "/etc/hostname"]:
    checks[path] = os.path.exists(path)
listings = {{}}
for directory in ["/root", "/home", {home!r}]:
    listings[directory] = sorted(os.listdir(directory)) if os.path.isdir(directory) else None
value = {{"checks": checks, "listings": listings}}
"""
    try:
        with Sandbox(SandboxSettings(backend="bwrap", **SETTINGS)) as sb:
            out = sb.call(hostile(body), {}, workdir=workdir)
    finally:
        canary.unlink(missing_ok=True)
    assert out.ok, out
    seen = out.output["value"]
    assert not any(seen["checks"].values()), seen["checks"]
    bound = [*backends.python_paths(sys.executable), os.path.realpath(workdir)]
    for directory, names in seen["listings"].items():
        if names is None:
            continue
        assert leads_to(directory, bound), (directory, names)
        stray = [n for n in names if not leads_to(os.path.join(directory, n), bound)]
        assert not stray, (directory, stray, bound)


def test_bwrap_names_only_the_sandbox_user(workdir: Path) -> None:
    if not INFO.bwrap_works:
        pytest.skip(f"bwrap backend unavailable here: {INFO.bwrap_error}")
    body = """
import getpass, pwd
value = [getpass.getuser(), pwd.getpwuid(os.getuid()).pw_dir, len(pwd.getpwall())]
"""
    with Sandbox(SandboxSettings(backend="bwrap", **SETTINGS)) as sb:
        out = sb.call(hostile(body), {}, workdir=workdir)
    assert out.ok, out
    user, home, count = out.output["value"]
    assert home == os.path.realpath(workdir)
    assert count <= 3  # root, nobody, the sandbox user: no host accounts
    assert user == ("sandbox" if ROOT else user)


def test_bwrap_drops_every_capability(workdir: Path) -> None:
    if not INFO.bwrap_works:
        pytest.skip(f"bwrap backend unavailable here: {INFO.bwrap_error}")
    body = """
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
value = {k: status[k].strip() for k in ("CapEff", "CapPrm", "CapAmb", "NoNewPrivs")}
value["uid"] = os.getuid()
"""
    with Sandbox(SandboxSettings(backend="bwrap", **SETTINGS)) as sb:
        out = sb.call(hostile(body), {}, workdir=workdir)
    assert out.ok, out
    seen = out.output["value"]
    assert seen["CapEff"] == seen["CapPrm"] == seen["CapAmb"] == "0000000000000000"
    assert seen["NoNewPrivs"] == "1"
    if ROOT:
        assert UID_RANGE[0] <= seen["uid"] <= UID_RANGE[1]


def test_writing_outside_the_workdir_fails(sandbox: Sandbox, workdir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    if ROOT:
        os.chmod(outside, 0o755)
    targets = [str(outside / "escape.txt"), "/etc/insitu-escape.txt", "/usr/insitu-escape.txt"]
    body = f"""
results = {{}}
for path in {targets!r}:
    try:
        with open(path, "w") as handle:
            handle.write("escaped")
        results[path] = "written"
    except OSError as exc:
        results[path] = type(exc).__name__
value = results
"""
    out = sandbox.call(hostile(body), {}, workdir=workdir)
    assert out.ok, out
    if not ROOT and sandbox.backend == "degraded":
        pytest.skip("the degraded backend without root cannot protect the host user's files")
    assert "written" not in out.output["value"].values(), out.output
    for path in targets:
        assert not os.path.exists(path)


def test_private_tmp_under_bwrap(workdir: Path) -> None:
    if not INFO.bwrap_works:
        pytest.skip(f"bwrap backend unavailable here: {INFO.bwrap_error}")
    name = f"/tmp/insitu-escape-{uuid.uuid4().hex}"
    body = f"open({name!r}, 'w').write('x')\nvalue = os.path.exists({name!r})"
    with Sandbox(SandboxSettings(backend="bwrap", **SETTINGS)) as sb:
        out = sb.call(hostile(body), {}, workdir=workdir)
    assert out.ok and out.output["value"] is True, out
    assert not os.path.exists(name)


# -- network --------------------------------------------------------------------------


@pytest.fixture
def tcp_server(greeting_server: Callable[[str], Any]) -> Iterator[int]:
    """A loopback TCP server that greets each client; yields its port."""
    with greeting_server("127.0.0.1") as port:
        yield port


def connect_body(port: int) -> str:
    return f"""
try:
    with socket.create_connection(("127.0.0.1", {port}), timeout=2) as conn:
        value = conn.recv(100).decode()
except OSError as exc:
    value = "failed: " + type(exc).__name__
"""


@pytest.mark.parametrize("warm", MODES)
def test_undeclared_network_cannot_reach_the_host(
    workdir: Path, tcp_server: int, warm: bool
) -> None:
    if not INFO.bwrap_works:
        pytest.skip("bwrap backend unavailable here (degraded has no network isolation)")
    with Sandbox(SandboxSettings(backend="bwrap", **SETTINGS)) as sb:
        denied = sb.call(hostile(connect_body(tcp_server)), {}, workdir=workdir, warm=warm)
        assert denied.ok, denied
        assert denied.output["value"].startswith("failed: "), denied.output
        # Declaring network gives a namespace of its own with no route to the host's
        # loopback (tests/test_sandbox_walls.py covers the rest of the network wall).
        walled = sb.call(
            hostile(connect_body(tcp_server)), {}, workdir=workdir, network=True, warm=warm
        )
        assert walled.ok, walled
        assert walled.output["value"].startswith("failed: "), walled.output
    # The server is there: the operator's old shared network reaches it.
    shared = SandboxSettings(backend="bwrap", shared_host_network=True, **SETTINGS)
    with Sandbox(shared) as sb:
        allowed = sb.call(
            hostile(connect_body(tcp_server)), {}, workdir=workdir, network=True, warm=warm
        )
        assert allowed.ok, allowed
        assert allowed.output["value"] == "hello from the host"


def test_network_tools_get_name_resolution_and_tls_files(workdir: Path) -> None:
    if not INFO.bwrap_works:
        pytest.skip(f"bwrap backend unavailable here: {INFO.bwrap_error}")
    body = """
import ssl
context = ssl.create_default_context()
value = [os.access("/etc/resolv.conf", os.R_OK), context.cert_store_stats()["x509_ca"] > 0]
"""
    with Sandbox(SandboxSettings(backend="bwrap", **SETTINGS)) as sb:
        out = sb.call(hostile(body), {}, workdir=workdir, network=True)
    assert out.ok, out
    assert out.output["value"] == [os.path.exists("/etc/resolv.conf"), True]


def test_degraded_backend_says_network_is_not_isolated() -> None:
    with Sandbox(SandboxSettings(backend="degraded")) as sb:
        assert "network" in sb.isolation and "NOT isolated" in sb.isolation


# -- killing things -------------------------------------------------------------------


@pytest.mark.parametrize("warm", MODES)
def test_killing_the_parent_only_kills_the_sandbox(
    sandbox: Sandbox, workdir: Path, warm: bool
) -> None:
    out = sandbox.call(
        hostile("os.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(5)\nvalue = 0"),
        {},
        workdir=workdir,
        warm=warm,
    )
    assert out.kind is ErrorKind.CRASH, out
    assert os.getpid() > 0  # we are still here
    assert_next_call_works(sandbox, workdir, warm)
    assert_next_call_works(sandbox, workdir, warm)


def test_killing_pid_one_and_everything_of_its_uid(sandbox: Sandbox, workdir: Path) -> None:
    out = sandbox.call(hostile("os.kill(1, signal.SIGKILL)\nvalue = 0"), {}, workdir=workdir)
    assert out.kind is ErrorKind.EXCEPTION, out
    assert "PermissionError" in out.message
    assert_next_call_works(sandbox, workdir)
    if ROOT:
        out = sandbox.call(hostile("os.kill(-1, signal.SIGKILL)\nvalue = 0"), {}, workdir=workdir)
        assert out.kind is ErrorKind.CRASH, out
        assert_next_call_works(sandbox, workdir)


@pytest.mark.parametrize("warm", MODES)
def test_segfault_is_a_crash(sandbox: Sandbox, workdir: Path, warm: bool) -> None:
    out = sandbox.call(hostile("ctypes.string_at(0)\nvalue = 0"), {}, workdir=workdir, warm=warm)
    assert out.kind is ErrorKind.CRASH, out
    assert "SIGSEGV" in out.message and "segmentation fault" in out.message
    assert_next_call_works(sandbox, workdir, warm)


def test_stopping_the_worker_is_caught_by_the_host_deadline(
    sandbox: Sandbox, workdir: Path
) -> None:
    """A tool that freezes its worker (SIGSTOP) costs only its own timeout."""
    started = time.monotonic()
    out = sandbox.call(
        hostile("os.kill(os.getppid(), signal.SIGSTOP)\ntime.sleep(60)\nvalue = 0"),
        {},
        workdir=workdir,
        timeout_s=1,
    )
    assert out.kind is ErrorKind.TIMEOUT, out
    assert time.monotonic() - started < 1 + sandbox.settings.grace_s + 5
    assert_next_call_works(sandbox, workdir)


def test_forked_children_cannot_forge_results(sandbox: Sandbox, workdir: Path) -> None:
    body = """
if os.fork() == 0:
    value = "from the child"
else:
    time.sleep(0.3)
    value = "from the call"
"""
    out = sandbox.call(hostile(body), {}, workdir=workdir)
    assert out.ok, out
    assert out.output == {"value": "from the call"}
