"""Confinement inside the sandbox, call by call (issue #10).

* every call gets an empty private ``/tmp`` and ``/dev/shm`` (bubblewrap), and a
  describe an empty directory: nothing one call writes reaches the next, which
  under a shared workspace root may be another episode's;
* under a shared workspace root a call reads, there, its own workdir only;
* denied packages are refused at import time, and with Landlock their files
  cannot even be read (so taking the import hook out does not help);
* as a normal user (not root) a fork bomb is held by RLIMIT_NPROC.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from insitu.sandbox import ErrorKind, Sandbox, SandboxSettings, ToolEnvironment, probe_backend
from insitu.sandbox import backend as backends
from insitu.sandbox.runner import landlock_abi
from insitu.testing.probe import fork_bomb, probe_tool

INFO = probe_backend()
BWRAP = pytest.param(
    "bwrap",
    marks=pytest.mark.skipif(
        not INFO.bwrap_works, reason=f"bwrap backend unavailable here: {INFO.bwrap_error}"
    ),
)
BACKENDS = [BWRAP, "degraded"]
LANDLOCK = landlock_abi() >= 1
needs_landlock = pytest.mark.skipif(not LANDLOCK, reason="Landlock is not available")
needs_bwrap = pytest.mark.skipif(not INFO.bwrap_works, reason="needs the bubblewrap backend")


def tool(body: str, imports: str = "") -> str:
    """A tool whose run() executes ``body`` and returns ``{"value": value}``."""
    return probe_tool(body, imports=imports)


def value_of(sandbox: Sandbox, body: str, workdir: Path, arg: object = None) -> object:
    """Call ``tool(body)`` and return its value (the call must succeed)."""
    out = sandbox.call(tool(body), {"arg": arg}, workdir=workdir)
    assert out.ok, out
    return out.output["value"]


def read_attempt(path: str) -> str:
    """Tool code: set ``value`` to the file's text, or to the error reading it."""
    return f"""
    try:
        value = open({path!r}).read()
    except OSError as exc:
        value = type(exc).__name__
    """


@pytest.fixture
def root() -> Iterator[Path]:
    # Outside /tmp: a root beneath a directory every call may write cannot be confined.
    base = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="insitu-confined-"))
    yield base / "workspaces"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def shared(root: Path) -> Iterator[Sandbox]:
    if not LANDLOCK:
        pytest.skip("workers are shared only with Landlock")
    with Sandbox(SandboxSettings(workspace_root=str(root))) as sandbox:
        if sandbox.backend != "bwrap":
            pytest.skip("workers are shared only with the bubblewrap backend")
        yield sandbox


# -- a fresh /tmp and /dev/shm for every call ------------------------------------------

LEAVE_TRACES = """
for directory in ("/tmp", "/dev/shm"):
    with open(os.path.join(directory, "secret.txt"), "w") as handle:
        handle.write("episode A's secret")
    locked = os.path.join(directory, "locked")
    os.makedirs(os.path.join(locked, "inner"))
    open(os.path.join(locked, "inner", "file"), "w").close()
    os.chmod(os.path.join(locked, "inner"), 0)
    os.chmod(locked, 0o500)
value = sorted(os.listdir("/tmp"))
"""
LOOK_FOR_TRACES = """
value = {
    directory: sorted(set(os.listdir(directory)) & {"secret.txt", "locked"})
    for directory in ("/tmp", "/dev/shm")
}
"""


@needs_bwrap
def test_a_call_never_sees_what_the_previous_one_left_in_tmp(workdir: Path) -> None:
    # The workdir lies under /tmp: bubblewrap creates its parents in the private
    # /tmp, and those (and the bound workdir) must survive the cleaning.
    (workdir / "input.txt").write_text("kept")
    with Sandbox(SandboxSettings(backend="bwrap")) as sandbox:
        assert "secret.txt" in value_of(sandbox, LEAVE_TRACES, workdir)
        assert value_of(sandbox, LOOK_FOR_TRACES, workdir) == {"/tmp": [], "/dev/shm": []}
        assert value_of(sandbox, "value = open('input.txt').read()", workdir) == "kept"
        assert sandbox.worker_count == 1  # one warm worker served all three calls
    assert (workdir / "input.txt").read_text() == "kept"


@needs_bwrap
def test_a_worker_that_cannot_clean_up_is_replaced(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    too_deep = """
    os.chdir("/tmp")
    for _ in range(1500):
        os.mkdir("d")
        os.chdir("d")
    value = "left a tree too deep to remove"
    """
    with Sandbox(SandboxSettings(backend="bwrap")) as sandbox:
        assert value_of(sandbox, too_deep, workdir).startswith("left")  # the answer stands
        assert "retiring a sandbox worker" in caplog.text
        assert "d" not in value_of(sandbox, "value = os.listdir('/tmp')", workdir)


def test_episodes_sharing_a_worker_share_no_scratch(shared: Sandbox, root: Path) -> None:
    value_of(shared, LEAVE_TRACES, root / "a")
    assert value_of(shared, LOOK_FOR_TRACES, root / "b") == {"/tmp": [], "/dev/shm": []}
    assert shared.worker_count == 1


def test_a_process_the_call_leaves_behind_cannot_write_to_the_next_calls_tmp(
    shared: Sandbox, root: Path
) -> None:
    daemon = """
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            while True:
                with open("/tmp/heartbeat", "a") as handle:
                    handle.write("x")
        os._exit(0)
    time.sleep(0.1)
    value = os.path.exists("/tmp/heartbeat")
    """
    assert value_of(shared, daemon, root / "a") is True
    look = "time.sleep(0.3)\nvalue = os.listdir('/tmp')"
    assert value_of(shared, look, root / "b") == []


SYSTEM_V = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
key, create = 0x1D5EA, 0o1000 | 0o600  # IPC_CREAT
if input.arg == "leave":
    segment = libc.shmget(key, 4096, create)
    address = libc.shmat(segment, None, 0)
    ctypes.memmove(address, b"episode A's secret", 18)
    libc.shmdt(ctypes.c_void_p(address))
    value = [segment >= 0, libc.msgget(key, create) >= 0, libc.semget(key, 1, create) >= 0]
else:
    value = [libc.shmget(key, 0, 0), libc.msgget(key, 0), libc.semget(key, 0, 0)]
"""
POSIX_QUEUE = """
import ctypes, ctypes.util
rt = ctypes.CDLL(ctypes.util.find_library("rt") or "librt.so.1", use_errno=True)
value = rt.mq_open(b"/insitu-probe", os.O_CREAT | os.O_RDWR, 0o600, None)
"""


def test_system_v_ipc_objects_do_not_outlive_the_call(shared: Sandbox, root: Path) -> None:
    assert value_of(shared, SYSTEM_V, root / "a", "leave") == [True, True, True]
    assert value_of(shared, SYSTEM_V, root / "b", "look") == [-1, -1, -1]
    assert shared.worker_count == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_posix_message_queue_can_be_made(backend: str, workdir: Path) -> None:
    # They outlive the call, and cannot be listed (to remove them) from inside.
    with Sandbox(SandboxSettings(backend=backend)) as sandbox:
        assert value_of(sandbox, POSIX_QUEUE, workdir) == -1


DESCRIBE_WRITER = """
import os
open("written-at-import.txt", "w").write("x")
if os.uname().nodename == "sandbox":  # bubblewrap: a private /tmp
    open("/tmp/written-at-import.txt", "w").write("x")
def run() -> int:
    return 1
__TOOL_META__ = {"name": "write_at_import", "description": "Writes while imported."}
"""
DESCRIBE_LISTER = """
import os
found = sorted(os.listdir(".")) + sorted(os.listdir("/tmp"))
def run() -> int:
    return 1
__TOOL_META__ = {"name": "list_at_import", "description": "found: " + ",".join(found)}
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_files_written_while_describing_do_not_persist(backend: str) -> None:
    with Sandbox(SandboxSettings(backend=backend)) as sandbox:
        assert sandbox.describe(DESCRIBE_WRITER).ok
        described = sandbox.describe(DESCRIBE_LISTER)
        assert described.ok, described
        assert "written-at-import" not in described.output["description"]
        scratch = Path(sandbox._scratch_dir())
        assert not list(scratch.rglob("written-at-import.txt"))


def test_describes_at_once_each_get_an_empty_directory(tmp_path: Path) -> None:
    slow_writer = DESCRIBE_WRITER.replace("def run", "time.sleep(1.0)\ndef run").replace(
        "import os", "import os, time"
    )
    with Sandbox(SandboxSettings()) as sandbox, ThreadPoolExecutor(2) as pool:
        writing = pool.submit(sandbox.describe, slow_writer)
        time.sleep(0.3)  # the writer holds its directory, and has written in it
        described = sandbox.describe(DESCRIBE_LISTER)
        assert writing.result().ok
        assert described.ok and "written-at-import" not in described.output["description"]
        assert sandbox._describe_busy == set()


def test_files_written_while_describing_under_a_shared_root_do_not_persist(
    shared: Sandbox, root: Path
) -> None:
    assert shared.describe(DESCRIBE_WRITER).ok
    described = shared.describe(DESCRIBE_LISTER)
    assert described.ok, described
    assert described.output["description"] == "found: "
    assert [p for p in (root / ".describe").rglob("*") if not p.is_dir()] == []
    assert shared.worker_count == 1


# -- reads under a shared workspace root ------------------------------------------------


def test_a_call_reads_only_its_own_workdir_under_a_shared_root(root: Path) -> None:
    if not LANDLOCK:
        pytest.skip("workers are shared only with Landlock")
    # A store as insitu lays it out: the tool environment next to the workspaces.
    toolenv = ToolEnvironment(root.parent / "toolenv")
    toolenv.create()
    (toolenv.site_packages / "insitu_env_module.py").write_text("VALUE = 'from the toolenv'\n")
    with Sandbox(SandboxSettings(workspace_root=str(root)), toolenv=toolenv) as sandbox:
        if sandbox.backend != "bwrap":
            pytest.skip("workers are shared only with the bubblewrap backend")
        (root / "b").mkdir(parents=True)
        (root / "b" / "secret.txt").write_text("episode B's secret")
        (root / "a").mkdir()
        (root / "a" / "input.csv").write_text("1,2,3")
        a = root / "a"
        assert value_of(sandbox, read_attempt(str(root / "b" / "secret.txt")), a) == (
            "PermissionError"
        )
        listing = """
        try:
            value = os.listdir(input.arg)
        except OSError as exc:
            value = type(exc).__name__
        """
        assert value_of(sandbox, listing, a, str(root / "b")) == "PermissionError"
        assert value_of(sandbox, listing, a, str(root)) == "PermissionError"
        # Its own files, the interpreter, the tool environment and the system stay readable.
        assert value_of(sandbox, read_attempt("input.csv"), a) == "1,2,3"
        assert value_of(sandbox, listing, a, str(a)) == ["input.csv"]
        uses_everything = """
        import csv, json, pydantic, insitu_env_module
        value = [insitu_env_module.VALUE, len(open(json.__file__).read()) > 0,
                 os.path.exists("/etc/passwd") and len(open("/etc/passwd").read()) > 0]
        """
        assert value_of(sandbox, uses_everything, a) == ["from the toolenv", True, True]
        # The other episode reads its own secret, and the first call changed nothing.
        assert value_of(sandbox, read_attempt("secret.txt"), root / "b") == "episode B's secret"
        assert sandbox.worker_count == 1


# -- denied packages --------------------------------------------------------------------

DYNAMIC_IMPORT = """
import importlib
value = importlib.import_module("req" + "uests").__name__
"""
HOOK_REMOVED = """
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "DeniedImportFinder"]
import importlib
value = importlib.import_module(input.arg).__name__
"""


def denying(backend: str, *packages: str) -> Sandbox:
    return Sandbox(SandboxSettings(backend=backend, deny_packages=list(packages)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_denied_package_is_refused_at_import_time(backend: str, workdir: Path) -> None:
    if importlib.util.find_spec("requests") is None:
        pytest.skip("needs 'requests' installed")
    with denying(backend, "requests") as sandbox:
        out = sandbox.call(tool(DYNAMIC_IMPORT), {}, workdir=workdir)
        assert out.kind is ErrorKind.DEPENDENCY, out
        assert "'requests'" in out.message and "deny list" in out.message
        vendored = "from pip._vendor import requests\nvalue = 1"
        if importlib.util.find_spec("pip._vendor.requests") is not None:
            out = sandbox.call(tool(vendored), {}, workdir=workdir)
            assert out.kind is ErrorKind.DEPENDENCY and "vendored" in out.message, out
        # What is not denied imports as before: the tool's own imports and pydantic.
        allowed = "import idna, json, urllib.request, pydantic\nvalue = idna.__name__"
        assert value_of(sandbox, allowed, workdir) == "idna"
    with Sandbox(SandboxSettings(backend=backend)) as sandbox:
        assert value_of(sandbox, DYNAMIC_IMPORT, workdir) == "requests"


@needs_landlock
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_denied_package_stays_unreadable_without_the_hook(backend: str, workdir: Path) -> None:
    spec = importlib.util.find_spec("requests")
    if spec is None or spec.origin is None:
        pytest.skip("needs 'requests' installed")
    with denying(backend, "requests", "pyyaml") as sandbox:
        out = sandbox.call(tool(HOOK_REMOVED), {"arg": "requests"}, workdir=workdir)
        assert not out.ok and "Permission denied" in out.message, out
        assert value_of(sandbox, read_attempt(spec.origin), workdir) == "PermissionError"
        # Nor from a system Python's packages added to sys.path by hand.
        system = "/usr/lib/python3/dist-packages"
        if os.path.isdir(os.path.join(system, "yaml")):
            body = f"sys.path.insert(0, {system!r})\n" + HOOK_REMOVED
            out = sandbox.call(tool(body), {"arg": "yaml"}, workdir=workdir)
            assert not out.ok and "Permission denied" in out.message, out
        assert value_of(sandbox, "import idna, pydantic\nvalue = 1", workdir) == 1


def fake_distribution(site_packages: Path, name: str, module: str) -> None:
    """Install a tiny distribution by hand (no network): a module and its RECORD."""
    (site_packages / module).mkdir(parents=True)
    (site_packages / module / "__init__.py").write_text("VALUE = 1\n")
    info = site_packages / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "RECORD").write_text(
        f"{module}/__init__.py,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n"
    )


@needs_landlock
@pytest.mark.parametrize("backend", BACKENDS)
def test_packages_installed_next_to_a_denied_one_become_importable(
    backend: str, tmp_path: Path, workdir: Path
) -> None:
    toolenv = ToolEnvironment(tmp_path / "toolenv", deny=["insitu-denied-demo"])
    toolenv.create()
    fake_distribution(toolenv.site_packages, "insitu-denied-demo", "insitu_denied_demo")
    with Sandbox(SandboxSettings(backend=backend), toolenv=toolenv) as sandbox:
        out = sandbox.call(tool(HOOK_REMOVED), {"arg": "insitu_denied_demo"}, workdir=workdir)
        assert not out.ok and "Permission denied" in out.message, out
        # An install into the same directory (the worker stays warm): the new
        # package is readable, the denied one still is not.
        (toolenv.site_packages / "insitu_fresh_module.py").write_text("VALUE = 'fresh'\n")
        out = sandbox.call(tool(HOOK_REMOVED), {"arg": "insitu_fresh_module"}, workdir=workdir)
        assert out.ok and out.output["value"] == "insitu_fresh_module", out
        out = sandbox.call(tool(HOOK_REMOVED), {"arg": "insitu_denied_demo"}, workdir=workdir)
        assert not out.ok and "Permission denied" in out.message, out
        assert sandbox.worker_count == 1


def test_the_installer_refuses_a_denied_package(tmp_path: Path) -> None:
    toolenv = ToolEnvironment(tmp_path / "toolenv", deny=["requests"])
    report = toolenv.ensure(["requests>=2"])
    assert not report.ok and report.rejected == ["requests>=2"]
    assert "deny list" in report.reason


# -- RLIMIT_NPROC as a normal user --------------------------------------------------------

AS_NORMAL_USER = """
import json, logging, os, resource, sys, time
from pathlib import Path
from insitu.sandbox import Sandbox, SandboxSettings
from insitu.sandbox.runner import tasks_of_uid

# A safety net should the limit ever regress: the user's tasks stay bounded anyway.
cap = tasks_of_uid(os.getuid()) + 600
resource.setrlimit(resource.RLIMIT_NPROC, (cap, cap))
retired = []
handler = logging.Handler()
handler.emit = lambda record: retired.append(record.getMessage())
logging.getLogger("insitu.sandbox").addHandler(handler)
backend, workdir = sys.argv[1], Path(sys.argv[2])
results = {}
with Sandbox(SandboxSettings(backend=backend, processes=16, timeout_s=5)) as sandbox:
    results["backend"] = sandbox.backend
    results["bomb"] = sandbox.call(sys.argv[3], {}, workdir=workdir).model_dump(mode="json")
    if backend == "bwrap":
        daemon = sandbox.call(sys.argv[5], {}, workdir=workdir)
        results["daemon"] = daemon.model_dump(mode="json")
        time.sleep(0.3)
        size = (workdir / "heartbeat").stat().st_size
        time.sleep(0.5)
        results["daemon_outlived_its_call"] = (workdir / "heartbeat").stat().st_size != size
    results["next"] = sandbox.call(sys.argv[4], {}, workdir=workdir).model_dump(mode="json")
results["retired"] = [message for message in retired if "retiring" in message]
print(json.dumps(results))
"""
# A fork bomb bounded at 200 processes, so that a regression cannot take the
# machine down: it reports how many processes it got.
BOMB = tool(fork_bomb(200))
NEXT = tool("value = [os.getuid(), sorted(os.listdir('/tmp'))]")
# A process that leaves its session and keeps writing, in the workdir and in /tmp.
DAEMON = tool("""
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            for path in ("heartbeat", "/tmp/heartbeat"):
                with open(path, "a") as handle:
                    handle.write("x")
            time.sleep(0.01)
    os._exit(0)
time.sleep(0.1)
value = "left a daemon"
""")


def reachable_view(paths: list[str]) -> str | None:
    """Shell commands that make ``paths`` reachable by any uid in a private mount namespace.

    A directory no other user may enter (``/root`` holding a pyenv) is replaced
    by a tmpfs holding only the entries that lead to ``paths``.

    Returns:
        The commands, or None when a blocked directory lies deeper than one level.
    """
    blocked: dict[str, set[str]] = {}
    for path in paths:
        parts = Path(path).parts
        for depth in range(2, len(parts) + 1):
            directory = str(Path(*parts[:depth]))
            if not os.stat(directory).st_mode & 0o001:
                if depth == len(parts):
                    return None
                blocked.setdefault(directory, set()).add(parts[depth])
                break
    commands = []
    for index, (directory, children) in enumerate(sorted(blocked.items())):
        for child in children:
            if not os.stat(os.path.join(directory, child)).st_mode & 0o001:
                return None
        keep = f'"$KEEP/{index}"'
        commands += [f"mkdir {keep}", f"mount --bind {directory} {keep}"]
        commands.append(f"mount -t tmpfs -o mode=0755 tmpfs {directory}")
        for child in sorted(children):
            target = os.path.join(directory, child)
            commands += [f"mkdir {target}", f"mount --bind {keep}/{child} {target}"]
    return " && ".join(['KEEP="$(mktemp -d)"', *commands] if commands else ["true"])


def run_as_normal_user(backend: str, base: Path) -> dict:
    """Run AS_NORMAL_USER with this interpreter as an unprivileged uid."""
    if os.geteuid() != 0:
        command = [sys.executable, "-c", AS_NORMAL_USER, backend, str(base / "work"), BOMB, NEXT]
        command.append(DAEMON)
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=base)
    else:
        if not (shutil.which("unshare") and shutil.which("setpriv")):
            pytest.skip("needs unshare and setpriv to run as a normal user")
        import insitu

        needed = [*backends.python_paths(sys.executable), str(Path(insitu.__file__).parents[1])]
        view = reachable_view(needed)
        if view is None:
            pytest.skip("this Python lies where no normal user can reach it")
        # No account, and no other process of it (each backend its own: the
        # degraded backend's limit counts every process of the uid).
        uid = 64000 + 2 * (os.getpid() % 900) + (backend == "degraded")
        os.chown(base, uid, uid)
        user = (
            f"HOME={base} exec setpriv --reuid={uid} --regid={uid} --clear-groups "
            f'"$0" -c "$1" "$2" "$3" "$4" "$5" "$6"'
        )
        command = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            f"{view} && cd {base} && {user}",
            sys.executable,
            AS_NORMAL_USER,
            backend,
            str(base / "work"),
            BOMB,
            NEXT,
            DAEMON,
        ]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fork_bomb_is_contained_when_insitu_runs_as_a_normal_user(backend: str) -> None:
    base = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="insitu-normal-user-"))
    os.chmod(base, 0o755)
    try:
        results = run_as_normal_user(backend, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert results["backend"] == backend
    bomb = results["bomb"]
    assert bomb["ok"], bomb
    count, error = bomb["output"]["value"]
    assert count <= 16 and "Resource temporarily unavailable" in error, bomb
    after = results["next"]
    assert after["ok"], after
    assert after["output"]["value"][0] != 0
    if backend == "bwrap":
        # What the call left behind was killed in the sandbox's own pid namespace
        # (kill(-1) there reaches nothing else of the user), the private /tmp is
        # empty again, and the same warm worker serves on.
        assert results["daemon"]["ok"], results["daemon"]
        assert results["daemon_outlived_its_call"] is False
        assert after["output"]["value"][1] == [], after
    assert results["retired"] == []
