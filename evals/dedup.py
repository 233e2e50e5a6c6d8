"""Deduplication benchmark: how well candidate groups recover known duplicate groups.

Each set under ``tool_dedup/`` has ``items.jsonl`` (``item_id``, ``group_id``,
``name``, ``code`` or ``text``); items of one ``group_id`` behave the same. Every
item becomes the two things :func:`insitu.tool_store.clustering.candidate_groups`
looks at, a *text* (what it does, plus its signature) and a *name*:

* code items (``recode_mbpp_natgen``): the docstring up to its first doctest,
  then ``Inputs: <parameter names>.``, as :func:`clustering_text` renders a
  tool's description and input fields; the name is the function's name. The
  rewrites keep the docstring but rename variables (parameters included), move
  code around and insert dead code, so the text differs within a group only
  by its parameter names: this set measures mostly *precision* (different
  MBPP problems with similar descriptions). The function name is shared by a
  whole group (and by 56 names across groups), so the name signal is strong
  here; the ``name 0`` rows show the embedding alone;
* text items (``gorilla_api_docs``): the API description as the text, the
  model or API name as the name (``model_id`` names 39 different groups).

The items are grouped by :func:`insitu.tool_store.clustering.cluster_items`
(the same linking and size-capped union-find as the Aggregator) for each
``threshold`` x ``name_weight`` setting, and scored against the gold groups:

* pairwise precision / recall / F1: over pairs of items, "same predicted group"
  against "same gold group";
* ``groups``: predicted groups of two or more items (= LLM merge calls), and
  ``pure``: the share of them whose items all come from one gold group;
* time: embedding (once per set; cached under ``$TMPDIR/insitu-dedup-cache``)
  and grouping (per setting).

Gold groups larger than ``--group-cap`` (default 8; gorilla has groups of 61,
124 and 220 write-ups of one API) are cut down to that many items, evenly
spread: the Aggregator runs after every batch, so it never sees hundreds of
copies of a tool at once, and such groups would otherwise dominate the pair
counts. ``--limit`` samples that many gold groups per set, evenly spread.

Choice of the defaults (``DEFAULT_THRESHOLD = 0.9``, ``DEFAULT_NAME_WEIGHT = 0.5``,
``DEFAULT_K = 3``, ``DEFAULT_MAX_GROUP_SIZE = 8`` in ``tool_store/clustering.py``),
from the MiniLM run recorded in ``docs/performance.md``. A false merge costs one
LLM call and a test run, and the LLM rejects it; a missed duplicate stays in the
library (until a later batch catches it) and splits the usage statistics. So
precision is favoured, but recall matters too:

* on recode (the case closest to insitu's: short descriptions plus
  signatures), 0.9 with name weight 0.5 keeps precision 0.98 at recall 0.99;
  lower thresholds add no recall and lose precision;
* the ``name 0.00`` rows are what happens to duplicates whose names share no
  word (with any name weight, such a pair scores its bare cosine): 0.9 still
  finds 92% of the pairs, 0.92 only 89% and 0.95 only 84%, which rules out the
  higher thresholds that a heavier name weight (0.7) would need to reach the
  same precision;
* on gorilla no setting gets precision above 0.1: its "different" APIs are
  mostly variants of one model family (tiny/base/large, checkpoints) whose
  write-ups are near-identical, which is a merge an LLM may well make with a
  parameter; among settings that keep recall, 0.9/0.5 is close to the best;
* ``k = 3`` links per tool and groups of at most 8 (``--k``, ``--max-group-size``):
  at 0.9/0.5, k from 1 to 5 moves recode's precision and recall by under half
  a point, while k = 1 loses gorilla recall (0.26 against 0.31 from k = 3); a
  limit of 5 cannot hold a six-item recode group (recall 0.66) and 16 lets
  chains of near-misses grow (recode precision 0.72).

Usage::Usage::

    python -m insitu.evals.dedup [--data DIR] [--sets recode_mbpp_natgen,gorilla_api_docs]
        [--limit N] [--group-cap N] [--embedding minilm|hashing]
        [--thresholds 0.8,0.85,...] [--name-weights 0,0.5,0.7] [--k K]
        [--max-group-size N] [--json PATH]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from insitu import pyast

DEFAULT_DATA = Path("..") / "shared" / "data" / "tool_dedup"
DEFAULT_SETS = ("recode_mbpp_natgen", "gorilla_api_docs")
DEFAULT_THRESHOLDS = (0.8, 0.85, 0.88, 0.9, 0.92, 0.95)
DEFAULT_NAME_WEIGHTS = (0.0, 0.5, 0.7)
#: Gold groups sampled per set; 0 keeps all (both sets have about a thousand, and
#: the whole run takes about a minute on 2 cores with MiniLM, half of it embedding).
DEFAULT_LIMIT = 0
#: Items kept per gold group (= the clustering's default largest group).
DEFAULT_GROUP_CAP = 8


def default_data_dir() -> Path:
    """``<project root>/../shared/data/tool_dedup``, from the current directory."""
    return (Path.cwd() / DEFAULT_DATA).resolve()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _description(doc: str) -> str:
    """The prose of a docstring: lines before the first doctest, joined."""
    lines: list[str] = []
    for line in doc.strip().splitlines():
        if line.strip().startswith(">>>"):
            break
        lines.append(line.strip())
    return " ".join(part for part in lines if part)


def code_text(code: str, name: str | None = None) -> str:
    """Render a function's source as a tool would be described.

    Args:
        code: Python source defining the function (possibly among others).
        name: The function to describe; default: the first one defined.

    Returns:
        ``"<docstring prose> Inputs: a, b."``; if the code does not parse, the
        code itself.
    """
    try:
        tree = pyast.parse(code)
    except SyntaxError:
        return code.strip()
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    if not functions:
        return code.strip()
    func = next((f for f in functions if f.name == name), functions[0])
    doc = _description(ast.get_docstring(func) or "")
    args = [a.arg for a in func.args.posonlyargs + func.args.args + func.args.kwonlyargs]
    inputs = f" Inputs: {', '.join(args)}." if args else ""
    return (doc + inputs).strip() or code.strip()


def item_text(item: dict[str, Any]) -> str:
    """The text an item is embedded as (see the module docstring)."""
    if item.get("code"):
        return code_text(item["code"], item.get("name"))
    return str(item.get("text") or "").strip()


def sample_items(
    items: Sequence[dict[str, Any]], limit: int | None, group_cap: int | None
) -> list[dict[str, Any]]:
    """Keep ``limit`` gold groups (evenly spread) and at most ``group_cap`` items of each.

    Args:
        items: The set's items, in file order.
        limit: Groups to keep; ``None`` or 0 keeps all.
        group_cap: Items kept per group, evenly spread; ``None`` or 0 keeps all.

    Returns:
        The kept items, in file order.
    """
    by_group: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        by_group[str(item["group_id"])].append(index)
    groups = list(by_group)
    if limit and limit < len(groups):
        step = len(groups) / limit
        groups = [groups[int(i * step)] for i in range(limit)]
    kept: list[int] = []
    for group in groups:
        members = by_group[group]
        if group_cap and len(members) > group_cap:
            step = len(members) / group_cap
            members = [members[int(i * step)] for i in range(group_cap)]
        kept.extend(members)
    return [items[i] for i in sorted(kept)]


def _pairs(sizes: Any) -> int:
    return sum(n * (n - 1) // 2 for n in sizes)


def pairwise_scores(predicted: Sequence[Sequence[int]], gold: Sequence[str]) -> dict[str, float]:
    """Pairwise precision, recall and F1 of a partition against gold labels.

    Args:
        predicted: A partition of ``range(len(gold))``.
        gold: The gold group of each item.

    Returns:
        ``precision``, ``recall``, ``f1`` (a metric with no pair to count is
        1.0), ``groups`` (predicted groups of 2+) and ``pure`` (share of those
        whose items share one gold group).
    """
    true_pairs = _pairs(Counter(gold).values())
    pred_pairs = _pairs(len(group) for group in predicted)
    hits = 0
    multi = pure = 0
    for group in predicted:
        labels = Counter(gold[i] for i in group)
        hits += _pairs(labels.values())
        if len(group) > 1:
            multi += 1
            pure += len(labels) == 1
    precision = hits / pred_pairs if pred_pairs else 1.0
    recall = hits / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "groups": multi,
        "pure": pure / multi if multi else 1.0,
    }


def _cache_path(embedding: str, texts: Sequence[str]) -> Path:
    digest = hashlib.sha256(embedding.encode())
    for text in texts:
        digest.update(b"\0" + text.encode())
    root = Path(os.environ.get("TMPDIR") or tempfile.gettempdir()) / "insitu-dedup-cache"
    return root / f"{embedding}-{digest.hexdigest()[:24]}.npy"


def embed_texts(texts: Sequence[str], embedding: str) -> tuple[np.ndarray, float, bool]:
    """Embed texts, each distinct text once, through an on-disk cache.

    Returns:
        The ``(n, d)`` vectors, the seconds spent embedding (0 if cached) and
        whether they came from the cache.
    """
    from insitu.tool_store.embeddings import embed

    unique = sorted(set(texts))
    path = _cache_path(embedding, unique)
    if path.is_file():
        vectors, seconds, cached = np.load(path), 0.0, True
    else:
        start = time.perf_counter()
        vectors = embed(unique, embedding)
        seconds, cached = time.perf_counter() - start, False
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    row = {text: i for i, text in enumerate(unique)}
    return vectors[[row[t] for t in texts]], seconds, cached


def run_set(
    items: Sequence[dict[str, Any]],
    *,
    embedding: str,
    thresholds: Sequence[float],
    name_weights: Sequence[float],
    k: int | None = None,
    max_group_size: int | None = None,
) -> dict[str, Any]:
    """Score every setting on one (sampled) set.

    Returns:
        A dict with the set's sizes, embedding time and one row per setting.
    """
    from insitu.tool_store.clustering import DEFAULT_K, DEFAULT_MAX_GROUP_SIZE, cluster_items

    texts = [item_text(item) for item in items]
    names = [str(item.get("name") or "") for item in items]
    gold = [str(item["group_id"]) for item in items]
    vectors, embed_seconds, cached = embed_texts(texts, embedding)
    rows: list[dict[str, Any]] = []
    for weight in name_weights:
        for threshold in thresholds:
            start = time.perf_counter()
            groups = cluster_items(
                texts,
                names,
                vectors=vectors,
                threshold=threshold,
                name_weight=weight,
                k=k or DEFAULT_K,
                max_group_size=max_group_size or DEFAULT_MAX_GROUP_SIZE,
            )
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "threshold": threshold,
                    "name_weight": weight,
                    "k": k or DEFAULT_K,
                    "max_group_size": max_group_size or DEFAULT_MAX_GROUP_SIZE,
                    "seconds": seconds,
                }
                | pairwise_scores(groups, gold)
            )
    return {
        "items": len(items),
        "gold_groups": len(set(gold)),
        "gold_pairs": _pairs(Counter(gold).values()),
        "distinct_texts": len(set(texts)),
        "embed_seconds": embed_seconds,
        "embed_cached": cached,
        "rows": rows,
    }


def _print_set(name: str, result: dict[str, Any]) -> None:
    embed_note = "cached" if result["embed_cached"] else f"{result['embed_seconds']:.1f}s"
    print(
        f"\n{name}: {result['items']} items, {result['gold_groups']} gold groups, "
        f"{result['gold_pairs']} gold pairs, {result['distinct_texts']} distinct texts "
        f"(embedding {embed_note})"
    )
    print(
        f"   {'threshold':>9} {'name':>5} {'precision':>9} {'recall':>7} {'F1':>6} "
        f"{'groups':>7} {'pure':>6} {'time':>7}"
    )
    for row in result["rows"]:
        print(
            f"{_mark(row)} {row['threshold']:>9.2f} {row['name_weight']:>5.2f} "
            f"{row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f} "
            f"{row['groups']:>7d} {row['pure']:>6.3f} {row['seconds']:>6.2f}s"
        )


def _mark(row: dict[str, Any]) -> str:
    from insitu.tool_store.clustering import (
        DEFAULT_K,
        DEFAULT_MAX_GROUP_SIZE,
        DEFAULT_NAME_WEIGHT,
        DEFAULT_THRESHOLD,
    )

    setting = (row["threshold"], row["name_weight"], row["k"], row["max_group_size"])
    default = (DEFAULT_THRESHOLD, DEFAULT_NAME_WEIGHT, DEFAULT_K, DEFAULT_MAX_GROUP_SIZE)
    return " *" if setting == default else "  "


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def run_dedup_benchmark(
    data_dir: str | Path | None = None,
    sets: Sequence[str] | None = None,
    *,
    limit: int | None = DEFAULT_LIMIT,
    group_cap: int | None = DEFAULT_GROUP_CAP,
    embedding: str = "minilm",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    name_weights: Sequence[float] = DEFAULT_NAME_WEIGHTS,
    k: int | None = None,
    max_group_size: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the benchmark over the chosen sets.

    Args:
        data_dir: The ``tool_dedup`` folder (default :func:`default_data_dir`).
        sets: Set names (default :data:`DEFAULT_SETS`).
        limit: Gold groups sampled per set (0 or ``None``: all).
        group_cap: Items kept per gold group (0 or ``None``: all).
        embedding: ``"minilm"`` or ``"hashing"``.
        thresholds: Similarity thresholds to score.
        name_weights: Name-overlap weights to score.
        k: Links per item (default: the clustering's).
        max_group_size: Largest group (default: the clustering's).
        log: Progress messages.

    Returns:
        ``{"data_dir", "settings", "sets": {name: result}, "missing_sets",
        "total_seconds"}`` (each result as :func:`run_set` returns it), or
        ``{"skipped": reason}`` when the data folder is absent.
    """
    from insitu.tool_store.clustering import DEFAULT_K, DEFAULT_MAX_GROUP_SIZE

    data = (Path(data_dir) if data_dir is not None else default_data_dir()).resolve()
    if not data.is_dir():
        return {"skipped": f"dedup data folder {data} not found (pass --data DIR)"}
    results: dict[str, Any] = {}
    missing: list[str] = []
    started = time.perf_counter()
    for name in sets or DEFAULT_SETS:
        path = data / name / "items.jsonl"
        if not path.is_file():
            missing.append(name)
            continue
        items = sample_items(_read_jsonl(path), limit, group_cap)
        log(f"{name}: grouping {len(items)} items ({embedding})")
        results[name] = run_set(
            items,
            embedding=embedding,
            thresholds=thresholds,
            name_weights=name_weights,
            k=k,
            max_group_size=max_group_size,
        )
    return {
        "data_dir": str(data),
        "settings": {
            "embedding": embedding,
            "limit": limit or 0,
            "group_cap": group_cap or 0,
            "thresholds": list(thresholds),
            "name_weights": list(name_weights),
            "k": k or DEFAULT_K,
            "max_group_size": max_group_size or DEFAULT_MAX_GROUP_SIZE,
        },
        "sets": results,
        "missing_sets": missing,
        "total_seconds": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (0 also when skipped for lack of data)."""
    parser = argparse.ArgumentParser(
        prog="python -m insitu.evals.dedup", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", type=Path, default=None, help="folder holding the sets")
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS), help="comma-separated sets")
    parser.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help="gold groups per set (0: all)"
    )
    parser.add_argument(
        "--group-cap", type=int, default=DEFAULT_GROUP_CAP, help="items per gold group (0: all)"
    )
    parser.add_argument("--embedding", default="minilm", choices=("minilm", "hashing"))
    parser.add_argument("--thresholds", default=",".join(map(str, DEFAULT_THRESHOLDS)))
    parser.add_argument("--name-weights", default=",".join(map(str, DEFAULT_NAME_WEIGHTS)))
    parser.add_argument(
        "--k", type=int, default=None, help="links per item (default: clustering's)"
    )
    parser.add_argument(
        "--max-group-size", type=int, default=None, help="largest group (default: clustering's)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    data = (args.data or default_data_dir()).resolve()
    if not data.is_dir():
        print(f"skipped: dedup data folder {data} not found (pass --data DIR)")
        return 0
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    from insitu.tool_store.clustering import DEFAULT_K, DEFAULT_MAX_GROUP_SIZE

    print(
        f"dedup benchmark: embedding={args.embedding}, limit={args.limit or 'all'} groups/set, "
        f"gold group cap={args.group_cap or 'none'}, k={args.k or DEFAULT_K}, "
        f"max group size={args.max_group_size or DEFAULT_MAX_GROUP_SIZE}; "
        "* = the clustering defaults"
    )
    report = run_dedup_benchmark(
        data,
        sets,
        limit=args.limit,
        group_cap=args.group_cap,
        embedding=args.embedding,
        thresholds=_floats(args.thresholds),
        name_weights=_floats(args.name_weights),
        k=args.k,
        max_group_size=args.max_group_size,
    )
    results: dict[str, Any] = report["sets"]
    for name in report["missing_sets"]:
        print(f"\n{name}: skipped, {data / name / 'items.jsonl'} not found")
    for name, result in results.items():
        _print_set(name, result)
    if len(results) > 1:
        print("\nmean over sets")
        print(f"   {'threshold':>9} {'name':>5} {'precision':>9} {'recall':>7} {'F1':>6}")
        for i, row in enumerate(next(iter(results.values()))["rows"]):
            means = {
                key: float(np.mean([r["rows"][i][key] for r in results.values()]))
                for key in ("precision", "recall", "f1")
            }
            print(
                f"{_mark(row)} {row['threshold']:>9.2f} {row['name_weight']:>5.2f} "
                f"{means['precision']:>9.3f} {means['recall']:>7.3f} {means['f1']:>6.3f}"
            )
    print(f"\ntotal time {report['total_seconds']:.1f}s")
    if args.json:
        settings = vars(args) | {"data": str(data), "json": str(args.json)}
        args.json.write_text(json.dumps({"args": settings, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
