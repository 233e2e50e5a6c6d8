"""Every route of the episode graph, driven by scripted chat models.

The models are test doubles (insitu.testing); the graph, store, sandbox and
tools they drive are the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage

from insitu.sandbox import Sandbox
from insitu.testing import ScriptedChatModel
from insitu.testing.team import SUMMARIZE_NUMBERS, Capability, ScriptedTeam
from insitu.tool_store import ToolStore
from insitu.tool_store.admission import admit_tool

MEAN_TASK = "What is the mean of 3, 5, 10 and 2?"

#: summarize_numbers with a bug its own tests do not catch: negative inputs raise.
SUMMARIZE_REJECTING_NEGATIVES = SUMMARIZE_NUMBERS.source.replace(
    "    v = input.values\n",
    "    v = input.values\n"
    "    if any(x < 0 for x in v):\n"
    "        raise ValueError('negative values are not supported')\n",
)


def events_of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]


def add_library_tool(
    store: ToolStore, source: str, tests: list[dict], sandbox: Sandbox, tmp_path: Path
) -> None:
    """Admit a tool through the real sandbox and add it to the library."""
    spec = admit_tool(source, tests, sandbox=sandbox, scratch_dir=tmp_path / "admit")
    store.add(spec, origin="manual")


def test_creates_a_tool_then_reuses_it(run_episode, store: ToolStore) -> None:
    team = ScriptedTeam()
    first, events = run_episode(MEAN_TASK, team.model())
    assert first.status == "completed"
    assert first.answer == "mean 5, median 4"
    assert first.tools_created == ["summarize_numbers"]
    assert first.metrics["tools_created"] == 1
    assert first.metrics["tool_invocations"] == first.metrics["tool_successes"] == 1
    progress = [e["event"] for e in events if not e.get("detail")]
    assert progress[:4] == ["retrieved", "planned", "building", "admitted"]
    calls = [e for e in events if e["event"] == "model_call"]
    assert calls and all(e["detail"] and e["role"] and "latency_s" in e for e in calls)
    record = store.get("summarize_numbers")
    assert record.version == 1 and record.created_by_task == first.task_id
    assert record.stats.calls == 0  # a local tool's calls are not library statistics
    built = team.role_calls["tool_developer"]

    second, events = run_episode("Compute the average of 1, 2, 3 and 10", team.model())
    assert second.status == "completed"
    assert second.answer == "mean 4, median 2.5"
    assert second.tools_created == []
    assert second.tools_used == ["summarize_numbers@1"]
    assert team.role_calls["tool_developer"] == built  # nothing was built
    assert not events_of(events, "building")
    assert store.get("summarize_numbers").stats.calls == 1
    assert store.count() == 1


def test_a_rejected_build_is_fixed_from_the_error(run_episode, store: ToolStore) -> None:
    team = ScriptedTeam(first_build_broken=True)
    result, events = run_episode("How many days from 2024-01-01 to 2024-03-01?", team.model())
    assert result.status == "completed"
    assert result.answer == "60 days"
    assert [e["attempt"] for e in events_of(events, "building")] == [1, 2]
    rejected = events_of(events, "rejected")
    assert len(rejected) == 1 and "new_year" in rejected[0]["message"]
    assert store.get("compute_date_difference").version == 1


class LateManagerTeam(ScriptedTeam):
    """A Manager that binds nothing at first, so the Executor has to report the gap."""

    def _manager(self, prompt: str, messages: list[BaseMessage]) -> str:
        if "## Earlier rounds of this task" not in prompt:
            return json.dumps({"bind": [], "requests": [], "guidance": "No tool is needed."})
        return super()._manager(prompt, messages)


def test_executor_reports_a_missing_capability(run_episode, store: ToolStore) -> None:
    team = LateManagerTeam()
    result, events = run_episode(MEAN_TASK, team.model())
    assert result.status == "completed"
    assert result.answer == "mean 5, median 4"
    assert [e["kind"] for e in events_of(events, "executed")] == ["missing_capability", "done"]
    assert result.metrics["rounds"] == 2
    assert result.tools_created == ["summarize_numbers"]
    assert team.role_calls["manager"] == 2


def test_a_failing_library_tool_is_repaired(run_episode, store, sandbox, tmp_path) -> None:
    add_library_tool(
        store, SUMMARIZE_REJECTING_NEGATIVES, SUMMARIZE_NUMBERS.tests, sandbox, tmp_path
    )
    team = ScriptedTeam()
    result, events = run_episode("What is the mean of -3, 5, 10 and 2?", team.model())
    assert [e["kind"] for e in events_of(events, "executed")] == ["tool_failed", "done"]
    assert result.status == "completed"
    assert result.answer == "mean 3.5, median 3.5"
    assert result.tools_repaired == ["summarize_numbers"]
    assert result.tools_created == []
    repaired = store.get("summarize_numbers")
    assert repaired.version == 2
    assert repaired.origin == "repaired" and repaired.parent_version == 1
    assert "negative values" not in repaired.source
    # The old tests are kept with the repaired version.
    assert {t.name for t in repaired.tests} >= {t["name"] for t in SUMMARIZE_NUMBERS.tests}
    stats = store.get("summarize_numbers").stats
    assert stats.failures == 2  # the two failing calls of version 1 were recorded


class HopelessDeveloperTeam(ScriptedTeam):
    """A ToolDeveloper whose modules never pass static checks."""

    def _tool_developer(self, prompt: str, messages: list[BaseMessage]) -> str:
        return "```python\nprint('hello')\n```\n```json\n[]\n```"


def test_tool_developer_gives_up_and_the_answer_says_why(run_episode, store: ToolStore) -> None:
    team = HopelessDeveloperTeam()
    result, events = run_episode(MEAN_TASK, team.model(), max_rounds=2, max_build_attempts=2)
    assert result.status == "incomplete"
    assert result.metrics["rounds"] == 2
    assert len(events_of(events, "build_failed")) == 2
    assert team.role_calls["tool_developer"] == 4  # 2 rounds x 2 attempts
    assert "summarize_numbers" in result.answer
    assert "Could not complete" in result.answer
    assert store.count() == 0


class RestlessExecutorTeam(ScriptedTeam):
    """An Executor that keeps calling its tool and never concludes."""

    def _executor(self, prompt: str, messages: list[BaseMessage]) -> Any:
        return {
            "content": "",
            "tool_calls": [{"name": "summarize_numbers", "args": {"values": [1]}}],
        }


def test_react_step_bound_ends_at_the_integrator(run_episode) -> None:
    team = RestlessExecutorTeam()
    result, events = run_episode(MEAN_TASK, team.model(), max_react_steps=3)
    assert result.status == "incomplete"
    assert [e["kind"] for e in events_of(events, "executed")] == ["step_limit"]
    assert result.metrics["executor_steps"] == 3
    assert result.metrics["tool_invocations"] == 3
    assert "ran out of steps" in result.answer


class NeverEnoughTeam(ScriptedTeam):
    """The Executor always reports a missing capability; the Manager never helps."""

    def _manager(self, prompt: str, messages: list[BaseMessage]) -> str:
        return json.dumps({"bind": [], "requests": [], "guidance": "Try again."})

    def _executor(self, prompt: str, messages: list[BaseMessage]) -> Any:
        call = {"name": "report_missing_capability", "args": {"capability": "x", "why": "y"}}
        return {"content": "", "tool_calls": [call]}


def test_round_bound_ends_at_the_integrator(run_episode) -> None:
    team = NeverEnoughTeam()
    result, events = run_episode(MEAN_TASK, team.model(), max_rounds=3)
    assert result.status == "incomplete"
    assert result.metrics["rounds"] == 3
    assert team.role_calls["manager"] == 3
    assert [e["kind"] for e in events_of(events, "executed")] == ["missing_capability"] * 3
    assert "capability was missing" in result.answer


class RepeatedlyBrokenTeam(ScriptedTeam):
    """Repairs keep the bug, so the repair bound must end the loop."""

    def _tool_developer(self, prompt: str, messages: list[BaseMessage]) -> str:
        if prompt.startswith("You are the ToolDeveloper. An existing tool failed"):
            tests = json.dumps(SUMMARIZE_NUMBERS.tests)
            return f"```python\n{SUMMARIZE_REJECTING_NEGATIVES}```\n```json\n{tests}\n```"
        return super()._tool_developer(prompt, messages)


def test_repairs_are_bounded(run_episode, store, sandbox, tmp_path) -> None:
    add_library_tool(
        store, SUMMARIZE_REJECTING_NEGATIVES, SUMMARIZE_NUMBERS.tests, sandbox, tmp_path
    )
    team = RepeatedlyBrokenTeam()
    result, _ = run_episode(
        "What is the mean of -3, 5, 10 and 2?",
        team.model(),
        max_repairs=1,
        max_rounds=1,
        max_build_attempts=1,
    )
    assert result.status == "incomplete"
    assert result.tools_repaired == []
    assert store.get("summarize_numbers").version == 1  # nothing broken was committed


# --------------------------------------------------------------- malformed output


def test_manager_garbage_is_reasked_then_used(run_episode) -> None:
    team = ScriptedTeam()
    manager_replies = iter(
        [
            "Sure! I think we should compute the mean.",  # no JSON at all
            '```json\n{"bind": ["made_up_tool"], "requests": []}\n```',  # unknown name
        ]
    )

    def responder(messages: list[BaseMessage], tools: list[dict]) -> Any:
        text = str(messages[0].content)
        if text.startswith("You are the Manager"):
            reply = next(manager_replies, None)
            if reply is not None:
                return reply
        return team.respond(messages, tools)

    result, events = run_episode(MEAN_TASK, ScriptedChatModel(responder=responder))
    assert result.status == "completed"
    reasks = events_of(events, "reask")
    assert len(reasks) == 2
    assert "made_up_tool" in reasks[1]["message"]


def test_manager_that_never_gives_a_plan_fails_clearly(run_episode, store: ToolStore) -> None:
    def responder(messages: list[BaseMessage], tools: list[dict]) -> Any:
        text = str(messages[0].content)
        if text.startswith("You are the Manager"):
            return '{"bind": ["nothing_here"], "requests": [{"name": "Bad Name!"}'  # truncated
        return ScriptedTeam().respond(messages, tools)

    result, events = run_episode(MEAN_TASK, ScriptedChatModel(responder=responder), max_reasks=1)
    assert result.status == "incomplete"
    assert "Planning failed" in result.answer or "no usable plan" in result.answer
    assert len(events_of(events, "reask")) == 1
    assert store.count() == 0


def test_tool_developer_reply_without_code_is_retried(run_episode) -> None:
    team = ScriptedTeam()
    calls = {"n": 0}

    def responder(messages: list[BaseMessage], tools: list[dict]) -> Any:
        if str(messages[0].content).startswith("You are the ToolDeveloper") and calls["n"] == 0:
            calls["n"] += 1
            return "I would write a function that computes the mean."
        return team.respond(messages, tools)

    result, events = run_episode(MEAN_TASK, ScriptedChatModel(responder=responder))
    assert result.status == "completed"
    rejected = events_of(events, "rejected")
    assert len(rejected) == 1 and "```python" in rejected[0]["message"]


def test_executor_empty_reply_and_unknown_tool_are_survived(run_episode) -> None:
    team = ScriptedTeam()
    script = iter(
        [
            "",  # empty reply: nudged
            {"content": "", "tool_calls": [{"name": "no_such_tool", "args": {}}]},
        ]
    )

    def responder(messages: list[BaseMessage], tools: list[dict]) -> Any:
        if str(messages[0].content).startswith("You are the Executor"):
            scripted = next(script, None)
            if scripted is not None:
                return scripted
            # From here on the team's executor sees an error result first; answer directly.
            results = [m for m in messages if m.type == "tool"]
            if results and "no tool named" in str(results[-1].content):
                return {
                    "content": "",
                    "tool_calls": [
                        {"name": "summarize_numbers", "args": {"values": [3, 5, 10, 2]}}
                    ],
                }
        return team.respond(messages, tools)

    result, _ = run_episode(MEAN_TASK, ScriptedChatModel(responder=responder))
    assert result.status == "completed"
    assert result.answer == "mean 5, median 4"


def test_integrator_and_reflection_failures_still_give_an_answer(run_episode) -> None:
    team = ScriptedTeam()

    def responder(messages: list[BaseMessage], tools: list[dict]) -> Any:
        text = str(messages[0].content)
        if text.startswith("You are the Integrator"):
            return ""
        if text.startswith("You are reviewing"):
            raise RuntimeError("reflection endpoint down")
        return team.respond(messages, tools)

    result, _ = run_episode(MEAN_TASK, ScriptedChatModel(responder=responder))
    assert result.status == "completed"
    assert "mean 5, median 4" in result.answer  # the Executor's own result
    assert result.tools_created == ["summarize_numbers"]


def test_invalid_task_is_rejected_before_anything_runs(run_episode, store: ToolStore) -> None:
    from insitu.nodes.workspace import InvalidTaskError

    with pytest.raises(InvalidTaskError):
        run_episode("   ", ScriptedTeam().model())
    assert store.count() == 0


COUNT_LINES = Capability(
    name="count_text_lines",
    description="Counts the lines of a text file and the non-empty ones, and returns both.",
    source="""from pathlib import Path

from pydantic import BaseModel, Field

__TOOL_META__ = {
    "name": "count_text_lines",
    "description": "Counts the lines of a text file and the non-empty ones, and returns both.",
    "dependencies": [],
}


class InputModel(BaseModel):
    path: str = Field(description="The file, relative to the working directory.")


class OutputModel(BaseModel):
    lines: int
    non_empty: int


def run(input: InputModel) -> OutputModel:
    text = Path(input.path).read_text()
    rows = text.splitlines()
    return OutputModel(lines=len(rows), non_empty=sum(1 for r in rows if r.strip()))
""",
    tests=[
        {
            "name": "three",
            "input": {"path": "a.txt"},
            "files": {"a.txt": "x\n\ny\n"},
            "expect": {"lines": 3, "non_empty": 2},
        }
    ],
    pattern=r"lines (?:are )?in (\S+\.txt)",
    arguments=lambda m: {"path": m.group(1)},
    answer=lambda out: f"{out['lines']} lines, {out['non_empty']} non-empty",
)


def test_task_files_reach_the_tools_working_directory(run_episode, tmp_path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("alpha\n\nbeta\ngamma\n")
    team = ScriptedTeam(capabilities=(COUNT_LINES,))
    result, _ = run_episode("How many lines are in notes.txt?", team.model(), files=(notes,))
    assert result.status == "completed"
    assert result.answer == "4 lines, 3 non-empty"


def test_a_missing_task_file_is_a_clear_error(run_episode, store, tmp_path) -> None:
    from insitu.nodes.workspace import InvalidTaskError

    with pytest.raises(InvalidTaskError, match="does not exist"):
        run_episode(
            "Count lines in gone.txt", ScriptedTeam().model(), files=(tmp_path / "gone.txt",)
        )
    assert store.count() == 0


def test_the_result_says_where_the_tools_ran(run_episode) -> None:
    result, _ = run_episode(MEAN_TASK, ScriptedTeam().model())
    assert result.sandbox["backend"] in ("bwrap", "degraded")
    assert result.sandbox["isolation"] == (
        "strong" if result.sandbox["backend"] == "bwrap" else "weak"
    )


def test_an_executor_model_without_tool_calling_fails_at_start(store, sandbox) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from insitu.api import run_task
    from insitu.llm import ConfigurationError

    common = {"tool_store": store, "sandbox": sandbox, "checkpoint": False}
    with pytest.raises(ConfigurationError, match="cannot call tools: it does not implement"):
        run_task(
            MEAN_TASK,
            models=FakeListChatModel(responses=["x"]),
            context={"store_dir": str(store.path)},
            **common,
        )
    # The JSON text protocol needs no bind_tools: the same model runs the episode.
    replies = ['{"bind": [], "requests": []}', '{"answer": "mean 5"}', "mean 5", "- noted"]
    result = run_task(
        MEAN_TASK,
        models=FakeListChatModel(responses=replies),
        context={"store_dir": str(store.path), "tool_calling": "text"},
        **common,
    )
    assert result.status == "completed" and result.answer == "mean 5"
