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

    results["python -c 'import pydantic'"] = summarize(measure(calls, spawn, warmup=1))
    return {
        "backend": used_backend,
        "isolation": isolation,
        "calls": calls,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "bwrap": probe_backend().bwrap_path,
        },
        "results": results,
    }


def format_table(report: dict[str, Any]) -> str:
    """Render the results as a plain-text table with ratios.

    Args:
        report: What :func:`run_benchmark` returned.
    """
    results = report["results"]
    base = results["in-process"]["median_ms"]
    warm = results["warm sandbox"]["median_ms"]
    header = f"{'variant':<30} {'median ms':>10} {'p90 ms':>10} {'x in-process':>13} {'x warm':>8}"
    lines = [
        f"backend: {report['backend']}; {report['calls']} calls per variant; "
        f"{report['machine']['cpus']} CPUs; Python {report['machine']['python']}",
        header,
        "-" * len(header),
    ]
    for name, row in results.items():
        lines.append(
            f"{name:<30} {row['median_ms']:>10.2f} {row['p90_ms']:>10.2f} "
            f"{row['median_ms'] / base:>13.1f} {row['median_ms'] / warm:>8.2f}"
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
