"""The :class:`Sandbox`: runs tool modules in isolation, with a pool of warm workers.

Every public method returns a structured value (:class:`Outcome`,
:class:`TestReport`); nothing a tool does, and no failure of the sandbox
machinery, raises into the caller. A Sandbox is safe to use from many threads.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from insitu.sandbox import backend as backends
from insitu.sandbox import runner
from insitu.sandbox.models import ErrorKind, Outcome, SandboxSettings, TestCaseResult, TestReport
from insitu.sandbox.verdicts import Verdicts, verdict_key
from insitu.sandbox.worker import SandboxProcess, WorkerError

if TYPE_CHECKING:
    from insitu.sandbox.toolenv import ToolEnvironment

_KNOWN_CASE_KEYS = ("name", "input", "expect", "check", "expect_error")

_live_sandboxes: weakref.WeakSet[Sandbox] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for sandbox in list(_live_sandboxes):
        sandbox.close(graceful=False)


atexit.register(_close_all_at_exit)


#: Directories private to each sandbox process that every call may write.
PRIVATE_SCRATCH = ("/tmp", "/dev/shm")


class _PoolTimeout(Exception):
    pass


class _Pool:
    """Warm workers keyed by (workdir and its inode, network, python), bounded, LRU-evicted.

    A worker serves one call at a time. ``acquire`` hands out an idle worker of
    the key. If the key has no worker at all, the caller starts one (evicting
    the least recently used idle worker of another key when at the bound). If
    the key's workers are all busy, the caller waits for the first one free and
    meanwhile one more worker of the key starts in the background: a call takes
    milliseconds but a start takes a tenth of a second or more, so a burst of
    calls (a batch's episodes all calling tools at once) is served by the busy
    workers at once and grows the pool for the next burst, instead of one
    caller paying for a start.
    """

    def __init__(self, start: Any, max_workers: int, idle_timeout_s: float) -> None:
        self._start = start
        self._max = max_workers
        self._idle_timeout = idle_timeout_s
        self._cond = threading.Condition()
        self._idle: OrderedDict[int, SandboxProcess] = OrderedDict()
        self._busy: dict[int, SandboxProcess] = {}
        self._starting = 0
        self._starting_keys: Counter[tuple[Any, ...]] = Counter()
        self._closed = False

    def acquire(self, key: tuple[Any, ...], timeout_s: float) -> SandboxProcess:
        """Return a worker for ``key`` reserved for the caller.

        Raises:
            WorkerError: A new worker could not start.
            _PoolTimeout: No worker became free in time.
        """
        deadline = time.monotonic() + timeout_s
        to_close: list[SandboxProcess] = []
        try:
            with self._cond:
                while True:
                    if self._closed:
                        raise WorkerError("sandbox", "the sandbox is closed")
                    to_close.extend(self._expired())
                    for ident in reversed(self._idle):
                        worker = self._idle[ident]
                        if worker.key == key:
                            del self._idle[ident]
                            if worker.alive:
                                self._busy[ident] = worker
                                return worker
                            to_close.append(worker)
                            break
                    else:
                        total = len(self._idle) + len(self._busy) + self._starting
                        if self._starting_keys[key]:
                            pass  # a worker for this key is starting: wait for it
                        elif any(w.key == key for w in self._busy.values()):
                            if total < self._max:
                                self._starting += 1
                                self._starting_keys[key] += 1
                                threading.Thread(
                                    target=self._start_idle,
                                    args=(key,),
                                    name="insitu-sandbox-grow",
                                    daemon=True,
                                ).start()
                        elif total < self._max:
                            self._starting += 1
                            self._starting_keys[key] += 1
                            break
                        elif self._idle:
                            _, victim = self._idle.popitem(last=False)
                            to_close.append(victim)
                            self._starting += 1
                            self._starting_keys[key] += 1
                            break
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise _PoolTimeout
                        self._cond.wait(remaining)
        finally:
            for worker in to_close:
                worker.close(graceful=False)
        try:
            worker = self._start(key)
        except BaseException:
            with self._cond:
                self._starting -= 1
                self._starting_keys[key] -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            self._starting -= 1
            self._starting_keys[key] -= 1
            if self._closed:
                closed = True
            else:
                closed = False
                self._busy[id(worker)] = worker
        if closed:
            worker.close(graceful=False)
            raise WorkerError("sandbox", "the sandbox is closed")
        return worker

    def _start_idle(self, key: tuple[Any, ...]) -> None:
        """Start a worker for ``key`` and add it to the idle ones (background growth)."""
        try:
            worker: SandboxProcess | None = self._start(key)
        except BaseException:  # the waiters are served by the busy workers instead
            worker = None
        with self._cond:
            self._starting -= 1
            self._starting_keys[key] -= 1
            keep = worker is not None and not self._closed
            if keep:
                self._idle[id(worker)] = worker
            self._cond.notify_all()
        if worker is not None and not keep:
            worker.close(graceful=False)

    def _expired(self) -> list[SandboxProcess]:
        now = time.monotonic()
        old = [
            ident
            for ident, worker in self._idle.items()
            if now - worker.last_used > self._idle_timeout or not worker.alive
        ]
        return [self._idle.pop(ident) for ident in old]

    def release(self, worker: SandboxProcess, healthy: bool) -> None:
        """Return a worker after a call; an unhealthy one is closed instead."""
        with self._cond:
            self._busy.pop(id(worker), None)
            keep = healthy and not self._closed and worker.alive
            if keep:
                self._idle[id(worker)] = worker
                self._idle.move_to_end(id(worker))
            # Waiters may want this worker's key or only a free slot: wake them all.
            self._cond.notify_all()
        if not keep:
            worker.close(graceful=False)

    def close(self, graceful: bool = True) -> None:
        """Close idle workers now; busy ones are closed when released."""
        with self._cond:
            self._closed = True
            workers = list(self._idle.values())
            self._idle.clear()
            self._cond.notify_all()
        for worker in workers:
            worker.close(graceful=graceful)

    def serves(self, key: tuple[Any, ...]) -> bool:
        """Whether a worker for ``key`` exists (idle, busy or starting)."""
        with self._cond:
            return bool(self._starting_keys[key]) or any(
                w.key == key for w in [*self._idle.values(), *self._busy.values()]
            )

    @property
    def size(self) -> int:
        """Live workers (idle + busy + starting)."""
        with self._cond:
            return len(self._idle) + len(self._busy) + self._starting


class Sandbox:
    """Runs tool modules (describe, call, test) in a real sandbox.

    Attributes:
        settings: Limits and policy.
        toolenv: The tool environment whose interpreter runs the tools, if any.
        verdicts: Repeatable results (describes, admission test runs) computed
            once per key and shared; see :mod:`insitu.sandbox.verdicts`.
        backend: The backend in use: ``"bwrap"`` or ``"degraded"``.
        info: What the probe found on this machine.
    """

    def __init__(
        self,
        settings: SandboxSettings | None = None,
        *,
        toolenv: ToolEnvironment | None = None,
    ) -> None:
        """Probe the backend (once per process) and prepare the worker pool.

        Args:
            settings: Limits and policy (default: ``SandboxSettings()``).
            toolenv: Tool environment for dependencies (default: built from
                ``settings.toolenv_dir`` if set, else none).
        """
        self.settings = settings or SandboxSettings()
        if toolenv is None and self.settings.toolenv_dir:
            from insitu.sandbox.toolenv import ToolEnvironment

            toolenv = ToolEnvironment(
                Path(self.settings.toolenv_dir),
                allow=self.settings.allow_packages,
                deny=list(self.settings.deny_packages),
                installer_enabled=self.settings.install_dependencies,
                index_url=self.settings.pip_index_url,
                extra_index_urls=list(self.settings.pip_extra_index_urls),
                pip_timeout_s=self.settings.pip_timeout_s,
                only_binary=self.settings.pip_only_binary,
            )
        self.toolenv = toolenv
        self.info = backends.probe_backend(uid_range=self.settings.uid_range)
        self._unusable = ""
        wanted = self.settings.backend
        if wanted == "bwrap":
            self.backend = "bwrap"
            if not self.info.bwrap_works:
                self._unusable = (
                    f"the bwrap sandbox backend was requested but cannot run here: "
                    f"{self.info.bwrap_error}"
                )
        elif wanted == "degraded":
            self.backend = "degraded"
        else:
            self.backend = self.info.backend
        if self.backend == "degraded":
            backends.warn_degraded_once(self.info.statement("degraded"))
        self._root = backends.is_root()
        low, high = self.settings.uid_range
        self._uids = (
            backends.uid_allocator(low, high, self.settings.sandbox_gid) if self._root else None
        )
        self._pool = _Pool(
            self._start_worker, self.settings.max_workers, self.settings.idle_timeout_s
        )
        # Workers shared by a workspace root need Landlock to keep each call in its workdir.
        self._landlock = bool(self.settings.workspace_root) and runner.landlock_abi() >= 1
        self._scratch: str | None = None
        self._scratch_lock = threading.Lock()
        self._describe_busy: set[int] = set()  # numbers of the describe directories lent out
        self._describe_lock = threading.Lock()
        self._python_lock = threading.Lock()
        self._python: str | None = None
        self._ro_cache: dict[str, list[str]] = {}
        self.verdicts = Verdicts()
        self._closed = False
        _live_sandboxes.add(self)

    # -- public API ---------------------------------------------------------

    @property
    def isolation(self) -> str:
        """Human-readable statement of what this sandbox isolates and what it does not."""
        if self._unusable:
            return self._unusable
        return self.info.statement(self.backend)

    @property
    def isolation_level(self) -> str:
        """How strongly calls here are isolated: ``strong``, ``weak`` or ``none`` (see backend)."""
        return backends.isolation_level(self.backend, usable=not self._unusable)

    def describe(self, source: str, *, timeout_s: float | None = None) -> Outcome:
        """Import a tool module in the sandbox and describe it.

        Args:
            source: The tool module.
            timeout_s: Wall-clock limit (default: the settings').

        Returns:
            On success ``output`` is ``{"name", "description", "dependencies",
            "secrets", "network", "input_schema", "output_schema"}``. A
            successful description is remembered (see :meth:`verdict_key`).
        """
        try:
            key = self.verdict_key("describe", source)
        except Exception:  # no interpreter: _describe reports it as an outcome
            return self._describe(source, timeout_s)
        return self.verdicts.get_or_compute(
            key, lambda: self._describe(source, timeout_s), keep=lambda outcome: outcome.ok
        )

    def verdict_key(self, *parts: Any) -> str:
        """The key of a remembered verdict (see :attr:`verdicts`).

        Args:
            *parts: What the verdict depends on (JSON-able): the operation, the
                module, its tests...

        Returns:
            A key that also covers what every tool run here depends on: the
            interpreter, and the packages of the tool environment (the mtime of
            its site-packages changes whenever a package is added or replaced).
        """
        packages = None
        if self.toolenv is not None:
            with contextlib.suppress(OSError):
                packages = os.stat(self.toolenv.site_packages).st_mtime_ns
        return verdict_key(self.python(), packages, *parts)

    def _describe(self, source: str, timeout_s: float | None) -> Outcome:
        try:
            workdir = self._lend_describe_dir()
        except OSError as exc:
            failed = Outcome.failure(ErrorKind.SANDBOX, f"cannot create a scratch directory: {exc}")
            failed.backend, failed.isolation = self.backend, self.isolation_level
            return failed
        try:
            response = self._run(
                {"op": "describe", "source": source},
                workdir=workdir,
                network=False,
                secrets=None,
                timeout_s=timeout_s,
                warm=True,
            )
        finally:
            self._return_describe_dir(workdir)
        return response[0]

    def _lend_describe_dir(self) -> Path:
        """Lend an empty directory to one describe; give it back with :meth:`_return_describe_dir`.

        Importing a module runs it, and it may write files: its directory is
        emptied before and after, so nothing reaches the next module described
        (another episode's, under a shared root). Describes running at once get
        different numbered directories, each reused (its inode kept, so is the
        warm worker bound to it).

        Raises:
            OSError: The directory cannot be created or emptied.
        """
        shared = self._shared_root()
        # Under a shared root the warm workers that serve every call serve this too.
        base = shared / ".describe" if shared is not None else self._scratch_dir()
        with self._describe_lock:
            index = next(i for i in itertools.count() if i not in self._describe_busy)
            self._describe_busy.add(index)
        path = base / str(index)
        try:
            path.mkdir(parents=True, exist_ok=True)
            runner.empty_directory(path)
        except OSError:
            with self._describe_lock:
                self._describe_busy.discard(index)
            raise
        return path

    def _return_describe_dir(self, path: Path) -> None:
        """Empty a lent describe directory; one that cannot be emptied is never lent again."""
        try:
            runner.empty_directory(path)
        except OSError:
            return  # its number stays taken: the next describe gets a fresh directory
        with self._describe_lock:
            self._describe_busy.discard(int(path.name))

    def call(
        self,
        source: str,
        payload: dict[str, Any],
        *,
        workdir: Path,
        network: bool = False,
        secrets: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        warm: bool = True,
    ) -> Outcome:
        """Call a tool once in the sandbox.

        Args:
            source: The tool module.
            payload: The input (validated against the tool's InputModel inside).
            workdir: The call's writable directory and cwd (created if missing).
            network: Give the call network access (only for tools declaring it).
            secrets: Environment variables to set for this call only.
            timeout_s: Wall-clock limit (default: the settings').
            warm: Use a warm worker (fork per call) instead of a fresh sandbox.

        Returns:
            The outcome; never raises.
        """
        outcome, _ = self._run(
            {"op": "call", "source": source, "payload": payload},
            workdir=workdir,
            network=network,
            secrets=secrets,
            timeout_s=timeout_s,
            warm=warm,
        )
        return outcome

    def prewarm(self, workdir: Path, *, network: bool = False) -> None:
        """Start a warm worker for ``workdir`` in the background; never raises.

        A warm worker is bound to one working directory, so the first call in a
        new directory pays for starting a sandbox. Calling this as soon as the
        directory is known (e.g. while a model plans) hides that cost.
        """
        if self._closed or self._unusable:
            return

        def start() -> None:
            try:
                key, problem, call_dir = self._worker_key(Path(workdir), network)
                if problem or (call_dir is not None and self._pool.serves(key)):
                    return  # a shared worker exists: it will serve this workdir too
                worker = self._pool.acquire(key, timeout_s=0.0)
            except Exception:  # a failed prewarm only means the first call starts one
                return
            self._pool.release(worker, healthy=worker.alive)

        threading.Thread(target=start, name="insitu-sandbox-prewarm", daemon=True).start()

    def run_tests(
        self,
        source: str,
        tests: Sequence[Mapping[str, Any]],
        *,
        workdir: Path,
        network: bool = False,
        secrets: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        warm: bool = True,
    ) -> TestReport:
        """Run a tool's test cases in the sandbox, each in its own call.

        Args:
            source: The tool module.
            tests: Cases ``{"name", "input", "expect", "check", "expect_error"}``.
            workdir: Writable directory and cwd of every case.
            network: Give the calls network access.
            secrets: Environment variables for the calls.
            timeout_s: Wall-clock limit per case (default: the settings').
            warm: Use warm workers.

        Returns:
            The report; ``passed`` is false when there are no cases.
        """
        results: list[TestCaseResult] = []
        for index, raw in enumerate(tests):
            case = dict(raw) if isinstance(raw, Mapping) else {}
            name = str(case.get("name") or f"case_{index + 1}")
            case = {key: case.get(key) for key in _KNOWN_CASE_KEYS}
            case["name"] = name
            problem = _malformed(raw)
            if problem:
                message = f"test {name!r}: malformed test case: {problem}"
                malformed = Outcome.failure(ErrorKind.SANDBOX, message)
                malformed.backend, malformed.isolation = self.backend, self.isolation_level
                results.append(
                    TestCaseResult(
                        name=name,
                        passed=False,
                        message=message,
                        outcome=malformed,
                    )
                )
                continue
            outcome, test = self._run(
                {"op": "test", "source": source, "case": case},
                workdir=workdir,
                network=network,
                secrets=secrets,
                timeout_s=timeout_s,
                warm=warm,
                case=case,
            )
            passed, message = test
            results.append(
                TestCaseResult(name=name, passed=passed, message=message, outcome=outcome)
            )
        failures = [r for r in results if not r.passed]
        if not results:
            summary = "no test cases were given"
        else:
            summary = f"{len(results) - len(failures)}/{len(results)} test(s) passed."
            if failures:
                summary += "\n" + "\n".join(f"FAILED {r.message}" for r in failures)
        return TestReport(passed=bool(results) and not failures, results=results, message=summary)

    def close(self, graceful: bool = True) -> None:
        """Stop every worker and remove scratch files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._pool.close(graceful=graceful)
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
        _live_sandboxes.discard(self)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def worker_count(self) -> int:
        """Number of live warm workers."""
        return self._pool.size

    # -- internals -------------------------------------------------------------

    def _scratch_dir(self) -> Path:
        with self._scratch_lock:
            if self._scratch is None:
                self._scratch = tempfile.mkdtemp(prefix="insitu-sandbox-")
            return Path(self._scratch)

    def python(self) -> str:
        """Return the interpreter the tools run with (creating the tool environment)."""
        with self._python_lock:
            if self._python is None:
                if self.settings.python:
                    self._python = self.settings.python
                elif self.toolenv is not None:
                    self._python = str(self.toolenv.create())
                else:
                    self._python = sys.executable
            return self._python

    def _ro_paths(self, python: str) -> list[str]:
        # Computed once per interpreter: resolving them costs milliseconds.
        cached = self._ro_cache.get(python)
        if cached is None:
            paths = backends.python_paths(python)
            if self.toolenv is not None:
                paths.append(str(self.toolenv.root))
                paths.extend(self.toolenv.host_site_dirs())
            paths.extend(self.settings.extra_ro_paths)
            cached = self._ro_cache[python] = backends.minimal_dirs(paths)
        return cached

    def _run(
        self,
        request: dict[str, Any],
        *,
        workdir: Path,
        network: bool,
        secrets: Mapping[str, str] | None,
        timeout_s: float | None,
        warm: bool,
        case: dict[str, Any] | None = None,
    ) -> tuple[Outcome, tuple[bool, str]]:
        """Run one request; map every failure onto an outcome (and a test verdict)."""
        started = time.monotonic()

        def fail(kind: ErrorKind, message: str) -> tuple[Outcome, tuple[bool, str]]:
            outcome = Outcome.failure(kind, message, (time.monotonic() - started) * 1000.0)
            outcome.backend, outcome.isolation = self.backend, self.isolation_level
            verdict = runner.verdict(case, outcome.model_dump(mode="json")) if case else (False, "")
            return outcome, verdict

        try:
            if self._closed:
                return fail(ErrorKind.SANDBOX, "the sandbox is closed")
            if self._unusable:
                return fail(ErrorKind.SANDBOX, self._unusable)
            timeout = float(timeout_s if timeout_s is not None else self.settings.timeout_s)
            key, problem, call_dir = self._worker_key(workdir, network)
            if problem:
                return fail(ErrorKind.SANDBOX, problem)
            request = dict(request)
            if call_dir is not None:
                request["workdir"] = call_dir
            request.update(
                timeout_s=timeout,
                limits=self.settings.limits(timeout),
                output_bytes=self.settings.output_bytes,
                result_bytes=self.settings.result_bytes,
                secrets={str(k): str(v) for k, v in (secrets or {}).items()},
            )
            response = self._exchange(key, request, timeout, warm)
        except WorkerError as exc:
            kind = (
                ErrorKind(exc.kind)
                if exc.kind in ErrorKind.__members__.values()
                else ErrorKind.SANDBOX
            )
            message = exc.message
            if kind is ErrorKind.CRASH:
                message = (
                    f"the sandbox worker died during the call ({message}); the tool probably "
                    "killed its parent process or every process of its uid"
                )
            elif kind is ErrorKind.TIMEOUT:
                message = (
                    f"the call exceeded the wall-clock limit and the sandbox did not answer "
                    f"({message}); it was killed"
                )
            return fail(kind, message)
        except _PoolTimeout:
            return fail(
                ErrorKind.SANDBOX,
                f"all {self.settings.max_workers} sandbox workers stayed busy for "
                f"{self.settings.queue_timeout_s:g} s",
            )
        except Exception as exc:  # our own bug or environment failure: still an outcome
            return fail(ErrorKind.SANDBOX, f"sandbox failure: {type(exc).__name__}: {exc}")
        try:
            data = dict(response.get("outcome") or {})
            data["duration_ms"] = (time.monotonic() - started) * 1000.0
            data.update(backend=self.backend, isolation=self.isolation_level)
            outcome = Outcome.model_validate(data)
        except Exception as exc:
            return fail(ErrorKind.SANDBOX, f"the sandbox returned an unreadable outcome: {exc}")
        test = response.get("test") or {}
        verdict = (bool(test.get("passed")), str(test.get("message", "")))
        return outcome, verdict

    def _worker_key(self, workdir: Path, network: bool) -> tuple[tuple[Any, ...], str, str | None]:
        """Prepare ``workdir`` and return the key of the workers that may serve it.

        Returns:
            (key, problem, call_dir): a non-empty ``problem`` says why the
            directory cannot be used; ``call_dir`` is set when the worker is
            shared by the workspace root and the call must confine itself to it.
        """
        if network and self.backend == "bwrap" and not self.settings.shared_host_network:
            from insitu.sandbox import netns

            # Fail before starting anything, and never fall back to the host's network.
            _, missing = netns.find_helper()
            if missing:
                return (), missing, None
        python = self.python()
        workdir = Path(os.path.realpath(os.fspath(workdir)))
        problem = backends.check_workdir(workdir, self._ro_paths(python))
        if problem:
            return (), problem, None
        workdir.mkdir(parents=True, exist_ok=True)
        # Degraded: no shared group; each call's uid gets the workdir alone (_hand_workdir_to).
        if self._root and self.backend == "bwrap":
            backends.prepare_workdir(workdir, self.settings.sandbox_gid)
        bound, call_dir = workdir, None
        root = self._shared_root()
        if root is not None and workdir != root and workdir.is_relative_to(root):
            bound, call_dir = root, str(workdir)
        # The inode is part of the key: a worker bound to a since-deleted
        # directory of the same name must not serve the new one.
        st = os.stat(bound)
        return (str(bound), st.st_dev, st.st_ino, bool(network), python), "", call_dir

    @functools.cached_property
    def _confinable_root(self) -> Path | None:
        """The workspace root warm workers may share (decided once per sandbox)."""
        if not self.settings.workspace_root or self.backend != "bwrap" or not self._landlock:
            return None
        root = Path(os.path.realpath(self.settings.workspace_root))
        if backends.check_workdir(root, self._ro_paths(self.python())):
            return None
        # Calls may write to the private /tmp and /dev/shm; Landlock allows whole
        # subtrees, so a root beneath them could not be confined: no sharing then.
        if any(root.is_relative_to(scratch) for scratch in PRIVATE_SCRATCH):
            return None
        return root

    def _shared_root(self) -> Path | None:
        """The workspace root that warm workers share, created and made traversable."""
        root = self._confinable_root
        if root is None:
            return None
        root.mkdir(parents=True, exist_ok=True)
        if self._root:
            backends.prepare_workdir(root, self.settings.sandbox_gid)
        return root

    def _exchange(
        self, key: tuple[Any, ...], request: dict[str, Any], timeout: float, warm: bool
    ) -> dict[str, Any]:
        host_timeout = timeout + self.settings.grace_s
        if not warm:
            worker = self._start_worker(key, oneshot=True)
            try:
                self._hand_workdir_to(worker)
                return worker.request(request, host_timeout)
            finally:
                # The answer is in; tearing the sandbox down need not delay it.
                threading.Thread(
                    target=worker.close, name="insitu-sandbox-close", daemon=True
                ).start()
        # A worker found dead before the request was sent is replaced silently;
        # once the request is in, a death is the call's outcome (crash).
        for attempt in range(2):
            worker = self._pool.acquire(key, self.settings.queue_timeout_s)
            if not worker.alive and attempt == 0:
                self._pool.release(worker, healthy=False)
                continue
            healthy = False
            try:
                self._hand_workdir_to(worker)
                response = worker.request(request, host_timeout)
                healthy = True
                return response
            finally:
                self._pool.release(worker, healthy=healthy)
        raise WorkerError("sandbox", "could not get a live sandbox worker")

    def _hand_workdir_to(self, worker: SandboxProcess) -> None:
        """Degraded backend as root: make the call's workdir its uid's alone (claim_workdir).

        Raises:
            WorkerError: The workdir could not be handed over (a link, a foreign registry).
        """
        if self.backend != "degraded" or worker.lease is None or self._uids is None:
            return
        uid = worker.lease.uid
        try:
            backends.claim_workdir(
                Path(worker.key[0]),
                uid,
                backends.private_gid(uid),
                self._uids.lock_dir,
                self.settings.uid_range,
            )
        except (OSError, RuntimeError) as exc:
            raise WorkerError(
                "sandbox", f"cannot hand the workdir to its sandbox uid: {exc}"
            ) from None

    def _start_worker(self, key: tuple[Any, ...], oneshot: bool = False) -> SandboxProcess:
        from insitu.sandbox import netns, seccomp

        workdir, _dev, _ino, network, python = key
        lease = self._uids.acquire() if self._uids is not None else None
        pass_fds: list[int] = []
        data_files: list[tuple[int, str]] = []
        attachment: netns.NetworkAttachment | None = None
        try:
            env = backends.base_env(python, workdir)
            ro_paths = self._ro_paths(python)
            config: dict[str, Any] = {"env": env, "oneshot": oneshot, "pdeathsig": True}
            if self.backend == "bwrap":
                # Its own pid namespace and scratch: the runner kills every process
                # it sees and empties the scratch after each call.
                config.update(pid_namespace=True, private_scratch=list(PRIVATE_SCRATCH))
            denied = set(self.settings.deny_packages)
            denied |= self.toolenv.deny if self.toolenv is not None else set()
            if denied:  # refused at import time too (the static check is only a first line)
                config["denied_packages"] = sorted(denied)
            if lease is not None:
                # Degraded: a private group, so no directory that a group grants reaches it.
                degraded = self.backend == "degraded"
                gid = backends.private_gid(lease.uid) if degraded else lease.gid
                config.update(uid=lease.uid, gid=gid)
            if self.backend == "degraded" and lease is not None:
                # The workdir becomes the uid's own before each call; its parents must be reachable.
                reached = [*ro_paths, os.path.dirname(workdir)]
                config["keep_read_search"] = backends.needs_read_search(reached)
            tail = ["-I", "-B", "-c", backends.runner_source(), "serve", json.dumps(config)]
            if self.backend == "bwrap":
                uid, gid = (lease.uid, lease.gid) if lease else (os.getuid(), os.getgid())
                files = backends.account_files(uid, gid, workdir)
                if network and not self.settings.shared_host_network:
                    try:
                        attachment = netns.prepare(
                            self.settings.network_allow,
                            as_root=self._root,
                            timeout_s=self.settings.startup_timeout_s,
                        )
                    except netns.NetworkSetupError as exc:
                        raise WorkerError("sandbox", str(exc)) from None
                    pass_fds.extend(attachment.sandbox_fds)
                    files.update(attachment.network.files)
                for path, text in files.items():
                    read_end, write_end = os.pipe()
                    os.write(write_end, text.encode())  # tiny: fits in the pipe buffer
                    os.close(write_end)
                    pass_fds.append(read_end)
                    data_files.append((read_end, path))
                seccomp_fd = None
                if self.settings.seccomp and seccomp.supported():
                    seccomp_fd = seccomp.filter_pipe()
                    pass_fds.append(seccomp_fd)
                elif self.settings.seccomp:
                    seccomp.warn_unsupported_once()
                argv = backends.bwrap_command(
                    bwrap=self.info.bwrap_path or "bwrap",
                    python=python,
                    argv_tail=tail,
                    workdir=workdir,
                    ro_paths=ro_paths,
                    env=env,
                    network=network,
                    tmp_size_mb=self.settings.tmp_size_mb,
                    as_root=self._root,
                    data_files=data_files,
                    host_network=self.settings.shared_host_network,
                    seccomp_fd=seccomp_fd,
                    info_fd=attachment.info_fd if attachment is not None else None,
                )
                popen_env: dict[str, str] | None = {}
            else:
                argv = [python, *tail]
                popen_env = env
            # Text re-encoding can grow captured bytes (replacement characters, JSON escapes).
            max_frame = 16 * self.settings.output_bytes + 2 * self.settings.result_bytes + (4 << 20)
            if attachment is not None:
                # Waits for bwrap's report; the sandbox's Python warms up meanwhile.
                attachment.start()
            worker = SandboxProcess(
                argv,
                pass_fds=pass_fds,
                env=popen_env,
                cwd=workdir,
                lease=lease,
                key=key,
                backend=self.backend,
                startup_timeout_s=self.settings.startup_timeout_s,
                max_frame_bytes=max_frame,
            )
            if attachment is not None:
                try:
                    attachment.finish()
                except netns.NetworkSetupError as exc:
                    # No request has reached it yet: the tool never ran without its walls.
                    worker.close(graceful=False)
                    raise WorkerError("sandbox", str(exc)) from None
            return worker
        except BaseException:
            if attachment is not None:
                attachment.abandon()
            if lease is not None and lease.fd >= 0:
                lease.release()
            raise
        finally:
            for fd in pass_fds:
                os.close(fd)


def _malformed(case: Any) -> str:
    if not isinstance(case, Mapping):
        return f"a test case must be an object, got {type(case).__name__}"
    if not isinstance(case.get("input"), dict):
        return "'input' must be an object with the tool's arguments"
    if case.get("expect") is not None and not isinstance(case.get("expect"), dict):
        return "'expect' must be an object (output field -> value) or null"
    if case.get("check") is not None and not isinstance(case.get("check"), str):
        return "'check' must be a Python expression string or null"
    return ""
