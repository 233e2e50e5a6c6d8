"""Fan a parent graph's tasks out to parallel insitu episodes, and gather their outputs.

The parent keeps its own ``status`` and ``usage``; each episode's whole output
lands as one item of ``episodes`` (``output_key``), which a list reducer adds up
however many episodes run at once. Run it offline with the scripted test model::

    python examples/fan_out_episodes.py

With a real endpoint, drop ``models=`` and set ``OPENAI_API_KEY`` (and
``OPENAI_BASE_URL`` for any other OpenAI-compatible server).
"""

import operator
import tempfile
from pathlib import Path
from typing import Annotated, Any

from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from insitu import InsituContext, create_episode_graph, send_tasks
from insitu.testing.team import ScriptedTeam


class DeskState(TypedDict, total=False):
    """The parent's state: its own keys, the tasks, and the gathered episode outputs."""

    tasks: list[str]
    episodes: Annotated[list[dict[str, Any]], operator.add]
    status: str  # the parent's own status: never touched by the episodes
    summary: str


def summarize(state: DeskState) -> dict[str, Any]:
    """Read the episodes' outputs in the parent's own way."""
    done = [e for e in state["episodes"] if e["status"] == "completed"]
    return {"status": "reviewed", "summary": f"{len(done)}/{len(state['tasks'])} answered"}


def build_desk_graph() -> Any:
    """START --send_tasks--> solve (one episode per task) -> summarize -> END."""
    # The scripted team is a test double so that this example runs offline.
    episode = create_episode_graph(models=ScriptedTeam().model(), output_key="episodes")
    builder = StateGraph(DeskState, context_schema=InsituContext)
    builder.add_node("solve", episode)
    builder.add_node("summarize", summarize)
    builder.add_conditional_edges(START, send_tasks("solve", tasks_key="tasks"), ["solve"])
    builder.add_edge("solve", "summarize")
    builder.add_edge("summarize", END)
    return builder.compile()


def main(store_dir: str | Path) -> DeskState:
    """Solve three tasks in parallel; the context reaches every episode."""
    return build_desk_graph().invoke(
        {
            "tasks": [
                "What is the mean of 3, 5, 10 and 2?",
                "How many days from 2024-01-01 to 2024-03-01?",
                "Compute the average of 12, 7 and 20",
            ],
            "status": "new",
        },
        context=InsituContext(store_dir=str(store_dir), embedding="hashing"),
    )


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        final = main(Path(tmp) / "store")
        print(final["summary"])
        for output in final["episodes"]:
            print(f"- {output['answer']} ({output['status']})")
