"""Tool-store benchmark: write throughput and search latency at 1k, 10k, 100k tools.

For each size a fresh store is filled with synthetic, varied tools (names,
descriptions and input fields drawn from word lists with a fixed seed) and
measured:

* ``add/s``: tools added per second through batched commits (one
  ``ChangeSet`` of 1,000 tools per SQLite transaction, embedding included);
* ``single add ms``: p50 of one ``add()`` (its own transaction and index write);
* search p50/p90 in hybrid, dense and lexical mode over 200 unseen queries,
  query embedding included (the query-vector cache is cleared before each);
* ``hyb cached p50``: the same hybrid searches with the query vectors cached
  (the index alone), and ``q-embed p50``: embedding one query alone;
* ``reopen s``: closing and reopening the store (writer lock, index check),
  then the first search (which loads the lexical side) and ``list()``;
* read-only: building the in-memory index of a read-only open (what
  ``insitu tools search`` does), and its hybrid search p50.

Target: hybrid search p50 <= 20 ms at 10k tools, query embedding included.

By default every size embeds with the real model (MiniLM). ``--minilm-up-to N``
embeds larger sizes with the hashing embedding instead: same 384 dimensions,
so the index does the same work, but add and search times then exclude
MiniLM's embedding time; each row of the output names its embedding.

``--backends embedded,postgres`` measures each size on each backend in the same
run: ``embedded`` is the default store (SQLite records, embedded Chroma);
``postgres`` puts the records in PostgreSQL and the index on a Chroma server
(``records_url`` + ``chroma_url``), both started on loopback for the run by
:mod:`insitu.testing.services` (each size gets a fresh database). Every row
records the 1-minute load average at its start and end.

Usage::

    python -m insitu.evals.bench_store [--sizes 1000,10000,100000]
        [--embedding minilm|hashing] [--minilm-up-to N] [--queries 200]
        [--backends embedded,postgres] [--json PATH]

With MiniLM, 100k tools take about half an hour on 2 cores (embedding 100k
tools dominates); ``--minilm-up-to 10000`` brings that down to a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Target of this project: hybrid search p50 at 10k tools, query embedding included.
TARGET_SIZE = 10_000
TARGET_HYBRID_P50_MS = 20.0
#: By default MiniLM embeds up to this many tools; larger sizes use the hashing
#: embedding (``--minilm-up-to 0`` for MiniLM everywhere).
MINILM_UP_TO = 0
#: Where a benchmarked library lives: the embedded default, or PostgreSQL records and a
#: Chroma server (both on loopback, started for the run).
BACKENDS = ("embedded", "postgres")


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


@contextlib.contextmanager
def backend_options(backend: str, workdir: Path | None = None) -> Iterator[Callable[[], dict]]:
    """Yield a function giving the ``ToolStore.open`` options of a fresh library on ``backend``.

    ``postgres`` starts a PostgreSQL server and a Chroma server on loopback for the
    block; each call creates a new database (one library per database).
    """
    if backend == "embedded":
        yield dict
        return
    if backend != "postgres":
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    from insitu.testing.services import ChromaServer, PostgresServer

    numbers = itertools.count()
    chroma_dir = Path(tempfile.mkdtemp(prefix="bench-chroma-", dir=workdir))
    try:
        with PostgresServer.start() as postgres, ChromaServer.start(chroma_dir) as chroma:
            yield lambda: {
                "records_url": postgres.create_database(f"bench_{next(numbers)}"),
                "chroma_url": chroma.url,
            }
    finally:
        shutil.rmtree(chroma_dir, ignore_errors=True)


def bench_size(
    size: int,
    *,
    embedding: str = "minilm",
    queries: int = 200,
    workdir: Path | None = None,
    open_options: dict[str, Any] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Fill a fresh store with ``size`` tools and measure it (see the module doc).

    Args:
        size: Tools in the library.
        embedding: ``"minilm"`` or ``"hashing"``.
        queries: Search queries per mode.
        workdir: Where the store directory is made (default: the temporary folder).
        open_options: Extra ``ToolStore.open`` options of every open: the records'
            and index's servers (:func:`backend_options`); none for the embedded store.
        log: Progress messages.
    """
    from insitu.tool_store import ToolStore
    from insitu.tool_store.embeddings import get_embedding_function

    root = Path(tempfile.mkdtemp(prefix=f"bench-store-{size}-", dir=workdir))
    path = root / "lib"
    specs = synthetic_tools(size)
    texts = synthetic_queries(queries)
    options = open_options or {}
    result: dict[str, Any] = {
        "tools": size,
        "embedding": embedding,
        "backend": "postgres" if "records_url" in options else "embedded",
    }
    try:
        store = ToolStore.open(path, embedding=embedding, **options)
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
        assert store._index is not None
        for mode in ("hybrid", "dense", "lexical"):
            times = []
            for query in texts:
                store._index.clear_query_cache()
                started = time.perf_counter()
                store.search(query, k=5, mode=mode)
                times.append((time.perf_counter() - started) * 1000)
            result[f"{mode}_p50_ms"], result[f"{mode}_p90_ms"] = _percentiles(times)
        # The index alone: the same hybrid searches with the query vectors cached.
        for query in texts:
            store.search(query, k=5)
        times = []
        for query in texts:
            started = time.perf_counter()
            store.search(query, k=5)
            times.append((time.perf_counter() - started) * 1000)
        result["hybrid_cached_p50_ms"] = _percentiles(times)[0]
        # What embedding one query costs by itself with this embedding.
        fn = get_embedding_function(embedding)
        times = []
        for query in texts[:50]:
            started = time.perf_counter()
            fn.embed([query])
            times.append((time.perf_counter() - started) * 1000)
        result["query_embed_p50_ms"] = _percentiles(times)[0]
        store.close()
        started = time.perf_counter()
        store = ToolStore.open(path, **options)
        result["reopen_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        store.search(texts[0], k=5)
        result["first_search_after_reopen_ms"] = round((time.perf_counter() - started) * 1000, 1)
        started = time.perf_counter()
        store.list()
        result["list_s"] = round(time.perf_counter() - started, 2)
        store.close()
        with ToolStore.open(path, read_only=True, **options) as reader:
            started = time.perf_counter()
            reader.search(texts[0], k=5)
            result["read_only_first_search_s"] = round(time.perf_counter() - started, 2)
            times = []
            for query in texts[1:51]:
                started = time.perf_counter()
                reader.search(query, k=5)
                times.append((time.perf_counter() - started) * 1000)
            result["read_only_hybrid_p50_ms"] = _percentiles(times)[0]
        if not options:  # the servers' files hold other libraries too
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


def embedding_for(size: int, embedding: str, minilm_up_to: int | None) -> str:
    """The embedding used at ``size``: ``hashing`` above ``minilm_up_to`` tools."""
    if embedding == "minilm" and minilm_up_to is not None and size > minilm_up_to:
        return "hashing"
    return embedding


def run_store_benchmark(
    sizes: Sequence[int] = (1000, 10000, 100000),
    *,
    embedding: str = "minilm",
    minilm_up_to: int | None = None,
    queries: int = 200,
    backends: Sequence[str] = ("embedded",),
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run :func:`bench_size` for each size on each backend.

    Args:
        sizes: Library sizes.
        embedding: ``"minilm"`` (the real model) or ``"hashing"``.
        minilm_up_to: With minilm, sizes above this use the hashing embedding
            instead (same 384 dimensions, so the index does the same work; only
            the embedding time differs, which ``query_embed_p50_ms`` reports).
        queries: Search queries per mode.
        backends: Names of :data:`BACKENDS`; each size runs on each, in this order.
        log: Progress messages.

    Returns:
        ``{"sizes": [result, ...]}``; each result names its ``embedding`` and ``backend``.
    """
    out = []
    with contextlib.ExitStack() as stack:
        fresh = {b: stack.enter_context(backend_options(b)) for b in backends}
        for size in sizes:
            for backend in backends:
                load = os.getloadavg()[0]
                used = embedding_for(size, embedding, minilm_up_to)
                log(f"benchmarking {size} tools ({used}, {backend})")
                options = fresh[backend]()
                out.append(
                    bench_size(size, embedding=used, queries=queries, open_options=options, log=log)
                )
                out[-1]["load_avg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
                log(json.dumps(out[-1]))
    return {"sizes": out, "machine": _machine()}


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def format_report(report: dict[str, Any]) -> str:
    """Render the benchmark as a plain-text table."""
    columns = [
        ("tools", "tools", "{:>7}"),
        ("backend", "backend", "{:>8}"),
        ("embedding", "embedding", "{:>9}"),
        ("add/s", "add_per_s", "{:>7}"),
        ("1 add ms", "single_add_p50_ms", "{:>8}"),
        ("hyb p50", "hybrid_p50_ms", "{:>7}"),
        ("hyb p90", "hybrid_p90_ms", "{:>7}"),
        ("den p50", "dense_p50_ms", "{:>7}"),
        ("den p90", "dense_p90_ms", "{:>7}"),
        ("lex p50", "lexical_p50_ms", "{:>7}"),
        ("hyb cached p50", "hybrid_cached_p50_ms", "{:>14}"),
        ("q-embed p50", "query_embed_p50_ms", "{:>11}"),
        ("reopen s", "reopen_s", "{:>8}"),
        ("1st srch ms", "first_search_after_reopen_ms", "{:>11}"),
        ("RO build s", "read_only_first_search_s", "{:>10}"),
        ("RO p50", "read_only_hybrid_p50_ms", "{:>7}"),
        ("MB", "store_mb", "{:>6}"),
    ]
    header = " ".join(f"{title:>{max(len(title), 7)}}" for title, _, _ in columns)
    machine = report.get("machine", {})
    loads = ", ".join(
        f"{r['tools']} {r.get('backend', 'embedded')}: "
        f"{r['load_avg_1min'][0]}-{r['load_avg_1min'][1]}"
        for r in report["sizes"]
        if "load_avg_1min" in r
    )
    lines = [
        f"{machine.get('cpus', '?')} CPUs; Python {machine.get('python', '?')}; "
        f"1-min load average at start-end of each size: {loads or '-'}",
        header,
        "-" * len(header),
    ]
    for row in report["sizes"]:
        lines.append(
            " ".join(f"{row.get(key, '-')!s:>{max(len(title), 7)}}" for title, key, _ in columns)
        )
    lines.append(
        "(ms = milliseconds; search p50/p90 include embedding the query; 'hyb cached' is the "
        "same hybrid search with the query vector cached, i.e. the index alone; 'q-embed' is "
        "embedding one query alone; RO = a read-only open, which builds an in-memory index)"
    )
    for row in report["sizes"]:
        if row["embedding"] != "minilm":
            lines.append(
                f"note: {row['tools']} tools used the {row['embedding']} embedding, not MiniLM: "
                "same 384 dimensions, so the index does the same work, but adds and searches "
                "exclude MiniLM's embedding time (add MiniLM's q-embed p50 to its searches)."
            )
    at_target = [r for r in report["sizes"] if r["tools"] == TARGET_SIZE]
    for row in at_target:
        met = "met" if row["hybrid_p50_ms"] <= TARGET_HYBRID_P50_MS else "NOT met"
        lines.append(
            f"target: hybrid search p50 <= {TARGET_HYBRID_P50_MS:g} ms at {TARGET_SIZE} tools "
            f"({row['embedding']}, {row.get('backend', 'embedded')}): {met} "
            f"({row['hybrid_p50_ms']} ms)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m insitu.evals.bench_store")
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated sizes")
    parser.add_argument("--embedding", default="minilm", choices=["minilm", "hashing"])
    parser.add_argument(
        "--minilm-up-to",
        type=int,
        default=MINILM_UP_TO,
        help="with minilm, larger sizes use the hashing embedding (0: MiniLM at every size; "
        f"default {MINILM_UP_TO})",
    )
    parser.add_argument("--queries", type=int, default=200, help="search queries per mode")
    parser.add_argument(
        "--backends",
        default="embedded",
        help="comma-separated, each size on each in one run: embedded (SQLite records, "
        "embedded Chroma) and/or postgres (PostgreSQL records, Chroma server; both started "
        "on loopback)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    report = run_store_benchmark(
        sizes,
        embedding=args.embedding,
        minilm_up_to=args.minilm_up_to or None,
        queries=args.queries,
        backends=[b.strip() for b in args.backends.split(",") if b.strip()],
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
