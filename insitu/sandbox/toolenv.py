"""The tool environment: a virtualenv owned by the tool store, for tools' dependencies.

Tools never install into the user's environment. The store keeps a venv
(``<store>/toolenv``) created with ``--without-pip`` whose site-packages ends with
a ``.pth`` file listing the host interpreter's site directories, so everything
the host has (pydantic above all) is importable there too, *after* the venv's
own packages. Missing requirements are installed into the venv by the host's
pip, serialized across processes by a file lock.

Installing is deliberately conservative:

* ``--prefix <venv>`` with the host interpreter (never the venv's, whose
  site-packages may hold ``.pth`` files from earlier installs), so no code from
  the tool environment runs on the host;
* wheels only by default, so no package's build code runs on the host;
* a constraints file pins every distribution the host has to its version, so an
  install can add packages but never replace one of the host's (which would
  also shadow the pydantic the sandbox runner relies on): a conflict fails with
  a clear reason instead.
"""

from __future__ import annotations

import importlib.metadata as metadata
import logging
import os
import site
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path

from filelock import FileLock, Timeout
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, Field

logger = logging.getLogger("insitu.sandbox")

_HOST_PTH = "_insitu_host_site.pth"
#: What the tool contract itself provides; never subject to the allow list.
CONTRACT_PACKAGES = frozenset({"pydantic", "pydantic-core", "typing-extensions", "annotated-types"})


class DependencyReport(BaseModel):
    """What :meth:`ToolEnvironment.ensure` found and did."""

    ok: bool = Field(description="Every requirement is satisfied now.")
    installed: list[str] = Field(default_factory=list, description="Requirements installed now.")
    present: list[str] = Field(
        default_factory=list, description="Requirements that were already satisfied."
    )
    missing: list[str] = Field(
        default_factory=list, description="Requirements still unsatisfied (when not ok)."
    )
    rejected: list[str] = Field(
        default_factory=list, description="Requirements refused by the allow/deny policy."
    )
    reason: str = Field(default="", description="Why not ok, in a sentence a model can act on.")


class ToolEnvironment:
    """A venv for tools' third-party dependencies, owned by the tool store.

    Attributes:
        root: The venv directory.
        allow: If not None, the only distributions tools may depend on.
        deny: Distributions tools may never depend on (wins over ``allow``).
        installer_enabled: Whether missing requirements may be installed.
    """

    def __init__(
        self,
        root: Path,
        allow: Sequence[str] | None = None,
        deny: Sequence[str] = (),
        installer_enabled: bool = True,
        *,
        base_python: str | None = None,
        index_url: str | None = None,
        extra_index_urls: Sequence[str] = (),
        pip_timeout_s: float = 300.0,
        only_binary: bool = True,
        lock_timeout_s: float = 900.0,
    ) -> None:
        """Describe the environment; nothing is created until it is needed.

        Args:
            root: Directory of the venv (e.g. ``<store>/toolenv``).
            allow: Allowed distribution names (None: any not denied).
            deny: Denied distribution names.
            installer_enabled: Allow installing missing requirements.
            base_python: Interpreter the venv is based on (default: this one).
            index_url: pip ``--index-url`` (default: pip's configuration).
            extra_index_urls: pip ``--extra-index-url`` values.
            pip_timeout_s: Time limit of one pip run.
            only_binary: Install wheels only (no build code runs on the host).
            lock_timeout_s: Longest wait for another process's install.
        """
        self.root = Path(os.path.abspath(root))
        self.allow = None if allow is None else {canonicalize_name(n) for n in allow}
        self.deny = {canonicalize_name(n) for n in deny}
        self.installer_enabled = installer_enabled
        self.base_python = base_python or sys.executable
        self.index_url = index_url
        self.extra_index_urls = list(extra_index_urls)
        self.pip_timeout_s = pip_timeout_s
        self.only_binary = only_binary
        self.lock_timeout_s = lock_timeout_s

    # -- layout ----------------------------------------------------------------

    @property
    def python(self) -> Path:
        """The venv's interpreter (what sandboxed tools run with)."""
        return self.root / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        """The venv's own site-packages directory."""
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        return self.root / "lib" / version / "site-packages"

    @staticmethod
    def host_site_dirs() -> list[str]:
        """The host interpreter's site directories, appended to the venv's path."""
        dirs: list[str] = []
        dirs.extend(site.getsitepackages())
        paths = sysconfig.get_paths()
        dirs.extend(p for p in (paths.get("purelib"), paths.get("platlib")) if p)
        seen: list[str] = []
        for directory in dirs:
            if os.path.isdir(directory) and directory not in seen:
                seen.append(directory)
        return seen

    def _lock(self) -> FileLock:
        self.root.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(
            str(self.root.parent / f".{self.root.name}.lock"), timeout=self.lock_timeout_s
        )

    def exists(self) -> bool:
        """Whether the venv has been created."""
        return self.python.exists() and (self.site_packages / _HOST_PTH).exists()

    def create(self) -> Path:
        """Create the venv if needed (idempotent, process-safe).

        Returns:
            The venv's interpreter.

        Raises:
            RuntimeError: The venv could not be created.
        """
        if self.exists():
            return self.python
        with self._lock():
            if self.exists():
                return self.python
            proc = subprocess.run(
                [self.base_python, "-m", "venv", "--without-pip", str(self.root)],
                capture_output=True,
                text=True,
                timeout=300,
                umask=0o022,
            )
            if proc.returncode != 0:
                raise RuntimeError(
                    f"cannot create the tool environment at {self.root}: "
                    f"{(proc.stderr or proc.stdout).strip()[-800:]}"
                )
            self.site_packages.mkdir(parents=True, exist_ok=True)
            # Plain path lines: appended after the venv's own site-packages, and
            # the host's own .pth files are not executed in the tool environment.
            pth = self.site_packages / _HOST_PTH
            pth.write_text("".join(f"{d}\n" for d in self.host_site_dirs()))
            os.chmod(pth, 0o644)
            for directory in (self.root, *self.root.iterdir()):
                if directory.is_dir():
                    os.chmod(directory, 0o755)
        return self.python

    # -- inspection ------------------------------------------------------------

    def installed(self) -> dict[str, str]:
        """Return ``{canonical name: version}`` of every distribution tools can import.

        The venv's own distributions win over the host's, as on its ``sys.path``.
        """
        found: dict[str, str] = {}
        search = [str(self.site_packages), *self.host_site_dirs()]
        for dist in metadata.distributions(path=search):
            name = dist.metadata["Name"] if dist.metadata else None
            if not name:
                continue
            found.setdefault(canonicalize_name(name), dist.version)
        return found

    def _unsatisfied(self, requirements: Iterable[Requirement]) -> list[Requirement]:
        available = self.installed()
        missing = []
        for requirement in requirements:
            if requirement.marker is not None and not requirement.marker.evaluate():
                continue
            version = available.get(canonicalize_name(requirement.name))
            if version is None:
                missing.append(requirement)
                continue
            try:
                ok = requirement.specifier.contains(Version(version), prereleases=True)
            except InvalidVersion:
                ok = not requirement.specifier
            if not ok:
                missing.append(requirement)
        return missing

    def _host_conflicts(self, requirements: Iterable[Requirement]) -> list[str]:
        """Describe requirements that only a different version of a host package meets."""
        host: dict[str, str] = {}
        for dist in metadata.distributions(path=self.host_site_dirs()):
            name = dist.metadata["Name"] if dist.metadata else None
            if name:
                host.setdefault(canonicalize_name(name), dist.version)
        conflicts = []
        for requirement in requirements:
            version = host.get(canonicalize_name(requirement.name))
            if version is not None:
                conflicts.append(
                    f"{requirement} conflicts with {requirement.name} {version}, which the host "
                    "environment provides"
                )
        return conflicts

    def policy(self, requirement: Requirement) -> str:
        """Return why the allow/deny policy refuses a requirement, or ``""``."""
        name = canonicalize_name(requirement.name)
        if name in self.deny:
            return f"{requirement.name!r} is on the deny list of this tool store"
        if self.allow is not None and name not in self.allow and name not in CONTRACT_PACKAGES:
            return f"{requirement.name!r} is not on the allow list of this tool store"
        return ""

    # -- the one entry point ---------------------------------------------------

    def ensure(self, requirements: Sequence[str]) -> DependencyReport:
        """Make the requirements importable by tools, installing what is missing.

        Nothing is installed unless every requirement is valid and allowed.

        Args:
            requirements: PEP 508 requirement strings (e.g. ``"humanize>=4"``).

        Returns:
            The report; ``ok`` is false with a clear ``reason`` when a requirement
            is invalid, denied, or cannot be installed (offline, unknown name,
            conflicting with the host, installer disabled).
        """
        parsed: list[Requirement] = []
        invalid: list[str] = []
        for text in requirements:
            try:
                parsed.append(Requirement(str(text)))
            except InvalidRequirement as exc:
                invalid.append(f"{text!r} ({exc})")
        if invalid:
            return DependencyReport(
                ok=False,
                missing=list(requirements),
                reason="invalid requirement(s): " + "; ".join(invalid),
            )
        refusals = [(str(r), self.policy(r)) for r in parsed if self.policy(r)]
        if refusals:
            return DependencyReport(
                ok=False,
                rejected=[r for r, _ in refusals],
                missing=[r for r, _ in refusals],
                reason="rejected by policy: " + "; ".join(reason for _, reason in refusals),
            )
        try:
            self.create()
        except (RuntimeError, OSError, subprocess.SubprocessError, Timeout) as exc:
            return DependencyReport(ok=False, missing=[str(r) for r in parsed], reason=str(exc))
        missing = self._unsatisfied(parsed)
        present = [str(r) for r in parsed if r not in missing]
        if not missing:
            return DependencyReport(ok=True, present=present)
        conflicts = self._host_conflicts(missing)
        if conflicts:
            return DependencyReport(
                ok=False,
                present=present,
                missing=[str(r) for r in missing],
                reason="; ".join(conflicts)
                + " (the tool environment can add packages but never change one the host "
                "environment provides)",
            )
        if not self.installer_enabled:
            return DependencyReport(
                ok=False,
                present=present,
                missing=[str(r) for r in missing],
                reason="not installed in the tool environment, and installing dependencies is "
                "disabled: " + ", ".join(str(r) for r in missing),
            )
        try:
            with self._lock():
                # Another process may have installed them while we waited.
                missing = self._unsatisfied(missing)
                if missing:
                    error = self._pip_install(missing)
                    if error:
                        return DependencyReport(
                            ok=False,
                            present=present,
                            missing=[str(r) for r in missing],
                            reason=error,
                        )
        except Timeout:
            return DependencyReport(
                ok=False,
                present=present,
                missing=[str(r) for r in missing],
                reason="timed out waiting for another installation in the tool environment",
            )
        still = self._unsatisfied(missing)
        if still:
            return DependencyReport(
                ok=False,
                present=present,
                missing=[str(r) for r in still],
                reason="pip finished but these are still not satisfied: "
                + ", ".join(str(r) for r in still),
            )
        return DependencyReport(ok=True, present=present, installed=[str(r) for r in missing])

    def _constraints(self) -> Path:
        """Write a constraints file pinning every host distribution to its version."""
        lines = []
        for dist in metadata.distributions(path=self.host_site_dirs()):
            name = dist.metadata["Name"] if dist.metadata else None
            if not name:
                continue
            try:
                Version(dist.version)
            except InvalidVersion:
                continue
            direct = dist.read_text("direct_url.json") or ""
            if '"editable": true' in direct or '"url": "file:' in direct:
                continue  # a local checkout cannot be pinned by version
            lines.append(f"{canonicalize_name(name)}=={dist.version}")
        path = self.root / "host-constraints.txt"
        path.write_text("\n".join(sorted(set(lines))) + "\n")
        return path

    def _pip_install(self, requirements: Sequence[Requirement]) -> str:
        """Install into the venv with the host's pip; return an error text or ``""``."""
        command = [
            sys.executable,
            "-I",
            "-m",
            "pip",
            "install",
            "--prefix",
            str(self.root),
            "--no-input",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--no-compile",
            "--retries",
            "1",
            "--timeout",
            "20",
            "-c",
            str(self._constraints()),
        ]
        if self.only_binary:
            command += ["--only-binary", ":all:"]
        if self.index_url:
            command += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            command += ["--extra-index-url", url]
        command += [str(r) for r in requirements]
        names = ", ".join(str(r) for r in requirements)
        logger.info("installing into the tool environment %s: %s", self.root, names)
        try:
            proc = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=self.pip_timeout_s,
                umask=0o022,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return f"installing {names} took longer than {self.pip_timeout_s:g} s (offline?)"
        except OSError as exc:
            return f"cannot run pip: {exc}"
        if proc.returncode == 0:
            return ""
        return f"pip could not install {names}: {_pip_error(proc.stderr or proc.stdout)}"


def _pip_error(text: str) -> str:
    """Pick the lines of pip's output that say why it failed."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    important = [
        line
        for line in lines
        if line.startswith("ERROR")
        or "conflict" in line.lower()
        or "Could not find" in line
        or "No matching distribution" in line
        or "NewConnectionError" in line
    ]
    chosen = important or lines[-5:]
    text = " | ".join(dict.fromkeys(chosen))
    if "conflict" in text.lower() or "ResolutionImpossible" in text:
        text += (
            " (the tool environment may add packages but never change a version the host "
            "environment already has)"
        )
    return text[-1500:]
