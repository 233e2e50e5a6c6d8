"""The store's value types, spec validation and where a store is: what every part of it shares.

:class:`ToolHit`, :class:`ToolState`, :class:`IndexReport` and :class:`StoreEvent`
are what :class:`~insitu.tool_store.store.ToolStore` returns besides tool
records; :func:`validate_spec` holds the invariants the library relies on
beyond a spec's own types; :func:`resolve_store_path` finds the store directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from insitu import pyast
from insitu.tool_store.contract import TOOL_NAME_PATTERN, ToolRecord, ToolSpec, ToolStats
from insitu.tool_store.errors import InvalidSpecError
from insitu.tool_store.learning import ToolFollow

ENV_STORE = "INSITU_STORE"
DEFAULT_STORE = ".insitu"
ListStatus = Literal["active", "archived", "all"]


class ToolHit(BaseModel):
    """A search result: the tool's current record and its scores."""

    record: ToolRecord
    score: float
    dense_score: float | None = None
    lexical_score: float | None = None
    rank: int = 1


class ToolState(BaseModel):
    """Per-tool mutable state (what is not part of any version)."""

    name: str
    current_version: int
    status: Literal["active", "archived"]
    locked: bool
    status_reason: str | None = None
    stats: ToolStats


class IndexReport(BaseModel):
    """What an index consistency check found and repaired."""

    checked: Literal["quick", "full"]
    reason: str = ""
    upserted: list[str] = []
    deleted: list[str] = []

    @property
    def repaired(self) -> bool:
        """Whether anything had to be fixed."""
        return bool(self.upserted or self.deleted)


class StoreEvent(BaseModel):
    """One entry of the store's event log (state changes, never statistics)."""

    seq: int
    at: datetime
    name: str
    action: str
    detail: str | None = None


@dataclass
class PendingWork:
    """Work collected inside one write transaction, finished after it commits."""

    names: set[str] = field(default_factory=set)
    events: list[tuple[str, str, str | None]] = field(default_factory=list)
    follow: ToolFollow = field(default_factory=ToolFollow)
    experiences: bool = False


def resolve_store_path(path: str | os.PathLike[str] | None) -> Path:
    """Return the store directory: ``path``, else ``$INSITU_STORE``, else ``./.insitu``."""
    return Path(path if path is not None else os.environ.get(ENV_STORE) or DEFAULT_STORE)


def validate_spec(spec: ToolSpec | dict[str, Any]) -> ToolSpec:
    """Check the invariants the library relies on, beyond the spec's own types.

    Args:
        spec: A ``ToolSpec`` or its dict form.

    Returns:
        The spec (parsed if a dict was given).

    Raises:
        InvalidSpecError: Listing every problem found.
    """
    if not isinstance(spec, ToolSpec):
        try:
            spec = ToolSpec.model_validate(spec)
        except ValidationError as exc:
            name = spec.get("name") if isinstance(spec, dict) else None
            problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
            raise InvalidSpecError(problems, name if isinstance(name, str) else None) from None
    problems: list[str] = []
    if not TOOL_NAME_PATTERN.match(spec.name):
        problems.append(
            f"name {spec.name!r} is not a verb_object snake_case name (e.g. 'parse_csv_rows')"
        )
    if not spec.description.strip():
        problems.append("description is empty")
    if not spec.source.strip():
        problems.append("source is empty")
    else:
        try:
            pyast.parse(spec.source)
        except SyntaxError as exc:
            problems.append(f"source does not parse: line {exc.lineno}: {exc.msg}")
    test_names = [t.name for t in spec.tests]
    if len(set(test_names)) != len(test_names):
        problems.append("test names are not unique")
    if problems:
        raise InvalidSpecError(problems, spec.name)
    return spec
