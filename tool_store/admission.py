"""Admission: turn source + tests into a verified ``ToolSpec``, or say precisely why not.

One pipeline serves every way a tool enters a library (the ToolDeveloper's new
tools, repairs, merges, ``insitu tools add``): static checks, the declared
dependencies against the store's tool environment, the schemas derived in the
sandbox, then the tool's own tests in the sandbox. Each failure is an
:class:`AdmissionError` whose message is written for the model that will fix
the code.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from insitu.tool_store.contract import (
    ContractError,
    ToolSpec,
    ToolTest,
    validate_source,
    validate_tests,
)

if TYPE_CHECKING:
    from insitu.sandbox import Sandbox, TestReport

Stage = Literal["static", "dependencies", "describe", "tests"]


class AdmissionError(ValueError):
    """A tool was not admitted; ``stage`` says where it failed."""

    def __init__(self, stage: Stage, message: str, name: str | None = None) -> None:
        self.stage = stage
        self.name = name
        super().__init__(message)


def secrets_from_env(names: Iterable[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the declared secrets that are set in the environment.

    Only these variables ever reach the sandbox; undeclared ones never do.

    Args:
        names: The secret names a tool declares.
        env: Where to read them (default ``os.environ``).
    """
    env = os.environ if env is None else env
    return {name: env[name] for name in names if name in env}


_directory_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


@contextmanager
def _directory_lock(path: Path) -> Iterator[None]:
    """Serialise admissions that share a test directory (same tool, same scratch)."""
    with _locks_guard:
        lock = _directory_locks.setdefault(path, threading.Lock())
    with lock:
        yield


def _empty_directory(path: Path) -> None:
    """Create ``path`` or remove everything in it, keeping the directory itself.

    The directory (its inode) is kept so that the sandbox's warm worker bound to
    it serves every attempt at the same tool instead of starting a new one.
    """
    path.mkdir(parents=True, exist_ok=True)
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def admit_tool(
    source: str,
    tests: Sequence[Mapping[str, Any] | ToolTest],
    *,
    sandbox: Sandbox,
    scratch_dir: Path,
    expected_name: str | None = None,
    extra_checks: Sequence[Mapping[str, Any]] = (),
    extra_workdir: Path | None = None,
) -> ToolSpec:
    """Verify a tool end to end and return its spec.

    The tests run in an emptied directory under ``scratch_dir`` holding only
    the cases' own ``files``, so that kept tests never depend on one task's files.

    Args:
        source: The tool module.
        tests: Its test cases (dicts or ``ToolTest``), kept with the tool.
        sandbox: Where the module is imported and its tests run.
        scratch_dir: Where the test directory (``tests-<name>``) is kept.
        expected_name: The name it was requested under, if any.
        extra_checks: Cases that must pass too but are not kept (e.g. the call
            that made a repair necessary), run in ``extra_workdir``.
        extra_workdir: The directory of ``extra_checks`` (e.g. the episode's).

    Returns:
        The spec, with schemas derived from the module.

    Raises:
        AdmissionError: At the first failing stage, with a model-readable reason.
    """
    try:
        info = validate_source(source, expected_name=expected_name)
        cases = validate_tests(tests)
    except ContractError as exc:
        raise AdmissionError("static", str(exc), exc.name or expected_name) from None
    meta = info.meta
    name = meta["name"]
    dependencies = list(meta.get("dependencies", []))
    if dependencies and sandbox.toolenv is not None:
        report = sandbox.toolenv.ensure(dependencies)
        if not report.ok:
            raise AdmissionError(
                "dependencies",
                f"tool '{name}' cannot get its dependencies: {report.reason}. Use the standard "
                "library or other packages instead.",
                name,
            )
    described = sandbox.describe(source)
    if not described.ok:
        detail = f"\n{described.traceback}" if described.traceback else ""
        raise AdmissionError(
            "describe",
            f"tool '{name}' could not be imported in the sandbox ({described.kind}): "
            f"{described.message}{detail}",
            name,
        )
    secrets = list(meta.get("secrets", []))
    network = bool(meta.get("network", False))
    report = _run_own_tests(
        source, cases, sandbox, scratch_dir / f"tests-{name}", network, secrets_from_env(secrets)
    )
    if not report.passed:
        raise AdmissionError("tests", f"tool '{name}' failed its tests:\n{report.message}", name)
    if extra_checks:
        report = sandbox.run_tests(
            source,
            list(extra_checks),
            workdir=extra_workdir or scratch_dir,
            network=network,
            secrets=secrets_from_env(secrets),
        )
        if not report.passed:
            raise AdmissionError(
                "tests", f"tool '{name}' still fails the call it must fix:\n{report.message}", name
            )
    return ToolSpec(
        name=name,
        description=meta["description"].strip(),
        source=source,
        # Copies: the description may be a remembered one, shared by every admission of
        # this module (see Sandbox.verdicts), and a spec's schemas are its own.
        input_schema=copy.deepcopy(described.output["input_schema"]),
        output_schema=copy.deepcopy(described.output["output_schema"]),
        dependencies=dependencies,
        secrets=secrets,
        network=network,
        tests=cases,
    )


def _run_own_tests(
    source: str,
    cases: Sequence[ToolTest],
    sandbox: Sandbox,
    workdir: Path,
    network: bool,
    secrets: Mapping[str, str],
) -> TestReport:
    """Run a tool's own tests in ``workdir``, emptied and holding only the cases' files.

    As the directory holds nothing else, the report depends only on the source,
    the cases, the secrets and the interpreter: a passing report is remembered
    in ``sandbox.verdicts`` and identical admissions (the same tool built by
    several episodes of a batch) share one run. Tools with network access are
    always run, as their results may depend on the world.
    """

    def run() -> TestReport:
        with _directory_lock(workdir):
            _empty_directory(workdir)
            try:
                for case in cases:
                    for file_name, content in case.files.items():
                        (workdir / file_name).write_text(content)
                return sandbox.run_tests(
                    source,
                    [case.model_dump(exclude={"files"}) for case in cases],
                    workdir=workdir,
                    network=network,
                    secrets=secrets,
                )
            finally:
                _empty_directory(workdir)

    if network:
        return run()
    key = sandbox.verdict_key(
        "own tests",
        source,
        [case.model_dump(mode="json") for case in cases],
        {name: hashlib.sha256(value.encode()).hexdigest() for name, value in secrets.items()},
    )
    return sandbox.verdicts.get_or_compute(key, run, keep=lambda report: report.passed)
