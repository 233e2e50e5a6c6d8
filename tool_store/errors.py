"""Exceptions of the tool store: one class per kind of bad input or state.

Every error a caller can provoke (an unknown tool, a bad version, a locked
tool, a corrupted manifest, a second writer...) raises a subclass of
:class:`StoreError` whose message says what happened and what to do. None of
them is raised after a partial write: the library is unchanged when they
surface.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class StoreError(Exception):
    """Base class of every tool-store error."""


class ToolNotFoundError(StoreError, LookupError):
    """No tool has this name; ``suggestions`` lists close names in the library."""

    def __init__(self, name: str, known: Iterable[str] = (), *, archived: bool = False) -> None:
        self.name = name
        self.suggestions = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
        hint = (
            f" Did you mean {', '.join(repr(s) for s in self.suggestions)}?"
            if self.suggestions
            else ""
        )
        where = "archived or active " if archived else ""
        super().__init__(f"no {where}tool named {name!r} in the library.{hint}")

    def __str__(self) -> str:
        # LookupError would otherwise render like KeyError does for some callers.
        return self.args[0]


class VersionNotFoundError(StoreError, LookupError):
    """The tool exists but has no such version."""

    def __init__(self, name: str, version: int, versions: Sequence[int]) -> None:
        self.name = name
        self.version = version
        self.versions = list(versions)
        span = f"1..{max(versions)}" if versions else "none"
        super().__init__(f"tool {name!r} has no version {version!r} (versions: {span}).")


class DuplicateToolError(StoreError):
    """A tool with this name already exists (use ``update`` for a new version)."""

    def __init__(self, name: str, *, status: str = "active") -> None:
        self.name = name
        extra = " (archived: restore() it, or choose another name)" if status == "archived" else ""
        super().__init__(
            f"a tool named {name!r} already exists{extra}; use update() to add a new version "
            "or choose another name."
        )


class LockedToolError(StoreError):
    """The tool is locked: automated changes may not touch it."""

    def __init__(self, name: str, action: str) -> None:
        self.name = name
        self.action = action
        super().__init__(
            f"tool {name!r} is locked; refusing to {action} it. Unlock it first "
            f"(`insitu tools lock {name} --unlock`) or pass force=True."
        )


class ToolArchivedError(StoreError):
    """The operation needs an active tool but this one is archived."""

    def __init__(self, name: str, action: str) -> None:
        self.name = name
        super().__init__(f"tool {name!r} is archived; restore() it before you {action} it.")


class VersionConflictError(StoreError):
    """The tool moved on since the caller read it (optimistic concurrency check)."""

    def __init__(self, name: str, expected: int, current: int) -> None:
        self.name = name
        self.expected = expected
        self.current = current
        super().__init__(
            f"tool {name!r} changed meanwhile: the change was based on version {expected} but "
            f"the current version is {current}; re-read the tool and redo the change."
        )


class InvalidSpecError(StoreError, ValueError):
    """A spec (or change) fails the store's validation; ``problems`` lists why."""

    def __init__(self, problems: Sequence[str], name: str | None = None) -> None:
        self.problems = list(problems)
        self.name = name
        who = f"tool {name!r}" if name else "the tool"
        body = "; ".join(self.problems)
        super().__init__(f"invalid {who}: {body}")


class StoreLockedError(StoreError):
    """Another process holds the store's writer lock."""

    def __init__(self, lock_path: str, owner: str | None = None) -> None:
        self.lock_path = lock_path
        self.owner = owner
        held = f" by {owner}" if owner else ""
        super().__init__(
            f"the tool store is in use{held} (lock file {lock_path}). One process writes a "
            "local store at a time: open it read-only (read_only=True; `insitu tools list` "
            "and `insitu tools search` do), wait for that process to finish, or share the "
            "library between processes in server mode (run `chroma run --path DIR --port P` "
            "and open every store with chroma_url='http://127.0.0.1:P')."
        )


class ReadOnlyStoreError(StoreError):
    """A write was attempted on a store opened with ``read_only=True``."""

    def __init__(self, action: str) -> None:
        super().__init__(f"the store is open read-only; cannot {action}. Reopen it writable.")


class StoreClosedError(StoreError):
    """The store was closed."""

    def __init__(self) -> None:
        super().__init__("the tool store is closed; open it again with ToolStore.open().")


class StoreFormatError(StoreError):
    """The store directory holds data this version cannot read."""


class IndexUnavailableError(StoreError):
    """The retrieval index (Chroma, local or server) cannot be reached or opened."""


class CorruptManifestError(StoreError):
    """An exported library folder is damaged or inconsistent; nothing was imported."""


class ImportConflictError(StoreError):
    """Importing would overwrite existing tools and ``on_conflict='error'``."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        listed = ", ".join(self.names[:10]) + (" ..." if len(self.names) > 10 else "")
        super().__init__(
            f"{len(self.names)} tool(s) already exist with different content: {listed}. "
            "Nothing was imported; use on_conflict='skip' or 'replace'."
        )


class ExportError(StoreError):
    """The export target cannot be written safely."""
