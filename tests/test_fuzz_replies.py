"""Fuzzed model replies: every role answered with malformed replies, no episode breaks.

A scripted model (a test double) answers every call of every role with a reply
from :mod:`insitu.testing.fuzz`: broken, empty or deeply nested JSON, wrong
types, absurd tool names, code that does not parse, tools that loop forever,
import missing packages or ask for the LLM's key, tool calls to unknown tools
or with arguments that are not JSON, chat-template junk, give-ups, truncated
replies. Whatever comes back, an episode must end with an honest status and an
answer that says why, never with an exception or an internal error.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from insitu.api import run_task
from insitu.sandbox import Sandbox, SandboxSettings, ToolEnvironment
from insitu.testing import ScriptedChatModel, ScriptedOpenAIServer
from insitu.testing.fuzz import CATEGORIES, labelled_malformed_replies
from insitu.testing.team import prompt_text
from insitu.tool_store import ToolStore

#: Replies served in all (the issue asks for at least 1,000 across the roles).
REPLIES = 1000
TASKS = (
    "What is the mean of 3, 5, 10 and 2?",
    "How many days from 2024-01-01 to 2024-03-01?",
    "Parse the file data.csv and give the largest value in column b.",
    "Convert 12 miles to kilometres.",
)
ROLE_MARKERS = (
    ("You are the Manager", "manager"),
    ("You are the ToolDeveloper", "tool_developer"),
    ("You are the Executor", "executor"),
    ("You are the Integrator", "integrator"),
    ("You are reviewing", "reflection"),
)


class FuzzedTeam:
    """Serves malformed replies in order and counts them per role and category."""

    def __init__(self, seed: int) -> None:
        self._replies = labelled_malformed_replies(seed)
        self._lock = threading.Lock()
        self.served = 0
        self.roles: Counter[str] = Counter()
        self.categories: Counter[str] = Counter()

    def respond(self, messages: list[Any], tools: list[dict[str, Any]]) -> Any:
        prompt = prompt_text(messages)
        role = next((r for marker, r in ROLE_MARKERS if prompt.startswith(marker)), "other")
        with self._lock:
            category, reply = next(self._replies)
            self.served += 1
            self.roles[role] += 1
            self.categories[category] += 1
        return reply


@pytest.fixture(scope="module")
def fast_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A sandbox with a short call limit (tools that loop forever) and no installer."""
    toolenv = ToolEnvironment(tmp_path_factory.mktemp("toolenv"), installer_enabled=False)
    sandbox = Sandbox(SandboxSettings(timeout_s=1.0), toolenv=toolenv)
    yield sandbox
    sandbox.close()


def _settings(store: ToolStore, **extra: Any) -> dict[str, Any]:
    return {
        "store_dir": str(store.path),
        "tool_timeout_s": 1.0,
        "install_dependencies": False,
        "max_react_steps": 4,
        "max_build_attempts": 2,
        "max_rounds": 2,
        **extra,
    }


def _check(result: Any) -> None:
    """An honest ending: never failed, and an incomplete answer says why."""
    assert result.status in ("completed", "incomplete"), result
    assert result.failure is None
    if result.status == "incomplete":
        assert result.answer.startswith("Could not complete the task: "), result.answer
        assert len(result.answer) > len("Could not complete the task: ") + 5


def test_a_thousand_malformed_replies_never_break_an_episode(
    store: ToolStore, fast_sandbox: Sandbox, tmp_path: Path
) -> None:
    team = FuzzedTeam(seed=2026)
    model = ScriptedChatModel(responder=team.respond)
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n3,9\n")
    statuses: Counter[str] = Counter()
    for number in itertools.count():
        if team.served >= REPLIES:
            break
        task = TASKS[number % len(TASKS)]
        result = run_task(
            f"{task} (case {number})",
            files=[data] if "data.csv" in task else [],
            models=model,
            tool_store=store,
            sandbox=fast_sandbox,
            context=_settings(store),
            checkpoint=False,
        )
        _check(result)
        statuses[result.status] += 1
    assert team.served >= REPLIES
    assert set(team.categories) == set(CATEGORIES)
    assert {"manager", "executor", "integrator", "reflection"} <= set(team.roles)
    # Junk is not an answer: nearly every episode ends incomplete. A "completed" one
    # needs the Executor's final reply to read as an answer in words, which the
    # generator produces only by accident (prose around JSON, after a plan that
    # bound no tool), so it stays rare.
    assert statuses["incomplete"] >= 0.9 * sum(statuses.values()), statuses
    # Nothing that was admitted can be a tool that loops, reads the key or does not parse.
    for record in store.list(status="all"):
        assert "OPENAI_API_KEY" not in record.secrets


def test_malformed_replies_over_http_end_cleanly(
    store: ToolStore, fast_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, through the real OpenAI client and a loopback server (wire-level junk)."""
    team = FuzzedTeam(seed=99)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with ScriptedOpenAIServer(
        lambda body: team.respond(_messages(body), body.get("tools") or []), api_key="sk-test"
    ) as server:
        rng = random.Random(5)
        for number in range(12):
            result = run_task(
                f"{rng.choice(TASKS)} (wire case {number})",
                tool_store=store,
                sandbox=fast_sandbox,
                context=_settings(
                    store,
                    openai_base_url=server.base_url,
                    tool_calling="native",
                    preflight=False,
                    max_retries=0,
                ),
                checkpoint=False,
            )
            _check(result)
    assert team.served >= 60


def _messages(body: dict[str, Any]) -> list[Any]:
    from langchain_core.messages import convert_to_messages

    return convert_to_messages(body["messages"])
