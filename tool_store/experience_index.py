"""The store's side of what the team learned: the experience index and the learning reads.

A mixin of :class:`~insitu.tool_store.store.ToolStore`. The records
(experiences, usage notes, harvested cases) and how they follow the tools are
:mod:`insitu.tool_store.learning`'s; here they are read back, and experiences
are kept in a Chroma collection of their own (on the tool index's client) for
:meth:`Experiences.search_experiences`, with the same pending-mark scheme as
tools: a commit marks the experiences it writes, the index update clears the
marks, and an open repairs what a crash left.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from insitu.tool_store.learning import (
    Experience,
    HarvestedCase,
    UsageNote,
    effective_note,
    read_cases,
    read_experiences,
)

if TYPE_CHECKING:
    from insitu.tool_store.index import ToolIndex

log = logging.getLogger("insitu.tool_store")


class Experiences:
    """The learning side of :class:`~insitu.tool_store.store.ToolStore` (a mixin of it)."""

    path: Path
    read_only: bool
    chroma_url: str | None
    embedding_name: str
    _experience_index: ToolIndex | None
    _memory_experiences: tuple[ToolIndex, tuple[int, int]] | None
    _has_learning: bool | None

    # The core and the index side provide these.
    _reading: Any
    _records: Any
    _lock: Any
    _check_open: Any
    _embed_missing: Any
    _save_vectors: Any

    def _learning_tables(self) -> bool:
        """Whether the records hold the learning tables (a store last written by an older
        insitu and opened read-only does not)."""
        if self._has_learning is None:
            with self._reading() as records:
                self._has_learning = records.has_learning()
        return self._has_learning

    def _experience_vectors(self, experiences: Sequence[Experience]) -> dict[str, np.ndarray]:
        """``{text hash: vector}`` of experiences, from the vector cache or freshly embedded."""
        if not experiences:
            return {}
        return self._embed_missing({e.text_hash(): e.embedding_text() for e in experiences})

    @staticmethod
    def _experience_doc(experience: Experience, vector: np.ndarray | None) -> Any:
        from insitu.tool_store.index import IndexDoc

        return IndexDoc(
            id=experience.id,
            text=experience.embedding_text(),
            metadata={"status": experience.status, "generation": experience.generation or 0},
            embedding=vector,
        )

    def _sync_experiences(self, ids: Sequence[str] | None = None) -> bool:
        """Index the pending experiences (or ``ids``) and clear their marks.

        Returns:
            True on success; False if the index failed (the marks stay, retried later).
        """
        if self._experience_index is None:
            return True
        with self._records.index_guard():
            if ids is None:
                with self._reading() as records:
                    ids = records.experience_ids(pending=True)
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                with self._reading() as records:
                    found = list(read_experiences(records, chunk).values())
                try:
                    vectors = self._experience_vectors(found)
                    self._experience_index.upsert(
                        self._experience_doc(e, vectors[e.text_hash()]) for e in found
                    )
                except Exception as exc:
                    log.warning(
                        "experience index update failed (%s: %s); the records are saved and the "
                        "index will be repaired on the next open or search",
                        type(exc).__name__,
                        exc,
                    )
                    return False
                with self._records.write() as records:
                    records.clear_experience_pending(chunk)
                    self._save_vectors(records, vectors)
        return True

    def _verify_experiences(self) -> None:
        """Repair the experience index: pending marks, and ids missing or left over."""
        if self._experience_index is None:
            return
        self._sync_experiences()
        with self._reading() as records:
            ids = set(records.experience_ids())
        if self._experience_index.count() == len(ids):
            return
        indexed = set(self._experience_index.metadata())
        self._experience_index.delete(sorted(indexed - ids))
        missing = sorted(ids - indexed)
        if missing:
            log.warning(
                "experience index of %s: re-indexing %d experience(s)", self.path, len(missing)
            )
            self._sync_experiences(missing)

    def _memory_experience_index(self) -> ToolIndex:
        """An in-memory index of the experiences (read-only stores), rebuilt when they change."""
        from insitu.tool_store.index import ToolIndex

        with self._reading() as records:
            key = records.experience_state()
            if self._memory_experiences is not None and self._memory_experiences[1] == key:
                return self._memory_experiences[0]
            ids = records.experience_ids()
            index = ToolIndex(None, embedding=self.embedding_name)
            for start in range(0, len(ids), 500):
                found = list(read_experiences(records, ids[start : start + 500]).values())
                vectors = self._experience_vectors(found)
                index.upsert(self._experience_doc(e, vectors[e.text_hash()]) for e in found)
        self._memory_experiences = (index, key)
        return index

    def search_experiences(self, query: str, k: int = 3) -> list[Experience]:
        """The experiences of the tasks most similar to ``query`` (dense search), best first.

        Each carries its ``similarity`` to the query (cosine).

        Their tool references are as they are now: renamed by merges, marked
        stale by archives and rollbacks.
        """
        if k <= 0 or not query.strip():
            return []
        self._check_open()
        with self._lock:
            if not self._learning_tables():
                return []
            if self.read_only or self._experience_index is None:
                index = self._memory_experience_index()
            else:
                index = self._experience_index
                with self._reading() as records:
                    pending = bool(records.experience_ids(pending=True, limit=1))
                if pending and self.chroma_url is None:  # the sole writer may repair here
                    self._sync_experiences()
            if index.count() == 0:
                return []
            hits = index.search(query, k=k, mode="dense")
            with self._reading() as records:
                found = read_experiences(records, [h.id for h in hits])
            return [
                found[h.id].model_copy(update={"similarity": h.dense_score})
                for h in hits
                if h.id in found
            ]

    def experiences(self, *, limit: int = 100, task_id: str | None = None) -> list[Experience]:
        """The latest experiences (newest last), optionally of one task."""
        with self._reading() as records:
            if not self._learning_tables():
                return []
            ids = records.experience_ids(limit=limit, task_id=task_id)
            found = read_experiences(records, ids)
            return [found[i] for i in ids if i in found]

    def usage_notes(self, name: str, version: int | None = None) -> UsageNote | None:
        """How to call ``name@version``: the newest note written at a version <= it.

        Args:
            name: The tool.
            version: A version (default: the newest note of any version).
        """
        with self._reading() as records:
            if not self._learning_tables():
                return None
            return effective_note(records, name, version)

    def harvested_cases(self, name: str, *, include_stale: bool = False) -> list[HarvestedCase]:
        """The regression cases harvested from real calls of a tool, oldest first.

        Args:
            name: The tool.
            include_stale: Also the cases of versions a rollback undid.
        """
        with self._reading() as records:
            if not self._learning_tables():
                return []
            return read_cases(records, name, include_stale=include_stale)
