"""Concurrency benchmark: tasks per minute on one machine at B = 1, 16, 64 and 256 episodes.

One command prints the figures side by side. Each batch concurrency B runs
:func:`insitu.evolve.evolve` over ``scripted_stream`` tasks in batches of B
(``batch_concurrency`` = B) with the scripted team (a test double, **not model
results**) sleeping ``--latency`` seconds per call (``asyncio.sleep``: an
endpoint that answers in that time), a fresh store (``hashing`` embedding) and
one shared, warmed sandbox whose memo of verified tools is emptied before each
B. B=1 runs ``--tasks-b1`` tasks (it takes ``latency`` x calls per task each);
the others run ``--batches`` batches of B tasks.

Printed per B: tasks, wall time, tasks per minute, throughput against B=1,
model calls, **CPU ms per episode step** (this process's user + system CPU
time, divided by the model calls of the run: a step is one model request and
the node work around it: prompt, parsing, sandbox and store calls, LangGraph,
checkpoints), the largest number of model requests in flight at once, and the
1-minute load average before and after (the machine is shared).

Usage::

    python -m insitu.evals.bench_concurrency [--latency 1.0] [--batch-sizes 1,16,64,256]
        [--tasks-b1 4] [--batches 1] [--json PATH]

The figures are in ``docs/performance.md`` ("Many episodes on one machine").
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr

from insitu.evals.bench_evolve import _cpu_seconds, _ints, _load, _warm, _workdir, machine
from insitu.testing.scripted import ScriptedChatModel


class CountingScriptedChatModel(ScriptedChatModel):
    """The scripted model, counting calls and the most of them in flight at once."""

    _count_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _in_flight: int = PrivateAttr(default=0)
    _peak: int = PrivateAttr(default=0)
    _total: int = PrivateAttr(default=0)

    @property
    def peak_in_flight(self) -> int:
        """The most calls that were in flight at the same time."""
        return self._peak

    @property
    def total_calls(self) -> int:
        """Calls made so far."""
        return self._total

    def _change(self, delta: int) -> None:
        with self._count_lock:
            self._in_flight += delta
            self._peak = max(self._peak, self._in_flight)
            self._total += max(delta, 0)

    async def _agenerate(self, *args: Any, **kwargs: Any) -> Any:
        self._change(+1)
        try:
            return await super()._agenerate(*args, **kwargs)
        finally:
            self._change(-1)


def run_concurrency(
    batch_size: int, *, tasks: int, latency_s: float, sandbox: Any, root: Path
) -> dict[str, Any]:
    """Solve ``tasks`` scripted tasks in batches of ``batch_size``, all of a batch at once."""
    from insitu.evals.tasks import Task
    from insitu.evolve import evolve
    from insitu.testing.team import SCRIPTED_LABEL, ScriptedTeam, scripted_stream
    from insitu.tool_store import ToolStore

    stream = [Task(**t) for t in scripted_stream(tasks)]
    model = CountingScriptedChatModel(
        responder=ScriptedTeam().respond, latency_s=latency_s, label=SCRIPTED_LABEL
    )
    store_dir = root / "stores" / f"store-b{batch_size}"
    store = ToolStore.open(store_dir, embedding="hashing")
    sandbox.verdicts.clear()
    load_before = _load()
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    try:
        summary = evolve(
            stream,
            run_dir=root / f"run-b{batch_size}",
            batch_size=batch_size,
            models=model,
            tool_store=store,
            sandbox=sandbox,
            context={
                "store_dir": str(store_dir),
                "batch_concurrency": batch_size,
                "embedding": "hashing",
            },
            scripted=True,
        )
    finally:
        store.close()
    wall = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu_before
    return {
        "batch_size": batch_size,
        "tasks": tasks,
        "completed": summary.completed,
        "wall_s": round(wall, 2),
        "tasks_per_min": round(tasks / wall * 60, 2),
        "model_calls": model.total_calls,
        "cpu_ms_per_step": round(cpu * 1000 / max(1, model.total_calls), 2),
        "cpu_s": round(cpu, 2),
        "peak_requests_in_flight": model.peak_in_flight,
        "load_before": load_before,
        "load_after": _load(),
    }


def bench_concurrency(
    batch_sizes: Sequence[int],
    *,
    tasks_b1: int,
    batches: int,
    latency_s: float,
    root: Path,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Run every batch size with one shared, warmed sandbox; add throughput against B=1."""
    from insitu.sandbox import Sandbox, SandboxSettings, ToolEnvironment

    shared_root = str((root / "stores").resolve())
    # Warm workers are shared by the stores' root and started on demand; 68 at most.
    settings = SandboxSettings(
        workspace_root=shared_root, max_workers=2 * min(32, max(batch_sizes)) + 4
    )
    sandbox = Sandbox(settings, toolenv=ToolEnvironment(root / "toolenv"))
    try:
        _warm(sandbox, root)
        rows = []
        for batch_size in batch_sizes:
            tasks = tasks_b1 if batch_size == 1 else batch_size * batches
            log(f"B={batch_size}: {tasks} tasks, {latency_s:g} s per model call")
            rows.append(
                run_concurrency(
                    batch_size, tasks=tasks, latency_s=latency_s, sandbox=sandbox, root=root
                )
            )
            log(f"  {rows[-1]}")
    finally:
        sandbox.close()
    base = next((r for r in rows if r["batch_size"] == 1), None)
    for row in rows:
        row["vs_b1"] = round(row["tasks_per_min"] / base["tasks_per_min"], 1) if base else None
    return rows


def format_rows(rows: Sequence[dict[str, Any]], latency_s: float) -> str:
    """The table of one run, with when and where it ran."""
    lines = [
        f"Concurrency: scripted model (a test double), {latency_s:g} s per call; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine()}",
        "",
        "| B | tasks | wall s | tasks/min | vs B=1 | model calls | CPU ms per step "
        "| peak requests in flight | load before → after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch_size']} | {r['tasks']} | {r['wall_s']} | {r['tasks_per_min']} "
            f"| {r['vs_b1']}x | {r['model_calls']} | {r['cpu_ms_per_step']} "
            f"| {r['peak_requests_in_flight']} | {r['load_before']} → {r['load_after']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table (``--json`` also writes the raw figures)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per model call")
    parser.add_argument("--batch-sizes", type=_ints, default=[1, 16, 64, 256])
    parser.add_argument("--tasks-b1", type=int, default=4, help="tasks at B=1")
    parser.add_argument("--batches", type=int, default=1, help="batches at every B > 1")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--workdir", help="keep the stores and runs here")
    args = parser.parse_args(argv)
    with _workdir(args.workdir) as root:
        rows = bench_concurrency(
            args.batch_sizes,
            tasks_b1=args.tasks_b1,
            batches=args.batches,
            latency_s=args.latency,
            root=root,
            log=lambda line: print(line, flush=True),
        )
    print(format_rows(rows, args.latency))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
