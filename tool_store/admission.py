"""Admission: turn source + tests into a verified ``ToolSpec``, or say precisely why not.

One pipeline serves every way a tool enters a library (the ToolDeveloper's new
tools, repairs, merges, ``insitu tools add``): static checks, the declared
dependencies against the store's tool environment, the schemas derived in the
sandbox, then the tool's own tests in the sandbox. Each failure is an
:class:`AdmissionError` whose message is written for the model that will fix
the code.

Secrets follow the operator's allow-list (the ``allowed_secrets`` setting,
bound to a sandbox with :func:`set_secret_policy`): a tool that declares any
other is refused, and the tool's own tests only ever see placeholders
(:func:`placeholder_secrets`), never the real values, which only real calls get.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import re
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from insitu.tool_store.contract import (
    SECRET_NAME_PATTERN,
    ContractError,
    ToolSpec,
    ToolTest,
    is_reserved_secret_name,
    validate_source,
    validate_tests,
)

if TYPE_CHECKING:
    from insitu.sandbox import Sandbox, TestReport

logger = logging.getLogger("insitu.admission")

Stage = Literal["static", "secrets", "dependencies", "describe", "tests", "harvested"]


class AdmissionError(ValueError):
    """A tool was not admitted; ``stage`` says where it failed."""

    def __init__(self, stage: Stage, message: str, name: str | None = None) -> None:
        self.stage = stage
        self.name = name
        super().__init__(message)


def secrets_from_env(names: Iterable[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the named variables that are set in the environment.

    This applies no policy: callers pass only names the operator allowed (see
    :meth:`SecretPolicy.values`).

    Args:
        names: Variable names.
        env: Where to read them (default ``os.environ``).
    """
    env = os.environ if env is None else env
    return {name: env[name] for name in names if name in env}


#: Placeholder values the tool's own tests see instead of real secrets.
PLACEHOLDER_PREFIX = "insitu-placeholder-"

#: Model providers whose keys insitu itself may hold (``<PROVIDER>_API_KEY`` and the like).
MODEL_PROVIDERS = (
    "OPENAI",
    "AZURE_OPENAI",
    "ANTHROPIC",
    "GOOGLE",
    "GEMINI",
    "VERTEX",
    "MISTRAL",
    "COHERE",
    "GROQ",
    "TOGETHER",
    "FIREWORKS",
    "DEEPSEEK",
    "XAI",
    "OPENROUTER",
    "PERPLEXITY",
    "HUGGINGFACE",
    "HUGGINGFACEHUB",
    "HF",
    "NVIDIA",
    "VOYAGE",
    "REPLICATE",
    "AWS",
    "BEDROCK",
    "LANGSMITH",
    "LANGCHAIN",
    "OLLAMA",
)
#: The suffixes of their credential variables (``OPENAI_API_KEY``, ``HF_TOKEN``...).
_CREDENTIAL_SUFFIXES = (
    "API_KEY",
    "API_TOKEN",
    "TOKEN",
    "SECRET_KEY",
    "SECRET_ACCESS_KEY",
    "ACCESS_KEY_ID",
    "SESSION_TOKEN",
    "APPLICATION_CREDENTIALS",
)
_PROVIDER_KEY = re.compile(
    rf"^(?:{'|'.join(MODEL_PROVIDERS)})_(?:[A-Z0-9_]*_)?(?:{'|'.join(_CREDENTIAL_SUFFIXES)})$"
)


def is_insitu_credential(name: str) -> bool:
    """Whether ``name`` is one of insitu's own credentials or settings.

    A model provider's key (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``,
    ``HF_TOKEN``...) or any ``INSITU_*`` variable: tools never receive these
    unless the operator names them, one by one, in ``allowed_secrets``.

    Args:
        name: An environment variable name.
    """
    return name.startswith("INSITU_") or bool(_PROVIDER_KEY.match(name))


def placeholder_secrets(names: Iterable[str]) -> dict[str, str]:
    """Return the placeholder value of every name: ``insitu-placeholder-<NAME>``.

    Admission runs a tool's own tests with these, so that code under test can
    never read (and send away) a real secret.

    Args:
        names: The secret names a tool declares.
    """
    return {name: f"{PLACEHOLDER_PREFIX}{name}" for name in names}


class SecretPolicyError(ValueError):
    """An allow-list of secrets is malformed, or a sandbox is bound to another one."""


@dataclass(frozen=True)
class SecretPolicy:
    """Which secrets tools may receive: exactly the names the operator listed.

    Attributes:
        allowed: The operator's ``allowed_secrets`` (empty: no tool gets any).
    """

    allowed: frozenset[str] = frozenset()

    @classmethod
    def of(cls, names: Iterable[str] | None) -> SecretPolicy:
        """Build a policy from the ``allowed_secrets`` setting.

        Args:
            names: Environment variable names (``None``: none).

        Raises:
            SecretPolicyError: A name that is not an upper-case variable name, or
                is configuration the sandbox sets itself (PATH, PYTHON*...).
        """
        allowed = frozenset(names or ())
        bad = sorted(n for n in allowed if not SECRET_NAME_PATTERN.match(n))
        if bad:
            raise SecretPolicyError(
                f"allowed_secrets: {', '.join(map(repr, bad))} is not an environment variable "
                "name (upper case letters, digits and _, e.g. WEATHER_API_KEY)"
            )
        reserved = sorted(n for n in allowed if is_reserved_secret_name(n))
        if reserved:
            raise SecretPolicyError(
                f"allowed_secrets: {', '.join(reserved)} is configuration the sandbox sets "
                "itself (PATH, HOME, LANG, PYTHON*, LD_*, LC_*), not a secret a tool may receive"
            )
        return cls(allowed)

    def refused(self, names: Iterable[str]) -> list[str]:
        """The names in ``names`` that are not allowed, in order."""
        return [name for name in names if name not in self.allowed]

    def refusal(self, tool: str, names: Iterable[str]) -> str | None:
        """Why tool ``tool`` may not declare ``names``, or None if it may.

        Args:
            tool: The tool's name, for the message.
            names: The secrets it declares.

        Returns:
            One paragraph naming each refused secret and the setting, or None.
        """
        refused = self.refused(names)
        if not refused:
            return None
        allowed = ", ".join(sorted(self.allowed)) or "none"
        own = [name for name in refused if is_insitu_credential(name)]
        own_text = (
            f" {', '.join(own)} {'is' if len(own) == 1 else 'are'} insitu's own credentials "
            "(a model provider's key or an INSITU_* setting), which no tool gets unless the "
            "operator names them there."
            if own
            else ""
        )
        return (
            f"tool '{tool}' declares the secret(s) {', '.join(refused)}, which the operator has "
            f"not allowed: tools receive only the secrets named in the allowed_secrets setting "
            f"(now: {allowed}).{own_text} Remove them from __TOOL_META__['secrets'] and write the "
            "tool without them (take what it needs as input)."
        )

    def values(self, names: Iterable[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The real values a call of a tool declaring ``names`` receives.

        Only allowed names that are set in ``env`` (default ``os.environ``).
        """
        return secrets_from_env([name for name in names if name in self.allowed], env)


_policies: weakref.WeakKeyDictionary[Sandbox, SecretPolicy] = weakref.WeakKeyDictionary()
_policies_lock = threading.Lock()


def set_secret_policy(sandbox: Sandbox, allowed: Iterable[str] | None) -> SecretPolicy:
    """Bind the allow-list of secrets that admissions and calls through ``sandbox`` follow.

    :func:`insitu.services.open_sandbox` binds the ``allowed_secrets`` setting to
    the sandboxes it builds, and an injected sandbox gets its first run's setting.
    A sandbox without one lets no secret through.

    Args:
        sandbox: The sandbox.
        allowed: The operator's ``allowed_secrets``.

    Returns:
        The bound policy.

    Raises:
        SecretPolicyError: A bad name, or the sandbox already follows another
            allow-list (one sandbox serves one policy, so that no run widens
            what another run's tools receive).
    """
    policy = SecretPolicy.of(allowed)
    with _policies_lock:
        bound = _policies.get(sandbox)
        if bound is not None and bound != policy:
            raise SecretPolicyError(
                "this sandbox already serves allowed_secrets="
                f"{sorted(bound.allowed)}, not {sorted(policy.allowed)}; use one sandbox per "
                "allow-list"
            )
        _policies[sandbox] = policy
    named = sorted(name for name in policy.allowed if is_insitu_credential(name))
    if named and bound is None:
        logger.warning(
            "allowed_secrets names insitu's own credentials %s: tools that declare them "
            "receive their real values",
            ", ".join(named),
        )
    return policy


def secret_policy(sandbox: Sandbox) -> SecretPolicy:
    """The allow-list bound to ``sandbox`` (none bound: no secret is allowed)."""
    with _policies_lock:
        return _policies.get(sandbox) or SecretPolicy()


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
    it serves every attempt at the same tool instead of starting a new one. It
    is opened without following a link in its place, and emptied entry by entry
    through its descriptor: root never follows a link a tool left there.

    Raises:
        OSError: ``path`` is a link or not a directory, or an entry resists.
    """
    from insitu.sandbox import backend as backends

    fd = backends.open_directory(path, create=True)
    try:
        backends.empty_directory(fd)
    finally:
        os.close(fd)


def _write_case_files(path: Path, cases: Sequence[ToolTest]) -> None:
    """Write the cases' ``files`` into the emptied test directory, each as a new file.

    ``O_CREAT | O_EXCL | O_NOFOLLOW`` through the directory's descriptor: a link
    planted after the emptying makes this fail instead of writing through it.

    Raises:
        OSError: The directory is not a plain directory, or a name is taken.
    """
    from insitu.sandbox import backend as backends

    # Two cases may carry the same file: the last one's content wins, as before.
    files = {name: content for case in cases for name, content in case.files.items()}
    fd = backends.open_directory(path)
    try:
        for file_name, content in files.items():
            # The directory was just emptied: a name that exists now was planted.
            backends.write_new_file(fd, file_name, content.encode())
    finally:
        os.close(fd)


def admit_tool(
    source: str,
    tests: Sequence[Mapping[str, Any] | ToolTest],
    *,
    sandbox: Sandbox,
    scratch_dir: Path,
    expected_name: str | None = None,
    extra_checks: Sequence[Mapping[str, Any]] = (),
    extra_workdir: Path | None = None,
    allowed_secrets: Iterable[str] | None = None,
    harvested: Sequence[ToolTest] = (),
) -> ToolSpec:
    """Verify a tool end to end and return its spec.

    The tests run in an emptied directory under ``scratch_dir`` holding only
    the cases' own ``files``, so that kept tests never depend on one task's files.
    A tool may declare only secrets the operator allowed; its tests (and the
    ``extra_checks``) see placeholder values, never the real ones.

    Args:
        source: The tool module.
        tests: Its test cases (dicts or ``ToolTest``), kept with the tool.
        sandbox: Where the module is imported and its tests run.
        scratch_dir: Where the test directory (``tests-<name>``) is kept.
        expected_name: The name it was requested under, if any.
        extra_checks: Cases that must pass too but are not kept (e.g. the call
            that made a repair necessary), run in ``extra_workdir``.
        extra_workdir: The directory of ``extra_checks`` (e.g. the episode's).
        allowed_secrets: The secrets tools may declare (default: the allow-list
            bound to ``sandbox``, see :func:`set_secret_policy`).
        harvested: Cases harvested from the real use of the tool(s) this one
            replaces (a repair's, a merge's members'): it must reproduce their
            outputs. Run like its own tests, not kept in its spec.

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
    secrets = list(meta.get("secrets", []))
    policy = secret_policy(sandbox) if allowed_secrets is None else SecretPolicy.of(allowed_secrets)
    refusal = policy.refusal(name, secrets)
    if refusal:
        raise AdmissionError("secrets", refusal, name)
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
    network = bool(meta.get("network", False))
    # Code under test never sees a real secret: it could send it away.
    placeholders = placeholder_secrets(secrets)
    try:
        report = _run_own_tests(
            source, cases, sandbox, scratch_dir / f"tests-{name}", network, placeholders
        )
    except OSError as exc:
        raise AdmissionError(
            "tests",
            f"tool '{name}': its test directory could not be prepared ({exc}); nothing was "
            "written there",
            name,
        ) from None
    if not report.passed:
        raise AdmissionError("tests", f"tool '{name}' failed its tests:\n{report.message}", name)
    if harvested:
        _check_harvested(
            source,
            harvested,
            sandbox,
            scratch_dir / f"harvested-{name}",
            network,
            placeholders,
            name,
        )
    if extra_checks:
        report = sandbox.run_tests(
            source,
            list(extra_checks),
            workdir=extra_workdir or scratch_dir,
            network=network,
            secrets=placeholders,
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


def run_cases(
    source: str, cases: Sequence[ToolTest], *, sandbox: Sandbox, workdir: Path
) -> TestReport:
    """Run test cases of a network-free, secret-free tool as admission runs its own tests.

    In ``workdir``, emptied first and holding only the cases' ``files``: the
    report says whether the cases are self-contained and reproducible
    (reflection keeps a harvested call only if it is).

    Raises:
        OSError: The directory could not be prepared.
    """
    return _run_own_tests(source, cases, sandbox, workdir, False, {})


def _check_harvested(
    source: str,
    cases: Sequence[ToolTest],
    sandbox: Sandbox,
    workdir: Path,
    network: bool,
    secrets: Mapping[str, str],
    name: str,
) -> None:
    """Refuse a tool that changes the output of a call harvested from real use.

    Raises:
        AdmissionError: Stage ``harvested``, naming each case whose output changed.
    """
    try:
        report = _run_own_tests(source, cases, sandbox, workdir, network, secrets)
    except OSError as exc:
        raise AdmissionError(
            "harvested", f"tool '{name}': its harvested cases could not be prepared ({exc})", name
        ) from None
    if report.passed:
        return
    failed = [r for r in report.results if not r.passed]
    lines = "\n".join(f"- {r.message}" for r in failed)
    raise AdmissionError(
        "harvested",
        f"tool '{name}' changes the output of {len(failed)} of the {len(cases)} call(s) "
        "harvested from its real use (the tool it replaces returned these outputs, and tasks "
        f"relied on them); keep their behaviour:\n{lines}",
        name,
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

    Raises:
        OSError: The directory could not be emptied or a case's file written
            (a link in the way is never followed).
    """

    def run() -> TestReport:
        with _directory_lock(workdir):
            try:
                _empty_directory(workdir)
                _write_case_files(workdir, cases)
                return sandbox.run_tests(
                    source,
                    [case.model_dump(exclude={"files"}) for case in cases],
                    workdir=workdir,
                    network=network,
                    secrets=secrets,
                )
            finally:
                # Best effort: the next admission empties it first anyway.
                with contextlib.suppress(OSError):
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
