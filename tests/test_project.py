"""Packaging and CI invariants: one import package, README commands == CI commands."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_has_exactly_install_and_test_commands() -> None:
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert commands[0].startswith("pip install")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_commands_in_order() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    install, test = _readme_commands()
    assert install in ci and test in ci
    assert ci.index(install) < ci.index(test)


def test_cli_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "insitu", "--help"], capture_output=True, text=True, check=True
    )
    assert "tools" in result.stdout


@pytest.mark.slow
def test_wheel_ships_only_the_insitu_package(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("insitu-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"insitu"}
    for sub in ("graphs", "nodes", "tool_store", "evals", "sandbox"):
        assert f"insitu/{sub}/__init__.py" in names
    assert "insitu/tool_store/assets/all-MiniLM-L6-v2/tokenizer.json" in names
    # Data files the code reads at run time: prompts, the baseline's tool, the suite.
    for data in (
        "insitu/nodes/prompts/manager.md",
        "insitu/nodes/tools/run_python.py",
        "insitu/evals/prices.json",
        "insitu/evals/prompts/judge.md",
        "insitu/evals/suite/v1/tasks.jsonl",
    ):
        assert data in names, data
