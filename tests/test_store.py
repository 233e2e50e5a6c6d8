"""ToolStore: versions, rollback, archive/restore, locks, statistics and errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from insitu.tool_store import (
    DuplicateToolError,
    InvalidSpecError,
    LockedToolError,
    ReadOnlyStoreError,
    StoreClosedError,
    ToolArchivedError,
    ToolNotFoundError,
    ToolStore,
    VersionConflictError,
    VersionNotFoundError,
)
from insitu.tool_store.testing import make_spec

MEAN = make_spec("compute_mean", "Computes the arithmetic mean of a list of numbers.")
MEAN_V2 = make_spec(
    "compute_mean",
    "Computes the arithmetic mean of a list of numbers.",
    body="return {'result': 1}",
)
CSV = make_spec("parse_csv_rows", "Parses CSV text into rows.", inputs=("text",))


@pytest.fixture
def store(tmp_path: Path, open_library: Callable[..., ToolStore]) -> Iterator[ToolStore]:
    """A library on each record backend (``open_library``)."""
    with open_library(tmp_path / "lib", embedding="hashing") as s:
        yield s


def test_add_get_list_has(store: ToolStore) -> None:
    record = store.add(
        MEAN, origin="manual", created_by_task="t1", note="first", creation_cost_tokens=42
    )
    assert (record.version, record.origin, record.status, record.locked) == (
        1,
        "manual",
        "active",
        False,
    )
    assert record.hash == MEAN.content_hash() and record.spec() == MEAN
    assert record.created_by_task == "t1" and record.note == "first"
    assert record.stats.creation_cost_tokens == 42 and record.parent_version is None
    store.add(CSV)
    assert [r.name for r in store.list()] == ["compute_mean", "parse_csv_rows"]
    assert store.get("compute_mean") == record
    assert store.has("compute_mean") and not store.has("compute_median")
    assert store.count() == 2


def test_source_is_kept_byte_exact(store: ToolStore) -> None:
    odd = make_spec("strip_text", "Strips text.", body="return {'result': 'é\\t\\r\\n'}  # ünï")
    odd = odd.model_copy(update={"source": odd.source.replace("\n", "\r\n") + "\n\n  "})
    store.add(odd)
    assert store.get("strip_text").source == odd.source


def test_duplicate_add_is_refused(store: ToolStore) -> None:
    store.add(MEAN)
    with pytest.raises(DuplicateToolError, match=r"already exists.*update"):
        store.add(MEAN_V2)
    with pytest.raises(DuplicateToolError):
        store.add(MEAN)  # identical content too: add() always means a new tool
    store.archive("compute_mean", "gone")
    with pytest.raises(DuplicateToolError, match="archived"):
        store.add(MEAN_V2)


def test_update_adds_immutable_versions_and_identical_content_is_a_noop(store: ToolStore) -> None:
    v1 = store.add(MEAN)
    v2 = store.update("compute_mean", MEAN_V2, note="fix", merged_from=["avg_values@3"])
    assert (v2.version, v2.parent_version, v2.origin, v2.note) == (2, 1, "repaired", "fix")
    assert v2.merged_from == ["avg_values@3"]
    assert store.update("compute_mean", MEAN_V2) == v2  # same content: nothing new
    assert [r.version for r in store.history("compute_mean")] == [1, 2]
    old = store.get("compute_mean", 1)
    assert old.source == v1.source and old.hash == v1.hash


def test_update_checks(store: ToolStore) -> None:
    store.add(MEAN)
    with pytest.raises(InvalidSpecError, match="names never change"):
        store.update("compute_mean", CSV)
    with pytest.raises(
        VersionConflictError, match="based on version 3 but the current version is 1"
    ):
        store.update("compute_mean", MEAN_V2, expected_version=3)
    assert store.update("compute_mean", MEAN_V2, expected_version=1).version == 2
    with pytest.raises(ToolNotFoundError):
        store.update("compute_median", MEAN_V2.model_copy(update={"name": "compute_median"}))


def test_invalid_specs_are_rejected_with_every_problem(store: ToolStore) -> None:
    bad = MEAN.model_copy(update={"name": "Mean", "description": " ", "source": "def run(:"})
    with pytest.raises(InvalidSpecError) as info:
        store.add(bad)
    assert len(info.value.problems) == 3
    assert "verb_object" in str(info.value) and "does not parse" in str(info.value)
    assert store.count("all") == 0


def test_rollback_creates_a_new_version_with_old_content(store: ToolStore) -> None:
    store.add(MEAN)
    store.update("compute_mean", MEAN_V2)
    back = store.rollback("compute_mean", 1)
    assert back.version == 3 and back.hash == MEAN.content_hash()
    assert (back.origin, back.parent_version, back.note) == ("manual", 2, "rollback to version 1")
    assert [r.version for r in store.history("compute_mean")] == [1, 2, 3]
    assert store.rollback("compute_mean", 1).version == 3  # already that content
    with pytest.raises(VersionNotFoundError, match=r"no version 7 .*1\.\.3"):
        store.rollback("compute_mean", 7)


def test_archive_and_restore(store: ToolStore) -> None:
    store.add(MEAN)
    store.add(CSV)
    archived = store.archive("parse_csv_rows", "merged into something")
    assert archived.status == "archived"
    assert store.state("parse_csv_rows").status_reason == "merged into something"
    assert [r.name for r in store.list()] == ["compute_mean"]
    assert [r.name for r in store.list("archived")] == ["parse_csv_rows"]
    assert len(store.list("all")) == 2
    assert all(h.record.name != "parse_csv_rows" for h in store.search("parse csv rows", k=5))
    assert store.search("parse csv rows", include_archived=True)[0].record.name == "parse_csv_rows"
    with pytest.raises(ToolArchivedError, match="restore"):
        store.update("parse_csv_rows", CSV.model_copy(update={"description": "Other."}))
    assert store.archive("parse_csv_rows", "again").status == "archived"  # no-op
    assert store.restore("parse_csv_rows").status == "active"
    assert store.search("parse csv rows", k=1)[0].record.name == "parse_csv_rows"
    assert store.get("parse_csv_rows").version == 1  # archiving never adds versions


def test_lock_blocks_automated_changes(store: ToolStore) -> None:
    store.add(MEAN)
    assert store.lock("compute_mean").locked
    with pytest.raises(LockedToolError, match=r"locked.*unlock"):
        store.update("compute_mean", MEAN_V2)
    with pytest.raises(LockedToolError):
        store.archive("compute_mean", "dup")
    assert store.update("compute_mean", MEAN_V2, force=True).version == 2
    assert store.get("compute_mean").locked
    with pytest.raises(LockedToolError):
        store.rollback("compute_mean", 1)
    assert not store.unlock("compute_mean").locked
    assert store.archive("compute_mean", "now allowed").status == "archived"
    actions = [e.action for e in store.events("compute_mean")]
    assert actions == ["add", "lock", "update", "unlock", "archive"]
    assert store.get("compute_mean").version == 2


def test_unknown_names_suggest_close_ones(store: ToolStore) -> None:
    store.add(MEAN)
    with pytest.raises(ToolNotFoundError, match="Did you mean 'compute_mean'") as info:
        store.get("compute_meen")
    assert info.value.suggestions == ["compute_mean"]
    with pytest.raises(VersionNotFoundError):
        store.get("compute_mean", 2)
    with pytest.raises(VersionNotFoundError):
        store.get("compute_mean", "1")  # type: ignore[arg-type]
    for call in (store.history, store.lock, store.restore, store.state):
        with pytest.raises(ToolNotFoundError):
            call("nope_tool")
    with pytest.raises(ValueError, match="status must be"):
        store.list("deleted")  # type: ignore[arg-type]


def test_statistics(store: ToolStore) -> None:
    store.add(MEAN, creation_cost_tokens=100)
    store.update("compute_mean", MEAN_V2, creation_cost_tokens=30)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    store.record_call("compute_mean", 1, True, when=t0)
    store.record_calls(
        [
            ("compute_mean", 2, False, "ValueError: empty", t0 + timedelta(seconds=2)),
            ("compute_mean", 2, True, None, t0 + timedelta(seconds=1)),
            {
                "name": "compute_mean",
                "version": None,
                "ok": False,
                "error": "x" * 5000,
                "when": t0 - timedelta(days=1),
            },
        ]
    )
    stats = store.get("compute_mean").stats
    assert (stats.calls, stats.successes, stats.failures) == (4, 2, 2)
    assert stats.last_error == "ValueError: empty"  # the latest failure, not the last listed
    assert stats.last_used == t0 + timedelta(seconds=2)
    assert stats.creation_cost_tokens == 130
    assert store.get("compute_mean", 1).stats == stats  # stats belong to the tool
    with pytest.raises(ToolNotFoundError):
        store.record_calls([("compute_mean", 1, True), ("nope_tool", 1, True)])
    with pytest.raises(VersionNotFoundError):
        store.record_call("compute_mean", 9, True)
    assert store.get("compute_mean").stats.calls == 4  # the failing batch recorded nothing
    store.record_call("compute_mean", 2, False, "y" * 5000)
    assert len(store.get("compute_mean").stats.last_error or "") == 2000


def test_calls_recorded_under_a_commit_id_count_once(store: ToolStore) -> None:
    store.add(MEAN)
    calls = [("compute_mean", 1, True), ("compute_mean", 1, False, "boom")]
    assert store.record_calls(calls, commit_id="episode:t1:calls") == 2
    assert store.record_calls(calls, commit_id="episode:t1:calls") == 0  # a resumed episode
    assert store.record_calls(calls, commit_id="episode:t2:calls") == 2
    stats = store.get("compute_mean").stats
    assert (stats.calls, stats.successes, stats.failures) == (4, 2, 2)
    with pytest.raises(ToolNotFoundError):
        store.record_calls([("nope_tool", 1, True)], commit_id="episode:t3:calls")
    # A refused recording leaves its id unused.
    assert store.record_calls(calls[:1], commit_id="episode:t3:calls") == 1


def test_closed_and_read_only_stores_refuse(
    tmp_path: Path, open_library: Callable[..., ToolStore]
) -> None:
    store = open_library(tmp_path / "lib", embedding="hashing")
    store.add(MEAN)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreClosedError):
        store.get("compute_mean")
    with open_library(tmp_path / "lib", read_only=True) as ro:
        assert ro.get("compute_mean").version == 1
        for write in (
            lambda: ro.add(CSV),
            lambda: ro.archive("compute_mean", "x"),
            lambda: ro.lock("compute_mean"),
            lambda: ro.record_call("compute_mean", 1, True),
            ro.reindex,
        ):
            with pytest.raises(ReadOnlyStoreError):
                write()


def test_direct_construction_is_refused() -> None:
    with pytest.raises(TypeError, match=r"ToolStore\.open"):
        ToolStore()
