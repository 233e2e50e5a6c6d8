"""Tool-retrieval benchmark: dense vs lexical vs hybrid on public tool corpora.

For each set under ``tool_retrieval/`` (``tools.jsonl``: ``tool_id``, ``name``,
``text``, optional ``raw``; ``queries.jsonl``: ``qid``, ``query``, ``gold``), every
tool is indexed in a :class:`~insitu.tool_store.index.ToolIndex` on an in-memory
Chroma client, exactly as the store indexes its tools: the text is the name's
words, the description and the input parameters (names and descriptions, never
their example values), with the name's words given once more to the lexical
side. Each query is then run in the three modes and scored:

* ``recall@k``: the fraction of a query's gold tools in the top k, averaged
  (the definition under the reference baselines in ``shared/data/README.md``);
* ``MRR``: mean reciprocal rank of the first gold tool within the top 10;
* latency: p50/p90 of ``search()`` on a sample of queries, query embedding
  included (the query-vector cache is cleared before each).

``--sweep`` also scores a grid of fusion settings in hybrid mode and prints
it; the defaults in ``tool_store/index.py`` were chosen from that grid (the
best mean recall@5 across the sets, metatool included, without giving up the
seal_tools and stabletoolbench targets).

Usage::

    python -m insitu.evals.retrieval [--data DIR] [--sets seal_tools,stabletoolbench]
        [--limit-queries N] [--sweep] [--json PATH]
        [--fusion F] [--dense-weight W] [--segment-weight S] [--candidates N]
        [--bm25-k1 K] [--bm25-b B]

The index-setting options score one other setting than the defaults (all
modes; the settings line of the output shows what was used).

Embedded corpora and queries are cached (``$TMPDIR/insitu-retrieval-cache``), so
re-runs skip the embedding.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_DATA = Path("..") / "shared" / "data" / "tool_retrieval"
DEFAULT_SETS = ("seal_tools", "stabletoolbench", "metatool", "apibank_lv2", "livemcpbench")
MODES = ("dense", "lexical", "hybrid")
#: Reference recall@5 of plain baselines measured by the data's curators.
BASELINES = {
    "seal_tools": {"dense": 0.578, "tfidf": 0.821},
    "stabletoolbench": {"dense": 0.590, "tfidf": 0.673},
    "metatool": {"dense": 0.754, "tfidf": 0.559},
    "apibank_lv2": {"dense": 0.745, "tfidf": 0.510},
    "livemcpbench": {"dense": 0.343, "tfidf": 0.315},
}
#: Targets of hybrid recall@5 set for this project.
TARGETS = {"seal_tools": 0.85, "stabletoolbench": 0.75}
#: Hybrid settings scored by ``--sweep`` (fusion, dense_weight, segment_weight).
SWEEP: tuple[tuple[str, float, float], ...] = tuple(
    [("zscore", w, s) for w in (0.3, 0.4, 0.5, 0.6, 0.7) for s in (0.0, 1.0)]
    + [("minmax", w, 1.0) for w in (0.4, 0.5, 0.6)]
    + [("rrf", 0.5, 1.0)]
)
LATENCY_SAMPLE = 100


def default_data_dir() -> Path:
    """``<project root>/../shared/data/tool_retrieval``, from the current directory."""
    return (Path.cwd() / DEFAULT_DATA).resolve()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def dataset_inputs(raw: dict[str, Any] | None) -> list[tuple[str, str]]:
    """``(name, description)`` of a dataset tool's declared parameters.

    The sets declare parameters either as a JSON schema (``parameters``) or as
    ``required_parameters`` / ``optional_parameters`` lists; example or default
    values are left out (in some sets they repeat the query's own values).
    """
    raw = raw or {}
    params: list[tuple[str, str]] = []
    declared = raw.get("parameters")
    if isinstance(declared, dict):
        declared = declared.get("properties", declared)
        for key, value in declared.items():
            desc = value.get("description", "") if isinstance(value, dict) else ""
            params.append((str(key), str(desc or "")))
    for key in ("required_parameters", "optional_parameters"):
        for value in raw.get(key) or []:
            if isinstance(value, dict) and value.get("name"):
                params.append((str(value["name"]), str(value.get("description") or "")))
    return params


def dataset_tool_text(tool: dict[str, Any], *, with_params: bool = True) -> str:
    """The indexed text of a dataset tool: the store's own :func:`tool_text`."""
    from insitu.tool_store.text import tool_text

    name = tool.get("name") or tool["tool_id"]
    inputs = dataset_inputs(tool.get("raw")) if with_params else []
    return tool_text(name, tool.get("text") or "", inputs)


def sample(items: Sequence[Any], limit: int | None) -> list[Any]:
    """A deterministic, evenly spread subset of at most ``limit`` items."""
    if not limit or limit >= len(items):
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


class _VectorCache:
    """Embeddings on disk, keyed by model and text, so re-runs skip the model."""

    def __init__(self, directory: Path, embedding: Any) -> None:
        self.directory = directory
        self.embedding = embedding
        directory.mkdir(parents=True, exist_ok=True)

    def embed(self, texts: Sequence[str], label: str) -> np.ndarray:
        # Batch size and threads do not change the vectors: keep them out of the key.
        config = {k: v for k, v in self.embedding.get_config().items() if k != "batch_size"}
        key = hashlib.sha256(
            (self.embedding.name() + json.dumps(config, sort_keys=True)).encode()
            + "\x00".join(texts).encode()
        ).hexdigest()[:24]
        path = self.directory / f"{label}-{key}.npy"
        if path.exists():
            return np.load(path)
        vectors = self.embedding.embed(list(texts)).astype(np.float32)
        np.save(path, vectors)
        return vectors


def _metrics(ranked: list[list[str]], golds: list[set[str]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in (1, 5, 10):
        out[f"recall@{k}"] = float(
            np.mean([len(set(r[:k]) & g) / len(g) for r, g in zip(ranked, golds, strict=True)])
        )
    rr = []
    for r, g in zip(ranked, golds, strict=True):
        rr.append(next((1.0 / (i + 1) for i, x in enumerate(r[:10]) if x in g), 0.0))
    out["mrr"] = float(np.mean(rr))
    return out


def evaluate_set(
    set_dir: Path,
    *,
    limit_queries: int | None = None,
    embedding: str = "minilm",
    cache_dir: Path | None = None,
    with_params: bool = True,
    sweep: bool = False,
    index_kwargs: dict[str, Any] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Index one set's tools and score its queries in every mode.

    Args:
        set_dir: Folder with ``tools.jsonl`` and ``queries.jsonl``.
        limit_queries: Score an evenly spread sample of this many queries.
        embedding: Embedding name for the dense side.
        cache_dir: Where embedded corpora and queries are cached.
        with_params: Index parameter names/descriptions too.
        sweep: Also score :data:`SWEEP` fusion settings (hybrid).
        index_kwargs: Extra :class:`ToolIndex` arguments (fusion defaults...).
        log: Progress messages.

    Returns:
        ``{"tools", "queries", "modes": {mode: metrics}, "sweep": [...]}``.
    """
    import chromadb
    from chromadb.config import Settings

    from insitu.tool_store.embeddings import get_embedding_function
    from insitu.tool_store.index import IndexDoc, ToolIndex, query_segments

    tools = _read_jsonl(set_dir / "tools.jsonl")
    queries = sample(_read_jsonl(set_dir / "queries.jsonl"), limit_queries)
    queries = [q for q in queries if q.get("gold")]
    fn = get_embedding_function(embedding)
    cache = _VectorCache(cache_dir or Path(tempfile.gettempdir()) / "insitu-retrieval-cache", fn)
    texts = [dataset_tool_text(t, with_params=with_params) for t in tools]
    started = time.perf_counter()
    vectors = cache.embed(texts, f"{set_dir.name}-tools")
    log(f"{set_dir.name}: {len(tools)} tools embedded in {time.perf_counter() - started:.1f} s")
    client = chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False))
    collection = f"bench-{set_dir.name}".replace("_", "-")
    index = ToolIndex(
        client,
        collection=collection,
        embedding=fn,
        query_cache_size=10**7,
        replace_on_embedding_change=True,
        **(index_kwargs or {}),
    )
    index.clear()
    started = time.perf_counter()
    ids = [t["tool_id"] for t in tools]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{set_dir.name}: duplicate tool ids")
    index.upsert(
        IndexDoc(t["tool_id"], text, {"name": t.get("name") or t["tool_id"]}, embedding=v)
        for t, text, v in zip(tools, texts, vectors, strict=True)
    )
    index_seconds = time.perf_counter() - started
    # Embed every query and query sentence once (cached on disk), then prime the index.
    query_texts = list(
        dict.fromkeys(x for q in queries for x in [q["query"], *query_segments(q["query"])])
    )
    started = time.perf_counter()
    index.cache_query_vectors(query_texts, cache.embed(query_texts, f"{set_dir.name}-queries"))
    elapsed = time.perf_counter() - started
    log(f"{set_dir.name}: {len(query_texts)} query texts embedded in {elapsed:.1f} s")
    golds = [set(q["gold"]) for q in queries]
    result: dict[str, Any] = {
        "tools": len(tools),
        "queries": len(queries),
        "index_seconds": round(index_seconds, 2),
        "modes": {},
    }
    for mode in MODES:
        started = time.perf_counter()
        ranked = [[h.id for h in index.search(q["query"], k=10, mode=mode)] for q in queries]
        metrics = _metrics(ranked, golds)
        metrics["search_seconds_total"] = round(time.perf_counter() - started, 2)
        metrics.update(_latency(index, queries, mode))
        result["modes"][mode] = metrics
        log(f"{set_dir.name}: {mode} recall@5 {metrics['recall@5']:.3f}")
    if sweep:
        result["sweep"] = []
        for fusion, weight, segment in SWEEP:
            ranked = [
                [
                    h.id
                    for h in index.search(
                        q["query"],
                        k=10,
                        fusion=fusion,  # type: ignore[arg-type]
                        dense_weight=weight,
                        segment_weight=segment,
                    )
                ]
                for q in queries
            ]
            entry = {"fusion": fusion, "dense_weight": weight, "segment_weight": segment}
            entry.update(_metrics(ranked, golds))
            result["sweep"].append(entry)
    index.clear()
    index.close()
    return result


def _latency(index: Any, queries: list[dict[str, Any]], mode: str) -> dict[str, float]:
    """p50/p90 of one search including the query embedding (cache cleared each time)."""
    saved = dict(index._query_cache)
    times = []
    for q in sample(queries, LATENCY_SAMPLE):
        index.clear_query_cache()
        started = time.perf_counter()
        index.search(q["query"], k=10, mode=mode)
        times.append((time.perf_counter() - started) * 1000)
    index.clear_query_cache()
    index.cache_query_vectors(list(saved), np.stack(list(saved.values())) if saved else [])
    return {
        "latency_p50_ms": round(float(np.percentile(times, 50)), 2),
        "latency_p90_ms": round(float(np.percentile(times, 90)), 2),
    }


def run_retrieval_benchmark(
    data_dir: str | Path | None = None,
    sets: Sequence[str] | None = None,
    *,
    limit_queries: int | None = None,
    embedding: str = "minilm",
    cache_dir: str | Path | None = None,
    with_params: bool = True,
    sweep: bool = False,
    index_kwargs: dict[str, Any] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the retrieval benchmark over the chosen sets.

    Args:
        data_dir: The ``tool_retrieval`` folder (default :func:`default_data_dir`).
        sets: Set names (default: every set found, in :data:`DEFAULT_SETS` order).
        limit_queries: Per set, score an evenly spread sample of this many queries.
        embedding: ``"minilm"`` (real) or ``"hashing"``.
        cache_dir: Embedding cache (default ``$TMPDIR/insitu-retrieval-cache``).
        with_params: Index tools' parameter names and descriptions.
        sweep: Also score the fusion grid :data:`SWEEP`.
        index_kwargs: Extra :class:`~insitu.tool_store.index.ToolIndex` arguments.
        log: Progress messages.

    Returns:
        ``{"data_dir", "settings", "sets": {name: result}}``, or
        ``{"skipped": reason}`` when the data folder is absent.

    Raises:
        ValueError: For an unknown set name.
    """
    from insitu.tool_store import index as index_module

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if not root.is_dir():
        return {
            "skipped": f"no retrieval data at {root} (expected ../shared/data/tool_retrieval; "
            "pass --data DIR)"
        }
    available = [p.name for p in sorted(root.iterdir()) if (p / "tools.jsonl").is_file()]
    chosen = (
        list(sets)
        if sets
        else [s for s in DEFAULT_SETS if s in available]
        + [s for s in available if s not in DEFAULT_SETS]
    )
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise ValueError(f"unknown set(s) {unknown}; available: {', '.join(available)}")
    settings = {
        "embedding": embedding,
        "with_params": with_params,
        "limit_queries": limit_queries,
        "fusion": index_module.DEFAULT_FUSION,
        "dense_weight": index_module.DEFAULT_DENSE_WEIGHT,
        "segment_weight": index_module.DEFAULT_SEGMENT_WEIGHT,
        "candidates": index_module.DEFAULT_CANDIDATES,
        "bm25_k1": index_module.DEFAULT_BM25_K1,
        "bm25_b": index_module.DEFAULT_BM25_B,
        **(index_kwargs or {}),
    }
    load = os.getloadavg()[0]
    results = {
        name: evaluate_set(
            root / name,
            limit_queries=limit_queries,
            embedding=embedding,
            cache_dir=Path(cache_dir) if cache_dir else None,
            with_params=with_params,
            sweep=sweep,
            index_kwargs=index_kwargs,
            log=log,
        )
        for name in chosen
    }
    machine = {
        "cpus": os.cpu_count(),
        "load_avg_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
    }
    return {"data_dir": str(root), "settings": settings, "machine": machine, "sets": results}


def format_report(report: dict[str, Any]) -> str:
    """Render a benchmark result as plain-text tables."""
    if "skipped" in report:
        return f"skipped: {report['skipped']}"
    lines = [f"data: {report['data_dir']}", f"settings: {json.dumps(report['settings'])}"]
    machine = report.get("machine")
    if machine:
        lines.append(
            f"{machine['cpus']} CPUs; 1-min load average {machine['load_avg_1min'][0]} at start, "
            f"{machine['load_avg_1min'][1]} at end (latency: one search, query embedding "
            "included)"
        )
    lines.append("")
    header = (
        f"{'set':<16} {'mode':<8} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MRR':>6} "
        f"{'p50 ms':>7} {'p90 ms':>7}  reference R@5"
    )
    lines += [header, "-" * len(header)]
    for name, res in report["sets"].items():
        base = BASELINES.get(name, {})
        for mode, m in res["modes"].items():
            ref = ""
            if mode == "dense" and "dense" in base:
                ref = f"dense {base['dense']:.3f}"
            elif mode == "lexical" and "tfidf" in base:
                ref = f"tf-idf {base['tfidf']:.3f}"
            elif mode == "hybrid" and name in TARGETS:
                ok = "met" if m["recall@5"] >= TARGETS[name] else "NOT met"
                ref = f"target {TARGETS[name]:.2f} {ok}"
            lines.append(
                f"{name:<16} {mode:<8} {m['recall@1']:6.3f} {m['recall@5']:6.3f} "
                f"{m['recall@10']:6.3f} {m['mrr']:6.3f} {m['latency_p50_ms']:7.1f} "
                f"{m['latency_p90_ms']:7.1f}  {ref}"
            )
        lines.append(f"{'':<16} ({res['tools']} tools, {res['queries']} queries)")
    sweeps = {n: r["sweep"] for n, r in report["sets"].items() if r.get("sweep")}
    if sweeps:
        lines += ["", "hybrid fusion sweep, recall@5 (mean over sets last):"]
        names = list(sweeps)
        lines.append(
            f"{'fusion':<8} {'w_dense':>7} {'w_sent':>6} "
            + " ".join(f"{n[:12]:>12}" for n in names)
            + f" {'mean':>6}"
        )
        for i, entry in enumerate(next(iter(sweeps.values()))):
            values = [sweeps[n][i]["recall@5"] for n in names]
            lines.append(
                f"{entry['fusion']:<8} {entry['dense_weight']:7.2f} {entry['segment_weight']:6.1f} "
                + " ".join(f"{v:12.3f}" for v in values)
                + f" {np.mean(values):6.3f}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m insitu.evals.retrieval", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", type=Path, default=None, help="tool_retrieval folder")
    parser.add_argument("--sets", default=None, help="comma-separated set names")
    parser.add_argument("--limit-queries", type=int, default=None, help="queries per set")
    parser.add_argument("--embedding", default="minilm", choices=["minilm", "hashing"])
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--no-params", action="store_true", help="do not index parameters")
    parser.add_argument("--sweep", action="store_true", help="also score the fusion grid")
    tuning = parser.add_argument_group(
        "index settings", "override the ToolIndex defaults of tool_store/index.py"
    )
    tuning.add_argument("--fusion", choices=["zscore", "minmax", "rrf"], default=None)
    tuning.add_argument("--dense-weight", type=float, default=None)
    tuning.add_argument("--segment-weight", type=float, default=None)
    tuning.add_argument("--candidates", type=int, default=None, help="per side and sentence")
    tuning.add_argument("--bm25-k1", type=float, default=None)
    tuning.add_argument("--bm25-b", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    try:
        report = run_retrieval_benchmark(
            args.data,
            [s for s in re.split(r"[,\s]+", args.sets) if s] if args.sets else None,
            limit_queries=args.limit_queries,
            embedding=args.embedding,
            cache_dir=args.cache_dir,
            with_params=not args.no_params,
            sweep=args.sweep,
            index_kwargs={
                key: getattr(args, key)
                for key in (
                    "fusion",
                    "dense_weight",
                    "segment_weight",
                    "candidates",
                    "bm25_k1",
                    "bm25_b",
                )
                if getattr(args, key) is not None
            },
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except ValueError as exc:  # an unknown set name
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
