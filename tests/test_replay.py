"""`insitu eval replay`: a run's solved tasks re-asked against its frozen library.

A small scripted stream is evolved once (through the CLI) for the module; each
test replays it, and checks the figures, that nothing entered the library, the
paraphrases, the padded copy and the errors.
"""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from insitu.cli import main
from insitu.evals.harness import SCRIPTED_NOTE
from insitu.testing.team import scripted_stream
from insitu.tool_store import ToolStore

TASKS = 6


def _days(question: str) -> str:
    start, end = (date.fromisoformat(d) for d in question.split()[-3::2])
    return str((end - start).days)


def _write_tasks(path: Path, *, wrong: str | None = None) -> None:
    """The scripted stream, date tasks with their reference answer (``wrong``: a bad one)."""
    rows = []
    for task in scripted_stream(TASKS):
        if "days" in task["question"]:
            question = task["question"].rstrip("?")
            task["answer"] = "0" if task["id"] == wrong else _days(question.replace(" to ", " - "))
        rows.append(task)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def evolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A scripted run of TASKS tasks in batches of 2, and its library (hashing embedding)."""
    root = tmp_path_factory.mktemp("replay")
    tasks = root / "tasks.jsonl"
    _write_tasks(tasks)
    result = invoke(
        "--store", str(root / "library"), "--set", "embedding=hashing",
        "evolve", str(tasks), "--batch-size", "2", "--run-dir", str(root / "run"), "--scripted",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"root": root, "run": root / "run", "library": root / "library", "tasks": tasks}


def library_snapshot(path: Path) -> dict[str, Any]:
    """Every tool with its versions, status and calls, and the generation (read-only)."""
    with ToolStore.open(path, read_only=True) as store:
        generation = store.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return {
            "generation": generation[0],
            "tools": [
                (r.name, r.version, r.hash, r.status, r.stats.calls) for r in store.list("all")
            ],
            "versions": {
                r.name: [v.version for v in store.history(r.name)] for r in store.list("all")
            },
        }


def replay(evolved: dict[str, Path], tmp_path: Path, *args: str) -> tuple[Any, dict[str, Any]]:
    out = tmp_path / "replay.json"
    result = invoke(
        "eval", "replay", str(evolved["run"]), "--scripted",
        "--replay-dir", str(tmp_path / "replayed"), "--json", str(out), *args,
    )  # fmt: skip
    report = json.loads(out.read_text()) if out.exists() else {}
    return result, report


# ------------------------------------------------------------------ the replay


def test_replay_re_solves_every_task_with_no_new_tool(
    evolved: dict[str, Path], tmp_path: Path
) -> None:
    before = library_snapshot(evolved["library"])
    result, report = replay(evolved, tmp_path)
    assert result.exit_code == 0, result.output
    assert before == library_snapshot(evolved["library"])  # tools, versions, calls, generation
    assert report["library_unchanged"] is True
    assert report["library_before"] == report["library_after"]

    for key in ("tasks", "resolved", "tools_created", "tokens_ratio", "retrieval_hit_rate"):
        assert key in report
    assert report["tasks"] == TASKS and report["originals"] == TASKS
    assert report["resolved"] == TASKS and report["resolve_rate"] == 1.0
    assert report["tools_created"] == 0
    # The first solve of the first batch built each tool; the replay only retrieves it.
    built = [r for r in report["rows"] if r["first_built"]]
    assert built and all(r["tokens_ratio"] < 0.8 for r in built)
    assert 0 < report["tokens_ratio"] < 1
    assert report["retrieval_hit_rate"] == 1.0
    assert report["retrieval_expected"] == TASKS
    # Date tasks carry an answer: graded, and right.
    assert report["graded"] == TASKS // 2 and report["correct"] == TASKS // 2

    assert report["scripted"] is True and report["note"] == SCRIPTED_NOTE
    assert SCRIPTED_NOTE in result.output and "not model results" in result.output
    assert "retrieval hit rate" in result.output and "re-solved" in result.output
    replayed = [
        json.loads(line)
        for line in (tmp_path / "replayed" / "predictions.jsonl").read_text().splitlines()
    ]
    assert all(p["retrieved"] for p in replayed)  # the Manager's candidates, recorded
    run_meta = json.loads((tmp_path / "replayed" / "run.json").read_text())
    assert run_meta["frozen"] is True and run_meta["scripted"] is True


def test_grading_follows_the_task_source(evolved: dict[str, Path], tmp_path: Path) -> None:
    """A task whose reference answer is wrong is completed but not re-solved."""
    wrong_tasks = tmp_path / "tasks.jsonl"
    _write_tasks(wrong_tasks, wrong="task-0001")
    result, report = replay(evolved, tmp_path, "--tasks", str(wrong_tasks))
    assert result.exit_code == 0, result.output
    row = next(r for r in report["rows"] if r["id"] == "task-0001")
    assert row["status"] == "completed" and row["correct"] is False and not row["resolved"]
    assert report["resolved"] == TASKS - 1
    assert report["tasks_source"] == str(wrong_tasks)


def test_paraphrases_are_replayed(evolved: dict[str, Path], tmp_path: Path) -> None:
    paraphrases = tmp_path / "paraphrases.jsonl"
    paraphrases.write_text(
        json.dumps({"id": "task-0000", "paraphrases": ["Compute the average of 4, 8 and 15."]})
        + "\n\n"
        + json.dumps(
            {
                "id": "task-0001",
                "paraphrases": [
                    "Count the days between 2024-03-01 and 2025-01-01.",
                    "Days elapsed from 2024-03-01 until 2025-01-01?",
                ],
            }
        )
        + "\n"
    )
    before = library_snapshot(evolved["library"])
    result, report = replay(evolved, tmp_path, "--paraphrases", str(paraphrases))
    assert result.exit_code == 0, result.output
    assert report["tasks"] == TASKS + 3 and report["paraphrases"] == 3
    rows = {r["id"]: r for r in report["rows"]}
    assert {"task-0000.para1", "task-0001.para1", "task-0001.para2"} <= set(rows)
    para = rows["task-0001.para2"]
    assert para["kind"] == "paraphrase" and para["origin"] == "task-0001"
    assert para["question"] == "Days elapsed from 2024-03-01 until 2025-01-01?"
    # Its first solve is its task's; its reference answer too (the original question's),
    # so this paraphrase, which asks about other dates, is graded wrong.
    assert para["first_tokens"] == rows["task-0001"]["first_tokens"]
    assert para["status"] == "completed" and para["correct"] is False
    assert rows["task-0000.para1"]["resolved"] and rows["task-0000.para1"]["hits"] == 1
    assert report["tools_created"] == 0
    assert before == library_snapshot(evolved["library"])
    questions = (tmp_path / "replayed" / "predictions.jsonl").read_text()
    assert "Compute the average of 4, 8 and 15." in questions


# ------------------------------------------------------------------ distractors


def write_corpus(root: Path, tools: int = 40) -> Path:
    """A small tool_retrieval corpus in the shared data's format (two sets)."""
    for name, offset in (("alpha_set", 0), ("beta_set", tools // 2)):
        folder = root / name
        folder.mkdir(parents=True)
        rows = [
            {
                "tool_id": f"{name}::tool{i}",
                "name": f"fetchRecord{i}",
                "text": f"Fetches record number {i} of the archive and returns its fields.",
                "raw": {"parameters": {"recordId": {"type": "str"}, "class": {"type": "str"}}},
            }
            for i in range(offset, offset + tools // 2)
        ]
        (folder / "tools.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_distractors_pad_a_copy_and_leave_the_library_alone(
    evolved: dict[str, Path], tmp_path: Path
) -> None:
    from insitu.evals.distractors import DISTRACTOR_NOTE, INERT_MESSAGE

    corpus = write_corpus(tmp_path / "corpus")
    cache = tmp_path / "cache"
    before = library_snapshot(evolved["library"])
    args = ("--distractors", "200", "--data", str(corpus), "--cache-dir", str(cache))
    result, report = replay(evolved, tmp_path, *args)
    assert result.exit_code == 0, result.output
    assert before == library_snapshot(evolved["library"])  # the original: untouched

    padded = report["distractors"]
    assert padded["size"] == 200 and padded["distractors"] == 200 - padded["source_tools"]
    assert padded["cached"] is False and padded["build_s"] > 0 and padded["embedded"] > 0
    assert Path(padded["path"]).is_relative_to(cache)
    assert report["library_before"]["tools"] == 200 and report["library_unchanged"]
    assert report["replayed_library"] == padded["path"]
    assert report["tools_created"] == 0 and report["tasks"] == TASKS

    with ToolStore.open(padded["path"], read_only=True) as copy:
        records = copy.list()
        assert len(records) == 200
        first_tools = {n for r in report["rows"] for n in r["first_tools"]}
        assert first_tools <= {r.name for r in records}
        inert = [r for r in records if r.note == DISTRACTOR_NOTE]
        assert len(inert) == padded["distractors"]
    sample = inert[0]
    assert sample.tests[0].expect_error and sample.input_schema["properties"]
    namespace: dict[str, Any] = {}
    exec(sample.source, namespace)  # the module itself is harmless: it only defines run
    with pytest.raises(RuntimeError, match=INERT_MESSAGE):
        namespace["run"](**{field: "x" for field in sample.input_schema["properties"]})

    # Again: the padded library and its vectors come from the cache.
    shutil.rmtree(tmp_path / "replayed")
    again, report_again = replay(evolved, tmp_path, *args)
    assert again.exit_code == 0, again.output
    assert report_again["distractors"]["cached"] is True
    assert report_again["distractors"]["path"] == padded["path"]
    assert before == library_snapshot(evolved["library"])


def test_distractor_sequence_is_deterministic_and_named_apart(tmp_path: Path) -> None:
    from insitu.evals.distractors import VARIANTS, distractor_specs, read_corpus
    from insitu.tool_store.contract import TOOL_NAME_PATTERN

    corpus = read_corpus(write_corpus(tmp_path / "corpus", tools=10))
    first = distractor_specs(35, corpus, taken={"fetch_record0"})
    again = distractor_specs(35, corpus, taken={"fetch_record0"})
    assert [s.content_hash() for s in first] == [s.content_hash() for s in again]
    names = [s.name for s in first]
    assert len(set(names)) == 35 and "fetch_record0" not in names
    assert all(TOOL_NAME_PATTERN.match(n) for n in names)
    # Both sets appear early; later rounds are variants with their own text.
    assert {"fetch_record0_alpha_set", "fetch_record5"} <= set(names[:10])
    assert first[10].name.endswith(f"_{VARIANTS[0][0]}") and VARIANTS[0][1] in first[10].description
    assert first[10].input_schema["properties"].keys() == {"record_id", "field_class"}


def test_seeded_vectors_spare_the_embedding(tmp_path: Path, monkeypatch: Any) -> None:
    """A commit whose vectors were seeded embeds nothing (the 100k build relies on it)."""
    from insitu.evals.distractors import inert_spec
    from insitu.tool_store import ChangeSet
    from insitu.tool_store import embeddings as embedding_module

    specs = [inert_spec(f"fetch_thing_{i}", f"Fetches thing {i}.", ["query"]) for i in range(5)]
    with ToolStore.open(tmp_path / "store", embedding="hashing") as store:
        vectors = embedding_module.embed([s.embedding_text() for s in specs], "hashing")
        with pytest.raises(ValueError, match="length"):
            store.seed_vector_cache([(specs[0], np.zeros(3, dtype=np.float32))])
        assert store.seed_vector_cache(zip(specs, vectors, strict=True)) == 5

        def no_embedding(name: str | None = None) -> Any:
            raise AssertionError("the commit embedded a seeded spec")

        monkeypatch.setattr(embedding_module, "get_embedding_function", no_embedding)
        store.commit(ChangeSet().add(specs[0]).add(specs[1]))
        assert store.search("fetches thing 1", k=1)[0].record.name == "fetch_thing_1"


# ------------------------------------------------------------------ hooks and errors


def test_prediction_rows_record_the_retrieved_library_tools() -> None:
    from insitu.evals.tasks import Task
    from insitu.evolve import prediction_row

    candidates = [
        {"name": name, "version": 1, "description": "", "score": 1.0, "local": local}
        for name, local in (("summarize_numbers", False), ("built_here", True))
    ]
    row = prediction_row(Task(id="t", question="q"), {"candidates": candidates}, batch=1)
    assert row["retrieved"] == ["summarize_numbers"]
    assert prediction_row(Task(id="t", question="q"), {}, batch=1)["retrieved"] == []


def test_a_library_that_changed_fails_the_replay(
    evolved: dict[str, Path], tmp_path: Path, monkeypatch: Any
) -> None:
    from insitu.evals import replay as replay_module

    states = iter([{"tools": 2, "generation": 1}, {"tools": 3, "generation": 2}])
    monkeypatch.setattr(replay_module, "library_state", lambda _: {**next(states), "digest": ""})
    result, report = replay(evolved, tmp_path)
    assert result.exit_code == 1
    assert "was not frozen" in result.output and report["library_unchanged"] is False


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json\n", "line 1: not JSON"),
        ('["task-0000"]\n', "line 1: expected an object"),
        ('{"id": "task-0000", "paraphrase": ["x"]}\n', "unknown key(s) ['paraphrase']"),
        ('{"id": "task-0000", "paraphrases": []}\n', "non-empty list of questions"),
        ('{"id": "task-0000", "paraphrases": "one"}\n', "non-empty list of questions"),
        ('\n{"id": "nope", "paraphrases": ["x"]}\n', "line 2: the run has no task 'nope'"),
        ("\n", "holds no paraphrase"),
    ],
)
def test_malformed_paraphrase_files_exit_2(
    evolved: dict[str, Path], tmp_path: Path, content: str, message: str
) -> None:
    paraphrases = tmp_path / "p.jsonl"
    paraphrases.write_text(content)
    result, _ = replay(evolved, tmp_path, "--paraphrases", str(paraphrases))
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "replayed").exists()


def test_unusable_runs_exit_2_with_one_line(evolved: dict[str, Path], tmp_path: Path) -> None:
    not_a_run = invoke("eval", "replay", str(tmp_path), "--scripted")
    assert not_a_run.exit_code == 2 and "is not a run folder" in not_a_run.output

    failed = tmp_path / "failed-run"
    shutil.copytree(evolved["run"], failed, ignore=shutil.ignore_patterns("replay*"))
    rows = [json.loads(x) for x in (failed / "predictions.jsonl").read_text().splitlines()]
    (failed / "predictions.jsonl").write_text(
        "".join(json.dumps({**r, "status": "failed"}) + "\n" for r in rows)
    )
    nothing = invoke("eval", "replay", str(failed), "--scripted")
    assert nothing.exit_code == 2 and "no completed task to replay" in nothing.output

    moved = tmp_path / "moved-run"
    shutil.copytree(evolved["run"], moved, ignore=shutil.ignore_patterns("replay*"))
    meta = json.loads((moved / "run.json").read_text())
    (moved / "run.json").write_text(json.dumps({**meta, "store_dir": str(tmp_path / "gone")}))
    no_library = invoke("eval", "replay", str(moved), "--scripted")
    assert no_library.exit_code == 2 and "no tool library at" in no_library.output
    assert "--store" in no_library.output
    # ... and --store names the library instead.
    given = invoke(
        "--store", str(evolved["library"]), "eval", "replay", str(moved), "--scripted",
        "--replay-dir", str(tmp_path / "r"),
    )  # fmt: skip
    assert given.exit_code == 0, given.output

    small = invoke(
        "eval", "replay", str(evolved["run"]), "--scripted", "--distractors", "2",
        "--data", str(write_corpus(tmp_path / "corpus")), "--cache-dir", str(tmp_path / "c"),
    )  # fmt: skip
    assert small.exit_code == 2 and "already holds" in small.output

    bad_tasks = invoke("eval", "replay", str(evolved["run"]), "--scripted", "--tasks", "local")
    assert bad_tasks.exit_code == 2
    assert "does not hold the run's completed tasks" in bad_tasks.output


def test_replay_without_an_endpoint_names_scripted(
    evolved: dict[str, Path], tmp_path: Path, monkeypatch: Any
) -> None:
    for variable in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "INSITU_OPENAI_BASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    result = invoke("eval", "replay", str(evolved["run"]), "--replay-dir", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert "--scripted" in result.output


def test_benchmark_runs_small(tmp_path: Path, capsys: Any) -> None:
    from insitu.evals import bench_replay
    from insitu.testing.team import ScriptedTeam

    team = ScriptedTeam()
    for task in scripted_stream(2):  # the paraphrases still reach the same capability
        reworded = bench_replay.paraphrase(task["question"])
        assert reworded != task["question"]
        assert team.capability_for(reworded)[0] is team.capability_for(task["question"])[0]
    assert bench_replay.without_literals("Days from 2024-07-19 to 2025-01-01?") == "Days from to ?"

    code = bench_replay.main(
        [
            "--tasks", "4", "--batch-size", "2", "--sizes", "200", "--embedding", "hashing",
            "--data", str(write_corpus(tmp_path / "corpus")), "--cache-dir", str(tmp_path / "c"),
            "--workdir", str(tmp_path / "w"), "--json", str(tmp_path / "b.json"), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert SCRIPTED_NOTE in printed and "target: retrieval hit rate" in printed
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["scripted"] is True and result["original_library_unchanged"] is True
    library, padded = result["replays"]
    assert library["resolve_rate"] == 1.0 and library["tools_created"] == 0
    assert padded["library_before"]["tools"] == 200 and "what_if" in padded
