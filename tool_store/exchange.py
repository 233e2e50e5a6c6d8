"""Export a library to a plain, git-friendly folder and import it back.

Layout of an export::

    manifest.json                every tool: state, statistics and every version's
                                 metadata, schemas, tests and lineage (tools sorted
                                 by name, versions by number, fields in a fixed
                                 order; no timestamp of the export itself)
    <name>.py                    each tool's current source, byte for byte
    versions/<name>/v<k>.py      the sources of its older versions

Exporting, importing into an empty store and exporting again gives a
byte-identical folder, and the imported records equal the exported ones.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from insitu.tool_store.contract import ToolRecord, ToolSpec, ToolStats
from insitu.tool_store.errors import CorruptManifestError, ExportError
from insitu.tool_store.store import ToolState

if TYPE_CHECKING:
    from insitu.tool_store.store import ToolStore

MANIFEST = "manifest.json"
FORMAT = "insitu-library"
FORMAT_VERSION = 1
VERSIONS_DIR = "versions"

#: Per-version fields kept in the manifest (the source lives in its own file).
_VERSION_FIELDS = (
    "version",
    "hash",
    "description",
    "input_schema",
    "output_schema",
    "dependencies",
    "secrets",
    "network",
    "tests",
    "created_at",
    "origin",
    "created_by_task",
    "parent_version",
    "merged_from",
    "note",
)


class ImportResult(BaseModel):
    """What :func:`import_library` did, by tool name."""

    imported: list[str] = Field(default_factory=list)
    replaced: list[str] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{len(self.imported)} imported, {len(self.replaced)} replaced, "
            f"{len(self.skipped)} skipped (conflict), {len(self.unchanged)} already present"
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _source_path(name: str, version: int, current: int) -> str:
    return f"{name}.py" if version == current else f"{VERSIONS_DIR}/{name}/v{version}.py"


def export_library(store: ToolStore, directory: str | Path) -> int:
    """Write every tool of a library (active and archived) to a folder.

    A folder holding an earlier export is refreshed (its ``.py`` files,
    ``versions/`` and manifest are replaced); any other non-empty folder is
    refused rather than mixed with.

    Args:
        store: An open store (read-only is enough).
        directory: The target folder (created if missing).

    Returns:
        The number of tools exported.

    Raises:
        ExportError: The folder is not empty and holds no earlier export.
    """
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} exists and is not a folder")
    if target.exists() and any(target.iterdir()):
        if not (target / MANIFEST).is_file():
            raise ExportError(
                f"{target} is not empty and holds no {MANIFEST}; export into an empty folder "
                "or into an earlier export"
            )
        for old in target.glob("*.py"):
            old.unlink()
        shutil.rmtree(target / VERSIONS_DIR, ignore_errors=True)
        (target / MANIFEST).unlink()
    target.mkdir(parents=True, exist_ok=True)
    with store.snapshot():  # one consistent view, even while another process writes
        tools = [_export_tool(store, target, current.name) for current in store.list("all")]
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "tools": tools}
    # Key order is kept, not sorted: a tool's content hash covers its JSON
    # schemas and tests as written, key order included. Every order here is
    # deterministic (tools by name, versions by number, fields as declared).
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    (target / MANIFEST).write_bytes(text.encode("utf-8"))
    return len(tools)


def _export_tool(store: ToolStore, target: Path, name: str) -> dict[str, Any]:
    """Write one tool's sources and return its manifest entry."""
    state = store.state(name)
    versions = []
    for record in store.history(name):
        source = record.source.encode("utf-8")
        rel = _source_path(record.name, record.version, state.current_version)
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(source)
        entry = record.model_dump(mode="json", include=set(_VERSION_FIELDS))
        entry["source_file"] = rel
        entry["source_sha256"] = _sha256(source)
        versions.append(entry)
    return {
        "name": state.name,
        "current_version": state.current_version,
        "status": state.status,
        "status_reason": state.status_reason,
        "locked": state.locked,
        "stats": state.stats.model_dump(mode="json"),
        "versions": versions,
    }


def read_export(directory: str | Path) -> list[tuple[ToolState, list[ToolRecord]]]:
    """Parse and verify an exported folder without touching any store.

    Every source file must exist inside the folder and match its recorded
    SHA-256, and every version's content must match its recorded hash.

    Args:
        directory: The folder written by :func:`export_library`.

    Returns:
        ``(state, versions oldest first)`` per tool, sorted by name.

    Raises:
        CorruptManifestError: With the first problem found.
    """
    root = Path(directory)
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptManifestError(f"{root} holds no {MANIFEST}; is it an insitu export?") from None
    except (ValueError, OSError) as exc:
        raise CorruptManifestError(f"{root / MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptManifestError(f"{root / MANIFEST} is not an insitu library manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CorruptManifestError(
            f"{root / MANIFEST} has format_version {manifest.get('format_version')!r}; "
            f"this insitu reads version {FORMAT_VERSION}"
        )
    tools = manifest.get("tools")
    if not isinstance(tools, list):
        raise CorruptManifestError(f"{root / MANIFEST}: 'tools' must be a list")
    out: list[tuple[ToolState, list[ToolRecord]]] = []
    seen: set[str] = set()
    for i, entry in enumerate(tools):
        try:
            out.append(_read_tool(root, entry, seen))
        except CorruptManifestError:
            raise
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            name = entry.get("name") if isinstance(entry, dict) else None
            raise CorruptManifestError(
                f"{root / MANIFEST}: tool #{i + 1} ({name or '?'}) is malformed: "
                + str(exc).replace("\n", " ")[:500]
            ) from None
    return sorted(out, key=lambda item: item[0].name)


def _read_tool(
    root: Path, entry: dict[str, Any], seen: set[str]
) -> tuple[ToolState, list[ToolRecord]]:
    name = entry["name"]
    if name in seen:
        raise CorruptManifestError(f"tool {name!r} appears twice in the manifest")
    seen.add(name)
    state = ToolState(
        name=name,
        current_version=entry["current_version"],
        status=entry["status"],
        locked=entry["locked"],
        status_reason=entry.get("status_reason"),
        stats=ToolStats.model_validate(entry["stats"]),
    )
    versions: list[ToolRecord] = []
    for raw in sorted(entry["versions"], key=lambda v: v["version"]):
        rel = raw["source_file"]
        path = (root / rel).resolve()
        if root.resolve() not in path.parents:
            raise CorruptManifestError(f"{name}: source file {rel!r} is outside the export")
        try:
            source = path.read_bytes()
        except OSError:
            raise CorruptManifestError(f"{name}@{raw['version']}: missing source {rel}") from None
        if _sha256(source) != raw["source_sha256"]:
            raise CorruptManifestError(
                f"{name}@{raw['version']}: {rel} was modified after the export (SHA-256 "
                "mismatch); restore it, or add the edited tool as a new version instead"
            )
        fields = {k: raw[k] for k in _VERSION_FIELDS if k in raw}
        record = ToolRecord(
            name=name,
            source=source.decode("utf-8"),
            status=state.status,
            locked=state.locked,
            stats=state.stats,
            **fields,
        )
        if ToolSpec.content_hash(record.spec()) != record.hash:
            raise CorruptManifestError(
                f"{name}@{record.version}: its content does not match its recorded hash"
            )
        versions.append(record)
    numbers = [v.version for v in versions]
    if numbers != list(range(1, len(numbers) + 1)):
        raise CorruptManifestError(f"{name}: versions must be 1..n, found {numbers}")
    if state.current_version not in numbers:
        raise CorruptManifestError(f"{name}: current version {state.current_version} is missing")
    if versions[-1].version != state.current_version:
        # The store's head is the newest version; keep it that way on import.
        raise CorruptManifestError(
            f"{name}: current version {state.current_version} is not the newest"
        )
    return state, versions


def import_library(
    store: ToolStore,
    directory: str | Path,
    *,
    on_conflict: Literal["skip", "replace", "error"] = "skip",
    force: bool = False,
) -> ImportResult:
    """Restore tools from an exported folder (one transaction: all or nothing).

    New names are restored exactly (every version, lineage, status, lock,
    statistics). For a name the library already has with other content,
    ``skip`` keeps the library's tool, ``replace`` adds the imported current
    content as a new version (origin ``imported``), ``error`` imports nothing.

    Args:
        store: An open, writable store.
        directory: A folder written by :func:`export_library`.
        on_conflict: ``"skip"``, ``"replace"`` or ``"error"``.
        force: With ``replace``, replace locked tools too.

    Returns:
        What was imported, replaced, skipped or already present.

    Raises:
        CorruptManifestError: The folder is damaged (nothing imported).
        ImportConflictError: ``on_conflict="error"`` and names clash.
        LockedToolError: ``replace`` would change a locked tool.
    """
    tools = read_export(directory)
    outcome = store.import_tools(tools, on_conflict=on_conflict, source=str(directory), force=force)
    return ImportResult(**outcome)
