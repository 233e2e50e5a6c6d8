"""Data types of the sandbox: error kinds, outcomes, test reports and settings.

Every sandbox operation returns one of these values; no exception from tool code
or from the sandbox machinery ever escapes into the caller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

BACKEND_ENV = "INSITU_SANDBOX_BACKEND"
BACKENDS = ("auto", "bwrap", "degraded")


class ErrorKind(StrEnum):
    """How a sandboxed call ended."""

    OK = "ok"
    TIMEOUT = "timeout"  # wall-clock or CPU-time limit
    MEMORY = "memory"  # MemoryError or killed at the address-space limit
    CRASH = "crash"  # signal death, os._exit, worker death
    EXCEPTION = "exception"  # the tool raised
    INVALID_INPUT = "invalid_input"  # the payload failed InputModel validation
    INVALID_OUTPUT = "invalid_output"  # the return value failed OutputModel validation
    DEPENDENCY = "dependency"  # an imported module is not installed
    SANDBOX = "sandbox"  # our own infrastructure failed


class Outcome(BaseModel):
    """The structured result of one sandboxed operation."""

    ok: bool = Field(description="Whether the call succeeded.")
    kind: ErrorKind = Field(description="How the call ended (``ok`` on success).")
    message: str = Field(default="", description="LLM-readable explanation of a failure.")
    traceback: str = Field(
        default="", description="Traceback trimmed to the tool's own frames, if it raised."
    )
    stdout: str = Field(default="", description="Captured stdout, capped with a visible marker.")
    stderr: str = Field(default="", description="Captured stderr, capped with a visible marker.")
    output: Any = Field(
        default=None,
        description="On success: the JSON-able output dict (for describe: the description).",
    )
    duration_ms: float = Field(default=0.0, description="Wall-clock time of the operation.")
    backend: str = Field(
        default="", description="The sandbox backend it ran in: 'bwrap' or 'degraded'."
    )
    isolation: str = Field(
        default="",
        description="How strongly it was isolated: 'strong' (bwrap), 'weak' (degraded) or "
        "'none' (the backend cannot run here).",
    )

    @classmethod
    def failure(cls, kind: ErrorKind, message: str, duration_ms: float = 0.0) -> Outcome:
        """Build a failed outcome.

        Args:
            kind: The error kind.
            message: What went wrong.
            duration_ms: Time spent.

        Returns:
            The outcome.
        """
        return cls(ok=False, kind=kind, message=message, duration_ms=duration_ms)


class TestCaseResult(BaseModel):
    """The verdict on one test case of a tool."""

    __test__ = False  # not a pytest test class

    name: str = Field(description="The test case's name.")
    passed: bool = Field(description="Whether the case passed.")
    message: str = Field(description="Why it passed or failed, LLM-readable.")
    outcome: Outcome = Field(description="The outcome of the call the case made.")


class TestReport(BaseModel):
    """The verdict on all test cases of a tool."""

    __test__ = False  # not a pytest test class

    passed: bool = Field(description="Whether every case passed (false for no cases).")
    results: list[TestCaseResult] = Field(description="One result per case, in order.")
    message: str = Field(description="Summary: counts, then each failure's message.")


def _env_backend() -> str:
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    return value


@dataclass(kw_only=True)
class SandboxSettings:
    """Limits and policy of a :class:`~insitu.sandbox.Sandbox`.

    Every field has a default that is safe for running model-written code.
    """

    backend: str = field(
        default_factory=_env_backend,
        metadata={
            "description": "'auto' (bwrap if it works here, else degraded), 'bwrap' or "
            "'degraded'; defaults to env INSITU_SANDBOX_BACKEND, else 'auto'."
        },
    )
    timeout_s: float = field(
        default=10.0, metadata={"description": "Wall-clock limit of one call, in seconds."}
    )
    cpu_s: float | None = field(
        default=None,
        metadata={
            "description": "CPU-time limit of one call in seconds (None: the call's timeout)."
        },
    )
    memory_mb: int = field(
        default=1024, metadata={"description": "Address-space limit of one call, in MiB."}
    )
    file_size_mb: int = field(
        default=64, metadata={"description": "Largest file a call may write, in MiB."}
    )
    open_files: int = field(
        default=256, metadata={"description": "Open file descriptors a call may hold."}
    )
    processes: int = field(
        default=64,
        metadata={"description": "Processes and threads of the sandbox uid (RLIMIT_NPROC)."},
    )
    output_bytes: int = field(
        default=65536,
        metadata={"description": "Bytes of stdout and of stderr kept per call; the rest is cut."},
    )
    result_bytes: int = field(
        default=16 << 20,
        metadata={"description": "Largest JSON result a call may return, in bytes."},
    )
    tmp_size_mb: int = field(
        default=256, metadata={"description": "Size of the private /tmp (bwrap backend), in MiB."}
    )
    uid_range: tuple[int, int] = field(
        default=(61000, 61999),
        metadata={
            "description": "Inclusive range of unprivileged uids; each live worker gets its own "
            "(only used when running as root)."
        },
    )
    gid: int | None = field(
        default=None,
        metadata={
            "description": "Group of every sandbox uid, owner group of workdirs "
            "(None: the first uid of uid_range)."
        },
    )
    python: str | None = field(
        default=None,
        metadata={
            "description": "Interpreter run inside the sandbox (None: the tool environment's "
            "python, else this process's)."
        },
    )
    workspace_root: str | None = field(
        default=None,
        metadata={
            "description": "A directory whose subdirectories are call workdirs. With bubblewrap "
            "and Landlock, warm workers bind it once and confine each call's writes to its own "
            "workdir, so one worker serves every workdir under it (None: one worker per workdir)."
        },
    )
    max_workers: int = field(
        default=8, metadata={"description": "Upper bound on live warm workers (LRU-evicted)."}
    )
    idle_timeout_s: float = field(
        default=300.0, metadata={"description": "Idle warm workers older than this are closed."}
    )
    startup_timeout_s: float = field(
        default=60.0, metadata={"description": "Time a new sandbox process has to become ready."}
    )
    queue_timeout_s: float = field(
        default=600.0,
        metadata={"description": "Longest wait for a free worker when all are busy."},
    )
    grace_s: float = field(
        default=5.0,
        metadata={
            "description": "Host-side margin over the call timeout before the whole sandbox is "
            "killed (the in-sandbox limit normally fires first)."
        },
    )
    extra_ro_paths: list[str] = field(
        default_factory=list,
        metadata={"description": "Extra host paths visible read-only inside (bwrap backend)."},
    )
    toolenv_dir: str | None = field(
        default=None,
        metadata={
            "description": "Directory of a tool environment to create when no ToolEnvironment "
            "is passed to the Sandbox (None: no tool environment)."
        },
    )
    allow_packages: list[str] | None = field(
        default=None,
        metadata={"description": "If set, the only PyPI packages tools may depend on."},
    )
    deny_packages: list[str] = field(
        default_factory=list,
        metadata={"description": "PyPI packages tools may never depend on (wins over allow)."},
    )
    install_dependencies: bool = field(
        default=True,
        metadata={"description": "Install missing dependencies into the tool environment."},
    )
    pip_index_url: str | None = field(
        default=None, metadata={"description": "pip --index-url (None: pip's configuration)."}
    )
    pip_extra_index_urls: list[str] = field(
        default_factory=list, metadata={"description": "pip --extra-index-url values."}
    )
    pip_timeout_s: float = field(
        default=300.0, metadata={"description": "Time limit of one pip install, in seconds."}
    )
    pip_only_binary: bool = field(
        default=True,
        metadata={
            "description": "Install wheels only, so no package build code ever runs on the host."
        },
    )
    seccomp: bool = field(
        default=True,
        metadata={
            "description": "Apply the system-call filter of insitu.sandbox.seccomp to every "
            "bwrap sandbox (no namespaces, mounts, io_uring, ptrace, eBPF, keyring...). Turn it "
            "off only to measure its cost or on a kernel without seccomp."
        },
    )
    shared_host_network: bool = field(
        default=False,
        metadata={
            "description": "Give tools that declare network access the host's own network "
            "namespace (the behaviour before network isolation: they then reach the host's "
            "loopback services and private networks). By default they get their own namespace "
            "connected by slirp4netns, with public destinations only."
        },
    )
    network_allow: list[str] | None = field(
        default=None,
        metadata={
            "description": "If set, the only hosts (names or IPv4 addresses, resolved on the "
            "host when a worker starts) that network-declaring tools may reach; they get no DNS "
            "then, the names are in their /etc/hosts. Private and host addresses stay refused."
        },
    )

    def __post_init__(self) -> None:
        """Validate the fields that would otherwise fail late and obscurely."""
        self.backend = (self.backend or "auto").strip().lower()
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        low, high = self.uid_range
        if not 0 < low <= high:
            raise ValueError(
                f"uid_range must be (low, high) with 0 < low <= high, got {self.uid_range}"
            )
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if self.max_workers < 1:
            raise ValueError("max_workers must be at least 1")

    @property
    def sandbox_gid(self) -> int:
        """The group every sandbox uid runs with."""
        return self.gid if self.gid is not None else self.uid_range[0]

    def limits(self, timeout_s: float) -> dict[str, Any]:
        """Return the per-call resource limits sent into the sandbox.

        Args:
            timeout_s: The call's wall-clock limit.

        Returns:
            A JSON-able dict understood by the runner.
        """
        return {
            "cpu_s": self.cpu_s if self.cpu_s is not None else timeout_s,
            "memory_mb": self.memory_mb,
            "file_size_mb": self.file_size_mb,
            "open_files": self.open_files,
            "processes": self.processes,
        }
