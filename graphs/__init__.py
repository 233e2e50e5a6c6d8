"""insitu's LangGraph graphs: the episode graph (one task), its reflection subgraph, and the
batch graph (parallel episodes, then absorbing).

Each module exposes a ``build_*_graph()`` factory returning an uncompiled
``StateGraph`` (for composition) and, for the top-level graphs, a compiled
``graph`` that ``langgraph.json`` serves in Studio. ``python -m insitu.graphs``
prints their Mermaid diagrams (used by ``docs/architecture.md``).
"""

from __future__ import annotations

import importlib

#: Graph name -> module exposing the compiled ``graph`` (as in ``langgraph.json``).
SERVED_GRAPHS = {"episode": "insitu.graphs.episode", "evolve": "insitu.graphs.evolve"}


def mermaid(name: str) -> str:
    """Return the Mermaid diagram of a served graph, subgraphs expanded."""
    graph = importlib.import_module(SERVED_GRAPHS[name]).graph
    return graph.get_graph(xray=1).draw_mermaid()
