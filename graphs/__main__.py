"""Print the Mermaid diagram of every served graph: ``python -m insitu.graphs``."""

from insitu.graphs import SERVED_GRAPHS, mermaid

for name in SERVED_GRAPHS:
    print(f"## {name}\n\n```mermaid\n{mermaid(name)}```\n")
