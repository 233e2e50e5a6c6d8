"""Keeping the search index in step with the records: sync, verification, reindex, catch-up.

The records are the source of truth; the index (Chroma: a directory in the
store, or a server) is derived from them. A write marks the tools it touches
*index-pending* in its record transaction; then :meth:`IndexSync._sync_index`
writes them to the index, clears the marks and stamps the collection with the
records' generation. A crash between the two leaves marks behind; an index
directory deleted or restored from an old copy leaves a stamp or count that does
not match: :meth:`IndexSync._verify_index` (run at open) re-indexes just what
differs, comparing content hashes.

Where writers' record transactions do not also serialise their index updates
(records on PostgreSQL), index updates run under the backend's
:meth:`~insitu.tool_store.records.base.RecordBackend.index_guard`, re-read the
current records inside it, and clear only the marks of tools not changed after
what they read: whatever the order of two writers' updates, the last state wins.

Also here: the vector cache (embeddings kept in the records, so reopening or
rebuilding embeds nothing twice) and the in-memory index of readers
(:meth:`IndexSync._memory_index`), built from the records and the vector cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from insitu.tool_store import health
from insitu.tool_store.contract import ToolRecord, ToolSpec
from insitu.tool_store.errors import IndexUnavailableError
from insitu.tool_store.store_models import IndexReport
from insitu.tool_store.text import TOOL_TEXT_VERSION

if TYPE_CHECKING:
    from insitu.tool_store.index import ToolIndex
    from insitu.tool_store.records.base import RecordBackend, RecordTxn

log = logging.getLogger("insitu.tool_store")

INDEX_DIR = health.INDEX_DIR


class IndexSync:
    """The index side of :class:`~insitu.tool_store.store.ToolStore` (a mixin of it)."""

    path: Path
    read_only: bool
    chroma_url: str | None
    embedding_name: str
    library_id: str
    index_set_aside: Path | None
    _lock: threading.RLock
    _records: RecordBackend
    _index: ToolIndex | None
    _experience_index: ToolIndex | None
    _memory_indexes: dict[bool, tuple[ToolIndex, int]]
    _seen_generation: int
    _index_dirty: bool
    _vectors_warm: bool

    # The reading and learning sides of the store provide these.
    _reading: Any
    _writing: Any
    _records_by_name: Any
    _sync_experiences: Any

    # ------------------------------------------------------------------ open

    def _open_index(self, *, set_aside_damaged: bool = False) -> None:
        """Open the Chroma index; locally, optionally replace one that cannot be opened.

        Args:
            set_aside_damaged: Move a local index that fails to open aside and
                start an empty one (its contents are rebuilt from the records).
        """
        from insitu.tool_store.index import ToolIndex, http_client

        name = f"insitu-tools-{self.library_id[:12]}"
        try:
            if self.chroma_url:
                self._index = ToolIndex(
                    http_client(self.chroma_url),
                    collection=name,
                    embedding=self.embedding_name,
                    replace_on_embedding_change=True,
                )
            else:
                self._index = ToolIndex.persistent(
                    self.path / INDEX_DIR,
                    collection=name,
                    embedding=self.embedding_name,
                    replace_on_embedding_change=True,
                )
            self._open_experience_index()
        except Exception as exc:
            if self.chroma_url:
                raise IndexUnavailableError(
                    f"cannot open the tool index at {self.chroma_url}: {exc}"
                ) from exc
            if not set_aside_damaged:
                raise health.index_damaged(self.path / INDEX_DIR, self.path, str(exc)) from exc
            self._replace_local_index(f"{type(exc).__name__}: {exc}")

    def _open_experience_index(self) -> None:
        """Experiences have a collection of their own on the tool index's Chroma client."""
        from insitu.tool_store.index import ToolIndex

        assert self._index is not None
        self._experience_index = ToolIndex(
            self._index._dense.client,  # type: ignore[union-attr]
            collection=f"insitu-experiences-{self.library_id[:12]}",
            embedding=self.embedding_name,
            replace_on_embedding_change=True,
        )

    def _replace_local_index(self, why: str) -> None:
        """Move the local index directory aside and open an empty one (under the lock)."""
        from insitu.tool_store.index import ToolIndex

        if self._index is not None:
            with contextlib.suppress(Exception):
                self._index.close()
            self._index = None
        self._memory_indexes.clear()
        self._experience_index = None
        self.index_set_aside = health.set_aside(self.path / INDEX_DIR)
        log.warning(
            "the index of %s could not be used (%s); moved it to %s and started a new one",
            self.path,
            health.one_line(why, 200),
            self.index_set_aside,
        )
        self._index = ToolIndex.persistent(
            self.path / INDEX_DIR,
            collection=f"insitu-tools-{self.library_id[:12]}",
            embedding=self.embedding_name,
            replace_on_embedding_change=True,
        )
        self._open_experience_index()

    # ------------------------------------------------------------- vectors

    def _model_key(self) -> str:
        # Cached vectors are of a tool's text as rendered by this text version.
        return f"insitu-{self.embedding_name}-text{TOOL_TEXT_VERSION}"

    def _embed_missing(self, texts: dict[str, str]) -> dict[str, np.ndarray]:
        """``{key: vector}`` for ``{key: text}``: from the vector cache, else freshly embedded."""
        out = self._cached_vectors(list(texts))
        missing = [h for h in texts if h not in out]
        if missing:
            from insitu.tool_store.embeddings import get_embedding_function

            vectors = get_embedding_function(self.embedding_name).embed([texts[h] for h in missing])
            for h, v in zip(missing, vectors, strict=True):
                out[h] = np.asarray(v, dtype=np.float32)
        return out

    def _vectors_for(self, specs: Sequence[ToolSpec]) -> dict[str, np.ndarray]:
        """Return ``{hash: vector}`` for specs, from the cache or freshly embedded."""
        return self._embed_missing({s.content_hash(): s.embedding_text() for s in specs})

    def _cached_vectors(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        with self._reading() as records:
            found = records.vectors(hashes, self._model_key())
        return {h: np.frombuffer(v, dtype=np.float32).copy() for h, v in found.items()}

    def _save_vectors(self, records: RecordTxn, vectors: dict[str, np.ndarray]) -> None:
        records.save_vectors(
            self._model_key(),
            {h: np.asarray(v, dtype=np.float32).tobytes() for h, v in vectors.items()},
        )

    def seed_vector_cache(self, pairs: Iterable[tuple[ToolSpec, np.ndarray]]) -> int:
        """Put vectors embedded elsewhere into the vector cache, so commits skip embedding.

        For bulk builds (``insitu eval replay --distractors``) that embed once and keep
        the vectors between libraries. Each vector must be this store's embedding
        (``embedding_name``) of ``spec.embedding_text()``: the cache trusts it.

        Args:
            pairs: ``(spec, vector)`` pairs.

        Returns:
            How many pairs were given (vectors already cached are kept as they are).

        Raises:
            ValueError: A vector whose length is not the embedding's.
        """
        from insitu.tool_store.embeddings import DIMENSIONS

        vectors = {spec.content_hash(): np.asarray(v, dtype=np.float32) for spec, v in pairs}
        wrong = [h for h, v in vectors.items() if v.shape != (DIMENSIONS,)]
        if wrong:
            raise ValueError(f"{len(wrong)} vector(s) are not of length {DIMENSIONS}")
        with self._writing("seed the vector cache"), self._records.write() as records:
            self._save_vectors(records, vectors)
        return len(vectors)

    # ------------------------------------------------------------- sync

    @staticmethod
    def _index_doc(record: ToolRecord, vector: np.ndarray | None) -> Any:
        from insitu.tool_store.index import IndexDoc

        return IndexDoc(
            id=record.name,
            text=record.embedding_text(),
            metadata={
                "name": record.name,
                "version": record.version,
                "hash": record.hash,
                "status": record.status,
                "network": record.network,
                "origin": record.origin,
            },
            embedding=vector,
        )

    def _sync_index(self, names: Iterable[str]) -> bool:
        """Bring the index in line with the records for ``names``; clear their marks.

        Returns:
            True on success; False if the index failed (marks stay, retried later).
        """
        names = sorted(set(names))
        if not names or self._index is None:
            return True
        with self._records.index_guard():
            with self._reading() as records:
                generation = records.generation()
                current = self._records_by_name(names, records)
            active = [r for r in current.values() if r.status == "active"]
            gone = [n for n in names if n not in current or current[n].status != "active"]
            try:
                vectors = self._vectors_for([r.spec() for r in active])
                self._index.upsert([self._index_doc(r, vectors[r.hash]) for r in active])
                self._index.delete(gone)
            except Exception as exc:
                self._index_dirty = True
                log.warning(
                    "index update failed for %s (%s: %s); the records are saved and the index "
                    "will be repaired on the next write, search or open",
                    ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""),
                    type(exc).__name__,
                    exc,
                )
                return False
            with self._records.write() as records:
                records.clear_pending(names, up_to_gen=generation)
                self._save_vectors(records, {r.hash: vectors[r.hash] for r in active})
            self._stamp_index()
        return True

    def _stamp_index(self) -> None:
        if self._index is None:
            return
        with self._reading() as records:
            if records.pending_names():
                return
            generation = records.generation()
        with contextlib.suppress(Exception):
            self._index.set_stamp(
                {
                    "insitu_generation": generation,
                    "insitu_embedding": self.embedding_name,
                    "insitu_text": TOOL_TEXT_VERSION,
                    "insitu_library": self.library_id,
                }
            )
        self._index_dirty = False

    def _retry_pending(self, *, check: bool = False) -> None:
        """Re-sync tools whose index update failed (ours, or with ``check`` anyone's)."""
        if (self._index_dirty or check) and not self.read_only:
            with self._reading() as records:
                pending = records.pending_names()
            if self._sync_index(pending) and pending:
                log.info("index caught up with %d pending tool(s)", len(pending))

    def _verify_index(self, *, full: bool) -> IndexReport:
        """Compare the index with the records and repair differences (under the lock)."""
        assert self._index is not None
        with self._records.index_guard():
            return self._verify_index_guarded(full=full)

    def _verify_index_guarded(self, *, full: bool) -> IndexReport:
        assert self._index is not None
        with self._reading() as records:
            pending = records.pending_names()
            heads = records.active_hashes()
            generation = records.generation()
        stamp = self._index.stamp
        reasons = []
        if pending:
            reasons.append(f"{len(pending)} tool(s) marked index-pending (interrupted write)")
        if stamp.get("insitu_embedding") not in (None, self.embedding_name):
            reasons.append(
                f"embedding changed from {stamp.get('insitu_embedding')} to {self.embedding_name}"
            )
            self._index.clear()
        elif stamp and stamp.get("insitu_text") != TOOL_TEXT_VERSION:
            reasons.append(
                f"tool text changed from version {stamp.get('insitu_text', 1)} "
                f"to {TOOL_TEXT_VERSION}"
            )
            self._index.clear()
        count = self._index.count()
        if count != len(heads):
            reasons.append(f"index holds {count} tool(s), records {len(heads)} active")
        if heads and stamp.get("insitu_generation") != generation:
            reasons.append("index stamp does not match the records' generation")
        if not reasons and not full:
            return IndexReport(checked="quick")
        indexed = self._index.metadata()
        upsert = sorted(
            {n for n, h in heads.items() if indexed.get(n, {}).get("hash") != h} | set(pending)
        )
        delete = sorted(set(indexed) - set(heads))
        if upsert or delete:
            names = upsert + delete
            for start in range(0, len(names), 1000):  # bounded memory for large libraries
                self._sync_index(names[start : start + 1000])
        else:
            with self._records.write() as records:
                records.clear_pending(None, up_to_gen=generation)
            self._stamp_index()
        return IndexReport(
            checked="full",
            reason="; ".join(reasons) or "full check requested",
            upserted=[n for n in upsert if n in heads],
            deleted=[n for n in upsert if n not in heads] + delete,
        )

    def verify_index(self, *, full: bool = True) -> IndexReport:
        """Check the index against the records and repair what differs.

        Args:
            full: Compare every tool's content hash (else only the cheap
                checks: pending marks, counts, generation stamp).

        Returns:
            What was checked and repaired.
        """
        with self._writing("verify the index"):
            return self._verify_index(full=full)

    def reindex(self) -> int:
        """Rebuild the index from the records (every active tool's current version).

        Locally, an index that fails while it is rebuilt (damaged files that
        opened) is moved aside (:attr:`index_set_aside`) and built anew.

        Returns:
            The number of tools indexed.
        """
        with self._writing("reindex"):
            try:
                return self._rebuild_index()
            except Exception as exc:
                if self.chroma_url:
                    raise
                self._replace_local_index(f"{type(exc).__name__}: {exc}")
                return self._rebuild_index()

    def _rebuild_index(self) -> int:
        """Empty the index and write every active tool into it again (under the lock)."""
        with self._lock, self._records.index_guard():
            assert self._index is not None
            self._index.clear()
            with self._reading() as records:
                names = records.tool_names()
            for start in range(0, len(names), 1000):
                if not self._sync_index(names[start : start + 1000]):
                    raise IndexUnavailableError(
                        "reindex failed while writing the index; see the log. The records are "
                        "intact; run reindex again."
                    )
            self._stamp_index()
            self._memory_indexes.clear()
            if self._experience_index is not None:
                self._experience_index.clear()
                with self._reading() as records:
                    ids = records.experience_ids() if records.has_learning() else []
                self._sync_experiences(ids)
            return self._index.count()

    def _warm_vector_cache(self) -> None:
        """Server mode, once: give the index the current tools' vectors from the records.

        A hybrid search scores lexical-only candidates by their vectors; without
        these, each search fetches them from the Chroma server (a round trip that
        cost more than the dense query itself at 10k tools, ``docs/performance.md``).
        """
        if self._vectors_warm or self._index is None or not self.chroma_url:
            return
        from insitu.tool_store.index import VECTOR_CACHE_SIZE

        self._vectors_warm = True
        with self._reading() as records:
            heads = list(records.active_hashes().items())[:VECTOR_CACHE_SIZE]
            found = records.vectors([h for _, h in heads], self._model_key())
        self._index.remember_vectors(
            {
                name: np.frombuffer(found[h], dtype=np.float32).copy()
                for name, h in heads
                if h in found
            }
        )

    def _catch_up(self) -> None:
        """Server mode: apply other processes' changes to the in-memory lexical side."""
        with self._reading() as records:
            generation = records.generation()
            if generation == self._seen_generation:
                return
            changed = (
                self._records_by_name(records.changed_names(self._seen_generation), records)
                if self._index is not None
                else {}
            )
        if self._index is not None:
            self._index.refresh_lexical(
                [self._index_doc(r, None) for r in changed.values() if r.status == "active"],
                [n for n, r in changed.items() if r.status != "active"],
            )
        self._seen_generation = generation

    # ------------------------------------------------------------ readers

    def _memory_index(self, include_archived: bool) -> ToolIndex:
        """An in-memory index of the records (read-only stores, archived search).

        Built once, then kept up to date from the tools whose ``changed_gen``
        moved on, so a long-lived reader follows the writer cheaply.
        """
        from insitu.tool_store.index import IndexDoc, ToolIndex

        started = time.perf_counter()
        with self._reading() as records:
            generation = records.generation()
            cached = self._memory_indexes.get(include_archived)
            if cached is not None and cached[1] == generation:
                return cached[0]
            since = cached[1] if cached is not None else -1
            rows = records.heads("all", changed_since=since)
        wanted = [(t, v) for t, v in rows if include_archived or t.status == "active"]
        gone = [t.name for t, _ in rows if not (include_archived or t.status == "active")]
        # Our own rows, written by this code: no need to validate them again.
        specs = {v.hash: ToolSpec.model_construct(**json.loads(v.spec)) for _, v in wanted}
        vectors = self._cached_vectors(list(specs))
        missing = [h for h in specs if h not in vectors]
        if missing:
            log.info("embedding %d tool(s) missing from the vector cache", len(missing))
            vectors |= self._embed_missing({h: specs[h].embedding_text() for h in missing})
        index = cached[0] if cached is not None else ToolIndex(None, embedding=self.embedding_name)
        index.delete(gone)
        index.upsert(
            IndexDoc(
                id=t.name,
                text=specs[v.hash].embedding_text(),
                metadata={
                    "name": t.name,
                    "version": v.version,
                    "hash": v.hash,
                    "status": t.status,
                    "network": bool(specs[v.hash].network),
                    "origin": v.origin,
                },
                embedding=vectors[v.hash],
            )
            for t, v in wanted
        )
        self._memory_indexes[include_archived] = (index, generation)
        log.debug(
            "in-memory index: %d tool(s) refreshed in %.0f ms",
            len(rows),
            (time.perf_counter() - started) * 1000,
        )
        return index
