"""ChangeSet commits: atomic (all or nothing, even across a crash) and idempotent."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from insitu.tool_store import (
    ChangeSet,
    DuplicateToolError,
    LockedToolError,
    ToolNotFoundError,
    ToolStore,
    VersionConflictError,
)
from insitu.tool_store.changes import ToolAdd
from insitu.tool_store.testing import make_spec

MEAN = make_spec("compute_mean", "Computes the mean of numbers.")
AVG = make_spec("average_values", "Averages values.", body="return {'result': 2}")
MEDIAN = make_spec("compute_median", "Computes the median of numbers.")
MERGED = make_spec(
    "compute_mean", "Computes the mean of numbers (also averages).", body="return {'result': 3}"
)


@pytest.fixture
def store(tmp_path: Path, open_library: Callable[..., ToolStore]) -> Iterator[ToolStore]:
    """A library with two tools, on each record backend (``open_library``)."""
    with open_library(tmp_path / "lib", embedding="hashing") as s:
        s.add(MEAN)
        s.add(AVG)
        yield s


def snapshot(store: ToolStore) -> dict[str, list[tuple[int, str, str]]]:
    return {
        r.name: [(h.version, h.hash, h.status) for h in store.history(r.name)]
        for r in store.list("all")
    }


def merge_changes() -> ChangeSet:
    return (
        ChangeSet(note="batch 1")
        .update("compute_mean", MERGED, origin="merged", merged_from=["average_values@1"])
        .archive("average_values", "merged into compute_mean@2")
        .add(MEDIAN, created_by_task="t7")
    )


def test_commit_applies_everything_in_order(store: ToolStore) -> None:
    result = store.commit(merge_changes(), commit_id="batch-1")
    assert result.updated == ["compute_mean@2"] and result.archived == ["average_values@1"]
    assert result.added == ["compute_median@1"] and not result.replayed
    assert result.summary() == "1 added, 1 updated, 1 archived, 0 unchanged"
    mean = store.get("compute_mean")
    assert (mean.origin, mean.merged_from, mean.parent_version) == (
        "merged",
        ["average_values@1"],
        1,
    )
    assert store.get("average_values").status == "archived"
    assert store.get("compute_median").created_by_task == "t7"
    names = {h.record.name for h in store.search("average mean median", k=5)}
    assert names == {"compute_mean", "compute_median"}


def test_commit_is_idempotent_by_commit_id(store: ToolStore) -> None:
    first = store.commit(merge_changes(), commit_id="batch-1")
    before = snapshot(store)
    again = store.commit(merge_changes(), commit_id="batch-1")
    assert again.replayed and again.model_dump(exclude={"replayed"}) == first.model_dump(
        exclude={"replayed"}
    )
    assert "already applied" in again.summary()
    assert snapshot(store) == before
    # The id may also travel inside the change set.
    changes = ChangeSet(commit_id="batch-2").add(make_spec("count_words", "Counts words."))
    assert store.commit(changes).added == ["count_words@1"]
    assert store.commit(changes).replayed


def test_a_failing_change_leaves_the_old_library(store: ToolStore) -> None:
    before = snapshot(store)
    bad = merge_changes().archive("no_such_tool", "typo")
    with pytest.raises(ToolNotFoundError, match="no_such_tool"):
        store.commit(bad, commit_id="batch-1")
    assert snapshot(store) == before
    assert not store.has("compute_median")
    assert {h.record.name for h in store.search("median", k=5)} == {
        "compute_mean",
        "average_values",
    }
    # The failed commit id was not recorded: the corrected change set applies.
    assert not store.commit(merge_changes(), commit_id="batch-1").replayed


def test_a_duplicate_add_at_the_end_is_atomic_too(store: ToolStore) -> None:
    before = snapshot(store)
    with pytest.raises(DuplicateToolError):
        store.commit(merge_changes().add(AVG.model_copy(update={"description": "Other."})))
    assert snapshot(store) == before


def test_a_version_conflict_is_atomic_too(store: ToolStore) -> None:
    before = snapshot(store)
    changes = merge_changes()
    changes.changes.append(
        changes.changes[0].model_copy(update={"spec": MEAN, "expected_version": 1})
    )
    with pytest.raises(VersionConflictError, match="current version is 2"):
        store.commit(changes)
    assert snapshot(store) == before


def test_locked_tools_block_a_commit_unless_forced(store: ToolStore) -> None:
    store.lock("average_values")
    with pytest.raises(LockedToolError):
        store.commit(merge_changes())
    assert not store.has("compute_median")
    changes = merge_changes()
    changes.changes[1] = changes.changes[1].model_copy(update={"force": True})
    assert store.commit(changes).archived == ["average_values@1"]


def test_if_exists_policies(store: ToolStore) -> None:
    other_mean = MEAN.model_copy(update={"description": "A different mean."})
    skip = store.commit(ChangeSet(changes=[ToolAdd(spec=other_mean, if_exists="skip")]))
    assert skip.unchanged == ["compute_mean@1"]
    same = store.commit(ChangeSet().add(MEAN))  # identical content is never an error
    assert same.unchanged == ["compute_mean@1"]
    update = store.commit(ChangeSet(changes=[ToolAdd(spec=other_mean, if_exists="update")]))
    assert update.updated == ["compute_mean@2"]


def test_from_episode_builds_adds_and_checked_repairs(store: ToolStore) -> None:
    from insitu.tool_store import ToolRecord

    base = store.get("compute_mean")
    repaired = ToolRecord(
        **MERGED.model_dump(),
        version=2,
        hash=MERGED.content_hash(),
        origin="repaired",
        created_by_task="task-9",
        parent_version=base.version,
    )
    new = ToolRecord(**MEDIAN.model_dump(), version=1, hash=MEDIAN.content_hash())
    new.stats.creation_cost_tokens = 77
    changes = ChangeSet.from_episode(new=[new], repaired=[repaired], task_id="task-9")
    result = store.commit(changes, commit_id="episode:task-9")
    assert result.added == ["compute_median@1"] and result.updated == ["compute_mean@2"]
    assert store.get("compute_median").created_by_task == "task-9"
    assert store.get("compute_median").stats.creation_cost_tokens == 77
    # A second episode that repaired the same base version now conflicts.
    stale = ChangeSet.from_episode(
        repaired=[repaired.model_copy(update={"description": "Another repair."})], task_id="t10"
    )
    with pytest.raises(VersionConflictError):
        store.commit(stale)


def test_a_crash_inside_the_commit_leaves_the_old_library(tmp_path: Path) -> None:
    """Kill the process in the middle of the transaction; reopen; nothing changed."""
    path = tmp_path / "lib"
    with ToolStore.open(path, embedding="hashing") as s:
        s.add(MEAN)
        s.add(AVG)
        before = snapshot(s)
    script = textwrap.dedent(
        f"""
        import os
        from insitu.tool_store import ToolStore, ChangeSet
        from insitu.tool_store.store import ToolStore as Impl
        from insitu.tool_store.testing import make_spec
        def die(*args, **kwargs):
            os._exit(17)  # after the update and the add were written, before the archive
        Impl._apply_archive = die
        store = ToolStore.open({str(path)!r}, embedding="hashing")
        store.commit(
            ChangeSet()
            .update("compute_mean", make_spec("compute_mean", "New.", body="return {{}}"))
            .add(make_spec("compute_median", "Median."))
            .archive("average_values", "merged"),
            commit_id="crash-1",
        )
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 17, proc.stderr
    with ToolStore.open(path, embedding="hashing") as s:
        assert snapshot(s) == before
        assert s.verify_index(full=True).repaired is False
        assert not s.commit(merge_changes(), commit_id="crash-1").replayed
