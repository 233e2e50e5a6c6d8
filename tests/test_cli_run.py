"""``insitu run`` and ``insitu demo`` as a user meets them: real subprocesses.

The OpenAI-protocol server replies from the scripted team (a test double); the
CLI, ChatOpenAI client, graph, store and sandbox are the real ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
    assert "add --scripted to `python -m insitu run`" in done.stderr  # this command's flag
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


def test_set_on_the_run_subcommand_changes_what_it_does(tmp_path: Path) -> None:
    """--set freeze_library=true on `insitu run`: the scripted team may build no tool."""
    env = {"INSITU_EMBEDDING": "hashing"}
    task = "What is the mean of 3, 5, 10 and 2?"
    frozen = insitu(
        "run",
        "--scripted",
        "--store",
        str(tmp_path / "a"),
        task,
        "--set",
        "freeze_library=true",
        env=env,
    )
    assert frozen.returncode == 1, frozen.stderr
    created = next(line for line in frozen.stdout.splitlines() if line.startswith("tools created"))
    assert created.split() == ["tools", "created", "-"]
    assert SCRIPTED_LABEL in frozen.stdout  # a scripted run says so
    free = insitu("run", "--scripted", "--store", str(tmp_path / "b"), task, env=env)
    assert free.returncode == 0, free.stderr
    assert "summarize_numbers" in free.stdout


def test_ctrl_c_during_a_run_exits_130_and_says_how_to_resume(tmp_path: Path) -> None:
    """A real SIGINT while the first model call hangs; the thread id was printed at the start."""
    with ScriptedOpenAIServer(
        ScriptedTeam().openai_responder(), api_key="k", latency_s=120
    ) as server:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "INSITU_"))}
        env = {**clean, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "k"}
        command = [
            sys.executable,
            "-m",
            "insitu",
            "run",
            "--store",
            str(tmp_path / "s"),
            "What is 2 + 2?",
        ]
        process = subprocess.Popen(
            command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert process.stderr is not None
        first = process.stderr.readline()  # printed before any model call
        assert first.startswith("thread id: task-"), first
        deadline = time.monotonic() + 60
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.requests, "the run never called the model"
        process.send_signal(signal.SIGINT)
        stdout, rest = process.communicate(timeout=120)
    thread_id = first.split()[2]
    assert process.returncode == 130, rest
    assert f"interrupted; resume with: insitu run --resume {thread_id}" in rest
    assert "Traceback" not in rest and stdout == ""


def test_a_second_ctrl_c_stops_evolve_at_once(tmp_path: Path) -> None:
    """The first SIGINT waits for running episodes (minutes here); the second exits at once."""
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        "".join(
            json.dumps({"id": f"t{i}", "question": f"Mean of {i} and 5?"}) + "\n" for i in range(4)
        )
    )
    with ScriptedOpenAIServer(
        ScriptedTeam().openai_responder(), api_key="k", latency_s=120
    ) as server:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "INSITU_"))}
        env = {**clean, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "k"}
        command = [sys.executable, "-m", "insitu", "evolve", str(tasks), "-b", "4"]
        command += ["--run-dir", str(tmp_path / "run"), "--store", str(tmp_path / "s")]
        command += ["--set", "preflight=false", "--set", "embedding=hashing"]
        process = subprocess.Popen(
            command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        deadline = time.monotonic() + 60
        while len(server.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(server.requests) >= 2, "the episodes never called the model"
        process.send_signal(signal.SIGINT)
        time.sleep(1)
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert time.monotonic() - started < 30  # not after the 120 s model replies
    assert "stopping: cancelling the running episodes, whose checkpoints are kept" in stderr
    assert "interrupted; run the same command to resume" in stderr
    assert "Traceback" not in stderr


def test_verbose_shows_each_model_request_and_tool_call_once(tmp_path: Path) -> None:
    """``-v`` adds per-call detail lines; it never prints a progress line twice."""
    team = ScriptedTeam()
    store = str(tmp_path / "store")
    task = "What is the mean of 3, 5, 10 and 2?"
    with ScriptedOpenAIServer(team.openai_responder(), api_key="k") as server:
        env = {
            "OPENAI_BASE_URL": server.base_url,
            "OPENAI_API_KEY": "k",
            "INSITU_EMBEDDING": "hashing",
        }
        quiet = insitu("--store", store, "run", task, env=env)
        loud = insitu("-v", "--store", store, "run", task, env=env)
    assert quiet.returncode == 0 and loud.returncode == 0, loud.stderr
    assert "↳" not in quiet.stderr
    detail = [line for line in loud.stderr.splitlines() if "↳" in line]
    models = [line for line in detail if " in / " in line and " out tokens · " in line]
    assert models and any(line.split("↳")[1].strip().startswith("executor · ") for line in models)
    tools = [line for line in detail if "summarize_numbers@v1 · ok · " in line]
    assert tools and all(" ms in the sandbox (" in line for line in tools)
    progress = [line for line in loud.stderr.splitlines() if "·" in line and "↳" not in line]
    assert len(progress) == len(set(progress)), "a progress line was printed twice"
