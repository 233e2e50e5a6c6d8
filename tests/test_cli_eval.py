"""``insitu eval``: the retrieval, dedup and scaling benchmarks from the shell.

The retrieval and dedup runs use tiny data folders written here in the shared
data's format; every run uses the hashing embedding (instant, deterministic).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from insitu.cli import main
from insitu.cli.eval import find_data_dir
from insitu.evals import scaling

TOOLS = {
    "mean_tool": ("compute_mean", "Computes the arithmetic mean of a list of numbers."),
    "fetch_tool": ("fetch_web_page", "Downloads a web page over HTTP and returns its HTML."),
    "temp_tool": ("convert_temperature", "Converts a temperature from Celsius to Fahrenheit."),
    "hash_tool": ("hash_text", "Returns the SHA-256 hex digest of a piece of text."),
    "date_tool": ("add_days", "Adds a number of days to a calendar date and returns it."),
    "mail_tool": ("send_email", "Sends an email message to a recipient through SMTP."),
}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def retrieval_data(tmp_path: Path) -> Path:
    """Two sets: queries identical to a tool's text, and queries whose gold is another tool."""
    root = tmp_path / "tool_retrieval"
    tools = [{"tool_id": tid, "name": name, "text": text} for tid, (name, text) in TOOLS.items()]
    for name in ("exact", "swapped"):
        write_jsonl(root / name / "tools.jsonl", tools)
    ids = list(TOOLS)
    write_jsonl(
        root / "exact" / "queries.jsonl",
        [{"qid": f"q{i}", "query": TOOLS[tid][1], "gold": [tid]} for i, tid in enumerate(ids)],
    )
    # Each query is one tool's text, but the gold is the next tool: rank 1 is never gold.
    write_jsonl(
        root / "swapped" / "queries.jsonl",
        [
            {"qid": f"q{i}", "query": TOOLS[tid][1], "gold": [ids[(i + 1) % len(ids)]]}
            for i, tid in enumerate(ids)
        ],
    )
    return root


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["eval", *args], catch_exceptions=False)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- retrieval


def retrieval(data: Path, tmp_path: Path, *args: str) -> tuple[Result, dict[str, Any]]:
    out = tmp_path / "retrieval.json"
    result = invoke(
        "retrieval",
        "--data",
        str(data),
        "--embedding",
        "hashing",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--json",
        str(out),
        *args,
    )
    assert result.exit_code == 0, result.output
    return result, read_json(out)


def test_retrieval_scores_every_mode(retrieval_data: Path, tmp_path: Path) -> None:
    result, report = retrieval(retrieval_data, tmp_path)
    assert set(report["sets"]) == {"exact", "swapped"}
    exact = report["sets"]["exact"]
    assert (exact["tools"], exact["queries"]) == (6, 6)
    assert set(exact["modes"]) == {"dense", "lexical", "hybrid"}
    for mode, metrics in exact["modes"].items():
        # A query identical to a tool's text retrieves that tool first.
        assert metrics["recall@1"] == 1.0, mode
        assert metrics["recall@5"] == metrics["recall@10"] == metrics["mrr"] == 1.0, mode
        assert 0 < metrics["latency_p50_ms"] <= metrics["latency_p90_ms"] < 5000
    for mode, metrics in report["sets"]["swapped"]["modes"].items():
        assert metrics["recall@1"] == 0.0, mode  # rank 1 is the query's own tool, not gold
        assert metrics["mrr"] <= 0.5, mode
    # Dense ranks all six tools, so the gold one is always in its top 10.
    assert report["sets"]["swapped"]["modes"]["dense"]["recall@10"] == 1.0
    assert report["settings"]["embedding"] == "hashing"
    # The readable table, on stdout; progress on stderr.
    assert "exact" in result.stdout and "hybrid" in result.stdout and "R@5" in result.stdout
    assert "1.000" in result.stdout
    assert "tools embedded" in result.stderr


def test_retrieval_sets_limit_and_single_set_folder(retrieval_data: Path, tmp_path: Path) -> None:
    _, report = retrieval(retrieval_data, tmp_path, "--sets", "swapped", "--limit", "2")
    assert list(report["sets"]) == ["swapped"]
    assert report["sets"]["swapped"]["queries"] == 2
    _, report = retrieval(retrieval_data / "exact", tmp_path)  # one set's own folder
    assert list(report["sets"]) == ["exact"]


def test_retrieval_missing_or_wrong_data_exits_2(retrieval_data: Path, tmp_path: Path) -> None:
    missing = invoke("retrieval", "--data", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2
    assert "does not exist" in missing.stderr and "--data" in missing.stderr
    assert "Traceback" not in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    no_sets = invoke("retrieval", "--data", str(empty))
    assert no_sets.exit_code == 2 and "tools.jsonl" in no_sets.stderr
    unknown = invoke("retrieval", "--data", str(retrieval_data), "--sets", "nope")
    assert unknown.exit_code == 2 and "nope" in unknown.stderr and "exact" in unknown.stderr


def test_retrieval_default_folder_absent_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("insitu.cli.eval.REPO_ROOT", tmp_path / "repo")
    monkeypatch.delenv("INSITU_DATA", raising=False)
    result = invoke("retrieval")
    assert result.exit_code == 2
    assert "no tool_retrieval data found" in result.stderr and "INSITU_DATA" in result.stderr


def test_default_data_folder_lookup_order(tmp_path: Path) -> None:
    cwd, repo, env_data = tmp_path / "a" / "cwd", tmp_path / "b" / "repo", tmp_path / "data"
    for path in (cwd, repo):
        path.mkdir(parents=True)
    found, places = find_data_dir("tool_dedup", cwd=cwd, repo_root=repo, env={})
    assert found is None and len(places) == 2
    (env_data / "tool_dedup").mkdir(parents=True)
    env = {"INSITU_DATA": str(env_data)}
    found, _ = find_data_dir("tool_dedup", cwd=cwd, repo_root=repo, env=env)
    assert found == (env_data / "tool_dedup").resolve()
    shared_by_repo = tmp_path / "b" / "shared" / "data" / "tool_dedup"
    shared_by_repo.mkdir(parents=True)
    found, _ = find_data_dir("tool_dedup", cwd=cwd, repo_root=repo, env=env)
    assert found == shared_by_repo.resolve()
    shared_by_cwd = tmp_path / "a" / "shared" / "data" / "tool_dedup"
    shared_by_cwd.mkdir(parents=True)
    found, _ = find_data_dir("tool_dedup", cwd=cwd, repo_root=repo, env=env)
    assert found == shared_by_cwd.resolve()


# ---------------------------------------------------------------- dedup


def code_item(item_id: str, group: str, name: str, doc: str, body: str) -> dict[str, Any]:
    code = f'def {name}(values):\n    """{doc}\n    >>> {name}([1])\n    """\n    {body}\n'
    return {"item_id": item_id, "group_id": group, "name": name, "code": code}


@pytest.fixture
def dedup_data(tmp_path: Path) -> Path:
    """Three duplicate groups (text and code items) among unrelated singletons."""
    mean = "Computes the arithmetic mean of a list of numbers."
    fetch = "Downloads a web page over HTTP and returns its HTML."
    items = [
        {"item_id": f"m{i}", "group_id": "mean", "name": "compute_mean", "text": mean}
        for i in range(3)
    ]
    items += [
        {"item_id": f"f{i}", "group_id": "fetch", "name": "fetch_page", "text": fetch}
        for i in range(2)
    ]
    doc = "Return the largest value of a list."
    items += [
        code_item("c0", "largest", "max_value", doc, "return max(values)"),
        code_item("c1", "largest", "max_value", doc, "best = sorted(values)[-1]\n    return best"),
    ]
    singletons = [
        ("send_email", "Sends an email message to a recipient through an SMTP server."),
        ("resize_image", "Resizes an image file to a given width and height in pixels."),
        ("translate_text", "Translates a sentence from French into Japanese."),
        ("solve_quadratic", "Solves a quadratic equation for its real roots."),
    ]
    items += [
        {"item_id": f"s{i}", "group_id": f"single{i}", "name": name, "text": text}
        for i, (name, text) in enumerate(singletons)
    ]
    root = tmp_path / "tool_dedup"
    write_jsonl(root / "toy" / "items.jsonl", items)
    return root


def dedup(data: Path, tmp_path: Path, *args: str) -> tuple[Result, dict[str, Any]]:
    out = tmp_path / "dedup.json"
    result = invoke(
        "dedup", "--data", str(data), "--embedding", "hashing", "--json", str(out), *args
    )
    assert result.exit_code == 0, result.output
    return result, read_json(out)


def test_dedup_recovers_the_duplicate_groups(
    dedup_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from insitu.tool_store.clustering import DEFAULT_NAME_WEIGHT, DEFAULT_THRESHOLD

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the embedding cache
    result, report = dedup(dedup_data, tmp_path)
    toy = report["sets"]["toy"]
    assert (toy["items"], toy["gold_groups"], toy["gold_pairs"]) == (11, 7, 3 + 1 + 1)
    [row] = toy["rows"]  # by default, the Aggregator's own setting only
    assert (row["threshold"], row["name_weight"]) == (DEFAULT_THRESHOLD, DEFAULT_NAME_WEIGHT)
    assert row["precision"] == row["recall"] == row["f1"] == 1.0
    assert row["groups"] == 3 and row["pure"] == 1.0
    assert report["missing_sets"] == []
    assert "toy *" in result.stdout and "precision" in result.stdout


def test_dedup_sweep_and_errors(
    dedup_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    _, report = dedup(
        dedup_data, tmp_path, "--thresholds", "0.9,-1", "--name-weights", "0.5", "--limit", "4"
    )
    rows = report["sets"]["toy"]["rows"]
    assert [r["threshold"] for r in rows] == [0.9, -1.0]
    assert report["sets"]["toy"]["gold_groups"] == 4
    # A threshold below every similarity links unrelated items: precision drops.
    assert rows[1]["precision"] < rows[0]["precision"] == 1.0
    missing = invoke("dedup", "--data", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    unknown = invoke("dedup", "--data", str(dedup_data), "--sets", "nope")
    assert unknown.exit_code == 2 and "nope" in unknown.stderr and "toy" in unknown.stderr
    bad = invoke("dedup", "--data", str(dedup_data), "--thresholds", "high")
    assert bad.exit_code == 2 and "--thresholds" in bad.output


# ---------------------------------------------------------------- scaling


def test_scaling_prompt_stays_flat_while_listing_grows(tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    result = invoke(
        "scaling", "--sizes", "10,200", "--embedding", "hashing", "--repeats", "1",
        "--json", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = read_json(out)
    small, large = report["sizes"]
    assert (small["tools"], large["tools"]) == (10, 200)
    assert report["settings"]["retrieval_k"] == 8 and report["settings"]["tasks"] == 20
    for row in (small, large):
        assert row["candidates_mean"] == 8  # the Manager sees retrieval_k tools
        assert len(row["tasks"]) == 20 and row["searches"] == 20
        mean_chars = row["insitu_prompt_chars"]["mean"]
        assert abs(row["insitu_prompt_tokens"]["mean"] - mean_chars / 4) <= 1
        assert row["insitu_prompt_tokens"]["min"] == math.ceil(
            row["insitu_prompt_chars"]["min"] / 4
        )
        assert 0 < row["search_p50_ms"] <= row["search_p90_ms"]
        assert row["fill_seconds"] >= 0 and row["fill_cpu_seconds"] >= 0
    # insitu: roughly constant; listing every tool: grows with every tool added.
    insitu = [r["insitu_prompt_chars"]["mean"] for r in (small, large)]
    listing = [r["listing_prompt_chars"]["mean"] for r in (small, large)]
    assert abs(insitu[1] - insitu[0]) / insitu[0] < 0.1, insitu
    assert listing[1] - listing[0] > 190 * 40, listing  # 190 more tools, 40+ chars each
    assert listing[0] >= insitu[0]  # at 10 tools, listing shows 10 and retrieval 8
    assert large["ratio"] > 5 and large["ratio"] == round(listing[1] / insitu[1], 1)
    # Every task's retrieved candidates are real library tools.
    assert all(
        name.rsplit("_", 1)[-1].isdigit() for t in large["tasks"] for name in t["candidates"]
    )
    assert "listing" in result.stdout and "200" in result.stdout
    assert "estimated" in result.stdout  # tokens are said to be an estimate
    assert "200 tools: filled" in result.stderr


def test_scaling_rejects_bad_sizes() -> None:
    for sizes in ("0", "ten", ""):
        result = invoke("scaling", "--sizes", sizes)
        assert result.exit_code == 2, sizes
        assert "--sizes" in result.output


def test_scaling_module_entry_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.json"
    code = scaling.main(
        ["--sizes", "12", "--embedding", "hashing", "--repeats", "1", "--json", str(out)]
    )
    assert code == 0
    assert read_json(out)["sizes"][0]["tools"] == 12
    assert "listing prompt tokens" in capsys.readouterr().out
    assert scaling.parse_sizes("100, 1k,10_000") == [100, 1000, 10000]
