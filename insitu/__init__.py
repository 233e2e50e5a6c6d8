"""insitu: in-situ self-evolving, tool-first agents on LangGraph.

The public API, imported lazily so that ``insitu --help`` stays fast:

* :func:`run_task` and :class:`EpisodeResult` — solve one task against a store.
* :func:`build_episode_graph` — the episode graph, uncompiled, for composition.
* :class:`InsituContext` — every setting (the graphs' ``context_schema``).
* :class:`ToolStore` — the persistent tool library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from insitu.api import EpisodeResult, run_task
    from insitu.context import InsituContext
    from insitu.graphs.episode import build_episode_graph
    from insitu.tool_store import ToolStore

_LAZY = {
    "EpisodeResult": "insitu.api",
    "run_task": "insitu.api",
    "InsituContext": "insitu.context",
    "build_episode_graph": "insitu.graphs.episode",
    "ToolStore": "insitu.tool_store",
}

__all__ = [
    "EpisodeResult",
    "InsituContext",
    "ToolStore",
    "__version__",
    "build_episode_graph",
    "run_task",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'insitu' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
