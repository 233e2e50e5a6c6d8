"""Human approval of tools (``tool_approval``): pause before the commit, then decide."""

from __future__ import annotations

from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from insitu.api import run_task
from insitu.graphs.evolve import create_evolve_graph
from insitu.llm import ConfigurationError
from insitu.nodes.review import REVIEW_KIND, parse_decisions
from insitu.testing.team import SUMMARIZE_NUMBERS, ScriptedTeam
from insitu.tool_store import ToolStore

MEAN_TASK = "What is the mean of 3, 5, 10 and 2?"


def _run(store: ToolStore, sandbox: Any, saver: Any, **extra: Any) -> Any:
    return run_task(
        extra.pop("task", MEAN_TASK),
        models=ScriptedTeam().model(),
        tool_store=store,
        sandbox=sandbox,
        context={"store_dir": str(store.path), "tool_approval": "new"},
        checkpointer=saver,
        **extra,
    )


def test_a_new_tool_waits_for_approval_then_is_committed(store, sandbox) -> None:
    saver = InMemorySaver()
    paused = _run(store, sandbox, saver)
    assert paused.status == "awaiting_review"
    assert paused.review["kind"] == REVIEW_KIND and paused.review["scope"] == "episode"
    [item] = paused.review["tools"]
    assert item["name"] == "summarize_numbers" and item["change"] == "new"
    assert "def run(" in item["source"] and item["tests"] and "passed" in item["verdict"]
    assert store.count() == 0  # nothing is committed before the decision
    done = _run(store, sandbox, saver, task=None, thread_id=paused.thread_id, resume="approve")
    assert done.status == "completed"
    assert done.answer == "mean 5, median 4"
    assert done.tools_created == ["summarize_numbers"]
    assert store.get("summarize_numbers").version == 1


def test_a_rejected_tool_is_kept_on_record_and_never_counted(store, sandbox) -> None:
    saver = InMemorySaver()
    paused = _run(store, sandbox, saver)
    decision = {"summarize_numbers": {"action": "reject", "reason": "population stdev only"}}
    done = _run(store, sandbox, saver, task=None, thread_id=paused.thread_id, resume=decision)
    assert done.status == "completed"  # the task was answered; the tool is not kept
    assert done.tools_created == [] and done.metrics["tools_created"] == 0
    assert done.rejected_tools == [
        {"name": "summarize_numbers", "version": 1, "reason": "population stdev only"}
    ]
    assert store.count() == 0
    [kept] = store.rejections("summarize_numbers")
    assert kept["reason"] == "population stdev only"
    assert kept["record"]["source"] == SUMMARIZE_NUMBERS.source


def test_an_edited_tool_is_admitted_as_edited(store, sandbox) -> None:
    saver = InMemorySaver()
    paused = _run(store, sandbox, saver)
    edited = SUMMARIZE_NUMBERS.source.replace('"""', '"""Reviewed. ', 1)
    decision = {"summarize_numbers": {"action": "edit", "source": edited}}
    _run(store, sandbox, saver, task=None, thread_id=paused.thread_id, resume=decision)
    record = store.get("summarize_numbers")
    assert record.source == edited
    assert record.note == "edited by a reviewer"


def test_an_edit_that_fails_its_tests_is_rejected_with_the_reason(store, sandbox) -> None:
    saver = InMemorySaver()
    paused = _run(store, sandbox, saver)
    broken = SUMMARIZE_NUMBERS.source.replace("statistics.fmean", "max")
    decision = {"summarize_numbers": {"action": "edit", "source": broken}}
    done = _run(store, sandbox, saver, task=None, thread_id=paused.thread_id, resume=decision)
    assert store.count() == 0
    assert done.rejected_tools[0]["reason"].startswith("the edit was not admitted")


def test_approval_needs_checkpoints(store, sandbox) -> None:
    with pytest.raises(ConfigurationError, match="checkpoint"):
        run_task(
            MEAN_TASK,
            models=ScriptedTeam().model(),
            tool_store=store,
            sandbox=sandbox,
            context={"store_dir": str(store.path), "tool_approval": "new"},
            checkpoint=False,
        )


def test_decisions_are_read_leniently() -> None:
    names = ["a", "b", "c"]
    decisions = parse_decisions({"a": "approve", "b": {"action": "reject"}, "c": 5}, names)
    assert [decisions[n].action for n in names] == ["approve", "reject", "reject"]
    assert "unreadable" in decisions["c"].reason
    assert {d.action for d in parse_decisions("approve", names).values()} == {"approve"}
    assert parse_decisions(None, ["a"])["a"].reason == "no usable decision"


def test_the_batch_graph_pauses_between_absorbing_and_its_commit(store, sandbox) -> None:
    graph = create_evolve_graph(
        models=ScriptedTeam().model(),
        tool_store=store,
        sandbox=sandbox,
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "batch-review"}}
    context = {"store_dir": str(store.path), "tool_approval": "new"}
    tasks = [
        {"id": "a", "question": MEAN_TASK},
        {"id": "b", "question": "How many days from 2024-01-01 to 2024-03-01?"},
    ]
    graph.invoke({"tasks": tasks, "batch_id": "b1"}, config, context=context)
    state = graph.get_state(config)
    assert state.next == ("review_tools",)
    [pending] = state.interrupts
    names = sorted(item["name"] for item in pending.value["tools"])
    assert names == ["compute_date_difference", "summarize_numbers"]
    assert store.count() == 0
    decision = {"summarize_numbers": "approve", "compute_date_difference": "reject"}
    final = graph.invoke(Command(resume=decision), config, context=context)
    assert final["commit"]["applied"]
    assert [t.name for t in store.list()] == ["summarize_numbers"]
    assert [r["name"] for r in final["rejected_tools"]] == ["compute_date_difference"]
    assert store.rejections("compute_date_difference")


# --------------------------------------------------------------------- the CLI


def _insitu(*args: str, stdin: str | None = None) -> Any:
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "INSITU_"))}
    return subprocess.run(
        [sys.executable, "-m", "insitu", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**clean, "INSITU_EMBEDDING": "hashing"},
        timeout=240,
    )


def test_insitu_run_pauses_and_goes_on_with_recorded_decisions(tmp_path) -> None:
    store = str(tmp_path / "store")
    common = ("--store", store, "--set", "tool_approval=new")
    paused = _insitu("run", "--scripted", MEAN_TASK, *common)
    assert paused.returncode == 1, paused.stderr
    assert "paused: summarize_numbers await(s) a review" in paused.stderr
    thread = paused.stderr.split("insitu run --resume ")[1].split()[0].strip("`)")
    pending = _insitu("tools", "pending", "--store", store)
    assert "summarize_numbers" in pending.stdout
    early = _insitu("run", "--scripted", "--resume", thread, *common)
    assert early.returncode == 2 and "insitu tools approve" in early.stderr
    assert _insitu("tools", "approve", "summarize_numbers", "--store", store).returncode == 0
    done = _insitu("run", "--scripted", "--resume", thread, *common)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("mean 5, median 4")
    assert "summarize_numbers" in _insitu("tools", "list", "--store", store).stdout
    assert "no tool awaits a review" in _insitu("tools", "pending", "--store", store).stdout


def test_insitu_run_approve_reviews_at_the_terminal(tmp_path) -> None:
    store = str(tmp_path / "store")
    done = _insitu(
        "run", "--scripted", "--approve", MEAN_TASK, "--store", store, stdin="r\ntoo narrow\n"
    )
    assert done.returncode == 0, done.stderr
    assert "summarize_numbers — new" in done.stderr  # the review panel
    with ToolStore.open(store, read_only=True) as opened:
        assert opened.count() == 0
        assert opened.rejections("summarize_numbers")[0]["reason"] == "too narrow"


def test_insitu_evolve_pauses_then_resumes_after_the_decisions(tmp_path) -> None:
    import json

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        json.dumps({"id": "a", "question": MEAN_TASK})
        + "\n"
        + json.dumps({"id": "b", "question": "How many days from 2024-01-01 to 2024-03-01?"})
        + "\n"
    )
    store = str(tmp_path / "store")
    command = (
        "evolve",
        str(tasks),
        "--scripted",
        "--run-dir",
        str(tmp_path / "run"),
        "--store",
        store,
        "--set",
        "tool_approval=new",
    )
    paused = _insitu(*command)
    assert paused.returncode == 1, paused.stderr
    assert "await(s) a review" in paused.stderr
    assert _insitu("tools", "approve", "summarize_numbers", "--store", store).returncode == 0
    assert (
        _insitu("tools", "reject", "compute_date_difference", "--reason", "no", "--store", store)
    ).returncode == 0
    done = _insitu(*command)
    assert done.returncode == 0, done.stderr
    listed = _insitu("tools", "list", "--store", store).stdout
    assert "summarize_numbers" in listed and "compute_date_difference" not in listed
    # The rejected tool is never counted as created (EGL), in steps or predictions.
    [step] = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").open()]
    assert step["tools_created"] == 1
    created = [
        json.loads(line)["tools_created"]
        for line in (tmp_path / "run" / "predictions.jsonl").open()
    ]
    assert sorted(name for names in created for name in names) == ["summarize_numbers"]
