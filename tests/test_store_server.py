"""Server mode: the index on a real `chroma run` server, shared by writer processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from insitu.testing.services import ChromaServer, free_port
from insitu.tool_store import IndexUnavailableError, ToolStore
from insitu.tool_store.testing import make_spec

pytestmark = pytest.mark.skipif(shutil.which("chroma") is None, reason="no `chroma` CLI")


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ChromaServer.start(tmp_path_factory.mktemp("chroma-server")) as server:
        yield server.url


WRITER = """
import json, pathlib, sys, time
from insitu.tool_store import ToolStore
from insitu.tool_store.testing import make_spec
path, url, who = sys.argv[1], sys.argv[2], sys.argv[3]
with ToolStore.open(path, embedding="hashing", chroma_url=url) as store:
    # Start together, so that the two writers really interleave.
    barrier = pathlib.Path(path).parent
    (barrier / f"ready-{who}").touch()
    while len(list(barrier.glob("ready-*"))) < 2:
        time.sleep(0.01)
    started = time.time()
    for i in range(12):
        store.add(make_spec(f"{who}_tool_{i}", f"Tool {i} made by writer {who} for job {i}."))
        store.record_calls([("shared_counter", 1, True)] * 5)
    print(json.dumps([len(store.list()), started, time.time()]))
"""


def test_two_processes_write_one_library_concurrently(tmp_path: Path, chroma_url: str) -> None:
    path = tmp_path / "lib"
    with ToolStore.open(path, embedding="hashing", chroma_url=chroma_url) as store:
        store.add(make_spec("shared_counter", "A tool both writers call."))
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(WRITER), str(path), chroma_url, who],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for who in ("alpha", "beta")
        ]
        spans = []
        for proc in procs:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err
            count, started, ended = json.loads(out)
            assert 13 <= count <= 25
            spans.append((started, ended))
        (a0, a1), (b0, b1) = spans
        assert a0 < b1 and b0 < a1, "the writers did not overlap; the test proves nothing"
        # This process opened the store before the others wrote; it sees everything.
        assert store.count() == 25
        assert store.get("shared_counter").stats.calls == 120  # no lost updates
        assert store._index is not None
        indexed = {k: v["hash"] for k, v in store._index.metadata().items()}
        assert indexed == {r.name: r.hash for r in store.list()}
        assert store.verify_index(full=True).repaired is False
        for mode in ("hybrid", "lexical", "dense"):
            hit = store.search("tool 3 made by writer beta", k=1, mode=mode)[0]
            assert hit.record.name == "beta_tool_3", mode


def test_server_mode_holds_no_session_lock_and_reads_others_changes(
    tmp_path: Path, chroma_url: str
) -> None:
    path = tmp_path / "lib"
    first = ToolStore.open(path, embedding="hashing", chroma_url=chroma_url)
    second = ToolStore.open(path, chroma_url=chroma_url)  # same process, same library
    try:
        first.add(make_spec("count_lines", "Counts the lines of a text."))
        assert second.search("count lines", k=1, mode="lexical")[0].record.name == "count_lines"
        second.archive("count_lines", "test")
        assert first.search("count lines", k=5, mode="lexical") == []
        assert first.get("count_lines").status == "archived"
    finally:
        first.close()
        second.close()


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(IndexUnavailableError, match=url.replace(".", r"\.")):
        ToolStore.open(tmp_path / "lib", embedding="hashing", chroma_url=url)
