"""Single-flight verdicts (describe, admission tests) and the pool's background growth."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from insitu.sandbox import Sandbox
from insitu.sandbox.core import _Pool
from insitu.sandbox.verdicts import Verdicts, verdict_key
from insitu.testing.team import SUMMARIZE_NUMBERS as TOOL
from insitu.tool_store.admission import AdmissionError, admit_tool

# ------------------------------------------------------------------ Verdicts


def test_concurrent_askers_share_one_computation() -> None:
    verdicts = Verdicts()
    started = threading.Event()
    release = threading.Event()
    runs = []

    def compute() -> str:
        runs.append(1)
        started.set()
        release.wait(5)
        return "passed"

    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(verdicts.get_or_compute, "k", compute, lambda r: True)
        assert started.wait(5)
        others = [
            pool.submit(verdicts.get_or_compute, "k", compute, lambda r: True) for _ in range(7)
        ]
        time.sleep(0.05)
        release.set()
        results = [first.result(5)] + [f.result(5) for f in others]
    assert results == ["passed"] * 8
    assert len(runs) == 1
    assert verdicts.get_or_compute("k", compute, lambda r: True) == "passed"
    assert len(runs) == 1 and verdicts.computed == 1 and verdicts.reused == 8


def test_a_result_not_kept_reaches_its_waiters_but_is_recomputed_later() -> None:
    verdicts = Verdicts()
    release = threading.Event()
    runs = []

    def compute() -> str:
        runs.append(1)
        release.wait(5)
        return f"failed {len(runs)}"

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(verdicts.get_or_compute, "k", compute, lambda r: False)]
        time.sleep(0.05)
        futures += [pool.submit(verdicts.get_or_compute, "k", compute, lambda r: False)]
        time.sleep(0.05)
        release.set()
        assert {f.result(5) for f in futures} == {"failed 1"}
    assert verdicts.get_or_compute("k", compute, lambda r: False) == "failed 2"


def test_a_computation_that_raises_leaves_the_waiters_to_compute() -> None:
    verdicts = Verdicts()
    entered = threading.Event()
    release = threading.Event()
    calls = []

    def boom() -> str:
        calls.append("boom")
        entered.set()
        release.wait(5)
        raise RuntimeError("sandbox gone")

    def fine() -> str:
        calls.append("fine")
        return "ok"

    with ThreadPoolExecutor(2) as pool:
        failing = pool.submit(verdicts.get_or_compute, "k", boom, lambda r: True)
        assert entered.wait(5)
        waiting = pool.submit(verdicts.get_or_compute, "k", fine, lambda r: True)
        time.sleep(0.05)
        release.set()
        with pytest.raises(RuntimeError):
            failing.result(5)
        assert waiting.result(5) == "ok"
    assert calls == ["boom", "fine"]


def test_the_memo_is_bounded_and_keys_depend_on_every_part() -> None:
    verdicts = Verdicts(size=2)
    for key in ("a", "b", "c"):
        verdicts.get_or_compute(key, lambda key=key: key, lambda r: True)
    recomputed = []
    verdicts.get_or_compute("a", lambda: recomputed.append("a") or "a", lambda r: True)
    assert recomputed == ["a"]
    assert verdict_key("tests", "src", [1]) == verdict_key("tests", "src", [1])
    assert verdict_key("tests", "src", [1]) != verdict_key("tests", "src", [2])
    assert verdict_key("tests", "src", [1]) != verdict_key("describe", "src", [1])


# ------------------------------------------------------------------ admission


def _counting(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, method: str) -> list[Any]:
    calls: list[Any] = []
    real = getattr(sandbox, method)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0] if args else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(sandbox, method, counted)
    return calls


def test_identical_admissions_in_parallel_run_the_tests_once(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = TOOL
    # A fresh memo: the session sandbox may have admitted this tool already.
    monkeypatch.setattr(sandbox, "verdicts", Verdicts())
    runs = _counting(sandbox, monkeypatch, "run_tests")
    with ThreadPoolExecutor(6) as pool:
        specs = list(
            pool.map(
                lambda i: admit_tool(
                    tool.source, tool.tests, sandbox=sandbox, scratch_dir=tmp_path / f"ep{i}"
                ),
                range(6),
            )
        )
    assert {s.name for s in specs} == {tool.name}
    assert all(s.input_schema == specs[0].input_schema for s in specs)
    assert len(runs) == 1
    # Other tests are other work: they run.
    admit_tool(tool.source, tool.tests[:1], sandbox=sandbox, scratch_dir=tmp_path / "other")
    assert len(runs) == 2


def test_a_failing_test_run_is_not_remembered(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = TOOL
    monkeypatch.setattr(sandbox, "verdicts", Verdicts())
    wrong = [{**tool.tests[0], "expect": {"count": 4}}]
    runs = _counting(sandbox, monkeypatch, "run_tests")
    for attempt in range(2):
        with pytest.raises(AdmissionError) as info:
            admit_tool(tool.source, wrong, sandbox=sandbox, scratch_dir=tmp_path / str(attempt))
        assert info.value.stage == "tests"
    assert len(runs) == 2


def test_a_failed_describe_is_not_remembered_but_a_good_one_is(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "verdicts", Verdicts())
    broken = "def run(:\n"
    assert not sandbox.describe(broken).ok
    assert not sandbox.describe(broken).ok
    assert sandbox.verdicts.computed == 2
    good = TOOL.source
    first, second = sandbox.describe(good), sandbox.describe(good)
    assert first.ok and second.output == first.output
    assert sandbox.verdicts.computed == 3 and sandbox.verdicts.reused == 1


# ------------------------------------------------------------------ pool growth


class _FakeWorker:
    def __init__(self, key: tuple[Any, ...], number: int) -> None:
        self.key = key
        self.number = number
        self.alive = True
        self.last_used = time.monotonic()

    def close(self, graceful: bool = True) -> None:
        self.alive = False


def test_a_busy_key_is_served_by_its_busy_worker_while_another_starts_in_background() -> None:
    started: list[_FakeWorker] = []
    slow_start = threading.Event()

    def start(key: tuple[Any, ...]) -> _FakeWorker:
        if started:  # every start after the first takes "long"
            slow_start.wait(5)
        worker = _FakeWorker(key, len(started) + 1)
        started.append(worker)
        return worker

    pool = _Pool(start, max_workers=4, idle_timeout_s=60)
    key = ("root",)
    first = pool.acquire(key, timeout_s=1)
    with ThreadPoolExecutor(1) as executor:
        second = executor.submit(pool.acquire, key, 5)
        time.sleep(0.05)
        pool.release(first, healthy=True)  # freed long before the new worker is up
        assert second.result(5) is first
        pool.release(first, healthy=True)
        slow_start.set()
        deadline = time.monotonic() + 5
        while pool.size < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert [w.number for w in started] == [1, 2]
    assert pool.size == 2
    # The grown worker is idle and serves the next concurrent caller at once.
    again = pool.acquire(key, timeout_s=1)
    other = pool.acquire(key, timeout_s=1)
    assert {again.number, other.number} == {1, 2}
    pool.close()


def test_a_key_without_workers_starts_one_for_the_caller() -> None:
    numbers = iter(range(1, 10))
    pool = _Pool(lambda key: _FakeWorker(key, next(numbers)), max_workers=2, idle_timeout_s=60)
    a = pool.acquire(("a",), timeout_s=1)
    b = pool.acquire(("b",), timeout_s=1)
    assert (a.number, b.number) == (1, 2)
    pool.release(a, healthy=True)
    c = pool.acquire(("c",), timeout_s=1)  # at the bound: the idle "a" worker is evicted
    assert c.number == 3 and not a.alive
    pool.close()


def test_verdict_keys_change_when_the_tool_environment_gains_a_package(tmp_path: Path) -> None:
    import os
    import sys

    from insitu.sandbox import SandboxSettings, ToolEnvironment

    env = ToolEnvironment(tmp_path / "toolenv")
    # An explicit interpreter: nothing is created, only the key is computed.
    sandbox = Sandbox(SandboxSettings(python=sys.executable), toolenv=env)
    try:
        before = sandbox.verdict_key("own tests", "source")
        assert sandbox.verdict_key("own tests", "source") == before
        env.site_packages.mkdir(parents=True)
        created = sandbox.verdict_key("own tests", "source")
        (env.site_packages / "newpkg-1.0.dist-info").mkdir()
        os.utime(env.site_packages, ns=(1, 1))  # a distinct mtime, however fast the clock
        installed = sandbox.verdict_key("own tests", "source")
        assert len({before, created, installed}) == 3
        assert sandbox.verdict_key("describe", "source") != installed
    finally:
        sandbox.close()


def test_specs_admitted_from_a_remembered_description_do_not_share_schemas(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "verdicts", Verdicts())
    first = admit_tool(TOOL.source, TOOL.tests, sandbox=sandbox, scratch_dir=tmp_path / "a")
    second = admit_tool(TOOL.source, TOOL.tests, sandbox=sandbox, scratch_dir=tmp_path / "b")
    assert sandbox.verdicts.reused >= 2  # the describe and the tests were remembered
    first.input_schema["properties"]["values"]["description"] = "changed by one episode"
    assert second.input_schema["properties"]["values"]["description"] != "changed by one episode"
