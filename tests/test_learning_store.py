"""What the team learns, in the store: written with the commit, retrieved, and following tools.

Experiences, usage notes and harvested cases are written in the transaction of
their commit (a kill -9 inside it leaves none of them, and no tool either),
idempotently by commit id, and follow merges (renamed, old reference kept),
archives (stale, until restored) and rollbacks (stale; the note carried back).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from insitu.tool_store import ChangeSet, ToolStore, ToolTest
from insitu.tool_store.learning import (
    MAX_LESSON_CHARS,
    Experience,
    HarvestedCase,
    ToolRef,
    UsageNote,
)
from insitu.tool_store.testing import make_spec

MEAN = make_spec("compute_mean", "Computes the arithmetic mean of a list of numbers.")
AVG = make_spec("average_values", "Returns the average of numbers.", body="return {'result': 1}")
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path, open_library: Callable[..., ToolStore]) -> Iterator[ToolStore]:
    """An empty library on each record backend (``open_library``)."""
    with open_library(tmp_path / "store", embedding="hashing") as opened:
        yield opened


def experience(task: str, *tools: str, status: str = "completed", **extra: object) -> Experience:
    fields: dict[str, object] = {
        "task_id": f"t-{len(task)}-{task[:12]}",
        "summary": task,
        "status": status,
        "guidance": "Call the tool with the numbers.",
        "lesson": "- it worked",
        "tools": [
            ToolRef(name=t.split("@")[0], version=int(t.split("@")[1]), called=True) for t in tools
        ],
        "tokens": 123,
        "created_at": WHEN,
    }
    return Experience(**{**fields, **extra})


def case(name: str, ref: str, values: str, result: object, source_hash: str = "") -> HarvestedCase:
    return HarvestedCase(
        name=name,
        case=ToolTest(
            name=f"harvested_{values}", input={"values": values}, expect={"result": result}
        ),
        source_ref=ref,
        source_hash=source_hash,
    )


def test_an_experience_is_committed_with_the_tools_and_found_again(store: ToolStore) -> None:
    changes = ChangeSet().add(MEAN)
    changes.experiences.append(experience("What is the mean of 3, 5 and 10?", "compute_mean@1"))
    result = store.commit(changes, commit_id="episode:t1:x")
    assert result.added == ["compute_mean@1"] and len(result.experiences) == 1
    assert "learned 1 experience(s)" in result.summary()
    [found] = store.search_experiences("the mean of 4, 8 and 1", k=3)
    assert found.summary == "What is the mean of 3, 5 and 10?"
    assert found.generation == store._generation() and found.commit_id == "episode:t1:x"
    assert [t.ref for t in found.tools] == ["compute_mean@1"] and found.tokens == 123
    # Idempotent: the same commit id writes nothing more.
    assert store.commit(changes, commit_id="episode:t1:x").replayed
    assert len(store.experiences()) == 1
    # Learning alone does not move the library's generation.
    generation = store._generation()
    alone = ChangeSet(experiences=[experience("Median of 1, 2 and 9?", "compute_mean@1")])
    store.commit(alone, commit_id="episode:t2:y")
    assert store._generation() == generation
    assert len(store.search_experiences("median", k=5)) == 2


def test_records_are_bounded_and_junk_fields_are_cut_not_refused() -> None:
    long = experience("x" * 10_000, lesson="y" * 10_000)
    assert len(long.summary) <= 300 and len(long.lesson) <= MAX_LESSON_CHARS
    assert len(UsageNote(name="a_b", notes="z" * 50_000).notes) <= 2000


def test_text_that_is_not_utf8_never_fails_a_commit(store: ToolStore) -> None:
    """A model's reply with a lone surrogate (the fuzz tests send them) is stored, replaced."""
    store.add(MEAN)
    junk = experience("mean of 1\ud800 and 2", "compute_mean@1", guidance="\udfff go")
    note = UsageNote(name="compute_mean", notes="values\ud800: a list")
    result = store.commit(ChangeSet(experiences=[junk], usage_notes=[note]), commit_id="c")
    assert result.experiences and result.notes == ["compute_mean@1"]
    assert store.experiences()[0].summary == "mean of 1? and 2"
    assert store.usage_notes("compute_mean").notes == "values?: a list"


def test_experiences_follow_a_merge_an_archive_and_a_rollback(store: ToolStore) -> None:
    store.add(MEAN)
    store.add(AVG)
    store.commit(
        ChangeSet(
            experiences=[
                experience("Mean of 1 and 2?", "compute_mean@1"),
                experience("Average of 5 and 7?", "average_values@1"),
            ]
        )
    )
    merged = make_spec("compute_mean", "Mean of numbers (merged).", body="return {'result': 2}")
    store.commit(
        ChangeSet()
        .update(
            "compute_mean",
            merged,
            origin="merged",
            merged_from=["compute_mean@1", "average_values@1"],
        )
        .archive("average_values", "merged into compute_mean")
    )
    by_task = {e.summary: e for e in store.experiences()}
    [ref] = by_task["Average of 5 and 7?"].tools
    assert (ref.name, ref.version, ref.renamed_from, ref.stale) == (
        "compute_mean",
        2,
        "average_values@1",
        None,
    )
    # A rollback marks the undone version's references stale.
    store.commit(ChangeSet(experiences=[experience("Mean of 9 and 9?", "compute_mean@2")]))
    store.rollback("compute_mean", 1)
    undone = {e.summary: e for e in store.experiences()}["Mean of 9 and 9?"].tools[0]
    assert undone.stale == "rolled back to version 1"
    kept = {e.summary: e for e in store.experiences()}["Mean of 1 and 2?"].tools[0]
    assert kept.stale is None
    # Archiving marks every reference stale; restoring makes them current again.
    store.archive("compute_mean", "no longer needed")
    assert all(
        t.stale and t.stale.startswith("archived")
        for e in store.experiences()
        for t in e.tools
        if t.stale != "rolled back to version 1"
    )
    store.restore("compute_mean")
    assert {e.summary: e for e in store.experiences()}["Mean of 1 and 2?"].tools[0].stale is None


def test_usage_notes_are_versioned_carried_forward_and_reset_by_a_rollback(
    store: ToolStore,
) -> None:
    store.add(MEAN)
    store.commit(ChangeSet(usage_notes=[UsageNote(name="compute_mean", notes="values: a list")]))
    assert store.usage_notes("compute_mean", 1).notes == "values: a list"
    store.update("compute_mean", make_spec("compute_mean", "Mean v2.", body="return {}"))
    assert store.usage_notes("compute_mean", 2).notes == "values: a list"  # carried forward
    store.commit(ChangeSet(usage_notes=[UsageNote(name="compute_mean", notes="v2: floats only")]))
    assert store.usage_notes("compute_mean", 2).notes == "v2: floats only"
    assert store.usage_notes("compute_mean", 1).notes == "values: a list"
    store.rollback("compute_mean", 1)
    assert store.usage_notes("compute_mean", 3).notes == "values: a list"
    # A note for a tool that does not exist is dropped, nothing else fails.
    result = store.commit(ChangeSet(usage_notes=[UsageNote(name="no_such_tool", notes="x")]))
    assert result.notes == []


def test_harvested_cases_are_bounded_follow_merges_and_need_the_committed_version(
    store: ToolStore,
) -> None:
    store.add(MEAN)
    store.add(AVG)
    head = store.get("compute_mean").hash
    cases = [case("compute_mean", "compute_mean@1", str(i), 0, head) for i in range(7)]
    stale_source = case("compute_mean", "compute_mean@1", "old", 0, "another-hash")
    result = store.commit(ChangeSet(cases=[*cases, stale_source]), cases_per_tool=5)
    assert len(result.cases) == 7  # written, then pruned to the newest five
    kept = store.harvested_cases("compute_mean")
    assert [c.case.input["values"] for c in kept] == ["2", "3", "4", "5", "6"]
    store.commit(ChangeSet(cases=[case("average_values", "average_values@1", "a", 1)]))
    merged = make_spec("compute_mean", "Mean (merged).", body="return {'result': 0}")
    store.commit(
        ChangeSet()
        .update(
            "compute_mean",
            merged,
            origin="merged",
            merged_from=["compute_mean@1", "average_values@1"],
        )
        .archive("average_values", "merged into compute_mean"),
        cases_per_tool=3,
    )
    moved = store.harvested_cases("compute_mean")
    assert len(moved) == 3 and moved[-1].renamed_from == "average_values@1"
    assert store.harvested_cases("average_values") == []


def test_a_kill_inside_the_commit_leaves_no_tool_and_no_experience(tmp_path: Path) -> None:
    """kill -9 style: the process dies after the tools and the experience were written,
    before the transaction's end; the reopened library has neither, and replaying the
    same commit id applies it once."""
    path = tmp_path / "lib"
    ToolStore.open(path, embedding="hashing").close()
    script = textwrap.dedent(
        f"""
        import os
        from datetime import datetime, UTC
        from insitu.tool_store import ChangeSet, ToolStore
        from insitu.tool_store import store as impl
        from insitu.tool_store.learning import Experience
        from insitu.tool_store.testing import make_spec
        real = impl.insert_learning
        def die(*args, **kwargs):
            real(*args, **kwargs)
            os._exit(17)  # the rows are written, the transaction never ends
        impl.insert_learning = die
        store = ToolStore.open({str(path)!r}, embedding="hashing")
        changes = ChangeSet().add(make_spec("compute_mean", "Mean."))
        changes.experiences.append(Experience(summary="Mean of 1, 2?", status="completed",
                                              created_at=datetime(2026, 1, 1, tzinfo=UTC)))
        store.commit(changes, commit_id="episode:k:1")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 17, proc.stderr
    with ToolStore.open(path, embedding="hashing") as s:
        assert s.count("all") == 0
        assert s.experiences() == [] and s.search_experiences("mean", k=3) == []
        changes = ChangeSet().add(MEAN)
        changes.experiences.append(experience("Mean of 1, 2?", "compute_mean@1"))
        assert not s.commit(changes, commit_id="episode:k:1").replayed
        assert s.commit(changes, commit_id="episode:k:1").replayed
        assert len(s.experiences()) == 1


def test_the_experience_index_is_repaired_after_a_kill_between_records_and_index(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lib"
    ToolStore.open(path, embedding="hashing").close()
    script = textwrap.dedent(
        f"""
        import os
        from datetime import datetime, UTC
        from insitu.tool_store import ChangeSet, ToolStore
        from insitu.tool_store.store import ToolStore as Impl
        from insitu.tool_store.learning import Experience
        Impl._sync_experiences = lambda self, ids=None: os._exit(9)
        store = ToolStore.open({str(path)!r}, embedding="hashing", verify_index=False)
        store.commit(ChangeSet(experiences=[Experience(summary="Days from 2024-01-01 to "
            "2024-02-01?", status="completed", created_at=datetime(2026, 1, 1, tzinfo=UTC))]))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    with ToolStore.open(path, embedding="hashing") as s:  # the open repairs the index
        assert s._experience_index is not None and s._experience_index.count() == 1
        assert [e.summary[:10] for e in s.search_experiences("days between dates", k=2)] == [
            "Days from "
        ]
    with ToolStore.open(path, read_only=True) as reader:
        assert len(reader.search_experiences("days between dates", k=2)) == 1
