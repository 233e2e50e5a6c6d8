"""Functional tests of insitu.sandbox: the tool contract, outcomes, test cases, pool.

Each behaviour runs for real in the sandbox; bwrap cases are skipped (with the
probe's reason) on machines without a working bubblewrap.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import sys
import time
from pathlib import Path

import pytest

from insitu.sandbox import (
    ErrorKind,
    Outcome,
    Sandbox,
    SandboxSettings,
    TestReport,
    probe_backend,
    runner,
)
from insitu.sandbox import backend as backends
from insitu.testing.probe import probe_tool

INFO = probe_backend()
BACKENDS = [
    pytest.param(
        "bwrap",
        marks=pytest.mark.skipif(
            not INFO.bwrap_works, reason=f"bwrap backend unavailable here: {INFO.bwrap_error}"
        ),
    ),
    "degraded",
]
FIXTURES = Path(__file__).parent / "fixtures" / "tools"

MEAN = """
from pydantic import BaseModel, Field

__TOOL_META__ = {
    "name": "compute_mean",
    "description": "Computes the arithmetic mean of a list of numbers and returns it.",
    "dependencies": [],
    "secrets": ["API_TOKEN"],
    "network": False,
}


class InputModel(BaseModel):
    values: list[float] = Field(description="numbers")


class OutputModel(BaseModel):
    mean: float
    count: int


def helper(values):
    return sum(values) / len(values)


def run(input: InputModel) -> OutputModel:
    print("computing", len(input.values))
    return OutputModel(mean=helper(input.values), count=len(input.values))
"""

SIGNATURE = """
__TOOL_META__ = {"name": "count_parts", "description": "Counts parts.", "dependencies": []}


def run(text: str, sep: str = ",") -> int:
    return len(text.split(sep))
"""


def tool(body: str, name: str = "probe_tool", imports: str = "") -> str:
    """A tool whose run() executes ``body`` and returns {"value": value}."""
    return probe_tool(body, name=name, modules="os, sys, json, time", imports=imports)


@pytest.fixture(scope="module", params=BACKENDS)
def sandbox(request: pytest.FixtureRequest):
    with Sandbox(SandboxSettings(backend=request.param, timeout_s=10, memory_mb=1024)) as sb:
        assert sb.backend == request.param
        yield sb


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("work")


# -- the ok path and the contract forms ---------------------------------------------


def test_call_ok_returns_output_stdout_and_duration(sandbox: Sandbox, workdir: Path) -> None:
    out = sandbox.call(MEAN, {"values": [1, 2, 3, 4]}, workdir=workdir)
    assert isinstance(out, Outcome)
    assert out.ok and out.kind is ErrorKind.OK, out
    assert out.output == {"mean": 2.5, "count": 4}
    assert out.stdout == "computing 4\n"
    assert out.duration_ms > 0


def test_calls_work_when_the_host_holds_descriptors_past_1024(tmp_path: Path) -> None:
    """A long-lived host process (a test session, a server) may number its pipes past 1024."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with Sandbox(SandboxSettings(timeout_s=10, memory_mb=1024)) as sandbox:
            for warm in (True, False):
                out = sandbox.call(MEAN, {"values": [1, 2, 3]}, workdir=tmp_path, warm=warm)
                assert out.ok and out.output == {"mean": 2.0, "count": 3}, out
    finally:
        for fd in held:
            os.close(fd)


@pytest.mark.parametrize("warm", [True, False])
def test_warm_and_cold_give_the_same_result(sandbox: Sandbox, workdir: Path, warm: bool) -> None:
    out = sandbox.call(MEAN, {"values": [2, 4]}, workdir=workdir, warm=warm)
    assert out.ok, out
    assert out.output == {"mean": 3.0, "count": 2}


def test_typed_signature_form(sandbox: Sandbox, workdir: Path) -> None:
    out = sandbox.call(SIGNATURE, {"text": "a;b;c", "sep": ";"}, workdir=workdir)
    assert out.ok, out
    assert out.output == {"result": 3}
    out = sandbox.call(SIGNATURE, {"text": "a,b"}, workdir=workdir)
    assert out.output == {"result": 2}
    described = sandbox.describe(SIGNATURE)
    assert described.ok, described
    schema = described.output["input_schema"]
    assert schema["required"] == ["text"]
    assert schema["properties"]["sep"]["default"] == ","
    assert described.output["output_schema"]["properties"]["result"]["type"] == "integer"


def test_signature_returning_a_model_and_taking_one(sandbox: Sandbox, workdir: Path) -> None:
    source = """
from pydantic import BaseModel
__TOOL_META__ = {"name": "double_it", "description": "Doubles.", "dependencies": []}
class Args(BaseModel):
    x: int
class Result(BaseModel):
    y: int
def run(args: Args) -> Result:
    return {"y": args.x * 2}
"""
    out = sandbox.call(source, {"x": 21}, workdir=workdir)
    assert out.ok, out
    assert out.output == {"y": 42}


def test_yunjue_format_tool_works_unchanged(sandbox: Sandbox, workdir: Path) -> None:
    source = (FIXTURES / "yunjue_word_count.py").read_text()
    described = sandbox.describe(source)
    assert described.ok, described
    assert described.output["name"] == "count_words"
    assert described.output["secrets"] == [] and described.output["network"] is False
    out = sandbox.call(source, {"text": "a b A c"}, workdir=workdir)
    assert out.ok, out
    assert out.output == {"total": 4, "distinct": 3}


def test_describe_gives_metadata_and_json_schemas(sandbox: Sandbox) -> None:
    out = sandbox.describe(MEAN)
    assert out.ok, out
    desc = out.output
    assert set(desc) == {
        "name",
        "description",
        "dependencies",
        "secrets",
        "network",
        "input_schema",
        "output_schema",
    }
    assert desc["name"] == "compute_mean"
    assert desc["secrets"] == ["API_TOKEN"]
    assert desc["input_schema"]["properties"]["values"]["description"] == "numbers"
    assert desc["input_schema"]["properties"]["values"]["items"] == {"type": "number"}
    assert set(desc["output_schema"]["required"]) == {"mean", "count"}


def test_describe_reports_syntax_errors_and_missing_meta(sandbox: Sandbox) -> None:
    out = sandbox.describe("def run(:\n    pass\n")
    assert out.kind is ErrorKind.EXCEPTION
    assert out.message.startswith("SyntaxError") and "line 1" in out.message
    out = sandbox.describe("def run(x: int) -> int:\n    return x\n")
    assert out.kind is ErrorKind.EXCEPTION
    assert "__TOOL_META__" in out.message


def test_postponed_annotations_and_nested_models(sandbox: Sandbox, workdir: Path) -> None:
    source = """
from __future__ import annotations
from pydantic import BaseModel
__TOOL_META__ = {"name": "sum_points", "description": "Sums.", "dependencies": []}
class Point(BaseModel):
    x: float
    y: float
class InputModel(BaseModel):
    points: list[Point]
class OutputModel(BaseModel):
    total: Point
def run(input: InputModel) -> OutputModel:
    xs, ys = zip(*((p.x, p.y) for p in input.points))
    return OutputModel(total=Point(x=sum(xs), y=sum(ys)))
"""
    out = sandbox.call(source, {"points": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]}, workdir=workdir)
    assert out.ok, out
    assert out.output == {"total": {"x": 4.0, "y": 6.0}}
    described = sandbox.describe(source)
    assert "Point" in described.output["input_schema"]["$defs"]


def test_async_run_and_dict_return(sandbox: Sandbox, workdir: Path) -> None:
    source = """
import asyncio
from pydantic import BaseModel
__TOOL_META__ = {"name": "wait_echo", "description": "Echo.", "dependencies": []}
class InputModel(BaseModel):
    text: str
class OutputModel(BaseModel):
    text: str
async def run(input: InputModel) -> OutputModel:
    await asyncio.sleep(0.01)
    return {"text": input.text.upper()}
"""
    out = sandbox.call(source, {"text": "hi"}, workdir=workdir)
    assert out.ok, out
    assert out.output == {"text": "HI"}


# -- failure kinds ---------------------------------------------------------------------


def test_invalid_input_lists_every_pydantic_error(sandbox: Sandbox, workdir: Path) -> None:
    out = sandbox.call(MEAN, {"values": [1, "x", None]}, workdir=workdir)
    assert out.kind is ErrorKind.INVALID_INPUT and not out.ok
    assert "2 validation error(s) in the input (InputModel)" in out.message
    assert "- values[1]: Input should be a valid number" in out.message
    assert "(got 'x')" in out.message
    assert "- values[2]:" in out.message
    out = sandbox.call(MEAN, {}, workdir=workdir)
    assert out.kind is ErrorKind.INVALID_INPUT
    assert "- values: Field required" in out.message


def test_invalid_output(sandbox: Sandbox, workdir: Path) -> None:
    wrong_type = MEAN.replace(
        "return OutputModel(mean=helper(input.values), count=len(input.values))",
        "return {'mean': 'not a number', 'count': 1}",
    )
    out = sandbox.call(wrong_type, {"values": [1]}, workdir=workdir)
    assert out.kind is ErrorKind.INVALID_OUTPUT, out
    assert "the output (OutputModel)" in out.message and "- mean:" in out.message
    not_a_dict = MEAN.replace(
        "return OutputModel(mean=helper(input.values), count=len(input.values))", "return 42"
    )
    out = sandbox.call(not_a_dict, {"values": [1]}, workdir=workdir)
    assert out.kind is ErrorKind.INVALID_OUTPUT
    assert "run() returned int" in out.message and "mean, count" in out.message


def test_exception_message_and_traceback_trimmed_to_tool_frames(
    sandbox: Sandbox, workdir: Path
) -> None:
    out = sandbox.call(MEAN, {"values": []}, workdir=workdir)
    assert out.kind is ErrorKind.EXCEPTION
    assert out.message == "ZeroDivisionError: division by zero"
    tb = out.traceback
    assert tb.startswith("Traceback (most recent call last; tool frames only):")
    assert 'File "<tool:compute_mean>"' in tb and "in run" in tb and "in helper" in tb
    assert "return sum(values) / len(values)" in tb  # source lines are shown
    assert "runner" not in tb and "<string>" not in tb and "pydantic" not in tb
    assert tb.rstrip().endswith("ZeroDivisionError: division by zero")


def test_exception_inside_a_library_names_where_it_was_raised(
    sandbox: Sandbox, workdir: Path
) -> None:
    out = sandbox.call(tool("import statistics\nvalue = statistics.mean([])"), {}, workdir=workdir)
    assert out.kind is ErrorKind.EXCEPTION
    assert out.message.startswith("StatisticsError")
    assert "raised in statistics.py" in out.traceback


def test_missing_dependency_is_its_own_kind(sandbox: Sandbox, workdir: Path) -> None:
    at_import = tool("value = 1", imports="import insitu_no_such_module_xyz")
    out = sandbox.call(at_import, {}, workdir=workdir)
    assert out.kind is ErrorKind.DEPENDENCY, out
    assert "'insitu_no_such_module_xyz'" in out.message
    described = sandbox.describe(at_import)
    assert described.kind is ErrorKind.DEPENDENCY
    in_run = tool("import another_missing_mod_abc\nvalue = 1")
    out = sandbox.call(in_run, {}, workdir=workdir)
    assert out.kind is ErrorKind.DEPENDENCY
    assert "another_missing_mod_abc" in out.message


def test_sys_exit_and_os_exit(sandbox: Sandbox, workdir: Path) -> None:
    out = sandbox.call(tool("sys.exit(3)\nvalue = 0"), {}, workdir=workdir)
    assert out.kind is ErrorKind.EXCEPTION
    assert "sys.exit(3)" in out.message
    out = sandbox.call(tool("os._exit(7)\nvalue = 0"), {}, workdir=workdir)
    assert out.kind is ErrorKind.CRASH
    assert "status 7" in out.message


def test_stdout_and_stderr_are_captured_and_capped(sandbox: Sandbox, workdir: Path) -> None:
    body = "print('o' * 100000)\nprint('err', file=sys.stderr)\nvalue = 1"
    out = sandbox.call(tool(body), {}, workdir=workdir)
    assert out.ok, out
    cap = sandbox.settings.output_bytes
    assert out.stdout.startswith("o" * 1000)
    assert out.stdout.endswith(f"\n…[truncated {100001 - cap} bytes]")
    assert out.stderr == "err\n"


# -- environment, cwd, state ---------------------------------------------------------


def test_cwd_home_and_environment(sandbox: Sandbox, workdir: Path) -> None:
    (workdir / "given.txt").write_text("from the host")
    body = """
value = {
    "cwd": os.getcwd(),
    "env": dict(os.environ),
    "given": open("given.txt").read(),
}
open("made.txt", "w").write("from the tool")
"""
    out = sandbox.call(tool(body), {}, workdir=workdir, secrets={"API_TOKEN": "s3cr3t"})
    assert out.ok, out
    value = out.output["value"]
    real = os.path.realpath(workdir)
    assert value["cwd"] == real
    assert value["given"] == "from the host"
    assert (workdir / "made.txt").read_text() == "from the tool"
    env = value["env"]
    assert set(env) == {"PATH", "HOME", "LANG", "PYTHONDONTWRITEBYTECODE", "API_TOKEN"}
    assert env["HOME"] == real and env["LANG"] == "C.UTF-8"
    assert env["API_TOKEN"] == "s3cr3t"


def test_tmp_shm_threads_and_subprocesses_work(sandbox: Sandbox, workdir: Path) -> None:
    body = """
import multiprocessing, subprocess, tempfile, threading
with tempfile.NamedTemporaryFile("w", delete=False) as handle:
    handle.write("scratch")
queue = multiprocessing.Queue()
queue.put("shm ok")
results = []
thread = threading.Thread(target=lambda: results.append("thread ok"))
thread.start()
thread.join()
child = subprocess.run([sys.executable, "-c", "print('child ok')"], capture_output=True, text=True)
value = [open(handle.name).read(), queue.get(timeout=5), results[0], child.stdout.strip()]
"""
    out = sandbox.call(tool(body), {}, workdir=workdir)
    assert out.ok, out
    assert out.output["value"] == ["scratch", "shm ok", "thread ok", "child ok"]


def test_recreated_workdir_gets_a_fresh_worker(sandbox: Sandbox, tmp_path: Path) -> None:
    import shutil

    workdir = tmp_path / "episode"
    body = "open('out.txt', 'w').write(str(input.arg))\nvalue = sorted(os.listdir('.'))"
    for round_ in range(2):
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir()
        out = sandbox.call(tool(body), {"arg": round_}, workdir=workdir)
        assert out.ok, out
        assert out.output == {"value": ["out.txt"]}
        assert (workdir / "out.txt").read_text() == str(round_)


def test_secrets_and_module_state_do_not_leak_between_calls(
    sandbox: Sandbox, workdir: Path
) -> None:
    body = """
global COUNTER
COUNTER = globals().get("COUNTER", 0) + 1
value = [os.environ.get("API_TOKEN"), COUNTER]
"""
    first = sandbox.call(tool(body), {}, workdir=workdir, secrets={"API_TOKEN": "one"})
    second = sandbox.call(tool(body), {}, workdir=workdir)
    assert first.output == {"value": ["one", 1]}
    assert second.output == {"value": [None, 1]}


def test_parallel_workers_share_a_workdir(sandbox: Sandbox, tmp_path: Path) -> None:
    """Files one worker (uid) creates stay writable by another worker (uid)."""
    body = """
with open("shared.txt", "a") as handle:
    handle.write(str(input.arg))
time.sleep(0.3)
value = os.getuid()
"""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outs = list(
            pool.map(lambda i: sandbox.call(tool(body), {"arg": i}, workdir=tmp_path), [1, 2])
        )
    assert all(o.ok for o in outs), outs
    assert sorted((tmp_path / "shared.txt").read_text()) == ["1", "2"]


# -- test cases -----------------------------------------------------------------------


def test_run_tests_expect_check_and_expect_error(sandbox: Sandbox, workdir: Path) -> None:
    tests = [
        {"name": "mean_of_three", "input": {"values": [1, 2, 3]}, "expect": {"mean": 2.0}},
        {"name": "float_tolerance", "input": {"values": [0.1, 0.2]}, "expect": {"mean": 0.15}},
        {"name": "check_ok", "input": {"values": [1, 3]}, "check": "approx(output['mean'], 2)"},
        {
            "name": "check_uses_input_and_math",
            "input": {"values": [4]},
            "check": "output['mean'] == math.sqrt(16) and output['count'] == len(input['values'])",
        },
        {"name": "empty_is_an_error", "input": {"values": []}, "expect_error": True},
        {"name": "bad_input_is_an_error", "input": {"values": "x"}, "expect_error": True},
    ]
    report = sandbox.run_tests(MEAN, tests, workdir=workdir)
    assert isinstance(report, TestReport)
    assert report.passed, report.message
    assert [r.name for r in report.results] == [t["name"] for t in tests]
    assert report.message == "6/6 test(s) passed."
    assert report.results[4].outcome.kind is ErrorKind.EXCEPTION
    assert report.results[5].outcome.kind is ErrorKind.INVALID_INPUT


def test_run_tests_failure_messages_are_precise(sandbox: Sandbox, workdir: Path) -> None:
    tests = [
        {"name": "mean_of_three", "input": {"values": [1, 2, 6]}, "expect": {"mean": 2.5}},
        {"name": "tolerance_is_relative", "input": {"values": [1.0]}, "expect": {"mean": 1.001}},
        {"name": "missing_field", "input": {"values": [1]}, "expect": {"median": 1}},
        {"name": "check_false", "input": {"values": [1, 2]}, "check": "output['count'] == 3"},
        {"name": "check_raises", "input": {"values": [1]}, "check": "output['nope'] > 1"},
        {"name": "should_fail", "input": {"values": [1]}, "expect_error": True},
        {"name": "call_fails", "input": {"values": []}, "expect": {"mean": 0}},
        {"name": "malformed", "input": [1, 2]},
    ]
    report = sandbox.run_tests(MEAN, tests, workdir=workdir)
    assert not report.passed
    messages = {r.name: r.message for r in report.results}
    assert not any(r.passed for r in report.results)
    assert (
        messages["mean_of_three"] == "test 'mean_of_three': output['mean'] == 2.5 expected, got 3.0"
    )
    assert messages["tolerance_is_relative"] == (
        "test 'tolerance_is_relative': output['mean'] == 1.001 expected, got 1.0"
    )
    assert messages["missing_field"] == (
        "test 'missing_field': output has no field 'median' (fields: mean, count)"
    )
    assert messages["check_false"] == (
        "test 'check_false': check failed: output['count'] == 3 "
        "(output was {'mean': 1.5, 'count': 2})"
    )
    assert messages["check_raises"].startswith("test 'check_raises': check raised KeyError")
    assert messages["should_fail"].startswith(
        "test 'should_fail': expected the call to fail (exception or invalid input), but it "
        "succeeded with output {'mean': 1.0, 'count': 1}"
    )
    assert messages["call_fails"].startswith(
        "test 'call_fails': the call failed (exception): ZeroDivisionError: division by zero"
    )
    assert "<tool:compute_mean>" in messages["call_fails"]
    assert messages["malformed"].startswith("test 'malformed': malformed test case")
    assert report.message.startswith("0/8 test(s) passed.\nFAILED test 'mean_of_three'")


def test_run_tests_nested_expectations(sandbox: Sandbox, workdir: Path) -> None:
    body = "value = {'rows': [{'x': 1.0000001, 'tags': ['a']}, {'x': 2.0, 'tags': []}]}"
    cases = [
        {
            "name": "nested_ok",
            "input": {},
            "expect": {"value": {"rows": [{"x": 1.0, "tags": ["a"]}, {"x": 2, "tags": []}]}},
        },
        {
            "name": "nested_bad",
            "input": {},
            "expect": {"value": {"rows": [{"x": 1.0, "tags": ["a"]}, {"x": 3.0, "tags": []}]}},
        },
        {"name": "length", "input": {}, "expect": {"value": {"rows": []}}},
        {
            "name": "bool_is_not_int",
            "input": {},
            "check": "output['value']['rows'][0]['tags'] == ['a']",
        },
    ]
    report = sandbox.run_tests(tool(body), cases, workdir=workdir)
    by_name = {r.name: r for r in report.results}
    assert by_name["nested_ok"].passed, by_name["nested_ok"].message
    assert by_name["nested_bad"].message == (
        "test 'nested_bad': output['value']['rows'][1]['x'] == 3.0 expected, got 2.0"
    )
    assert by_name["length"].message.startswith(
        "test 'length': output['value']['rows']: 0 item(s) expected, got 2"
    )
    assert by_name["bool_is_not_int"].passed


def test_run_tests_with_no_cases_does_not_pass(sandbox: Sandbox, workdir: Path) -> None:
    report = sandbox.run_tests(MEAN, [], workdir=workdir)
    assert not report.passed and report.message == "no test cases were given"


def test_verdict_helpers_compare_strictly() -> None:
    assert runner.approx(1.0, 1.0 + 1e-9)
    assert not runner.approx(1.0, 1.01)
    assert runner.approx([1.0, {"a": 2.0}], [1.0, {"a": 2.0000000001}])
    ok, _ = runner.verdict(
        {"name": "b", "expect": {"flag": 1}}, {"ok": True, "output": {"flag": True}}
    )
    assert not ok  # JSON true is not the number 1
    ok, _ = runner.verdict(
        {"name": "z", "expect": {"x": 0.0}}, {"ok": True, "output": {"x": 1e-15}}
    )
    assert ok


# -- concurrency and the pool -----------------------------------------------------------


def test_eight_threads_get_correct_separate_results(sandbox: Sandbox, tmp_path: Path) -> None:
    body = "time.sleep(0.1)\nvalue = [input.arg, os.getpid()]"
    source = tool(body)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(sandbox.call, source, {"arg": i}, workdir=tmp_path / f"w{i % 3}")
            for i in range(16)
        ]
        outs = [f.result() for f in futures]
    assert all(o.ok for o in outs), [o.message for o in outs if not o.ok]
    assert [o.output["value"][0] for o in outs] == list(range(16))
    assert sandbox.worker_count <= sandbox.settings.max_workers


def test_pool_is_bounded_and_evicts(tmp_path: Path) -> None:
    backend = "bwrap" if INFO.bwrap_works else "degraded"
    with Sandbox(SandboxSettings(backend=backend, max_workers=2)) as sb:
        source = tool("time.sleep(0.1)\nvalue = input.arg")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            outs = list(
                pool.map(
                    lambda i: sb.call(source, {"arg": i}, workdir=tmp_path / f"d{i}"), range(4)
                )
            )
        assert [o.output["value"] for o in outs] == list(range(4))
        assert sb.worker_count <= 2


def test_asyncio_to_thread(sandbox: Sandbox, workdir: Path) -> None:
    import asyncio

    async def main() -> list[Outcome]:
        calls = [
            asyncio.to_thread(sandbox.call, MEAN, {"values": [i, i]}, workdir=workdir)
            for i in range(4)
        ]
        return await asyncio.gather(*calls)

    outs = asyncio.run(main())
    assert [o.output["mean"] for o in outs] == [0.0, 1.0, 2.0, 3.0]


# -- settings, backends, guards ---------------------------------------------------------


def test_backend_env_var_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSITU_SANDBOX_BACKEND", "degraded")
    assert SandboxSettings().backend == "degraded"
    monkeypatch.setenv("INSITU_SANDBOX_BACKEND", "bwrap")
    assert SandboxSettings().backend == "bwrap"
    assert SandboxSettings(backend="auto").backend == "auto"
    monkeypatch.setenv("INSITU_SANDBOX_BACKEND", "chroot")
    with pytest.raises(ValueError, match="backend must be one of"):
        SandboxSettings()


def test_probe_is_cached_and_states_its_isolation() -> None:
    assert probe_backend() is probe_backend()
    assert INFO.backend == ("bwrap" if INFO.bwrap_works else "degraded")
    assert "NOT isolated" in INFO.statement("degraded")
    assert "network" in INFO.statement("degraded")
    assert "filesystem" in INFO.statement("degraded")
    assert "no network unless" in INFO.statement("bwrap")


def test_forced_bwrap_without_bwrap_fails_as_sandbox_kind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = backends.BackendInfo(
        backend="degraded",
        bwrap_path=None,
        bwrap_works=False,
        bwrap_error="bwrap is not installed (install the 'bubblewrap' package)",
        root=backends.is_root(),
        can_drop_uid=backends.is_root(),
        python=sys.executable,
    )
    monkeypatch.setattr(backends, "probe_backend", lambda *a, **k: broken)
    with Sandbox(SandboxSettings(backend="bwrap")) as sb:
        assert sb.backend == "bwrap"
        out = sb.call(MEAN, {"values": [1]}, workdir=tmp_path)
        assert out.kind is ErrorKind.SANDBOX and not out.ok
        assert "bwrap" in out.message and "not installed" in out.message
        report = sb.run_tests(MEAN, [{"name": "t", "input": {"values": [1]}}], workdir=tmp_path)
        assert not report.passed and "sandbox" in report.results[0].message


def test_degraded_warning_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(backends, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="insitu.sandbox"):
        Sandbox(SandboxSettings(backend="degraded")).close()
        Sandbox(SandboxSettings(backend="degraded")).close()
    warnings = [r for r in caplog.records if "DEGRADED" in r.getMessage()]
    assert len(warnings) == 1
    assert "NOT isolated" in warnings[0].getMessage()


@pytest.mark.parametrize("bad", ["/", "/usr/lib/x", "/etc", "/tmp", "/root", sys.prefix])
def test_dangerous_workdirs_are_refused(sandbox: Sandbox, bad: str) -> None:
    out = sandbox.call(MEAN, {"values": [1]}, workdir=Path(bad))
    assert out.kind is ErrorKind.SANDBOX
    assert "workdir" in out.message


def test_closed_sandbox_returns_sandbox_kind(tmp_path: Path) -> None:
    sb = Sandbox(SandboxSettings(backend="degraded"))
    assert sb.call(MEAN, {"values": [1]}, workdir=tmp_path).ok
    sb.close()
    out = sb.call(MEAN, {"values": [1]}, workdir=tmp_path)
    assert out.kind is ErrorKind.SANDBOX and "closed" in out.message
    assert sb.worker_count == 0


def test_per_call_timeout_override(sandbox: Sandbox, workdir: Path) -> None:
    started = time.monotonic()
    out = sandbox.call(tool("time.sleep(30)\nvalue = 0"), {}, workdir=workdir, timeout_s=1)
    assert out.kind is ErrorKind.TIMEOUT
    assert "wall-clock limit of 1 s" in out.message
    assert time.monotonic() - started < 5


def test_outcome_is_json_serialisable(sandbox: Sandbox, workdir: Path) -> None:
    out = sandbox.call(MEAN, {"values": [1]}, workdir=workdir)
    data = json.loads(out.model_dump_json())
    assert data["kind"] == "ok" and data["output"] == {"mean": 1.0, "count": 1}


def test_prewarm_starts_the_worker_the_first_call_then_uses(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    fresh = tmp_path / "prewarmed"
    # An empty pool of its own, so other tests' workers do not count.
    with Sandbox(SandboxSettings(backend=sandbox.backend)) as own:
        own.prewarm(fresh)
        deadline = time.monotonic() + 30
        while own.worker_count == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert own.worker_count == 1  # starting in the background
        # A call arriving while the worker still starts waits for it, not for a second one.
        out = own.call(tool("value = 1"), {}, workdir=fresh)
        assert out.ok, out
        assert own.worker_count == 1


def test_prewarm_of_an_unusable_directory_is_silent(sandbox: Sandbox) -> None:
    sandbox.prewarm(Path("/usr"))  # read-only for tools: refused later, never raised here


def test_a_sandbox_process_that_does_not_start_says_what_it_printed(tmp_path: Path) -> None:
    from insitu.sandbox.worker import SandboxProcess, WorkerError

    argv = [
        sys.executable,
        "-c",
        "import sys; sys.stderr.write('bwrap: cannot set up lo'); exit(1)",
    ]
    with pytest.raises(WorkerError) as caught:
        SandboxProcess(
            argv,
            env=None,
            cwd=str(tmp_path),
            lease=None,
            key=("test",),
            backend="bwrap",
            startup_timeout_s=5,
            max_frame_bytes=1 << 20,
        )
    assert "bwrap: cannot set up lo" in caught.value.message
