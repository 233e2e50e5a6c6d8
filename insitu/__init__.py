"""insitu: in-situ self-evolving, tool-first agents on LangGraph.

The public API, imported lazily so that ``insitu --help`` stays fast:

* :func:`run_task` / :func:`arun_task` and :class:`EpisodeResult` — solve one task against a
  store (synchronously, or awaited on your event loop).
* :func:`create_episode_graph` / :func:`create_evolve_graph` — the compiled graphs,
  to invoke or to add to a graph of your own; :func:`send_tasks` fans a parent's
  tasks out to episodes; :func:`build_episode_graph` — the uncompiled builder.
* :class:`InsituContext` — every setting (the graphs' ``context_schema``).
* :class:`ToolStore` — the persistent tool library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from insitu.api import EpisodeResult, arun_task, run_task
    from insitu.context import InsituContext
    from insitu.graphs.episode import build_episode_graph, create_episode_graph, send_tasks
    from insitu.graphs.evolve import create_evolve_graph
    from insitu.tool_store import ToolStore

_LAZY = {
    "EpisodeResult": "insitu.api",
    "run_task": "insitu.api",
    "arun_task": "insitu.api",
    "InsituContext": "insitu.context",
    "build_episode_graph": "insitu.graphs.episode",
    "create_episode_graph": "insitu.graphs.episode",
    "create_evolve_graph": "insitu.graphs.evolve",
    "send_tasks": "insitu.graphs.episode",
    "ToolStore": "insitu.tool_store",
}

__all__ = [
    "EpisodeResult",
    "InsituContext",
    "ToolStore",
    "__version__",
    "arun_task",
    "build_episode_graph",
    "create_episode_graph",
    "create_evolve_graph",
    "run_task",
    "send_tasks",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'insitu' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
