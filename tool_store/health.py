"""Store states that are not a working library, found without writing anything.

A store directory can be unusable in ways that have nothing to do with its
contents being wrong: it is read-only, it is a file, its records (``tools.db``)
were deleted while the rest stayed, its index or its checkpoints were damaged
by a crash or a full disk. Each state is a :class:`StoreError` subclass whose
message is one line saying what is damaged, what it holds and how to repair
it, raised before anything is created or changed. ``docs/troubleshooting.md``
lists them all.

The checks here only read: the store opens them before taking its lock or
creating a file, and ``insitu doctor`` runs them on a store it must not touch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from insitu.tool_store.errors import IndexUnavailableError, StoreError

DB_NAME = "tools.db"
INDEX_DIR = "index"
LOCK_NAME = "store.lock"
CHECKPOINTS_NAME = "checkpoints.sqlite"
#: What a store directory holds besides its records once a library was there. Left out:
#: ``toolenv/`` (the tools' virtualenv) and ``workspaces/``, which a new episode creates
#: before it first opens the store; neither says anything about the records.
STATE_ENTRIES = (INDEX_DIR, CHECKPOINTS_NAME)
#: What the records hold, said in every message about them.
RECORDS_HOLD = "every tool, its versions and statistics"
_SQLITE_MAGIC = b"SQLite format 3\x00"


class StoreStateError(StoreError):
    """A store directory in a state no command can use as it is (the message says the repair).

    Attributes:
        path: The file or directory at fault.
    """

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        super().__init__(message)


class StorePathNotDirectoryError(StoreStateError):
    """The store path, or a folder above it, is a file."""


class RecordsMissingError(StoreStateError):
    """``tools.db`` is gone but the directory holds the rest of a library."""


class RecordsDamagedError(StoreStateError):
    """``tools.db`` exists but SQLite cannot read it."""


class ReadOnlyLibraryError(StoreStateError):
    """A command that writes was given a store it cannot write."""


class IndexDamagedError(StoreStateError, IndexUnavailableError):
    """The local Chroma index cannot be opened (the records are intact)."""


class CheckpointsDamagedError(StoreStateError):
    """A ``checkpoints.sqlite`` (a store's or a run's) cannot be read."""


# ------------------------------------------------------------------ messages


def records_damaged(db_path: Path, detail: str) -> RecordsDamagedError:
    """The error for a ``tools.db`` SQLite cannot read."""
    return RecordsDamagedError(
        db_path,
        f"the tool records at {db_path} ({RECORDS_HOLD}) are damaged: {one_line(detail)}; "
        "restore tools.db from a backup, or move it aside and rebuild the library from an "
        f"export with `insitu tools import EXPORT_DIR --store {db_path.parent}` (the index "
        "cannot rebuild the tools); nothing was changed",
    )


def records_failure(db_path: Path, error: sqlite3.DatabaseError) -> StoreError | None:
    """The one-line error for an SQLite error met opening ``tools.db``, if it is damage.

    Returns:
        ``None`` when the file looks intact (a busy or locked database is not damage).
    """
    damage = sqlite_damage(db_path)
    if damage is None and any(
        sign in str(error) for sign in ("malformed", "not a database", "disk I/O error")
    ):
        damage = str(error)
    return records_damaged(db_path, damage) if damage else None


def index_damaged(index_dir: Path, store_dir: Path, detail: str) -> IndexDamagedError:
    """The error for a local index that cannot be opened."""
    return IndexDamagedError(
        index_dir,
        f"the tool index at {index_dir} (search data derived from tools.db) cannot be opened: "
        f"{one_line(detail)}; rebuild it from the records with `insitu tools reindex --store "
        f"{store_dir}` (the damaged index is moved aside; tools.db is intact)",
    )


#: What each holder's checkpoints keep, and what moving them aside costs.
_CHECKPOINT_ROLES = {
    "store": (
        "the store's checkpoints (runs of `insitu run` that were interrupted or await a tool "
        "review, resumable with --resume)",
        "run those tasks again (they cannot be resumed); the tool library (tools.db) is intact",
    ),
    "run": (
        "the run's checkpoints (its unfinished batch: paused or interrupted episodes)",
        "run the same command again: finished batches are kept (predictions.jsonl, "
        "steps.jsonl) and the unfinished one runs again from its start",
    ),
}


def checkpoints_damaged(
    path: Path, holder: Literal["store", "run"], detail: str
) -> CheckpointsDamagedError:
    """The error for a damaged ``checkpoints.sqlite``.

    Args:
        path: The checkpoints file.
        holder: ``store`` (``insitu run``'s) or ``run`` (an ``insitu evolve`` run's).
        detail: What SQLite or the size check found.
    """
    what, after = _CHECKPOINT_ROLES[holder]
    return CheckpointsDamagedError(
        path,
        f"{what} at {path} are damaged: {one_line(detail)}; move the file aside "
        f"(mv {path} {path}.damaged) and {after}",
    )


def one_line(text: str, limit: int = 300) -> str:
    """Collapse a message onto one line of at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# ------------------------------------------------------------- the directory


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def check_location(path: Path) -> None:
    """Refuse a store path that is (or lies under) a file.

    Raises:
        StorePathNotDirectoryError: With the file named.
    """
    existing = _nearest_existing(path)
    if existing.is_dir():
        return
    if existing == path:
        raise StorePathNotDirectoryError(
            path,
            f"the store path {path} is a file, not a tool library directory: point --store (or "
            "$INSITU_STORE) at the library's directory, or move the file away; nothing was "
            "changed",
        )
    raise StorePathNotDirectoryError(
        existing,
        f"the store path {path} lies under {existing}, which is a file, not a directory: point "
        "--store (or $INSITU_STORE) elsewhere; nothing was changed",
    )


def leftover_state(path: Path) -> list[str]:
    """What a store directory holds besides ``tools.db`` (``index/``, checkpoints, …)."""
    return [
        name + ("/" if (path / name).is_dir() else "")
        for name in STATE_ENTRIES
        if (path / name).exists()
    ]


def check_records_present(path: Path) -> None:
    """Refuse a directory whose ``tools.db`` is gone while the rest of a library stayed.

    A writer would otherwise start a new, empty library there, and a reader would
    say nothing was ever stored.

    Raises:
        RecordsMissingError: Naming what is left and how to restore the records.
    """
    if (path / DB_NAME).exists() or not path.is_dir():
        return
    left = leftover_state(path)
    if left:
        raise RecordsMissingError(
            path / DB_NAME,
            f"the tool library at {path} has lost its records ({DB_NAME} is missing: it held "
            f"{RECORDS_HOLD}) but still holds {', '.join(left)}: restore {DB_NAME} from a "
            f"backup, or rebuild the library from an export with `insitu tools import "
            f"EXPORT_DIR --store {path}`; to start an empty library, move the directory aside "
            "first; nothing was changed",
        )


def unwritable_reason(path: Path) -> str | None:
    """Why nothing can be written in the store ``path`` (``None`` when it can).

    Looks at the directory (or, if it does not exist yet, the folder it would be
    created in) and at the records' files, without creating anything.
    ``os.access`` reports a read-only mount even to root.
    """
    where = path if path.is_dir() else _nearest_existing(path)
    try:
        read_only_mount = bool(os.statvfs(where).f_flag & os.ST_RDONLY)
    except OSError:
        read_only_mount = False
    if read_only_mount:
        return f"{where} is on a read-only file system"
    if not os.access(where, os.W_OK | os.X_OK):
        return f"no write permission on {where}"
    for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
        target = path / name
        if target.exists() and not os.access(target, os.W_OK):
            return f"{target} is not writable"
    return None


def check_writable(path: Path, action: str = "change it") -> None:
    """Refuse a store path that a writer could not use, before it creates anything.

    Args:
        path: The store directory.
        action: What the writer was going to do, for the message.

    Raises:
        StorePathNotDirectoryError, ReadOnlyLibraryError.
    """
    check_location(path)
    reason = unwritable_reason(path)
    if reason is None:
        return
    raise ReadOnlyLibraryError(
        path,
        f"the tool library at {path} is read-only ({reason}): reading commands (tools list, "
        f"show, search, history, export) work, but to {action} it must be writable; make it "
        "writable, or copy it to a writable place and pass --store COPY; nothing was changed",
    )


def set_aside(path: Path, label: str = "damaged") -> Path:
    """Move ``path`` to ``<name>.<label>-<UTC time>`` next to it in one rename.

    Returns:
        Where it went.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.{label}-{stamp}")
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.{label}-{stamp}-{number}")
    os.rename(path, target)  # atomic on one file system: the old state or the new, never half
    return target


# ------------------------------------------------------------------- SQLite


def connect_read_only(db_path: Path) -> sqlite3.Connection:
    """Open an SQLite database for reading only, also where nothing can be written.

    A database in WAL mode needs its ``-shm`` file, which SQLite creates on
    first read; in a read-only directory that fails with "unable to open
    database file". When there is no ``-wal`` file, the file holds every
    committed write, so it is opened ``immutable`` (no locking, no ``-shm``).

    Raises:
        ReadOnlyLibraryError: The directory is read-only and a ``-wal`` file holds
            writes that SQLite cannot read without writing next to it.
        sqlite3.DatabaseError: The database cannot be read (damaged).
    """
    connection = _connect(db_path, immutable=False)
    try:
        connection.execute("PRAGMA schema_version").fetchone()
        return connection
    except sqlite3.OperationalError as exc:
        connection.close()
        if "unable to open" not in str(exc) or unwritable_reason(db_path.parent) is None:
            raise
    wal = db_path.with_name(db_path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise ReadOnlyLibraryError(
            db_path.parent,
            f"the tool library at {db_path.parent} is read-only and its latest writes are still "
            f"in {wal.name}, which SQLite can only read by writing next to it: open it once "
            "where it is writable (any writing insitu command does), or copy the directory to a "
            "writable place and pass --store COPY",
        )
    return _connect(db_path, immutable=True)


def _connect(db_path: Path, *, immutable: bool) -> sqlite3.Connection:
    flags = "mode=ro&immutable=1" if immutable else "mode=ro"
    return sqlite3.connect(
        f"{db_path.resolve().as_uri()}?{flags}",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )


def sqlite_damage(path: Path, *, thorough: bool = False) -> str | None:
    """What is wrong with an SQLite file, read without writing (``None``: nothing found).

    Args:
        path: The database file (a missing one is not damaged: it is created when needed).
        thorough: Also run ``PRAGMA quick_check`` (reads every page; for the doctor).

    Returns:
        One line: garbage, truncated (with sizes), or SQLite's own error.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            header = handle.read(100)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return f"{path} is a directory, not a database file"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if size == 0:
        return None  # SQLite treats an empty file as an empty database
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        return "not an SQLite database (overwritten or garbage)"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The header's page count is valid when its "version-valid-for" equals the change
    # counter. With a -wal file the missing pages may still be in it (a crash during a
    # checkpoint), so the size says nothing then.
    count_valid = header[92:96] == header[24:28]
    wal = path.with_name(path.name + "-wal")
    has_wal = wal.exists() and wal.stat().st_size > 0
    expected = pages * page_size
    if count_valid and not has_wal and size < expected:
        return f"truncated: {size} of its {expected} bytes are left"
    try:
        connection = connect_read_only(path)
    except ReadOnlyLibraryError:
        return None  # cannot tell without writing; not a sign of damage
    except sqlite3.DatabaseError as exc:
        return str(exc)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if thorough:
            rows = connection.execute("PRAGMA quick_check").fetchall()
            problems = [row[0] for row in rows if row[0] != "ok"]
            if problems:
                return "; ".join(problems[:3])
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        connection.close()
    return None


def check_checkpoints(path: Path, holder: Literal["store", "run"]) -> None:
    """Refuse a damaged ``checkpoints.sqlite`` before LangGraph fails on it mid-way.

    The check is cheap (the header and the schema, not every page); damage found
    later, while the checkpoints are read, is reported by :func:`checkpoint_failure`.

    Raises:
        CheckpointsDamagedError: Naming what they hold and how to recover.
    """
    damage = sqlite_damage(path)
    if damage is not None:
        raise checkpoints_damaged(path, holder, damage)


def checkpoint_failure(
    path: Path, holder: Literal["store", "run"], error: sqlite3.DatabaseError
) -> CheckpointsDamagedError | None:
    """The one-line error for an SQLite error met while using checkpoints, if they are damaged.

    Args:
        path: The checkpoints file.
        holder: Whose they are (see :func:`checkpoints_damaged`).
        error: What SQLite raised (from these checkpoints, or from ``tools.db``:
            only a check of the file itself tells which).

    Returns:
        ``None`` when the checkpoints are intact (the error came from elsewhere).
    """
    damage = sqlite_damage(path, thorough=True)
    return checkpoints_damaged(path, holder, f"{damage} ({error})") if damage else None


# ------------------------------------------------------------------- index


def index_damage(index_dir: Path) -> str | None:
    """What is wrong with a local Chroma index directory, read without writing.

    A missing index is not damage: the next writer rebuilds it from the records.
    """
    if not index_dir.exists():
        return None
    if not index_dir.is_dir():
        return f"{index_dir} is a file, not a directory"
    database = index_dir / "chroma.sqlite3"
    if not database.exists():
        has_segments = any(entry.is_dir() for entry in index_dir.iterdir())
        return "chroma.sqlite3 is missing" if has_segments else None
    damage = sqlite_damage(database, thorough=True)
    return f"chroma.sqlite3: {damage}" if damage else None


# -------------------------------------------------------------------- lock


def lock_holder(path: Path) -> str | None:
    """Who holds the store's writer lock, or ``None`` if nobody does; takes nothing.

    The lock is an ``flock`` on ``store.lock`` (the ``filelock`` package); a
    test on a read-only descriptor needs no write access and is released at once.
    """
    lock_path = path / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        return _lock_owner(path) or "another process"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _lock_owner(path: Path) -> str | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        owner = json.loads((path / (LOCK_NAME + ".owner")).read_text())
        return f"pid {owner['pid']} on {owner['host']} since {owner['since']}"
    return None


# ------------------------------------------------------------------ a survey


@dataclass(frozen=True)
class Finding:
    """One part of a store and its state, for ``insitu doctor``.

    Attributes:
        part: ``records``, ``index``, ``checkpoints``, ``lock`` or ``access``.
        problem: ``None`` when fine, ``warn`` when usable with a limit, ``fail``
            when a command would fail.
        detail: One line: what was found, and the repair.
    """

    part: str
    problem: Literal["warn", "fail"] | None
    detail: str


def survey(path: Path) -> list[Finding]:
    """Every part of an existing store checked without writing (records excepted: see doctor).

    Args:
        path: The store directory (holding ``tools.db``).
    """
    findings = []
    reason = unwritable_reason(path)
    if reason:
        findings.append(
            Finding(
                "access",
                "warn",
                f"read-only ({reason}): reading commands work; writing ones (run, evolve, "
                "tools edits) refuse; make it writable or copy it to use them",
            )
        )
    damage = index_damage(path / INDEX_DIR)
    if damage:
        findings.append(
            Finding("index", "fail", one_line(str(index_damaged(path / INDEX_DIR, path, damage))))
        )
    elif not (path / INDEX_DIR).exists():
        findings.append(
            Finding("index", None, "no local index yet: the next writing command builds it")
        )
    else:
        findings.append(Finding("index", None, "readable"))
    checkpoints = path / CHECKPOINTS_NAME
    damage = sqlite_damage(checkpoints, thorough=True)
    if damage:
        findings.append(
            Finding("checkpoints", "fail", str(checkpoints_damaged(checkpoints, "store", damage)))
        )
    elif checkpoints.exists():
        findings.append(Finding("checkpoints", None, "readable"))
    holder = lock_holder(path)
    if holder:
        findings.append(
            Finding(
                "lock",
                "warn",
                f"held by {holder}: writing commands on this store refuse until it ends "
                "(reading ones work)",
            )
        )
    return findings
