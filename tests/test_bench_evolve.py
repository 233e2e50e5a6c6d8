"""The batch benchmark: its critical-path arithmetic, and a tiny run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from insitu.evals import bench_evolve


def call(episode: str | None, start: float, end: float, task: str | None = None) -> dict:
    return {"episode": episode, "role": "x", "start": start, "end": end, "task": task}


def test_the_critical_path_is_the_slowest_episode_per_batch_plus_the_absorber() -> None:
    records = [
        # batch 1 (ends at t=1.0): episode a has 0.5 s of model time, b 0.3 s
        call("solve_task:a", 0.00, 0.25, task="qa"),
        call("solve_task:a", 0.30, 0.55),
        call("solve_task:b", 0.10, 0.40, task="qb"),
        call(None, 0.80, 0.90),  # the absorber, at batch level
        # batch 2 (ends at t=2.0): one episode, 0.6 s
        call("solve_task:c", 1.20, 1.80, task="qc"),
    ]
    predictions = [
        {"question": "qa", "batch": 1, "wall_time_s": 0.7},
        {"question": "qb", "batch": 1, "wall_time_s": 0.5},
        {"question": "qc", "batch": 2, "wall_time_s": 0.65},
    ]
    steps = [{"wall_time_s": 0.95}, {"wall_time_s": 0.9}]
    result = bench_evolve.analyse_run(records, [1.0, 2.0], steps, predictions, 0.0, 2.0)
    assert result["critical_model_s"] == pytest.approx(0.5 + 0.1 + 0.6)
    assert result["outside_share"] == pytest.approx(1 - 1.2 / 2.0)
    # No call in flight: [0.55, 0.8), [0.9, 1.2) and [1.8, 2.0].
    assert result["no_call_in_flight_share"] == pytest.approx((0.25 + 0.3 + 0.2) / 2.0)
    assert result["max_parallel_episodes"] == 2
    assert result["first_call_stagger_ms"] == pytest.approx(100.0)  # b started 0.1 s after a
    split = result["split_s"]
    assert split["model"] + split["episode_other"] + split["batch_other"] + split[
        "run_other"
    ] == pytest.approx(2.0)


def test_a_tiny_run_prints_both_tables_and_writes_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures.json"
    code = bench_evolve.main(
        [
            "--skip-absorb",
            "--tasks", "4",
            "--batch-sizes", "1,2",
            "--latency", "0.005",
            "--quiet",
            "--json", str(out),
            "--workdir", str(tmp_path / "work"),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "Parallel speed-up" in printed and "1st-call stagger" in printed
    rows = json.loads(out.read_text())["speedup"]
    assert [r["batch_size"] for r in rows] == [1, 2]
    assert all(r["completed"] == 4 and r["unfinished"] == [] for r in rows)
    assert rows[0]["speedup"] == 1.0
