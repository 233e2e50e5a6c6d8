"""LangGraph checkpointers: a SQLite file in a directory, or a PostgreSQL database.

Every run that keeps checkpoints gets its checkpointer from
:func:`open_checkpointer` (synchronous readers: ``get_state``, ``insitu gc``) or
its asynchronous variant :func:`open_async_checkpointer` (the runs, which are
asyncio: ``AsyncSqliteSaver`` / ``AsyncPostgresSaver``): ``insitu run`` / ``run_task`` for the store
directory, ``insitu evolve`` / ``insitu eval`` for the run directory. By
default the checkpoints are the SQLite file ``checkpoints.sqlite`` in that
directory. With the ``checkpoint_url`` setting a ``postgresql://`` URL, they go
to that database instead (LangGraph's ``PostgresSaver``), so that runs on
several machines, or a run that moves to another machine, share them.

One database serves many directories, as one SQLite file per directory did:
the checkpoints of each directory live in a PostgreSQL schema of their own,
named after the directory's absolute path and the file name
(:func:`schema_for`), because LangGraph keys checkpoints by thread id alone
and two run directories can use the same thread ids (the same tasks run by two
systems, for instance). A run is therefore resumed by giving the same
directory path, on any machine. The schema's comment names that path
(``\\dn+`` in ``psql``). The role in the URL needs the right to create schemas
in the database (``GRANT CREATE ON DATABASE ... TO role``).

The tables are created (LangGraph's migrations, ``PostgresSaver.setup()``)
once per process and schema, under a PostgreSQL advisory lock, so that
processes starting together on a fresh database do not race.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from insitu.tool_store.errors import StoreError

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.checkpoint.sqlite import SqliteSaver

#: The SQLite checkpoint file of a store or run directory.
CHECKPOINTS_FILE = "checkpoints.sqlite"
#: URL schemes that select PostgreSQL (libpq accepts both).
POSTGRES_SCHEMES = ("postgresql", "postgres")
#: Prefix of the schema that holds one directory's checkpoints.
SCHEMA_PREFIX = "insitu_ckpt_"
#: Seconds to wait for the first connection before calling the database unreachable.
CONNECT_TIMEOUT_S = 15.0
#: Connections per checkpointer. LangGraph's PostgresSaver serialises its own
#: statements behind one lock, so more would sit idle; two let a broken
#: connection be replaced while the other serves.
POOL_SIZE = 2

_prepared: set[tuple[str, str]] = set()
_prepared_lock = threading.Lock()


class CheckpointStoreError(StoreError):
    """The checkpoint database cannot be reached or set up.

    A storage error like the tool store's, so the CLI reports it the same way
    (one line, exit code 3).
    """


def is_postgres_url(url: str | None) -> bool:
    """Whether ``url`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return bool(url) and urlsplit(str(url)).scheme in POSTGRES_SCHEMES


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def schema_for(scope: str) -> str:
    """The PostgreSQL schema that holds the checkpoints of ``scope`` (a directory and file).

    A digest, not the path itself: schema names are limited to 63 bytes and to
    characters that need no quoting.
    """
    return SCHEMA_PREFIX + hashlib.sha256(scope.encode()).hexdigest()[:16]


def _lock_key(schema: str) -> int:
    """A signed 64-bit advisory lock key for setting up ``schema``."""
    digest = hashlib.sha256(f"insitu-checkpoints:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


#: Seconds a checkpoint read or write waits for another connection's lock on the file.
LOCK_WAIT_S = 30.0


@contextmanager
def sqlite_checkpointer(
    directory: str | Path,
    filename: str = CHECKPOINTS_FILE,
    *,
    holder: Literal["store", "run"] = "store",
) -> Iterator[SqliteSaver]:
    """Open a SQLite checkpointer in a directory (a store's, or a run's).

    The database runs in WAL mode (as ``SqliteSaver`` sets it up) with
    ``synchronous=NORMAL``: a commit is durable once it is in the WAL, which
    survives a killed process, and only a power cut can lose the last few
    checkpoints (the database stays consistent). With SQLite's default
    (``FULL``) every one of an episode's dozens of checkpoint writes waited
    for an fsync, under one lock shared by every episode of a batch.

    Args:
        directory: Where the file is (created if needed).
        filename: The database file.
        holder: Whose checkpoints they are (``store`` or ``run``), for the message
            of :class:`~insitu.tool_store.health.CheckpointsDamagedError`.

    Raises:
        CheckpointsDamagedError: The file is damaged (truncated, garbage), found
            on opening or when an SQLite error shows it later; one line saying
            what they hold and how to recover.
    """
    from langgraph.checkpoint.sqlite import SqliteSaver

    from insitu.tool_store.health import check_checkpoints, checkpoint_failure

    path = Path(directory)
    check_checkpoints(path / filename, holder)
    path.mkdir(parents=True, exist_ok=True)
    # Waits for a lock as long as the store does: a batch's episodes, its resume and
    # `get_state` share the file, and a loaded machine holds locks for seconds.
    conn = sqlite3.connect(path / filename, check_same_thread=False, timeout=LOCK_WAIT_S)
    try:
        conn.execute("PRAGMA synchronous=NORMAL")  # per connection; SqliteSaver sets WAL itself
        yield SqliteSaver(conn)
    except sqlite3.DatabaseError as exc:
        failure = checkpoint_failure(path / filename, holder, exc)
        if failure is None:
            raise
        raise failure from exc
    finally:
        conn.close()


def _connection_options(schema: str) -> dict[str, Any]:
    """What LangGraph's PostgresSaver needs of a connection, with ``schema`` as its search path.

    LangGraph's statements name their tables unqualified, so the search path
    decides which directory's checkpoints a connection sees.
    """
    from psycopg.rows import dict_row

    return {
        "autocommit": True,
        "prepare_threshold": 0,
        "row_factory": dict_row,
        "options": f"-c search_path={schema}",
    }


def _prepare_schema(url: str, schema: str, scope: str) -> None:
    """Create ``schema`` and LangGraph's tables in it, once per process, under a lock.

    One connection, opened directly, so that an unreachable database fails at
    once (a pool would keep retrying until its timeout). Its session-level
    advisory lock makes a second process that starts on a fresh database wait
    instead of creating the same tables at the same time (``CREATE TABLE IF NOT
    EXISTS`` races on PostgreSQL's catalogue).
    """
    import psycopg
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg import sql

    with _prepared_lock:
        if (url, schema) in _prepared:
            return
        with psycopg.connect(
            url, connect_timeout=int(CONNECT_TIMEOUT_S), **_connection_options(schema)
        ) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_lock_key(schema),))
            try:
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                )
                conn.execute(
                    sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                        sql.Identifier(schema), sql.Literal(f"insitu checkpoints of {scope}")
                    )
                )
                PostgresSaver(conn).setup()
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(schema),))
        _prepared.add((url, schema))


@contextmanager
def postgres_checkpointer(url: str, *, scope: str) -> Iterator[PostgresSaver]:
    """Open a PostgreSQL checkpointer whose tables live in the schema of ``scope``.

    Args:
        url: A ``postgresql://`` URL (libpq's; an ``options`` parameter in it is
            replaced, since the schema is chosen through ``search_path``).
        scope: What the checkpoints belong to (a directory and file name); see
            :func:`schema_for`.

    Raises:
        CheckpointStoreError: The database cannot be reached or set up.
    """
    try:
        import psycopg
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg_pool import ConnectionPool, PoolTimeout
    except ImportError as exc:
        from insitu.llm import ConfigurationError

        raise ConfigurationError(
            f"checkpoint_url is a PostgreSQL URL, which needs the scale extra "
            f"(pip install 'insitu[scale]'): {exc}"
        ) from exc

    schema = schema_for(scope)
    try:
        _prepare_schema(url, schema, scope)
    except psycopg.Error as exc:
        raise CheckpointStoreError(_unusable(url, exc)) from exc
    pool: ConnectionPool[Any] = ConnectionPool(
        url,
        min_size=1,
        max_size=POOL_SIZE,
        kwargs=_connection_options(schema),
        check=ConnectionPool.check_connection,  # replace a connection the server dropped
        open=False,
        name=f"insitu-checkpoints-{schema}",
    )
    try:
        try:
            pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except PoolTimeout as exc:
            raise CheckpointStoreError(_unusable(url, exc)) from exc
        yield PostgresSaver(pool)
    finally:
        pool.close()


def _unusable(url: str, exc: Exception) -> str:
    """One line: which database (password hidden) and the first line of why."""
    why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"cannot use the checkpoint database {redact(url)}: {why}"


@contextmanager
def open_checkpointer(
    directory: str | Path,
    *,
    url: str | None = None,
    filename: str = CHECKPOINTS_FILE,
    holder: Literal["store", "run"] = "store",
) -> Iterator[BaseCheckpointSaver[Any]]:
    """The checkpointer of a store or run directory: SQLite there, or PostgreSQL at ``url``.

    Args:
        directory: The store or run directory the checkpoints belong to.
        url: The ``checkpoint_url`` setting: empty for the SQLite file in
            ``directory``, or a ``postgresql://`` URL.
        filename: The SQLite file's name (also part of the PostgreSQL scope).
        holder: Whose checkpoints they are (``store`` or ``run``), named when the
            SQLite file is damaged.

    Raises:
        ConfigurationError: ``url`` is neither empty nor a PostgreSQL URL, or the
            PostgreSQL packages are not installed.
        CheckpointStoreError: The PostgreSQL database cannot be reached or set up.
    """
    if not url:
        # Looked up at call time, so that a test or benchmark may patch it.
        with sqlite_checkpointer(directory, filename, holder=holder) as saver:
            yield saver
        return
    _check_url(url, filename)
    scope = str(Path(directory).resolve() / filename)
    with postgres_checkpointer(url, scope=scope) as saver:
        yield saver


def _check_url(url: str, filename: str) -> None:
    """Refuse a ``checkpoint_url`` that is not PostgreSQL's (ConfigurationError)."""
    if not is_postgres_url(url):
        from insitu.llm import ConfigurationError

        raise ConfigurationError(
            f"checkpoint_url={redact(url)!r}: expected a postgresql:// URL, or nothing for "
            f"the SQLite file {filename} in the directory"
        )


@asynccontextmanager
async def open_async_checkpointer(
    directory: str | Path,
    *,
    url: str | None = None,
    filename: str = CHECKPOINTS_FILE,
    holder: Literal["store", "run"] = "store",
) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """:func:`open_checkpointer` for asyncio runs: the same file or database, async savers.

    The SQLite file (``AsyncSqliteSaver``, ``synchronous=NORMAL`` as above) or the
    directory's PostgreSQL schema (``AsyncPostgresSaver`` on an async pool). Its
    synchronous methods (``get_state``) also work, from any thread but the loop's.

    Raises:
        ConfigurationError: As :func:`open_checkpointer`.
        CheckpointStoreError: The PostgreSQL database cannot be reached or set up.
        CheckpointsDamagedError: The SQLite file is damaged.
    """
    if not url:
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        from insitu.tool_store.health import check_checkpoints, checkpoint_failure

        path = Path(directory)
        check_checkpoints(path / filename, holder)
        path.mkdir(parents=True, exist_ok=True)
        async with aiosqlite.connect(path / filename, timeout=LOCK_WAIT_S) as conn:
            try:
                await conn.execute("PRAGMA synchronous=NORMAL")
                yield AsyncSqliteSaver(conn)
            except sqlite3.DatabaseError as exc:
                failure = checkpoint_failure(path / filename, holder, exc)
                if failure is None:
                    raise
                raise failure from exc
        return
    _check_url(url, filename)
    scope = str(Path(directory).resolve() / filename)
    async with _async_postgres_checkpointer(url, scope=scope) as saver:
        yield saver


@asynccontextmanager
async def _async_postgres_checkpointer(url: str, *, scope: str) -> AsyncIterator[Any]:
    """:func:`postgres_checkpointer` with LangGraph's ``AsyncPostgresSaver``."""
    try:
        import psycopg
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg_pool import AsyncConnectionPool, PoolTimeout
    except ImportError as exc:
        from insitu.llm import ConfigurationError

        raise ConfigurationError(
            f"checkpoint_url is a PostgreSQL URL, which needs the scale extra "
            f"(pip install 'insitu[scale]'): {exc}"
        ) from exc
    from insitu.aio import blocking

    schema = schema_for(scope)
    try:
        await blocking(_prepare_schema, url, schema, scope)
    except psycopg.Error as exc:
        raise CheckpointStoreError(_unusable(url, exc)) from exc
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=POOL_SIZE,
        kwargs=_connection_options(schema),
        check=AsyncConnectionPool.check_connection,
        open=False,
        name=f"insitu-checkpoints-{schema}",
    )
    try:
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except PoolTimeout as exc:
            raise CheckpointStoreError(_unusable(url, exc)) from exc
        yield AsyncPostgresSaver(pool)
    finally:
        await pool.close()
