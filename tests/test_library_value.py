"""Utility scores, pruning, revival and ROI against a real store (hashing embedding).

Episodes and batches run the real graphs with the scripted team (a test double)
and the real sandbox.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from insitu.cli import main
from insitu.evals.tasks import Task
from insitu.evolve import evolve
from insitu.testing.team import SUMMARIZE_NUMBERS, ScriptedTeam
from insitu.tool_store import ChangeSet, ToolStore
from insitu.tool_store.admission import admit_tool
from insitu.tool_store.contract import BuildCost, now_utc
from insitu.tool_store.costs import version_costs
from insitu.tool_store.errors import LockedToolError
from insitu.tool_store.pruning import PRUNED, apply_prune, plan_prune, revive_for_task
from insitu.tool_store.testing import make_spec
from insitu.tool_store.utility import base_utility, tool_roi_rows, utility_scores

MEAN = "What is the mean of 3, 5, 10 and 2?"
PRICES = {"gpt-4o-mini": {"input": 0.15, "output": 0.60}}


def spec(name: str, description: str, body: str = "return {'result': 0}"):
    return make_spec(name, description, body=body)


def used(store: ToolStore, name: str, ok: int, failed: int = 0, days_ago: float = 0) -> None:
    when = now_utc() - timedelta(days=days_ago)
    store.record_calls(
        [(name, None, True, None, when)] * ok + [(name, None, False, "boom", when)] * failed
    )


# ------------------------------------------------------------------- utility


def test_base_utility_orders_use_recency_reliability_and_cost() -> None:
    def base(**kw: float) -> float:
        args = {"calls": 0, "successes": 0, "idle_days": 0.0, "creation_tokens": 0, **kw}
        return base_utility(**args)[3]  # type: ignore[arg-type]

    often = base(calls=10, successes=10)
    once = base(calls=1, successes=1)
    unused = base()
    assert often > once > unused == 1.0
    assert base(idle_days=30) == pytest.approx(0.5)  # one half-life
    assert unused > base(idle_days=90)
    assert base(calls=10, successes=2) < base(calls=2, successes=2)  # failures count against
    assert base(creation_tokens=20_000) > unused  # dear to rebuild


def test_redundancy_marks_only_the_weaker_of_two_duplicates(store: ToolStore) -> None:
    text = "Computes the arithmetic mean of a list of numbers and returns it."
    store.add(spec("compute_mean", text))
    store.add(spec("calculate_average", text, body="return {'result': 1}"))
    store.add(spec("parse_csv_rows", "Parses CSV text into a list of rows of fields."))
    used(store, "compute_mean", ok=5)
    scores = utility_scores(store)
    assert scores["compute_mean"].redundancy == 0
    weaker = scores["calculate_average"]
    assert weaker.neighbour == "compute_mean" and weaker.redundancy > 0.5
    assert weaker.utility < scores["parse_csv_rows"].utility < scores["compute_mean"].utility


def test_utility_ranks_the_library(store: ToolStore) -> None:
    store.add(spec("compute_mean", "Computes the arithmetic mean of numbers."))
    store.add(spec("parse_csv_rows", "Parses CSV text into rows."))
    store.add(spec("format_list", "Formats a list as plain text."))
    store.add(spec("count_words", "Counts the words of a text."))
    used(store, "compute_mean", ok=8, days_ago=1)
    used(store, "parse_csv_rows", ok=1, days_ago=1)
    used(store, "count_words", ok=0, failed=4, days_ago=1)
    scores = utility_scores(store, now=now_utc() + timedelta(days=2))
    order = sorted(scores, key=lambda n: -scores[n].utility)
    assert order == ["compute_mean", "parse_csv_rows", "format_list", "count_words"]


# ------------------------------------------------------------------- pruning


def library(tmp_path: Path) -> Path:
    path = tmp_path / "lib"
    with ToolStore.open(path, embedding="hashing") as store:
        store.add(spec("compute_mean", "Computes the arithmetic mean of numbers."))
        store.add(spec("parse_csv_rows", "Parses CSV text into rows."))
        store.add(spec("format_list", "Formats a list as plain text."))
        store.add(spec("count_words", "Counts the words of a text."))
        used(store, "compute_mean", ok=6)
        store.lock("count_words")
    return path


def prune(path: Path, *args: str) -> Result:
    return CliRunner().invoke(
        main, ["--store", str(path), "tools", "prune", "--set", "prune_grace_days=0", *args]
    )


def test_prune_dry_run_changes_nothing(tmp_path: Path) -> None:
    path = library(tmp_path)
    with ToolStore.open(path, read_only=True) as store:
        before = [(r.name, r.status, r.version) for r in store.list("all")]
    result = prune(path, "--min-utility", "1.5", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would archive 2 tool(s) (dry run: nothing changed)" in result.output
    assert "format_list" in result.output and "locked" in result.output
    with ToolStore.open(path, read_only=True) as store:
        assert [(r.name, r.status, r.version) for r in store.list("all")] == before
        assert not [e for e in store.events() if e.action == "archive"]


def test_prune_archives_low_utility_never_locked(tmp_path: Path) -> None:
    path = library(tmp_path)
    result = prune(path, "--min-utility", "1.5")
    assert result.exit_code == 0, result.output
    assert "archived 2 tool(s)" in result.output
    with ToolStore.open(path, read_only=True) as store:
        assert store.state("compute_mean").status == "active"  # used: above the threshold
        assert store.state("count_words").status == "active"  # locked: exempt
        for name in ("format_list", "parse_csv_rows"):
            state = store.state(name)
            assert state.status == "archived"
            assert state.status_reason.startswith(f"{PRUNED}: utility ")
            assert store.history(name)  # kept, never deleted


def test_prune_needs_a_threshold_and_keeps_young_tools(tmp_path: Path) -> None:
    path = library(tmp_path)
    result = CliRunner().invoke(main, ["--store", str(path), "tools", "prune"])
    assert result.exit_code == 2 and "--min-utility" in result.output
    # The default grace period (7 days) protects tools created just now.
    result = CliRunner().invoke(
        main, ["--store", str(path), "tools", "prune", "--min-utility", "1.5"]
    )
    assert result.exit_code == 0 and "archived 0 tool(s)" in result.output


def test_a_tool_locked_after_the_plan_makes_the_prune_archive_nothing(store: ToolStore) -> None:
    store.add(spec("format_list", "Formats a list as plain text."))
    store.add(spec("count_words", "Counts the words of a text."))
    plan = plan_prune(store, min_utility=5, grace_days=0)
    assert len(plan.to_archive) == 2
    store.lock("count_words")
    with pytest.raises(LockedToolError):
        apply_prune(store, plan)
    assert store.count("archived") == 0  # one commit: all or nothing


# ------------------------------------------------------------------- revival


def admitted(store: ToolStore, sandbox, tmp_path: Path) -> None:
    built = admit_tool(
        SUMMARIZE_NUMBERS.source,
        SUMMARIZE_NUMBERS.tests,
        sandbox=sandbox,
        scratch_dir=tmp_path / "admit",
    )
    store.add(built, origin="manual")


def test_revival_restores_only_pruned_tools_ranked_first(store: ToolStore) -> None:
    store.add(spec("compute_mean", "Computes the arithmetic mean of a list of numbers."))
    store.add(spec("parse_csv_rows", "Parses CSV text into rows of fields."))
    apply_prune(store, plan_prune(store, min_utility=5, grace_days=0, exempt={"parse_csv_rows"}))
    assert store.state("compute_mean").status == "archived"
    task = "the arithmetic mean of a list of numbers"
    # Not similar enough: nothing happens.
    assert revive_for_task(store, task, k=5, min_similarity=0.999, why="t0") is None
    # Ranked first for a task it does not match: nothing either.
    assert revive_for_task(store, "parse CSV text rows", k=5, min_similarity=0, why="t") is None
    revived = revive_for_task(store, task, k=5, min_similarity=0.1, why="task t1")
    assert revived is not None and revived.name == "compute_mean"
    assert store.state("compute_mean").status == "active"
    event = store.events("compute_mean")[-1]
    assert event.action == "restore" and event.detail.startswith("revived: ranked first for task")
    # A tool archived by hand (or by a merge) stays archived.
    store.archive("compute_mean", "archived by hand")
    assert revive_for_task(store, task, k=5, min_similarity=0.1, why="t2") is None


def test_the_manager_revives_a_pruned_tool_instead_of_building_it(
    store: ToolStore, sandbox, run_episode, tmp_path: Path
) -> None:
    admitted(store, sandbox, tmp_path)
    apply_prune(store, plan_prune(store, min_utility=5, grace_days=0))
    assert store.state("summarize_numbers").status == "archived"
    result, events = run_episode(MEAN, ScriptedTeam().model(), revive_min_similarity=-1)
    assert result.status == "completed", result.answer
    assert result.tools_used == ["summarize_numbers@1"] and result.tools_created == []
    assert any(e["event"] == "revived" for e in events)
    assert store.state("summarize_numbers").status == "active"
    assert store.get("summarize_numbers").stats.successes == 1
    assert [e.action for e in store.events("summarize_numbers")][-2:] == ["archive", "restore"]


# ------------------------------------------------------------------------- ROI


def test_roi_from_recorded_costs(store: ToolStore) -> None:
    first = BuildCost(input_tokens=1000, output_tokens=500, model="gpt-4o-mini", role="x")
    repair = BuildCost(input_tokens=200, output_tokens=100, model="gpt-4o-mini", role="x")
    store.commit(
        ChangeSet().add(
            spec("compute_mean", "Mean of numbers."), creation_cost_tokens=1500, build_cost=first
        )
    )
    store.commit(
        ChangeSet().update(
            "compute_mean",
            spec("compute_mean", "Mean of numbers.", body="return {'result': 2}"),
            creation_cost_tokens=300,
            build_cost=repair,
        )
    )
    store.add(spec("format_list", "Formats a list."), origin="manual")
    used(store, "compute_mean", ok=3, failed=1)
    used(store, "format_list", ok=2)
    assert version_costs(store) == {("compute_mean", 1): first, ("compute_mean", 2): repair}
    rows = {r["name"]: r for r in tool_roi_rows(store, PRICES)}
    mean = rows["compute_mean"]
    assert (mean["versions"], mean["cost_tokens"], mean["reuses"]) == (2, 1800, 3)
    assert mean["cost_usd"] == pytest.approx((150 + 300 + 30 + 60) / 1e6)
    assert (mean["saved_per_reuse_tokens"], mean["saved_tokens"]) == (1500, 4500)
    assert mean["saved_usd"] == pytest.approx(3 * 450 / 1e6)
    assert (mean["net_tokens"], mean["roi"], mean["estimated_reference"]) == (2700, 2.5, False)
    hand = rows["format_list"]  # no build recorded: credited the library's mean build
    assert (hand["cost_tokens"], hand["roi"], hand["estimated_reference"]) == (0, None, True)
    assert hand["saved_tokens"] == 3000 and hand["saved_usd"] == pytest.approx(900 / 1e6)
    # Without a price for the model, tokens still count and dollars say unknown.
    unpriced = {r["name"]: r for r in tool_roi_rows(store, {})}["compute_mean"]
    assert unpriced["cost_usd"] is None and unpriced["roi"] == 2.5


def test_an_episode_records_what_building_each_tool_cost(store: ToolStore, run_episode) -> None:
    result, _ = run_episode(MEAN, ScriptedTeam().model())
    assert result.tools_created == ["summarize_numbers"]
    cost = version_costs(store)[("summarize_numbers", 1)]
    assert cost.role == "tool_developer" and cost.input_tokens > 0 and cost.output_tokens > 0
    assert store.get("summarize_numbers").stats.creation_cost_tokens == cost.total_tokens


def test_list_sorts_by_utility_and_show_prints_roi(tmp_path: Path) -> None:
    path = library(tmp_path)
    result = CliRunner().invoke(main, ["--store", str(path), "tools", "list", "--sort", "utility"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    assert rows[0].split("│")[1].strip() == "compute_mean" and "utility" in result.output
    for order in ("name", "calls", "roi", "created"):
        listed = CliRunner().invoke(main, ["--store", str(path), "tools", "list", "--sort", order])
        assert listed.exit_code == 0, listed.output
    shown = CliRunner().invoke(main, ["--store", str(path), "tools", "show", "compute_mean"])
    assert "utility: " in shown.output and "reuses: 6 ok" in shown.output


# ------------------------------------------------------- the automatic policy


def test_the_policy_prunes_after_a_batch_of_a_scripted_evolve(
    store: ToolStore, sandbox, tmp_path: Path
) -> None:
    store.add(spec("format_list", "Formats a list of items as plain text."))
    store.add(spec("count_words", "Counts the words of a text."))
    store.lock("count_words")
    tasks = [Task(id="t1", question=MEAN), Task(id="t2", question="Average of 1, 2 and 6?")]
    evolve(
        tasks,
        run_dir=tmp_path / "run",
        batch_size=2,
        models=ScriptedTeam().model(),
        tool_store=store,
        sandbox=sandbox,
        context={
            "store_dir": str(store.path),
            "prune_min_utility": 1.05,
            "prune_grace_days": 0,
            "preflight": False,
        },
    )
    state = store.state("format_list")
    assert state.status == "archived" and state.status_reason.startswith(f"{PRUNED}:")
    assert store.state("count_words").status == "active"  # locked
    assert store.state("summarize_numbers").status == "active"  # added by the batch: exempt
