"""Learning that lasts, through the real graphs: experiences, usage notes, harvested cases.

The models are the scripted team (a test double that recognises each prompt);
the graphs, the store, the sandbox and the tools are real. What the roles saw
is checked in the prompts the scripted model was given.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from langchain_core.messages import BaseMessage, ToolMessage

from insitu.cli import main
from insitu.graphs.evolve import create_evolve_graph
from insitu.nodes.executor import _small_output
from insitu.nodes.manager import EXPERIENCES_HEADING, experiences_section
from insitu.sandbox import Outcome
from insitu.testing.team import SUMMARIZE_NUMBERS, ScriptedTeam, prompt_text
from insitu.tool_store import ChangeSet, ToolStore, ToolTest
from insitu.tool_store.admission import admit_tool
from insitu.tool_store.learning import Experience, HarvestedCase, ToolRef, UsageNote
from insitu.tool_store.testing import make_spec

MEAN = "What is the mean of 3, 5, 10 and 2?"
#: summarize_numbers with a bug its own tests do not catch: negative inputs raise.
REJECTS_NEGATIVES = SUMMARIZE_NUMBERS.source.replace(
    "    v = input.values\n",
    "    v = input.values\n"
    "    if any(x < 0 for x in v):\n"
    "        raise ValueError('negative values are not supported')\n",
)
#: A "fix" that also changes the median of even-length lists: the tool's own tests pass
#: (they never check such a median), a call harvested from real use does not.
CHANGES_MEDIAN = SUMMARIZE_NUMBERS.source.replace(
    "median=statistics.median(v)", "median=sorted(v)[len(v) // 2]"
)


class RecordingTeam(ScriptedTeam):
    """The scripted team, keeping every prompt it was given (role -> prompts)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prompts: list[str] = []

    def respond(self, messages: list[BaseMessage], tools: list[dict[str, Any]]) -> Any:
        self.prompts.append(prompt_text(messages))
        return super().respond(messages, tools)

    def last(self, marker: str) -> str:
        return [p for p in self.prompts if p.startswith(marker)][-1]


def section(prompt: str, heading: str) -> str:
    """A ``## `` section of a prompt, heading included, up to the next one."""
    match = re.search(rf"(## {re.escape(heading)}.*?)(?=\n## |\Z)", prompt, re.DOTALL)
    return match.group(1) if match else ""


def library_tool(store: ToolStore, sandbox, source: str, tmp_path: Path) -> None:
    spec = admit_tool(source, SUMMARIZE_NUMBERS.tests, sandbox=sandbox, scratch_dir=tmp_path / "a")
    store.add(spec, origin="manual")


def mean_case(store: ToolStore, values: list[float]) -> HarvestedCase:
    """The harvested case of a real summarize_numbers call (its exact output)."""
    expect = {
        "count": len(values),
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "stdev": statistics.pstdev(values),
        "minimum": min(values),
        "maximum": max(values),
    }
    head = store.get("summarize_numbers")
    return HarvestedCase(
        name="summarize_numbers",
        case=ToolTest(name="harvested_even", input={"values": values}, expect=expect),
        source_ref=head.ref,
        source_hash=head.hash,
    )


# ------------------------------------------------------------------ one episode, then another


def test_an_episode_leaves_an_experience_a_note_and_a_case_the_next_one_uses(
    run_episode, store: ToolStore
) -> None:
    team = RecordingTeam()
    first, _ = run_episode(MEAN, team.model())
    assert first.status == "completed"
    [experience] = store.experiences()
    assert experience.summary == MEAN and experience.status == "completed"
    assert experience.task_id == first.task_id and experience.tokens > 0
    assert [(t.ref, t.called) for t in experience.tools] == [("summarize_numbers@1", True)]
    assert experience.guidance == "Call summarize_numbers."
    assert experience.lesson.startswith("- Scripted reflection")
    assert experience.generation == store._generation()
    # The tool's first successful use taught how to call it; the call became a case.
    note = store.usage_notes("summarize_numbers", 1)
    assert note is not None and '"values": [3.0, 5.0, 10.0, 2.0]' in note.notes
    [case] = store.harvested_cases("summarize_numbers")
    assert case.case.input == {"values": [3.0, 5.0, 10.0, 2.0]}
    assert case.case.expect["median"] == 4.0 and case.source_ref == "summarize_numbers@1"

    second, _ = run_episode("Compute the average of 1, 2, 3 and 10", team.model())
    assert second.status == "completed"
    recalled = section(team.last("You are the Manager"), "Experience from similar earlier tasks")
    assert f"- [completed] {MEAN} | tools: summarize_numbers@1 | guidance:" in recalled
    notes = section(team.last("You are the Executor"), "Notes on calling these tools")
    assert f"- summarize_numbers: {note.notes}" in notes
    assert len(store.experiences()) == 2
    assert team.role_calls.get("usage_notes") == 1  # nothing new to learn the second time

    # insitu tools show lists the note and the harvested cases.
    shown = CliRunner().invoke(
        main, ["--store", str(store.path), "tools", "show", "summarize_numbers"]
    )
    assert shown.exit_code == 0, shown.output
    assert f"usage notes @1 (from summarize_numbers@1): {note.notes}" in shown.output
    assert "harvested cases: 2" in shown.output
    assert '{"values": [3.0, 5.0, 10.0, 2.0]} -> {"count": 4' in shown.output

    # Archived, its references say so in the Manager's view.
    store.archive("summarize_numbers", "replaced by hand")
    run_episode("What is the mean of 7, 8 and 9?", team.model())
    recalled = section(team.last("You are the Manager"), "Experience from similar earlier tasks")
    assert "summarize_numbers@1 (no longer usable: archived: replaced by hand)" in recalled


def test_the_experiences_share_of_the_managers_prompt_is_bounded(
    run_episode, store: ToolStore
) -> None:
    long = [
        Experience(
            summary=f"What is the mean of these numbers, case {i}: " + "1, 2, " * 200,
            status="incomplete",
            guidance="g" * 5000,
            lesson="l" * 5000,
            outcome="o" * 5000,
            tools=[ToolRef(name=f"tool_number_{j}", version=1) for j in range(50)],
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        for i in range(8)
    ]
    store.commit(ChangeSet(experiences=long))
    team = RecordingTeam()
    run_episode(MEAN, team.model(), experiences_top_k=5, experiences_max_chars=500)
    shown = section(team.last("You are the Manager"), "Experience from similar earlier tasks")
    assert shown.startswith(EXPERIENCES_HEADING)
    assert 300 < len(shown) <= 500  # filled, and within its bound
    assert shown.count("\n- [incomplete]") >= 2
    run_episode(MEAN, team.model(), experiences_top_k=5, experiences_max_chars=0)
    assert "## Experience" not in team.last("You are the Manager")


def test_experiences_section_never_exceeds_its_bound() -> None:
    experiences = [
        Experience(
            summary="s" * 300,
            status="completed",
            lesson="x" * 800,
            tools=[ToolRef(name="a_b", version=i) for i in range(20)],
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        for _ in range(5)
    ]
    for bound in range(0, 3000, 37):
        text = experiences_section(experiences, bound)
        assert len(text) <= bound
        assert (text != "") == (bound - len(EXPERIENCES_HEADING) - 1 >= 80)


def test_a_large_output_is_not_carried_to_be_harvested() -> None:
    small = Outcome(ok=True, kind="ok", output={"result": "x" * 100})
    large = Outcome(ok=True, kind="ok", output={"result": "x" * 100_000})
    failed = Outcome.failure("exception", "boom")
    assert _small_output(small) == {"output": {"result": "x" * 100}}
    assert _small_output(large) == {} and _small_output(failed) == {}


class JunkNotesTeam(RecordingTeam):
    """An Executor that first passes the numbers as a string (a failed call worth a note),
    and usage-notes replies that are junk (unknown tools, broken JSON, wrong types)."""

    junk = ('{"notes": [{"tool": "no_such_tool", "notes": "x"}]}', "{'notes': [", '{"notes": 5}')

    def _executor(self, prompt: str, messages: list[BaseMessage]) -> Any:
        if not any(isinstance(m, ToolMessage) for m in messages):
            bad = {"values": "3, 5, 10 and 2"}
            return {"content": "", "tool_calls": [{"name": "summarize_numbers", "args": bad}]}
        return super()._executor(prompt, messages)

    def _usage_notes(self, prompt: str, messages: list[BaseMessage]) -> str:
        return self.junk[sum(1 for p in self.prompts if p.startswith("You are distilling")) % 3]


def test_junk_notes_replies_lose_nothing_and_fail_nothing(
    run_episode, store: ToolStore, sandbox, tmp_path: Path
) -> None:
    library_tool(store, sandbox, SUMMARIZE_NUMBERS.source, tmp_path)
    store.commit(ChangeSet(usage_notes=[UsageNote(name="summarize_numbers", notes="a list")]))
    team = JunkNotesTeam()
    result, events = run_episode(MEAN, team.model())
    assert result.status == "completed"
    assert result.metrics["tool_invocations"] == 2  # the failed call, then the right one
    assert any(e["event"] == "notes_skipped" for e in events)  # asked, and re-asked, in vain
    assert store.usage_notes("summarize_numbers", 1).notes == "a list"  # kept as it was
    assert len(store.experiences()) == 1  # the rest of what was learned is committed


# ------------------------------------------------------------------ harvested cases vs repairs


class ChangingRepairTeam(RecordingTeam):
    """A ToolDeveloper whose repair fixes the bug but changes the median of even lists."""

    def _tool_developer(self, prompt: str, messages: list[BaseMessage]) -> str:
        if "An existing tool failed" not in prompt:
            return super()._tool_developer(prompt, messages)
        tests = SUMMARIZE_NUMBERS.tests
        return f"```python\n{CHANGES_MEDIAN}```\n```json\n{json.dumps(tests)}\n```"


def test_a_repair_that_changes_a_harvested_output_is_refused(
    run_episode, store: ToolStore, sandbox, tmp_path: Path
) -> None:
    library_tool(store, sandbox, REJECTS_NEGATIVES, tmp_path)
    store.commit(ChangeSet(cases=[mean_case(store, [3.0, 5.0, 10.0, 2.0])]))
    team = ChangingRepairTeam()
    result, events = run_episode(
        "What is the mean of -3, 5, 10 and 2?", team.model(), max_build_attempts=2
    )
    assert result.tools_repaired == []
    assert store.get("summarize_numbers").version == 1
    reasons = [e["message"] for e in events if e["event"] == "rejected"]
    assert reasons and all("harvested from its real use" in r for r in reasons)


def test_a_repair_that_keeps_the_harvested_outputs_is_admitted(
    run_episode, store: ToolStore, sandbox, tmp_path: Path
) -> None:
    library_tool(store, sandbox, REJECTS_NEGATIVES, tmp_path)
    store.commit(ChangeSet(cases=[mean_case(store, [3.0, 5.0, 10.0, 2.0])]))
    result, _ = run_episode("What is the mean of -3, 5, 10 and 2?", ScriptedTeam().model())
    assert result.status == "completed" and result.tools_repaired == ["summarize_numbers"]
    assert store.get("summarize_numbers").version == 2
    # The case harvested from version 1, which the repair reproduces, stays; the call of
    # the repaired version joins it.
    cases = store.harvested_cases("summarize_numbers")
    assert cases[0].case.name == "harvested_even" and len(cases) == 2
    assert cases[1].source_ref == "summarize_numbers@2"


# ------------------------------------------------------------------ a batch: defer, merge


#: summarize_numbers under another name: a functional duplicate that absorbing merges.
PROFILE = dataclasses.replace(
    SUMMARIZE_NUMBERS,
    name="profile_numbers",
    description="Profiles a list of numbers and returns count, mean, median, deviation, min "
    "and max.",
    source=SUMMARIZE_NUMBERS.source.replace('"summarize_numbers"', '"profile_numbers"').replace(
        '"Computes count, mean, median, population standard deviation, minimum and "\n'
        '    "maximum of a list of numbers and returns them."',
        repr("Profiles a list of numbers and returns count, mean, median, deviation, min and max."),
    ),
    pattern=r"profile[^\d-]*((?:-?\d+(?:\.\d+)?[,\s]*(?:and\s+)?)+)",
)


def _profile_team(source: str) -> RecordingTeam:
    keeper = dataclasses.replace(SUMMARIZE_NUMBERS, source=source)
    return RecordingTeam(capabilities=(PROFILE, keeper))


def _batch(store: ToolStore, sandbox, team: ScriptedTeam) -> dict[str, Any]:
    graph = create_evolve_graph(models=team.model(), tool_store=store, sandbox=sandbox)
    return graph.invoke(
        {"tasks": [{"id": "t0", "question": "Profile 4, 8 and 15"}], "batch_id": "b1"},
        context={"store_dir": str(store.path)},
    )


def test_a_batch_commits_its_learning_with_the_merge_that_renames_it(
    tmp_path: Path, sandbox
) -> None:
    with ToolStore.open(tmp_path / "store", embedding="minilm") as store:
        library_tool(store, sandbox, SUMMARIZE_NUMBERS.source, tmp_path)
        store.commit(ChangeSet(cases=[mean_case(store, [3.0, 5.0, 10.0, 2.0])]))
        final = _batch(store, sandbox, _profile_team(SUMMARIZE_NUMBERS.source))
        result = final["results"][0]
        assert result["tools_created"] == ["profile_numbers"]
        assert len(result["learning"]["experiences"]) == 1  # deferred to the batch
        [merge] = final["absorb"]["merged"]
        assert merge["into"] == "summarize_numbers"
        assert sorted(merge["from"]) == ["profile_numbers", "summarize_numbers"]
        [experience] = store.experiences()
        assert experience.commit_id.startswith("batch:b1:")
        [ref] = experience.tools
        assert (ref.ref, ref.renamed_from, ref.stale) == (
            "summarize_numbers@2",
            "profile_numbers@1",
            None,
        )
        cases = store.harvested_cases("summarize_numbers")
        assert {c.case.name for c in cases} >= {"harvested_even"}
        assert any(c.renamed_from == "profile_numbers@1" for c in cases)
        assert store.usage_notes("profile_numbers") is None  # a merged-away tool's note


def test_a_merge_that_changes_a_harvested_output_is_refused(tmp_path: Path, sandbox) -> None:
    with ToolStore.open(tmp_path / "store", embedding="minilm") as store:
        library_tool(store, sandbox, SUMMARIZE_NUMBERS.source, tmp_path)
        store.commit(ChangeSet(cases=[mean_case(store, [3.0, 5.0, 10.0, 2.0])]))
        final = _batch(store, sandbox, _profile_team(CHANGES_MEDIAN))
        assert final["absorb"]["merged"] == []
        [rejected] = final["absorb"]["merge_rejected"]
        assert "harvested from its real use" in rejected["reason"]
        assert store.get("summarize_numbers").version == 1
        assert store.get("profile_numbers").status == "active"  # kept apart, added as built
        [experience] = store.experiences()
        assert [t.ref for t in experience.tools] == ["profile_numbers@1"]


# ------------------------------------------------------------------ solved once, solved again


def test_a_task_solved_once_is_solved_again_on_its_reused_plan_for_fewer_tokens(
    run_episode, store: ToolStore
) -> None:
    team = RecordingTeam()
    first, _ = run_episode(MEAN, team.model())
    assert first.status == "completed" and first.tools_created == ["summarize_numbers"]
    managers, reflections = team.role_calls.get("manager"), team.role_calls.get("reflection")

    again, events = run_episode(MEAN, team.model())

    assert again.status == "completed" and again.answer == first.answer
    assert again.tools_created == [] and again.tools_used == ["summarize_numbers@1"]
    assert team.role_calls.get("manager") == managers  # the plan was not asked for again
    assert team.role_calls.get("reflection") == reflections  # nothing new to reflect on
    planned = next(e for e in events if e["event"] == "planned")
    [experience] = store.experiences()  # no duplicate experience of the same task
    assert planned["experience"] == experience.id and "plan reused" in planned["message"]
    assert sum(t["total_tokens"] for t in again.usage.values()) < 0.6 * sum(
        t["total_tokens"] for t in first.usage.values()
    )


def test_a_plan_is_not_reused_when_its_tool_is_gone_or_reuse_is_off(
    run_episode, store: ToolStore
) -> None:
    team = RecordingTeam()
    run_episode(MEAN, team.model())
    managers = team.role_calls.get("manager")
    off, _ = run_episode(MEAN, team.model(), reuse_plan_min_similarity=None)
    assert off.status == "completed" and team.role_calls.get("manager") == managers + 1
    store.archive("summarize_numbers", "replaced by hand")
    run_episode(MEAN, team.model())
    assert team.role_calls.get("manager") > managers + 1  # stale: the Manager plans anew


def test_recalled_experiences_offer_the_tools_retrieval_missed(
    run_episode, store: ToolStore, sandbox, tmp_path: Path
) -> None:
    """With a crowded library the search may not return a tool an experience names."""
    team = RecordingTeam()
    run_episode(MEAN, team.model())
    for index in range(6):  # near-namesakes that outrank it for this task
        spec = make_spec(
            f"compute_mean_variant_{index}",
            f"Mean of 3, 5, 10 and 2 numbers, variant {index}: the mean of numbers.",
        )
        store.add(spec)
    task = "What is the mean of 3, 5, 10 and 2, please?"
    result, events = run_episode(
        task,
        team.model(),
        retrieval_k=2,
        reuse_plan_min_similarity=None,
    )
    searched = [
        h.record.name for h in store.search("What is the mean of 3, 5, 10 and 2, please?", k=2)
    ]
    assert "summarize_numbers" not in searched  # the search alone misses it
    retrieved = next(e for e in events if e["event"] == "retrieved")
    assert retrieved["count"] == 3
    offered = section(team.last("You are the Manager"), "Candidate tools")
    assert "summarize_numbers" in offered
    assert result.status == "completed" and result.tools_used == ["summarize_numbers@1"]
