"""Benchmark: what running a tool in the sandbox costs per call.

Compares, for a trivial tool (the mean of three numbers):

* ``in-process``: the same contract path (validate input, run, dump output) with
  the module already loaded, in this process: the floor;
* ``warm sandbox``: ``Sandbox.call(..., warm=True)``: a long-lived sandboxed
  worker forks a pre-warmed child per call;
* ``cold sandbox``: ``Sandbox.call(..., warm=False)``: a fresh sandbox process
  per call, running the same runner;
* ``python -c 'import pydantic'``: just spawning a fresh interpreter that imports
  pydantic, unsandboxed, which is what a naive one-process-per-call design pays
  before doing anything.

Target: warm sandbox p50 <= 15 ms.

Run::

    python -m insitu.evals.bench_sandbox [--calls 200] [--backend auto] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from insitu.sandbox import Sandbox, SandboxSettings, probe_backend
from insitu.sandbox.runner import LoadedTool

TOOL = """
from pydantic import BaseModel, Field

__TOOL_META__ = {
    "name": "compute_mean",
    "description": "Computes the arithmetic mean of a list of numbers and returns it.",
    "dependencies": [],
}


class InputModel(BaseModel):
    values: list[float] = Field(description="numbers")


class OutputModel(BaseModel):
    mean: float


def run(input: InputModel) -> OutputModel:
    return OutputModel(mean=sum(input.values) / len(input.values))
"""
PAYLOAD = {"values": [1.0, 2.0, 3.0]}


def measure(calls: int, once: Callable[[], None], warmup: int = 3) -> list[float]:
    """Time ``calls`` runs of ``once`` (after ``warmup`` untimed ones), in ms.

    Args:
        calls: Timed runs.
        once: The operation; it raises if the result is wrong.
        warmup: Untimed runs first.

    Returns:
        Durations in milliseconds.
    """
    for _ in range(warmup):
        once()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        once()
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def summarize(times: list[float]) -> dict[str, float]:
    """Return count, median, p90, mean and min of durations (ms).

    Args:
        times: Durations in ms.
    """
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        "calls": len(ordered),
        "median_ms": statistics.median(ordered),
        "p90_ms": p90,
        "mean_ms": statistics.fmean(ordered),
        "min_ms": ordered[0],
    }


def run_benchmark(calls: int, backend: str) -> dict[str, Any]:
    """Measure the four ways of calling the tool.

    Args:
        calls: Timed calls per variant.
        backend: Sandbox backend (``auto``, ``bwrap`` or ``degraded``).

    Returns:
        The results, JSON-able.
    """
    results: dict[str, dict[str, float]] = {}
    load_before = os.getloadavg()[0]

    tool = LoadedTool(TOOL)

    def in_process() -> None:
        assert tool.call(PAYLOAD) == {"mean": 2.0}

    results["in-process"] = summarize(measure(calls, in_process))

    with (
        tempfile.TemporaryDirectory(prefix="insitu-bench-") as tmp,
        Sandbox(SandboxSettings(backend=backend)) as sandbox,
    ):
        workdir = Path(tmp)

        def sandboxed(warm: bool) -> Callable[[], None]:
            def once() -> None:
                outcome = sandbox.call(TOOL, PAYLOAD, workdir=workdir, warm=warm)
                if not outcome.ok or outcome.output != {"mean": 2.0}:
                    raise RuntimeError(f"sandboxed call failed: {outcome}")

            return once

        results["warm sandbox"] = summarize(measure(calls, sandboxed(True)))
        results["cold sandbox"] = summarize(measure(calls, sandboxed(False)))
        used_backend = sandbox.backend
        isolation = sandbox.isolation

    def spawn() -> None:
        subprocess.run([sys.executable, "-c", "import pydantic"], check=True)

    results[SPAWN] = summarize(measure(calls, spawn, warmup=1))
    return {
        "backend": used_backend,
        "isolation": isolation,
        "calls": calls,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "bwrap": probe_backend().bwrap_path,
            "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
        "results": results,
    }


#: Target of this project: a warm sandboxed call's median overhead, in ms.
TARGET_WARM_P50_MS = 15.0
SPAWN = "python -c 'import pydantic'"
#: Display order: the sandboxed ways first, then the two references.
ORDER = ("cold sandbox", "warm sandbox", "in-process", SPAWN)


def format_table(report: dict[str, Any]) -> str:
    """Render the results side by side as a plain-text table with ratios.

    Ratios are of medians: to the in-process floor, to the warm sandbox and to
    spawning ``python -c 'import pydantic'`` (what one fresh interpreter per
    call would cost before doing any work).

    Args:
        report: What :func:`run_benchmark` returned.
    """
    results = report["results"]
    base = results["in-process"]["median_ms"]
    warm = results["warm sandbox"]["median_ms"]
    spawn = results[SPAWN]["median_ms"]
    header = (
        f"{'variant':<30} {'p50 ms':>9} {'p90 ms':>9} {'x in-process':>13} "
        f"{'x warm':>8} {'x spawn':>8}"
    )
    lines = [
        f"backend: {report['backend']}; {report['calls']} calls per variant "
        f"(after warm-up); {report['machine']['cpus']} CPUs; Python {report['machine']['python']}; "
        f"1-min load average {report['machine']['load_avg_1min'][0]} at start, "
        f"{report['machine']['load_avg_1min'][1]} at end",
        header,
        "-" * len(header),
    ]
    names = [n for n in ORDER if n in results] + [n for n in results if n not in ORDER]
    for name in names:
        row = results[name]
        lines.append(
            f"{name:<30} {row['median_ms']:>9.3f} {row['p90_ms']:>9.3f} "
            f"{row['median_ms'] / base:>13,.0f} {row['median_ms'] / warm:>8.2f} "
            f"{row['median_ms'] / spawn:>8.2f}"
        )
    met = "met" if warm <= TARGET_WARM_P50_MS else "NOT met"
    lines.append(
        f"target: warm sandbox p50 <= {TARGET_WARM_P50_MS:g} ms: {met} ({warm:.2f} ms; "
        f"{spawn / warm:.1f}x faster than spawning an interpreter that imports pydantic)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="timed calls per variant")
    parser.add_argument(
        "--backend", default="auto", choices=["auto", "bwrap", "degraded"], help="sandbox backend"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    report = run_benchmark(args.calls, args.backend)
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
