"""What building each version of a tool cost, kept in the library, and its price.

The ToolDeveloper (a new tool or a repair), the reflection (a repair) and the
absorber (a merge) count the tokens their model spent on each version they
build (:class:`~insitu.tool_store.contract.BuildCost` on the episode-local
record); the change carries it into the commit, which writes it to the
``version_costs`` table of the records in the same transaction as the version
itself. The tool's ``creation_cost_tokens`` statistic stays the sum over its
versions (it predates this table and is what exports carry); this table adds
the split into input and output tokens and the model, which a price needs.

In ``tools.db`` the table is created by the first commit that records a cost, so
libraries written before it existed open unchanged (read-only too) and simply
have no per-version costs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from insitu.tool_store.contract import BuildCost

if TYPE_CHECKING:
    from insitu.tool_store.store import ToolStore

#: ``$ per 1M tokens`` by model: ``{"input": ..., "output": ...}``.
PriceTable = Mapping[str, Mapping[str, float]]

#: The price file shipped with insitu (evals/prices.json).
DEFAULT_PRICES = Path(__file__).resolve().parents[1] / "evals" / "prices.json"


def version_costs(store: ToolStore, name: str | None = None) -> dict[tuple[str, int], BuildCost]:
    """The recorded build cost of every version (of one tool with ``name``).

    Args:
        store: An open store (read-only is enough).
        name: Only this tool's versions.

    Returns:
        ``{(name, version): cost}`` for the versions that recorded one.
    """
    with store._reading() as records:
        return records.build_costs(name)


def load_prices(path: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Read a price file: ``{model: {"input": $ per 1M tokens, "output": $ per 1M}}``.

    Keys starting with ``_`` (comments) are left out.

    Args:
        path: The file (default: :data:`DEFAULT_PRICES`).

    Raises:
        OSError, ValueError: The file is missing or not such a table.
    """
    table = json.loads(Path(path or DEFAULT_PRICES).read_text(encoding="utf-8"))
    if not isinstance(table, dict):
        raise ValueError(f"{path or DEFAULT_PRICES} is not a price table (a JSON object)")
    return {k: dict(v) for k, v in table.items() if not k.startswith("_")}


def price_of(cost: BuildCost, prices: PriceTable) -> float | None:
    """Dollar price of one build, or None when its model has no price."""
    price = prices.get(cost.model or "")
    if price is None:
        return None
    return (cost.input_tokens * price["input"] + cost.output_tokens * price["output"]) / 1e6
