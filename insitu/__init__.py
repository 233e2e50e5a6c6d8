"""insitu: in-situ self-evolving, tool-first agents on LangGraph."""

__version__ = "0.1.0"
