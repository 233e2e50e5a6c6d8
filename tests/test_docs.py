"""The docs state what the code does: diagrams, settings and links stay current."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from insitu.context import InsituContext
from insitu.graphs import SERVED_GRAPHS, mermaid

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_architecture_diagram_is_the_compiled_graph() -> None:
    text = (DOCS / "architecture.md").read_text()
    for name in SERVED_GRAPHS:
        assert mermaid(name) in text, f"regenerate with `python -m insitu.graphs` ({name})"


def test_configuration_lists_every_setting() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [f.name for f in fields(InsituContext) if f"`{f.name}`" not in text]
    assert not missing, missing


def test_every_setting_is_described_for_studio() -> None:
    undescribed = [f.name for f in fields(InsituContext) if not f.metadata.get("description")]
    assert not undescribed, undescribed


README = DOCS.parent / "README.md"


def test_readme_exit_codes_are_the_clis() -> None:
    from insitu.cli import common

    text = " ".join(README.read_text().split())
    codes = {
        common.EXIT_OK: "0 done",
        common.EXIT_INCOMPLETE: "1 the task or request could not be completed",
        common.EXIT_CONFIG: "2 a usage or configuration error",
        common.EXIT_RUNTIME: "3 a runtime error",
        common.EXIT_INTERRUPTED: "130 interrupted",
    }
    for code, words in codes.items():
        assert words in text and words.startswith(str(code)), words


def test_readme_store_layout_names_everything_a_store_holds(tmp_path: Path) -> None:
    """Every file and folder a store gets from a run with a tool built is in the README."""
    from insitu import run_task
    from insitu.testing.team import ScriptedTeam

    store = tmp_path / "store"
    run_task(
        "What is the mean of 3, 5, 10 and 2?",
        models=ScriptedTeam().model(),
        context={"store_dir": str(store), "embedding": "hashing"},
    )
    layout = README.read_text().split("## The library on disk", 1)[1].split("## ", 1)[0]
    held = sorted(p.name for p in store.iterdir())
    assert "tools.db" in held and "workspaces" in held
    missing = [
        name for name in held if name.removesuffix("-wal").removesuffix("-shm") not in layout
    ]
    assert not missing, missing


def test_shell_completion_as_the_readme_says() -> None:
    import os
    import subprocess

    assert "_INSITU_COMPLETE=bash_source insitu" in README.read_text()
    script = subprocess.run(
        ["insitu"],
        env={**os.environ, "_INSITU_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert script.returncode == 0 and "complete -o nosort -F" in script.stdout
