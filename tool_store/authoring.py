"""Tools written or edited by hand, admitted exactly as generated ones are.

:func:`admit_file` takes a tool module and its tests from files and runs them
through :func:`~insitu.tool_store.admission.admit_tool`, the pipeline every
generated, repaired or merged tool goes through (contract checks, the secrets
allow-list, dependencies, schemas derived in the sandbox, the tool's tests in
the sandbox). :func:`edited_exports` finds the tools of an export folder whose
current source was edited after the export, and :func:`reimport_edited`
admits each with its exported tests and commits them all as new versions of
the library's tools, in one transaction, or none.

Every failure is an :class:`AuthoringError` with a one-line message (which
stage, which test and why); nothing is written to the library before every
tool passed.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from insitu.tool_store.changes import ChangeSet, CommitResult
from insitu.tool_store.contract import ToolSpec, ToolTest
from insitu.tool_store.errors import StoreError

if TYPE_CHECKING:
    from insitu.sandbox import Sandbox
    from insitu.tool_store.store import ToolStore

#: The tests file looked for beside ``name.py`` when none is given.
TESTS_SUFFIX = ".tests.json"


class AuthoringError(StoreError):
    """A hand-written or edited tool was refused; nothing was stored."""


def one_line(text: str, limit: int = 900) -> str:
    """Fold a (multi-line) admission message into one line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def read_tests(path: Path) -> list[dict[str, Any]]:
    """Read a tool's test cases: a JSON list (or ``{"tests": [...]}``) of cases.

    Raises:
        AuthoringError: Unreadable, not JSON, or not a list.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AuthoringError(f"cannot read the tests file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise AuthoringError(f"the tests file {path} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("tests"), list):
        data = data["tests"]
    if not isinstance(data, list):
        raise AuthoringError(
            f"the tests file {path} must hold a JSON list of test cases (see docs/tool-format.md)"
        )
    return data


def tests_beside(source_file: Path) -> Path:
    """The default tests file of ``name.py``: ``name.tests.json`` in the same folder."""
    return source_file.with_name(source_file.stem + TESTS_SUFFIX)


def admit_source(
    source: str,
    tests: Sequence[dict[str, Any] | ToolTest],
    *,
    sandbox: Sandbox,
    where: str,
    expected_name: str | None = None,
    scratch_dir: Path | None = None,
) -> ToolSpec:
    """Admit a tool as a generated one would be (see :mod:`insitu.tool_store.admission`).

    Args:
        source: The module.
        tests: Its test cases.
        sandbox: Runs its import and its tests.
        where: What to call it in a message (its file).
        expected_name: The name it must declare (an edited tool keeps its name).
        scratch_dir: Where the tests run (default: a temporary directory).

    Raises:
        AuthoringError: One line: the file, the failing stage and why.
    """
    from insitu.tool_store.admission import AdmissionError, admit_tool

    try:
        with tempfile.TemporaryDirectory(prefix="insitu-add-") as scratch:
            return admit_tool(
                source,
                tests,
                sandbox=sandbox,
                scratch_dir=scratch_dir or Path(scratch),
                expected_name=expected_name,
            )
    except AdmissionError as exc:
        stage = {
            "static": "contract check",
            "secrets": "secrets",
            "dependencies": "dependencies",
            "describe": "import in the sandbox",
            "tests": "tests",
        }[exc.stage]
        raise AuthoringError(f"{where}: refused at the {stage}: {one_line(str(exc))}") from None


def admit_file(
    source_file: Path,
    tests_file: Path | None,
    *,
    sandbox: Sandbox,
    scratch_dir: Path | None = None,
) -> ToolSpec:
    """Admit the tool of a ``.py`` file with its tests (``--tests``, else ``name.tests.json``).

    Raises:
        AuthoringError: The files cannot be read, or the tool is refused.
    """
    try:
        source = source_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthoringError(f"cannot read {source_file}: {exc}") from None
    if tests_file is None:
        tests_file = tests_beside(source_file)
        if not tests_file.is_file():
            raise AuthoringError(
                f"{source_file}: no tests; give them with --tests FILE (a JSON list of test "
                f"cases) or in {tests_file.name} beside it: a tool is admitted only when its "
                "tests pass"
            )
    tests = read_tests(tests_file)
    return admit_source(
        source, tests, sandbox=sandbox, where=str(source_file), scratch_dir=scratch_dir
    )


# ------------------------------------------------------------- edited exports


@dataclass
class EditedTool:
    """A tool whose current source in an export folder differs from the exported one.

    Attributes:
        name: The tool.
        exported_version: The version that was exported as current.
        source_file: The edited file.
        source: Its content.
        tests: The exported version's tests (run against the edited source).
    """

    name: str
    exported_version: int
    source_file: Path
    source: str
    tests: list[dict[str, Any]]


def edited_exports(directory: Path) -> list[EditedTool]:
    """The tools of an export whose current source (``name.py``) was edited since the export.

    Args:
        directory: A folder written by ``insitu tools export``.

    Raises:
        AuthoringError: No or a malformed manifest, or a missing source file.
    """
    from insitu.tool_store.exchange import MANIFEST

    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        entries = manifest["tools"]
    except FileNotFoundError:
        raise AuthoringError(f"{directory} holds no {MANIFEST}; is it an insitu export?") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuthoringError(f"{directory / MANIFEST} is not an insitu manifest: {exc}") from None
    edited = []
    for entry in entries:
        try:
            name = entry["name"]
            current = next(v for v in entry["versions"] if v["version"] == entry["current_version"])
            path = (directory / current["source_file"]).resolve()
            if directory.resolve() not in path.parents:
                raise AuthoringError(f"{name}: source file {current['source_file']!r} is outside")
            data = path.read_bytes()
            tests = [ToolTest.model_validate(t).model_dump() for t in current["tests"]]
        except AuthoringError:
            raise
        except OSError as exc:
            raise AuthoringError(f"cannot read a source file of the export: {exc}") from None
        except (KeyError, TypeError, StopIteration, ValidationError) as exc:
            raise AuthoringError(
                f"{directory / MANIFEST}: a tool entry is malformed: {exc}"
            ) from None
        if hashlib.sha256(data).hexdigest() != current["source_sha256"]:
            edited.append(
                EditedTool(
                    name=name,
                    exported_version=int(entry["current_version"]),
                    source_file=path,
                    source=data.decode("utf-8", errors="replace"),
                    tests=tests,
                )
            )
    return edited


def reimport_edited(
    store: ToolStore,
    directory: Path,
    *,
    sandbox: Sandbox,
    force: bool = False,
    scratch_dir: Path | None = None,
) -> tuple[list[EditedTool], CommitResult]:
    """Admit every edited tool of an export and commit each as a new version (all or none).

    Each edited source must keep its tool's name and pass the tests exported
    with it, in the sandbox. The library's tool must still be at the exported
    version (else someone changed it since: refused), active, and unlocked
    unless ``force``.

    Returns:
        The edited tools and the commit's result (``updated``: the new versions).

    Raises:
        AuthoringError: Nothing edited, a tool refused, or one the library cannot take.
        StoreError: The commit was refused (nothing written).
    """
    edited = edited_exports(directory)
    if not edited:
        raise AuthoringError(
            f"no tool of {directory} was edited since the export (every source matches its "
            "recorded SHA-256): nothing to import as a new version"
        )
    for tool in edited:
        if not store.has(tool.name):
            raise AuthoringError(
                f"{tool.name} is not in this library: import the export first, or add the file "
                "with `insitu tools add`"
            )
        state = store.state(tool.name)
        if state.locked and not force:
            raise AuthoringError(f"{tool.name} is locked: pass --force to add a version anyway")
        if state.status != "active":
            raise AuthoringError(f"{tool.name} is archived: restore it first")
        if state.current_version != tool.exported_version:
            raise AuthoringError(
                f"{tool.name} changed since the export (now version {state.current_version}, "
                f"exported {tool.exported_version}): export again and redo the edit"
            )
    changes = ChangeSet(note=f"edited in {directory}")
    for tool in edited:
        spec = admit_source(
            tool.source,
            tool.tests,
            sandbox=sandbox,
            where=str(tool.source_file),
            expected_name=tool.name,
            scratch_dir=scratch_dir,
        )
        changes.update(
            tool.name,
            spec,
            origin="manual",
            note=f"edited in {tool.source_file}",
            expected_version=tool.exported_version,
            force=force,
        )
    return edited, store.commit(changes)
