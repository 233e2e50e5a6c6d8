"""Tool-store benchmark: write throughput and search latency at 1k, 10k, 100k tools.

For each size a fresh store is filled with synthetic, varied tools (names,
descriptions and input fields drawn from word lists with a fixed seed) and
measured:

* ``add/s``: tools added per second through batched commits (one
  ``ChangeSet`` of 1,000 tools per SQLite transaction, embedding included);
* ``single add ms``: p50 of one ``add()`` (its own transaction and index write);
* search p50/p90 in hybrid, dense and lexical mode over 200 unseen queries,
  query embedding included;
* ``reopen s``: closing and reopening the store (writer lock, index check);
* read-only: building the in-memory index of a read-only open, and its
  hybrid search p50.

Target: hybrid search p50 <= 20 ms at 10k tools.

Usage::

    python -m insitu.evals.bench_store [--sizes 1000,10000,100000]
        [--embedding minilm|hashing] [--queries 200] [--json PATH]

100k tools take several minutes (embedding them dominates).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _words(text: str, sep: str | None = None) -> tuple[str, ...]:
    """Split a word list written as text (easier to read than quoted literals)."""
    return tuple(w.strip() for w in text.split(sep) if w.strip())


VERBS = _words(
    "compute parse convert fetch extract count validate generate merge split filter sort "
    "summarize translate detect compress encode decode resize render plot query normalize "
    "tokenize classify estimate forecast schedule download upload format clean match"
)
OBJECTS = _words(
    "mean median variance csv json xml html url date time timezone currency temperature "
    "image audio video pdf table matrix vector graph text sentence word email address "
    "phone invoice order stock price weather route distance calendar event log metric "
    "password hash token file folder archive report chart histogram dataset column row"
)
QUALIFIERS = _words(
    "from a string|for a list of numbers|between two units|in a file on disk|from a web page|"
    "with a regular expression|by a given key|in ascending order|as a dictionary|per day|"
    "for a city|in a zip archive|with missing values|from an API response|for every row|"
    "into a summary|using a template|with a tolerance|within a date range|for a user",
    "|",
)
RETURNS = _words(
    "Returns the result as JSON.|Returns a list of records.|Returns a number.|"
    "Returns the cleaned text.|Returns a path to the written file.|Returns true or false.|"
    "Returns a table of values.|Returns the first match or null.",
    "|",
)
FIELDS = _words(
    "text values path url date amount city query rows columns key pattern limit unit "
    "start end format language width height threshold"
)


def synthetic_tools(n: int, seed: int = 7) -> list[Any]:
    """``n`` distinct, varied, valid tool specs (deterministic for a seed)."""
    from insitu.tool_store.testing import make_spec

    rng = random.Random(seed)
    specs = []
    for i in range(n):
        verb, obj, obj2 = rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(OBJECTS)
        name = f"{verb}_{obj}_{obj2}_{i}"
        description = (
            f"{verb.capitalize()}s the {obj} {rng.choice(QUALIFIERS)} and the {obj2} "
            f"{rng.choice(QUALIFIERS)}. {rng.choice(RETURNS)}"
        )
        inputs = tuple(dict.fromkeys(rng.sample(FIELDS, rng.randint(1, 3))))
        specs.append(make_spec(name, description, inputs=inputs, body=f"return {{'i': {i}}}"))
    return specs


def synthetic_queries(n: int, seed: int = 11) -> list[str]:
    """``n`` distinct task-like queries over the same vocabulary."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(
            f"I need to {rng.choice(VERBS)} the {rng.choice(OBJECTS)} "
            f"{rng.choice(QUALIFIERS)} (case {i})"
        )
    return out


def _percentiles(times_ms: Sequence[float]) -> tuple[float, float]:
    return (
        round(float(np.percentile(times_ms, 50)), 2),
        round(float(np.percentile(times_ms, 90)), 2),
    )


def bench_size(
    size: int,
    *,
    embedding: str = "minilm",
    queries: int = 200,
    workdir: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Fill a fresh store with ``size`` tools and measure it (see the module doc)."""
    from insitu.tool_store import ToolStore

    root = Path(tempfile.mkdtemp(prefix=f"bench-store-{size}-", dir=workdir))
    path = root / "lib"
    specs = synthetic_tools(size)
    texts = synthetic_queries(queries)
    result: dict[str, Any] = {"tools": size, "embedding": embedding}
    try:
        store = ToolStore.open(path, embedding=embedding)
        single = specs[: min(50, size)]
        batched = specs[len(single) :]
        times = []
        for spec in single:
            started = time.perf_counter()
            store.add(spec)
            times.append((time.perf_counter() - started) * 1000)
        result["single_add_p50_ms"] = _percentiles(times)[0]
        started = time.perf_counter()
        for start in range(0, len(batched), 1000):
            chunk = batched[start : start + 1000]
            store.commit(_adds(chunk))
            if (start // 1000) % 10 == 9:
                log(f"{size}: {start + len(chunk) + len(single)} tools added")
        elapsed = time.perf_counter() - started
        result["add_per_s"] = round(len(batched) / elapsed, 1) if batched else None
        result["fill_seconds"] = round(elapsed, 1)
        for mode in ("hybrid", "dense", "lexical"):
            times = []
            for query in texts:
                assert store._index is not None
                store._index.clear_query_cache()
                started = time.perf_counter()
                store.search(query, k=5, mode=mode)
                times.append((time.perf_counter() - started) * 1000)
            result[f"{mode}_p50_ms"], result[f"{mode}_p90_ms"] = _percentiles(times)
        store.close()
        started = time.perf_counter()
        store = ToolStore.open(path)
        result["reopen_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        store.search(texts[0], k=5)
        result["first_search_after_reopen_ms"] = round((time.perf_counter() - started) * 1000, 1)
        started = time.perf_counter()
        store.list()
        result["list_s"] = round(time.perf_counter() - started, 2)
        store.close()
        with ToolStore.open(path, read_only=True) as reader:
            started = time.perf_counter()
            reader.search(texts[0], k=5)
            result["read_only_first_search_s"] = round(time.perf_counter() - started, 2)
            times = []
            for query in texts[1:51]:
                started = time.perf_counter()
                reader.search(query, k=5)
                times.append((time.perf_counter() - started) * 1000)
            result["read_only_hybrid_p50_ms"] = _percentiles(times)[0]
        result["store_mb"] = round(
            sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6, 1
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result


def _adds(specs: Sequence[Any]) -> Any:
    from insitu.tool_store import ChangeSet
    from insitu.tool_store.changes import ToolAdd

    return ChangeSet(changes=[ToolAdd(spec=s, origin="manual") for s in specs])


def run_store_benchmark(
    sizes: Sequence[int] = (1000, 10000, 100000),
    *,
    embedding: str = "minilm",
    queries: int = 200,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run :func:`bench_size` for each size.

    Returns:
        ``{"sizes": [result, ...]}``.
    """
    out = []
    for size in sizes:
        log(f"benchmarking {size} tools ({embedding})")
        out.append(bench_size(size, embedding=embedding, queries=queries, log=log))
        log(json.dumps(out[-1]))
    return {"sizes": out}


def format_report(report: dict[str, Any]) -> str:
    """Render the benchmark as a plain-text table."""
    columns = [
        ("tools", "tools", "{:>7}"),
        ("add/s", "add_per_s", "{:>7}"),
        ("1 add ms", "single_add_p50_ms", "{:>8}"),
        ("hyb p50", "hybrid_p50_ms", "{:>7}"),
        ("hyb p90", "hybrid_p90_ms", "{:>7}"),
        ("den p50", "dense_p50_ms", "{:>7}"),
        ("den p90", "dense_p90_ms", "{:>7}"),
        ("lex p50", "lexical_p50_ms", "{:>7}"),
        ("reopen s", "reopen_s", "{:>8}"),
        ("1st srch ms", "first_search_after_reopen_ms", "{:>11}"),
        ("RO build s", "read_only_first_search_s", "{:>10}"),
        ("RO p50", "read_only_hybrid_p50_ms", "{:>7}"),
        ("MB", "store_mb", "{:>6}"),
    ]
    header = " ".join(f"{title:>{max(len(title), 7)}}" for title, _, _ in columns)
    lines = [header, "-" * len(header)]
    for row in report["sizes"]:
        lines.append(
            " ".join(f"{row.get(key, '-')!s:>{max(len(title), 7)}}" for title, key, _ in columns)
        )
    lines.append("(ms = milliseconds; search p50/p90 include embedding the query)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m insitu.evals.bench_store")
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated sizes")
    parser.add_argument("--embedding", default="minilm", choices=["minilm", "hashing"])
    parser.add_argument("--queries", type=int, default=200, help="search queries per mode")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    report = run_store_benchmark(
        sizes,
        embedding=args.embedding,
        queries=args.queries,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
