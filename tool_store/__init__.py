"""insitu's tool library: the tool contract, versioned storage and hybrid retrieval.

Public API (imported lazily, so that ``import insitu.tool_store`` stays cheap for
the CLI; chromadb and onnxruntime load only when an index or an embedding is
first used):

* :class:`ToolStore` (``store.py``): the persistent, versioned library; its records in
  SQLite (``tools.db``) or PostgreSQL (``records_url``), behind ``records/``.
* :class:`ChangeSet`, :class:`ToolAdd`, :class:`ToolUpdate`, :class:`ToolArchive`,
  :class:`CommitResult`, :class:`CallRecord` (``changes.py``): atomic commits.
* :class:`ToolIndex`, :class:`IndexDoc`, :class:`SearchHit` (``index.py``): retrieval.
* :func:`export_library`, :func:`import_library` (``exchange.py``).
* :class:`MiniLMEmbedding`, :class:`HashingEmbedding`, :func:`get_embedding_function`,
  :func:`embed` (``embeddings.py``).
* The contract's :class:`ToolSpec`, :class:`ToolTest`, :class:`ToolRecord`,
  :class:`ToolStats`, and every error class of ``errors.py``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from insitu.tool_store.contract import ToolRecord, ToolSpec, ToolStats, ToolTest
from insitu.tool_store.errors import (
    CorruptManifestError,
    DuplicateToolError,
    ExportError,
    ImportConflictError,
    IndexUnavailableError,
    InvalidSpecError,
    LockedToolError,
    ReadOnlyStoreError,
    StoreClosedError,
    StoreError,
    StoreFormatError,
    StoreLockedError,
    ToolArchivedError,
    ToolNotFoundError,
    VersionConflictError,
    VersionNotFoundError,
)

if TYPE_CHECKING:
    from insitu.tool_store.changes import (
        CallRecord,
        ChangeSet,
        CommitResult,
        ToolAdd,
        ToolArchive,
        ToolUpdate,
    )
    from insitu.tool_store.embeddings import (
        HashingEmbedding,
        MiniLMEmbedding,
        embed,
        get_embedding_function,
    )
    from insitu.tool_store.exchange import ImportResult, export_library, import_library
    from insitu.tool_store.index import IndexDoc, SearchHit, ToolIndex
    from insitu.tool_store.store import IndexReport, ToolHit, ToolState, ToolStore

_LAZY = {
    "ToolStore": "store",
    "ToolHit": "store",
    "ToolState": "store",
    "IndexReport": "store",
    "ChangeSet": "changes",
    "ToolAdd": "changes",
    "ToolUpdate": "changes",
    "ToolArchive": "changes",
    "CommitResult": "changes",
    "CallRecord": "changes",
    "ToolIndex": "index",
    "IndexDoc": "index",
    "SearchHit": "index",
    "export_library": "exchange",
    "import_library": "exchange",
    "ImportResult": "exchange",
    "MiniLMEmbedding": "embeddings",
    "HashingEmbedding": "embeddings",
    "get_embedding_function": "embeddings",
    "embed": "embeddings",
}

__all__ = [
    "CallRecord",
    "ChangeSet",
    "CommitResult",
    "CorruptManifestError",
    "DuplicateToolError",
    "ExportError",
    "HashingEmbedding",
    "ImportConflictError",
    "ImportResult",
    "IndexDoc",
    "IndexReport",
    "IndexUnavailableError",
    "InvalidSpecError",
    "LockedToolError",
    "MiniLMEmbedding",
    "ReadOnlyStoreError",
    "SearchHit",
    "StoreClosedError",
    "StoreError",
    "StoreFormatError",
    "StoreLockedError",
    "ToolAdd",
    "ToolArchive",
    "ToolArchivedError",
    "ToolHit",
    "ToolIndex",
    "ToolNotFoundError",
    "ToolRecord",
    "ToolSpec",
    "ToolState",
    "ToolStats",
    "ToolStore",
    "ToolTest",
    "ToolUpdate",
    "VersionConflictError",
    "VersionNotFoundError",
    "embed",
    "export_library",
    "get_embedding_function",
    "import_library",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'insitu.tool_store' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"insitu.tool_store.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
