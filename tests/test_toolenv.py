"""The tool environment: a store-owned venv, policy, real installs, and tools using it."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from insitu.sandbox import ErrorKind, Sandbox, SandboxSettings, ToolEnvironment, probe_backend

#: A small pure-Python distribution that the host environment does not have.
PACKAGE = "humanize"
NETWORK_ERRORS = ("NewConnectionError", "Temporary failure in name resolution", "timed out")

TOOL = """
import sys
import humanize
from pydantic import BaseModel

__TOOL_META__ = {
    "name": "format_file_size",
    "description": "Formats a number of bytes as a human-readable size.",
    "dependencies": ["humanize>=4"],
}


class InputModel(BaseModel):
    size: int


class OutputModel(BaseModel):
    text: str
    prefix: str


def run(input: InputModel) -> OutputModel:
    return OutputModel(text=humanize.naturalsize(input.size), prefix=sys.prefix)
"""


@pytest.fixture(scope="module")
def installed_env(tmp_path_factory: pytest.TempPathFactory) -> ToolEnvironment:
    """A tool environment into which PACKAGE was really installed from the index."""
    assert importlib.util.find_spec(PACKAGE) is None, f"{PACKAGE} must not be on the host"
    env = ToolEnvironment(tmp_path_factory.mktemp("store") / "toolenv")
    report = env.ensure([f"{PACKAGE}>=4"])
    if not report.ok and any(marker in report.reason for marker in NETWORK_ERRORS):
        pytest.skip(f"the package index is unreachable: {report.reason}")
    assert report.ok, report.reason
    assert report.installed == [f"{PACKAGE}>=4"]
    return env


def test_venv_layout_and_host_packages(tmp_path: Path) -> None:
    env = ToolEnvironment(tmp_path / "toolenv")
    assert not env.exists()
    python = env.create()
    assert python == env.python and python.exists()
    assert env.create() == python  # idempotent
    pth = (env.site_packages / "_insitu_host_site.pth").read_text().split()
    assert set(env.host_site_dirs()) <= set(pth)
    probe = subprocess.run(
        [str(python), "-c", "import sys, pydantic; print(sys.prefix); print(sys.path)"],
        capture_output=True,
        text=True,
        check=True,
    )
    prefix, path = probe.stdout.splitlines()
    assert prefix == str(env.root)
    entries = eval(path)
    # The venv's own packages come before the host's.
    assert entries.index(str(env.site_packages)) < entries.index(env.host_site_dirs()[0])


def test_requirements_satisfied_by_the_host_need_no_install(tmp_path: Path) -> None:
    env = ToolEnvironment(tmp_path / "toolenv", installer_enabled=False)
    report = env.ensure(["pydantic>=2", "packaging"])
    assert report.ok and report.present == ["pydantic>=2", "packaging"]
    assert report.installed == []
    assert env.ensure([]).ok


def test_deny_wins_and_nothing_is_installed(tmp_path: Path) -> None:
    env = ToolEnvironment(tmp_path / "toolenv", allow=[PACKAGE], deny=["Humanize"])
    report = env.ensure([PACKAGE, "pydantic"])
    assert not report.ok
    assert report.rejected == [PACKAGE]
    assert "deny list" in report.reason and PACKAGE in report.reason
    assert not env.root.exists()  # rejected before anything was touched


def test_allow_list(tmp_path: Path) -> None:
    env = ToolEnvironment(tmp_path / "toolenv", allow=["pydantic"], installer_enabled=False)
    report = env.ensure(["toolz"])
    assert not report.ok and report.rejected == ["toolz"]
    assert "not on the allow list" in report.reason
    assert env.ensure(["pydantic"]).ok


def test_invalid_requirement(tmp_path: Path) -> None:
    env = ToolEnvironment(tmp_path / "toolenv")
    report = env.ensure(["not a requirement!!"])
    assert not report.ok and report.reason.startswith("invalid requirement(s)")


def test_installer_disabled(tmp_path: Path) -> None:
    env = ToolEnvironment(tmp_path / "toolenv", installer_enabled=False)
    report = env.ensure([PACKAGE])
    assert not report.ok and report.missing == [PACKAGE]
    assert "installing dependencies is disabled" in report.reason


def test_host_packages_are_never_replaced(tmp_path: Path) -> None:
    env = ToolEnvironment(tmp_path / "toolenv")
    report = env.ensure(["pydantic<2"])
    assert not report.ok
    assert "conflicts with pydantic 2." in report.reason
    assert "never change one the host" in report.reason
    assert not list(env.site_packages.glob("pydantic*"))


def test_real_install_then_present(installed_env: ToolEnvironment) -> None:
    assert list(installed_env.site_packages.glob(f"{PACKAGE}-*.dist-info"))
    assert importlib.util.find_spec(PACKAGE) is None  # the host is untouched
    again = installed_env.ensure([PACKAGE])
    assert again.ok and again.installed == [] and again.present == [PACKAGE]


def test_nonexistent_package_fails_with_a_clear_reason(installed_env: ToolEnvironment) -> None:
    before = sorted(p.name for p in installed_env.site_packages.iterdir())
    report = installed_env.ensure(["insitu-no-such-package-xyz123"])
    assert not report.ok
    assert report.missing == ["insitu-no-such-package-xyz123"]
    assert "No matching distribution found for insitu-no-such-package-xyz123" in report.reason
    assert sorted(p.name for p in installed_env.site_packages.iterdir()) == before


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(
            "bwrap",
            marks=pytest.mark.skipif(
                not probe_backend().bwrap_works, reason="bwrap backend unavailable here"
            ),
        ),
        "degraded",
    ],
)
def test_tools_run_with_the_tool_environment(
    installed_env: ToolEnvironment, backend: str, tmp_path: Path
) -> None:
    with Sandbox(SandboxSettings(backend=backend), toolenv=installed_env) as sandbox:
        assert sandbox.python() == str(installed_env.python)
        out = sandbox.call(TOOL, {"size": 123456}, workdir=tmp_path)
        assert out.ok, out
        assert out.output == {"text": "123.5 kB", "prefix": str(installed_env.root)}
    with Sandbox(SandboxSettings(backend=backend)) as plain:
        out = plain.call(TOOL, {"size": 1}, workdir=tmp_path)
        assert out.kind is ErrorKind.DEPENDENCY
        assert "'humanize'" in out.message


def test_sandbox_builds_its_tool_environment_from_settings(tmp_path: Path) -> None:
    settings = SandboxSettings(
        backend="degraded",
        toolenv_dir=str(tmp_path / "toolenv"),
        deny_packages=["requests"],
        install_dependencies=False,
    )
    with Sandbox(settings) as sandbox:
        assert sandbox.toolenv is not None
        assert sandbox.toolenv.installer_enabled is False
        assert "deny list" in sandbox.toolenv.ensure(["requests"]).reason
        assert sandbox.python() == str(sandbox.toolenv.python)
