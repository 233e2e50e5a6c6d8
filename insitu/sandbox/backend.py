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
import errno
import fcntl
import grp
import logging
import os
import pwd
import queue
import shutil
import site
import stat
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
from typing import Any, BinaryIO

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

    Binding it read-write (and handing it to the sandbox's group or, degraded,
    to one sandbox uid) must not expose the system, the interpreter, the tool
    environment or a whole home directory.

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


#: How the host opens a directory it works in: never through a link at its last component.
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: How the host creates a file in a sandbox directory: a new file, never through a link.
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Mode of a workdir claimed by one sandbox uid (degraded backend): its own, nobody else's.
CLAIMED_MODE = 0o700
#: The file listing the workdirs a sandbox uid was given, in the uid lock directory.
_CLAIMS_SUFFIX = ".workdirs"


def open_directory(path: Path, *, create: bool = False, mode: int = 0o755) -> int:
    """Open a directory the host writes in, refusing a symlink planted in its place.

    The parent is the host's own (a store or scratch directory) and is
    resolved; the last component, which a sandboxed tool may have replaced, is
    opened with ``O_NOFOLLOW`` relative to the parent's descriptor (and, with
    ``create``, made there with ``mkdir``), so root never follows a tool's link.

    Args:
        path: The directory.
        create: Create it (and missing parents) first.
        mode: Mode of a directory this creates.

    Returns:
        An open descriptor of the directory; the caller closes it.

    Raises:
        OSError: It is missing, or is a symlink or anything but a directory.
    """
    path = Path(path)
    parent = Path(os.path.realpath(path.parent))
    if create:
        parent.mkdir(parents=True, exist_ok=True)
    parent_fd = os.open(parent, _DIRECTORY_FLAGS)
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path.name, mode, dir_fd=parent_fd)
        try:
            return os.open(path.name, _DIRECTORY_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise OSError(
                    exc.errno,
                    f"{path} is not a plain directory (a link?); the host never follows it",
                ) from None
            raise
    finally:
        os.close(parent_fd)


def write_new_file(
    directory_fd: int, name: str, data: bytes | BinaryIO, *, replace: bool = False
) -> None:
    """Create file ``name`` in an open directory and write ``data``, never through a link.

    ``O_CREAT | O_EXCL | O_NOFOLLOW``: a name that exists (a symlink a tool planted
    included) makes this fail instead of writing wherever the link points.

    Args:
        directory_fd: The open directory (see :func:`open_directory`).
        name: A plain file name (no ``/``).
        data: The content, or a binary file to copy it from.
        replace: Remove an entry of that name first (the entry itself, never
            what a link points to).

    Raises:
        ValueError: ``name`` is not a plain file name.
        OSError: Something is in the way (``FileExistsError`` for a link planted
            between the removal and the creation).
    """
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a plain file name")
    if replace:
        try:
            if stat.S_ISDIR(os.stat(name, dir_fd=directory_fd, follow_symlinks=False).st_mode):
                shutil.rmtree(name, dir_fd=directory_fd)
            else:
                os.unlink(name, dir_fd=directory_fd)
        except FileNotFoundError:
            pass
    fd = os.open(name, _NEW_FILE_FLAGS, 0o644, dir_fd=directory_fd)
    with os.fdopen(fd, "wb") as handle:
        if isinstance(data, bytes):
            handle.write(data)
        else:
            shutil.copyfileobj(data, handle)


def empty_directory(directory_fd: int) -> None:
    """Remove everything in an open directory, following no link (the directory stays).

    Raises:
        OSError: An entry could not be removed.
    """
    with os.scandir(directory_fd) as entries:
        names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    for name, is_dir in names:
        try:
            if is_dir:
                # fd-based: a directory swapped for a link meanwhile is refused, not followed.
                shutil.rmtree(name, dir_fd=directory_fd)
            else:
                os.unlink(name, dir_fd=directory_fd)
        except FileNotFoundError:
            continue


def prepare_workdir(workdir: Path, gid: int) -> None:
    """Make ``workdir`` writable by the sandbox group (bwrap backend, as root).

    The set-gid bit makes files created inside inherit the group, and the
    runner's umask 002 keeps them group-writable, so parallel workers (each with
    its own uid) can share one workdir. Sharing a group is safe only because a
    bwrap sandbox sees no workdir but its own; the degraded backend, where every
    workdir is visible, hands each one to a single uid instead
    (:func:`claim_workdir`). The directory is changed through a descriptor
    opened without following links.

    Args:
        workdir: The directory (exists).
        gid: The sandbox group.

    Raises:
        OSError: ``workdir`` is a symlink or not a directory.
    """
    fd = open_directory(workdir)
    try:
        st = os.fstat(fd)
        wanted = (st.st_mode | 0o2070) & 0o7777
        if st.st_gid != gid:
            os.fchown(fd, -1, gid)
        if (st.st_mode & 0o7777) != wanted or st.st_gid != gid:
            os.fchmod(fd, wanted)
    finally:
        os.close(fd)


def private_gid(uid: int) -> int:
    """The group a degraded sandbox uid runs with: its own, shared with no other uid.

    Args:
        uid: A dedicated sandbox uid.

    Returns:
        The gid of the same number.

    Raises:
        RuntimeError: That gid is a real group of this host (never hand one out).
    """
    try:
        group = grp.getgrgid(uid)
    except KeyError:
        return uid
    raise RuntimeError(
        f"gid {uid} is the host group {group.gr_name!r}; choose a sandbox uid range whose "
        "numbers are no host group"
    )


def _trusted_registry(registry: Path) -> Path:
    """Return ``registry`` if only root can change it, else raise (never trust a tool's dir)."""
    st = os.lstat(registry)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(
            errno.EPERM,
            f"{registry} is not a directory only this user can write; refusing to trust it",
        )
    return registry


def _read_claims(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    except FileNotFoundError:
        return []


def _write_claims(path: Path, workdirs: Sequence[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, _NEW_FILE_FLAGS, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{w}\n" for w in workdirs))
    os.replace(tmp, path)


def _revoke(workdir: str, uid: int) -> None:
    """Take ``workdir`` back from ``uid``: root's alone (0700), so nothing in it is reachable."""
    try:
        fd = open_directory(Path(workdir))
    except OSError:
        return  # gone, or replaced by something that is not this claim any more
    try:
        st = os.fstat(fd)
        if st.st_uid == uid:  # a listed path that is no longer this uid's is left alone
            os.fchown(fd, 0, 0)
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def claim_workdir(
    workdir: Path, uid: int, gid: int, registry: Path, uid_range: tuple[int, int]
) -> None:
    """Hand ``workdir`` to one sandbox uid alone (degraded backend, as root).

    Without filesystem isolation every workdir is visible to every tool, so no
    workdir may be writable through a group several sandbox uids share. Before
    a call, its workdir is made ``uid:gid`` mode 0700 and whatever an earlier
    sandbox uid left in it is handed over too (changed entry by entry through
    directory descriptors, following no link; root's and others' files are left
    as they are). The workdir this uid was given before is taken back (root's,
    0700): a uid that serves another workdir later cannot reach it. What each uid
    was given is listed in ``registry`` (root's, beside the uid locks), written
    before anything changes, so a host that dies midway leaves nothing given out
    unlisted.

    Args:
        workdir: The call's directory (exists, resolved).
        uid: The sandbox uid that serves the call.
        gid: Its private group (:func:`private_gid`).
        registry: Root-only directory of the lists (the uid lock directory).
        uid_range: Every sandbox uid: entries owned by one of them are handed over.

    Raises:
        OSError: ``workdir`` is a symlink or not a directory, or the registry is
            not root's alone.
    """
    claims = _trusted_registry(registry) / f"{uid}{_CLAIMS_SUFFIX}"
    fd = open_directory(workdir)
    try:
        st = os.fstat(fd)
        earlier = _read_claims(claims)
        target = str(workdir)
        if earlier == [target] and st.st_uid == uid and (st.st_mode & 0o7777) == CLAIMED_MODE:
            return  # this uid's already (the fast path of every call but the first)
        _write_claims(claims, sorted({*earlier, target}))
        for other in earlier:
            if other != target:
                _revoke(other, uid)
        low, high = uid_range
        if st.st_uid != uid:
            for _dir, subdirs, files, dir_fd in os.fwalk(dir_fd=fd, follow_symlinks=False):
                for name in subdirs + files:
                    with contextlib.suppress(FileNotFoundError):
                        owner = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_uid
                        if low <= owner <= high and owner != uid:
                            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, CLAIMED_MODE)
        _write_claims(claims, [target])
    finally:
        os.close(fd)


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
    host_network: bool = False,
    seccomp_fd: int | None = None,
    info_fd: int | None = None,
) -> list[str]:
    """Build the bubblewrap command line of one sandbox process.

    Args:
        bwrap: Path of the bwrap binary.
        python: Interpreter to run inside.
        argv_tail: Arguments after the interpreter.
        workdir: The only writable host directory (bound at the same path).
        ro_paths: Host directories made visible read-only (resolved, minimal).
        env: The complete environment inside.
        network: The tool declared network access: name-resolution and TLS
            files are visible. Its network namespace is still its own (connected
            by :mod:`insitu.sandbox.netns`) unless ``host_network``.
        tmp_size_mb: Size of the private /tmp.
        as_root: We are root: no user namespace; keep only CAP_SETUID/SETGID so
            the runner can drop to its unprivileged uid.
        data_files: ``(fd, path)`` pairs: read-only files inside whose content
            bwrap reads from ``fd`` (the fds must be passed to the process); they
            replace the host's file of the same path.
        host_network: Share the host's network namespace (only with ``network``;
            the tool then reaches the host's loopback services and private networks).
        seccomp_fd: Fd from which bwrap reads the compiled seccomp filter it
            applies to the sandboxed command (see :mod:`insitu.sandbox.seccomp`).
        info_fd: Fd on which bwrap reports the sandbox's pid (JSON).

    Returns:
        The argv list.
    """
    args = [bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not (network and host_network):
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
    replaced = {path for _, path in data_files}
    for item in _ETC_FILES + (_NETWORK_ETC if network else ()):
        if os.path.exists(item) and item not in replaced:
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
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    if seccomp_fd is not None:
        # bwrap sets PR_SET_NO_NEW_PRIVS itself and loads the filter last, right
        # before running the command, so its own set-up is not filtered.
        args += ["--seccomp", str(seccomp_fd)]
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
        "runs each tool under a dedicated unprivileged uid with a private group (so it cannot "
        "write root-owned files, signal the host or exceed its process limit), and hands each "
        "call's workdir to that uid alone (mode 0700: other tools cannot reach it)"
        if root
        else "runs each tool as the host's own user (no uid separation: its process limit is "
        "the user's current count plus a margin, shared with everything else the user runs, "
        "and the tool can signal the host's processes)"
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


#: How strongly each backend isolates a tool, as recorded in outcomes, run.json and reports.
ISOLATION_LEVELS = {"bwrap": "strong", "degraded": "weak"}


def isolation_level(backend: str, *, usable: bool = True) -> str:
    """Name how strongly ``backend`` isolates a tool, in one word.

    Args:
        backend: ``bwrap`` or ``degraded``.
        usable: False when the backend cannot run here (nothing runs at all).

    Returns:
        ``strong`` (bubblewrap: own filesystem view, network and pid namespaces),
        ``weak`` (degraded: rlimits, a separate uid and a scrubbed environment,
        no filesystem or network isolation) or ``none`` (nothing can run).
    """
    if not usable:
        return "none"
    return ISOLATION_LEVELS.get(backend, "none")


def degraded_refusal(info: BackendInfo) -> str:
    """The one-line refusal of ``sandbox_backend=auto`` where bubblewrap does not work.

    Args:
        info: What the probe found.
    """
    why = info.bwrap_error or "bubblewrap does not work here"
    return (
        f"no working bubblewrap sandbox ({why}); insitu runs generated tools with weaker "
        "isolation only when told to: install bubblewrap (apt-get install bubblewrap), or set "
        "allow_degraded_sandbox=true (env INSITU_ALLOW_DEGRADED_SANDBOX=1) to accept the "
        "degraded sandbox (rlimits and a separate uid, no filesystem or network isolation)"
    )


@dataclass(frozen=True)
class SandboxChoice:
    """Which backend the settings select on this machine, and whether tools may run."""

    backend: str
    """``bwrap`` or ``degraded``."""
    isolation: str
    """``strong``, ``weak``, or ``none`` when tools will not run (see :attr:`problem`)."""
    problem: str = ""
    """Why no tool will run ('' when they will)."""


def choose_backend(wanted: str, allow_degraded: bool, info: BackendInfo) -> SandboxChoice:
    """Apply the degraded-sandbox policy to what the probe found.

    ``auto`` means bubblewrap; where it does not work, tools run in the degraded
    sandbox only with ``allow_degraded``. ``degraded`` named explicitly is the
    operator's choice and needs nothing more; ``bwrap`` named explicitly never
    falls back.

    Args:
        wanted: The ``sandbox_backend`` setting: ``auto``, ``bwrap`` or ``degraded``.
        allow_degraded: The ``allow_degraded_sandbox`` setting.
        info: What the probe found.
    """
    if wanted == "degraded":
        return SandboxChoice("degraded", isolation_level("degraded"))
    if info.bwrap_works:
        return SandboxChoice("bwrap", isolation_level("bwrap"))
    if wanted == "bwrap":
        return SandboxChoice(
            "bwrap",
            "none",
            f"sandbox_backend=bwrap, but bubblewrap cannot run here: {info.bwrap_error}",
        )
    if allow_degraded:
        return SandboxChoice("degraded", isolation_level("degraded"))
    return SandboxChoice("degraded", "none", degraded_refusal(info))


BWRAP_STATEMENT = (
    "bubblewrap sandbox: fresh pid/ipc/uts/cgroup namespaces; no network unless the tool "
    "declares it, and then by default only public addresses through its own network namespace "
    "(never the host's loopback, its own addresses or private and link-local ranges); a seccomp "
    "filter (on by default) refuses namespaces, mounts, io_uring, ptrace, eBPF, perf, the "
    "keyring and other kernel interfaces; read-only system, Python prefix and tool "
    "environment; the call's workdir is the only writable host directory, plus a private "
    "size-limited /tmp; home directories, the tool store and the project are invisible; "
    "scrubbed environment with only declared secrets; CPU, memory, file-size, open-file and "
    "process rlimits and a wall-clock timeout"
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
            else "; user namespace, no uid separation (the process limit counts the sandbox's "
            "own processes on Linux >= 5.14, none on older kernels)."
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
