"""Replay benchmark: is a task solved once solved again, as the library grows?

One run, figures side by side:

1. A scripted stream (``insitu.testing.team.scripted_stream``: statistics and
   date questions, their two capabilities recurring) is evolved from an empty
   library by :func:`insitu.evolve.evolve` with the scripted team, a test
   double: **the figures describe insitu's machinery, not model results**.
2. Every task it completed, and one paraphrase of each (reworded questions the
   scripted team still recognises), is replayed with
   :func:`insitu.evals.replay.run_replay`: against the run's library frozen,
   then against copies padded with inert distractors to each of ``--sizes``
   (default 10,000 and 100,000 tools, built from ``../shared/data/tool_retrieval``
   and cached between runs; the build time is reported on its own).

Targets: on every replay 100 % re-solved with 0 new tools and the library
unchanged; retrieval hit rate of the first solve's tools >= 95 % with 10,000 and
100,000 tools; replay tokens <= 60 % of the first solve's.

Usage::

    python -m insitu.evals.bench_replay [--tasks 32] [--batch-size 8]
        [--sizes 10000,100000] [--embedding minilm|hashing] [--no-paraphrases]
        [--data DIR] [--cache-dir DIR] [--workdir DIR] [--json PATH]

With MiniLM (the default), the first 100,000-tool build embeds about 100,000
distractor texts (about 15 to 20 minutes on 2 busy cores); later runs take
the vectors, and the padded libraries themselves, from the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: Targets of issue #12 item 4.
TARGET_RESOLVE_RATE = 1.0
TARGET_HIT_RATE = 0.95
TARGET_TOKENS_RATIO = 0.60


def paraphrase(question: str) -> str:
    """Reword a question of ``scripted_stream`` (the scripted team still recognises it)."""
    mean = re.match(r"What is the mean of (.+)\?$", question)
    if mean:
        return f"Compute the average of these numbers: {mean.group(1)}."
    days = re.match(r"How many days from (\S+) to (\S+)\?$", question)
    if days:
        return f"Count the days between {days.group(1)} and {days.group(2)}."
    return f"Please answer: {question}"


#: Retrieval depths of the what-if diagnostic (the Manager's is ``retrieval_k``, 8).
WHAT_IF_KS = (8, 16, 32)
_LITERALS = re.compile(r"(?<![A-Za-z])\d[\d.,:/-]*")


#: Results searched before collapsing distractor variants to one per corpus tool.
COLLAPSE_POOL = 128


def _base_name(name: str) -> str:
    """A distractor's name without its variant suffix (``get_day_batch`` -> ``get_day``)."""
    from insitu.evals.distractors import VARIANTS

    head, _, tail = name.rpartition("_")
    return head if head and tail in {suffix for suffix, _ in VARIANTS} else name


def without_literals(question: str) -> str:
    """The question without its numbers and dates (a what-if of the Manager's query)."""
    return " ".join(_LITERALS.sub(" ", question).split())


def retrieval_what_if(report: dict[str, Any]) -> dict[str, Any]:
    """Hit rates at deeper k, and with the query's numbers and dates removed (a diagnostic).

    Searches the replayed library as the Manager does (``store.search(question, k)``,
    hybrid) for every replayed task's first-solve tools, at each k of
    :data:`WHAT_IF_KS` (a search for the top k is not the prefix of a deeper one:
    the fusion normalises scores over a candidate pool of at least k per side).
    Not the shipped behaviour: it shows which lever a retrieval miss responds to.
    """
    from insitu.context import InsituContext
    from insitu.evals.replay import open_library

    store = open_library(Path(report["replayed_library"]), InsituContext())

    def search(query: str, k: int, mode: str, collapse: bool) -> set[str]:
        if not collapse:
            return {hit.record.name for hit in store.search(query, k=k, mode=mode)}
        # One result per corpus tool: a distractor's variants count once (as if absorbing
        # had merged them, or retrieval diversified its candidates).
        kept: dict[str, str] = {}
        for hit in store.search(query, k=COLLAPSE_POOL, mode=mode):
            kept.setdefault(_base_name(hit.record.name), hit.record.name)
        return set(list(kept.values())[:k])

    variants = {
        "hybrid, task text (the Manager's)": ("hybrid", lambda q: q, False),
        "hybrid, without numbers and dates": ("hybrid", without_literals, False),
        "dense only, task text": ("dense", lambda q: q, False),
        "lexical only, task text": ("lexical", lambda q: q, False),
        "hybrid, task text, variants collapsed": ("hybrid", lambda q: q, True),
    }
    rates: dict[str, dict[str, float]] = {}
    for label, (mode, rewrite, collapse) in variants.items():
        for k in WHAT_IF_KS:
            hits = wanted = 0
            for row in report["rows"]:
                tools = [n for n in row["first_tools"] if n not in row["first_tools_gone"]]
                if not tools:
                    continue
                found = search(rewrite(row["question"]), k, mode, collapse)
                hits += sum(1 for n in tools if n in found)
                wanted += len(tools)
            if wanted:
                rates.setdefault(label, {})[str(k)] = round(hits / wanted, 4)
    return {"hit_rate": rates}


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux
        return "n/a"


@contextmanager
def _workdir(keep: str | None) -> Iterator[Path]:
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    # Like a real store, not under /tmp: the sandbox confines warm workers to a workspace root.
    base = "/var/tmp" if os.path.isdir("/var/tmp") else None
    with tempfile.TemporaryDirectory(prefix="bench-replay-", dir=base) as tmp:
        yield Path(tmp)


def evolve_stream(
    root: Path, tasks: int, batch_size: int, embedding: str, log: Any
) -> tuple[Path, dict[str, Any]]:
    """Evolve the scripted stream from an empty library; return the run folder and its summary."""
    from insitu.evals.tasks import Task
    from insitu.evolve import evolve
    from insitu.testing.team import ScriptedTeam, scripted_stream
    from insitu.tool_store import ToolStore

    stream = [Task(**t) for t in scripted_stream(tasks)]
    library = root / "library"
    run_dir = root / "run"
    (root / "tasks.jsonl").write_text(
        "".join(json.dumps(t.model_dump(exclude_defaults=True)) + "\n" for t in stream)
    )
    started = time.perf_counter()
    # Opened here and closed after the run, so that the replays can open it in turn.
    with ToolStore.open(library, embedding=embedding) as store:
        summary = evolve(
            stream,
            run_dir=run_dir,
            batch_size=batch_size,
            context={"store_dir": str(library), "batch_concurrency": batch_size},
            models=ScriptedTeam().model(),
            tool_store=store,
            tasks_source=str(root / "tasks.jsonl"),
            scripted=True,
        )
    log(
        f"evolved {summary.tasks} tasks in {time.perf_counter() - started:.1f} s: "
        f"{summary.completed} completed, library {summary.library_size} tools"
    )
    return run_dir, summary.model_dump()


def run_benchmark(
    *,
    root: Path,
    tasks: int,
    batch_size: int,
    sizes: Sequence[int],
    embedding: str,
    paraphrases: bool,
    data_dir: Path,
    cache_dir: Path | None,
    log: Any,
) -> dict[str, Any]:
    """Evolve once, then replay against the library and each padded size."""
    from insitu.evals.replay import library_state, run_replay
    from insitu.testing.team import ScriptedTeam
    from insitu.tool_store import ToolStore

    run_dir, evolved = evolve_stream(root, tasks, batch_size, embedding, log)
    paraphrase_file = None
    if paraphrases:
        paraphrase_file = root / "paraphrases.jsonl"
        rows = [
            json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()
        ]
        paraphrase_file.write_text(
            "".join(
                json.dumps({"id": r["id"], "paraphrases": [paraphrase(r["question"])]}) + "\n"
                for r in rows
                if r["status"] == "completed"
            )
        )
    with ToolStore.open(root / "library", read_only=True) as library:
        original_before = library_state(library)
    replays = []
    for size in [0, *sizes]:
        log(f"replay against {'the library' if not size else f'{size:,} tools'}")
        report = run_replay(
            run_dir,
            paraphrases=paraphrase_file,
            distractors=size,
            data_dir=data_dir,
            cache_dir=cache_dir,
            replay_dir=root / f"replay-{size}",
            models=ScriptedTeam().model(),
            scripted=True,
            log=log,
        )
        if size:
            report["what_if"] = retrieval_what_if(report)
        replays.append(report)
    with ToolStore.open(root / "library", read_only=True) as library:
        original_after = library_state(library)
    return {
        "evolve": evolved,
        "replays": replays,
        "original_library_unchanged": original_before == original_after,
        "original_library": original_after,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _by_role(report: dict[str, Any], role: str) -> str:
    counts = report.get("tokens_by_role", {}).get(role, {"first": 0, "replay": 0})
    return f"{counts['replay']:,} / {counts['first']:,}"


def format_results(result: dict[str, Any]) -> str:
    """The side-by-side table, with each target's verdict."""
    replays = result["replays"]

    def size_of(r: dict[str, Any]) -> str:
        return f"{r['library_before']['tools']:,} tools"

    def build(r: dict[str, Any]) -> str:
        padded = r["distractors"]
        if padded is None:
            return "-"
        how = "cached" if padded["cached"] else "built now"
        return (
            f"{padded['build_s']:.1f} s ({how}; embed {padded['embed_s']:.1f} s of "
            f"{padded['embedded']:,}, commit {padded['commit_s']:.1f} s)"
        )

    lines = [
        ["library", *(size_of(r) for r in replays)],
        ["replayed tasks (originals + paraphrases)",
         *(f"{r['tasks']} ({r['originals']} + {r['paraphrases']})" for r in replays)],
        ["re-solved",
         *(f"{r['resolved']}/{r['tasks']} ({_pct(r['resolve_rate'])})" for r in replays)],
        ["tools created", *(str(r["tools_created"]) for r in replays)],
        ["library unchanged", *("yes" if r["library_unchanged"] else "NO" for r in replays)],
        ["retrieval hit rate",
         *(f"{_pct(r['retrieval_hit_rate'])} ({r['retrieval_hits']}/{r['retrieval_expected']})"
           for r in replays)],
        ["tokens ratio, all tasks", *(_ratio(r["tokens_ratio"]) for r in replays)],
        ["  the run's tasks", *(_ratio(r["tokens_ratio_originals"]) for r in replays)],
        ["  paraphrases", *(_ratio(r["tokens_ratio_paraphrases"]) for r in replays)],
        ["  first solve built its tool", *(_ratio(r["tokens_ratio_first_built"]) for r in replays)],
        ["  first solve reused a tool", *(_ratio(r["tokens_ratio_first_reused"]) for r in replays)],
        ["replay tokens / first-solve tokens",
         *(f"{r['replay_tokens']:,} / {r['first_tokens']:,}" for r in replays)],
        *(
            [f"  {role}", *(_by_role(r, role) for r in replays)]
            for role in sorted({role for r in replays for role in r.get("tokens_by_role", {})})
        ),
        ["replay wall time", *(f"{r['replay_s']:.1f} s" for r in replays)],
        ["padded library build", *(build(r) for r in replays)],
        ["load (1, 5, 15 min) at start",
         *(" ".join(str(x) for x in r["machine"]["load_at_start"] or []) for r in replays)],
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    text = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        )
        for row in lines
    ]
    text.insert(1, "-" * len(text[0]))
    padded = [r for r in replays if r["distractors"] is not None]
    verdicts = [
        (
            "100 % re-solved, 0 tools created, library unchanged, on every replay",
            all(
                r["resolve_rate"] == TARGET_RESOLVE_RATE
                and r["tools_created"] == 0
                and r["library_unchanged"]
                for r in replays
            ),
        ),
        (
            f"retrieval hit rate >= {TARGET_HIT_RATE:.0%} with the padded libraries",
            bool(padded) and all((r["retrieval_hit_rate"] or 0) >= TARGET_HIT_RATE for r in padded),
        ),
        (
            f"replay tokens <= {TARGET_TOKENS_RATIO:.0%} of the first solve's (the run's tasks)",
            all((r["tokens_ratio_originals"] or 9) <= TARGET_TOKENS_RATIO for r in replays),
        ),
        (
            "  ... paraphrases included (reworded tasks below reuse_plan_min_similarity are "
            "planned afresh)",
            all((r["tokens_ratio"] or 9) <= TARGET_TOKENS_RATIO for r in replays),
        ),
        (
            "  ... on the tasks whose first solve built its tool",
            all((r["tokens_ratio_first_built"] or 9) <= TARGET_TOKENS_RATIO for r in replays),
        ),
        (
            "the run's own library untouched by the padded copies",
            result["original_library_unchanged"],
        ),
    ]
    text.append("")
    text += [f"target: {name}: {'met' if ok else 'NOT met'}" for name, ok in verdicts]
    what_ifs = [r for r in padded if r.get("what_if")]
    if what_ifs:
        text += [
            "",
            "retrieval what-if (a diagnostic, not the shipped behaviour): share of the "
            "first-solve tools in the top k of the same hybrid search",
        ]
        for r in what_ifs:
            for label, rates in r["what_if"]["hit_rate"].items():
                cells = ", ".join(f"k={k}: {_pct(v)}" for k, v in rates.items())
                text.append(f"  {r['library_before']['tools']:>7,} tools, {label}: {cells}")
    return "\n".join(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table (``--json`` also writes every figure)."""
    parser = argparse.ArgumentParser(
        prog="python -m insitu.evals.bench_replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(x) for x in text.split(",") if x.strip()],
        default=[10_000, 100_000],
        help="padded library sizes (the library itself is always replayed first)",
    )
    parser.add_argument("--embedding", choices=["minilm", "hashing"], default="minilm")
    parser.add_argument("--no-paraphrases", action="store_true")
    parser.add_argument("--data", help="tool_retrieval folder (default: ../shared/data/...)")
    parser.add_argument(
        "--cache-dir", help="distractor cache (default: $TMPDIR/insitu-replay-cache)"
    )
    parser.add_argument("--workdir", help="keep the run and replays here (default: a temp dir)")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)

    from insitu.cli.eval import find_data_dir
    from insitu.evals.harness import SCRIPTED_NOTE

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    data = Path(args.data) if args.data else find_data_dir("tool_retrieval")[0]
    if args.sizes and (data is None or not data.is_dir()):
        print("skipped: no tool_retrieval data (pass --data DIR)")
        return 0
    command = "python -m insitu.evals.bench_replay " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    out: dict[str, Any] = {
        "command": command.strip(),
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "load_at_start": _load(),
        "scripted": True,
        "note": SCRIPTED_NOTE,
        "embedding": args.embedding,
    }
    print(f"$ {out['command']}\n{out['date']} | {out['machine']} | load {out['load_at_start']}")
    print(f"{SCRIPTED_NOTE}\n", flush=True)
    started = time.perf_counter()
    with _workdir(args.workdir) as root:
        out.update(
            run_benchmark(
                root=root,
                tasks=args.tasks,
                batch_size=args.batch_size,
                sizes=args.sizes,
                embedding=args.embedding,
                paraphrases=not args.no_paraphrases,
                data_dir=data,
                cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                log=log,
            )
        )
    out["load_at_end"] = _load()
    out["total_s"] = round(time.perf_counter() - started, 1)
    print(format_results(out))
    print(f"\ntotal {out['total_s']:.0f} s; load at end {out['load_at_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
