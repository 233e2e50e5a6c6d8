"""Settings from every source: the environment, a config file, ``--set``, and their precedence.

The parsing and layering are tested directly (``InsituContext``,
``load_settings``); the CLI through click's ``CliRunner`` (``insitu settings``,
``--set``/``--config``/``--store`` on groups and subcommands, Ctrl-C, model
endpoint errors), with the slow work replaced by functions that record their
arguments or raise.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import click
import pytest
from click.testing import CliRunner, Result

from insitu.cli import main
from insitu.cli.common import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_RUNTIME
from insitu.context import (
    SETTING_NAMES,
    InsituContext,
    SettingError,
    default_value,
    describe_settings,
    env_name,
)
from insitu.settings_sources import CONFIG_FILE, Override, load_settings, parse_assignment
from insitu.tool_store import ToolStore
from insitu.tool_store.testing import catalogue_specs


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No INSITU_*/OPENAI_* variables and no insitu.toml but the test's own."""
    for name in list(os.environ):
        if name.startswith(("INSITU_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_config(text: str, path: Path | None = None) -> Path:
    path = path or Path(CONFIG_FILE)
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ environment


@pytest.mark.parametrize(
    ("variable", "text", "name", "expected"),
    [
        ("INSITU_MAX_ROUNDS", "5", "max_rounds", 5),
        ("INSITU_MAX_ROUNDS", " 7 ", "max_rounds", 7),
        ("INSITU_REQUEST_TIMEOUT_S", "30", "request_timeout_s", 30.0),
        ("INSITU_TEMPERATURE", "0.25", "temperature", 0.25),
        ("INSITU_FREEZE_LIBRARY", "true", "freeze_library", True),
        ("INSITU_FREEZE_LIBRARY", "YES", "freeze_library", True),
        ("INSITU_FREEZE_LIBRARY", "1", "freeze_library", True),
        ("INSITU_PREFLIGHT", "false", "preflight", False),
        ("INSITU_PREFLIGHT", "no", "preflight", False),
        ("INSITU_PREFLIGHT", "0", "preflight", False),
        ("INSITU_MANAGER_MODEL", "qwen2.5-coder", "manager_model", "qwen2.5-coder"),
        ("INSITU_TOOL_CALLING", "text", "tool_calling", "text"),
        ("INSITU_COMMIT_MODE", "defer", "commit_mode", "defer"),
        ("INSITU_DENIED_PACKAGES", "requests,numpy", "denied_packages", ["requests", "numpy"]),
        ("INSITU_DENIED_PACKAGES", " requests , ", "denied_packages", ["requests"]),
        ("INSITU_DENIED_PACKAGES", "", "denied_packages", []),
        ("INSITU_ALLOWED_PACKAGES", "pandas", "allowed_packages", ["pandas"]),
        ("INSITU_ALLOWED_PACKAGES", "", "allowed_packages", None),
        ("INSITU_ALLOWED_PACKAGES", "none", "allowed_packages", None),
        ("INSITU_ABSORB_THRESHOLD", "0.8", "absorb_threshold", 0.8),
        ("INSITU_ABSORB_THRESHOLD", "None", "absorb_threshold", None),
        ("INSITU_CHROMA_URL", "http://host:8001", "chroma_url", "http://host:8001"),
        ("INSITU_EMBEDDING", "hashing", "embedding", "hashing"),
        ("INSITU_SANDBOX_BACKEND", "degraded", "sandbox_backend", "degraded"),
        ("INSITU_STORE_DIR", "/data/lib", "store_dir", "/data/lib"),
        ("INSITU_STORE", "/data/old", "store_dir", "/data/old"),
        (
            "OPENAI_BASE_URL",
            "http://localhost:11434/v1",
            "openai_base_url",
            "http://localhost:11434/v1",
        ),
    ],
)
def test_every_type_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, variable: str, text: str, name: str, expected: Any
) -> None:
    monkeypatch.setenv(variable, text)
    value = getattr(InsituContext(), name)
    assert value == expected and type(value) is type(expected)


def test_every_setting_has_its_insitu_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set every field from INSITU_<NAME> with a value other than its default."""
    import typing

    samples = {bool: "false", int: "7", float: "0.5", str: "x", list: "a,b"}
    hints = typing.get_type_hints(InsituContext)
    for name in SETTING_NAMES:
        default = default_value(name)
        choices = typing.get_args(hints[name]) if typing.get_origin(hints[name]) is Literal else ()
        if choices:  # a choice: any other than the default
            text = next(c for c in choices if c != default)
        elif default is None:
            numeric = name in ("absorb_threshold", "prune_min_utility")
            text = "0.5" if numeric else "a,b" if "packages" in name else "u"
        elif isinstance(default, bool):
            text = "false" if default else "true"
        else:
            text = samples[type(default)]
            if text == str(default):  # the sample is this setting's default: another one
                text = "0.25"
        monkeypatch.setenv(env_name(name), text)
    context = InsituContext()
    unchanged = [name for name in SETTING_NAMES if getattr(context, name) == default_value(name)]
    assert not unchanged, unchanged


def test_empty_variable_counts_as_unset_where_nothing_is_not_a_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INSITU_MAX_ROUNDS", "")
    monkeypatch.setenv("INSITU_STORE_DIR", "")
    monkeypatch.setenv("INSITU_STORE", "/old")
    context = InsituContext()
    assert context.max_rounds == 3
    assert context.store_dir == "/old"


def test_aliases_and_the_every_role_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSITU_MODEL", "every")
    monkeypatch.setenv("INSITU_EXECUTOR_MODEL", "mine")
    monkeypatch.setenv("INSITU_STORE", "/old")
    monkeypatch.setenv("INSITU_STORE_DIR", "/new")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://old")
    monkeypatch.setenv("INSITU_OPENAI_BASE_URL", "http://new")
    context = InsituContext()
    assert context.executor_model == "mine"
    assert {context.model_for(r) for r in ("manager", "tool_developer", "absorber")} == {"every"}
    assert context.store_dir == "/new"  # INSITU_<FIELD> wins over its alias
    assert context.openai_base_url == "http://new"


def test_explicit_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSITU_MAX_ROUNDS", "5")
    monkeypatch.setenv("INSITU_MODEL", "every")
    context = InsituContext(max_rounds=2, manager_model="boss")
    assert (context.max_rounds, context.manager_model, context.executor_model) == (
        2,
        "boss",
        "every",
    )
    monkeypatch.setenv("INSITU_MAX_ROUNDS", "9")
    assert replace(context, retrieval_k=4).max_rounds == 2  # a copy never re-reads the environment


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        ("INSITU_MAX_ROUNDS", "abc", "INSITU_MAX_ROUNDS='abc': expected an integer"),
        ("INSITU_MAX_ROUNDS", "2.5", "INSITU_MAX_ROUNDS='2.5': expected an integer"),
        ("INSITU_MAX_ROUNDS", "0", "INSITU_MAX_ROUNDS='0': must be at least 1"),
        ("INSITU_MAX_RETRIES", "-1", "INSITU_MAX_RETRIES='-1': must be at least 0"),
        ("INSITU_REQUEST_TIMEOUT_S", "0", "INSITU_REQUEST_TIMEOUT_S='0': must be more than 0"),
        ("INSITU_REQUEST_TIMEOUT_S", "soon", "INSITU_REQUEST_TIMEOUT_S='soon': expected a number"),
        ("INSITU_TOOL_TIMEOUT_S", "nan", "INSITU_TOOL_TIMEOUT_S='nan': expected a number"),
        ("INSITU_FREEZE_LIBRARY", "maybe", "INSITU_FREEZE_LIBRARY='maybe': expected true or false"),
        ("INSITU_TOOL_CALLING", "json", "INSITU_TOOL_CALLING='json': expected one of 'auto', "),
        ("INSITU_ABSORB_THRESHOLD", "2", "INSITU_ABSORB_THRESHOLD='2': must be at most 1.0"),
        ("INSITU_ABSORB_THRESHOLD", "high", "expected a number or none"),
        ("INSITU_BATCH_CONCURRENCY", "0", "INSITU_BATCH_CONCURRENCY='0': must be at least 1"),
        ("INSITU_MODEL", " ", None),  # empty: unset, not an error
    ],
)
def test_bad_environment_values_fail_in_one_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, text: str, message: str | None
) -> None:
    monkeypatch.setenv(variable, text)
    if message is None:
        assert InsituContext().manager_model == default_value("manager_model")
        return
    with pytest.raises(SettingError) as caught:
        InsituContext()
    assert str(caught.value).startswith(message) or message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_bad_variable_of_a_given_setting_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSITU_MAX_ROUNDS", "abc")
    assert InsituContext(max_rounds=4).max_rounds == 4


# ------------------------------------------------------------- python and dicts


def test_python_values_are_checked_too() -> None:
    with pytest.raises(SettingError, match=r"^max_rounds=0: must be at least 1$"):
        InsituContext(max_rounds=0)
    with pytest.raises(SettingError, match=r"^max_rounds=True: expected an integer$"):
        InsituContext(max_rounds=True)
    with pytest.raises(
        SettingError, match=r"^denied_packages=3: expected a comma-separated list of names$"
    ):
        InsituContext(denied_packages=3)  # type: ignore[arg-type]
    with pytest.raises(SettingError, match="tool_memory_mb=0: must be at least 1"):
        replace(InsituContext(), tool_memory_mb=0)
    with pytest.raises(SettingError, match=r"unknown setting\(s\) \['max_round'\]; known settings"):
        InsituContext(max_round=2)
    assert InsituContext(temperature=1).temperature == 1.0


def test_coerce_takes_a_dict_from_studio_or_json() -> None:
    context = InsituContext.coerce({"max_rounds": 2, "freeze_library": "true", "retrieval_k": "4"})
    assert (context.max_rounds, context.freeze_library, context.retrieval_k) == (2, True, 4)
    assert InsituContext.coerce(None) == InsituContext()
    assert InsituContext.coerce(context) is context
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['nope'\]; known settings: "):
        InsituContext.coerce({"nope": 1})


def test_described_defaults_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSITU_MAX_ROUNDS", "9")
    monkeypatch.setenv("INSITU_STORE", "/elsewhere")
    described = {name: default for name, default, _ in describe_settings()}
    assert described["max_rounds"] == "3" and described["store_dir"] == "'.insitu'"
    assert list(described) == list(SETTING_NAMES)


# ----------------------------------------------------------- file, env, --set


def test_precedence_set_over_environment_over_file_over_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_config(
        "max_rounds = 4\nretrieval_k = 5\nmax_repairs = 1\n"
        'denied_packages = ["requests"]\nallowed_packages = "none"\n'
    )
    monkeypatch.setenv("INSITU_RETRIEVAL_K", "6")
    monkeypatch.setenv("INSITU_MAX_REPAIRS", "0")
    loaded = load_settings(
        overrides=[Override("max_repairs", "2"), Override("store_dir", "/lib", "--store")]
    )
    context, sources = loaded.context, loaded.sources
    assert (context.max_rounds, sources["max_rounds"]) == (4, "insitu.toml")
    assert (context.retrieval_k, sources["retrieval_k"]) == (6, "env INSITU_RETRIEVAL_K")
    assert (context.max_repairs, sources["max_repairs"]) == (2, "--set")
    assert (context.store_dir, sources["store_dir"]) == ("/lib", "--store")
    assert context.denied_packages == ["requests"] and context.allowed_packages is None
    assert (context.max_reasks, sources["max_reasks"]) == (2, "default")


def test_the_last_override_wins() -> None:
    loaded = load_settings(overrides=[Override("max_rounds", "2"), Override("max_rounds", "5")])
    assert loaded.context.max_rounds == 5


def test_config_option_replaces_the_default_file(tmp_path: Path) -> None:
    write_config("max_rounds = 4\n")
    other = write_config("max_rounds = 6\n", tmp_path / "other.toml")
    loaded = load_settings(config=other)
    assert (loaded.context.max_rounds, loaded.sources["max_rounds"]) == (6, str(other))
    with pytest.raises(SettingError, match=r"config file .*missing\.toml does not exist"):
        load_settings(config=tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_round = 4\n", r"insitu.toml: unknown setting\(s\) \['max_round'\].*known settings: "),
        (
            "[insitu]\nmax_rounds = 4\n",
            r"unknown setting\(s\) \['insitu'\] \(settings are top-level",
        ),
        ("max_rounds = \n", r"insitu.toml is not valid TOML"),
        ("max_rounds = 'four'\n", r"insitu.toml: max_rounds='four': expected an integer"),
        ("max_rounds = 0\n", r"insitu.toml: max_rounds=0: must be at least 1"),
        ("preflight = 1\n", r"insitu.toml: preflight=1: expected true or false"),
        ("denied_packages = [1]\n", r"denied_packages=\[1\]: expected a comma-separated list"),
    ],
)
def test_bad_config_files_fail_in_one_line(text: str, message: str) -> None:
    write_config(text)
    with pytest.raises(SettingError, match=message) as caught:
        load_settings()
    assert "\n" not in str(caught.value)


def test_assignments() -> None:
    assert parse_assignment("max_rounds=5") == Override("max_rounds", "5", "--set")
    assert parse_assignment("allowed_packages=") == Override("allowed_packages", "", "--set")
    assert parse_assignment("openai_base_url=http://h/v1?a=b").text == "http://h/v1?a=b"
    with pytest.raises(SettingError, match="expected NAME=VALUE"):
        parse_assignment("max_rounds")
    with pytest.raises(SettingError, match="unknown setting 'rounds'"):
        parse_assignment("rounds=2")
    with pytest.raises(SettingError, match=r"^--set max_rounds='x': expected an integer$"):
        load_settings(overrides=[parse_assignment("max_rounds=x")])


# ------------------------------------------------------------------------ CLI


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def settings_json(*args: str) -> dict[str, Any]:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_every_command_and_group_takes_the_settings_options() -> None:
    def walk(command: click.Command, path: str) -> list[str]:
        names = {p.name for p in command.params}
        missing = [] if {"config", "assignments", "store"} <= names else [path]
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                missing += walk(sub, f"{path} {name}")
        return missing

    assert walk(main, "insitu") == []


def test_settings_command_shows_values_and_sources(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_config("max_rounds = 4\nretrieval_k = 5\n")
    monkeypatch.setenv("INSITU_RETRIEVAL_K", "6")
    monkeypatch.setenv("INSITU_MODEL", "every")
    report = settings_json("settings", "--json", "--set", "max_reasks=0", "--store", "lib")
    assert set(report) == set(SETTING_NAMES)
    assert report["max_rounds"] == {"value": 4, "source": "insitu.toml", "default": 3}
    assert report["retrieval_k"]["value"] == 6
    assert report["retrieval_k"]["source"] == "env INSITU_RETRIEVAL_K"
    assert report["manager_model"]["source"] == "env INSITU_MODEL"
    assert report["max_reasks"]["source"] == "--set" and report["max_reasks"]["value"] == 0
    assert report["store_dir"] == {"value": "lib", "source": "--store", "default": ".insitu"}
    assert report["allowed_packages"] == {"value": None, "source": "default", "default": None}

    table = CliRunner().invoke(main, ["settings"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    row = next(line for line in table.stdout.splitlines() if "│ retrieval_k " in line)
    assert [cell.strip() for cell in row.strip("│").split("│")][:3] == [
        "retrieval_k",
        "6",
        "env INSITU_RETRIEVAL_K",
    ]


def test_group_and_subcommand_options_add_up() -> None:
    report = settings_json(
        "--set",
        "max_rounds=2",
        "--set",
        "max_reasks=1",
        "settings",
        "--json",
        "--set",
        "max_rounds=5",
    )
    assert report["max_rounds"]["value"] == 5  # the subcommand's, given last
    assert report["max_reasks"]["value"] == 1  # the group's


def test_config_option_on_group_or_subcommand(tmp_path: Path) -> None:
    write_config("max_rounds = 4\n")
    other = write_config("max_rounds = 6\n", tmp_path / "other.toml")
    assert settings_json("settings", "--json")["max_rounds"]["value"] == 4
    for args in (
        ("--config", str(other), "settings", "--json"),
        ("settings", "--json", "--config", str(other)),
    ):
        report = settings_json(*args)
        assert report["max_rounds"] == {"value": 6, "source": str(other), "default": 3}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("settings", "--set", "max_rounds=abc"),
            "error: --set max_rounds='abc': expected an integer",
        ),
        (("--set", "rounds=2", "settings"), "error: --set 'rounds=2': unknown setting 'rounds'"),
        (
            ("tools", "list", "--set", "max_rounds"),
            "error: --set 'max_rounds': expected NAME=VALUE",
        ),
        (
            ("settings", "--config", "nowhere.toml"),
            "error: config file nowhere.toml does not exist",
        ),
    ],
)
def test_bad_settings_on_the_command_line_exit_2(args: tuple[str, ...], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == EXIT_CONFIG, result.output
    assert message in result.output and "Traceback" not in result.output


def test_bad_environment_exits_2_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSITU_MAX_ROUNDS", "abc")
    result = invoke("settings")
    assert result.exit_code == EXIT_CONFIG
    assert "error: INSITU_MAX_ROUNDS='abc': expected an integer" in result.output


def test_bad_config_file_exits_2(tmp_path: Path) -> None:
    write_config("bogus = 1\n")
    result = invoke("tools", "list", "--store", str(tmp_path))
    assert result.exit_code == EXIT_CONFIG
    assert "error: insitu.toml: unknown setting(s) ['bogus']" in result.output


@pytest.fixture
def library(tmp_path: Path) -> Path:
    path = tmp_path / "lib"
    with ToolStore.open(path, embedding="hashing") as store:
        for spec in catalogue_specs()[:2]:
            store.add(spec)
    return path


@pytest.mark.parametrize(
    "where",
    [
        ("--store", "{lib}", "tools", "list"),
        ("tools", "--store", "{lib}", "list"),
        ("tools", "list", "--store", "{lib}"),
        ("tools", "list", "--set", "store_dir={lib}"),
        ("--set", "store_dir={lib}", "tools", "list"),
    ],
)
def test_store_and_set_on_groups_and_subcommands(library: Path, where: tuple[str, ...]) -> None:
    result = invoke(*(arg.format(lib=library) for arg in where))
    assert result.exit_code == 0, result.output
    assert "2 active tool(s)" in result.output
    assert "compute_mean" in result.output


def test_store_on_the_subcommand_wins_over_the_group(library: Path, tmp_path: Path) -> None:
    result = invoke("--store", str(tmp_path / "nowhere"), "tools", "list", "--store", str(library))
    assert result.exit_code == 0, result.output
    result = invoke("--store", str(library), "tools", "list", "--store", str(tmp_path / "nowhere"))
    assert result.exit_code == EXIT_CONFIG and "no tool library at" in result.output


# ------------------------------------------------- run, evolve, eval niceties


def tasks_file(tmp_path: Path) -> Path:
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"id": "t1", "question": "What is 1 + 1?"}) + "\n")
    return path


def raiser(exc: BaseException) -> Any:
    def run(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return run


def test_ctrl_c_in_run_exits_130_after_printing_the_thread_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("insitu.api.run_task", raiser(KeyboardInterrupt()))
    result = invoke("run", "--scripted", "What is the mean of 3 and 5?")
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
    thread = next(line for line in result.stderr.splitlines() if line.startswith("thread id: "))
    thread_id = thread.split()[2]
    assert thread_id.startswith("task-")
    assert f"interrupted; resume with: insitu run --resume {thread_id}" in result.stderr


def test_the_thread_id_printed_at_the_start_is_the_run_s(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run_task(task: str | None, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr("insitu.api.run_task", fake_run_task)
    result = invoke("run", "--resume", "thread-42", "--scripted")
    assert "thread id: thread-42" in result.stderr
    assert seen["thread_id"] == "thread-42"


def test_ctrl_c_in_evolve_exits_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("insitu.evolve.evolve", raiser(KeyboardInterrupt()))
    before = signal.getsignal(signal.SIGINT)
    result = invoke("evolve", str(tasks_file(tmp_path)), "--run-dir", str(tmp_path / "r"))
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert "interrupted; run the same command to resume" in result.stderr
    assert "Traceback" not in result.output
    assert signal.getsignal(signal.SIGINT) is before  # the two-stage Ctrl-C handler is removed


def test_ctrl_c_in_eval_exits_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("insitu.evals.harness.run_comparison", raiser(KeyboardInterrupt()))
    result = invoke("eval", str(tasks_file(tmp_path)), "--run-dir", str(tmp_path / "r"))
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert "interrupted; run the same command to resume" in result.stderr


def endpoint_error() -> Exception:
    from insitu.llm import ModelEndpointError

    return ModelEndpointError(
        role="manager",
        model="m",
        url="http://localhost:9/v1",
        status=503,
        transient=True,
        reason="service unavailable",
        hint="check that the server is up",
    )


def test_model_endpoint_error_in_run_is_one_line_exit_3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("insitu.api.run_task", raiser(endpoint_error()))
    result = invoke("run", "--scripted", "What is 1 + 1?")
    assert result.exit_code == EXIT_RUNTIME, result.output
    error = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert error == f"error: {endpoint_error().one_line()}"
    assert "Traceback" not in result.output


def test_endpoint_outage_in_evolve_says_how_to_resume(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from insitu.evolve import EndpointOutageError

    outage = EndpointOutageError(
        {"role": "executor", "model": "m", "url": "http://h", "message": "connection refused"},
        3,
        tmp_path / "r",
    )
    for command, target in (
        ("evolve", "insitu.evolve.evolve"),
        ("eval", "insitu.evals.harness.run_comparison"),
    ):
        monkeypatch.setattr(target, raiser(outage))
        result = invoke(command, str(tasks_file(tmp_path)), "--run-dir", str(tmp_path / "r"))
        assert result.exit_code == EXIT_RUNTIME, result.output
        assert f"error: {outage.one_line()}" in " ".join(result.stderr.split())
        assert "Run the same command again to resume" in result.stderr
        assert "Traceback" not in result.output


def test_retry_failed_and_set_reach_evolve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(
        "insitu.evolve.evolve",
        lambda tasks, **kwargs: calls.append(kwargs) or raiser(SystemExit(0))(),
    )
    args = ["evolve", str(tasks_file(tmp_path)), "--run-dir", str(tmp_path / "r"), "--scripted"]
    invoke(*args, "--batch-size", "4")
    invoke(*args, "--retry-failed", "--set", "batch_concurrency=2", "--set", "max_rounds=7")
    invoke(*args, "--set", "batch_concurrency=2", "--concurrency", "3")
    assert [c["retry_failed"] for c in calls] == [False, True, False]
    assert [c["context"].batch_concurrency for c in calls] == [4, 2, 3]
    assert calls[1]["context"].max_rounds == 7


def test_retry_failed_reaches_the_comparison(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(
        "insitu.evals.harness.run_comparison",
        lambda tasks, **kwargs: calls.append(kwargs) or raiser(SystemExit(0))(),
    )
    args = ["eval", str(tasks_file(tmp_path)), "--run-dir", str(tmp_path / "r"), "--scripted"]
    invoke(*args)
    invoke(*args, "--retry-failed", "--set", "max_repairs=0")
    assert [c["retry_failed"] for c in calls] == [False, True]
    assert calls[1]["context"].max_repairs == 0


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("run", "What is 1 + 1?"), "add --scripted to `main run`"),
        (("evolve", "{tasks}", "--run-dir", "{run}"), "add --scripted to `main evolve`"),
        (("eval", "{tasks}", "--run-dir", "{run}"), "add --scripted to `main eval suite`"),
    ],
)
def test_no_endpoint_hint_names_the_command_s_scripted_flag(
    tmp_path: Path, args: tuple[str, ...], flag: str
) -> None:
    values = {"tasks": str(tasks_file(tmp_path)), "run": str(tmp_path / "r")}
    result = invoke(*(arg.format(**values) for arg in args), "--store", str(tmp_path / "s"))
    assert result.exit_code == EXIT_CONFIG, result.output
    assert "No model endpoint is configured" in result.output
    assert flag in result.output
    assert "run_task(..., models=" not in result.output  # the Python hint is for Python


def test_settings_never_print_a_url_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "postgresql://insitu:s3cret@127.0.0.1:5432/library"
    report = settings_json("settings", "--json", "--set", f"checkpoint_url={url}")
    assert report["checkpoint_url"]["value"] == "postgresql://insitu:***@127.0.0.1:5432/library"
    table = invoke("--set", f"checkpoint_url={url}", "settings")
    assert table.exit_code == 0 and "s3cret" not in table.output
