"""``insitu eval``: the benchmarks from the shell.

Every subcommand prints a readable table on stdout, progress on stderr, and
with ``--json PATH`` writes its full, machine-readable result there. A missing
data folder is a configuration error (exit 2, with what to pass).

To add a subcommand, decorate it with ``@eval_group.command("name")`` and
:func:`insitu.cli.settings_options` in this module and reuse
:func:`json_option`, :func:`progress` and :func:`write_json`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from insitu.cli.common import (
    EXIT_CONFIG,
    err,
    fail,
    fail_configuration,
    fail_model_endpoint,
    interruptible,
    out,
    scripted_models,
    settings_options,
)
from insitu.context import InsituContext

#: Environment variable naming the folder that holds ``tool_retrieval/`` and ``tool_dedup/``.
ENV_DATA = "INSITU_DATA"
#: Where the shared data sits relative to the project root (or the current directory).
SHARED_DATA = Path("..") / "shared" / "data"
REPO_ROOT = Path(__file__).resolve().parents[2]


class EvalGroup(click.Group):
    """``insitu eval SUITE ...`` is short for ``insitu eval suite SUITE ...``."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "suite", self.commands["suite"], args
        return super().resolve_command(ctx, args)


@click.group("eval", cls=EvalGroup, invoke_without_command=False)
@settings_options
def eval_group() -> None:
    """Compare systems on a task suite, or run a benchmark of insitu's machinery.

    `insitu eval SUITE --systems ...` compares systems (see `insitu eval suite --help`);
    `retrieval`, `dedup` and `scaling` measure the store and the absorbing step; `replay`
    re-asks a run's solved tasks against its frozen library.
    """


# ---------------------------------------------------------------- shared helpers


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--json PATH`` option (passed to the command as ``json_path``)."""
    return click.option(
        "--json",
        "json_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Also write the full results as JSON to this file.",
    )(command)


def progress(message: str) -> None:
    """Print one progress line on stderr."""
    err.print(f"[dim]·[/] {escape(message)}", highlight=False, soft_wrap=True)


def write_json(report: dict[str, Any], path: Path | None) -> None:
    """Write ``report`` to ``path`` (nothing when ``None``)."""
    if path is None:
        return
    try:
        path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {path}: {exc}", EXIT_CONFIG)
    progress(f"results written to {path}")


def split_list(text: str | None) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [part for part in re.split(r"[,\s]+", text or "") if part]


def split_floats(text: str, option: str) -> list[float]:
    """Comma-separated numbers, or a usage error naming ``option``."""
    try:
        values = [float(part) for part in split_list(text)]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated numbers, got {text!r}", param_hint=option
        ) from None
    if not values:
        raise click.BadParameter("give at least one number", param_hint=option)
    return values


def find_data_dir(
    name: str,
    *,
    cwd: Path | None = None,
    repo_root: Path | None = None,
    env: dict[str, str] | None = None,
) -> tuple[Path | None, list[Path]]:
    """Find the default data folder ``name`` (``tool_retrieval``, ``tool_dedup``).

    Looks for ``../shared/data/<name>`` from the current directory, then from
    the project root, then for ``$INSITU_DATA/<name>``.

    Returns:
        The first folder that exists (or ``None``) and every place looked at.
    """
    env = os.environ if env is None else env
    places = [
        ((cwd or Path.cwd()) / SHARED_DATA / name).resolve(),
        ((repo_root or REPO_ROOT) / SHARED_DATA / name).resolve(),
    ]
    if env.get(ENV_DATA):
        places.append(Path(env[ENV_DATA]).expanduser().resolve() / name)
    places = list(dict.fromkeys(places))
    return next((p for p in places if p.is_dir()), None), places


def data_root(name: str, given: Path | None, marker: str) -> tuple[Path, list[str] | None]:
    """Resolve a benchmark's data folder, or fail with exit code 2.

    Args:
        name: The default folder's name under the shared data.
        given: ``--data DIR``: a folder of sets, or one set's folder.
        marker: The file every set folder holds (``tools.jsonl``, ``items.jsonl``).

    Returns:
        The folder of sets, and ``[set]`` when ``given`` was a single set's folder.
    """
    if given is None:
        found, places = find_data_dir(name)
        if found is None:
            looked = ", ".join(str(p) for p in places)
            fail(
                f"no {name} data found (looked in {looked}); pass --data DIR or set "
                f"${ENV_DATA} to the folder that holds {name}/",
                EXIT_CONFIG,
            )
        root = found
    else:
        root = given.expanduser().resolve()
        if not root.is_dir():
            fail(f"data folder {root} does not exist; pass --data DIR", EXIT_CONFIG)
    if (root / marker).is_file():
        return root.parent, [root.name]
    if not any((p / marker).is_file() for p in root.iterdir() if p.is_dir()):
        fail(
            f"{root} holds no benchmark set: expected sub-folders that hold {marker}",
            EXIT_CONFIG,
        )
    return root, None


def results_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    caption: str | None = None,
    *,
    labels: int = 2,
) -> Table:
    """A results table; the first ``labels`` columns are labels, the others numbers."""
    table = Table(
        title=escape(title),
        title_justify="left",
        caption=escape(caption) if caption else None,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < labels else "right", overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def show(table: Table) -> None:
    """Print a table on stdout; into a file or pipe at its full width, never folded."""
    if out.is_terminal:
        out.print(table)
        return
    wide = out.options.update_width(10_000)
    width = max(out.width, Measurement.get(out, wide, table).maximum)
    Console(file=out.file, width=width).print(table)


# ---------------------------------------------------------------- retrieval


@eval_group.command("retrieval")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="A tool_retrieval folder (sets with tools.jsonl + queries.jsonl) or one set's "
    "folder (default: ../shared/data/tool_retrieval from here or the project root, "
    "else $INSITU_DATA/tool_retrieval).",
)
@click.option("--sets", default=None, help="Comma-separated set names (default: every set).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Score an evenly spread sample of N queries per set (default: all).",
)
@click.option(
    "--embedding",
    type=click.Choice(["minilm", "hashing"]),
    default="minilm",
    show_default=True,
    help="Embedding of the dense side (hashing: fast, for tests).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Embedding cache (default: $TMPDIR/insitu-retrieval-cache).",
)
@json_option
@settings_options
def eval_retrieval(
    data_dir: Path | None,
    sets: str | None,
    limit: int | None,
    embedding: str,
    cache_dir: Path | None,
    json_path: Path | None,
) -> None:
    """Tool retrieval: dense, lexical and hybrid recall@1/5/10, MRR and search latency.

    Every tool of a set is indexed as the store indexes its tools; each query is
    run in the three modes and scored against its gold tools.
    """
    from insitu.evals.retrieval import BASELINES, TARGETS, run_retrieval_benchmark

    root, single = data_root("tool_retrieval", data_dir, "tools.jsonl")
    chosen = single or split_list(sets) or None
    try:
        report = run_retrieval_benchmark(
            root,
            chosen,
            limit_queries=limit,
            embedding=embedding,
            cache_dir=cache_dir,
            log=progress,
        )
    except ValueError as exc:  # an unknown set name
        fail(str(exc), EXIT_CONFIG)
    if "skipped" in report:  # pragma: no cover - data_root checked the folder
        fail(report["skipped"], EXIT_CONFIG)
    machine = report.get("machine") or {}
    sizes = "; ".join(
        f"{name}: {r['tools']} tools, {r['queries']} queries" for name, r in report["sets"].items()
    )
    caption = (
        f"{sizes}.\nR@k = share of a query's gold tools in the top k; MRR over the top 10; "
        "latency = one search, query embedding included"
        + (f"; {machine['cpus']} CPUs" if machine.get("cpus") else "")
        + ". ref R@5 = the curators' dense / tf-idf baselines, or this project's hybrid target."
    )
    rows = []
    for name, result in report["sets"].items():
        base = BASELINES.get(name, {})
        for mode, m in result["modes"].items():
            ref = ""
            if mode == "dense" and "dense" in base:
                ref = f"{base['dense']:.3f}"
            elif mode == "lexical" and "tfidf" in base:
                ref = f"{base['tfidf']:.3f}"
            elif mode == "hybrid" and name in TARGETS:
                ref = f"{TARGETS[name]:.2f} " + (
                    "met" if m["recall@5"] >= TARGETS[name] else "NOT met"
                )
            rows.append(
                [
                    name,
                    mode,
                    *(f"{m[key]:.3f}" for key in ("recall@1", "recall@5", "recall@10", "mrr")),
                    f"{m['latency_p50_ms']:.1f}",
                    f"{m['latency_p90_ms']:.1f}",
                    ref,
                ]
            )
    show(
        results_table(
            f"tool retrieval ({embedding}) on {report['data_dir']}",
            ["set", "mode", "R@1", "R@5", "R@10", "MRR", "p50 ms", "p90 ms", "ref R@5"],
            rows,
            caption,
        )
    )
    write_json(report, json_path)


# ---------------------------------------------------------------- dedup


@eval_group.command("dedup")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="A tool_dedup folder (sets with items.jsonl) or one set's folder (default: "
    "../shared/data/tool_dedup from here or the project root, else $INSITU_DATA/tool_dedup).",
)
@click.option("--sets", default=None, help="Comma-separated set names (default: both sets).")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Gold groups sampled per set, evenly spread (0: all).",
)
@click.option(
    "--group-cap",
    type=click.IntRange(min=0),
    default=None,
    help="Items kept per gold group (default: the benchmark's 8; 0: all).",
)
@click.option(
    "--embedding",
    type=click.Choice(["minilm", "hashing"]),
    default="minilm",
    show_default=True,
)
@click.option(
    "--thresholds",
    default=None,
    help="Comma-separated similarity thresholds (default: the Aggregator's).",
)
@click.option(
    "--name-weights",
    default=None,
    help="Comma-separated name-overlap weights (default: the Aggregator's).",
)
@json_option
@settings_options
def eval_dedup(
    data_dir: Path | None,
    sets: str | None,
    limit: int,
    group_cap: int | None,
    embedding: str,
    thresholds: str | None,
    name_weights: str | None,
    json_path: Path | None,
) -> None:
    """Duplicate grouping: how well the Aggregator's candidate groups recover known duplicates.

    Items are grouped exactly as the absorbing step groups new tools (embedding
    of description + signature, name overlap, top-k links, size-capped groups)
    and scored pairwise against the gold groups. By default the Aggregator's own
    settings are scored (marked *); pass lists to sweep.
    """
    from insitu.evals.dedup import DEFAULT_GROUP_CAP, run_dedup_benchmark
    from insitu.tool_store.clustering import DEFAULT_NAME_WEIGHT, DEFAULT_THRESHOLD

    root, single = data_root("tool_dedup", data_dir, "items.jsonl")
    chosen = single or split_list(sets) or None
    if chosen:
        unknown = [s for s in chosen if not (root / s / "items.jsonl").is_file()]
        if unknown:
            available = sorted(p.name for p in root.iterdir() if (p / "items.jsonl").is_file())
            fail(f"unknown set(s) {unknown}; available: {', '.join(available)}", EXIT_CONFIG)
    else:
        from insitu.evals.dedup import DEFAULT_SETS

        found = [p.name for p in sorted(root.iterdir()) if (p / "items.jsonl").is_file()]
        chosen = [s for s in DEFAULT_SETS if s in found] + [
            s for s in found if s not in DEFAULT_SETS
        ]
    report = run_dedup_benchmark(
        root,
        chosen,
        limit=limit,
        group_cap=DEFAULT_GROUP_CAP if group_cap is None else group_cap,
        embedding=embedding,
        thresholds=split_floats(thresholds, "--thresholds") if thresholds else [DEFAULT_THRESHOLD],
        name_weights=(
            split_floats(name_weights, "--name-weights") if name_weights else [DEFAULT_NAME_WEIGHT]
        ),
        log=progress,
    )
    rows = []
    for name, result in report["sets"].items():
        for row in result["rows"]:
            default = (
                row["threshold"] == DEFAULT_THRESHOLD and row["name_weight"] == DEFAULT_NAME_WEIGHT
            )
            rows.append(
                [
                    name + (" *" if default else ""),
                    f"{row['threshold']:.2f}",
                    f"{row['name_weight']:.2f}",
                    f"{row['precision']:.3f}",
                    f"{row['recall']:.3f}",
                    f"{row['f1']:.3f}",
                    str(row["groups"]),
                    f"{row['pure']:.3f}",
                ]
            )
    s = report["settings"]
    sizes = "; ".join(
        f"{name}: {r['items']} items, {r['gold_groups']} gold groups, {r['gold_pairs']} gold pairs"
        for name, r in report["sets"].items()
    )
    show(
        results_table(
            f"duplicate grouping ({embedding}, k={s['k']}, max group {s['max_group_size']}) "
            f"on {report['data_dir']}",
            ["set", "threshold", "name weight", "precision", "recall", "F1", "groups", "pure"],
            rows,
            f"{sizes}.\nPairwise precision/recall/F1 over item pairs; groups = predicted groups "
            "of 2+ (= merge calls); pure = share of them within one gold group; * = the "
            f"Aggregator's defaults; total {report['total_seconds']:.1f} s.",
            labels=1,
        )
    )
    write_json(report, json_path)


# ---------------------------------------------------------------- scaling


@eval_group.command("scaling")
@click.option(
    "--sizes",
    default="100,1000,10000",
    show_default=True,
    help="Comma-separated library sizes (tools; 10k = 10000).",
)
@click.option(
    "--embedding",
    type=click.Choice(["minilm", "hashing"]),
    default=None,
    help="Embedding of the stores (default: minilm, the real model).",
)
@click.option(
    "--retrieval-k",
    type=click.IntRange(min=1),
    default=None,
    help="Candidates the Manager retrieves (default: the retrieval_k setting, 8).",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Timed searches per task.",
)
@json_option
@settings_options
@click.pass_obj
def eval_scaling(
    settings: InsituContext,
    sizes: str,
    embedding: str | None,
    retrieval_k: int | None,
    repeats: int,
    json_path: Path | None,
) -> None:
    """Manager prompt size and search latency as the library grows, against listing every tool.

    For each size a temporary library of synthetic tools is built in one commit;
    for 20 realistic tasks the Manager's real prompt (retrieved candidates) is
    rendered next to the same prompt listing every tool. Tokens are estimated as
    characters / 4 (no tokenizer).
    """
    from insitu.evals import scaling
    from insitu.tool_store.embeddings import EmbeddingUnavailableError

    try:
        parsed = scaling.parse_sizes(sizes)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--sizes") from None
    k = retrieval_k or settings.retrieval_k
    try:
        report = scaling.run_scaling_benchmark(
            parsed,
            embedding=embedding or scaling.DEFAULT_EMBEDDING,
            retrieval_k=k,
            repeats=repeats,
            log=progress,
        )
    except EmbeddingUnavailableError as exc:
        fail(f"{exc} (or pass --embedding hashing)", EXIT_CONFIG)
    show(
        results_table(
            f"Manager prompt vs listing every tool (retrieval_k={k}, "
            f"{report['settings']['embedding']} embedding)",
            [title for title, _ in scaling.COLUMNS],
            scaling.summary_rows(report),
            "\n".join(scaling.notes(report)),
            labels=0,
        )
    )
    write_json(report, json_path)


# ---------------------------------------------------------------- suite


@eval_group.command("suite")
@click.argument("suite")
@click.option(
    "--systems",
    default="insitu,no-reuse,python-interpreter",
    show_default=True,
    help="Comma-separated: insitu, insitu-frozen, no-reuse, python-interpreter.",
)
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N tasks.")
@click.option(
    "--library",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A library to start insitu from (copied) and to evaluate as insitu-frozen.",
)
@click.option("--model", default=None, help="Model name for every role.")
@click.option("--judge-model", default=None, help="Model that grades `judge` tasks.")
@click.option(
    "--prices",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Price table ($ per 1M tokens by model; default: evals/prices.json).",
)
@click.option(
    "--scripted",
    is_flag=True,
    help="Use the scripted test model instead of an LLM (checks the setup offline; every "
    "output says its numbers are not model results).",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="On resume, run every failed task again (by default only those that failed on the "
    "model endpoint).",
)
@settings_options
@click.pass_obj
def suite_command(
    settings: InsituContext,
    suite: str,
    systems: str,
    batch_size: int,
    run_dir: Path,
    limit: int | None,
    library: Path | None,
    model: str | None,
    judge_model: str | None,
    prices: Path | None,
    scripted: bool,
    retry_failed: bool,
) -> None:
    """Compare systems on SUITE (`local`, `gsm8k[:PATH]`, `humaneval`, or a JSONL file).

    Writes one folder per system into --run-dir, then comparison.json, comparison.md and
    report.html. Run the same command again to resume an interrupted comparison. Exit
    codes: 0 done, 2 configuration, 3 model endpoint, 130 interrupted.
    """
    from insitu.evals.harness import SCRIPTED_NOTE, comparison_markdown, run_comparison
    from insitu.evals.tasks import TaskLoadError, load_tasks
    from insitu.evolve import RunMismatchError
    from insitu.llm import ConfigurationError, ModelEndpointError, build_chat_model

    try:
        tasks = load_tasks(suite, limit=limit)
    except (TaskLoadError, ImportError, ValueError) as exc:
        fail(str(exc), EXIT_CONFIG)
    if model:
        settings = settings.with_model(model)
    models = judge = None
    if scripted:
        models = scripted_models(SCRIPTED_NOTE)
    with interruptible():
        try:
            if judge_model:
                judge = build_chat_model("integrator", settings.with_model(judge_model))
            comparison = run_comparison(
                tasks,
                systems=split_list(systems),
                run_dir=run_dir,
                batch_size=batch_size,
                suite=suite,
                context=settings,
                models=models,
                library=library,
                judge_model=judge,
                prices=prices,
                scripted=scripted,
                retry_failed=retry_failed,
                on_system=lambda name: progress(f"system {name}: {len(tasks)} tasks"),
            )
        except ConfigurationError as exc:
            fail_configuration(exc)
        except (RunMismatchError, ValueError) as exc:
            fail(str(exc), EXIT_CONFIG)
        except ModelEndpointError as exc:
            fail_model_endpoint(exc)
    out.print(comparison_markdown(comparison), highlight=False, markup=False, soft_wrap=True)
    progress(f"comparison written to {run_dir}/comparison.md, comparison.json, report.html")


# ---------------------------------------------------------------- replay


@eval_group.command("replay")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--paraphrases",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help='JSONL: {"id": TASK_ID, "paraphrases": [QUESTION, ...]} a line; each paraphrase '
    "is replayed too.",
)
@click.option(
    "--distractors",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Replay against a copy of the library padded to N tools with inert distractors "
    "(0: the library itself; the original is never written).",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The tool_retrieval corpus of the distractors (default: ../shared/data/"
    "tool_retrieval from here or the project root, else $INSITU_DATA/tool_retrieval).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Distractor vectors and padded libraries (default: $TMPDIR/insitu-replay-cache).",
)
@click.option(
    "--replay-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The replay's own run folder (default: RUN_DIR/replay/<library>-<key>; the same "
    "command resumes it).",
)
@click.option(
    "--batch-size",
    "-b",
    type=click.IntRange(min=1),
    default=None,
    help="Tasks replayed at once (default: the run's batch size).",
)
@click.option(
    "--tasks",
    "tasks_source",
    default=None,
    help="The run's task source, when the one in its run.json is not found here (for the "
    "tasks' files and graders).",
)
@click.option("--model", default=None, help="Model name for every role.")
@click.option(
    "--scripted",
    is_flag=True,
    help="Use the scripted test model instead of an LLM (every output says its numbers are "
    "not model results).",
)
@json_option
@settings_options
@click.pass_obj
def eval_replay(
    settings: InsituContext,
    run_dir: Path,
    paraphrases: Path | None,
    distractors: int,
    data_dir: Path | None,
    cache_dir: Path | None,
    replay_dir: Path | None,
    batch_size: int | None,
    tasks_source: str | None,
    model: str | None,
    scripted: bool,
    json_path: Path | None,
) -> None:
    """Solved once, solved again: re-ask every task RUN_DIR completed, with the library frozen.

    Reports the re-solve rate, the tools created (must be 0; the library is checked
    unchanged), the replay's tokens against the first solve's, and how often the
    Manager's retrieval returned the tools the first solve used. The library is the
    run's, or the one given with --store. Exit codes: 0 done, 1 the library changed
    or tools were created, 2 usage or configuration, 3 model endpoint or store held
    elsewhere, 130 interrupted.
    """
    from insitu.cli.common import EXIT_INCOMPLETE, loaded_settings
    from insitu.evals.distractors import DistractorError
    from insitu.evals.harness import SCRIPTED_NOTE
    from insitu.evals.replay import ReplayError, run_replay, summary_rows, task_table_rows
    from insitu.evolve import RunMismatchError
    from insitu.llm import ConfigurationError, ModelEndpointError
    from insitu.tool_store.errors import StoreError

    # Only a library named on this command line replaces the run's own (not $INSITU_STORE).
    given = loaded_settings().sources["store_dir"] in ("--store", "--set")
    library = Path(settings.store_dir) if given else None
    data = None
    if distractors:
        data, single = data_root("tool_retrieval", data_dir, "tools.jsonl")
        if single:  # one set's folder: its parent holds the sets, use only that one
            fail(
                f"--data must be a folder of sets (like tool_retrieval/), not {data_dir}",
                EXIT_CONFIG,
            )
    if model:
        settings = settings.with_model(model)
    models = scripted_models(SCRIPTED_NOTE) if scripted else None
    with interruptible():
        try:
            report = run_replay(
                run_dir,
                paraphrases=paraphrases,
                distractors=distractors,
                data_dir=data,
                cache_dir=cache_dir,
                library=library,
                replay_dir=replay_dir,
                batch_size=batch_size,
                tasks_source=tasks_source,
                context=settings,
                models=models,
                scripted=scripted,
                log=progress,
            )
        except (ReplayError, DistractorError) as exc:
            fail(str(exc), EXIT_CONFIG)
        except RunMismatchError as exc:
            fail(f"{exc} (or pass another --replay-dir)", EXIT_CONFIG)
        except ConfigurationError as exc:
            fail_configuration(exc)
        except ModelEndpointError as exc:
            fail_model_endpoint(exc)
        except StoreError as exc:
            from insitu.cli.common import store_exit_code

            fail(str(exc), store_exit_code(exc))
    label = " — scripted test model, not model results" if report["scripted"] else ""
    show(
        results_table(
            f"replay of {report['run_dir']}{label}",
            ["figure", "value", "what it counts"],
            summary_rows(report),
            f"replay folder: {report['replay_dir']}; {report['batch_size']} task(s) at once; "
            f"{report['wall_time_s']:.1f} s" + (f"\n{report['note']}" if report["note"] else ""),
            labels=3,
        )
    )
    rows, left_out = task_table_rows(report)
    show(
        results_table(
            "tasks (not re-solved and retrieval misses first)" + label,
            [
                "task",
                "kind",
                "status",
                "re-solved",
                "hits",
                "tokens first -> replay",
                "ratio",
                "tools created",
            ],
            rows,
            f"{left_out} more in --json" if left_out else None,
            labels=4,
        )
    )
    write_json(report, json_path)
    if report["tools_created"] or not report["library_unchanged"]:
        fail(
            "the frozen library was not frozen: "
            f"{report['tools_created']} tool(s) created, library "
            + ("unchanged" if report["library_unchanged"] else "changed")
            + f" ({report['library_before']} -> {report['library_after']})",
            EXIT_INCOMPLETE,
        )
