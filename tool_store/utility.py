"""How much each tool is worth keeping (utility) and what it paid back (ROI).

**Utility** (docs/library.md has the reasoning). For a tool with ``calls``
and ``successes`` recorded by later episodes, idle for ``idle_days`` (since its
last use, or since its first version if it was never used), that cost
``creation_tokens`` to build and repair::

    recency    = 0.5 ** (idle_days / half_life_days)
    evidence   = log2(1 + successes) * (successes + 1) / (calls + 2)
    rebuild    = log2(1 + creation_tokens / 10_000)
    base       = recency * (1 + evidence + rebuild)
    redundancy = max over stronger active neighbours u of
                 clip((cosine(t, u) - 0.5) / 0.5, 0, 1)
    utility    = base * (1 - redundancy)

A *stronger* neighbour is an active tool with a higher ``base`` (ties: the
older tool, then the name, is stronger), so of two near-duplicates only the
weaker one is marked redundant and the library keeps the better. Cosines are
those of the retrieval embeddings the library already keeps.

**ROI.** A tool's cost is the tokens spent building and repairing all its
versions (``creation_cost_tokens``; priced per version with its recorded
model). Each successful reuse is counted as saving one *reference build*: the
tokens its first version cost, i.e. what the task would have spent building
the tool again without the library (the no-reuse baseline). A tool with no
recorded first build (hand-written, imported) is credited the library's mean
reference build. ``roi = saved / cost``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field

from insitu.tool_store.contract import BuildCost, ToolRecord, now_utc
from insitu.tool_store.costs import PriceTable, load_prices, price_of, version_costs

if TYPE_CHECKING:
    from insitu.tool_store.store import ToolStore

#: Days without use that halve a tool's recency (the ``utility_half_life_days`` default).
DEFAULT_HALF_LIFE_DAYS = 30.0
#: Tokens of build cost that add one (log2) unit of rebuild value.
REBUILD_TOKENS_UNIT = 10_000
#: Cosine below which two tools are not redundant at all (1.0: fully redundant).
REDUNDANCY_FLOOR = 0.5
#: Rows of the cosine matrix computed at once (bounds memory for large libraries).
_BLOCK_ROWS = 512


class ToolUtility(BaseModel):
    """One tool's utility score and the parts it is made of."""

    name: str
    status: str
    locked: bool
    calls: int
    successes: int
    idle_days: float = Field(description="Days since the last use, else since the first version.")
    age_days: float = Field(description="Days since the first version.")
    creation_tokens: int
    recency: float
    evidence: float
    rebuild: float
    base: float = Field(description="recency * (1 + evidence + rebuild).")
    redundancy: float = Field(description="0..1, against the most similar stronger active tool.")
    neighbour: str | None = Field(default=None, description="That stronger tool, if redundant.")
    similarity: float | None = Field(default=None, description="Its cosine with this tool.")
    utility: float = Field(description="base * (1 - redundancy).")

    def why(self) -> str:
        """One line: the figures behind the score."""
        parts = [
            f"{self.successes}/{self.calls} ok",
            f"idle {self.idle_days:.0f}d",
            f"built for {self.creation_tokens} tok",
        ]
        if self.neighbour:
            parts.append(f"redundant with {self.neighbour} (cos {self.similarity:.2f})")
        return ", ".join(parts)


def _days(later: datetime, earlier: datetime) -> float:
    return max(0.0, (later - earlier).total_seconds() / 86_400)


def base_utility(
    *,
    calls: int,
    successes: int,
    idle_days: float,
    creation_tokens: int,
    half_life_days: float = DEFAULT_HALF_LIFE_DAYS,
) -> tuple[float, float, float, float]:
    """The redundancy-free part of the score.

    Returns:
        ``(recency, evidence, rebuild, base)`` as in the module's formula.
    """
    recency = 0.5 ** (idle_days / half_life_days)
    evidence = math.log2(1 + successes) * (successes + 1) / (calls + 2)
    rebuild = math.log2(1 + creation_tokens / REBUILD_TOKENS_UNIT)
    return recency, evidence, rebuild, recency * (1 + evidence + rebuild)


def redundancy_of(similarity: float) -> float:
    """How redundant a cosine makes a tool: 0 up to :data:`REDUNDANCY_FLOOR`, then up to 1."""
    return min(1.0, max(0.0, (similarity - REDUNDANCY_FLOOR) / (1 - REDUNDANCY_FLOOR)))


def first_version_times(store: ToolStore, names: Iterable[str]) -> dict[str, datetime]:
    """When each tool's first version was created (its age; the idle time of an unused one)."""
    wanted = set(names)
    with store._reading() as records:
        times = records.first_version_times()
    return {name: datetime.fromisoformat(at) for name, at in times.items() if name in wanted}


def _unit_vectors(store: ToolStore, records: Sequence[ToolRecord]) -> np.ndarray:
    """The retrieval embeddings of the records' current versions, normalised (one row each)."""
    if not records:
        return np.zeros((0, 1), dtype=np.float32)
    # The store's own vector cache (the index's embeddings): no re-embedding of the library.
    by_hash = store._vectors_for([r.spec() for r in records])
    matrix = np.stack([np.asarray(by_hash[r.hash], dtype=np.float32) for r in records])
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def utility_scores(
    store: ToolStore,
    *,
    half_life_days: float = DEFAULT_HALF_LIFE_DAYS,
    now: datetime | None = None,
    include_archived: bool = False,
) -> dict[str, ToolUtility]:
    """Score every active tool (and archived ones, against the active library).

    Args:
        store: An open store (read-only is enough).
        half_life_days: Days without use that halve the recency.
        now: The time scores are computed at (default: now).
        include_archived: Score archived tools too.

    Returns:
        ``{name: score}``.
    """
    now = now or now_utc()
    records = store.list("all" if include_archived else "active")
    born = first_version_times(store, (r.name for r in records))
    scores: dict[str, ToolUtility] = {}
    for r in records:
        first = born.get(r.name, r.created_at)
        last = r.stats.last_used or first
        recency, evidence, rebuild, base = base_utility(
            calls=r.stats.calls,
            successes=r.stats.successes,
            idle_days=_days(now, last),
            creation_tokens=r.stats.creation_cost_tokens,
            half_life_days=half_life_days,
        )
        scores[r.name] = ToolUtility(
            name=r.name,
            status=r.status,
            locked=r.locked,
            calls=r.stats.calls,
            successes=r.stats.successes,
            idle_days=_days(now, last),
            age_days=_days(now, first),
            creation_tokens=r.stats.creation_cost_tokens,
            recency=recency,
            evidence=evidence,
            rebuild=rebuild,
            base=base,
            redundancy=0.0,
            utility=base,
        )
    _apply_redundancy(store, records, scores, born)
    return scores


def _apply_redundancy(
    store: ToolStore,
    records: Sequence[ToolRecord],
    scores: dict[str, ToolUtility],
    born: Mapping[str, datetime],
) -> None:
    """Lower each tool's utility by its similarity to its most similar stronger active tool."""
    active = [i for i, r in enumerate(records) if r.status == "active"]
    if len(records) < 2 or not active:
        return
    # One strict order of strength: higher base; of equals the older tool, then the name.
    order = sorted(
        range(len(records)),
        key=lambda i: (
            -scores[records[i].name].base,
            born.get(records[i].name, records[i].created_at),
            records[i].name,
        ),
    )
    rank = np.empty(len(records), dtype=np.int64)  # 0 is the strongest
    rank[order] = np.arange(len(records))
    vectors = _unit_vectors(store, records)
    active_rows = np.array(active, dtype=np.int64)
    active_vectors = vectors[active_rows]
    for start in range(0, len(records), _BLOCK_ROWS):
        rows = np.arange(start, min(start + _BLOCK_ROWS, len(records)))
        cosines = vectors[rows] @ active_vectors.T
        stronger = rank[active_rows][None, :] < rank[rows][:, None]
        cosines = np.where(stronger, cosines, -np.inf)
        best = cosines.argmax(axis=1)
        for row, col in zip(rows, best, strict=True):
            similarity = float(cosines[row - start, col])
            redundancy = redundancy_of(similarity) if math.isfinite(similarity) else 0.0
            if redundancy > 0:
                score = scores[records[row].name]
                score.redundancy = redundancy
                score.neighbour = records[active_rows[col]].name
                score.similarity = similarity
                score.utility = score.base * (1 - redundancy)


# ------------------------------------------------------------------------ ROI


class ToolROI(BaseModel):
    """What a tool cost to build and repair, and an estimate of what its reuses saved."""

    name: str
    status: str
    versions: int
    cost_tokens: int = Field(description="Tokens spent building and repairing every version.")
    cost_usd: float | None = Field(
        description="Their price; None when a version's model has no price or its split "
        "into input and output tokens was not recorded."
    )
    reuses: int = Field(description="Successful calls by later tasks.")
    saved_per_reuse_tokens: int = Field(description="The reference build (see module doc).")
    estimated_reference: bool = Field(
        description="The reference build is the library's mean (no first build recorded)."
    )
    saved_tokens: int
    saved_usd: float | None
    net_tokens: int = Field(description="saved_tokens - cost_tokens.")
    roi: float | None = Field(description="saved_tokens / cost_tokens; None for a free tool.")


def tool_roi(
    store: ToolStore, prices: PriceTable | None = None, *, include_archived: bool = True
) -> list[ToolROI]:
    """The ROI of every tool, sorted by name.

    Args:
        store: An open store (read-only is enough).
        prices: ``$ per 1M tokens`` by model (default: ``evals/prices.json``).
        include_archived: Archived tools too.
    """
    prices = load_prices() if prices is None else prices
    records = store.list("all" if include_archived else "active")
    costs = version_costs(store)
    by_tool: dict[str, dict[int, BuildCost]] = {}
    for (name, version), cost in costs.items():
        by_tool.setdefault(name, {})[version] = cost
    versions = _version_counts(store)
    references: dict[str, tuple[int, float | None]] = {}
    for r in records:
        first = by_tool.get(r.name, {}).get(1)
        if first is not None and first.total_tokens:
            references[r.name] = (first.total_tokens, price_of(first, prices))
        elif versions.get(r.name, 1) == 1 and r.stats.creation_cost_tokens:
            references[r.name] = (r.stats.creation_cost_tokens, None)
    mean_tokens = (
        round(sum(t for t, _ in references.values()) / len(references)) if references else 0
    )
    priced = [(t, p) for t, p in references.values() if p is not None and t]
    mean_usd_per_token = sum(p for _, p in priced) / sum(t for t, _ in priced) if priced else None
    rows = []
    for r in records:
        own = by_tool.get(r.name, {})
        recorded = sum(c.total_tokens for c in own.values())
        cost_tokens = max(r.stats.creation_cost_tokens, recorded)
        unit_prices = [price_of(c, prices) for c in own.values()]
        cost_usd = (
            sum(p for p in unit_prices if p is not None)
            if None not in unit_prices and recorded >= cost_tokens
            else None
        )
        reference = references.get(r.name)
        if reference is not None:
            per_reuse, reference_usd = reference
            estimated = False
        else:
            per_reuse = mean_tokens
            reference_usd = (
                mean_tokens * mean_usd_per_token if mean_usd_per_token is not None else None
            )
            estimated = True
        reuses = r.stats.successes
        saved = reuses * per_reuse
        rows.append(
            ToolROI(
                name=r.name,
                status=r.status,
                versions=versions.get(r.name, r.version),
                cost_tokens=cost_tokens,
                cost_usd=cost_usd,
                reuses=reuses,
                saved_per_reuse_tokens=per_reuse,
                estimated_reference=estimated,
                saved_tokens=saved,
                saved_usd=reuses * reference_usd if reference_usd is not None else None,
                net_tokens=saved - cost_tokens,
                roi=saved / cost_tokens if cost_tokens else None,
            )
        )
    return rows


def _version_counts(store: ToolStore) -> dict[str, int]:
    with store._reading() as records:
        return records.version_counts()


def tool_roi_rows(
    store: ToolStore, prices: PriceTable | None = None, *, include_archived: bool = True
) -> list[dict[str, Any]]:
    """The ROI of every tool as plain dicts (for reports), sorted by name.

    Each row has ``name``, ``status``, ``versions``, ``cost_tokens``,
    ``cost_usd``, ``reuses``, ``saved_per_reuse_tokens``,
    ``estimated_reference``, ``saved_tokens``, ``saved_usd``, ``net_tokens``
    and ``roi`` (see :class:`ToolROI`; ``None`` where a price or a ratio is
    undefined).

    Args:
        store: An open store (read-only is enough).
        prices: ``$ per 1M tokens`` by model (default: ``evals/prices.json``).
        include_archived: Archived tools too.
    """
    return [row.model_dump() for row in tool_roi(store, prices, include_archived=include_archived)]
