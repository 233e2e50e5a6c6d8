"""Prompt scaling: the Manager's prompt against "list every tool", as the library grows.

For each library size N a fresh store (temporary directory) is filled with N
synthetic, varied tools in one commit (:func:`insitu.evals.bench_store.synthetic_tools`:
verb_object names, descriptions and input fields drawn from word lists with a
fixed seed). Then, for each of :data:`TASKS` (twenty realistic task texts):

* **insitu**: the Manager's prompt exactly as the episode renders it, through
  :func:`insitu.nodes.manager.retrieve_candidates` (hybrid search for
  ``retrieval_k`` candidates, default 8) and
  :func:`insitu.nodes.manager.manager_messages`;
* **listing**: the same prompt with *every* library tool as a candidate, which
  is what an agent that lists its whole tool library in the prompt pays;
* **search latency**: p50/p90 of ``store.search(task, k=retrieval_k)``, the
  query embedding included (the query-vector cache is cleared before each
  search), ``repeats`` times per task.

Sizes are reported in characters and in *estimated* tokens (characters / 4;
no tokenizer is used, so the figures are an estimate, close to what GPT-style
BPE tokenizers give for English prose).

Usage::

    python -m insitu.evals.scaling [--sizes 100,1000,10000] [--embedding minilm|hashing]
        [--retrieval-k 8] [--repeats 5] [--json PATH]

also ``insitu eval scaling`` (same options). With MiniLM, filling 10,000 tools
embeds each of them once: about two minutes on 2 shared cores (figures in
``docs/performance.md``). The hashing embedding fills in seconds and gives the
same prompt sizes, but its search latencies leave out MiniLM's query embedding.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SIZES = (100, 1000, 10000)
#: The real model by default: it embedded 10,000 synthetic tools in 123 s of wall
#: time (116 s CPU) on 2 cores shared with other jobs (``docs/performance.md``),
#: within the ~2 min budget of a benchmark run, so no size falls back to hashing.
DEFAULT_EMBEDDING = "minilm"
DEFAULT_RETRIEVAL_K = 8
#: Timed searches per task (query embedding included each time).
DEFAULT_REPEATS = 5
#: Characters per token of the token estimate (no tokenizer is used).
CHARS_PER_TOKEN = 4
TOKEN_NOTE = f"tokens are estimated as characters / {CHARS_PER_TOKEN} (no tokenizer), not counted"

#: Realistic task texts, as users would give them to ``insitu run``.
TASKS: tuple[str, ...] = (
    "What is the median of 3, 1, 7 and 4?",
    "How many days are there between 2024-01-15 and 2024-03-01?",
    "Read sales.csv and give the total revenue per region, largest first.",
    "Convert 72 degrees Fahrenheit to Celsius.",
    "Fetch https://example.org/news and list every link on the page.",
    "What is the SHA-256 hash of the text 'hello world'?",
    "Convert 250 US dollars to euros at today's exchange rate.",
    "Count the words in report.txt and name the ten most frequent ones.",
    "Solve the equation 2x^2 - 3x - 5 = 0 for its real roots.",
    "Is 'jane.doe@example' a valid email address?",
    "Resize photo.png to 800 pixels wide, keeping its aspect ratio.",
    "Which day of the week was 14 July 1789?",
    "Merge customers.json and orders.csv on the customer id and count orders per customer.",
    "What will the weather be in Lyon tomorrow?",
    "Compute the standard deviation of the price column in data.xlsx.",
    "Extract every date mentioned in contract.pdf and sort them chronologically.",
    "List all prime numbers below 200 and give their sum.",
    "Translate 'Where is the train station?' into German.",
    "Plot the monthly temperatures in climate.csv as a line chart and save it as a PNG.",
    "Count the requests with status 500 in access.log between 10:00 and 11:00, per URL.",
)


def estimate_tokens(chars: int) -> int:
    """Estimated tokens of a text of ``chars`` characters (characters / 4, rounded up)."""
    return math.ceil(chars / CHARS_PER_TOKEN)


def prompt_chars(messages: Sequence[Any]) -> int:
    """Characters of a rendered prompt (the content of every message)."""
    return sum(len(str(m.content)) for m in messages)


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": round(float(np.mean(values)), 1),
        "min": float(min(values)),
        "max": float(max(values)),
    }


def _percentile(times_ms: Sequence[float], q: int) -> float:
    return round(float(np.percentile(times_ms, q)), 2)


def fill_store(store: Any, size: int, *, seed: int = 7) -> tuple[float, float]:
    """Add ``size`` synthetic tools to ``store`` in one commit.

    Returns:
        The wall-clock seconds and the CPU seconds of this process (every
        thread: the embedding runs on several) the commit took.
    """
    from insitu.evals.bench_store import synthetic_tools
    from insitu.tool_store import ChangeSet
    from insitu.tool_store.changes import ToolAdd

    specs = synthetic_tools(size, seed=seed)
    started, cpu = time.perf_counter(), time.process_time()
    store.commit(ChangeSet(changes=[ToolAdd(spec=s, origin="manual") for s in specs]))
    return time.perf_counter() - started, time.process_time() - cpu


def measure_store(
    store: Any,
    *,
    tasks: Sequence[str] = TASKS,
    retrieval_k: int = DEFAULT_RETRIEVAL_K,
    repeats: int = DEFAULT_REPEATS,
) -> dict[str, Any]:
    """Measure the Manager's prompt, the listing prompt and search latency on one store.

    Args:
        store: An open, writable :class:`~insitu.tool_store.ToolStore`.
        tasks: Task texts.
        retrieval_k: Candidates the Manager retrieves.
        repeats: Timed searches per task.

    Returns:
        Prompt sizes (chars and estimated tokens: mean/min/max over the
        tasks), their ratio, search p50/p90 in ms and per-task details.
    """
    from insitu.context import InsituContext
    from insitu.graphs.state import Candidate
    from insitu.nodes.manager import manager_messages, retrieve_candidates
    from insitu.services import Services

    context = InsituContext(store_dir=str(store.path), retrieval_k=retrieval_k)
    services = Services(tool_store=store)
    everything = [
        Candidate(name=r.name, version=r.version, description=r.description, score=0.0, local=False)
        for r in store.list()
    ]
    per_task = []
    for task in tasks:
        state: Any = {"task": task}
        candidates = retrieve_candidates(state, services, context)
        insitu_chars = prompt_chars(manager_messages(state, candidates, context))
        listing_chars = prompt_chars(manager_messages(state, everything, context))
        per_task.append(
            {
                "task": task,
                "candidates": [c["name"] for c in candidates],
                "insitu_chars": insitu_chars,
                "listing_chars": listing_chars,
            }
        )
    clear_cache = getattr(getattr(store, "_index", None), "clear_query_cache", None)
    store.search(tasks[0], k=retrieval_k)  # load the embedding model before timing
    times = []
    for _ in range(repeats):
        for task in tasks:
            if clear_cache is not None:
                clear_cache()
            started = time.perf_counter()
            store.search(task, k=retrieval_k)
            times.append((time.perf_counter() - started) * 1000)
    insitu = [t["insitu_chars"] for t in per_task]
    listing = [t["listing_chars"] for t in per_task]
    return {
        "insitu_prompt_chars": _stats(insitu),
        "insitu_prompt_tokens": _stats([estimate_tokens(c) for c in insitu]),
        "listing_prompt_chars": _stats(listing),
        "listing_prompt_tokens": _stats([estimate_tokens(c) for c in listing]),
        "ratio": round(float(np.mean(listing)) / float(np.mean(insitu)), 1),
        "candidates_mean": round(float(np.mean([len(t["candidates"]) for t in per_task])), 2),
        "searches": len(times),
        "search_p50_ms": _percentile(times, 50),
        "search_p90_ms": _percentile(times, 90),
        "tasks": per_task,
    }


def measure_size(
    size: int,
    *,
    embedding: str = DEFAULT_EMBEDDING,
    retrieval_k: int = DEFAULT_RETRIEVAL_K,
    repeats: int = DEFAULT_REPEATS,
    tasks: Sequence[str] = TASKS,
    workdir: str | Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Build a store of ``size`` synthetic tools in a temporary directory and measure it."""
    from insitu.tool_store import ToolStore

    root = Path(tempfile.mkdtemp(prefix=f"insitu-scaling-{size}-", dir=workdir))
    try:
        with ToolStore.open(root / "lib", embedding=embedding) as store:
            log(f"{size} tools: filling the library in one commit ({embedding} embedding)")
            fill_seconds, fill_cpu = fill_store(store, size)
            log(
                f"{size} tools: filled in {fill_seconds:.1f} s ({fill_cpu:.1f} s CPU); "
                f"measuring {len(tasks)} tasks"
            )
            result = {
                "tools": store.count(),
                "embedding": embedding,
                "fill_seconds": round(fill_seconds, 1),
                "fill_cpu_seconds": round(fill_cpu, 1),
            }
            result.update(
                measure_store(store, tasks=tasks, retrieval_k=retrieval_k, repeats=repeats)
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    log(
        f"{size} tools: insitu ~{result['insitu_prompt_tokens']['mean']:.0f} tokens, listing "
        f"~{result['listing_prompt_tokens']['mean']:.0f} tokens, search p50 "
        f"{result['search_p50_ms']} ms"
    )
    return result


def run_scaling_benchmark(
    sizes: Sequence[int] = DEFAULT_SIZES,
    *,
    embedding: str = DEFAULT_EMBEDDING,
    retrieval_k: int = DEFAULT_RETRIEVAL_K,
    repeats: int = DEFAULT_REPEATS,
    tasks: Sequence[str] = TASKS,
    workdir: str | Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run :func:`measure_size` for each library size.

    Args:
        sizes: Library sizes (tools).
        embedding: ``"minilm"`` (the real model) or ``"hashing"``.
        retrieval_k: Candidates the Manager retrieves per task.
        repeats: Timed searches per task.
        tasks: Task texts (default :data:`TASKS`).
        workdir: Where the temporary stores go (default: the system's temp dir).
        log: Progress messages.

    Returns:
        ``{"settings", "machine", "sizes": [result, ...]}``.
    """
    if not sizes or any(size < 1 for size in sizes):
        raise ValueError(f"library sizes must be positive integers, not {list(sizes)}")
    if retrieval_k < 1 or repeats < 1 or not tasks:
        raise ValueError("retrieval_k and repeats must be at least 1, and tasks non-empty")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    results = []
    for size in sizes:
        load = os.getloadavg()[0]
        result = measure_size(
            size,
            embedding=embedding,
            retrieval_k=retrieval_k,
            repeats=repeats,
            tasks=tasks,
            workdir=workdir,
            log=log,
        )
        result["load_avg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        results.append(result)
    return {
        "settings": {
            "sizes": list(sizes),
            "embedding": embedding,
            "retrieval_k": retrieval_k,
            "repeats": repeats,
            "tasks": len(tasks),
            "token_estimate": TOKEN_NOTE,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "sizes": results,
    }


#: The summary table: (column title, cell of a size's result).
COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("tools", lambda r: f"{r['tools']:,}"),
    ("fill s", lambda r: f"{r['fill_seconds']:.1f}"),
    ("fill CPU s", lambda r: f"{r['fill_cpu_seconds']:.1f}"),
    ("insitu prompt tokens", lambda r: f"{r['insitu_prompt_tokens']['mean']:,.0f}"),
    (
        "min-max",
        lambda r: (
            f"{r['insitu_prompt_tokens']['min']:,.0f}-{r['insitu_prompt_tokens']['max']:,.0f}"
        ),
    ),
    ("listing prompt tokens", lambda r: f"{r['listing_prompt_tokens']['mean']:,.0f}"),
    ("listing / insitu", lambda r: f"{r['ratio']:,.1f}x"),
    ("search p50 ms", lambda r: f"{r['search_p50_ms']:.1f}"),
    ("search p90 ms", lambda r: f"{r['search_p90_ms']:.1f}"),
)


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """The cells of the summary table, one row per size (see :data:`COLUMNS`)."""
    return [[cell(r) for _, cell in COLUMNS] for r in report["sizes"]]


def notes(report: dict[str, Any]) -> list[str]:
    """The lines that explain the table."""
    s = report["settings"]
    machine = report.get("machine", {})
    loads = ", ".join(
        f"{r['tools']}: {r['load_avg_1min'][0]}-{r['load_avg_1min'][1]}"
        for r in report["sizes"]
        if "load_avg_1min" in r
    )
    lines = [
        f"{s['embedding']} embedding; mean over {s['tasks']} tasks; {TOKEN_NOTE}.",
        f"insitu = the Manager's prompt with its retrieval_k={s['retrieval_k']} retrieved "
        "candidates (retrieve_candidates + manager_messages); listing = the same prompt with "
        "every library tool as a candidate.",
        f"search = store.search(task, k={s['retrieval_k']}), hybrid, query embedding included, "
        f"{s['repeats']} search(es) per task.",
        "fill = the one commit that adds every tool (embedding included): wall-clock and CPU "
        "seconds of this process (all threads).",
        f"{machine.get('cpus', '?')} CPUs; 1-min load average at start-end of each size: "
        f"{loads or '-'}",
    ]
    if s["embedding"] != "minilm":
        lines.append(
            f"The {s['embedding']} embedding was used, not MiniLM: prompt sizes are comparable, "
            "but the latencies leave out MiniLM's query embedding."
        )
    return lines


def format_report(report: dict[str, Any]) -> str:
    """Render the benchmark as a plain-text table."""
    titles = [title for title, _ in COLUMNS]
    rows = summary_rows(report)
    widths = [max(len(t), *(len(r[i]) for r in rows)) for i, t in enumerate(titles)]
    header = "  ".join(t.rjust(w) for t, w in zip(titles, widths, strict=True))
    lines = [header, "-" * len(header)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([*lines, "", *notes(report)])


def parse_sizes(text: str) -> list[int]:
    """``"100,1000,10k"`` -> ``[100, 1000, 10000]`` (``k`` = thousand; ``_`` allowed).

    Raises:
        ValueError: For an empty list, a non-number or a size below 1.
    """
    sizes = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        scale = 1000 if part.lower().endswith("k") else 1
        digits = part[:-1] if scale > 1 else part
        if not digits.replace("_", "").isdigit() or int(digits) < 1:
            raise ValueError(f"{part!r} is not a positive library size")
        sizes.append(int(digits) * scale)
    if not sizes:
        raise ValueError("no library size given")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m insitu.evals.scaling", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--embedding", default=DEFAULT_EMBEDDING, choices=["minilm", "hashing"])
    parser.add_argument("--retrieval-k", type=int, default=DEFAULT_RETRIEVAL_K)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="searches per task")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    try:
        report = run_scaling_benchmark(
            parse_sizes(args.sizes),
            embedding=args.embedding,
            retrieval_k=args.retrieval_k,
            repeats=args.repeats,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
