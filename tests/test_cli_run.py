"""``insitu run`` and ``insitu demo`` as a user meets them: real subprocesses.

The OpenAI-protocol server replies from the scripted team (a test double); the
CLI, ChatOpenAI client, graph, store and sandbox are the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from insitu.testing import ScriptedOpenAIServer
from insitu.testing.team import SCRIPTED_LABEL, ScriptedTeam


def insitu(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "INSITU_"))}
    return subprocess.run(
        [sys.executable, "-m", "insitu", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=240,
    )


def test_run_without_endpoint_says_what_to_set(tmp_path: Path) -> None:
    done = insitu("--store", str(tmp_path / "s"), "run", "What is 2 + 2?")
    assert done.returncode == 2
    assert "OPENAI_API_KEY" in done.stderr and "OPENAI_BASE_URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_creates_then_reuses_a_tool(tmp_path: Path) -> None:
    team = ScriptedTeam()
    store = str(tmp_path / "store")
    with ScriptedOpenAIServer(team.openai_responder(), api_key="k") as server:
        env = {
            "OPENAI_BASE_URL": server.base_url,
            "OPENAI_API_KEY": "k",
            "INSITU_EMBEDDING": "hashing",
        }
        first = insitu("--store", store, "run", "What is the mean of 3, 5, 10 and 2?", env=env)
        second = insitu("--store", store, "run", "Compute the average of 4 and 8", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("mean 5, median 4")
    assert "tools created" in first.stdout and "summarize_numbers" in first.stdout
    assert "tokens manager" in first.stdout
    assert "building tool summarize_numbers (attempt 1)" in first.stderr  # live progress
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("mean 6, median 6")
    assert "summarize_numbers@1" in second.stdout
    listed = insitu("--store", store, "tools", "list")
    assert "summarize_numbers" in listed.stdout


def test_run_that_cannot_complete_exits_1(tmp_path: Path) -> None:
    def responder(body: dict[str, Any]) -> Any:
        prompt = body["messages"][0]["content"]
        if prompt.startswith("You are the Manager"):
            return json.dumps({"bind": [], "requests": [], "guidance": ""})
        if prompt.startswith("You are the Executor"):
            call = {
                "name": "report_missing_capability",
                "arguments": {"capability": "a", "why": "b"},
            }
            return {"content": None, "tool_calls": [call]}
        return "Could not complete: no tool can do this."

    with ScriptedOpenAIServer(responder, api_key="k") as server:
        env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "k"}
        done = insitu("--store", str(tmp_path / "s"), "run", "Do the impossible.", env=env)
    assert done.returncode == 1, done.stderr
    assert "incomplete" in done.stdout


def test_demo_runs_offline_and_says_it_is_scripted(tmp_path: Path) -> None:
    done = insitu("--store", str(tmp_path / "s"), "demo")
    assert done.returncode == 0, done.stderr
    assert SCRIPTED_LABEL in done.stdout
    assert "admitted" in done.stderr  # a tool was built and admitted ...
    # ... and reused by a later task: a library call of version 1 of each tool.
    assert "summarize_numbers v1: 1 library call(s)" in done.stdout
    assert "compute_date_difference v1: 1 library call(s)" in done.stdout
