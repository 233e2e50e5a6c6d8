"""``insitu doctor``: each check's rows against a scripted endpoint, a dead one, and stores."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from insitu import doctor
from insitu.cli import main
from insitu.context import InsituContext
from insitu.doctor import FAIL, OK, WARN, Check
from insitu.sandbox import probe_backend
from insitu.testing.openai_server import HTTPError, ScriptedOpenAIServer
from insitu.testing.team import ScriptedTeam
from insitu.tool_store import ToolStore

API_KEY = "test-key"
MODEL = "scripted"


def answering_json_checks(responder: Callable[[dict[str, Any]], Any]) -> Callable[..., Any]:
    """The team's responder, plus an answer to the doctor's JSON check.

    The scripted team answers every role and the tool-calling probe, but not a
    prompt it does not know; a real model is asked for exactly this object.
    """

    def respond(body: dict[str, Any]) -> Any:
        messages = body.get("messages") or [{}]
        if str(messages[0].get("content", "")).startswith(doctor.JSON_CHECK_SYSTEM):
            return '{"status": "ok", "number": 7}'
        return responder(body)

    return respond


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No settings from the developer's environment or a config file in the working directory."""
    for name in list(os.environ):
        if name.startswith(("INSITU_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("INSITU_MODEL", MODEL)
    monkeypatch.setenv("INSITU_REQUEST_TIMEOUT_S", "5")
    monkeypatch.setenv("INSITU_STORE_DIR", str(tmp_path / "store"))
    return monkeypatch


def serve(monkeypatch: pytest.MonkeyPatch, server: ScriptedOpenAIServer) -> ScriptedOpenAIServer:
    """Point the settings at a running server."""
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    return server


@pytest.fixture
def team_server(clean_env: pytest.MonkeyPatch) -> Iterator[ScriptedOpenAIServer]:
    """The scripted team behind the OpenAI protocol, configured as every role's endpoint."""
    responder = answering_json_checks(ScriptedTeam().openai_responder())
    with ScriptedOpenAIServer(responder, api_key=API_KEY, models=[MODEL]) as server:
        yield serve(clean_env, server)


def closed_port_url() -> str:
    """A loopback base URL nothing listens on (a server's port, after it stopped)."""
    with ScriptedOpenAIServer(["unused"]) as server:
        url = server.base_url
    return url


def by_kind(checks: list[Check]) -> dict[str, Check]:
    """Rows keyed by what they check (``completion``, not ``completion (scripted)``)."""
    return {check.name.split(" (")[0]: check for check in checks}


def test_every_check_passes_against_the_scripted_team(team_server: ScriptedOpenAIServer) -> None:
    started = time.monotonic()
    checks = doctor.run_checks(InsituContext(), sandbox=False)

    assert time.monotonic() - started < 10
    rows = by_kind(checks)
    assert list(rows) == [
        "endpoint",
        "model listed",
        "completion",
        "tool calling",
        "JSON replies",
        "store",
    ]
    assert all(check.status == OK for check in checks), checks
    assert "every role" in rows["endpoint"].detail
    assert "native tool calls" in rows["tool calling"].detail
    assert "not created yet" in rows["store"].detail
    # One distinct model: one probe each, and every request bounded in its output.
    limits = team_server.requested_max_tokens
    assert limits == [1, doctor.TOOL_CHECK_MAX_TOKENS, doctor.JSON_CHECK_MAX_TOKENS]


def test_each_distinct_model_is_checked_once(team_server: ScriptedOpenAIServer) -> None:
    context = InsituContext(executor_model="other-model")

    uses = doctor.distinct_models(context)
    checks = doctor.run_checks(context, sandbox=False, store=False)

    assert [(u.setting, u.roles) for u in uses] == [
        (MODEL, ("manager", "tool_developer", "integrator", "reflection", "absorber")),
        ("other-model", ("executor",)),
    ]
    names = [check.name for check in checks]
    assert names.count(f"completion ({MODEL})") == 1
    assert names.count("completion (other-model)") == 1
    # The server lists only "scripted" but answers any name: a warning, not a failure.
    listed = next(c for c in checks if c.name == "model listed (other-model)")
    assert listed.status == WARN
    assert "not listed" in listed.detail
    assert not doctor.has_failures(checks)


def test_a_server_that_ignores_tools_is_reported_as_not_native(
    clean_env: pytest.MonkeyPatch,
) -> None:
    responder = answering_json_checks(ScriptedTeam().openai_responder())
    with ScriptedOpenAIServer(responder, api_key=API_KEY, models=[MODEL], ignore_tools=True) as s:
        serve(clean_env, s)
        auto = by_kind(doctor.run_checks(InsituContext(), sandbox=False, store=False))
        native = by_kind(
            doctor.run_checks(InsituContext(tool_calling="native"), sandbox=False, store=False)
        )
        text = by_kind(
            doctor.run_checks(InsituContext(tool_calling="text"), sandbox=False, store=False)
        )

    assert auto["tool calling"].status == WARN
    assert "no native tool call" in auto["tool calling"].detail
    assert "text protocol will be used" in auto["tool calling"].detail
    assert auto["JSON replies"].status == OK
    assert native["tool calling"].status == FAIL
    assert "tool_calling=auto" in native["tool calling"].detail
    assert text["tool calling"].status == OK
    assert "not probed" in text["tool calling"].detail


def test_a_dead_endpoint_fails_in_one_line_and_exits_3(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_BASE_URL", closed_port_url())

    started = time.monotonic()
    result = CliRunner().invoke(main, ["doctor", "--json"])

    assert time.monotonic() - started < 20
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    endpoint = rows[f"endpoint ({MODEL})"]
    assert endpoint["status"] == FAIL
    assert "\n" not in endpoint["detail"]
    assert "could not connect" in endpoint["detail"]
    assert "is running and reachable" in endpoint["detail"]
    # Nothing else is asked of a model whose endpoint is down.
    assert not [name for name in rows if name.startswith("completion")]
    assert rows["store"]["status"] == OK


def test_the_table_shows_each_check_and_its_result(team_server: ScriptedOpenAIServer) -> None:
    result = CliRunner().invoke(main, ["doctor"], terminal_width=200)

    assert result.exit_code == 0, result.output
    for text in ("insitu doctor", f"completion ({MODEL})", "tool calling", "store", "ok"):
        assert text in result.stdout
    assert "FAIL" not in result.stdout


def test_store_option_selects_the_store_checked(
    team_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    with ToolStore.open(tmp_path / "lib", embedding="hashing"):
        pass

    result = CliRunner().invoke(main, ["doctor", "--json", "--store", str(tmp_path / "lib")])

    assert result.exit_code == 0, result.output
    store = next(row for row in json.loads(result.stdout) if row["name"] == "store")
    assert store["status"] == OK
    assert "0 active tool(s)" in store["detail"]


def test_a_slow_endpoint_fails_within_the_timeout(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("INSITU_REQUEST_TIMEOUT_S", "0.5")
    with ScriptedOpenAIServer(["never sent"], api_key=API_KEY, latency_s=5) as server:
        serve(clean_env, server)
        started = time.monotonic()
        rows = by_kind(doctor.run_checks(InsituContext(), sandbox=False, store=False))
        elapsed = time.monotonic() - started

    assert elapsed < 4
    assert rows["endpoint"].status == OK  # /models answers at once; completions are slow
    assert rows["completion"].status == FAIL
    assert "timed out" in rows["completion"].detail
    assert "tool calling" not in rows


def test_an_unknown_model_fails_the_completion(clean_env: pytest.MonkeyPatch) -> None:
    with ScriptedOpenAIServer(
        ["unused"], api_key=API_KEY, models=["another"], strict_models=True
    ) as server:
        serve(clean_env, server)
        rows = by_kind(doctor.run_checks(InsituContext(), sandbox=False, store=False))

    assert rows["model listed"].status == WARN
    assert rows["completion"].status == FAIL
    assert "HTTP 404" in rows["completion"].detail
    assert "\n" not in rows["completion"].detail


def test_a_refused_key_fails_the_endpoint(clean_env: pytest.MonkeyPatch) -> None:
    with ScriptedOpenAIServer([HTTPError(500, "unused")], api_key="another-key") as server:
        serve(clean_env, server)
        checks = doctor.run_checks(InsituContext(), sandbox=False, store=False)

    assert [c.status for c in checks] == [FAIL]
    assert "API key was refused" in checks[0].detail


def test_no_endpoint_configured_says_what_to_set(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.delenv("OPENAI_API_KEY")

    checks = doctor.run_checks(InsituContext(), sandbox=False, store=False)

    assert [c.status for c in checks] == [FAIL]
    assert "OPENAI_BASE_URL" in checks[0].detail


def test_a_provider_model_needs_its_package(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setattr(doctor, "module_installed", lambda name: False)

    checks = doctor.run_checks(
        InsituContext().with_model("anthropic:claude-test"), sandbox=False, store=False
    )

    assert [c.status for c in checks] == [FAIL]
    assert "pip install langchain-anthropic" in checks[0].detail


def test_a_missing_store_is_not_a_failure(tmp_path: Path) -> None:
    check = doctor.check_store(InsituContext(store_dir=str(tmp_path / "nothing-here")))

    assert check.status == OK
    assert "not created yet" in check.detail


def test_a_store_counts_its_tools(tmp_path: Path) -> None:
    with ToolStore.open(tmp_path / "lib", embedding="hashing"):
        pass

    check = doctor.check_store(InsituContext(store_dir=str(tmp_path / "lib")))

    assert check.status == OK
    assert "0 active tool(s), 0 archived" in check.detail
    assert "hashing" in check.detail


def test_a_damaged_store_fails_with_the_error_line(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "tools.db").write_bytes(b"this is not a database" * 100)

    check = doctor.check_store(InsituContext(store_dir=str(tmp_path / "lib")))

    assert check.status == FAIL
    assert "the tool records at" in check.detail and "are damaged" in check.detail
    assert "restore tools.db from a backup" in check.detail
    assert "\n" not in check.detail


def test_the_sandbox_row_matches_the_probed_backend() -> None:
    info = probe_backend()

    auto = doctor.check_sandbox(InsituContext(sandbox_backend="auto"))
    degraded = doctor.check_sandbox(InsituContext(sandbox_backend="degraded"))
    forced = doctor.check_sandbox(InsituContext(sandbox_backend="bwrap"))

    assert degraded.status == WARN
    assert "NOT isolated" in degraded.detail
    if info.bwrap_works:
        assert (auto.status, forced.status) == (OK, OK)
        assert "bwrap" in auto.detail
    else:
        assert (auto.status, forced.status) == (WARN, FAIL)
        assert "bubblewrap" in forced.detail


def test_a_hung_or_crashed_check_gives_a_fail_row() -> None:
    def hangs() -> list[Check]:
        time.sleep(5)
        return []

    def crashes() -> list[Check]:
        raise RuntimeError("broken\ncheck")

    started = time.monotonic()
    (late,) = doctor.bounded("slow", hangs, 0.2)
    (crashed,) = doctor.bounded("crash", crashes, 5)

    assert time.monotonic() - started < 2
    assert (late.name, late.status) == ("slow", FAIL)
    assert "no answer within" in late.detail
    assert (crashed.status, crashed.detail) == (FAIL, "RuntimeError: broken check")


def test_the_doctor_caps_timeouts_and_makes_no_retries() -> None:
    settings = doctor.doctor_settings(InsituContext(request_timeout_s=120.0, max_retries=4))

    assert settings.request_timeout_s == doctor.CHECK_TIMEOUT_CAP_S
    assert settings.max_retries == 0
    quick = doctor.doctor_settings(InsituContext(request_timeout_s=2.0))
    assert quick.request_timeout_s == 2.0
