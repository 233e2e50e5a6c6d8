"""One full episode through the real ``ChatOpenAI`` client and a loopback OpenAI server.

The server replies from the scripted team (a test double); the client, its
HTTP calls, tool-call encoding and usage accounting are the real ones.
"""

from __future__ import annotations

import pytest

from insitu.api import run_task
from insitu.services import ConfigurationError
from insitu.testing import ScriptedOpenAIServer
from insitu.testing.team import ScriptedTeam


def test_episode_over_the_openai_protocol(run_episode, store, monkeypatch) -> None:
    team = ScriptedTeam(first_build_broken=True)
    with ScriptedOpenAIServer(team.openai_responder(), api_key="sk-test") as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        # No models injected: every role gets ChatOpenAI from the settings.
        result, events = run_episode(
            "How many days from 2024-01-01 to 2024-03-01?",
            None,
            openai_base_url=server.base_url,
            manager_model="manager-model",
            executor_model="executor-model",
        )
        requests = server.requests
    assert result.status == "completed"
    assert result.answer == "60 days"
    assert result.tools_created == ["compute_date_difference"]
    assert store.get("compute_date_difference").version == 1
    # Per-role model names reached the endpoint.
    models = {r["model"] for r in requests}
    assert {"manager-model", "executor-model"} <= models
    # A preflight request (1 token) per distinct model, then a tool-calling probe.
    assert [r.get("max_tokens") for r in requests[:2]] == [1, 1]
    probe = next(r for r in requests if r.get("tools") and len(r["tools"]) == 1)
    assert probe["tools"][0]["function"]["name"] == "record_number"
    # The executor's requests carried the bound tool and the report tools as functions,
    # with tool_choice sent explicitly and the role's instructions as a system message.
    executor = [r for r in requests if r["model"] == "executor-model" and r.get("tools")]
    executor = [r for r in executor if r is not probe]
    names = {t["function"]["name"] for t in executor[0]["tools"]}
    assert names == {"compute_date_difference", "report_missing_capability", "report_broken_tool"}
    assert executor[0]["tool_choice"] == "auto"
    assert executor[0]["messages"][0]["role"] == "system"
    assert executor[0]["messages"][0]["content"].startswith("You are the Executor")
    # Every request is bounded: max_tokens (read by local servers) and max_completion_tokens.
    for request in requests:
        assert request["max_tokens"] == request["max_completion_tokens"] > 0
    assert {r["max_tokens"] for r in requests if r["model"] == "executor-model"} >= {1024}
    # Token usage came from the server's usage fields, per role.
    assert result.usage["manager"]["calls"] == 1
    assert result.usage["tool_developer"]["calls"] == 2
    assert result.usage["executor"]["input_tokens"] > 0
    assert any(e["event"] == "rejected" for e in events)


def test_no_endpoint_fails_at_once_with_what_to_set(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        run_task("What is 2 + 2?", store_dir=tmp_path)
    assert not (tmp_path / "checkpoints.sqlite").exists()
