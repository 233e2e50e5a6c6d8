"""Hybrid retrieval (dense + BM25) over ``(id, text, metadata)`` documents.

:class:`ToolIndex` knows nothing about tool records: the store feeds it the
current version of each active tool, and the retrieval benchmark feeds it the
public datasets' tool descriptions directly.

* Dense: a Chroma collection in cosine space, from a client passed in
  (``PersistentClient`` on a path, or ``HttpClient`` for a Chroma server), or
  a plain numpy matrix when no client is given (read-only stores,
  experiments). Vectors are computed here with our own embedding function and
  passed to Chroma explicitly; the function is also attached to the
  collection so that Chroma records its name and never picks a default.
* Lexical: :class:`~insitu.tool_store.lexical.BM25Index` in memory, rebuilt
  from the collection's documents the first time it is needed in a process.
  A document's lexical text is its ``text`` plus, when its metadata has a
  ``name``, the name's words once more (names are the strongest lexical cue).
* Hybrid: both are scored on the union of their top candidates, each
  normalised over that set (z-score by default, min-max, or reciprocal rank
  fusion) and blended with ``dense_weight``. A query of several sentences
  ("Get the forecast for Bitcoin. Also list the banks in my country.") is
  also scored sentence by sentence; the best sentence's fused score is added
  with ``segment_weight``, so that each request in a compound query can pull
  up its own tool.

The defaults are the ones the retrieval benchmark (``python -m
insitu.evals.retrieval``) measured best across its datasets; see that module.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from insitu.tool_store.lexical import BM25Index, load_snapshot, matches_where, save_snapshot
from insitu.tool_store.text import name_words, tokenize

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

    from insitu.tool_store.embeddings import HashingEmbedding, MiniLMEmbedding

log = logging.getLogger("insitu.tool_store")

SearchMode = Literal["hybrid", "dense", "lexical"]
Fusion = Literal["zscore", "minmax", "rrf"]
SEARCH_MODES: tuple[str, ...] = ("hybrid", "dense", "lexical")
FUSIONS: tuple[str, ...] = ("zscore", "minmax", "rrf")

#: Fusion defaults, chosen by ``evals/retrieval.py`` (see its module docstring).
DEFAULT_FUSION: Fusion = "zscore"
DEFAULT_DENSE_WEIGHT = 0.5
DEFAULT_RRF_K = 60
DEFAULT_SEGMENT_WEIGHT = 1.0
DEFAULT_CANDIDATES = 30
DEFAULT_BM25_K1 = 1.5
DEFAULT_BM25_B = 0.75
#: Document vectors kept in memory for scoring lexical-only candidates (~1.5 kB each).
VECTOR_CACHE_SIZE = 20_000
#: Sentences scored separately at most (longer queries keep their first ones).
MAX_SEGMENTS = 8
DEFAULT_COLLECTION = "insitu-tools"

_SENTENCE_BREAK = re.compile(r"(?<=[.!?;])\s+|\n+")


@dataclass(frozen=True)
class IndexDoc:
    """One document of the index.

    Attributes:
        id: Unique id (the tool name in a store).
        text: The text embedded and (with the name) indexed lexically.
        metadata: Flat ``str | int | float | bool`` values, filterable with ``where``.
        embedding: A precomputed vector for ``text`` (else computed on upsert).
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    embedding: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SearchHit:
    """One search result.

    Attributes:
        id: The document id.
        score: The fused score the results are ranked by (higher is better;
            comparable within one result list only).
        dense_score: Cosine similarity of the whole query and the document
            (``None`` in lexical mode).
        lexical_score: BM25 score of the whole query (``None`` in dense mode).
        metadata: The document's metadata.
        rank: 1-based position in the results.
    """

    id: str
    score: float
    dense_score: float | None
    lexical_score: float | None
    metadata: dict[str, Any]
    rank: int


def query_segments(query: str, max_segments: int = MAX_SEGMENTS) -> list[str]:
    """Split a query into sentences worth scoring on their own.

    Args:
        query: The query.
        max_segments: At most this many segments are returned.

    Returns:
        The sentences with at least two content words, or ``[]`` when the
        query has fewer than two such sentences (nothing to gain).
    """
    parts = [p.strip() for p in _SENTENCE_BREAK.split(query) if p and p.strip()]
    parts = [p for p in parts if len(tokenize(p)) >= 2]
    return parts[:max_segments] if len(parts) > 1 else []


def lexical_text(text: str, metadata: Mapping[str, Any] | None) -> str:
    """Return the text the lexical index sees: the name's words again, then ``text``."""
    name = (metadata or {}).get("name")
    return f"{name_words(name)} {text}" if isinstance(name, str) and name else text


def clean_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keep the metadata values Chroma accepts (``str``, ``int``, ``float``, ``bool``)."""
    out: dict[str, Any] = {}
    for key, value in (metadata or {}).items():
        if isinstance(value, str | int | float | bool):
            out[str(key)] = value
        elif value is not None:
            raise ValueError(
                f"metadata {key!r} must be a str, int, float or bool, not {type(value).__name__}"
            )
    return out


class _MemoryDense:
    """Dense vectors in a numpy matrix: exact cosine search, nothing persisted."""

    persistent = False

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._slot: dict[str, int] = {}
        self._ids: list[str | None] = []
        # Rows beyond len(self._ids) are spare capacity (grown by doubling).
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._alive = np.zeros(0, dtype=bool)
        self._meta: list[dict[str, Any] | None] = []
        self._texts: list[str | None] = []
        self._stamp: dict[str, Any] = {}

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._vectors):
            return
        capacity = max(rows, 2 * len(self._vectors), 64)
        vectors = np.zeros((capacity, self.dim), dtype=np.float32)
        vectors[: len(self._vectors)] = self._vectors
        alive = np.zeros(capacity, dtype=bool)
        alive[: len(self._alive)] = self._alive
        self._vectors, self._alive = vectors, alive

    def upsert(
        self, ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str], metas: Sequence[dict]
    ) -> None:
        new = [i for i in ids if i not in self._slot]
        self._reserve(len(self._ids) + len(new))
        for doc_id in new:
            self._slot[doc_id] = len(self._ids)
            self._ids.append(doc_id)
            self._meta.append(None)
            self._texts.append(None)
        for doc_id, vector, text, meta in zip(ids, vectors, texts, metas, strict=True):
            slot = self._slot[doc_id]
            self._vectors[slot] = vector
            self._alive[slot] = True
            self._meta[slot] = dict(meta)
            self._texts[slot] = text

    def delete(self, ids: Iterable[str]) -> None:
        for doc_id in ids:
            slot = self._slot.pop(doc_id, None)
            if slot is not None:
                self._ids[slot] = None
                self._meta[slot] = None
                self._texts[slot] = None
                self._vectors[slot] = 0.0
                self._alive[slot] = False
        if len(self._ids) > 1000 and len(self._slot) * 2 < len(self._ids):
            self._compact()

    def _compact(self) -> None:
        keep = [slot for slot, doc_id in enumerate(self._ids) if doc_id is not None]
        self._vectors = self._vectors[keep]
        self._alive = np.ones(len(keep), dtype=bool)
        self._ids = [self._ids[s] for s in keep]
        self._meta = [self._meta[s] for s in keep]
        self._texts = [self._texts[s] for s in keep]
        self._slot = {doc_id: i for i, doc_id in enumerate(self._ids) if doc_id is not None}

    def count(self) -> int:
        return len(self._slot)

    def clear(self) -> None:
        stamp = self._stamp
        self.__init__(self.dim)  # type: ignore[misc]
        self._stamp = stamp

    def get_stamp(self) -> dict[str, Any]:
        return dict(self._stamp)

    def set_stamp(self, values: dict[str, Any]) -> None:
        self._stamp = dict(values)

    def close(self) -> None:
        pass

    def query(
        self, queries: np.ndarray, n: int, where: Mapping[str, Any] | None
    ) -> list[tuple[list[str], np.ndarray]]:
        if not self._slot:
            return [([], np.zeros(0, np.float32)) for _ in queries]
        used = len(self._ids)
        sims = queries @ self._vectors[:used].T
        valid = self._alive[:used].copy()
        if where:
            valid &= np.array(
                [m is not None and matches_where(m, where) for m in self._meta], dtype=bool
            )
        sims[:, ~valid] = -np.inf
        out = []
        n = min(n, int(valid.sum()))
        for row in sims:
            if n <= 0:
                out.append(([], np.zeros(0, np.float32)))
                continue
            top = np.argpartition(-row, n - 1)[:n]
            top = top[np.argsort(-row[top])]
            out.append(([self._ids[s] for s in top], self._vectors[top]))  # type: ignore[misc]
        return out

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return {i: self._vectors[self._slot[i]] for i in ids if i in self._slot}

    def documents(self, batch: int = 5000) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for doc_id, slot in list(self._slot.items()):
            yield doc_id, self._texts[slot] or "", dict(self._meta[slot] or {})

    def metadata(self, ids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        chosen = self._slot if ids is None else [i for i in ids if i in self._slot]
        return {i: dict(self._meta[self._slot[i]] or {}) for i in chosen}


class _ChromaDense:
    """Dense vectors in a Chroma collection (local persistent path or server)."""

    persistent = True

    def __init__(
        self, client: ClientAPI, name: str, embedding: Any, replace_on_conflict: bool
    ) -> None:
        self.client = client
        self.name = name
        self.embedding = embedding
        try:
            self.collection = self._open()
        except ValueError as exc:
            if not (replace_on_conflict and "embedding function conflict" in str(exc).lower()):
                raise
            log.warning(
                "collection %s was built with another embedding function; dropping it so it "
                "can be rebuilt with %s",
                name,
                embedding.name(),
            )
            client.delete_collection(name)
            self.collection = self._open()
        try:
            self.max_batch = int(client.get_max_batch_size())
        except Exception:  # older servers do not report it
            self.max_batch = 1000

    def _open(self) -> Collection:
        return self.client.get_or_create_collection(
            self.name,
            embedding_function=self.embedding,
            configuration={"hnsw": {"space": "cosine"}},
        )

    def upsert(
        self, ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str], metas: Sequence[dict]
    ) -> None:
        for start in range(0, len(ids), self.max_batch):
            end = start + self.max_batch
            batch = list(ids[start:end])
            # Chroma's upsert merges metadata into the old one; replacing a document
            # must replace its metadata too, so existing ids are deleted first.
            existing = self.collection.get(ids=batch, include=[])["ids"]
            if existing:
                self.collection.delete(ids=list(existing))
            self.collection.add(
                ids=batch,
                embeddings=vectors[start:end],
                documents=list(texts[start:end]),
                # Chroma rejects empty metadata dicts; None means "no metadata".
                metadatas=[m or None for m in metas[start:end]],  # type: ignore[misc]
            )

    def delete(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        for start in range(0, len(ids), self.max_batch):
            self.collection.delete(ids=ids[start : start + self.max_batch])

    def count(self) -> int:
        return int(self.collection.count())

    def clear(self) -> None:
        with contextlib.suppress(Exception):  # already gone
            self.client.delete_collection(self.name)
        self.collection = self._open()

    def get_stamp(self) -> dict[str, Any]:
        return dict(self.collection.metadata or {})

    def set_stamp(self, values: dict[str, Any]) -> None:
        self.collection.modify(metadata=values or None)

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()

    def query(
        self, queries: np.ndarray, n: int, where: Mapping[str, Any] | None
    ) -> list[tuple[list[str], np.ndarray]]:
        result = self.collection.query(
            query_embeddings=queries,
            n_results=max(1, n),
            where=dict(where) if where else None,
            include=["embeddings"],
        )
        out = []
        embeddings = result.get("embeddings") or [[] for _ in queries]
        for ids, vectors in zip(result["ids"], embeddings, strict=True):
            if not ids:
                out.append(([], np.zeros((0, 0), dtype=np.float32)))
                continue
            out.append((list(ids), np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)))
        return out

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not ids:
            return {}
        got = self.collection.get(ids=list(ids), include=["embeddings"])
        return {
            i: np.asarray(v, dtype=np.float32)
            for i, v in zip(got["ids"], got["embeddings"], strict=True)
        }

    def documents(self, batch: int = 5000) -> Iterator[tuple[str, str, dict[str, Any]]]:
        offset = 0
        while True:
            got = self.collection.get(
                include=["documents", "metadatas"], limit=batch, offset=offset
            )
            ids = got["ids"]
            if not ids:
                return
            docs = got.get("documents") or [""] * len(ids)
            metas = got.get("metadatas") or [None] * len(ids)
            for doc_id, text, meta in zip(ids, docs, metas, strict=True):
                yield doc_id, text or "", dict(meta or {})
            if len(ids) < batch:
                return
            offset += len(ids)

    def metadata(self, ids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if ids is not None:
            ids = list(ids)
            for start in range(0, len(ids), self.max_batch):
                got = self.collection.get(
                    ids=ids[start : start + self.max_batch], include=["metadatas"]
                )
                for i, m in zip(got["ids"], got["metadatas"] or [], strict=False):
                    out[i] = dict(m or {})
            return out
        offset = 0
        while True:
            got = self.collection.get(include=["metadatas"], limit=10000, offset=offset)
            if not got["ids"]:
                return out
            for i, m in zip(got["ids"], got["metadatas"] or [], strict=False):
                out[i] = dict(m or {})
            if len(got["ids"]) < 10000:
                return out
            offset += len(got["ids"])


class ToolIndex:
    """Dense + lexical retrieval over documents, with score fusion.

    Thread-safe: one lock serialises every operation of an instance.

    Args:
        client: A Chroma client (``chromadb.PersistentClient(path)`` or
            ``chromadb.HttpClient(...)``); ``None`` keeps vectors in memory.
        collection: Chroma collection name.
        embedding: ``"minilm"``, ``"hashing"``, ``None`` (``$INSITU_EMBEDDING``,
            else minilm) or an embedding-function object with ``embed(texts)``.
        fusion: ``"zscore"``, ``"minmax"`` (normalised-score blending) or ``"rrf"``.
        dense_weight: Weight of the dense side in ``[0, 1]``; lexical gets the rest.
        rrf_k: The ``k`` of reciprocal rank fusion.
        segment_weight: Weight of the best single sentence of a multi-sentence
            query (0 disables sentence scoring).
        candidates: Candidates taken from each side (per sentence) before fusion.
        bm25_k1: BM25 term-frequency saturation.
        bm25_b: BM25 length normalisation.
        replace_on_embedding_change: If the collection exists with another
            embedding function, drop it (its contents must be re-added) instead
            of failing; for callers that can rebuild it, like the store.
        query_cache_size: Query vectors kept (LRU), so that a repeated query or
            sentence is embedded once.
    """

    def __init__(
        self,
        client: ClientAPI | None = None,
        *,
        collection: str = DEFAULT_COLLECTION,
        embedding: str | MiniLMEmbedding | HashingEmbedding | None = None,
        fusion: Fusion = DEFAULT_FUSION,
        dense_weight: float = DEFAULT_DENSE_WEIGHT,
        rrf_k: int = DEFAULT_RRF_K,
        segment_weight: float = DEFAULT_SEGMENT_WEIGHT,
        candidates: int = DEFAULT_CANDIDATES,
        bm25_k1: float = DEFAULT_BM25_K1,
        bm25_b: float = DEFAULT_BM25_B,
        replace_on_embedding_change: bool = False,
        query_cache_size: int = 512,
    ) -> None:
        from insitu.tool_store.embeddings import get_embedding_function

        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        if not 0.0 <= dense_weight <= 1.0:
            raise ValueError(f"dense_weight must be within [0, 1], got {dense_weight}")
        self.embedding = (
            get_embedding_function(embedding)
            if embedding is None or isinstance(embedding, str)
            else embedding
        )
        self.fusion: Fusion = fusion
        self.dense_weight = float(dense_weight)
        self.rrf_k = int(rrf_k)
        self.segment_weight = float(segment_weight)
        self.candidates = int(candidates)
        self._lock = threading.RLock()
        self._dense: _ChromaDense | _MemoryDense = (
            _MemoryDense(self._dimensions())
            if client is None
            else _ChromaDense(client, collection, self.embedding, replace_on_embedding_change)
        )
        self._bm25 = BM25Index(k1=bm25_k1, b=bm25_b)
        # A persistent collection may already hold documents: load them lazily.
        self._lexical_loaded = not self._dense.persistent
        # Where the lexical side is saved between processes (local Chroma only):
        # tokenising 100k documents again costs ~20 s, reading this ~2 s.
        self.snapshot_path: Path | None = None
        self._snapshot_current = False
        self._snapshot_touched = False
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._query_cache_size = int(query_cache_size)
        # Vectors of documents seen in results, so that scoring a lexical-only
        # candidate rarely needs a Chroma round trip; invalidated on every write.
        self._vector_cache: OrderedDict[str, np.ndarray] = OrderedDict()

    # -- construction helpers -------------------------------------------------

    @classmethod
    def persistent(cls, path: str | Any, **kwargs: Any) -> ToolIndex:
        """Open (or create) an index in a local Chroma directory.

        Only one process may write a persistent Chroma path at a time (two
        writers corrupt it silently): the caller is responsible for that, as
        :class:`~insitu.tool_store.store.ToolStore` is with its file lock.

        Args:
            path: The Chroma directory.
            **kwargs: See :class:`ToolIndex`.
        """
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)  # PersistentClient sets the path in it
        try:
            client = chromadb.PersistentClient(path=str(path), settings=settings)
        except BaseException:
            _forget_chroma_system(settings)
            raise
        try:
            index = cls(client, **kwargs)
        except BaseException:
            with contextlib.suppress(Exception):
                client.close()
            _forget_chroma_system(settings)
            raise
        index.snapshot_path = Path(path) / f"insitu-lexical-{index._dense_name()}.pkl"
        return index

    def _dense_name(self) -> str:
        return getattr(self._dense, "name", "memory")

    @classmethod
    def http(cls, url: str, **kwargs: Any) -> ToolIndex:
        """Connect to an index on a Chroma server (``chroma run --path DIR --port P``).

        Args:
            url: e.g. ``"http://127.0.0.1:8000"``.
            **kwargs: See :class:`ToolIndex`.
        """
        return cls(http_client(url), **kwargs)

    def _dimensions(self) -> int:
        dim = getattr(self.embedding, "dim", None)
        if isinstance(dim, int):
            return dim
        return int(self.embed(["dimension probe"]).shape[1])

    # -- documents ------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with this index's embedding function (``(n, d)`` unit rows)."""
        fn = getattr(self.embedding, "embed", None)
        if fn is not None:
            return np.asarray(fn(list(texts)), dtype=np.float32)
        return np.asarray(self.embedding(list(texts)), dtype=np.float32)

    def _snapshot_header(self) -> dict[str, Any]:
        return {"stamp": self._dense.get_stamp(), "count": self._dense.count()}

    def _ensure_lexical(self) -> None:
        if self._lexical_loaded:
            return
        if self.snapshot_path is not None and self.snapshot_path.is_file():
            loaded = load_snapshot(self.snapshot_path, self._bm25.k1, self._bm25.b)
            # Current only if the collection is exactly as it was when saved; any
            # write through an index deletes the file first (see _touch_snapshot).
            if loaded is not None and loaded[1] == self._snapshot_header():
                self._bm25 = loaded[0]
                self._lexical_loaded = True
                self._snapshot_current = True
                return
        for doc_id, text, meta in self._dense.documents():
            self._bm25.upsert(doc_id, lexical_text(text, meta), meta)
        self._lexical_loaded = True

    def _touch_snapshot(self) -> None:
        """Before the collection changes: a saved snapshot no longer describes it."""
        self._snapshot_current = False
        if self.snapshot_path is not None and not self._snapshot_touched:
            self.snapshot_path.unlink(missing_ok=True)
            self._snapshot_touched = True

    def save_lexical_snapshot(self) -> bool:
        """Save the lexical side for the next process (done by :meth:`close`).

        Returns:
            Whether a snapshot was written.
        """
        with self._lock:
            if self.snapshot_path is None or not self._lexical_loaded or self._snapshot_current:
                return False
            save_snapshot(self._bm25, self.snapshot_path, self._snapshot_header())
            self._snapshot_current = True
            self._snapshot_touched = False
            return True

    def upsert(self, docs: Iterable[IndexDoc | tuple[str, str, Mapping[str, Any]]]) -> int:
        """Add or replace documents (batched to Chroma's maximum batch size).

        Args:
            docs: :class:`IndexDoc` objects or ``(id, text, metadata)`` tuples.

        Returns:
            How many documents were written.

        Raises:
            ValueError: Duplicate ids in one call, or unsupported metadata values.
        """
        items = [d if isinstance(d, IndexDoc) else IndexDoc(d[0], d[1], dict(d[2])) for d in docs]
        if not items:
            return 0
        ids = [d.id for d in items]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in one upsert")
        metas = [clean_metadata(d.metadata) for d in items]
        texts = [d.text for d in items]
        missing = [i for i, d in enumerate(items) if d.embedding is None]
        vectors = np.zeros((len(items), self._vector_dim(items)), dtype=np.float32)
        for i, d in enumerate(items):
            if d.embedding is not None:
                vectors[i] = d.embedding
        if missing:
            vectors[missing] = self.embed([texts[i] for i in missing])
        with self._lock:
            self._touch_snapshot()
            self._forget_vectors(ids)
            self._dense.upsert(ids, vectors, texts, metas)
            if self._lexical_loaded:
                for doc_id, text, meta in zip(ids, texts, metas, strict=True):
                    self._bm25.upsert(doc_id, lexical_text(text, meta), meta)
        return len(items)

    def _vector_dim(self, items: Sequence[IndexDoc]) -> int:
        for d in items:
            if d.embedding is not None:
                return int(np.asarray(d.embedding).shape[-1])
        return self._dense.dim if isinstance(self._dense, _MemoryDense) else self._dimensions()

    def delete(self, ids: Iterable[str]) -> None:
        """Remove documents by id (unknown ids are ignored)."""
        ids = list(ids)
        if not ids:
            return
        with self._lock:
            self._touch_snapshot()
            self._forget_vectors(ids)
            self._dense.delete(ids)
            if self._lexical_loaded:
                self._bm25.delete(ids)

    def count(self) -> int:
        """Number of documents (as the dense side reports it)."""
        with self._lock:
            return self._dense.count()

    def clear(self) -> None:
        """Remove every document (the Chroma collection is dropped and recreated)."""
        with self._lock:
            self._touch_snapshot()
            self._vector_cache.clear()
            self._dense.clear()
            self._bm25.clear()
            self._lexical_loaded = True

    def metadata(self, ids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Return ``{id: metadata}`` for the given ids (default: every document)."""
        with self._lock:
            return self._dense.metadata(ids)

    @property
    def stamp(self) -> dict[str, Any]:
        """Free-form values stored with the collection (e.g. the generation it reflects)."""
        with self._lock:
            return self._dense.get_stamp()

    def set_stamp(self, values: Mapping[str, str | int | float | bool]) -> None:
        """Replace the values stored with the collection (see :attr:`stamp`)."""
        with self._lock:
            self._snapshot_current = False  # saved with the old stamp
            self._dense.set_stamp(dict(values))

    def close(self) -> None:
        """Save the lexical snapshot (local Chroma) and release the Chroma client."""
        with self._lock:
            try:
                self.save_lexical_snapshot()
            except OSError as exc:  # a cache only: the next process rebuilds it
                log.warning("could not save the lexical snapshot: %s", exc)
            self._dense.close()

    def remember_vectors(self, vectors: Mapping[str, np.ndarray]) -> None:
        """Pre-load document vectors (the store's own cache of them), so that scoring a
        lexical-only candidate needs no round trip to a Chroma server; at most
        :data:`VECTOR_CACHE_SIZE` are kept."""
        with self._lock:
            self._remember_vectors(vectors)

    def _remember_vectors(self, vectors: Mapping[str, np.ndarray]) -> None:
        if not self._dense.persistent:
            return  # the memory backend has them all at hand
        for doc_id, vector in vectors.items():
            self._vector_cache[doc_id] = vector
            self._vector_cache.move_to_end(doc_id)
        while len(self._vector_cache) > VECTOR_CACHE_SIZE:
            self._vector_cache.popitem(last=False)

    def _forget_vectors(self, ids: Iterable[str]) -> None:
        for doc_id in ids:
            self._vector_cache.pop(doc_id, None)

    def refresh_lexical(self, docs: Iterable[IndexDoc], deleted: Iterable[str] = ()) -> None:
        """Bring only the in-memory lexical side up to date with documents that
        another process wrote to a shared (server) collection.

        Args:
            docs: Documents that were added or changed.
            deleted: Ids that were removed.
        """
        docs = list(docs)
        deleted = list(deleted)
        with self._lock:
            self._forget_vectors([d.id for d in docs] + deleted)
            if not self._lexical_loaded:
                return  # it will load the current documents when first needed
            self._bm25.delete(deleted)
            for d in docs:
                meta = clean_metadata(d.metadata)
                self._bm25.upsert(d.id, lexical_text(d.text, meta), meta)

    # -- search ---------------------------------------------------------------

    def cache_query_vectors(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Pre-load query vectors (e.g. embedded in one batch by a benchmark)."""
        with self._lock:
            for text, vector in zip(texts, vectors, strict=True):
                self._query_cache[text] = np.asarray(vector, dtype=np.float32)
                self._query_cache.move_to_end(text)
            while len(self._query_cache) > self._query_cache_size:
                self._query_cache.popitem(last=False)

    def clear_query_cache(self) -> None:
        """Forget cached query vectors (so that a benchmark times the embedding too)."""
        with self._lock:
            self._query_cache.clear()

    def _query_vectors(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._query_cache))
        found = {t: self._query_cache[t] for t in texts if t in self._query_cache}
        if missing:
            fresh = self.embed(missing)
            found.update(zip(missing, fresh, strict=True))
            if self._query_cache_size > 0:
                self.cache_query_vectors(missing, fresh)
        for t in found:
            if t in self._query_cache:
                self._query_cache.move_to_end(t)
        return np.stack([found[t] for t in texts])

    def search(
        self,
        query: str,
        k: int = 10,
        mode: SearchMode = "hybrid",
        where: Mapping[str, Any] | None = None,
        *,
        fusion: Fusion | None = None,
        dense_weight: float | None = None,
        segment_weight: float | None = None,
        rrf_k: int | None = None,
        candidates: int | None = None,
    ) -> list[SearchHit]:
        """Return the ``k`` best documents for a query.

        Args:
            query: Free text.
            k: Number of hits.
            mode: ``"hybrid"``, ``"dense"`` or ``"lexical"``.
            where: Chroma-style metadata filter applied to both sides.
            fusion: Override of the instance's fusion method for this query.
            dense_weight: Override of the dense weight.
            segment_weight: Override of the sentence weight.
            rrf_k: Override of the RRF constant.
            candidates: Override of the per-side candidate count.

        Returns:
            Hits, best first (fewer than ``k`` if the index is smaller).

        Raises:
            ValueError: Unknown mode or fusion.
        """
        if mode not in SEARCH_MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(SEARCH_MODES)}")
        fusion = fusion or self.fusion
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        weight = self.dense_weight if dense_weight is None else float(dense_weight)
        seg_weight = self.segment_weight if segment_weight is None else float(segment_weight)
        rrf = self.rrf_k if rrf_k is None else int(rrf_k)
        pool = max(self.candidates if candidates is None else int(candidates), k)
        if k <= 0 or not query.strip():
            return []
        segments = [query] + (query_segments(query) if seg_weight > 0 else [])
        use_dense = mode != "lexical"
        use_lexical = mode != "dense"
        with self._lock:
            # No count() here: it costs a Chroma round trip per query, and Chroma
            # returns fewer results (or none) when n_results exceeds the documents.
            vectors: dict[str, np.ndarray] = {}
            order: dict[str, None] = {}
            queries = self._query_vectors(segments) if use_dense else None
            if use_dense:
                assert queries is not None
                for ids, vecs in self._dense.query(queries, pool, where):
                    for doc_id, vec in zip(ids, vecs, strict=True):
                        order.setdefault(doc_id)
                        vectors.setdefault(doc_id, vec)
            lexical_rows: list[np.ndarray] = []
            if use_lexical:
                self._ensure_lexical()
                mask = self._bm25.filter_mask(where) if where else None
                slot_ids = self._bm25.slot_ids()
                for seg in segments:
                    scores = self._bm25.scores(seg)
                    if mask is not None:
                        scores = np.where(mask, scores, 0.0)
                    lexical_rows.append(scores)
                    n_pos = int((scores > 0).sum())
                    take = min(pool, n_pos)
                    if take:
                        top = np.argpartition(-scores, take - 1)[:take]
                        for s in top[np.argsort(-scores[top])]:
                            doc_id = slot_ids[s]
                            if doc_id is not None:
                                order.setdefault(doc_id)
            cand = list(order)
            if not cand:
                return []
            dense_matrix = None
            if use_dense:
                assert queries is not None
                need = [c for c in cand if c not in vectors]
                cached = {c: self._vector_cache[c] for c in need if c in self._vector_cache}
                fetched = self._dense.vectors([c for c in need if c not in cached])
                vectors.update(cached)
                vectors.update(fetched)
                self._remember_vectors(fetched)
                self._remember_vectors({c: vectors[c] for c in order if c in vectors})
                cand = [c for c in cand if c in vectors]  # dropped if deleted meanwhile
                dense_matrix = queries @ np.stack([vectors[c] for c in cand]).T
            lexical_matrix = None
            if use_lexical:
                self._ensure_lexical()
                slots = self._bm25.slots(cand)
                lexical_matrix = np.stack(
                    [
                        np.where(slots >= 0, row[np.clip(slots, 0, None)], 0.0)
                        for row in lexical_rows
                    ]
                ).astype(np.float32)
            fused = np.stack(
                [
                    _fuse(
                        None if dense_matrix is None else dense_matrix[i],
                        None if lexical_matrix is None else lexical_matrix[i],
                        fusion,
                        weight,
                        rrf,
                    )
                    for i in range(len(segments))
                ]
            )
            score = fused[0] + (seg_weight * fused[1:].max(axis=0) if len(segments) > 1 else 0.0)
            best = np.argsort(-score, kind="stable")[:k]
            metas = self._metadata_for([cand[i] for i in best], use_lexical)
            return [
                SearchHit(
                    id=cand[i],
                    score=float(score[i]),
                    dense_score=None if dense_matrix is None else float(dense_matrix[0, i]),
                    lexical_score=None if lexical_matrix is None else float(lexical_matrix[0, i]),
                    metadata=metas.get(cand[i], {}),
                    rank=rank,
                )
                for rank, i in enumerate(best, 1)
            ]

    def _metadata_for(self, ids: list[str], lexical_loaded: bool) -> dict[str, dict[str, Any]]:
        if lexical_loaded and self._lexical_loaded:
            return {i: self._bm25.metadata(i) for i in ids if i in self._bm25}
        return self._dense.metadata(ids)


def _normalise(values: np.ndarray, method: Fusion) -> np.ndarray:
    if method == "zscore":
        std = float(values.std())
        return (values - values.mean()) / std if std > 1e-9 else np.zeros_like(values)
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high - low > 1e-9 else np.zeros_like(values)


def _ranks(values: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[np.argsort(-values, kind="stable")] = np.arange(1, len(values) + 1)
    return ranks


def _fuse(
    dense: np.ndarray | None,
    lexical: np.ndarray | None,
    method: Fusion,
    dense_weight: float,
    rrf_k: int,
) -> np.ndarray:
    """Fuse one segment's dense and lexical scores over the candidate set.

    With a single side (dense or lexical mode) its raw scores are returned, so
    that a dense-only score is a cosine similarity and a lexical one a BM25 score.
    """
    if dense is None or lexical is None:
        single = dense if dense is not None else lexical
        assert single is not None
        return single.astype(np.float64)
    if method == "rrf":
        # A document without any query term is not in the lexical list at all.
        return dense_weight / (rrf_k + _ranks(dense)) + np.where(
            lexical > 0, (1.0 - dense_weight) / (rrf_k + _ranks(lexical)), 0.0
        )
    return dense_weight * _normalise(dense.astype(np.float64), method) + (
        1.0 - dense_weight
    ) * _normalise(lexical.astype(np.float64), method)


def _forget_chroma_system(settings: Any) -> None:
    """Drop Chroma's cached system for a path whose opening failed.

    Chroma keeps one system per path for the process, cached before it starts:
    one that failed to start (a damaged ``chroma.sqlite3``) would otherwise be
    handed, half-built, to the next client of that path, e.g. the fresh index a
    reindex builds after moving the damaged one aside.
    """
    from chromadb.api.shared_system_client import SharedSystemClient

    with contextlib.suppress(Exception):
        identifier = SharedSystemClient._get_identifier_from_settings(settings)
        system = SharedSystemClient._identifier_to_system.pop(identifier, None)
        SharedSystemClient._identifier_to_refcount.pop(identifier, None)
        if system is not None:
            with contextlib.suppress(Exception):
                system.stop()


def http_client(url: str) -> ClientAPI:
    """Return a ``chromadb.HttpClient`` for ``http(s)://host:port``.

    Raises:
        ValueError: If the URL has no host.
    """
    from urllib.parse import urlparse

    import chromadb
    from chromadb.config import Settings

    parsed = urlparse(url if "://" in url else f"http://{url}")
    if not parsed.hostname:
        raise ValueError(f"not a Chroma server URL: {url!r} (expected http://host:port)")
    return chromadb.HttpClient(
        host=parsed.hostname,
        port=parsed.port or (443 if parsed.scheme == "https" else 8000),
        ssl=parsed.scheme == "https",
        settings=Settings(anonymized_telemetry=False),
    )
