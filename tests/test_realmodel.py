"""Opt-in: one episode and ``insitu doctor`` against a real OpenAI-compatible endpoint.

Runs only when ``INSITU_TEST_BASE_URL`` is set (docs/models.md shows how to
serve a tiny model with llama.cpp's server for it). It checks robustness, not
quality: a weak model may well fail the task, but the episode must end within
its bound, as completed or incomplete (or with a one-line endpoint error),
say why when incomplete, count its tokens, and bound every request.

Variables: ``INSITU_TEST_BASE_URL`` (e.g. ``http://127.0.0.1:8080/v1``),
``INSITU_TEST_MODEL`` (default: any name, which llama.cpp accepts),
``INSITU_TEST_API_KEY`` (default ``not-needed``), ``INSITU_TEST_EPISODE_BOUND_S``
(default 1200: a 270M model on one thread is slow).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from insitu.api import EpisodeResult, run_task
from insitu.cli import main
from insitu.context import ROLES, InsituContext
from insitu.llm import ModelEndpointError

BASE_URL = os.environ.get("INSITU_TEST_BASE_URL", "")
MODEL = os.environ.get("INSITU_TEST_MODEL", "insitu-test-model")
API_KEY = os.environ.get("INSITU_TEST_API_KEY", "not-needed")
EPISODE_BOUND_S = float(os.environ.get("INSITU_TEST_EPISODE_BOUND_S", "1200"))
TASK = "What is the mean of 3, 5, 10 and 2?"

#: Settings that keep one episode against a slow local model short and bounded.
EPISODE_SETTINGS: dict[str, Any] = {
    "openai_base_url": BASE_URL or None,
    "request_timeout_s": 90.0,
    "max_retries": 1,
    "retry_budget_s": 180.0,
    "tool_calling": "auto",
    "max_rounds": 2,
    "max_react_steps": 4,
    "max_build_attempts": 1,
    "max_reasks": 1,
    "max_new_tools_per_round": 1,
    "manager_max_output_tokens": 256,
    "tool_developer_max_output_tokens": 768,
    "executor_max_output_tokens": 256,
    "integrator_max_output_tokens": 256,
    "reflection_max_output_tokens": 256,
    "absorber_max_output_tokens": 256,
    # The machine may be offline: a tool naming a dependency is refused, not installed.
    "install_dependencies": False,
    "embedding": "hashing",
}

pytestmark = [
    pytest.mark.realmodel,
    pytest.mark.skipif(
        not BASE_URL,
        reason="opt-in: set INSITU_TEST_BASE_URL to an OpenAI-compatible endpoint "
        "(docs/models.md: running the real-model test)",
    ),
]


@dataclass
class SentRequest:
    """One chat completion request as it left the client, and how long it took."""

    body: dict[str, Any]
    seconds: float


@pytest.fixture
def endpoint_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """The endpoint under test as every role's model; no other settings from the environment."""
    for name in list(os.environ):
        if name.startswith(("INSITU_", "OPENAI_")) and not name.startswith("INSITU_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_BASE_URL", BASE_URL)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("INSITU_MODEL", MODEL)
    return monkeypatch


@pytest.fixture
def sent_requests(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[SentRequest]]:
    """Every chat completion request the OpenAI client sends, observed at its HTTP client.

    The SDK's HTTP client class (``httpx`` or, from openai 3, ``httpx2``) is
    found from its public ``DefaultHttpxClient``; a failed request is recorded too.
    """
    import openai

    client_class = next(k for k in openai.DefaultHttpxClient.__mro__ if "send" in vars(k))
    original = client_class.send
    sent: list[SentRequest] = []
    lock = threading.Lock()

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return original(self, request, **kwargs)
        finally:
            if request.url.path.endswith("/chat/completions"):
                record = SentRequest(json.loads(request.content), time.monotonic() - started)
                with lock:
                    sent.append(record)

    monkeypatch.setattr(client_class, "send", send)
    yield sent


@pytest.mark.timeout(EPISODE_BOUND_S + 120)
def test_an_episode_against_the_endpoint_ends_bounded_and_explained(
    endpoint_env: pytest.MonkeyPatch, sent_requests: list[SentRequest], tmp_path: Path
) -> None:
    context = InsituContext(store_dir=str(tmp_path / "store"), **EPISODE_SETTINGS)
    events: list[dict[str, Any]] = []

    started = time.monotonic()
    result: EpisodeResult | None
    try:
        result = run_task(TASK, context=context, on_event=events.append, checkpoint=False)
        assert result.status in ("completed", "incomplete"), result.status
    except ModelEndpointError as exc:
        assert "\n" not in exc.one_line()
        assert MODEL in exc.one_line(), exc.one_line()
        result = exc.result  # None when the preflight refused to start
        assert result is None or result.status == "failed"
    elapsed = time.monotonic() - started

    assert elapsed < EPISODE_BOUND_S, f"the episode took {elapsed:.0f} s"
    if result is not None:
        if result.status == "incomplete":
            reason = result.answer.removeprefix("Could not complete the task:")
            assert reason != result.answer and reason.strip(), result.answer
        if result.status == "completed":
            assert result.answer.strip()
        calls = sum(counts.get("calls", 0) for counts in result.usage.values())
        tokens = sum(counts.get("total_tokens", 0) for counts in result.usage.values())
        assert calls > 0, result.usage
        assert tokens > 0, f"the endpoint reported no token usage: {result.usage}"
    # Every request, the preflight's and the probe's included, asked for a bounded reply
    # and came back within its timeout.
    assert sent_requests
    most_tokens = max(context.max_output_tokens_for(role) for role in ROLES)
    for request in sent_requests:
        limit = request.body.get("max_tokens") or request.body.get("max_completion_tokens")
        assert limit is not None and limit <= most_tokens, request.body
        assert request.seconds <= context.request_timeout_s + 5, request.seconds


@pytest.mark.timeout(600)
def test_doctor_against_the_endpoint_reports_without_a_traceback(
    endpoint_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    endpoint_env.setenv("INSITU_REQUEST_TIMEOUT_S", "60")

    started = time.monotonic()
    result = CliRunner().invoke(main, ["doctor", "--json", "--store", str(tmp_path / "store")])
    elapsed = time.monotonic() - started

    assert result.exit_code in (0, 3), result.output
    assert "Traceback" not in result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert all(row["status"] in ("ok", "warn", "FAIL") for row in rows.values())
    assert all("\n" not in row["detail"] for row in rows.values())
    # Five model checks, the sandbox and the store, each capped at 15 s plus its grace.
    assert elapsed < 7 * 20 + 30
    assert rows[f"endpoint ({MODEL})"]["status"] == "ok", rows
    assert rows[f"completion ({MODEL})"]["status"] == "ok", rows
    tool_calling = rows[f"tool calling ({MODEL})"]
    assert tool_calling["status"] in ("ok", "warn")
    assert "native" in tool_calling["detail"]
    assert rows["store"]["status"] == "ok"
