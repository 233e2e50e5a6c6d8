"""Records on PostgreSQL: writers on several processes, moving a library in and out, failures.

Marker ``scale``: a real PostgreSQL server (a database per test) and a real Chroma
server. The store's contract tests (``tests/test_store.py``, ``test_store_commit.py``,
``test_learning_store.py``) run on PostgreSQL too, through the ``open_library``
fixture; these are what only a shared database has.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from insitu.cli import main
from insitu.testing.services import ChromaServer, free_port
from insitu.tool_store import ChangeSet, StoreError, ToolStore
from insitu.tool_store.testing import make_spec

pytestmark = pytest.mark.scale

#: Each writer's commits: adds of its own tools, a new version of the shared tool, calls.
COMMITS_PER_WRITER = 10

WRITER = """
import json, pathlib, sys, time
from insitu.tool_store import ChangeSet, ToolStore
from insitu.tool_store.testing import make_spec
store_dir, dsn, chroma_url, who, commits = sys.argv[1:6]
options = {"embedding": "hashing", "records_url": dsn, "chroma_url": chroma_url}
with ToolStore.open(store_dir, **options) as store:
    # Start together, so that the commits interleave.
    barrier = pathlib.Path(store_dir).parent.parent
    (barrier / f"ready-{who}").touch()
    while len(list(barrier.glob("ready-*"))) < 2:
        time.sleep(0.01)
    started, results = time.time(), []
    for i in range(int(commits)):
        changes = (
            ChangeSet()
            .add(make_spec(f"{who}_tool_{i}", f"Tool {i} made by writer {who} for job {i}."))
            .update("shared_tool", make_spec("shared_tool", f"Shared, edited by {who} ({i})."))
        )
        result = store.commit(changes, commit_id=f"{who}:{i}")
        again = store.commit(changes, commit_id=f"{who}:{i}")  # a resumed batch
        assert again.replayed and again.updated == result.updated
        store.record_calls([("shared_tool", None, True)] * 3, commit_id=f"{who}:{i}:calls")
        results.append(result.updated[0])
    print(json.dumps({"started": started, "ended": time.time(), "versions": results}))
"""


def test_two_processes_committing_at_once_lose_nothing(
    tmp_path: Path, postgres_dsn: str, chroma_server: ChromaServer
) -> None:
    with ToolStore.open(
        tmp_path / "main",
        embedding="hashing",
        records_url=postgres_dsn,
        chroma_url=chroma_server.url,
    ) as store:
        store.add(make_spec("shared_tool", "A tool both writers update."))
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    textwrap.dedent(WRITER),
                    str(tmp_path / who / "store"),  # each machine has its own store_dir
                    postgres_dsn,
                    chroma_server.url,
                    who,
                    str(COMMITS_PER_WRITER),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for who in ("alpha", "beta")
        ]
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err
            reports.append(json.loads(out))
        alpha, beta = reports
        assert alpha["started"] < beta["ended"] and beta["started"] < alpha["ended"], (
            "the writers did not overlap; the test proves nothing"
        )
        # Every commit applied: each writer's tools, and one new shared version per commit.
        names = {r.name for r in store.list()}
        for who in ("alpha", "beta"):
            assert {f"{who}_tool_{i}" for i in range(COMMITS_PER_WRITER)} <= names
        history = store.history("shared_tool")
        assert [r.version for r in history] == list(range(1, 2 * COMMITS_PER_WRITER + 2))
        given = sorted(alpha["versions"] + beta["versions"])
        assert len(set(given)) == 2 * COMMITS_PER_WRITER  # no version handed out twice
        assert {r.ref for r in history[1:]} == set(given)
        for older, newer in itertools.pairwise(history):
            assert newer.parent_version == older.version  # each built on the one before
        assert store.get("shared_tool").stats.calls == 2 * COMMITS_PER_WRITER * 3
        assert store.count() == 1 + 2 * COMMITS_PER_WRITER
        # The shared index ends in step with the records, whatever order the writers used.
        assert store.verify_index(full=True).repaired is False
        hit = store.search("tool 7 made by writer beta", k=1, mode="lexical")[0]
        assert hit.record.name == "beta_tool_7"


def _library(store: ToolStore) -> dict[str, object]:
    """Everything an export carries, for comparing libraries across backends."""
    return {
        r.name: (
            store.state(r.name).model_dump(),
            [h.model_dump(exclude={"stats"}) for h in store.history(r.name)],
        )
        for r in store.list("all")
    }


def test_export_from_sqlite_import_into_postgres_and_back(
    tmp_path: Path,
    postgres_dsn: str,
    chroma_server: ChromaServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INSITU_EMBEDDING", "hashing")
    for name in ("INSITU_STORE", "INSITU_CHROMA_URL", "INSITU_RECORDS_URL"):
        monkeypatch.delenv(name, raising=False)
    source = tmp_path / "sqlite"
    with ToolStore.open(source, embedding="hashing") as store:
        store.add(make_spec("compute_mean", "Computes the mean."), creation_cost_tokens=40)
        store.update("compute_mean", make_spec("compute_mean", "Mean, v2.", body="return {}"))
        store.add(make_spec("count_words", "Counts the words of a text."))
        store.add(make_spec("parse_csv_rows", "Parses CSV text into rows."))
        store.archive("parse_csv_rows", "merged")
        store.lock("count_words")
        store.record_call("compute_mean", 2, False, "boom")
        original = _library(store)

    def tools(store_dir: Path, *args: str, postgres: bool = False) -> str:
        env = {"INSITU_RECORDS_URL": postgres_dsn, "INSITU_CHROMA_URL": chroma_server.url}
        result = CliRunner().invoke(
            main, ["--store", str(store_dir), "tools", *args], env=env if postgres else {}
        )
        assert result.exit_code == 0, result.output
        return result.output

    first, second = tmp_path / "export-1", tmp_path / "export-2"
    tools(source, "export", str(first))
    tools(tmp_path / "pg-node", "import", str(first), postgres=True)
    with ToolStore.open(
        tmp_path / "pg-node", records_url=postgres_dsn, chroma_url=chroma_server.url
    ) as store:
        assert _library(store) == original
    tools(tmp_path / "pg-node", "export", str(second), postgres=True)
    tools(tmp_path / "back", "import", str(second))
    with ToolStore.open(tmp_path / "back", read_only=True) as store:
        assert _library(store) == original
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (first, second)]
    assert manifests[0]["tools"] == manifests[1]["tools"]


def test_a_crashed_writer_leaves_the_old_library_and_no_lock(
    tmp_path: Path, postgres_dsn: str, chroma_server: ChromaServer
) -> None:
    """kill -9 inside the commit's transaction: the server rolls it back and frees the lock."""
    options = {"records_url": postgres_dsn, "chroma_url": chroma_server.url}
    with ToolStore.open(tmp_path / "a", embedding="hashing", **options) as store:
        store.add(make_spec("compute_mean", "Computes the mean."))
    script = textwrap.dedent(
        f"""
        import os
        from insitu.tool_store import ChangeSet, ToolStore
        from insitu.tool_store.store import ToolStore as Impl
        from insitu.tool_store.testing import make_spec
        def die(*args, **kwargs):
            os._exit(17)  # the update and the add are written, the transaction is open
        Impl._apply_archive = die
        store = ToolStore.open({str(tmp_path / "b")!r}, **{options!r})
        store.commit(
            ChangeSet()
            .update("compute_mean", make_spec("compute_mean", "New.", body="return {{}}"))
            .add(make_spec("compute_median", "Median."))
            .archive("compute_mean", "x"),
            commit_id="crash-1",
        )
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 17, proc.stderr
    with ToolStore.open(tmp_path / "c", write_lock_timeout=10, **options) as store:
        assert [r.ref for r in store.list()] == ["compute_mean@1"]
        result = store.commit(
            ChangeSet().add(make_spec("compute_median", "Median.")), commit_id="crash-1"
        )
        assert not result.replayed and result.added == ["compute_median@1"]


def test_versions_are_immutable_in_the_database_too(
    tmp_path: Path, postgres_dsn: str, chroma_server: ChromaServer
) -> None:
    with ToolStore.open(
        tmp_path, embedding="hashing", records_url=postgres_dsn, chroma_url=chroma_server.url
    ) as store:
        store.add(make_spec("compute_mean", "Computes the mean."))
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        for statement in (
            "UPDATE insitu_tools.versions SET note = 'edited'",
            "DELETE FROM insitu_tools.versions",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="immutable"):
                connection.execute(statement)
        with pytest.raises(psycopg.errors.UniqueViolation):
            connection.execute(
                "INSERT INTO insitu_tools.commits VALUES ('c', 'now', 'd', '{}'), "
                "('c', 'now', 'd', '{}')"
            )


def test_postgres_records_need_a_chroma_server(tmp_path: Path, postgres_dsn: str) -> None:
    with pytest.raises(StoreError, match="need the index on a Chroma server") as info:
        ToolStore.open(tmp_path / "lib", records_url=postgres_dsn)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "lib").exists()  # refused before anything was created


def test_unreachable_or_empty_databases_are_clear_errors(
    tmp_path: Path, postgres_dsn: str, chroma_server: ChromaServer
) -> None:
    url = f"postgresql://insitu:secret@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(StoreError, match="cannot reach the tool records") as info:
        ToolStore.open(tmp_path / "lib", records_url=url, chroma_url=chroma_server.url)
    assert "secret" not in str(info.value) and "***" in str(info.value)
    with pytest.raises(StoreError, match="no tool library in"):
        ToolStore.open(
            tmp_path / "lib",
            records_url=postgres_dsn,
            chroma_url=chroma_server.url,
            read_only=True,
        )
    with psycopg.connect(postgres_dsn) as connection:  # a reader created nothing
        schemas = connection.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = 'insitu_tools'"
        ).fetchall()
    assert schemas == []
