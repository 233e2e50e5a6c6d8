"""Export/import: a plain folder, byte-identical round trips, clear errors on damage."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from insitu.tool_store import (
    CorruptManifestError,
    ExportError,
    ImportConflictError,
    LockedToolError,
    ToolStore,
    export_library,
    import_library,
)
from insitu.tool_store.testing import catalogue_specs, make_spec


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def all_records(store: ToolStore) -> dict[str, list]:
    return {r.name: store.history(r.name) for r in store.list("all")}


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """A library with history, an archived tool, a lock, statistics and odd source bytes."""
    path = tmp_path / "src"
    with ToolStore.open(path, embedding="hashing") as store:
        for spec in catalogue_specs()[:5]:
            store.add(spec, created_by_task="t1", creation_cost_tokens=11)
        store.update(
            "compute_mean",
            make_spec("compute_mean", "Mean, v2.", body="return {'result': 2}"),
            note="repair",
            merged_from=["average_values@1"],
        )
        store.rollback("compute_mean", 1)
        odd = make_spec("strip_text", "Strips text.", body="return {'r': 'é'}  # ünï")
        store.add(odd.model_copy(update={"source": odd.source.replace("\n", "\r\n") + "\t"}))
        store.archive("parse_csv_rows", "merged into something")
        store.lock("compute_median")
        store.record_call("compute_mean", 3, False, "boom", datetime(2026, 5, 1, 12, tzinfo=UTC))
        store.record_call("compute_mean", 3, True)
    return path


def test_export_writes_sources_and_a_stable_manifest(library: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    with ToolStore.open(library, read_only=True) as store:  # export needs no writer lock
        assert export_library(store, out) == 6
        mean = store.get("compute_mean")
    assert (out / "compute_mean.py").read_bytes() == mean.source.encode()
    assert (out / "versions" / "compute_mean" / "v1.py").is_file()
    assert (out / "versions" / "compute_mean" / "v2.py").is_file()
    assert not (out / "versions" / "compute_mean" / "v3.py").exists()
    assert (out / "parse_csv_rows.py").is_file()  # archived tools are exported too
    manifest = json.loads((out / "manifest.json").read_text())
    tools = {t["name"]: t for t in manifest["tools"]}
    assert [t["name"] for t in manifest["tools"]] == sorted(tools)
    assert tools["compute_mean"]["stats"]["calls"] == 2
    assert tools["compute_median"]["locked"] is True
    assert tools["parse_csv_rows"]["status"] == "archived"
    v2 = tools["compute_mean"]["versions"][1]
    assert v2["merged_from"] == ["average_values@1"] and v2["note"] == "repair"
    assert "source" not in v2 and v2["tests"]


def test_round_trip_is_byte_identical_and_records_equal(library: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "e1", tmp_path / "e2"
    with ToolStore.open(library, read_only=True) as store:
        export_library(store, first)
        original = all_records(store)
    with ToolStore.open(tmp_path / "dst", embedding="hashing") as store:
        result = import_library(store, first)
        assert len(result.imported) == 6 and str(result).startswith("6 imported")
        assert all_records(store) == original
        export_library(store, second)
        assert store.search("parse csv rows", k=3)[0].record.name != "parse_csv_rows"  # archived
        assert store.search("median of numbers", k=1)[0].record.name == "compute_median"
    assert folder_bytes(first) == folder_bytes(second)
    # Exporting again into an earlier export refreshes it in place, identically.
    with ToolStore.open(tmp_path / "dst", read_only=True) as store:
        export_library(store, first)
    assert folder_bytes(first) == folder_bytes(second)


def test_export_refuses_a_foreign_non_empty_folder(library: Path, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with ToolStore.open(library, read_only=True) as store, pytest.raises(ExportError):
        export_library(store, tmp_path / "busy")


def test_import_conflicts(library: Path, tmp_path: Path) -> None:
    export = tmp_path / "e"
    with ToolStore.open(library, read_only=True) as store:
        export_library(store, export)
    with ToolStore.open(tmp_path / "dst", embedding="hashing") as store:
        store.add(make_spec("compute_mean", "A local mean.", body="return {'mine': 1}"))
        store.add(catalogue_specs()[1])  # compute_median, same content as the export's
        with pytest.raises(ImportConflictError, match="compute_mean"):
            import_library(store, export, on_conflict="error")
        assert store.count("all") == 2  # nothing imported
        skipped = import_library(store, export, on_conflict="skip")
        assert skipped.skipped == ["compute_mean"] and skipped.unchanged == ["compute_median"]
        assert store.get("compute_mean").version == 1
        store.lock("compute_mean")
        with pytest.raises(LockedToolError):
            import_library(store, export, on_conflict="replace")
        replaced = import_library(store, export, on_conflict="replace", force=True)
        assert replaced.replaced == ["compute_mean"]
        mean = store.get("compute_mean")
        assert (mean.version, mean.origin) == (2, "imported")
        assert mean.source == (export / "compute_mean.py").read_text()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "manifest.json").unlink(), "holds no manifest.json"),
        (lambda d: (d / "compute_std_dev.py").write_text("print(1)\n"), "modified after"),
        (lambda d: (d / "versions" / "compute_mean" / "v1.py").unlink(), "missing source"),
        (lambda d: _edit_manifest(d, lambda m: m["tools"][0].pop("stats")), "malformed"),
        (
            lambda d: _edit_manifest(
                d, lambda m: m["tools"][0]["versions"][0].update(description="Edited.")
            ),
            "does not match its recorded hash",
        ),
        (lambda d: _edit_manifest(d, lambda m: m.update(format_version=99)), "format_version"),
        (
            lambda d: _edit_manifest(
                d, lambda m: m["tools"][0]["versions"][0].update(source_file="../../x.py")
            ),
            "outside the export",
        ),
    ],
)
def test_corrupted_exports_are_refused_and_import_nothing(
    library: Path, tmp_path: Path, damage, message: str
) -> None:
    export = tmp_path / "e"
    with ToolStore.open(library, read_only=True) as store:
        export_library(store, export)
    damage(export)
    with ToolStore.open(tmp_path / "dst", embedding="hashing") as store:
        with pytest.raises(CorruptManifestError, match=message):
            import_library(store, export)
        assert store.count("all") == 0


def _edit_manifest(root: Path, edit) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))
