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

An export is untrusted input: importing with a sandbox runs every version it
would write through admission (static checks, the secrets allow-list, the
tool's stored tests in the sandbox) and refuses the whole import at the first
failure; ``trust=True`` skips that and says so in each imported version's note.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from insitu.tool_store.contract import ToolRecord, ToolSpec, ToolStats
from insitu.tool_store.errors import CorruptManifestError, ExportError, StoreError
from insitu.tool_store.store import ToolState

if TYPE_CHECKING:
    from insitu.sandbox import Sandbox
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


#: What the note of a version imported with ``trust=True`` says.
TRUSTED_NOTE = "imported with --trust: its tests were not run at import"


class ImportVerificationError(StoreError):
    """A version an import would write failed admission; nothing was imported."""

    def __init__(self, ref: str, stage: str, reason: str) -> None:
        self.ref = ref
        self.stage = stage
        self.reason = reason
        flat = " ".join(reason.split())
        super().__init__(
            f"import refused, nothing imported: {ref} failed verification ({stage}): {flat[:600]}"
            " — fix or remove that tool in the export, or import with --trust to skip the tests"
        )


class RemoteToolImportError(ExportError):
    """An export holds MCP tools, which are never imported (they run a command here)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        super().__init__(
            f"import refused, nothing imported: {', '.join(self.names)} call(s) an external MCP "
            "server (a command or URL used from this host), which is never taken from a folder, "
            "--trust or not: register the server with `insitu tools add-mcp NAME -- COMMAND` "
            "(or --url) instead"
        )


class ImportResult(BaseModel):
    """What :func:`import_library` did, by tool name."""

    imported: list[str] = Field(default_factory=list)
    replaced: list[str] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)
    verified: list[str] = Field(
        default_factory=list, description="name@version of each version whose tests passed."
    )
    trusted: bool = Field(default=False, description="Imported with trust=True: no tests run.")

    def __str__(self) -> str:
        text = (
            f"{len(self.imported)} imported, {len(self.replaced)} replaced, "
            f"{len(self.skipped)} skipped (conflict), {len(self.unchanged)} already present"
        )
        if self.trusted:
            return text + "; --trust: tests NOT run (recorded in each imported version's note)"
        if self.verified:
            return text + f"; {len(self.verified)} version(s) passed their tests in the sandbox"
        return text


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
    sandbox: Sandbox | None = None,
    trust: bool = False,
    scratch_dir: Path | None = None,
) -> ImportResult:
    """Restore tools from an exported folder (one transaction: all or nothing).

    New names are restored exactly (every version, lineage, status, lock,
    statistics). For a name the library already has with other content,
    ``skip`` keeps the library's tool, ``replace`` adds the imported current
    content as a new version (origin ``imported``), ``error`` imports nothing.

    With ``sandbox``, every version the import would write is admitted first
    (:func:`verify_import`); one failure refuses the whole import. ``trust``
    skips that and marks each imported version's note (:data:`TRUSTED_NOTE`).
    With neither, nothing is run: for Python callers that verified the folder
    otherwise (``insitu tools import`` always passes a sandbox).

    Args:
        store: An open, writable store.
        directory: A folder written by :func:`export_library`.
        on_conflict: ``"skip"``, ``"replace"`` or ``"error"``.
        force: With ``replace``, replace locked tools too.
        sandbox: Runs the stored tests of every version to be written.
        trust: Import without running any test (recorded in the notes).
        scratch_dir: Where the tests run (default: a temporary directory).

    Returns:
        What was imported, replaced, skipped, already present or verified.

    Raises:
        CorruptManifestError: The folder is damaged (nothing imported).
        ImportVerificationError: A version failed admission (nothing imported).
        ImportConflictError: ``on_conflict="error"`` and names clash.
        LockedToolError: ``replace`` would change a locked tool.
        RemoteToolImportError: The folder holds MCP tools (nothing imported).
    """
    tools = read_export(directory)
    # An MCP tool's record names a command that the Executor runs on this host: it is
    # never taken from a folder, --trust or not; its server is registered here instead.
    remote = sorted({v.name for _state, versions in tools for v in versions if v.origin == "mcp"})
    if remote:
        raise RemoteToolImportError(remote)
    source = str(directory)
    verified: list[str] = []
    if trust:
        tools = [(state, [_trusted(v) for v in versions]) for state, versions in tools]
        source = f"{directory} (--trust: tests not run)"
    elif sandbox is not None:
        verified = verify_import(
            store, tools, sandbox, on_conflict=on_conflict, scratch_dir=scratch_dir
        )
    outcome = store.import_tools(tools, on_conflict=on_conflict, source=source, force=force)
    return ImportResult(**outcome, verified=verified, trusted=trust)


def _trusted(record: ToolRecord) -> ToolRecord:
    note = f"{record.note}; {TRUSTED_NOTE}" if record.note else TRUSTED_NOTE
    return record.model_copy(update={"note": note})


def _versions_to_write(
    store: ToolStore,
    tools: list[tuple[ToolState, list[ToolRecord]]],
    on_conflict: Literal["skip", "replace", "error"],
) -> list[ToolRecord]:
    """Every version an import would write: all of a new tool's, a replaced one's head."""
    new: list[ToolRecord] = []
    heads: list[ToolRecord] = []
    for state, versions in tools:
        if not store.has(state.name):
            new.extend(versions)
        elif store.get(state.name).hash != versions[-1].hash:
            heads.append(versions[-1])
    if on_conflict == "error" and heads:
        return []  # the store refuses the whole import: nothing will be written
    return new + (heads if on_conflict == "replace" else [])


def verify_import(
    store: ToolStore,
    tools: list[tuple[ToolState, list[ToolRecord]]],
    sandbox: Sandbox,
    *,
    on_conflict: Literal["skip", "replace", "error"] = "skip",
    scratch_dir: Path | None = None,
) -> list[str]:
    """Admit every version an import would write, as if it were new.

    Each goes through :func:`~insitu.tool_store.admission.admit_tool`: static
    checks, the sandbox's allow-list of secrets, its dependencies, its schemas
    and its stored tests in the sandbox (secrets as placeholders). The secrets,
    network flag and dependencies its manifest records must be what its module
    declares, as calls are granted what the record says.

    Args:
        store: The store the tools would go to (read only).
        tools: As from :func:`read_export`.
        sandbox: Runs the tests.
        on_conflict: As for :func:`import_library` (what would be written).
        scratch_dir: Where the tests run (default: a temporary directory).

    Returns:
        The ``name@version`` of every version verified.

    Raises:
        ImportVerificationError: At the first version that fails.
    """
    from insitu.tool_store.admission import AdmissionError, admit_tool

    pending = _versions_to_write(store, tools, on_conflict)
    where = (
        nullcontext(str(scratch_dir))
        if scratch_dir is not None
        else tempfile.TemporaryDirectory(prefix="insitu-import-")
    )
    with where as scratch:
        for record in pending:
            try:
                spec = admit_tool(
                    record.source,
                    record.tests,
                    sandbox=sandbox,
                    scratch_dir=Path(scratch),
                    expected_name=record.name,
                )
            except AdmissionError as exc:
                raise ImportVerificationError(record.ref, exc.stage, str(exc)) from None
            differ = [
                field
                for field in ("secrets", "network", "dependencies")
                if getattr(spec, field) != getattr(record, field)
            ]
            if differ:
                raise ImportVerificationError(
                    record.ref,
                    "manifest",
                    f"the manifest's {', '.join(differ)} differ from what its module declares",
                )
    return [record.ref for record in pending]
