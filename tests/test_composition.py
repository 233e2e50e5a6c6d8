"""Composition: the episode graph as a node of a user's own parent graph."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_compose_example_runs(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(ROOT / "examples" / "compose_episode.py"), run_name="example")
    final = namespace["main"](tmp_path / "store")
    assert final["report"].startswith("mean 5, median 4")
    assert final["tools_created"] == ["summarize_numbers"]
    # The parent's own key was not clobbered by the subgraph.
    assert final["question"] == "What is the mean of 3, 5, 10 and 2?"
