"""Benchmark: what running a tool in the sandbox costs per call.

Compares, for a trivial tool (the mean of three numbers):

* ``in-process``: the same contract path (validate input, run, dump output) with
  the module already loaded, in this process: the floor;
* ``warm sandbox``: ``Sandbox.call(..., warm=True)``: a long-lived sandboxed
  worker forks a pre-warmed child per call; with every wall (the seccomp filter);
* ``warm sandbox, no seccomp``: the same with ``SandboxSettings(seccomp=False)``,
  the path before the filter, measured in the same run, call for call
  interleaved with the one above so that load hits both alike;
* ``cold sandbox`` (and ``cold sandbox, no seccomp``): ``warm=False``: a fresh
  sandbox process per call, running the same runner;
* ``cold, network declared`` against ``cold, network shared (old path)``: a
  fresh sandbox for a tool that declares network access, with its own network
  namespace connected by slirp4netns (routes, helper start) against the host's
  namespace shared as before; the difference is what the network isolation adds
  to a worker's start (needs bwrap, root or user namespaces, and slirp4netns);
* ``python -c 'import pydantic'``: just spawning a fresh interpreter that imports
  pydantic, unsandboxed, which is what a naive one-process-per-call design pays
  before doing anything.

Targets: warm sandbox p50 <= 15 ms; with the filter, <= 1.5x the warm p50 without.

Run::

    python -m insitu.evals.bench_sandbox [--calls 200] [--network-calls 40] [--backend auto]
        [--json out.json]
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


def measure_pair(
    calls: int, first: Callable[[], None], second: Callable[[], None], warmup: int = 3
) -> tuple[list[float], list[float]]:
    """Time two operations call for call, alternating which goes first, in ms.

    Interleaving makes a change of machine load during the run hit both alike,
    so their ratio stays meaningful on a busy machine.

    Args:
        calls: Timed runs of each.
        first: One operation (raises if its result is wrong).
        second: The other.
        warmup: Untimed runs of each first.
    """
    for _ in range(warmup):
        first()
        second()
    times: tuple[list[float], list[float]] = ([], [])
    for index in range(calls):
        order = ((0, first), (1, second)) if index % 2 == 0 else ((1, second), (0, first))
        for slot, once in order:
            started = time.perf_counter()
            once()
            times[slot].append((time.perf_counter() - started) * 1000.0)
    return times


def _network_unavailable(backend: str) -> str:
    """Why the network variants cannot run here ('' when they can)."""
    from insitu.sandbox import netns

    if backend != "bwrap":
        return f"the {backend} backend has no network isolation"
    _, problem = netns.find_helper()
    return problem


def run_benchmark(calls: int, backend: str, network_calls: int = 40) -> dict[str, Any]:
    """Measure the ways of calling the tool.

    Args:
        calls: Timed calls per variant.
        backend: Sandbox backend (``auto``, ``bwrap`` or ``degraded``).
        network_calls: Timed calls of each network variant (fresh sandboxes: slow).

    Returns:
        The results, JSON-able.
    """
    results: dict[str, dict[str, float]] = {}
    load_before = os.getloadavg()[0]

    tool = LoadedTool(TOOL)

    def in_process() -> None:
        assert tool.call(PAYLOAD) == {"mean": 2.0}

    results["in-process"] = summarize(measure(calls, in_process))
    network_note = ""
    paired: dict[str, dict[str, float]] = {}

    with (
        tempfile.TemporaryDirectory(prefix="insitu-bench-") as tmp,
        Sandbox(SandboxSettings(backend=backend)) as sandbox,
        Sandbox(SandboxSettings(backend=backend, seccomp=False)) as unfiltered,
    ):
        workdir = Path(tmp)

        def sandboxed(box: Sandbox, warm: bool, network: bool = False) -> Callable[[], None]:
            def once() -> None:
                outcome = box.call(TOOL, PAYLOAD, workdir=workdir, warm=warm, network=network)
                if not outcome.ok or outcome.output != {"mean": 2.0}:
                    raise RuntimeError(f"sandboxed call failed: {outcome}")

            return once

        new, old = measure_pair(calls, sandboxed(sandbox, True), sandboxed(unfiltered, True))
        results[WARM], results[WARM_OLD] = summarize(new), summarize(old)
        paired["seccomp filter, warm call"] = paired_difference(new, old)
        new, old = measure_pair(calls, sandboxed(sandbox, False), sandboxed(unfiltered, False))
        results[COLD], results[COLD_OLD] = summarize(new), summarize(old)
        used_backend = sandbox.backend
        isolation = sandbox.isolation
        network_note = _network_unavailable(used_backend)
        if not network_note and network_calls > 0:
            shared_settings = SandboxSettings(backend=backend, shared_host_network=True)
            with Sandbox(shared_settings) as shared:
                isolated_times, shared_times = measure_pair(
                    network_calls,
                    sandboxed(sandbox, False, network=True),
                    sandboxed(shared, False, network=True),
                    warmup=2,
                )
            results[NET_COLD] = summarize(isolated_times)
            results[NET_COLD_OLD] = summarize(shared_times)
            paired["network isolation, fresh sandbox"] = paired_difference(
                isolated_times, shared_times
            )

    def spawn() -> None:
        subprocess.run([sys.executable, "-c", "import pydantic"], check=True)

    results[SPAWN] = summarize(measure(calls, spawn, warmup=1))
    return {
        "backend": used_backend,
        "isolation": isolation,
        "calls": calls,
        "network_calls": network_calls,
        "network_skipped": network_note,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "bwrap": probe_backend().bwrap_path,
            "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
        "results": results,
        "paired_extra_ms": paired,
    }


def paired_difference(new: list[float], old: list[float]) -> dict[str, float]:
    """Median and mean of the call-by-call differences ``new - old`` (ms).

    Each pair ran back to back, so this is less exposed to load swings than the
    difference of two medians.
    """
    differences = [a - b for a, b in zip(new, old, strict=True)]
    return {
        "median_ms": statistics.median(differences),
        "mean_ms": statistics.fmean(differences),
    }


#: Target of this project: a warm sandboxed call's median overhead, in ms.
TARGET_WARM_P50_MS = 15.0
#: Target of the walls: the filtered warm p50 over the unfiltered one.
TARGET_FILTER_RATIO = 1.5
SPAWN = "python -c 'import pydantic'"
WARM = "warm sandbox"
WARM_OLD = "warm sandbox, no seccomp (old path)"
COLD = "cold sandbox"
COLD_OLD = "cold sandbox, no seccomp (old path)"
NET_COLD = "cold, network declared (own netns)"
NET_COLD_OLD = "cold, network shared (old path)"
#: Display order: the sandboxed ways first, then the two references.
ORDER = (COLD, COLD_OLD, NET_COLD, NET_COLD_OLD, WARM, WARM_OLD, "in-process", SPAWN)


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
        f"{'variant':<36} {'p50 ms':>9} {'p90 ms':>9} {'x in-process':>13} "
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
            f"{name:<36} {row['median_ms']:>9.3f} {row['p90_ms']:>9.3f} "
            f"{row['median_ms'] / base:>13,.0f} {row['median_ms'] / warm:>8.2f} "
            f"{row['median_ms'] / spawn:>8.2f}"
        )
    met = "met" if warm <= TARGET_WARM_P50_MS else "NOT met"
    lines.append(
        f"target: warm sandbox p50 <= {TARGET_WARM_P50_MS:g} ms: {met} ({warm:.2f} ms; "
        f"{spawn / warm:.1f}x faster than spawning an interpreter that imports pydantic)"
    )
    if WARM_OLD in results:
        old = results[WARM_OLD]["median_ms"]
        ratio = warm / old
        met = "met" if ratio <= TARGET_FILTER_RATIO else "NOT met"
        lines.append(
            f"target: warm p50 with the seccomp filter <= {TARGET_FILTER_RATIO:g}x without: "
            f"{met} ({warm:.2f} ms vs {old:.2f} ms, {ratio:.2f}x; cold "
            f"{results[COLD]['median_ms']:.1f} vs {results[COLD_OLD]['median_ms']:.1f} ms)"
        )
    if NET_COLD in results:
        isolated = results[NET_COLD]["median_ms"]
        shared = results[NET_COLD_OLD]["median_ms"]
        lines.append(
            f"network isolation adds {isolated - shared:+.1f} ms at p50 to a fresh sandbox of a "
            f"network-declaring tool ({isolated:.1f} ms vs {shared:.1f} ms sharing the host's "
            f"network; {report['network_calls']} calls each)"
        )
    elif report.get("network_skipped"):
        lines.append(f"network variants skipped: {report['network_skipped']}")
    for name, extra in report.get("paired_extra_ms", {}).items():
        lines.append(
            f"{name}: median of the call-by-call differences {extra['median_ms']:+.2f} ms "
            f"(mean {extra['mean_ms']:+.2f} ms)"
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
    parser.add_argument(
        "--network-calls",
        type=int,
        default=40,
        help="timed calls of each network variant (a fresh sandbox each; 0 skips them)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    report = run_benchmark(args.calls, args.backend, args.network_calls)
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
