"""Composition: the episode graph as a node of a user's own parent graph."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_compose_example_runs(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(ROOT / "examples" / "compose_episode.py"), run_name="example")
    final = namespace["main"](tmp_path / "store")
    assert final["report"].startswith("mean 5, median 4")
    assert final["tools_created"] == ["summarize_numbers"]
    # The parent's own key was not clobbered by the subgraph.
    assert final["question"] == "What is the mean of 3, 5, 10 and 2?"


def test_fan_out_example_runs_parallel_episodes_under_one_key(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(ROOT / "examples" / "fan_out_episodes.py"), run_name="example")
    final = namespace["main"](tmp_path / "store")
    assert len(final["episodes"]) == 3
    answers = sorted(e["answer"] for e in final["episodes"])
    assert answers == ["60 days", "mean 13, median 12", "mean 5, median 4"]
    assert all(e["status"] == "completed" and e["usage"] for e in final["episodes"])
    # The parent's own keys are its own: the episodes wrote only under "episodes".
    assert final["status"] == "reviewed"
    assert final["summary"] == "3/3 answered"
    assert "answer" not in final and "usage" not in final


def test_quickstart_python_snippets_run_as_written(tmp_path, monkeypatch) -> None:
    """Every ```python block of docs/quickstart.md runs (offline: a scripted endpoint)."""
    import re

    from insitu.testing import ScriptedOpenAIServer
    from insitu.testing.team import ScriptedTeam

    text = (ROOT / "docs" / "quickstart.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert blocks
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INSITU_EMBEDDING", "hashing")
    with ScriptedOpenAIServer(ScriptedTeam().openai_responder(), api_key="k") as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        for block in blocks:
            code = compile(block, "quickstart.md", "exec", dont_inherit=True)
            exec(code, {"__name__": "quickstart"})


def test_model_calls_are_tagged_for_chat_uis(tmp_path) -> None:
    """A chat UI streaming ``messages`` can tell the answer from the team's internal calls."""
    from insitu import InsituContext, create_episode_graph
    from insitu.llm import INTERNAL_TAG
    from insitu.testing.team import ScriptedTeam

    graph = create_episode_graph(models=ScriptedTeam().model())
    context = InsituContext(store_dir=str(tmp_path / "store"), embedding="hashing")
    answer, internal = [], set()
    for _namespace, (chunk, metadata) in graph.stream(
        {"task": "What is the mean of 3, 5, 10 and 2?"},
        context=context,
        stream_mode="messages",
        subgraphs=True,
    ):
        tags = metadata.get("tags") or []
        if INTERNAL_TAG in tags:
            internal.add(metadata["langgraph_node"])
        elif "insitu:integrator" in tags:
            answer.append(chunk.content)
    assert internal == {
        "plan_task",
        "build_tools",
        "execute_task",
        "summarize_episode",
        "distill_usage_notes",  # the tool's first use: its usage notes
    }
    assert "".join(answer) == "mean 5, median 4"


def test_run_task_on_event_gets_the_reflection_subgraphs_events(tmp_path) -> None:
    from insitu import run_task
    from insitu.testing.team import ScriptedTeam

    events: list[dict] = []
    run_task(
        "What is the mean of 3, 5, 10 and 2?",
        models=ScriptedTeam().model(),
        context={"store_dir": str(tmp_path / "store"), "embedding": "hashing"},
        on_event=events.append,
        checkpoint=False,
    )
    kinds = [e["event"] for e in events]
    assert "answered" in kinds  # the episode graph's own
    assert "committed" in kinds  # emitted inside the reflection subgraph
