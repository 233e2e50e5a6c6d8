"""Candidate groups of possibly duplicate tools: the Aggregator's first, LLM-free step.

After a batch of tasks the library has a few *new* tools; some may do what a
library tool (or another new tool) already does. This module proposes the
groups an LLM then confirms and merges; it never merges anything itself.

Two signals score a pair of tools:

* **meaning**: the cosine of the embeddings of :func:`clustering_text`, i.e.
  the description plus the signature (input and output field names and
  types). The name is *not* in that text, so that the two signals stay apart;
* **name**: the Jaccard overlap of the stemmed words of the ``verb_object``
  names, with a few common verb synonyms folded together
  (``compute``/``calculate``, ``get``/``fetch``/``retrieve``, ...).

The pair score is ``1 - (1 - cosine) * (1 - name_weight * name_overlap)``: the
cosine distance shrunk by the name overlap. Names only ever *raise* the score
(a duplicate under an unrelated name is still found by its meaning), and equal
names alone never link two tools whose descriptions disagree (with the
defaults, equal names still need a cosine of 0.8, unrelated ones 0.9). A pair
is *linked* when the score reaches ``threshold``. Groups are the
connected components of the links (union-find), built strongest link first and
never past ``max_group_size`` members: a link that would make a group too big
is skipped (and reported in the group's ``reasons``).

Cost. :func:`candidate_groups` compares each new tool with every library
vector (one matrix product, ``n_new x n_library`` dot products, linear in the
library) and with the other new tools, and keeps at most ``k`` links per new
tool. Library tools are never compared with each other (the library is already
deduplicated) so the work grows with the number of new tools, not with the
square of the library. Library vectors can be passed in (computed once with
:func:`clustering_text` and the same embedding); otherwise they are embedded in
one batch. Names are compared only within each new tool's ``pool_factor * k``
nearest neighbours by cosine.

Singletons: by default only groups of two or more tools are returned; with
``include_singletons=True`` each new tool without a link is appended as a group
of size 1 (its ``score`` is then its best pair score, below the threshold).

:func:`cluster_items` is the same linking and grouping over one flat set of
items (every item against every other, ``O(n^2)`` dot products in blocks); the
deduplication benchmark (``python -m insitu.evals.dedup``) uses it, so the
thresholds chosen there are the thresholds used here.

Defaults (:data:`DEFAULT_THRESHOLD` 0.9, :data:`DEFAULT_NAME_WEIGHT` 0.5,
:data:`DEFAULT_K` 3, :data:`DEFAULT_MAX_GROUP_SIZE` 8) were chosen with that
benchmark on the MiniLM embedding; the reasons are in ``evals/dedup.py`` (``insitu.evals.dedup``)
and the figures in ``docs/performance.md``. The hashing embedding (tests) gives
other cosines, so pass a threshold explicitly with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, Field

from insitu.tool_store.contract import ToolRecord, ToolSpec
from insitu.tool_store.text import tokenize

#: Pair score from which two tools are linked (MiniLM; see the dedup benchmark).
DEFAULT_THRESHOLD = 0.9
#: How much equal names shrink the cosine distance (see :func:`pair_score`).
DEFAULT_NAME_WEIGHT = 0.5
#: Links each new tool may use to join others, strongest first.
DEFAULT_K = 3
#: Largest group proposed to the LLM (new and library members together).
DEFAULT_MAX_GROUP_SIZE = 8
#: Neighbours by cosine whose names are compared, as a multiple of ``k``.
DEFAULT_POOL_FACTOR = 3
#: Rows of the query matrix multiplied at once (bounds memory: rows x corpus floats).
_BLOCK_ROWS = 1024

#: Verb (and a few noun) synonyms folded onto one word before names are compared.
#: Words are stemmed first (see :func:`insitu.tool_store.text.stem`).
_SYNONYMS: dict[str, str] = {
    "calculat": "comput",
    "calc": "comput",
    "comput": "comput",
    "determin": "comput",
    "fetch": "get",
    "retriev": "get",
    "obtain": "get",
    "load": "get",
    "download": "get",
    "delet": "remov",
    "drop": "remov",
    "strip": "remov",
    "eras": "remov",
    "creat": "make",
    "build": "make",
    "generat": "make",
    "search": "find",
    "locat": "find",
    "lookup": "find",
    "check": "valid",
    "verify": "valid",
    "validat": "valid",
    "transform": "convert",
    "turn": "convert",
    "avg": "mean",
    "averag": "mean",
    "tally": "count",
    "total": "sum",
    "split": "pars",
    "tokeniz": "pars",
    "extract": "pars",
    "read": "pars",
    "ord": "sort",
    "rank": "sort",
}

#: Stemmed words that say nothing about what a tool does (``get_mean_value``).
_GENERIC_NAME_WORDS = frozenset({"valu", "data", "info", "result", "given"})


class Embedder(Protocol):
    """Anything with ``embed(texts) -> (n, d) array`` (both insitu embeddings are)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:  # pragma: no cover - protocol
        """Embed texts as rows."""
        ...


class CandidateGroup(BaseModel):
    """A group of tools that may do the same thing, for the LLM to confirm or reject.

    Every group has at least one new tool. A group of size 1 (only with
    ``include_singletons=True``) is a new tool with no neighbour above the
    threshold: nothing to merge, listed so that callers can record it.
    """

    members: list[str] = Field(description="All tool names: new ones first, then library ones.")
    new_members: list[str] = Field(description="Names of the members that are new tools.")
    library_members: list[str] = Field(description="Names of the members already in the library.")
    score: float = Field(
        description="Weakest link that joined the group (every member is connected through "
        "links at least this strong); for a singleton, its best pair score below the threshold "
        "(0.0 if there was no other tool at all)."
    )
    reasons: list[str] = Field(
        default_factory=list,
        description="One line per link (pair, score, cosine, name overlap), and links skipped "
        "because of the size limit.",
    )

    @property
    def size(self) -> int:
        """Number of members."""
        return len(self.members)


@dataclass
class GroupingStats:
    """Work done by one call, for cost accounting and tests (pass one as ``stats=``)."""

    #: Items on the query side (new tools, or every item for :func:`cluster_items`).
    queries: int = 0
    #: Items on the corpus side (library tools, excluding archived and renamed-new ones).
    corpus: int = 0
    #: Texts embedded by this call (library vectors passed in are not embedded again).
    embedded: int = 0
    #: Dot products computed (query x corpus, plus query x query for the new tools).
    comparisons: int = 0
    #: Pairs whose names were compared (cosine pool of each query).
    name_comparisons: int = 0
    #: Links above the threshold that the grouping considered (within each budget of ``k``).
    links: int = 0
    #: Links skipped because they would exceed ``max_group_size``.
    capped: int = 0
    #: Per query, how many links it used (at most ``k``; refused links do not count).
    links_per_query: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Link:
    a: int
    b: int
    score: float
    cosine: float
    name: float


# ---------------------------------------------------------------------------
# Texts and name words
# ---------------------------------------------------------------------------


def _schema_type(schema: Any) -> str:
    if not isinstance(schema, Mapping):
        return "any"
    if "type" in schema:
        kind = schema["type"]
        if isinstance(kind, list):
            return " or ".join(str(k) for k in kind)
        if kind == "array":
            return f"array of {_schema_type(schema.get('items'))}"
        return str(kind)
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list):
            kinds = [_schema_type(s) for s in schema[key]]
            return " or ".join(k for k in kinds if k != "null") or "null"
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    return "any"


def _fields(schema: Mapping[str, Any] | None) -> str:
    properties = (schema or {}).get("properties") or {}
    return ", ".join(f"{name} ({_schema_type(prop)})" for name, prop in properties.items())


def clustering_text(tool: ToolSpec) -> str:
    """Return the text whose embedding stands for a tool's behaviour.

    The description, then the input and output fields with their JSON types
    (``"Inputs: values (array of number). Outputs: mean (number)."``). The
    name is left out on purpose: it is compared separately (see
    :func:`name_similarity`).

    Args:
        tool: A spec or record.

    Returns:
        One line of text.
    """
    text = tool.description.strip()
    inputs = _fields(tool.input_schema)
    outputs = _fields(tool.output_schema)
    if inputs:
        text += f" Inputs: {inputs}."
    if outputs:
        text += f" Outputs: {outputs}."
    return text


@lru_cache(maxsize=65536)
def name_tokens(name: str) -> frozenset[str]:
    """Return the comparable words of a tool name.

    Identifiers are split (``parseCsvRows``, ``parse_csv_rows``), words stemmed,
    stopwords and generic words (``value``, ``data``, ``info``, ``result``)
    dropped and common synonyms folded (``calculate`` -> ``comput``).

    Args:
        name: A tool name or any identifier.

    Returns:
        The set of normalised words.
    """
    words = (_SYNONYMS.get(word, word) for word in tokenize(name))
    return frozenset(word for word in words if word not in _GENERIC_NAME_WORDS)


def name_similarity(a: str, b: str) -> float:
    """Jaccard overlap of :func:`name_tokens` of two names, in ``[0, 1]``.

    Args:
        a: A tool name.
        b: Another tool name.

    Returns:
        ``|A & B| / |A | B|``; 0.0 when either name has no words.
    """
    ta, tb = name_tokens(a), name_tokens(b)
    if not ta or not tb:
        return 0.0
    return len(ta & tb) / len(ta | tb)


def pair_score(cosine: float, name_overlap: float, name_weight: float) -> float:
    """Combine the two signals into the score compared with the threshold.

    The cosine distance ``1 - cosine`` is shrunk by the fraction
    ``name_weight * name_overlap``: with weight 0.5, equal names halve the
    distance (cosine 0.7 scores 0.85); unrelated names leave the cosine as is.

    Args:
        cosine: Cosine of the two embeddings.
        name_overlap: :func:`name_similarity` of the two names.
        name_weight: How much equal names shrink the distance, in ``[0, 1]``.

    Returns:
        ``1 - (1 - cosine) * (1 - name_weight * name_overlap)``; equal to the
        cosine when the names share no word, never above 1.
    """
    return 1.0 - (1.0 - cosine) * (1.0 - name_weight * name_overlap)


# ---------------------------------------------------------------------------
# Shared linking and grouping
# ---------------------------------------------------------------------------


def _resolve_embedder(embedding: str | Embedder | None) -> Embedder:
    if embedding is None or isinstance(embedding, str):
        from insitu.tool_store.embeddings import get_embedding_function

        return get_embedding_function(embedding)
    return embedding


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.clip(norms, 1e-12, None)


def _check_parameters(threshold: float, name_weight: float, k: int, max_group_size: int) -> None:
    if not 0.0 <= name_weight <= 1.0:
        raise ValueError(f"name_weight must be in [0, 1], got {name_weight}")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [-1, 1], got {threshold}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if max_group_size < 2:
        raise ValueError(f"max_group_size must be at least 2, got {max_group_size}")


def _cosine_floor(threshold: float, name_weight: float) -> float:
    # A pair can reach the threshold only if its cosine is at least this (name overlap <= 1).
    if name_weight >= 1.0:
        return -1.0
    return 1.0 - (1.0 - threshold) / (1.0 - name_weight)


def _link_block(
    sims: np.ndarray,
    query_offset: int,
    corpus_offset: int,
    query_names: Sequence[str],
    corpus_names: Sequence[str],
    *,
    threshold: float,
    name_weight: float,
    pool: int,
    same_set: bool,
    stats: GroupingStats,
    best: list[float] | None,
) -> list[_Link]:
    """Links above the threshold from each row of a block to its ``pool`` nearest columns."""
    floor = _cosine_floor(threshold, name_weight)
    links: list[_Link] = []
    n_cols = sims.shape[1]
    if n_cols == 0:
        return links
    take = min(pool, n_cols)
    if take < n_cols:
        candidates = np.argpartition(-sims, take - 1, axis=1)[:, :take]
    else:
        candidates = np.broadcast_to(np.arange(n_cols), (sims.shape[0], n_cols))
    for row in range(sims.shape[0]):
        qi = query_offset + row
        scored: list[_Link] = []
        for col in candidates[row]:
            cj = corpus_offset + int(col)
            if same_set and cj == qi:
                continue
            cosine = float(sims[row, col])
            stats.name_comparisons += 1
            overlap = name_similarity(query_names[qi], corpus_names[cj])
            score = pair_score(cosine, overlap, name_weight)
            if best is not None and score > best[qi]:
                best[qi] = score
            if cosine >= floor and score >= threshold:
                scored.append(_Link(qi, cj, score, cosine, overlap))
        links.extend(scored)
    return links


def _links(
    queries: np.ndarray,
    corpus: np.ndarray,
    query_names: Sequence[str],
    corpus_names: Sequence[str],
    *,
    threshold: float,
    name_weight: float,
    k: int,
    pool_factor: int,
    same_set: bool,
    stats: GroupingStats,
    best: list[float] | None = None,
) -> list[_Link]:
    """Candidate links of every query row into the corpus, block by block.

    Each row's candidates are its ``pool_factor * k`` nearest columns by cosine
    (names compared for those only) that reach the threshold; the grouping then
    uses at most ``k`` of them per row.
    """
    # One extra candidate when a row meets itself in its own pool.
    pool = max(k, pool_factor * k) + (1 if same_set else 0)
    links: list[_Link] = []
    for start in range(0, queries.shape[0], _BLOCK_ROWS):
        block = queries[start : start + _BLOCK_ROWS]
        sims = block @ corpus.T
        stats.comparisons += sims.size - (block.shape[0] if same_set else 0)
        links.extend(
            _link_block(
                sims,
                start,
                0,
                query_names,
                corpus_names,
                threshold=threshold,
                name_weight=name_weight,
                pool=pool,
                same_set=same_set,
                stats=stats,
                best=best,
            )
        )
    return links


class _UnionFind:
    """Disjoint sets with sizes; ``union`` refuses to grow a set past ``cap``."""

    def __init__(self, n: int, cap: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n
        self.cap = cap

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> bool | None:
        """Join the sets of ``a`` and ``b``.

        Returns:
            True if joined, None if already one set, False if refused by the cap.
        """
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return None
        if self.size[ra] + self.size[rb] > self.cap:
            return False
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return True


def _group(
    n: int,
    queries: int,
    links: Iterable[_Link],
    *,
    max_group_size: int,
    k: int,
    stats: GroupingStats,
) -> tuple[_UnionFind, list[_Link], list[_Link]]:
    """Union strongest links first; return the sets, the joining links and the capped ones.

    Each query (``link.a``) uses at most ``k`` links; a link refused by the size
    limit does not count, so a tool whose nearest group is full can still join
    its next neighbours (five copies of one tool with a limit of 3 give groups
    of 3 and 2, not 3 and two loners).
    """
    uf = _UnionFind(n, max_group_size)
    used = [0] * queries  # links come from queries 0..queries-1 (link.a)
    joined: list[_Link] = []
    capped: list[_Link] = []
    seen: set[tuple[int, int]] = set()
    for link in sorted(links, key=lambda lk: (-lk.score, lk.a, lk.b)):
        pair = (min(link.a, link.b), max(link.a, link.b))
        if pair in seen or used[link.a] >= k:
            continue
        seen.add(pair)
        stats.links += 1
        result = uf.union(link.a, link.b)
        if result is False:
            capped.append(link)
            stats.capped += 1
            continue
        used[link.a] += 1
        if result:
            joined.append(link)
    stats.links_per_query.extend(used)
    return uf, joined, capped


def _components(uf: _UnionFind, n: int) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(uf.find(i), []).append(i)
    return sorted(groups.values(), key=lambda members: members[0])


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def cluster_items(
    texts: Sequence[str],
    names: Sequence[str] | None = None,
    *,
    embedding: str | Embedder | None = None,
    vectors: np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    name_weight: float = DEFAULT_NAME_WEIGHT,
    k: int = DEFAULT_K,
    max_group_size: int = DEFAULT_MAX_GROUP_SIZE,
    pool_factor: int = DEFAULT_POOL_FACTOR,
    stats: GroupingStats | None = None,
) -> list[list[int]]:
    """Group a flat set of items by the same rule as :func:`candidate_groups`.

    Every item is compared with every other (in blocks of rows, so ``O(n^2)``
    dot products but bounded memory); links above the threshold are joined by
    size-capped union-find, strongest first, each item using at most ``k``.

    Args:
        texts: What each item does (description and signature; for code, see
            the dedup benchmark). Ignored when ``vectors`` is given.
        names: Item names for the name signal; ``None`` disables it (as does
            ``name_weight=0``).
        embedding: ``"minilm"``, ``"hashing"``, an object with ``embed`` or
            ``None`` (``$INSITU_EMBEDDING``, else MiniLM).
        vectors: Precomputed ``(n, d)`` embeddings of ``texts`` (normalised here).
        threshold: Pair score from which two items are linked.
        name_weight: How much equal names shrink the cosine distance
            (:func:`pair_score`); 0 ignores names.
        k: Links each item may use (a link refused by the size limit does not count).
        max_group_size: Largest group built.
        pool_factor: Neighbours by cosine whose names are compared, times ``k``.
        stats: Filled with the work done, if given.

    Returns:
        A partition of ``range(n)``: every item in exactly one group, singletons
        included as one-element lists; each group sorted, groups ordered by
        their first item.

    Raises:
        ValueError: On a bad parameter or mismatched lengths.
    """
    _check_parameters(threshold, name_weight, k, max_group_size)
    stats = stats if stats is not None else GroupingStats()
    n = len(texts) if vectors is None else len(vectors)
    if names is not None and len(names) != n:
        raise ValueError(f"{len(names)} names for {n} items")
    if vectors is None:
        matrix = _normalise(_resolve_embedder(embedding).embed(list(texts)))
        stats.embedded += n
    else:
        matrix = _normalise(vectors)
    if names is None:
        names, name_weight = [""] * n, 0.0
    stats.queries += n
    stats.corpus += n
    if n == 0:
        return []
    links = _links(
        matrix,
        matrix,
        names,
        names,
        threshold=threshold,
        name_weight=name_weight,
        k=k,
        pool_factor=pool_factor,
        same_set=True,
        stats=stats,
    )
    uf, _, _ = _group(n, n, links, max_group_size=max_group_size, k=k, stats=stats)
    return _components(uf, n)


def candidate_groups(
    new: Sequence[ToolSpec | ToolRecord],
    library: Sequence[ToolRecord | ToolSpec],
    *,
    embedding: str | Embedder | None = None,
    library_vectors: np.ndarray | Mapping[str, np.ndarray] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    name_weight: float = DEFAULT_NAME_WEIGHT,
    k: int = DEFAULT_K,
    max_group_size: int = DEFAULT_MAX_GROUP_SIZE,
    pool_factor: int = DEFAULT_POOL_FACTOR,
    include_singletons: bool = False,
    stats: GroupingStats | None = None,
) -> list[CandidateGroup]:
    """Propose groups of possible duplicates among new tools and the library.

    Each new tool is linked to at most ``k`` partners (library tools and other
    new tools), the strongest among its ``pool_factor * k`` nearest by cosine
    whose pair score reaches ``threshold``; groups are the size-capped
    connected components of those links (a link refused by the size limit
    does not use up one of the ``k``). Library tools are never
    compared with each other, so every group contains at least one new tool,
    and two library tools share a group only through a new tool.

    Library records that are archived, or whose name is also a new tool's (a
    new version of the same tool), are left out of the library side.

    Args:
        new: Tools created (or repaired) in the last batch.
        library: The current library.
        embedding: ``"minilm"``, ``"hashing"``, an object with ``embed`` or
            ``None`` (``$INSITU_EMBEDDING``, else MiniLM). Must be the one the
            ``library_vectors`` were made with.
        library_vectors: Embeddings of :func:`clustering_text` of the library
            tools: an array aligned with ``library``, or a mapping from tool
            name to vector (names missing from it are embedded). ``None``
            embeds the library in one batch.
        threshold: Pair score from which two tools are linked.
        name_weight: How much equal names shrink the cosine distance
            (:func:`pair_score`); 0 ignores names.
        k: Links each new tool may use.
        max_group_size: Largest group proposed (at least 2).
        pool_factor: Neighbours by cosine whose names are compared, times ``k``.
        include_singletons: Also return each new tool without a link as a
            group of size 1 (after the real groups).
        stats: Filled with the work done, if given.

    Returns:
        Groups of at least two tools, strongest (highest ``score``) first, then
        singletons if asked for.

    Raises:
        ValueError: On duplicate names among ``new``, a bad parameter, or
            ``library_vectors`` of the wrong length.
    """
    _check_parameters(threshold, name_weight, k, max_group_size)
    stats = stats if stats is not None else GroupingStats()
    new_names = [tool.name for tool in new]
    if len(set(new_names)) != len(new_names):
        dupes = sorted({n for n in new_names if new_names.count(n) > 1})
        raise ValueError(f"new tools must have distinct names; repeated: {dupes}")
    if isinstance(library_vectors, np.ndarray) and len(library_vectors) != len(library):
        raise ValueError(f"{len(library_vectors)} library vectors for {len(library)} library tools")
    new_set = set(new_names)
    keep = [
        i
        for i, tool in enumerate(library)
        if getattr(tool, "status", "active") != "archived" and tool.name not in new_set
    ]
    lib_tools = [library[i] for i in keep]
    lib_names = [tool.name for tool in lib_tools]
    n_new, n_lib = len(new), len(lib_tools)
    stats.queries += n_new
    stats.corpus += n_lib
    if n_new == 0:
        return []

    embedder = _resolve_embedder(embedding)
    to_embed = [clustering_text(tool) for tool in new]
    lib_matrix: np.ndarray | None = None
    missing: list[int] = []
    if isinstance(library_vectors, np.ndarray):
        lib_matrix = np.asarray(library_vectors, dtype=np.float32)[keep]
    elif isinstance(library_vectors, Mapping):
        rows: list[np.ndarray | None] = [library_vectors.get(name) for name in lib_names]
        missing = [i for i, row in enumerate(rows) if row is None]
        dim = next((len(row) for row in rows if row is not None), 0)
        lib_matrix = np.zeros((n_lib, dim), dtype=np.float32)
        for i, row in enumerate(rows):
            if row is not None:
                lib_matrix[i] = row
    else:
        missing = list(range(n_lib))
    to_embed += [clustering_text(lib_tools[i]) for i in missing]
    embedded = np.asarray(embedder.embed(to_embed), dtype=np.float32)
    stats.embedded += len(to_embed)
    new_matrix = _normalise(embedded[:n_new])
    if lib_matrix is None or lib_matrix.shape[1] == 0:
        lib_matrix = np.zeros((n_lib, embedded.shape[1]), dtype=np.float32)
    if missing:
        lib_matrix[missing] = embedded[n_new:]
    lib_matrix = _normalise(lib_matrix) if n_lib else lib_matrix.reshape(0, new_matrix.shape[1])

    # Indices: 0..n_new-1 are the new tools, n_new.. the library tools.
    all_names = new_names + lib_names
    best = [0.0] * n_new
    params = {
        "threshold": threshold,
        "name_weight": name_weight,
        "k": k,
        "pool_factor": pool_factor,
        "stats": stats,
        "best": best,
    }
    among_new = _links(new_matrix, new_matrix, new_names, new_names, same_set=True, **params)
    to_library = _links(new_matrix, lib_matrix, new_names, lib_names, same_set=False, **params)
    # Each new tool uses at most k links over both sides. A pair of new tools may
    # appear twice (i->j and j->i); the grouping takes each pair once.
    links = among_new + [
        _Link(lk.a, n_new + lk.b, lk.score, lk.cosine, lk.name) for lk in to_library
    ]
    total = n_new + n_lib
    uf, joined, capped = _group(
        total, n_new, links, max_group_size=max_group_size, k=k, stats=stats
    )
    reasons: dict[int, list[str]] = {}
    weakest: dict[int, float] = {}
    for link in joined:
        root = uf.find(link.a)
        reasons.setdefault(root, []).append(_describe(link, all_names))
        weakest[root] = min(weakest.get(root, 1.0), link.score)
    for link in capped:
        root = uf.find(link.a)
        reasons.setdefault(root, []).append(
            f"not joined (group size limit {max_group_size}): " + _describe(link, all_names)
        )

    groups: list[CandidateGroup] = []
    singletons: list[CandidateGroup] = []
    for members in _components(uf, total):
        news = [i for i in members if i < n_new]
        if not news:
            continue  # a library tool no new tool linked to
        libs = [i for i in members if i >= n_new]
        if len(members) == 1:
            if include_singletons:
                i = members[0]
                refused = reasons.get(uf.find(i), [])
                why = (
                    f"every link was refused by the group size limit {max_group_size}"
                    if refused
                    else f"no tool scored {threshold:.2f} or more (best {best[i]:.3f})"
                )
                singletons.append(
                    CandidateGroup(
                        members=[all_names[i]],
                        new_members=[all_names[i]],
                        library_members=[],
                        score=round(best[i], 4),
                        reasons=[why, *refused],
                    )
                )
            continue
        root = uf.find(members[0])
        groups.append(
            CandidateGroup(
                members=[all_names[i] for i in news + libs],
                new_members=[all_names[i] for i in news],
                library_members=[all_names[i] for i in libs],
                score=round(weakest[root], 4),
                reasons=reasons[root],
            )
        )
    groups.sort(key=lambda g: (-g.score, g.members[0]))
    return groups + singletons


def _describe(link: _Link, names: Sequence[str]) -> str:
    return (
        f"{names[link.a]} ~ {names[link.b]}: score {link.score:.3f} "
        f"(cosine {link.cosine:.3f}, name overlap {link.name:.2f})"
    )


__all__ = [
    "DEFAULT_K",
    "DEFAULT_MAX_GROUP_SIZE",
    "DEFAULT_NAME_WEIGHT",
    "DEFAULT_THRESHOLD",
    "CandidateGroup",
    "Embedder",
    "GroupingStats",
    "candidate_groups",
    "cluster_items",
    "clustering_text",
    "name_similarity",
    "name_tokens",
    "pair_score",
]
