"""Persistence across processes, the writer lock, read-only access and index repair."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from insitu.tool_store import StoreError, StoreLockedError, ToolStore
from insitu.tool_store.index import ToolIndex
from insitu.tool_store.testing import catalogue_specs, make_spec

SPECS = catalogue_specs()[:6]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def make_library(path: Path, specs=SPECS) -> None:
    with ToolStore.open(path, embedding="hashing") as store:
        for spec in specs:
            store.add(spec)


def indexed_hashes(store: ToolStore) -> dict[str, str]:
    assert store._index is not None
    return {k: v["hash"] for k, v in store._index.metadata().items()}


def head_hashes(store: ToolStore) -> dict[str, str]:
    return {r.name: r.hash for r in store.list()}


def test_library_survives_a_process_restart(tmp_path: Path) -> None:
    path = tmp_path / "lib"
    make_library(path)
    proc = run_python(
        f"""
        import json
        from insitu.tool_store import ToolStore
        from insitu.tool_store.testing import make_spec
        with ToolStore.open({str(path)!r}) as store:  # embedding remembered: hashing
            hits = store.search("parse csv text into rows", k=1)
            store.update("compute_mean", make_spec("compute_mean", "Mean v2.", body="return {{}}"))
            store.add(make_spec("count_lines", "Counts the lines of a text."))
            print(json.dumps([store.embedding_name, hits[0].record.name, len(store.list())]))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["hashing", "parse_csv_rows", 7]
    with ToolStore.open(path) as store:
        assert store.get("compute_mean").version == 2
        assert store.search("count lines of a text", k=1)[0].record.name == "count_lines"
        assert indexed_hashes(store) == head_hashes(store)


def test_a_second_writer_gets_a_clear_lock_error(tmp_path: Path) -> None:
    path = tmp_path / "lib"
    make_library(path)
    with ToolStore.open(path) as holder:
        proc = run_python(
            f"""
            from insitu.tool_store import ToolStore, StoreLockedError
            try:
                ToolStore.open({str(path)!r})
            except StoreLockedError as exc:
                print(exc)
            """
        )
        assert proc.returncode == 0, proc.stderr
        message = proc.stdout
        assert str(path / "store.lock") in message
        assert "pid " in message and str(__import__("os").getpid()) in message
        assert "read_only=True" in message and "chroma run" in message
        # In this process too: one writer per store.
        with pytest.raises(StoreLockedError):
            ToolStore.open(path)
        assert holder.count() == 6
    with ToolStore.open(path) as again:  # released on close
        assert again.count() == 6


def test_read_only_reads_and_searches_while_a_writer_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "lib"
    make_library(path)
    reader_code = f"""
        import json
        from insitu.tool_store import ToolStore
        with ToolStore.open({str(path)!r}, read_only=True) as store:
            print(json.dumps([
                len(store.list()),
                store.search("send an email message", k=1)[0].record.name,
                store.get("compute_mean").version,
            ]))
        """
    with ToolStore.open(path) as writer:
        writer.update("compute_mean", make_spec("compute_mean", "Mean v2.", body="return {}"))
        writer.add(make_spec("send_email", "Sends an email message through SMTP.", inputs=("to",)))
        index_files = {p: p.stat().st_mtime_ns for p in (path / "index").rglob("*") if p.is_file()}
        proc = run_python(reader_code)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == [7, "send_email", 2]
        # The reader never touched the Chroma directory.
        after = {p: p.stat().st_mtime_ns for p in (path / "index").rglob("*") if p.is_file()}
        assert after == index_files
        # A long-lived reader sees the writer's later changes.
        with ToolStore.open(path, read_only=True) as reader:
            assert reader.search("count lines", k=1)[0].record.name != "count_lines"
            writer.add(make_spec("count_lines", "Counts the lines of a text."))
            assert reader.search("count lines", k=1)[0].record.name == "count_lines"
            writer.archive("count_lines", "test")
            assert reader.search("count lines", k=1)[0].record.name != "count_lines"
            assert reader.search("count lines", k=1, include_archived=True)[0].record.name == (
                "count_lines"
            )


def test_read_only_on_a_missing_store_says_so(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no tool library"):
        ToolStore.open(tmp_path / "nothing", read_only=True)
    assert not (tmp_path / "nothing").exists()


def test_index_failure_after_the_record_is_repaired_on_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "lib"
    make_library(path)
    store = ToolStore.open(path)
    real_upsert = ToolIndex.upsert

    def broken(self, docs):  # the record transaction has committed when this runs
        raise RuntimeError("simulated crash between record and index")

    monkeypatch.setattr(ToolIndex, "upsert", broken)
    with caplog.at_level(logging.WARNING, logger="insitu.tool_store"):
        record = store.add(make_spec("count_lines", "Counts the lines of a text."))
    assert record.version == 1 and "index update failed" in caplog.text
    assert "count_lines" not in indexed_hashes(store)
    pending = store.db.execute("SELECT name FROM tools WHERE index_pending = 1").fetchall()
    assert [r[0] for r in pending] == ["count_lines"]
    store.close()
    monkeypatch.setattr(ToolIndex, "upsert", real_upsert)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="insitu.tool_store"):
        store = ToolStore.open(path)
    assert "repaired" in caplog.text and "index-pending" in caplog.text
    assert indexed_hashes(store) == head_hashes(store)
    assert store.search("count the lines", k=1)[0].record.name == "count_lines"
    store.close()


def test_a_failed_index_write_is_retried_by_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "lib"
    with ToolStore.open(path, embedding="hashing") as store:
        real_delete = ToolIndex.delete
        monkeypatch.setattr(ToolIndex, "delete", lambda self, ids: 1 / 0)
        store.add(SPECS[0])
        store.archive(SPECS[0].name, "x")
        monkeypatch.setattr(ToolIndex, "delete", real_delete)
        assert SPECS[0].name in indexed_hashes(store)
        store.add(SPECS[1])
        assert (
            indexed_hashes(store) == head_hashes(store) == {SPECS[1].name: SPECS[1].content_hash()}
        )


def test_process_killed_between_record_and_index_is_repaired(tmp_path: Path) -> None:
    path = tmp_path / "lib"
    make_library(path)
    proc = run_python(
        f"""
        import os
        from insitu.tool_store import ToolStore
        from insitu.tool_store.store import ToolStore as Impl
        from insitu.tool_store.testing import make_spec
        Impl._sync_index = lambda self, names: os._exit(9)
        store = ToolStore.open({str(path)!r})
        store.update("compute_mean", make_spec("compute_mean", "Mean v2.", body="return {{}}"))
        """
    )
    assert proc.returncode == 9, proc.stderr
    with ToolStore.open(path) as store:
        assert store.get("compute_mean").version == 2  # the record was committed
        assert indexed_hashes(store) == head_hashes(store)  # and the index caught up


def test_deleted_or_stale_index_directories_are_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "lib"
    make_library(path)
    shutil.rmtree(path / "index")
    with ToolStore.open(path) as store:
        assert indexed_hashes(store) == head_hashes(store)
        assert len(head_hashes(store)) == 6
    shutil.copytree(path / "index", tmp_path / "old-index")
    with ToolStore.open(path) as store:
        store.update("compute_mean", make_spec("compute_mean", "Mean v2.", body="return {}"))
        store.archive("parse_csv_rows", "test")
        store.add(make_spec("count_lines", "Counts the lines of a text."))
    shutil.rmtree(path / "index")
    shutil.copytree(tmp_path / "old-index", path / "index")  # an index from before
    with ToolStore.open(path) as store:
        assert indexed_hashes(store) == head_hashes(store)
        assert "parse_csv_rows" not in indexed_hashes(store)


def test_full_verify_detects_a_tampered_index(tmp_path: Path) -> None:
    path = tmp_path / "lib"
    make_library(path)
    with ToolStore.open(path) as store:
        assert store._index is not None
        store._index.upsert([("compute_mean", "something else entirely", {"hash": "bogus"})])
        assert store.verify_index(full=False).repaired is False  # cheap checks cannot see it
        report = store.verify_index(full=True)
        assert report.upserted == ["compute_mean"]
        assert indexed_hashes(store) == head_hashes(store)


def test_reindex_rebuilds_everything(tmp_path: Path) -> None:
    path = tmp_path / "lib"
    make_library(path)
    with ToolStore.open(path) as store:
        store.archive("parse_csv_rows", "test")
        assert store.reindex() == 5
        assert indexed_hashes(store) == head_hashes(store)


def test_an_index_of_an_older_tool_text_is_rebuilt(tmp_path: Path) -> None:
    """A library indexed before the tool text changed is re-embedded from its records."""
    path = tmp_path / "lib"
    make_library(path)
    with ToolStore.open(path) as store:
        assert store._index is not None
        old_stamp = {k: v for k, v in store._index.stamp.items() if k != "insitu_text"}
        store._index.set_stamp(old_stamp)  # as written by a store before text version 2
        report = store.verify_index(full=False)
        assert "tool text changed from version 1" in (report.reason or "")
        assert sorted(report.upserted) == sorted(head_hashes(store))
        assert store.verify_index(full=False).checked == "quick"


def test_the_retrieval_benchmark_indexes_the_stores_text() -> None:
    """One function renders a tool's text for the store and for the benchmark."""
    from insitu.evals.retrieval import dataset_tool_text
    from insitu.tool_store.contract import ToolSpec

    spec = make_spec("parse_csv_rows", "Parse CSV text into rows.", inputs=("text", "delimiter"))
    schema = dict(spec.input_schema)
    schema["properties"] = {
        "text": {"type": "string", "description": "the CSV document"},
        "delimiter": {"type": "string"},
    }
    spec = ToolSpec.model_validate({**spec.model_dump(), "input_schema": schema})
    dataset_tool = {
        "tool_id": "t1",
        "name": "parse_csv_rows",
        "text": "Parse CSV text into rows.",
        "raw": {"parameters": schema},
    }
    assert spec.embedding_text() == dataset_tool_text(dataset_tool)
    assert spec.embedding_text() == (
        "parse csv rows: Parse CSV text into rows. Inputs: text (the CSV document); delimiter."
    )


def test_changing_the_embedding_rebuilds_the_index(tmp_path: Path) -> None:
    path = tmp_path / "lib"
    make_library(path, catalogue_specs())
    with ToolStore.open(path, embedding="minilm") as store:
        assert store.embedding_name == "minilm"
        assert indexed_hashes(store) == head_hashes(store)
        hit = store.search("average of a list of numbers", k=1, mode="dense")[0]
        assert hit.record.name == "compute_mean"
    with ToolStore.open(path) as store:  # the store now remembers minilm
        assert store.embedding_name == "minilm"
