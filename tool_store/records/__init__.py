"""Where a library's records live: SQLite in the store directory, or PostgreSQL.

:func:`open_records` chooses the backend: ``records_url`` (a
``postgresql://`` URL) puts the records in that database
(:mod:`.postgres`); without it they are ``tools.db`` in the store directory
(:mod:`.sqlite`). The protocol both implement is :mod:`.base`; the SQL they
share is :mod:`.sql`.
"""

from __future__ import annotations

from pathlib import Path

from insitu.tool_store.errors import StoreError
from insitu.tool_store.records.base import RecordBackend

#: URL schemes that name a PostgreSQL database.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_records(
    path: Path,
    *,
    records_url: str | None,
    chroma_url: str | None,
    read_only: bool,
    lock_timeout: float,
    write_lock_timeout: float,
    journal_mode: str,
    recreate_records: bool,
) -> RecordBackend:
    """Open the records of the library in store directory ``path``.

    Args:
        path: The store directory.
        records_url: A PostgreSQL URL for the records; ``None`` for ``tools.db``.
        chroma_url: The Chroma server of the index (server mode), if any.
        read_only: Never write.
        lock_timeout, write_lock_timeout, journal_mode, recreate_records: See
            :meth:`ToolStore.open <insitu.tool_store.store.ToolStore.open>`.

    Raises:
        StoreError: A ``records_url`` that is not PostgreSQL's, or PostgreSQL
            records with an embedded index (it could not be shared); the
            backend's errors.
    """
    if records_url:
        if not records_url.startswith(POSTGRES_SCHEMES):
            raise StoreError(
                "records_url must be a postgresql://user:password@host:port/database URL"
            )
        if not chroma_url:
            raise StoreError(
                "records in PostgreSQL need the index on a Chroma server: set chroma_url "
                "(INSITU_CHROMA_URL) too; an embedded index cannot be shared between machines"
            )
        from insitu.tool_store.records.postgres import PostgresRecords

        return PostgresRecords.open(
            records_url, read_only=read_only, lock_timeout=write_lock_timeout
        )
    from insitu.tool_store.records.sqlite import SqliteRecords

    return SqliteRecords.open(
        path,
        read_only=read_only,
        server_mode=chroma_url is not None,
        lock_timeout=lock_timeout,
        write_lock_timeout=write_lock_timeout,
        journal_mode=journal_mode,
        recreate_records=recreate_records,
    )
