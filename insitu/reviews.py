"""Tool reviews waiting for a decision, kept in the store so that any shell can answer them.

When a run pauses for a review (``tool_approval``) and nobody is at the
terminal to answer, the CLI records the pending review in
``<store>/reviews.json``; ``insitu tools pending`` lists it, ``insitu tools
approve|reject NAME`` records decisions, and running the paused command again
(``insitu run --resume THREAD``, or the same ``insitu evolve``) resumes the run
with them. The file is rewritten atomically; each entry is keyed by the paused
run's checkpoint thread.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REVIEWS_FILE = "reviews.json"


class ReviewError(ValueError):
    """A decision that cannot be recorded (no such pending tool, or ambiguous)."""


def _path(store_dir: str | Path) -> Path:
    return Path(store_dir) / REVIEWS_FILE


def load(store_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every pending review of a store, by thread: ``{command, review, decisions, at}``."""
    path = _path(store_dir)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReviewError(f"{path} is damaged ({exc}); delete it and run again to review") from None
    return data if isinstance(data, dict) else {}


def _save(store_dir: str | Path, pending: dict[str, dict[str, Any]]) -> None:
    path = _path(store_dir)
    if not pending:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(pending, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def record_pending(
    store_dir: str | Path, thread_id: str, review: dict[str, Any], command: str
) -> None:
    """Keep a paused run's review until it is decided (decisions made so far are kept).

    Args:
        store_dir: The store the run writes to.
        thread_id: The paused run's checkpoint thread.
        review: The review payload.
        command: The command that resumes the run.
    """
    pending = load(store_dir)
    earlier = pending.get(thread_id, {})
    pending[thread_id] = {
        "command": command,
        "review": review,
        "decisions": earlier.get("decisions", {}),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _save(store_dir, pending)


def decide(
    store_dir: str | Path, name: str, decision: dict[str, Any], thread_id: str | None = None
) -> str:
    """Record a decision about one pending tool.

    Args:
        store_dir: The store.
        name: The tool's name.
        decision: ``{"action": "approve" | "reject" | "edit", ...}``.
        thread_id: The paused run, when several have a tool of that name.

    Returns:
        The thread id the decision was recorded for.

    Raises:
        ReviewError: No pending review has that tool, or several do and
            ``thread_id`` does not say which.
    """
    pending = load(store_dir)
    threads = [
        t
        for t, entry in pending.items()
        if (thread_id is None or t == thread_id)
        and any(item["name"] == name for item in entry["review"].get("tools", []))
    ]
    if not threads:
        known = sorted({i["name"] for e in pending.values() for i in e["review"].get("tools", [])})
        raise ReviewError(
            f"no pending review has a tool named {name!r}; pending: {', '.join(known) or 'none'}"
        )
    if len(threads) > 1:
        raise ReviewError(
            f"{name!r} is pending in several runs ({', '.join(threads)}); give --thread"
        )
    pending[threads[0]]["decisions"][name] = decision
    _save(store_dir, pending)
    return threads[0]


def decisions_for(store_dir: str | Path, thread_id: str) -> dict[str, Any] | None:
    """The recorded decisions of a paused run, if every tool of its review has one."""
    entry = load(store_dir).get(thread_id)
    return complete_decisions(entry) if entry is not None else None


def complete_decisions(entry: dict[str, Any]) -> dict[str, Any] | None:
    """A pending review's decisions, if every tool of it has one (else ``None``)."""
    names = [item["name"] for item in entry["review"].get("tools", [])]
    decided = entry["decisions"]
    return decided if all(n in decided for n in names) else None


def undecided(store_dir: str | Path, thread_id: str) -> list[str]:
    """The tools of a paused run's review that have no decision yet."""
    entry = load(store_dir).get(thread_id) or {"review": {}, "decisions": {}}
    return [
        item["name"]
        for item in entry["review"].get("tools", [])
        if item["name"] not in entry["decisions"]
    ]


def resolved(store_dir: str | Path, thread_id: str) -> None:
    """Forget a review once its run has resumed with the decisions."""
    pending = load(store_dir)
    if pending.pop(thread_id, None) is not None:
        _save(store_dir, pending)
