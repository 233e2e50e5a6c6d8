"""Endpoints that fail or misbehave, met through the real OpenAI client.

A loopback server speaks the OpenAI protocol with the scripted team's replies
(a test double) and injects one fault at a time: junk, truncated replies, 429
with Retry-After, 500, 404 model, a reply slower than the timeout, a dropped
connection, ``tools`` ignored. For each, ``run_task``, ``insitu run``,
``evolve`` and absorbing end within a bound, without a traceback, with the
right status and exit code, and every request is bounded by ``max_tokens``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import convert_to_messages

from insitu.api import run_task
from insitu.evals.tasks import Task
from insitu.evolve import evolve, read_jsonl
from insitu.llm import ModelEndpointError
from insitu.testing import Drop, HTTPError, ScriptedOpenAIServer, Slow, Truncated
from insitu.testing.team import ScriptedTeam, prompt_text
from insitu.tool_store import ToolStore

MEAN_TASK = "What is the mean of 3, 5, 10 and 2?"
#: Bounds that make a dead endpoint cost seconds, not minutes.
FAST = {
    "request_timeout_s": 0.5,
    "max_retries": 2,
    "retry_budget_s": 3.0,
    "embedding": "hashing",
}


class FaultyTeam:
    """The scripted team's replies, with a fault from request ``after`` on (or for a role)."""

    def __init__(self, fault: Any = None, *, after: int = 0, role: str | None = None) -> None:
        self.team = ScriptedTeam()
        self.fault = fault
        self.after = after
        self.role = role
        self.seen = 0

    def __call__(self, body: dict[str, Any]) -> Any:
        messages = convert_to_messages(body["messages"])
        self.seen += 1
        hit = self.fault is not None and self.seen > self.after
        if hit and self.role is not None:
            hit = prompt_text(messages).startswith(self.role)
        if hit:
            return self.fault
        return self.team.respond(messages, body.get("tools") or [])


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., ScriptedOpenAIServer]]:
    """Start a faulty loopback endpoint and point the environment at it."""
    servers: list[ScriptedOpenAIServer] = []

    def start(responder: Any, **options: Any) -> ScriptedOpenAIServer:
        server = ScriptedOpenAIServer(responder, api_key="sk-test", **options).start()
        servers.append(server)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        return server

    yield start
    for server in servers:
        server.stop()


def _solve(store: ToolStore, sandbox: Any, server: ScriptedOpenAIServer, **extra: Any) -> Any:
    return run_task(
        MEAN_TASK,
        tool_store=store,
        sandbox=sandbox,
        context={"store_dir": str(store.path), "openai_base_url": server.base_url, **FAST, **extra},
        checkpoint=False,
    )


# --------------------------------------------------------------------- replies that are junk


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        ("<|im_start|>user", "empty"),
        ("I could not find a way to compute this.", "gives up"),
        ("[]", "no answer"),
        (Truncated("The mean is"), "cut off"),
    ],
)
def test_junk_from_the_executor_is_never_completed(endpoint, store, sandbox, fault, why) -> None:
    server = endpoint(FaultyTeam(fault, role="You are the Executor"))
    result = _solve(store, sandbox, server)
    assert result.status == "incomplete"
    assert result.answer.startswith("Could not complete the task: ")
    assert why in result.answer
    assert all(n for n in server.requested_max_tokens)


def test_truncated_manager_replies_are_re_asked_then_fail_clearly(endpoint, store, sandbox):
    server = endpoint(FaultyTeam(Truncated('{"bind": ["summ'), role="You are the Manager"))
    result = _solve(store, sandbox, server, max_reasks=1)
    assert result.status == "incomplete"
    assert "cut off at the output-token limit" in result.answer
    managers = [r for r in server.requests if "You are the Manager" in str(r["messages"][0])]
    assert len(managers) == 2  # the first ask and one shorter re-ask
    assert managers[0]["max_tokens"] == 1024


# --------------------------------------------------------------------- endpoint errors


@pytest.mark.parametrize(
    ("fault", "status", "transient"),
    [
        (HTTPError(500, "the server broke"), 500, True),
        (HTTPError.rate_limited(retry_after_s=1), 429, True),
        (Slow(5.0, "too late"), None, True),
        (Drop(), None, True),
        (HTTPError.model_not_found("gpt-4o-mini"), 404, False),
        (HTTPError(401, "bad key"), 401, False),
    ],
)
def test_endpoint_errors_end_the_episode_failed_with_the_cause(
    endpoint, store, sandbox, fault, status, transient
) -> None:
    server = endpoint(FaultyTeam(fault, after=1))  # the Manager's first call works
    started = time.monotonic()
    with pytest.raises(ModelEndpointError) as caught:
        _solve(store, sandbox, server, preflight=False, tool_calling="native")
    elapsed = time.monotonic() - started
    error = caught.value
    assert error.result.status == "failed"
    assert error.result.failure["kind"] == "endpoint"
    assert error.status == status
    assert server.base_url in error.one_line()
    assert "\n" not in error.one_line()
    assert error.result.usage["manager"]["calls"] >= 1  # tokens spent before are kept
    retries = len(server.requests) - 2  # the Manager's good call and the first failure
    assert (retries > 0) == transient
    assert elapsed < 15


def test_a_429_that_clears_is_waited_out_as_retry_after_asks(endpoint, store, sandbox) -> None:
    team = FaultyTeam()
    replies = iter([HTTPError.rate_limited(retry_after_s=1)])

    def responder(body: dict[str, Any]) -> Any:
        return next(replies, None) or team(body)

    server = endpoint(responder)
    started = time.monotonic()
    result = _solve(store, sandbox, server, preflight=False)
    assert result.status == "completed"
    assert time.monotonic() - started >= 1.0


def test_preflight_refuses_to_start_on_a_dead_endpoint(endpoint, store, sandbox) -> None:
    server = endpoint(FaultyTeam(HTTPError.model_not_found("gpt-4o-mini")))
    with pytest.raises(ModelEndpointError, match="404"):
        _solve(store, sandbox, server)
    assert len(server.requests) == 1  # one 1-token request, nothing else
    assert server.requests[0]["max_tokens"] == 1


def test_server_that_ignores_tools_gets_the_text_protocol(endpoint, store, sandbox) -> None:
    server = endpoint(FaultyTeam(), ignore_tools=True)
    result = _solve(store, sandbox, server)
    assert result.status == "completed"
    assert result.answer == "mean 5, median 4"
    assert result.tools_used == ["summarize_numbers@1"]
    # The probe asked with a tool; after it, the Executor's requests carry no tools.
    executor = [r for r in server.requests if "You are the Executor" in str(r["messages"][0])]
    assert executor and not any(r.get("tools") for r in executor)


# --------------------------------------------------------------------- the CLI


def _insitu(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "INSITU_"))}
    return subprocess.run(
        [sys.executable, "-m", "insitu", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=120,
    )


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (None, 0),
        ("<|im_end|>", 1),
        (HTTPError(503, "overloaded"), 3),
        (Drop(), 3),
        (HTTPError.model_not_found("gpt-4o-mini"), 3),
    ],
)
def test_insitu_run_exit_codes(fault, code, tmp_path: Path) -> None:
    role = "You are the Executor" if isinstance(fault, str) else None
    with ScriptedOpenAIServer(FaultyTeam(fault, role=role), api_key="k") as server:
        base_url = server.base_url
        env = {
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": "k",
            **{f"INSITU_{k.upper()}": str(v) for k, v in FAST.items()},
        }
        done = _insitu("--store", str(tmp_path / "s"), "run", MEAN_TASK, env=env)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    if code == 3:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and base_url in errors[0], done.stderr


# --------------------------------------------------------------------- evolve and absorbing


def _tasks(count: int) -> list[Task]:
    return [
        Task(id=f"t{i}", question=f"What is the mean of {i + 1}, {i + 3} and 2?")
        for i in range(count)
    ]


def test_an_outage_stops_evolve_and_the_resume_retries_its_tasks(endpoint, tmp_path) -> None:
    from insitu.evolve import EndpointOutageError

    team = FaultyTeam(Drop(), after=1)  # the preflight's request passes, then the outage
    server = endpoint(team)
    base_url = server.base_url
    context = {"store_dir": str(tmp_path / "store"), **FAST, "max_consecutive_endpoint_failures": 2}
    run_dir = tmp_path / "run"
    started = time.monotonic()
    with pytest.raises(EndpointOutageError, match="resume"):
        evolve(_tasks(6), run_dir=run_dir, batch_size=2, context=context)
    assert time.monotonic() - started < 30
    rows = read_jsonl(run_dir / "predictions.jsonl")
    assert [r["id"] for r in rows] == ["t0", "t1"]  # stopped after the first batch
    assert all(r["status"] == "failed" for r in rows)
    assert all(r["error_kind"] == "endpoint" and base_url in r["error"] for r in rows)
    team.fault = None  # the endpoint is back: the same call resumes and retries those tasks
    summary = evolve(_tasks(6), run_dir=run_dir, batch_size=2, context=context)
    assert summary.tasks == 6 and summary.completed == 6 and summary.failed == 0


def test_an_endpoint_failure_while_absorbing_commits_the_batch_unmerged(endpoint, tmp_path):
    team = FaultyTeam(HTTPError(500, "aggregator down"), role="You are the Aggregator")
    endpoint(team)
    context = {"store_dir": str(tmp_path / "store"), **FAST, "absorb_threshold": 0.0}
    tasks = [
        Task(id="a", question=MEAN_TASK),
        Task(id="b", question="How many days from 2024-01-01 to 2024-03-01?"),
        Task(id="c", question="Compute the average of 12, 7 and 20"),
    ]
    summary = evolve(tasks, run_dir=tmp_path / "run", batch_size=3, context=context)
    assert summary.failed == 0
    step = read_jsonl(tmp_path / "run" / "steps.jsonl")[0]
    assert "aggregator down" in (step["absorb"].get("endpoint_error") or "")
    assert step["commit"]["applied"]
    assert summary.library_size >= 2
