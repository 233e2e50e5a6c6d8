"""The Manager's prompt does not grow with the library; interrupted episodes resume."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage

from insitu.api import run_task
from insitu.checkpoints import sqlite_checkpointer
from insitu.graphs.episode import create_episode_graph
from insitu.testing import ScriptedChatModel
from insitu.testing.team import ScriptedTeam, prompt_text
from insitu.tool_store import ChangeSet, ToolStore
from insitu.tool_store.testing import make_spec

VERBS = ["parse", "convert", "fetch", "compute", "extract", "format", "merge", "score", "rank"]
OBJECTS = ["csv_rows", "json_keys", "dates", "units", "prices", "matrix", "polynomial", "logs"]


def fill_library(store: ToolStore, count: int) -> None:
    """Add ``count`` distinct synthetic tools in one commit."""
    rng = random.Random(count)
    changes = ChangeSet()
    for i in range(count):
        verb, obj = rng.choice(VERBS), rng.choice(OBJECTS)
        description = (
            f"{verb.capitalize()}s {obj.replace('_', ' ')} given as input variant {i} and "
            f"returns the {rng.choice(['result', 'table', 'summary', 'list'])} of it."
        )
        changes.add(make_spec(f"{verb}_{obj}_{i}", description, body=f"return {{'result': {i}}}"))
    store.commit(changes)


def manager_prompt(store: ToolStore, tmp_path: Path) -> str:
    team = ScriptedTeam()
    prompts: list[str] = []

    def responder(messages: list[BaseMessage], tools: list[dict]) -> Any:
        text = prompt_text(messages)
        if text.startswith("You are the Manager"):
            prompts.append(text)
        return team.respond(messages, tools)

    run_task(
        "What is the mean of 3, 5, 10 and 2?",
        models=ScriptedChatModel(responder=responder),
        tool_store=store,
        context={"store_dir": str(tmp_path), "freeze_library": True},
        checkpoint=False,
    )
    return prompts[0]


def test_manager_prompt_size_does_not_grow_with_the_library(tmp_path: Path) -> None:
    sizes = {}
    for count in (10, 10_000):
        with ToolStore.open(tmp_path / f"lib-{count}", embedding="hashing") as store:
            fill_library(store, count)
            assert store.count() == count
            sizes[count] = len(manager_prompt(store, tmp_path / f"run-{count}"))
    assert abs(sizes[10_000] - sizes[10]) / sizes[10] < 0.20, sizes


def test_interrupted_episode_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """A run killed after planning resumes by thread id without re-planning."""
    team = ScriptedTeam()
    with ToolStore.open(tmp_path / "store", embedding="hashing") as store:
        context = {"store_dir": str(tmp_path)}
        with sqlite_checkpointer(tmp_path) as saver:
            graph = create_episode_graph(checkpointer=saver, models=team.model(), tool_store=store)
            config = {"configurable": {"thread_id": "t1"}}
            # Stop before the ToolDeveloper runs, as a crash there would.
            graph.invoke(
                {"task": "What is the mean of 3, 5, 10 and 2?"},
                config,
                context=context,
                interrupt_before=["build_tools"],
            )
            assert graph.get_state(config).next == ("build_tools",)
            assert store.count() == 0
        planned = team.role_calls["manager"]
        # A new process would do exactly this: resume the thread from the checkpoint file.
        result = run_task(
            None, thread_id="t1", models=team.model(), tool_store=store, context=context
        )
        assert result.status == "completed"
        assert result.answer == "mean 5, median 4"
        assert team.role_calls["manager"] == planned  # the plan was not made again
        assert store.get("summarize_numbers").version == 1


def test_an_episode_resumed_after_its_statistics_counts_each_call_once(
    tmp_path: Path, sandbox
) -> None:
    """A crash right after the calls were recorded, before the step was checkpointed."""
    from insitu.testing.team import SUMMARIZE_NUMBERS
    from insitu.tool_store.admission import admit_tool

    team = ScriptedTeam()
    with ToolStore.open(tmp_path / "store", embedding="hashing") as store:
        spec = admit_tool(
            SUMMARIZE_NUMBERS.source,
            SUMMARIZE_NUMBERS.tests,
            sandbox=sandbox,
            scratch_dir=tmp_path / "admit",
        )
        store.add(spec, origin="manual")
        record = store.record_calls
        crashed: list[str] = []

        def record_then_crash(*args: Any, **kwargs: Any) -> int:
            recorded = record(*args, **kwargs)
            if not crashed:
                crashed.append("once")
                raise RuntimeError("the process died after writing the statistics")
            return recorded

        store.record_calls = record_then_crash  # type: ignore[method-assign]
        context = {"store_dir": str(tmp_path)}
        kwargs = {
            "models": team.model(),
            "tool_store": store,
            "sandbox": sandbox,
            "context": context,
        }
        with pytest.raises(RuntimeError):
            run_task("What is the mean of 3, 5, 10 and 2?", thread_id="t1", **kwargs)
        assert crashed and store.get("summarize_numbers").stats.calls == 1
        result = run_task(None, thread_id="t1", **kwargs)
        assert result.status == "completed" and result.tools_used == ["summarize_numbers@1"]
        assert store.get("summarize_numbers").stats.calls == 1
