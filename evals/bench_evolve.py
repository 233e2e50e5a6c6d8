"""Evolve benchmark: parallel speed-up of batches, and the cost of absorbing vs library size.

Two measurements, printed side by side by one run. Both drive the real graphs,
store and sandbox with the scripted team (:mod:`insitu.testing.team`), a test
double that answers from a fixed script: the figures describe insitu's
orchestration, **not model results**.

1. **Parallel speed-up.** ``--tasks`` tasks of ``scripted_stream`` are solved by
   :func:`insitu.evolve.evolve` once per batch size B (``--batch-sizes``), each
   time with a fresh store (the ``hashing`` embedding: deterministic and
   instant, so the store is not slowed by MiniLM) and one shared sandbox (warm
   workers, as one process would have; its memo of verified tools is emptied before
   each B). The scripted model sleeps ``--latency``
   seconds per call, standing in for an endpoint. Episodes of a batch run in
   parallel (``batch_concurrency`` = B). Printed per B: wall time, speed-up vs B=1, and
   the share of the wall time spent outside the model.

   How model time is measured. The model is a :class:`TimedScriptedChatModel`:
   every call records its start, end and episode (the ``solve_task:<id>``
   checkpoint namespace of the calling node; calls outside an episode, the
   absorber's, belong to their batch). A call's time is the whole of
   ``_generate`` (the simulated latency plus composing the scripted reply).

   Definition (critical path). Episodes of a batch overlap, so model time is
   not summed over episodes. A batch cannot finish before its slowest chain of
   model calls has: the longest per-episode sum of call times, plus the
   batch-level (absorber) calls. So::

       critical model time = sum over batches of
                             (max over its episodes of the episode's model time
                              + the batch's absorber model time)
       outside-model share = 1 - critical model time / wall time

   This is strict: time an episode waits for a CPU, a sandbox worker, the GIL
   or a lock counts as outside the model even while other episodes' model calls
   are in flight. It equals the usual definition (``1 - model time / wall``)
   at B=1. The wall time is then split along the same critical path:

   * ``model``: the critical model time above;
   * ``episode other``: per batch, the slowest episode's wall time minus the
     critical model time (sandbox calls, store searches, LangGraph, waiting);
   * ``batch other``: per batch, batch wall time minus its slowest episode
     (fan-out, absorbing, the commit, checkpoints);
   * ``run other``: the rest (compiling the graph, run files).

   Also printed: the largest number of episodes seen in flight at once, the
   share of wall time with no model call in flight at all (a looser bound),
   per-episode medians of the time outside model calls, and, summed over all
   threads, time in sandbox and store calls (measured by thin timing proxies
   around the shared ``Sandbox`` and ``ToolStore``), the process's CPU time,
   and the first-call stagger: per batch, how much later than the first episode
   the last one made its first model call (each episode needs CPU under one
   interpreter lock before it can; a floor of the critical-path share).
   Targets: B=16 at least 12x faster than B=1; at most 5% outside the model.

   ``--what-if`` then repeats the batch sizes under diagnostics that each
   remove one suspected cost, to show where the time goes (they are not the
   shipped behaviour): ``prewarmed sandbox`` starts a warm sandbox worker for
   every task's working directory before the clock starts (workers are keyed
   by working directory, so each episode otherwise starts a fresh one on its
   first tool call), with a pool large enough to keep them all; ``prewarmed
   sandbox + memory checkpoints`` also swaps the run's SQLite checkpointer
   for LangGraph's in-memory saver (``insitu.checkpoints.sqlite_checkpointer`` is
   patched in this process only).

2. **Absorb cost vs library size.** For each ``--sizes`` N a fresh store gets N
   synthetic tools in one ``store.commit(ChangeSet)`` (the thirty
   ``tool_store.testing.CATALOGUE`` tools first, then generated ones with
   varied descriptions and inputs), then :func:`insitu.nodes.absorb.absorb_batch`
   absorbs one fixed batch of 8 new tools: 4 near-duplicates of catalogue
   tools (present at every N) and 4 unrelated tools. The absorber is scripted
   (it confirms the known near-duplicate pairs and merges each into the
   library tool, a merge that passes the union of tests in the sandbox) and
   counted: LLM calls, prompt tokens (about 4 characters a token, the test
   double's estimate), candidate groups, confirmed groups, time. A second
   table fixes the library at the largest N and varies the number of
   near-duplicates in the batch (0, 2, 4, 8 of 8): the calls follow the
   candidate groups, not the library. ``--absorb-embedding`` (default MiniLM,
   whose cosines the default grouping threshold was chosen for).

Usage::

    python -m insitu.evals.bench_evolve [--tasks 64] [--latency 0.1]
        [--batch-sizes 1,4,16] [--sizes 10,100,1000] [--skip-speedup] [--skip-absorb]
        [--what-if] [--absorb-embedding minilm|hashing] [--json PATH] [--workdir DIR]

The figures and their analysis are in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

from langchain_core.runnables.config import var_child_runnable_config
from pydantic import PrivateAttr

from insitu import aio
from insitu.testing.scripted import ScriptedChatModel, estimate_tokens
from insitu.testing.team import prompt_text

#: Target of this project: speed-up of B=16 over B=1.
TARGET_SPEEDUP = 12.0
#: Target of this project: largest share of wall time outside the model.
TARGET_OUTSIDE_SHARE = 0.05
#: The batch size the speed-up target is about.
TARGET_BATCH = 16
#: Smallest ``batch_concurrency`` used (B=1 runs one episode at a time).
MIN_CONCURRENCY = 1
#: Configurations of the speed-up measurement: the shipped one, then what-if
#: diagnostics that remove one suspected cost at a time (``--what-if``).
WHAT_IFS = (
    "as shipped",
    "prewarmed sandbox",
    "prewarmed sandbox + memory checkpoints",
)
#: New tools absorbed per batch in the absorb measurement.
ABSORB_BATCH = 8

_ROLE_MARKERS = (
    ("You are the Manager", "manager"),
    ("You are the ToolDeveloper. Several tools", "merger"),
    ("You are the ToolDeveloper. An existing tool", "repair"),
    ("You are the ToolDeveloper", "tool_developer"),
    ("You are the Executor", "executor"),
    ("You are the Integrator", "integrator"),
    ("You are reviewing one finished task", "reflection"),
    ("You are the Aggregator", "aggregator"),
)


# ------------------------------------------------------------------ instruments


def _role_of(text: str) -> str:
    for marker, role in _ROLE_MARKERS:
        if text.startswith(marker):
            return role
    return "other"


def _episode_of_current_call() -> str | None:
    """The ``solve_task:<id>`` namespace of the calling node, or ``None`` outside an episode."""
    config = var_child_runnable_config.get() or {}
    namespace = (config.get("metadata") or {}).get("checkpoint_ns") or (
        config.get("configurable") or {}
    ).get("checkpoint_ns")
    head = str(namespace or "").split("|", 1)[0]
    return head if head.startswith("solve_task:") else None


class TimedScriptedChatModel(ScriptedChatModel):
    """A :class:`ScriptedChatModel` that records every call (a test double, timed).

    Each record is ``{"episode", "role", "start", "end", "prompt_tokens", "task"}``:
    the episode's checkpoint namespace (``None`` outside an episode), the role
    recognised from the prompt, ``time.perf_counter()`` around the whole of
    ``_generate`` (latency sleep included), the prompt's estimated tokens (the
    estimate the test double reports as ``input_tokens``) and the task text
    when the prompt has a ``## Task`` section.
    """

    _records: list[dict[str, Any]] = PrivateAttr(default_factory=list)
    _records_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def records(self) -> list[dict[str, Any]]:
        """A copy of the call records so far."""
        with self._records_lock:
            return list(self._records)

    def _record(self, messages: Sequence[Any], start: float, end: float) -> None:
        first = prompt_text(messages)
        task = None
        if "\n## Task\n" in first:
            task = first.split("\n## Task\n", 1)[1].split("\n", 1)[0].strip()
        text = "".join(str(m.content) for m in messages)
        with self._records_lock:
            self._records.append(
                {
                    "episode": _episode_of_current_call(),
                    "role": _role_of(first),
                    "start": start,
                    "end": end,
                    "prompt_tokens": estimate_tokens(text),
                    "task": task,
                }
            )

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        start = time.perf_counter()
        try:
            return super()._generate(messages, stop, run_manager, **kwargs)
        finally:
            self._record(messages, start, time.perf_counter())

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
        start = time.perf_counter()
        try:
            return await super()._agenerate(messages, stop, run_manager, **kwargs)
        finally:
            self._record(messages, start, time.perf_counter())

    def _stream(self, messages, stop=None, run_manager=None, **kwargs):
        start = time.perf_counter()
        try:
            yield from super()._stream(messages, stop, run_manager, **kwargs)
        finally:
            self._record(messages, start, time.perf_counter())


class TimingProxy:
    """Delegates to an object and times each method call (thread-safe totals).

    Used around the shared ``Sandbox`` and ``ToolStore``: the graphs receive
    the proxy and never notice (nothing checks their types). Attributes that
    are not callable are passed through untouched; the proxy's own names
    start with ``timing_`` so that they cannot hide the target's.
    """

    def __init__(self, target: Any) -> None:
        self._target = target
        self._lock = threading.Lock()
        self.totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])

    def timing_reset(self) -> None:
        """Forget the totals."""
        with self._lock:
            self.totals.clear()

    def timing_snapshot(self) -> dict[str, dict[str, float]]:
        """Return ``{method: {"calls", "seconds"}}``."""
        with self._lock:
            return {k: {"calls": v[0], "seconds": round(v[1], 3)} for k, v in self.totals.items()}

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        # Methods only: an sqlite3 connection (``store.db``) is callable too.
        if not inspect.isroutine(value) or name.startswith("__"):
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                with self._lock:
                    entry = self.totals[name]
                    entry[0] += 1
                    entry[1] += elapsed

        return timed


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux
        return "n/a"


def machine() -> str:
    """One line describing this machine."""
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )


# ------------------------------------------------------------------ 1. speed-up


def _union_seconds(intervals: Sequence[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _max_overlap(spans: Sequence[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    live = best = 0
    for _, delta in events:
        live += delta
        best = max(best, live)
    return best


def analyse_run(
    records: Sequence[dict[str, Any]],
    batch_ends: Sequence[float],
    steps: Sequence[dict[str, Any]],
    predictions: Sequence[dict[str, Any]],
    started: float,
    wall: float,
) -> dict[str, Any]:
    """Split a run's wall time along its critical path (see the module doc).

    Args:
        records: The timed model calls.
        batch_ends: ``perf_counter`` when each batch's step line was written.
        steps: The run's ``steps.jsonl`` rows (batch wall times).
        predictions: The run's ``predictions.jsonl`` rows (episode wall times).
        started: ``perf_counter`` when ``evolve`` was called.
        wall: Its wall time in seconds.
    """
    bounds = [started, *batch_ends]

    def batch_of(t: float) -> int:
        for i in range(1, len(bounds)):
            if t <= bounds[i]:
                return i
        return len(bounds) - 1

    episode_model: dict[str, float] = defaultdict(float)
    episode_span: dict[str, list[float]] = {}
    episode_batch: dict[str, int] = {}
    episode_task: dict[str, str] = {}
    batch_level_model: dict[int, float] = defaultdict(float)
    for r in records:
        seconds = r["end"] - r["start"]
        if r["episode"] is None:
            batch_level_model[batch_of(r["start"])] += seconds
            continue
        key = r["episode"]
        episode_model[key] += seconds
        span = episode_span.setdefault(key, [r["start"], r["end"]])
        span[0], span[1] = min(span[0], r["start"]), max(span[1], r["end"])
        episode_batch.setdefault(key, batch_of(r["start"]))
        if r["task"] and key not in episode_task:
            episode_task[key] = r["task"]
    n_batches = len(batch_ends)
    chains: dict[int, float] = defaultdict(float)
    for key, seconds in episode_model.items():
        b = episode_batch[key]
        chains[b] = max(chains[b], seconds)
    critical_model = sum(chains[b] + batch_level_model[b] for b in range(1, n_batches + 1))

    # Episodes are matched with their prediction rows by question and batch (the
    # stream can repeat a question; repeats within a batch are taken in order).
    by_question: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for p in predictions:
        by_question[(p["question"], int(p["batch"]))].append(p)
    episode_walls: dict[int, float] = defaultdict(float)
    outside: list[float] = []
    for key, seconds in sorted(episode_model.items(), key=lambda kv: episode_span[kv[0]][0]):
        rows = by_question.get((episode_task.get(key, ""), episode_batch[key]))
        prediction = rows.pop(0) if rows else None
        if prediction is None or prediction.get("wall_time_s") is None:
            continue
        episode_wall = float(prediction["wall_time_s"])
        b = episode_batch[key]
        episode_walls[b] = max(episode_walls[b], episode_wall)
        outside.append(max(0.0, episode_wall - seconds))
    slowest = sum(episode_walls.values())
    batch_walls = sum(float(s["wall_time_s"]) for s in steps)
    episodes = len(episode_model)
    idle = wall - _union_seconds([(r["start"], r["end"]) for r in records])
    return {
        "model_calls": len(records),
        "episodes": episodes,
        "episodes_matched": len(outside),
        "max_parallel_episodes": _max_overlap([tuple(s) for s in episode_span.values()]),
        "model_seconds_summed": round(sum(r["end"] - r["start"] for r in records), 3),
        "critical_model_s": round(critical_model, 3),
        "outside_share": round(1 - critical_model / wall, 4) if wall else None,
        "no_call_in_flight_share": round(idle / wall, 4) if wall else None,
        "split_s": {
            "model": round(critical_model, 3),
            "episode_other": round(slowest - sum(chains[b] for b in range(1, n_batches + 1)), 3),
            "batch_other": round(batch_walls - slowest - sum(batch_level_model.values()), 3),
            "run_other": round(wall - batch_walls, 3),
        },
        "episode_outside_ms": {
            "median": round(1000 * statistics.median(outside), 1) if outside else None,
            "mean": round(1000 * statistics.fmean(outside), 1) if outside else None,
            "max": round(1000 * max(outside), 1) if outside else None,
        },
        "mean_call_ms": round(1000 * statistics.fmean(r["end"] - r["start"] for r in records), 1)
        if records
        else 0.0,
        "episode_model_ms_median": round(1000 * statistics.median(episode_model.values()), 1)
        if episode_model
        else None,
        "first_call_stagger_ms": _first_call_stagger_ms(records, episode_batch),
    }


def _first_call_stagger_ms(
    records: Sequence[dict[str, Any]], episode_batch: dict[str, int]
) -> float | None:
    """Mean over batches of (last - first) start of the episodes' first model calls.

    The episodes of a batch are launched together; each needs some CPU (under
    one interpreter lock) before it can call its model, so the last one starts
    this much later than the first. It is a floor of the batch's time outside
    the model on its critical path.
    """
    first: dict[str, float] = {}
    for r in records:
        if r["episode"] is not None:
            first[r["episode"]] = min(first.get(r["episode"], r["start"]), r["start"])
    by_batch: dict[int, list[float]] = defaultdict(list)
    for episode, start in first.items():
        by_batch[episode_batch[episode]].append(start)
    spans = [max(v) - min(v) for v in by_batch.values() if len(v) > 1]
    return round(1000 * statistics.fmean(spans), 1) if spans else None


def run_speedup(
    batch_size: int,
    *,
    tasks: int,
    latency_s: float,
    sandbox: Any,
    root: Path,
    variant: str = "as shipped",
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Solve ``tasks`` scripted tasks with ``evolve`` in batches of ``batch_size``; measure.

    ``variant`` is ``"as shipped"``, or one of the what-if diagnostics of
    :data:`WHAT_IFS` (``"prewarmed sandbox"``: a warm sandbox worker is started
    for every task's working directory before the clock starts;
    ``"prewarmed sandbox + memory checkpoints"``: also LangGraph's in-memory
    saver instead of the run's SQLite checkpointer, patched in this process).
    """
    from insitu.evals.tasks import Task
    from insitu.evolve import PREDICTIONS_FILE, STEPS_FILE, evolve, read_jsonl
    from insitu.testing.team import SCRIPTED_LABEL, ScriptedTeam, scripted_stream
    from insitu.tool_store import ToolStore

    stream = [Task(**t) for t in scripted_stream(tasks)]
    team = ScriptedTeam()
    model = TimedScriptedChatModel(
        responder=team.respond, latency_s=latency_s, label=SCRIPTED_LABEL
    )
    concurrency = max(batch_size, MIN_CONCURRENCY)
    slug = f"b{batch_size}-{WHAT_IFS.index(variant)}"
    run_dir = root / f"run-{slug}"
    store_dir = root / "stores" / f"store-{slug}"
    raw_store = ToolStore.open(store_dir, embedding="hashing")
    store = TimingProxy(raw_store)
    prewarm_s = (
        _prewarm(sandbox, store_dir, [t.id for t in stream]) if variant != WHAT_IFS[0] else 0
    )
    sandbox.timing_reset()
    # Each batch size starts without the verdicts (describes, admission test runs) of the
    # runs before it, as a new process would: its first batch verifies its tools itself.
    sandbox.verdicts.clear()
    batch_ends: list[float] = []
    load_before = _load()
    cpu_before = _cpu_seconds()
    patch = (
        mock.patch("insitu.checkpoints.sqlite_checkpointer", _memory_checkpointer)
        if variant == WHAT_IFS[2]
        else nullcontext()
    )
    started = time.perf_counter()
    try:
        with patch:
            summary = evolve(
                stream,
                run_dir=run_dir,
                batch_size=batch_size,
                models=model,
                tool_store=store,  # type: ignore[arg-type]
                sandbox=sandbox,
                context={
                    "store_dir": str(store_dir),
                    "embedding": "hashing",
                    "batch_concurrency": concurrency,
                },
                system="bench-evolve (scripted test double)",
                scripted=True,
                on_batch=lambda step: (
                    batch_ends.append(time.perf_counter()),
                    log(
                        f"B={batch_size}: batch {step['step']} done in {step['wall_time_s']:.2f} s"
                    ),
                ),
            )
        wall = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu_before
    finally:
        raw_store.close()
    predictions = read_jsonl(run_dir / PREDICTIONS_FILE)
    result = analyse_run(
        model.records, batch_ends, read_jsonl(run_dir / STEPS_FILE), predictions, started, wall
    )
    calls = sandbox.timing_snapshot()
    store_calls = store.timing_snapshot()
    unfinished = [
        {"id": p["id"], "status": p["status"], "error": p.get("error"), "answer": p["answer"]}
        for p in predictions
        if p["status"] != "completed"
    ]
    episodes = max(1, result["episodes"])
    result.update(
        {
            "batch_size": batch_size,
            "variant": variant,
            "prewarm_s": round(prewarm_s, 2),
            "batch_concurrency": concurrency,
            "tasks": tasks,
            "latency_s": latency_s,
            "wall_s": round(wall, 3),
            "completed": summary.completed,
            "unfinished": unfinished,
            "library_size": summary.library_size,
            "process_cpu_s": round(cpu, 2),
            "cpu_per_wall": round(cpu / wall, 2) if wall else None,
            "sandbox_calls": calls,
            "store_calls": store_calls,
            "sandbox_ms_per_episode": round(
                1000 * sum(v["seconds"] for v in calls.values()) / episodes, 1
            ),
            "store_ms_per_episode": round(
                1000 * sum(v["seconds"] for v in store_calls.values()) / episodes, 1
            ),
            "load_before": load_before,
            "load_after": _load(),
        }
    )
    return result


def bench_speedup(
    batch_sizes: Sequence[int],
    *,
    tasks: int,
    latency_s: float,
    root: Path,
    log: Callable[[str], None],
    variants: Sequence[str] = (WHAT_IFS[0],),
) -> list[dict[str, Any]]:
    """Run every batch size (and variant) with one shared, warmed sandbox per variant.

    The shipped configuration uses the default ``SandboxSettings``; the
    prewarmed variants raise ``max_workers`` so that every task's worker fits
    next to the workers that admission starts (else the pool's LRU eviction
    would close the next tasks' prewarmed workers first).
    """
    from insitu.sandbox import Sandbox, SandboxSettings, ToolEnvironment

    results = []
    for variant in variants:
        # As insitu.services.open_sandbox does: warm workers shared by a workspace
        # root (here the folder of every store, which must not hold the tool
        # environment), a pool sized to the batch.
        shared_root = str((root / "stores").resolve())
        settings = SandboxSettings(
            workspace_root=shared_root, max_workers=max(8, 2 * max(batch_sizes) + 4)
        )
        if variant != WHAT_IFS[0]:
            settings = SandboxSettings(
                workspace_root=shared_root, max_workers=tasks + 2 * max(batch_sizes) + 16
            )
        slug = WHAT_IFS.index(variant)
        raw = Sandbox(settings, toolenv=ToolEnvironment(root / f"toolenv-{slug}"))
        sandbox = TimingProxy(raw)
        try:
            _warm(raw, root)
            rows = []
            for batch_size in batch_sizes:
                log(f"speed-up ({variant}): B={batch_size}, {tasks} tasks, {latency_s:g} s/call")
                rows.append(
                    run_speedup(
                        batch_size,
                        tasks=tasks,
                        latency_s=latency_s,
                        sandbox=sandbox,
                        root=root,
                        variant=variant,
                        log=log,
                    )
                )
            base = next((r for r in rows if r["batch_size"] == 1), None)
            for r in rows:
                r["speedup"] = round(base["wall_s"] / r["wall_s"], 2) if base else None
            results += rows
        finally:
            raw.close()
    return results


def _prewarm(sandbox: Any, store_dir: Path, task_ids: Sequence[str]) -> float:
    """What-if: start a warm worker for every task's working directory; return seconds.

    The episode's working directory is ``<store>/workspaces/<task id>``
    (``nodes/workspace.py``); a worker is keyed by that directory, so this is
    what a sandbox that started workers ahead of time would give the episodes.
    """
    from concurrent.futures import ThreadPoolExecutor

    from insitu.testing.team import SUMMARIZE_NUMBERS

    started = time.perf_counter()
    base = store_dir.resolve() / "workspaces"

    def warm(task_id: str) -> None:
        workdir = base / task_id.replace(":", "_")
        workdir.mkdir(parents=True, exist_ok=True)
        sandbox.call(SUMMARIZE_NUMBERS.source, {"values": [1]}, workdir=workdir)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(warm, task_ids))
    return time.perf_counter() - started


@contextmanager
def _memory_checkpointer(
    directory: Any, filename: str = "checkpoints.sqlite", **_options: Any
) -> Iterator[Any]:
    """What-if stand-in for the SQLite checkpointer: LangGraph's in-memory saver."""
    from langgraph.checkpoint.memory import InMemorySaver

    yield InMemorySaver()


def _warm(sandbox: Any, root: Path) -> None:
    """Start the sandbox's first worker so that B=1 does not pay for it alone."""
    from insitu.testing.team import SUMMARIZE_NUMBERS

    workdir = root / "warm"
    workdir.mkdir(parents=True, exist_ok=True)
    sandbox.call(SUMMARIZE_NUMBERS.source, {"values": [1, 2]}, workdir=workdir)


def _fmt_ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _fmt_share(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _speedup_rows(results: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        f"{'B':>3} {'conc':>4} {'wall s':>7} {'speed-up':>8} {'calls':>5} {'call ms':>7} "
        f"{'par eps':>7} {'crit model s':>12} {'outside model':>13} {'no call in flight':>17} "
        f"{'done':>5}",
    ]
    for r in results:
        speed = "n/a" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
        lines.append(
            f"{r['batch_size']:>3} {r['batch_concurrency']:>4} {r['wall_s']:>7.2f} {speed:>8} "
            f"{r['model_calls']:>5} {r['mean_call_ms']:>7.1f} {r['max_parallel_episodes']:>7} "
            f"{r['critical_model_s']:>12.2f} {_fmt_share(r['outside_share']):>13} "
            f"{_fmt_share(r['no_call_in_flight_share']):>17} {r['completed']:>5}"
        )
    lines += [
        "",
        f"{'B':>3} {'model s':>7} {'episode other s':>15} {'batch other s':>13} "
        f"{'run other s':>11} {'ep outside ms med/max':>21} {'sandbox ms/ep':>13} "
        f"{'store ms/ep':>11} {'1st-call stagger ms':>19} {'CPU/wall':>8} {'load 1/5/15':>13}",
    ]
    for r in results:
        split, ep = r["split_s"], r["episode_outside_ms"]
        outside_ms = f"{ep['median']:.0f} / {ep['max']:.0f}"
        lines.append(
            f"{r['batch_size']:>3} {split['model']:>7.2f} {split['episode_other']:>15.2f} "
            f"{split['batch_other']:>13.2f} {split['run_other']:>11.2f} "
            f"{outside_ms:>21} {r['sandbox_ms_per_episode']:>13.1f} "
            f"{r['store_ms_per_episode']:>11.1f} {_fmt_ms(r['first_call_stagger_ms']):>19} "
            f"{r['cpu_per_wall']:>8.2f} "
            f"{r['load_before']:>13}"
        )
    return lines


def format_speedup(results: Sequence[dict[str, Any]], latency_s: float, tasks: int) -> str:
    """The speed-up tables, as printed (the shipped configuration, then any what-ifs)."""
    shipped = [r for r in results if r["variant"] == WHAT_IFS[0]]
    lines = [
        f"1. Parallel speed-up: {tasks} scripted_stream tasks, scripted model sleeping "
        f"{latency_s:g} s per call",
        "   (a test double: not model results; hashing embedding; one shared sandbox;",
        "   conc = batch_concurrency; call ms = mean measured model call; par eps = most "
        "episodes in flight at once)",
        "",
        *_speedup_rows(shipped),
    ]
    for r in results:
        for task in r.get("unfinished", []):
            lines.append(
                f"   B={r['batch_size']} ({r['variant']}): task {task['id']} {task['status']}: "
                f"{(task['error'] or task['answer'] or '')[:300]}"
            )
    target = next((r for r in shipped if r["batch_size"] == TARGET_BATCH), None)
    if target is not None and target.get("speedup") is not None:
        met = "met" if target["speedup"] >= TARGET_SPEEDUP else "NOT met"
        lines.append(
            f"\n   Target B={TARGET_BATCH} >= {TARGET_SPEEDUP:g}x: {target['speedup']:.2f}x ({met})"
        )
    if shipped:
        worst = max(shipped, key=lambda r: r["outside_share"] or 0.0)
        met = "met" if (worst["outside_share"] or 0.0) <= TARGET_OUTSIDE_SHARE else "NOT met"
        lines.append(
            f"   Target outside model <= {100 * TARGET_OUTSIDE_SHARE:g}%: worst "
            f"{_fmt_share(worst['outside_share'])} at B={worst['batch_size']} ({met})"
        )
    lines += [
        "   outside model = 1 - (sum over batches of the slowest episode's model time + "
        "absorber model time) / wall",
        "   split: model + episode other (slowest episode minus its model time) + batch other "
        "(fan-out, absorb, commit) + run other = wall",
        "   1st-call stagger: per batch, how much later the last episode made its first model "
        "call than the first one (mean over batches)",
    ]
    for variant in WHAT_IFS[1:]:
        rows = [r for r in results if r["variant"] == variant]
        if not rows:
            continue
        warm = ", ".join(f"B={r['batch_size']} {r['prewarm_s']:.1f} s" for r in rows)
        lines += [
            "",
            f"   What-if: {variant} (diagnostic, not the shipped behaviour; prewarming "
            f"not timed: {warm})",
            *_speedup_rows(rows),
        ]
    return "\n".join(lines)


# ------------------------------------------------------------------ 2. absorb


def _words(text: str, sep: str | None = None) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split(sep) if w.strip())


_VERBS = _words(
    "compute parse convert fetch extract count validate generate merge split filter sort "
    "summarize translate detect compress encode decode resize render plot query normalize "
    "tokenize classify estimate forecast schedule download upload format clean match"
)
_OBJECTS = _words(
    "variance xml timezone image audio video pdf matrix vector graph sentence email "
    "address phone invoice order stock price weather route distance calendar event log "
    "metric token folder archive report chart histogram dataset column"
)
_QUALIFIERS = _words(
    "from a string|between two units|in a file on disk|with a regular expression|"
    "by a given key|as a dictionary|per day|for a city|in a zip archive|with missing values|"
    "from an API response|for every row|using a template|with a tolerance|"
    "within a date range|for a user",
    "|",
)
_RETURNS = _words(
    "Returns the result as JSON.|Returns a list of records.|Returns a number.|"
    "Returns the cleaned text.|Returns a path to the written file.|Returns true or false.",
    "|",
)
_FIELDS = _words("text path url date amount city query rows key pattern limit unit format")

#: (new name, description, inputs, the catalogue tool it duplicates).
NEAR_DUPLICATES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    (
        "calculate_average",
        "Calculates the arithmetic mean (average) of a list of numbers.",
        ("values",),
        "compute_mean",
    ),
    (
        "split_csv_text",
        "Parses CSV text into a list of rows, each a list of cells.",
        ("text",),
        "parse_csv_rows",
    ),
    (
        "download_web_page",
        "Downloads a web page over HTTP and returns its HTML text.",
        ("url",),
        "fetch_web_page",
    ),
    (
        "tally_words",
        "Counts the words in a text and returns how many there are.",
        ("text",),
        "count_words",
    ),
    (
        "find_median_value",
        "Returns the median of a list of numbers.",
        ("values",),
        "compute_median",
    ),
    (
        "compute_standard_deviation",
        "Computes the population standard deviation of a list of numbers.",
        ("values",),
        "compute_std_dev",
    ),
    (
        "list_links",
        "Extracts every hyperlink target (href) from an HTML document.",
        ("html",),
        "extract_links",
    ),
    (
        "transform_temperature",
        "Converts a temperature value between Celsius and Fahrenheit.",
        ("value",),
        "convert_temperature",
    ),
)
#: (name, description, inputs) of tools unrelated to the library.
UNRELATED: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("encode_base64", "Encodes a text as a Base64 string.", ("text",)),
    ("compute_edit_distance", "Computes the Levenshtein edit distance of two strings.", ("a", "b")),
    ("convert_roman_numeral", "Writes an integer as a Roman numeral.", ("n",)),
    ("render_markdown_table", "Renders rows of cells as a Markdown table.", ("rows",)),
    ("check_palindrome", "Tells whether a word reads the same backwards.", ("word",)),
    ("roll_dice", "Rolls a number of six-sided dice and returns their faces.", ("count",)),
    ("compute_bmi", "Computes the body mass index from a weight and a height.", ("weight",)),
    ("shuffle_deck", "Shuffles a deck of 52 playing cards.", ("seed",)),
)


def library_specs(size: int, seed: int = 3) -> list[Any]:
    """``size`` varied tools: the catalogue's thirty first, then generated ones."""
    from insitu.tool_store.testing import CATALOGUE, make_spec

    specs = [make_spec(n, d, inputs=i) for n, d, i in CATALOGUE[:size]]
    rng = random.Random(seed)
    for i in range(len(specs), size):
        verb, obj = rng.choice(_VERBS), rng.choice(_OBJECTS)
        description = (
            f"{verb.capitalize()}s the {obj} {rng.choice(_QUALIFIERS)}, "
            f"{rng.choice(_QUALIFIERS)}. {rng.choice(_RETURNS)}"
        )
        inputs = tuple(dict.fromkeys(rng.sample(_FIELDS, rng.randint(1, 3))))
        specs.append(
            make_spec(f"{verb}_{obj}_{i}", description, inputs=inputs, body=f"return {{'i': {i}}}")
        )
    return specs


def new_batch(duplicates: int) -> tuple[list[Any], dict[str, str]]:
    """``ABSORB_BATCH`` new tools, ``duplicates`` of them near-duplicates of library tools.

    Returns:
        (specs, {new name: library tool it duplicates}).
    """
    from insitu.tool_store.testing import make_spec

    chosen = NEAR_DUPLICATES[:duplicates]
    specs = [make_spec(n, d, inputs=i, body="return {'result': 1}") for n, d, i, _ in chosen]
    specs += [
        make_spec(n, d, inputs=i, body="return {'result': 2}")
        for n, d, i in UNRELATED[: ABSORB_BATCH - duplicates]
    ]
    return specs, {n: lib for n, _, _, lib in chosen}


def scripted_absorber(sources: dict[str, Any], pairs: dict[str, str]) -> Callable[..., str]:
    """A responder for the absorber role (a test double).

    The Aggregator confirms exactly the known near-duplicate pairs present in a
    group; the Merger replies with the keeper's module, which passes the union
    of both members' tests (same inputs, same output).
    """
    import re

    def respond(messages: list[Any], tools: list[dict[str, Any]]) -> str:
        first = prompt_text(messages)
        role = _role_of(first)
        if role == "aggregator":
            listed = re.findall(r"^- (\w+) \(", first, re.MULTILINE)
            confirmed = [[n, pairs[n]] for n in listed if n in pairs and pairs[n] in listed]
            return json.dumps({"duplicates": confirmed, "reason": "scripted: known pairs"})
        if role == "merger":
            name = re.search(r"^Name: (\S+)", first, re.MULTILINE)
            spec = sources[name.group(1)] if name else None
            if spec is None:
                return "I cannot write that tool."
            tests = [t.model_dump(exclude_defaults=True) for t in spec.tests]
            return f"```python\n{spec.source}```\n```json\n{json.dumps(tests)}\n```"
        return "I am a scripted absorber and do not know this prompt."

    return respond


def run_absorb(
    library_size: int,
    duplicates: int,
    *,
    embedding: str,
    sandbox: Any,
    root: Path,
) -> dict[str, Any]:
    """Fill a fresh store with ``library_size`` tools; absorb one batch; count."""
    from insitu.context import InsituContext
    from insitu.nodes.absorb import absorb_batch
    from insitu.nodes.tool_developer import local_record
    from insitu.services import Services
    from insitu.tool_store import ChangeSet, ToolStore

    store_dir = Path(tempfile.mkdtemp(prefix=f"absorb-{library_size}-{duplicates}-", dir=root))
    library = library_specs(library_size)
    new, pairs = new_batch(duplicates)
    raw_store = ToolStore.open(store_dir, embedding=embedding)
    try:
        changes = ChangeSet(note=f"bench library of {library_size}")
        for spec in library:
            changes.add(spec, origin="manual")
        started = time.perf_counter()
        raw_store.commit(changes)
        fill_s = time.perf_counter() - started
        store = TimingProxy(raw_store)
        sources = {s.name: s for s in [*library, *new]}
        model = TimedScriptedChatModel(responder=scripted_absorber(sources, pairs))
        services = Services(models=model, tool_store=store, sandbox=sandbox)  # type: ignore[arg-type]
        context = InsituContext(store_dir=str(store_dir), embedding=embedding)  # type: ignore[arg-type]
        results = [
            {
                "task_id": f"t{i}",
                "new_tools": [
                    {**local_record(spec, task_id=f"t{i}").model_dump(mode="json"), "change": "new"}
                ],
            }
            for i, spec in enumerate(new)
        ]
        sandbox.timing_reset()
        started = time.perf_counter()
        change_set, report, _usage = aio.run(
            absorb_batch(
                results,
                batch_id=f"bench-{library_size}-{duplicates}",
                services=services,
                context=context,
                scratch_dir=store_dir / "scratch",
            )
        )
        absorb_s = time.perf_counter() - started
        records = model.records
        by_role: dict[str, int] = defaultdict(int)
        for r in records:
            by_role[r["role"]] += 1
        search = store.timing_snapshot().get("search", {"calls": 0, "seconds": 0.0})
        sandbox_s = sum(v["seconds"] for v in sandbox.timing_snapshot().values())
        return {
            "library_size": library_size,
            "near_duplicates": duplicates,
            "new_tools": len(new),
            "embedding": embedding,
            "fill_s": round(fill_s, 2),
            "groups": report.groups_proposed,
            "confirmed": report.groups_confirmed,
            "merged": len(report.merged),
            "llm_calls": len(records),
            "llm_calls_reported": report.llm_calls,
            "calls_by_role": dict(by_role),
            "prompt_tokens": sum(r["prompt_tokens"] for r in records),
            "prompt_tokens_reported": report.prompt_tokens,
            "absorb_s": round(absorb_s, 3),
            "search_calls": search["calls"],
            "search_s": round(search["seconds"], 3),
            "sandbox_s": round(sandbox_s, 3),
            "changes": len(change_set),
        }
    finally:
        raw_store.close()


def bench_absorb(
    sizes: Sequence[int],
    *,
    embedding: str,
    root: Path,
    log: Callable[[str], None],
) -> dict[str, list[dict[str, Any]]]:
    """Absorb cost vs library size, then vs the number of near-duplicates."""
    from insitu.sandbox import Sandbox, SandboxSettings

    raw = Sandbox(SandboxSettings())
    sandbox = TimingProxy(raw)
    try:
        _warm(raw, root)
        by_size = []
        for size in sizes:
            log(f"absorb: library of {size}, {ABSORB_BATCH} new tools (4 near-duplicates) ...")
            by_size.append(run_absorb(size, 4, embedding=embedding, sandbox=sandbox, root=root))
        largest = max(sizes)
        by_groups = []
        for duplicates in (0, 2, 4, 8):
            log(f"absorb: library of {largest}, {duplicates} near-duplicates ...")
            by_groups.append(
                run_absorb(largest, duplicates, embedding=embedding, sandbox=sandbox, root=root)
            )
        return {"by_library_size": by_size, "by_near_duplicates": by_groups}
    finally:
        raw.close()


def format_absorb(result: dict[str, list[dict[str, Any]]], embedding: str) -> str:
    """The absorb tables, as printed."""
    header = (
        f"{'library':>7} {'commit s':>8} {'near-dups':>9} {'groups':>6} {'confirmed':>9} "
        f"{'LLM calls':>9} "
        f"{'(agg+merge)':>11} {'prompt tok':>10} {'absorb s':>8} {'search s':>8} "
        f"{'sandbox s':>9} {'other s':>7}"
    )

    def row(r: dict[str, Any]) -> str:
        roles = r["calls_by_role"]
        split = f"{roles.get('aggregator', 0)}+{roles.get('merger', 0)}"
        other = r["absorb_s"] - r["search_s"] - r["sandbox_s"]
        return (
            f"{r['library_size']:>7} {r['fill_s']:>8.2f} {r['near_duplicates']:>9} "
            f"{r['groups']:>6} "
            f"{r['confirmed']:>9} {r['llm_calls']:>9} {split:>11} {r['prompt_tokens']:>10} "
            f"{r['absorb_s']:>8.2f} {r['search_s']:>8.3f} {r['sandbox_s']:>9.2f} {other:>7.2f}"
        )

    lines = [
        f"2. Absorb cost vs library size: absorb_batch of {ABSORB_BATCH} new tools, scripted "
        f"absorber (test double), {embedding} embedding",
        "",
        "   a) library size varies, batch fixed (4 near-duplicates + 4 unrelated):",
        header,
        *[row(r) for r in result["by_library_size"]],
        "",
        "   b) library fixed, near-duplicates in the batch vary:",
        header,
        *[row(r) for r in result["by_near_duplicates"]],
        "",
        "   commit s = filling the library (one ChangeSet, embedding included); absorb s = "
        "absorb_batch, of which",
        "   search s = library neighbours (store.search, 5 per new tool), sandbox s = merge "
        "admission; other = grouping, prompts",
        "   LLM calls = one Aggregator call per candidate group + one Merger call per "
        "confirmed set; prompt tokens estimated at 4 chars/token",
    ]
    mismatched = [
        r
        for r in [*result["by_library_size"], *result["by_near_duplicates"]]
        if r["llm_calls"] != r["llm_calls_reported"]
    ]
    if mismatched:
        lines.append(f"   WARNING: AbsorbReport.llm_calls differs from counted calls: {mismatched}")
    return "\n".join(lines)


# ------------------------------------------------------------------ CLI


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


@contextmanager
def _workdir(keep: str | None) -> Iterator[Path]:
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    # Like a real store (./.insitu), not under /tmp: the sandbox shares warm workers
    # across episode workdirs only for a workspace root it can confine calls in.
    base = "/var/tmp" if os.path.isdir("/var/tmp") else None
    with tempfile.TemporaryDirectory(prefix="bench-evolve-", dir=base) as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables (``--json`` also writes the raw figures)."""
    parser = argparse.ArgumentParser(
        prog="python -m insitu.evals.bench_evolve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per model call")
    parser.add_argument("--batch-sizes", type=_ints, default=[1, 4, 16])
    parser.add_argument("--sizes", type=_ints, default=[10, 100, 1000], help="library sizes")
    parser.add_argument("--absorb-embedding", choices=["minilm", "hashing"], default="minilm")
    parser.add_argument("--skip-speedup", action="store_true")
    parser.add_argument("--skip-absorb", action="store_true")
    parser.add_argument(
        "--what-if",
        action="store_true",
        help="also run the speed-up with prewarmed sandbox workers, then also in-memory "
        "checkpoints (diagnostics of where the time goes)",
    )
    parser.add_argument("--json", help="also write the raw figures to this file")
    parser.add_argument("--workdir", help="keep stores and runs here (default: a temp dir)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    command = "python -m insitu.evals.bench_evolve " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    out: dict[str, Any] = {
        "command": command.strip(),
        "date": datetime.now(UTC).date().isoformat(),
        "machine": machine(),
        "load_at_start": _load(),
    }
    print(f"$ {out['command']}\n{out['date']} | {out['machine']} | load {out['load_at_start']}\n")
    with _workdir(args.workdir) as root:
        if not args.skip_speedup:
            out["speedup"] = bench_speedup(
                args.batch_sizes,
                tasks=args.tasks,
                latency_s=args.latency,
                root=root,
                log=log,
                variants=WHAT_IFS if args.what_if else WHAT_IFS[:1],
            )
            print(format_speedup(out["speedup"], args.latency, args.tasks), flush=True)
            print()
        if not args.skip_absorb:
            out["absorb"] = bench_absorb(
                args.sizes, embedding=args.absorb_embedding, root=root, log=log
            )
            print(format_absorb(out["absorb"], args.absorb_embedding), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
