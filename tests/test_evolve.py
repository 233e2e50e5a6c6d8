"""The batch graph and absorbing, driven by the scripted team (a test double).

The store (with the real MiniLM embedding where absorbing groups tools), the
sandbox and the graphs are real.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage

from insitu import aio
from insitu.evals.tasks import Task
from insitu.evolve import evolve, read_jsonl
from insitu.graphs.evolve import create_evolve_graph
from insitu.llm import ModelEndpointError
from insitu.testing import ScriptedChatModel
from insitu.testing.team import (
    DATE_DIFFERENCE,
    SUMMARIZE_NUMBERS,
    Capability,
    ScriptedTeam,
    prompt_text,
    scripted_stream,
)
from insitu.tool_store import ToolStore
from insitu.tool_store.admission import admit_tool

MEAN = "What is the mean of 3, 5, 10 and 2?"
DATES = "How many days from 2024-01-01 to 2024-03-01?"


def variant(name: str, description: str, keyword: str, **changes: Any) -> Capability:
    """summarize_numbers under another name and description (a functional duplicate)."""
    source = changes.pop("source", SUMMARIZE_NUMBERS.source)
    source = source.replace('"summarize_numbers"', f'"{name}"').replace(
        '"Computes count, mean, median, population standard deviation, minimum and "\n'
        '    "maximum of a list of numbers and returns them."',
        repr(description),
    )
    return dataclasses.replace(
        SUMMARIZE_NUMBERS,
        name=name,
        description=description,
        source=source,
        pattern=rf"{keyword}[^\d-]*((?:-?\d+(?:\.\d+)?[,\s]*(?:and\s+)?)+)",
        **changes,
    )


DESCRIBE = variant(
    "describe_numbers",
    "Describes a list of numbers: count, mean, median, spread, smallest and largest value.",
    "describe",
)
PROFILE = variant(
    "profile_numbers",
    "Profiles a list of numbers and returns count, mean, median, deviation, min and max.",
    "profile",
)
#: Same signature, but its tests want the sample standard deviation: a merge with
#: summarize_numbers (population) cannot pass both sets of tests.
SAMPLE_DESCRIBE = dataclasses.replace(
    DESCRIBE,
    source=DESCRIBE.source.replace("statistics.pstdev(v)", "statistics.stdev(v)"),
    tests=[
        {
            "name": "sample",
            "input": {"values": [1, 2, 3, 4]},
            "check": "approx(output['stdev'], 1.2909944)",
        },
        {"name": "empty", "input": {"values": []}, "expect_error": True},
    ],
)


def tasks_of(*questions: str) -> list[dict[str, str]]:
    return [{"id": f"t{i}", "question": q} for i, q in enumerate(questions)]


@pytest.fixture
def minilm_store(tmp_path: Path):
    with ToolStore.open(tmp_path / "store", embedding="minilm") as store:
        yield store


def run_batch(store, sandbox, models, tasks, **context) -> dict[str, Any]:
    graph = create_evolve_graph(models=models, tool_store=store, sandbox=sandbox)
    return graph.invoke(
        {"tasks": tasks, "batch_id": "b1"},
        context={"store_dir": str(store.path), **context},
    )


def add_tool(store, sandbox, capability: Capability, tmp_path: Path, **kwargs) -> None:
    spec = admit_tool(
        capability.source, capability.tests, sandbox=sandbox, scratch_dir=tmp_path / "admit"
    )
    store.add(spec, origin="manual", **kwargs)


# ------------------------------------------------------------------ the batch graph


def test_parallel_episodes_never_see_each_others_local_tools(store, sandbox) -> None:
    team = ScriptedTeam()
    seen: dict[str, str] = {}

    def responder(messages: list[BaseMessage], tools: list[dict]) -> Any:
        text = prompt_text(messages)
        if text.startswith("You are the Manager"):
            task = text.split("## Task\n", 1)[1].split("\n", 1)[0]
            seen[task] = text.split("## Candidate tools", 1)[1].split("\n## ", 1)[0]
            time.sleep(0.2)  # both episodes are planning at the same time
        return team.respond(messages, tools)

    final = run_batch(
        store, sandbox, ScriptedChatModel(responder=responder), tasks_of(MEAN, DATES, MEAN + " ")
    )
    results = {r["task_id"]: r for r in final["results"]}
    assert all(r["status"] == "completed" for r in results.values())
    # Each episode built its own tool: neither saw the other's, even the same one.
    assert results["t0"]["tools_created"] == ["summarize_numbers"]
    assert results["t2"]["tools_created"] == ["summarize_numbers"]
    assert "compute_date_difference" not in seen[MEAN]
    assert "summarize_numbers" not in seen[DATES]
    # Absorbing kept one summarize_numbers and committed both tools at once.
    assert sorted(r.name for r in store.list()) == ["compute_date_difference", "summarize_numbers"]
    assert final["commit"]["applied"]


def test_a_crashing_and_a_slow_episode_do_not_block_the_batch(store, sandbox) -> None:
    team = ScriptedTeam()
    after_the_limit: list[str] = []

    def responder(messages: list[BaseMessage], tools: list[dict]) -> Any:
        text = prompt_text(messages)
        if text.startswith("You are the Manager") and "crash" in text:
            raise RuntimeError("endpoint exploded")
        if text.startswith("You are the Manager") and "slow" in text:
            time.sleep(2.5)
        elif "slow" in text:
            after_the_limit.append(text[:40])  # any role the slow episode asks after its limit
        return team.respond(messages, tools)

    started = time.monotonic()
    final = run_batch(
        store,
        sandbox,
        ScriptedChatModel(responder=responder),
        tasks_of(MEAN, "crash: " + DATES, "slow: " + DATES),
        episode_timeout_s=1.5,
    )
    # The slow episode was stopped at its next step, not left running: no role of it
    # was asked anything after the limit, and the batch did not wait beyond that step.
    assert time.monotonic() - started < 8
    assert after_the_limit == []
    results = {r["task_id"]: r for r in final["results"]}
    assert results["t0"]["status"] == "completed"
    assert results["t1"]["status"] == "failed" and "endpoint exploded" in results["t1"]["error"]
    assert results["t1"]["error_kind"] == "endpoint"
    assert results["t1"]["failure"]["role"] == "manager"
    assert results["t2"]["status"] == "failed" and "episode_timeout_s" in results["t2"]["error"]
    assert results["t2"]["error_kind"] == "timeout"
    assert results["t2"]["usage"]["manager"]["calls"] == 1  # tokens spent before are kept
    assert results["t0"]["error"] is None and results["t0"]["error_kind"] is None
    assert final["absorb"]["added"] == ["summarize_numbers"]
    assert store.count() == 1


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ModelEndpointError(role="manager", model="m", url="u", reason="x"), "endpoint"),
        (ValueError("a bug\nover two lines"), "internal"),
    ],
)
def test_an_episode_that_raises_fails_alone_with_its_kind(error, kind) -> None:
    from langgraph.errors import NodeError

    from insitu.nodes.batch import episode_crashed

    command = episode_crashed({"task": MEAN, "task_id": "t0"}, NodeError("solve_task", error))
    assert command.goto == "schedule_tasks"  # the batch goes on
    (result,) = command.update["results"]
    assert result["task_id"] == "t0"
    assert result["status"] == "failed" and result["error_kind"] == kind
    assert result["error"] and "\n" not in result["error"]
    if kind == "endpoint":
        assert result["failure"]["kind"] == "endpoint"
        assert result["error"] == result["failure"]["message"]


def test_a_batch_whose_every_task_crashes_still_finishes(store, sandbox) -> None:
    def responder(messages: list[BaseMessage], tools: list[dict]) -> Any:
        raise RuntimeError("unexpected")

    with pytest.MonkeyPatch.context() as patch:
        # An internal error, not an endpoint failure: prepare_workspace itself raises.
        from insitu.nodes import workspace

        patch.setattr(workspace, "check_task", lambda state: 1 / 0)
        final = run_batch(store, sandbox, ScriptedChatModel(responder=responder), tasks_of(MEAN))
    (result,) = final["results"]
    assert result["status"] == "failed" and result["error_kind"] == "internal"
    assert "ZeroDivisionError" in result["error"]
    assert final["finished_at"]


def test_a_task_of_a_batch_is_a_subgraph_that_can_be_inspected(store, sandbox) -> None:
    """With episode checkpoints, each task's own state is there to inspect or fork."""
    from langgraph.checkpoint.memory import InMemorySaver

    graph = create_evolve_graph(
        models=ScriptedTeam().model(),
        tool_store=store,
        sandbox=sandbox,
        checkpointer=InMemorySaver(),
        episode_checkpoints=True,
    )
    config = {"configurable": {"thread_id": "inspect"}}
    context = {"store_dir": str(store.path)}
    graph.invoke({"tasks": tasks_of(MEAN, DATES), "batch_id": "i1"}, config, context=context)
    children = {
        namespace
        for namespace, _chunk in graph.stream(
            {"tasks": tasks_of(MEAN), "batch_id": "i2"},
            {"configurable": {"thread_id": "inspect-2"}},
            context=context,
            stream_mode="updates",
            subgraphs=True,
        )
        if namespace
    }
    assert any(ns[0].startswith("solve_task:") for ns in children)
    history = list(graph.get_state_history(config))
    episodes = [
        task
        for snapshot in history
        for task in snapshot.tasks
        if task.name == "solve_task" and task.state is not None
    ]
    assert episodes, "each task's checkpoint namespace is recorded"
    inner = graph.get_state(episodes[0].state, subgraphs=True)
    assert inner.values.get("task_id") in ("t0", "t1")
    # A task can be forked where it was about to execute, with an edited plan.
    steps = list(graph.get_state_history(episodes[0].state))
    before = next(s for s in steps if s.next == ("execute_task",))
    forked = graph.update_state(before.config, {"guidance": "by hand"}, as_node="plan_task")
    assert forked["configurable"]["checkpoint_ns"].startswith("solve_task:")
    assert graph.get_state(forked).values["guidance"] == "by hand"


@pytest.mark.parametrize(("limit", "expected_max"), [(1, 1), (2, 2), (6, 6)])
def test_concurrency_limit_is_honoured(store, sandbox, limit, expected_max) -> None:
    team = ScriptedTeam()
    lock, active, peak = threading.Lock(), [0], [0]

    def responder(messages: list[BaseMessage], tools: list[dict]) -> Any:
        if prompt_text(messages).startswith("You are the Manager"):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.3)
            with lock:
                active[0] -= 1
        return team.respond(messages, tools)

    graph = create_evolve_graph(
        models=ScriptedChatModel(responder=responder), tool_store=store, sandbox=sandbox
    )
    questions = [q["question"] for q in scripted_stream(6)]
    graph.invoke(
        {"tasks": tasks_of(*questions)},
        context={"store_dir": str(store.path), "batch_concurrency": limit},
    )
    assert peak[0] == expected_max


def test_library_calls_are_counted_once_by_the_batch_commit(store, sandbox, tmp_path) -> None:
    add_tool(store, sandbox, SUMMARIZE_NUMBERS, tmp_path)
    team = ScriptedTeam()
    graph = create_evolve_graph(models=team.model(), tool_store=store, sandbox=sandbox)
    context = {"store_dir": str(store.path)}
    batch = {"tasks": tasks_of(MEAN, "Compute the average of 1, 2, 3 and 10"), "batch_id": "b1"}
    seen_during: list[int] = []
    original = store.record_calls

    def record(*args: Any, **kwargs: Any) -> int:
        seen_during.append(len(args[0]))
        return original(*args, **kwargs)

    store.record_calls = record  # type: ignore[method-assign]
    try:
        out = graph.invoke(batch, context=context)
    finally:
        del store.record_calls
    assert [r["library_calls"][0]["name"] for r in out["results"]] == ["summarize_numbers"] * 2
    assert seen_during == [2]  # one recording, by the batch commit, not one per episode
    assert out["commit"]["calls_recorded"] == 2
    assert store.get("summarize_numbers").stats.calls == 2
    # The batch resumed after a crash just before its end commits again: nothing doubles.
    from insitu.nodes.absorb import commit_batch
    from insitu.services import Services

    runtime = type("R", (), {"context": context})()
    again = aio.run(
        commit_batch({**out, "changes": {}}, runtime, services=Services(tool_store=store))
    )
    assert again["commit"]["calls_recorded"] == 0
    assert store.get("summarize_numbers").stats.calls == 2


def test_empty_batch_commits_nothing(store, sandbox) -> None:
    final = run_batch(store, sandbox, ScriptedTeam().model(), [])
    assert final["results"] == [] and not final["commit"]["applied"]


# ------------------------------------------------------------------ absorbing


def test_near_duplicates_are_merged_with_lineage(minilm_store, sandbox) -> None:
    team = ScriptedTeam(capabilities=(DESCRIBE, SUMMARIZE_NUMBERS, DATE_DIFFERENCE))
    final = run_batch(
        minilm_store, sandbox, team.model(), tasks_of(MEAN, "Describe 1, 2, 3 and 4", DATES)
    )
    absorb = final["absorb"]
    assert absorb["merged"] == [
        {"into": "summarize_numbers", "from": ["summarize_numbers", "describe_numbers"]}
    ]
    assert absorb["added"] == ["compute_date_difference"]  # distinct tools are kept
    names = sorted(r.name for r in minilm_store.list())
    assert names == ["compute_date_difference", "summarize_numbers"]
    merged = minilm_store.get("summarize_numbers")
    assert merged.origin == "merged"
    assert merged.merged_from == ["summarize_numbers@1", "describe_numbers@1"]
    # The merged tool carries (and passed) the union of the members' tests.
    assert {t.name for t in merged.tests} >= {
        f"{member}__{t['name']}"
        for member in ("summarize_numbers", "describe_numbers")
        for t in SUMMARIZE_NUMBERS.tests
    }
    assert absorb["llm_calls"] == 2  # one verdict, one merge


def test_merge_into_the_library_archives_replaced_tools(minilm_store, sandbox, tmp_path) -> None:
    add_tool(minilm_store, sandbox, SUMMARIZE_NUMBERS, tmp_path)
    add_tool(minilm_store, sandbox, DESCRIBE, tmp_path)
    team = ScriptedTeam(capabilities=(PROFILE, SUMMARIZE_NUMBERS, DESCRIBE))
    final = run_batch(minilm_store, sandbox, team.model(), tasks_of("Profile 4, 8 and 15"))
    assert final["results"][0]["tools_created"] == ["profile_numbers"]
    absorb = final["absorb"]
    assert len(absorb["merged"]) == 1
    keeper = absorb["merged"][0]["into"]
    assert keeper == "summarize_numbers"  # the oldest library member keeps its name
    assert set(absorb["archived"]) == {"describe_numbers"}
    record = minilm_store.get("summarize_numbers")
    assert record.version == 2 and record.origin == "merged"
    assert set(record.merged_from) == {
        "summarize_numbers@1",
        "describe_numbers@1",
        "profile_numbers@1",
    }
    assert minilm_store.get("describe_numbers").status == "archived"  # kept, never deleted
    assert not minilm_store.has("profile_numbers")
    assert [r.name for r in minilm_store.list()] == ["summarize_numbers"]


def test_a_merge_that_breaks_a_members_tests_is_rejected(minilm_store, sandbox) -> None:
    team = ScriptedTeam(capabilities=(SAMPLE_DESCRIBE, SUMMARIZE_NUMBERS))
    final = run_batch(minilm_store, sandbox, team.model(), tasks_of(MEAN, "Describe 1, 2, 3 and 4"))
    absorb = final["absorb"]
    assert absorb["merged"] == []
    assert len(absorb["merge_rejected"]) == 1
    assert "describe_numbers__sample" in absorb["merge_rejected"][0]["reason"]
    assert sorted(absorb["added"]) == ["describe_numbers", "summarize_numbers"]
    assert minilm_store.get("describe_numbers").source == SAMPLE_DESCRIBE.source


def test_locked_tools_are_never_merged_away(minilm_store, sandbox, tmp_path) -> None:
    add_tool(minilm_store, sandbox, SUMMARIZE_NUMBERS, tmp_path)
    minilm_store.lock("summarize_numbers")
    before = minilm_store.get("summarize_numbers")
    team = ScriptedTeam(capabilities=(DESCRIBE, SUMMARIZE_NUMBERS))
    final = run_batch(minilm_store, sandbox, team.model(), tasks_of("Describe 1, 2, 3 and 4"))
    assert final["absorb"]["merged"] == []
    assert final["absorb"]["added"] == ["describe_numbers"]
    after = minilm_store.get("summarize_numbers")
    assert (after.version, after.hash, after.status) == (before.version, before.hash, "active")


def test_malformed_aggregator_verdicts_keep_the_tools(minilm_store, sandbox) -> None:
    team = ScriptedTeam(capabilities=(DESCRIBE, SUMMARIZE_NUMBERS))

    def responder(messages: list[BaseMessage], tools: list[dict]) -> Any:
        if prompt_text(messages).startswith("You are the Aggregator"):
            return '{"duplicates": [["summarize_numbers", "not_a_member"]]}'
        return team.respond(messages, tools)

    final = run_batch(
        minilm_store,
        sandbox,
        ScriptedChatModel(responder=responder),
        tasks_of(MEAN, "Describe 1, 2, 3 and 4"),
        max_reasks=1,
    )
    assert final["absorb"]["merged"] == []
    assert "no usable verdict" in final["absorb"]["merge_rejected"][0]["reason"]
    assert sorted(r.name for r in minilm_store.list()) == ["describe_numbers", "summarize_numbers"]


# ------------------------------------------------------------------ the run


def test_recurring_capabilities_are_reused_and_egl_falls(store, sandbox, tmp_path) -> None:
    tasks = [Task(**t) for t in scripted_stream(12)]
    team = ScriptedTeam()
    summary = evolve(
        tasks,
        run_dir=tmp_path / "run",
        batch_size=4,
        models=team.model(),
        tool_store=store,
        sandbox=sandbox,
        context={"store_dir": str(store.path)},
        scripted=True,
    )
    steps = read_jsonl(tmp_path / "run" / "steps.jsonl")
    assert [s["tools_created"] for s in steps][1:] == [0, 0]  # later occurrences reuse
    curve = [s["egl"] for s in steps]
    assert curve[0] is not None and curve[1] < curve[0] and curve[2] < curve[1]
    assert summary.library_size == 2 and summary.completed == 12
    predictions = read_jsonl(tmp_path / "run" / "predictions.jsonl")
    assert [p["id"] for p in predictions] == [t.id for t in tasks]
    assert all(p["status"] == "completed" for p in predictions)


def test_frozen_run_builds_nothing(store, sandbox, tmp_path) -> None:
    tasks = [Task(**t) for t in scripted_stream(4)]
    evolve(
        tasks,
        run_dir=tmp_path / "run",
        batch_size=2,
        models=ScriptedTeam().model(),
        tool_store=store,
        sandbox=sandbox,
        context={"store_dir": str(store.path), "freeze_library": True},
    )
    assert store.count() == 0
    predictions = read_jsonl(tmp_path / "run" / "predictions.jsonl")
    assert all(p["tools_created"] == [] for p in predictions)


def test_a_run_dir_refuses_another_run(store, sandbox, tmp_path) -> None:
    from insitu.evolve import RunMismatchError

    tasks = [Task(**t) for t in scripted_stream(2)]
    kwargs = {"models": ScriptedTeam().model(), "tool_store": store, "sandbox": sandbox}
    evolve(tasks, run_dir=tmp_path / "run", batch_size=2, **kwargs)
    with pytest.raises(RunMismatchError, match="batch_size"):
        evolve(tasks, run_dir=tmp_path / "run", batch_size=1, **kwargs)


@pytest.mark.timeout(120)
def test_one_episode_at_a_time_does_not_deadlock(store, sandbox, tmp_path) -> None:
    tasks = [Task(**t) for t in scripted_stream(2)]
    summary = evolve(
        tasks,
        run_dir=tmp_path / "run",
        batch_size=2,
        models=ScriptedTeam().model(),
        tool_store=store,
        sandbox=sandbox,
        context={"store_dir": str(store.path), "batch_concurrency": 1},
        on_event=lambda event: None,  # streaming, as the CLI does
    )
    assert summary.completed == 2
