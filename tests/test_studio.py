"""The Studio path: `langgraph dev` serves langgraph.json's graphs; runs go through the SDK.

The model endpoint is a loopback OpenAI-protocol server replying from the
scripted team (a test double); `langgraph dev`, the graph, store and sandbox
are real. Deselect with ``-m "not studio"``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from insitu.testing import ScriptedOpenAIServer
from insitu.testing.team import ScriptedTeam
from insitu.tool_store import ToolStore

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.studio,
    pytest.mark.skipif(shutil.which("langgraph") is None, reason="langgraph-cli is not installed"),
]

#: Keeps `langgraph dev` offline (see docs/quickstart.md).
OFFLINE_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "1",
    "LANGSMITH_TRACING": "false",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(server: subprocess.Popen) -> None:
    """Stop the server and everything it started."""
    try:
        os.killpg(server.pid, 15)
        server.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, 9)


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A `langgraph dev` server on a free port, its models on a scripted endpoint."""
    tmp = tmp_path_factory.mktemp("studio")
    store_dir = tmp / "store"
    port = free_port()
    team = ScriptedTeam()
    with ScriptedOpenAIServer(team.openai_responder(), api_key="k") as llm:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "INSITU_"))},
            **OFFLINE_ENV,
            "OPENAI_BASE_URL": llm.base_url,
            "OPENAI_API_KEY": "k",
            "INSITU_STORE": str(store_dir),
            "INSITU_EMBEDDING": "hashing",
        }
        log_path = tmp / "langgraph-dev.log"
        with log_path.open("w") as log:
            server = subprocess.Popen(
                [
                    "langgraph",
                    "dev",
                    "--config",
                    str(ROOT / "langgraph.json"),
                    "--port",
                    str(port),
                    "--host",
                    "127.0.0.1",
                    "--no-browser",
                    "--no-reload",
                ],
                cwd=tmp,  # the server's working files stay out of the repository
                env={**env, "PWD": str(tmp)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            url = f"http://127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + 90
                while True:
                    try:
                        with urllib.request.urlopen(f"{url}/ok", timeout=2) as response:
                            if response.status == 200:
                                break
                    except OSError:
                        pass
                    if server.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"langgraph dev did not start:\n{log_path.read_text()[-3000:]}")
                    time.sleep(0.5)
                yield url, store_dir
            finally:
                stop(server)


def test_episode_graph_runs_in_langgraph_dev(studio: tuple[str, Path]) -> None:
    from langgraph_sdk import get_sync_client

    url, store_dir = studio
    client = get_sync_client(url=url)
    assistants = {a["graph_id"] for a in client.assistants.search()}
    assert "episode" in assistants
    thread = client.threads.create()
    final = client.runs.wait(
        thread["thread_id"],
        "episode",
        input={"task": "What is the mean of 3, 5, 10 and 2?"},
        context={"max_rounds": 2},
    )
    assert final["status"] == "completed", final
    assert final["answer"] == "mean 5, median 4"
    assert final["tools_created"] == ["summarize_numbers"]
    with ToolStore.open(store_dir, read_only=True) as store:
        assert store.get("summarize_numbers").version == 1


def test_batch_graph_runs_in_langgraph_dev(studio: tuple[str, Path]) -> None:
    from langgraph_sdk import get_sync_client

    url, store_dir = studio
    client = get_sync_client(url=url)
    thread = client.threads.create()
    final = client.runs.wait(
        thread["thread_id"],
        "evolve",
        input={
            "batch_id": "studio-1",
            "tasks": [
                {"id": "a", "question": "Compute the average of 4 and 8"},
                {"id": "b", "question": "How many days from 2024-01-01 to 2024-03-01?"},
            ],
        },
    )
    assert sorted(r["status"] for r in final["results"]) == ["completed", "completed"]
    assert final["commit"]["applied"]
    with ToolStore.open(store_dir, read_only=True) as store:
        assert store.get("compute_date_difference").version == 1


def test_every_graph_has_its_schemas_in_studio(studio: tuple[str, Path]) -> None:
    """Studio builds its forms from these: none may be missing (Python 3.11 included)."""
    from langgraph_sdk import get_sync_client

    url, _ = studio
    client = get_sync_client(url=url)
    for assistant in client.assistants.search():
        schemas = client.assistants.get_schemas(assistant["assistant_id"])
        for kind in ("input_schema", "output_schema", "state_schema", "context_schema"):
            assert schemas.get(kind), f"{assistant['graph_id']}: no {kind}"
        assert "properties" in schemas["context_schema"]


@pytest.mark.parametrize("node", ["plan_task", "build_tools", "execute_task", "write_answer"])
def test_state_can_be_edited_at_any_node_through_the_sdk(
    studio: tuple[str, Path], tmp_path: Path, node: str
) -> None:
    """Studio's "edit state" and fork: ``update_state(as_node=...)`` at every node, then resume."""
    from langgraph_sdk import get_sync_client

    url, _ = studio
    client = get_sync_client(url=url)
    thread = client.threads.create()
    context = {"store_dir": str(tmp_path / "fresh")}  # a new library: the tool gets built
    client.runs.wait(
        thread["thread_id"],
        "episode",
        input={"task": "Compute the average of 12, 7 and 20"},
        context=context,
        interrupt_before=[node],
    )
    assert client.threads.get_state(thread["thread_id"])["next"] == [node]
    edit = {"guidance": "Call the tool once."}
    if node == "write_answer":
        edit = {"answer": "mean 13 (by hand)", "status": "completed"}
    client.threads.update_state(thread["thread_id"], edit, as_node=node)
    final = client.runs.wait(thread["thread_id"], "episode", input=None, context=context)
    # The edit stands for the node's whole output, so the run goes on from it to an end.
    assert final["status"] in ("completed", "incomplete"), final
    assert final["answer"]
    if node in ("build_tools", "write_answer"):
        assert final["status"] == "completed", final


def test_a_tool_review_is_shown_and_resumed_through_the_sdk(
    studio: tuple[str, Path], tmp_path: Path
) -> None:
    """Studio shows the interrupt's payload and resumes it with the reviewer's decision."""
    from langgraph_sdk import get_sync_client

    url, _ = studio
    client = get_sync_client(url=url)
    thread = client.threads.create()
    context = {"store_dir": str(tmp_path / "reviewed"), "tool_approval": "new"}
    client.runs.wait(
        thread["thread_id"],
        "episode",
        input={"task": "What is the mean of 3, 5, 10 and 2?"},
        context=context,
    )
    state = client.threads.get_state(thread["thread_id"])
    [pending] = state["interrupts"]
    assert pending["value"]["tools"][0]["name"] == "summarize_numbers"
    final = client.runs.wait(
        thread["thread_id"], "episode", command={"resume": "approve"}, context=context
    )
    assert final["status"] == "completed", final
    assert final["tools_created"] == ["summarize_numbers"]
    with ToolStore.open(tmp_path / "reviewed", read_only=True) as store:
        assert store.get("summarize_numbers").version == 1


def test_a_batch_task_is_paused_inside_and_resumed_through_the_sdk(
    studio: tuple[str, Path], tmp_path: Path
) -> None:
    """A task of a batch is a subgraph: Studio can stop inside it and go on."""
    from langgraph_sdk import get_sync_client

    url, _ = studio
    client = get_sync_client(url=url)
    thread = client.threads.create()
    context = {"store_dir": str(tmp_path / "batch"), "pause_before": ["execute_task"]}
    tasks = [{"id": "a", "question": "Compute the average of 4 and 8"}]
    client.runs.wait(
        thread["thread_id"], "evolve", input={"tasks": tasks, "batch_id": "p"}, context=context
    )
    [paused] = client.threads.get_state(thread["thread_id"])["interrupts"]
    assert paused["value"]["step"] == "execute_task" and paused["value"]["task_id"] == "a"
    final = client.runs.wait(
        thread["thread_id"], "evolve", command={"resume": {paused["id"]: "go"}}, context=context
    )
    assert [r["status"] for r in final["results"]] == ["completed"]
    assert final["commit"]["applied"]
