"""Backends: probing what isolation works here, and building sandbox command lines.

Two backends exist:

* ``bwrap``: bubblewrap with fresh pid, ipc, uts, cgroup and (unless the tool
  declares network) network namespaces; a read-only view of the system, the
  Python prefix and the tool environment; the call's workdir as the only
  writable host directory; a private tmpfs ``/tmp``. As root no user namespace
  is used: bwrap keeps only CAP_SETUID/CAP_SETGID, and the runner drops to a
  dedicated unprivileged uid so that RLIMIT_NPROC holds.
* ``degraded``: a fresh process with the same runner, rlimits, scrubbed
  environment, its own session and (as root) a dedicated unprivileged uid, but
  no filesystem or network isolation. It logs a loud warning once per process.

Also here: the per-process spawner thread (so that "die with parent" signals
follow the process, not whichever thread happened to start a sandbox), the uid
allocator (one uid per live sandbox process, shared safely between host
processes through lock files) and the host-side sweep of a uid's processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import queue
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("insitu.sandbox")

RUNNER_PATH = Path(__file__).with_name("runner.py")
_runner_source: str | None = None

#: System trees: no workdir may lie inside them (it would be bound writable and chowned).
_SYSTEM_DIRS = (
    "/usr",
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/boot",
)
#: Shared directories that may hold workdirs but must never be one themselves.
_SHARED_DIRS = (
    "/tmp",
    "/var",
    "/var/tmp",
    "/var/lib",
    "/var/cache",
    "/var/log",
    "/run",
    "/opt",
    "/srv",
    "/mnt",
    "/media",
    "/home",
    "/root",
)
#: Small system files that harmless programs expect; bound read-only when present.
_ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/mime.types",
    "/etc/nsswitch.conf",
    "/etc/alternatives",
)
#: What a tool that declares network access needs to resolve names and verify TLS.
_NETWORK_ETC = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
)


def runner_source() -> str:
    """Return the in-sandbox runner's source text (read once per process)."""
    global _runner_source
    if _runner_source is None:
        _runner_source = RUNNER_PATH.read_text(encoding="utf-8")
    return _runner_source


def is_root() -> bool:
    """Whether this process runs as root (so uids can be dropped)."""
    return os.geteuid() == 0


# ---------------------------------------------------------------------------
# Paths visible inside the sandbox.
# ---------------------------------------------------------------------------


def _real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.fspath(path))


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def python_paths(python: str | os.PathLike[str] | None = None) -> list[str]:
    """Return the host directories an interpreter needs to run (read-only).

    Covers this process's prefixes and site directories, plus, for another
    interpreter, its virtual environment and that environment's base.

    Args:
        python: The interpreter (None: this process's).

    Returns:
        Real, existing, de-duplicated directory paths.
    """
    paths: list[str] = [sys.base_prefix, sys.prefix, sys.exec_prefix, sys.base_exec_prefix]
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        value = sysconfig.get_paths().get(key)
        if value:
            paths.append(value)
    paths.extend(site.getsitepackages())
    for exe in (sys.executable, python):
        if not exe:
            continue
        real = _real(exe)
        paths.append(os.path.dirname(os.path.dirname(real)))
        venv = Path(exe).absolute().parent.parent
        cfg = venv / "pyvenv.cfg"
        if cfg.is_file():
            paths.append(str(venv))
            for line in cfg.read_text(errors="replace").splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "home" and value.strip():
                    paths.append(os.path.dirname(value.strip()))
    return minimal_dirs(paths)


def minimal_dirs(paths: Iterable[str]) -> list[str]:
    """Resolve, drop missing ones, and drop paths inside others or inside /usr."""
    real = sorted({_real(p) for p in paths if p and os.path.exists(p)}, key=len)
    kept: list[str] = []
    for path in real:
        if path == "/" or _within(path, "/usr"):
            continue
        if any(_within(path, parent) for parent in kept):
            continue
        kept.append(path)
    return kept


def check_workdir(workdir: Path, protected: Sequence[str]) -> str | None:
    """Return why ``workdir`` must not be a sandbox's writable dir, or None if fine.

    Binding it read-write (and handing its group to the sandbox) must not expose
    the system, the interpreter, the tool environment or a whole home directory.

    Args:
        workdir: The resolved candidate.
        protected: Directories that must stay read-only.
    """
    path = str(workdir)
    if path == "/":
        return "the workdir cannot be /"
    for system in _SYSTEM_DIRS:
        if _within(path, system):
            return f"the workdir {path} lies in the system directory {system}"
    for guarded in protected:
        if _within(guarded, path):
            return f"the workdir {path} contains {guarded}, which must stay read-only"
        if _within(path, guarded):
            return f"the workdir {path} lies inside {guarded}, which is read-only"
    if path in _SHARED_DIRS:
        return f"the workdir cannot be the shared directory {path} itself"
    if path == str(Path.home()) or os.path.dirname(path) == "/home":
        return f"the workdir cannot be the home directory {path} itself"
    return None


def prepare_workdir(workdir: Path, gid: int) -> None:
    """Make ``workdir`` writable by every sandbox uid (through their shared group).

    The set-gid bit makes files created inside inherit the group, and the
    runner's umask 002 keeps them group-writable, so parallel workers (each with
    its own uid) can share one workdir.

    Args:
        workdir: The directory (exists).
        gid: The sandbox group.
    """
    st = os.stat(workdir)
    wanted = st.st_mode | 0o2070
    if st.st_gid != gid:
        os.chown(workdir, -1, gid)
    if (st.st_mode & 0o7777) != (wanted & 0o7777) or st.st_gid != gid:
        os.chmod(workdir, wanted & 0o7777)


def needs_read_search(paths: Iterable[str]) -> bool:
    """Whether an unprivileged uid could not reach one of ``paths``.

    True when some ancestor directory lacks the execute bit for others (a pyenv
    under ``/root``, a pytest temp dir): the degraded backend then keeps
    CAP_DAC_READ_SEARCH, which it reports in its isolation statement.
    """
    for path in paths:
        current = Path(path)
        for directory in [current, *current.parents]:
            try:
                mode = directory.stat().st_mode
            except OSError:
                continue
            if not mode & 0o001:
                return True
    return False


def bwrap_command(
    *,
    bwrap: str,
    python: str,
    argv_tail: Sequence[str],
    workdir: str,
    ro_paths: Sequence[str],
    env: dict[str, str],
    network: bool,
    tmp_size_mb: int,
    as_root: bool,
    data_files: Sequence[tuple[int, str]] = (),
) -> list[str]:
    """Build the bubblewrap command line of one sandbox process.

    Args:
        bwrap: Path of the bwrap binary.
        python: Interpreter to run inside.
        argv_tail: Arguments after the interpreter.
        workdir: The only writable host directory (bound at the same path).
        ro_paths: Host directories made visible read-only (resolved, minimal).
        env: The complete environment inside.
        network: Share the host's network namespace.
        tmp_size_mb: Size of the private /tmp.
        as_root: We are root: no user namespace; keep only CAP_SETUID/SETGID so
            the runner can drop to its unprivileged uid.
        data_files: ``(fd, path)`` pairs: read-only files inside whose content
            bwrap reads from ``fd`` (the fds must be passed to the process).

    Returns:
        The argv list.
    """
    args = [bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not network:
        args.append("--unshare-net")
    if as_root:
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args.append("--unshare-user")
    args += ["--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox"]
    args += ["--ro-bind", "/usr", "/usr"]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    # Created explicitly: implicit parents are 0700 root, unreadable to the sandbox uid.
    args += ["--perms", "0755", "--dir", "/etc"]
    for item in _ETC_FILES + (_NETWORK_ETC if network else ()):
        if os.path.exists(item):
            args += ["--ro-bind", _real(item), item]
    for fd, path in data_files:
        args += ["--perms", "0644", "--ro-bind-data", str(fd), path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    # World-writable and sticky like a real /tmp, so the unprivileged uid can use it.
    size = str(int(tmp_size_mb) << 20)
    args += ["--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
    # multiprocessing's semaphores and queues need a writable /dev/shm.
    args += ["--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]
    # Every ancestor of a bind is created explicitly with 0755: bwrap would make
    # them 0700 root, which the unprivileged uid could not traverse.
    ancestors: set[str] = set()
    for path in [*ro_paths, workdir]:
        parent = os.path.dirname(path)
        while parent not in ("/", ""):
            ancestors.add(parent)
            parent = os.path.dirname(parent)
    skip = ("/usr", "/proc", "/dev", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
    for directory in sorted(ancestors, key=lambda p: (p.count("/"), p)):
        if any(_within(directory, s) for s in skip) or directory == "/tmp":
            continue
        args += ["--perms", "0755", "--dir", directory]
    for path in ro_paths:
        args += ["--ro-bind", path, path]
    args += ["--bind", workdir, workdir, "--chdir", workdir]
    for key, value in env.items():
        args += ["--setenv", key, value]
    args += [python, *argv_tail]
    return args


def account_files(uid: int, gid: int, home: str) -> dict[str, str]:
    """Return minimal /etc/passwd and /etc/group contents naming the sandbox user.

    The host's own files would list its users; without any, ``getpass.getuser()``
    and ``pwd.getpwuid(os.getuid())`` fail in tools and libraries that call them.

    Args:
        uid: The sandbox uid.
        gid: Its group.
        home: Its home directory (the workdir).
    """
    nologin = "/usr/sbin/nologin"
    passwd = [
        f"root:x:0:0:root:/root:{nologin}",
        f"nobody:x:65534:65534:nobody:/nonexistent:{nologin}",
    ]
    group = ["root:x:0:", "nogroup:x:65534:"]
    if uid not in (0, 65534):
        passwd.append(f"sandbox:x:{uid}:{gid}:insitu sandbox:{home}:{nologin}")
    if gid not in (0, 65534):
        group.append(f"sandbox:x:{gid}:")
    return {"/etc/passwd": "\n".join(passwd) + "\n", "/etc/group": "\n".join(group) + "\n"}


def base_env(python: str, workdir: str) -> dict[str, str]:
    """Return the scrubbed environment every sandboxed process starts with."""
    bin_dir = os.path.dirname(os.path.abspath(python))
    return {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


# ---------------------------------------------------------------------------
# Spawning from one long-lived thread.
# ---------------------------------------------------------------------------


class _Spawner:
    """Starts every sandbox process from one daemon thread.

    bwrap's ``--die-with-parent`` and our PR_SET_PDEATHSIG fire when the
    *thread* that forked the process exits; starting them all from one thread
    that lives as long as the process ties them to the process instead.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[tuple[Any, ...], dict[str, Any], Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process (``subprocess.Popen`` arguments) from the spawner thread."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="insitu-sandbox-spawner", daemon=True
                )
                self._thread.start()
        future: Future[Any] = Future()
        self._queue.put((args, kwargs, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            args, kwargs, future = self._queue.get()
            try:
                future.set_result(subprocess.Popen(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)


spawner = _Spawner()


# ---------------------------------------------------------------------------
# Dedicated uids.
# ---------------------------------------------------------------------------


@dataclass
class UidLease:
    """One uid reserved for one live sandbox process."""

    uid: int
    gid: int
    fd: int = -1

    def release(self) -> None:
        """Give the uid back (drops the cross-process lock)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class UidAllocator:
    """Hands out uids from a range, one per live sandbox process.

    Each uid is reserved with an ``flock`` on a lock file, which also keeps two
    host processes (two test runs, two agents) from sharing a uid: NPROC limits
    and the kill-everything-of-this-uid sweep are only safe on a uid we own.
    """

    def __init__(self, low: int, high: int, gid: int, lock_dir: Path | None = None) -> None:
        self.low, self.high, self.gid = low, high, gid
        self.lock_dir = lock_dir or Path(tempfile.gettempdir()) / "insitu-sandbox-uids"
        self._lock = threading.Lock()
        self._next = low

    def acquire(self) -> UidLease:
        """Reserve a free uid and kill anything an earlier owner left running.

        Raises:
            RuntimeError: Every uid of the range is in use.
        """
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._lock:
            span = self.high - self.low + 1
            for step in range(span):
                uid = self.low + (self._next - self.low + step) % span
                if _is_system_uid(uid):
                    continue
                fd = os.open(self.lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue
                if any(state == "Z" for _, state in processes_of_uid(uid)):
                    # Zombies nobody reaps would eat this uid's NPROC budget.
                    os.close(fd)
                    continue
                self._next = uid + 1 if uid < self.high else self.low
                lease = UidLease(uid, self.gid, fd)
                sweep_uid(uid)
                return lease
        raise RuntimeError(f"no free sandbox uid in {self.low}-{self.high}")


def _is_system_uid(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


_allocators: dict[tuple[int, int, int], UidAllocator] = {}
_allocators_lock = threading.Lock()


def uid_allocator(low: int, high: int, gid: int) -> UidAllocator:
    """Return this process's allocator for a uid range (one per range)."""
    with _allocators_lock:
        key = (low, high, gid)
        if key not in _allocators:
            _allocators[key] = UidAllocator(low, high, gid)
        return _allocators[key]


def processes_of_uid(uid: int) -> list[tuple[int, str]]:
    """List ``(pid, state)`` of every process whose real, effective or saved uid is ``uid``."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as handle:
                text = handle.read()
        except OSError:
            continue
        state = ""
        uids: list[str] = []
        for line in text.splitlines():
            if line.startswith("State:"):
                state = line.split()[1] if len(line.split()) > 1 else ""
            elif line.startswith("Uid:"):
                uids = line.split()[1:4]
                break
        if str(uid) in uids:
            found.append((int(entry), state))
    return found


def sweep_uid(uid: int, timeout_s: float = 2.0) -> list[int]:
    """Kill every live process of ``uid`` (host side, needs root).

    Args:
        uid: A dedicated sandbox uid (never a real user's).
        timeout_s: How long to keep killing (a fork bomb re-spawns).

    Returns:
        The pids still alive afterwards (normally none).
    """
    if not is_root():
        return []
    end = time.monotonic() + timeout_s
    while True:
        alive = [pid for pid, state in processes_of_uid(uid) if state != "Z"]
        if not alive or time.monotonic() > end:
            return alive
        for pid in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        time.sleep(0.005)


# ---------------------------------------------------------------------------
# Probing.
# ---------------------------------------------------------------------------


@dataclass
class BackendInfo:
    """What isolation this machine offers, probed once per process."""

    backend: str
    """The backend ``auto`` resolves to: ``bwrap`` or ``degraded``."""
    bwrap_path: str | None
    """The bwrap binary found on PATH, if any."""
    bwrap_works: bool
    """A trivial sandboxed Python actually ran (and dropped its uid, as root)."""
    bwrap_error: str
    """Why bwrap is not usable ('' when it is)."""
    root: bool
    """We run as root, so every sandbox gets a dedicated unprivileged uid."""
    can_drop_uid: bool
    """An unprivileged uid can be used (root, and the drop worked in the probe)."""
    python: str
    """The interpreter the probe ran."""
    statements: dict[str, str] = field(default_factory=dict)
    """Human-readable isolation statement per backend."""

    def statement(self, backend: str | None = None) -> str:
        """Return what ``backend`` (default: the resolved one) isolates and what not."""
        return self.statements.get(backend or self.backend, "")


def degraded_statement(root: bool, read_search: bool) -> str:
    """Describe precisely what the degraded backend does and does not isolate."""
    uid_text = (
        "runs each tool under a dedicated unprivileged uid (so it cannot write root-owned "
        "files, signal the host or exceed its process limit)"
        if root
        else "runs each tool as the host's own user (no uid separation: process limits are "
        "not enforced and the tool can signal the host's processes)"
    )
    read_text = (
        " The sandbox uid keeps CAP_DAC_READ_SEARCH because the Python installation is not "
        "reachable by other users, so tools can READ EVERY FILE the host can."
        if read_search
        else ""
    )
    return (
        "degraded sandbox (bubblewrap unavailable): a fresh process with CPU, memory, "
        "file-size, open-file and process rlimits, a wall-clock timeout, a scrubbed environment "
        f"and its own session; it {uid_text}. NOT isolated: filesystem visibility (tools can read "
        "any file readable to them) and writes outside the workdir wherever permissions allow "
        "(e.g. /tmp); network (tools can reach the network and the host's loopback services)."
        + read_text
    )


BWRAP_STATEMENT = (
    "bubblewrap sandbox: fresh pid/ipc/uts/cgroup namespaces; no network unless the tool "
    "declares it; read-only system, Python prefix and tool environment; the call's workdir is "
    "the only writable host directory, plus a private size-limited /tmp; home directories, the "
    "tool store and the project are invisible; scrubbed environment with only declared "
    "secrets; CPU, memory, file-size, open-file and process rlimits and a wall-clock timeout"
)


_probe_lock = threading.Lock()
_probe_cache: dict[str, BackendInfo] = {}


def probe_backend(
    python: str | None = None,
    *,
    refresh: bool = False,
    uid_range: tuple[int, int] = (61000, 61999),
) -> BackendInfo:
    """Find out which backend works here, actually launching a sandboxed Python.

    The result is cached per process and interpreter (thread-safe).

    Args:
        python: Interpreter to probe with (default: this process's).
        refresh: Probe again instead of using the cache.
        uid_range: Sandbox uids; as root the probe drops to one of them.

    Returns:
        The probe's findings.
    """
    python = python or sys.executable
    with _probe_lock:
        if not refresh and python in _probe_cache:
            return _probe_cache[python]
        info = _probe(python, uid_range)
        _probe_cache[python] = info
        return info


def _probe(python: str, uid_range: tuple[int, int]) -> BackendInfo:
    root = is_root()
    bwrap = shutil.which("bwrap")
    works = False
    error = ""
    can_drop = False
    if bwrap is None:
        error = "bwrap is not installed (install the 'bubblewrap' package)"
    else:
        works, error, can_drop = _probe_bwrap(bwrap, python, root, uid_range)
    if not bwrap or not works:
        can_drop = root
    read_search = root and needs_read_search(python_paths(python))
    info = BackendInfo(
        backend="bwrap" if works else "degraded",
        bwrap_path=bwrap,
        bwrap_works=works,
        bwrap_error=error,
        root=root,
        can_drop_uid=can_drop,
        python=python,
    )
    info.statements = {
        "bwrap": BWRAP_STATEMENT
        + (
            "; each tool runs under a dedicated unprivileged uid."
            if root
            else "; user namespace, no uid separation (process limits count the host user)."
        ),
        "degraded": degraded_statement(root, read_search),
    }
    return info


def _probe_bwrap(
    bwrap: str, python: str, root: bool, uid_range: tuple[int, int]
) -> tuple[bool, str, bool]:
    lease: UidLease | None = None
    workdir = tempfile.mkdtemp(prefix="insitu-probe-")
    try:
        code = "import os, sys\n"
        if root:
            lease = uid_allocator(uid_range[0], uid_range[1], uid_range[0]).acquire()
            code += (
                f"os.setgroups([]); os.setgid({lease.gid}); os.setuid({lease.uid})\n"
                "assert os.getuid() != 0\n"
            )
            os.chmod(workdir, 0o755)
        code += "import pydantic\nprint('insitu-probe-ok', os.getuid())\n"
        argv = bwrap_command(
            bwrap=bwrap,
            python=python,
            argv_tail=["-I", "-B", "-c", code],
            workdir=_real(workdir),
            ro_paths=python_paths(python),
            env=base_env(python, workdir),
            network=False,
            tmp_size_mb=16,
            as_root=root,
        )
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"bwrap could not run: {exc}", False
        if proc.returncode != 0 or "insitu-probe-ok" not in proc.stdout:
            detail = (proc.stderr or proc.stdout).strip()[-800:]
            return False, f"bwrap failed (exit {proc.returncode}): {detail}", False
        return True, "", root
    finally:
        if lease is not None:
            lease.release()
        shutil.rmtree(workdir, ignore_errors=True)


_warned = False
_warn_lock = threading.Lock()


def warn_degraded_once(statement: str) -> None:
    """Log the degraded backend's limitations once per process, loudly."""
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    logger.warning("INSITU SANDBOX IS DEGRADED — %s", statement)
