"""Editing state and forking an episode at any node (what Studio's "fork" does).

``update_state(..., as_node=N)`` runs N's outgoing router without the run's
context, so routers must read state only.
"""

from __future__ import annotations

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from insitu.graphs.episode import create_episode_graph
from insitu.graphs.routes import route_after_building, route_after_execution
from insitu.testing.team import ScriptedTeam

MEAN_TASK = "What is the mean of 3, 5, 10 and 2?"


@pytest.mark.parametrize("node", ["plan_task", "build_tools", "execute_task", "write_answer"])
def test_every_node_can_be_the_as_node_of_update_state(node, store, sandbox) -> None:
    graph = create_episode_graph(
        checkpointer=InMemorySaver(),
        models=ScriptedTeam().model(),
        tool_store=store,
        sandbox=sandbox,
    )
    config = {"configurable": {"thread_id": f"fork-{node}"}}
    context = {"store_dir": str(store.path)}
    graph.invoke({"task": MEAN_TASK}, config, context=context)
    # Fork where `node` was about to run: write its update by hand instead, as Studio
    # does, which runs the node's outgoing router on the edited state.
    before = next(s for s in graph.get_state_history(config) if s.next == (node,))
    edit = {"guidance": "edited by hand"}
    if node == "write_answer":
        edit = {"answer": "mean 5 (by hand)", "status": "completed"}
    forked = graph.update_state(before.config, edit, as_node=node)
    final = graph.invoke(None, forked, context=context)
    assert final["status"] in ("completed", "incomplete")
    assert final["answer"]


def test_routers_read_state_only() -> None:
    assert route_after_building({"build_outcome": "failed", "replans_left": 1}) == "plan_task"
    assert route_after_building({"build_outcome": "failed", "replans_left": 0}) == "write_answer"
    tool_failed = {"report": {"kind": "tool_failed", "message": "x"}}
    assert route_after_execution({**tool_failed, "requests": [{"name": "t"}]}) == "build_tools"
    assert route_after_execution({**tool_failed, "replans_left": 2}) == "plan_task"
    assert route_after_execution(tool_failed) == "write_answer"
    failed = {"failure": {"kind": "endpoint"}, "requests": [{"name": "t"}], "replans_left": 3}
    assert route_after_execution(failed) == "write_answer"


def test_pause_before_a_step_inside_every_task_of_a_batch(store, sandbox) -> None:
    """``pause_before`` interrupts inside a batch's tasks (their own checkpoints kept)."""
    from langgraph.types import Command

    from insitu.graphs.evolve import create_evolve_graph
    from insitu.nodes.common import PAUSE_KIND

    graph = create_evolve_graph(
        models=ScriptedTeam().model(),
        tool_store=store,
        sandbox=sandbox,
        checkpointer=InMemorySaver(),
        episode_checkpoints=True,
    )
    config = {"configurable": {"thread_id": "paused-batch"}}
    context = {"store_dir": str(store.path), "pause_before": ["execute_task"]}
    tasks = [
        {"id": "a", "question": MEAN_TASK},
        {"id": "b", "question": "How many days from 2024-01-01 to 2024-03-01?"},
    ]
    graph.invoke({"tasks": tasks, "batch_id": "p1"}, config, context=context)
    paused = graph.get_state(config).interrupts
    assert sorted(i.value["task_id"] for i in paused) == ["a", "b"]
    assert {i.value["kind"] for i in paused} == {PAUSE_KIND}
    assert store.count() == 0
    final = graph.invoke(Command(resume={i.id: "go" for i in paused}), config, context=context)
    assert sorted(r["status"] for r in final["results"]) == ["completed", "completed"]
    assert store.count() == 2


def test_run_task_reports_a_pause_and_resumes(store, sandbox) -> None:
    from insitu.api import run_task

    saver = InMemorySaver()
    common = {
        "models": ScriptedTeam().model(),
        "tool_store": store,
        "sandbox": sandbox,
        "context": {"store_dir": str(store.path), "pause_before": ["write_answer"]},
        "checkpointer": saver,
    }
    paused = run_task(MEAN_TASK, **common)
    assert paused.status == "paused" and paused.review["step"] == "write_answer"
    done = run_task(None, thread_id=paused.thread_id, resume="go", **common)
    assert done.status == "completed" and done.answer == "mean 5, median 4"
