"""Compose insitu's episode graph into your own LangGraph graph.

Your graph keeps its own state; the episode graph is added as one node and
reads/writes only the keys of its input and output schemas (``task`` in;
``answer``, ``status``, ``tools_created``, ... out). Run it offline with the
scripted test model::

    python examples/compose_episode.py

With a real endpoint, drop ``models=`` and set ``OPENAI_API_KEY`` (and
``OPENAI_BASE_URL`` for any other OpenAI-compatible server).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TypedDict

from langgraph.graph import END, START, StateGraph

from insitu import InsituContext, build_episode_graph
from insitu.testing.team import ScriptedTeam


class ReportState(TypedDict, total=False):
    """The parent graph's own state; only ``task`` and the outputs are shared."""

    question: str
    task: str
    answer: str
    status: str
    tools_created: list[str]
    report: str


def pose_task(state: ReportState) -> dict:
    """Turn the user's question into the episode's task."""
    return {"task": state["question"]}


def write_report(state: ReportState) -> dict:
    """Use the episode's outputs in the parent's own way."""
    made = ", ".join(state.get("tools_created") or []) or "none"
    return {"report": f"{state['answer']} (status {state['status']}; new tools: {made})"}


def build_report_graph(store_dir: str | Path):
    """A parent graph: pose_task -> solve_task (insitu's episode graph) -> write_report."""
    # The scripted team is a test double so that this example runs offline.
    episode = build_episode_graph(models=ScriptedTeam().model()).compile()
    builder = StateGraph(ReportState, context_schema=InsituContext)
    builder.add_node("pose_task", pose_task)
    builder.add_node("solve_task", episode)
    builder.add_node("write_report", write_report)
    builder.add_edge(START, "pose_task")
    builder.add_edge("pose_task", "solve_task")
    builder.add_edge("solve_task", "write_report")
    builder.add_edge("write_report", END)
    return builder.compile()


def main(store_dir: str | Path) -> ReportState:
    """Run the parent graph once; the context reaches the episode subgraph."""
    graph = build_report_graph(store_dir)
    return graph.invoke(
        {"question": "What is the mean of 3, 5, 10 and 2?"},
        context=InsituContext(store_dir=str(store_dir), embedding="hashing"),
    )


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        print(main(Path(tmp) / "store")["report"])
