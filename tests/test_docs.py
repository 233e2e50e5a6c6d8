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
