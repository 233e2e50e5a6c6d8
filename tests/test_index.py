"""ToolIndex: dense + lexical retrieval, fusion, filters and document management."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from insitu.tool_store.index import IndexDoc, ToolIndex, query_segments
from insitu.tool_store.lexical import BM25Index, matches_where
from insitu.tool_store.text import split_identifier, tokenize

DOCS = [
    ("parse_csv_rows", "parse csv rows: Parses comma-separated text into rows.", {"v": 1}),
    ("compute_mean", "compute mean: Computes the arithmetic mean of numbers.", {"v": 2}),
    ("fetch_web_page", "fetch web page: Downloads a page over HTTP, returns HTML.", {"v": 1}),
    ("send_email", "send email: Sends an email message through SMTP.", {"v": 3}),
    ("resize_image", "resize image: Scales a picture to a new width and height.", {"v": 1}),
]


def docs() -> list[IndexDoc]:
    return [IndexDoc(i, t, {"name": i, **m}) for i, t, m in DOCS]


@pytest.fixture(params=["memory", "chroma"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> ToolIndex:
    if request.param == "memory":
        idx = ToolIndex(embedding="hashing")
    else:
        idx = ToolIndex.persistent(tmp_path / "chroma", embedding="hashing")
    idx.upsert(docs())
    yield idx
    idx.close()


def test_identifiers_are_split_for_lexical_matching() -> None:
    assert split_identifier("parse_csv_rows") == "parse csv rows"
    assert split_identifier("calculateNetIncome") == "calculate Net Income"
    assert split_identifier("HTTPServer::getURL") == "HTTP Server get URL"
    assert tokenize("Parsing CSV rows") == tokenize("parse_csv_row")


def test_lexical_mode_finds_the_identifier(index: ToolIndex) -> None:
    hits = index.search("parse csv", k=3, mode="lexical")
    assert hits[0].id == "parse_csv_rows"
    assert hits[0].lexical_score and hits[0].lexical_score > 0 and hits[0].dense_score is None
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))


@pytest.mark.parametrize("mode", ["hybrid", "dense", "lexical"])
def test_every_mode_ranks_the_obvious_document_first(index: ToolIndex, mode: str) -> None:
    assert index.search("send an email message", k=2, mode=mode)[0].id == "send_email"


def test_dense_mode_reports_cosine(index: ToolIndex) -> None:
    hit = index.search("resize image", k=1, mode="dense")[0]
    assert hit.id == "resize_image" and hit.lexical_score is None
    assert hit.dense_score is not None and 0.3 < hit.dense_score <= 1.0 + 1e-6
    assert hit.metadata == {"name": "resize_image", "v": 1}


def test_where_filters_both_sides(index: ToolIndex) -> None:
    for mode in ("hybrid", "dense", "lexical"):
        hits = index.search("parse csv rows, mean, email", k=5, mode=mode, where={"v": {"$gte": 2}})
        assert hits and all(h.metadata["v"] >= 2 for h in hits), mode
    assert [h.id for h in index.search("email", where={"v": 3})] == ["send_email"]


def test_upsert_replaces_delete_removes_clear_empties(index: ToolIndex) -> None:
    assert index.count() == 5
    index.upsert([IndexDoc("send_email", "send email: Posts a letter by carrier pigeon.", {})])
    assert index.count() == 5
    hit = index.search("carrier pigeon letter", k=1, mode="lexical")[0]
    assert hit.id == "send_email" and hit.metadata == {}
    index.delete(["send_email", "unknown"])
    assert index.count() == 4
    assert all(h.id != "send_email" for h in index.search("email smtp", k=5))
    index.clear()
    assert index.count() == 0 and index.search("anything") == []


def test_upsert_rejects_duplicates_and_bad_metadata() -> None:
    idx = ToolIndex(embedding="hashing")
    with pytest.raises(ValueError, match="duplicate ids"):
        idx.upsert([("a", "x", {}), ("a", "y", {})])
    with pytest.raises(ValueError, match="must be a str, int, float or bool"):
        idx.upsert([("a", "x", {"tags": ["list"]})])


def test_bad_mode_and_fusion_are_rejected(index: ToolIndex) -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        index.search("x", mode="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown fusion"):
        ToolIndex(embedding="hashing", fusion="borda")  # type: ignore[arg-type]


def test_persistent_index_reloads_lexical_side_from_chroma(tmp_path: Path) -> None:
    first = ToolIndex.persistent(tmp_path / "c", embedding="hashing")
    first.upsert(docs())
    first.close()
    second = ToolIndex.persistent(tmp_path / "c", embedding="hashing")
    assert second.count() == 5
    assert second.search("parse csv", k=1, mode="lexical")[0].id == "parse_csv_rows"
    second.close()


def test_batches_above_chromas_max_batch(tmp_path: Path) -> None:
    idx = ToolIndex.persistent(tmp_path / "c", embedding="hashing")
    idx._dense.max_batch = 7  # type: ignore[union-attr]
    many = [IndexDoc(f"tool_{i}", f"tool number {i} does thing {i % 5}", {}) for i in range(30)]
    assert idx.upsert(many) == 30
    assert idx.count() == 30
    idx.delete([d.id for d in many[:20]])
    assert idx.count() == 10
    idx.close()


def test_precomputed_embeddings_are_used_as_given() -> None:
    idx = ToolIndex(embedding="hashing")
    vector = np.zeros(384, dtype=np.float32)
    vector[7] = 1.0
    idx.upsert([IndexDoc("odd_tool", "nothing similar", {}, embedding=vector)])
    idx.upsert([("plain_tool", "something else", {})])
    query = idx._query_vectors(["zzz"])  # any query: compare against the stored vector
    hits = idx.search("zzz", k=2, mode="dense")
    expected = float(query[0][7])
    assert next(h for h in hits if h.id == "odd_tool").dense_score == pytest.approx(expected)


def test_query_segments_split_compound_requests() -> None:
    assert query_segments("average of numbers") == []
    segments = query_segments(
        "I need the Bitcoin forecast for next week. Also list the banks in my country!"
    )
    assert segments == [
        "I need the Bitcoin forecast for next week.",
        "Also list the banks in my country!",
    ]


def test_compound_query_surfaces_one_tool_per_request() -> None:
    idx = ToolIndex(embedding="hashing")
    idx.upsert(docs())
    query = (
        "Please convert this comma-separated csv text into rows. Then email the result via smtp."
    )
    top2 = {h.id for h in idx.search(query, k=2)}
    assert top2 == {"parse_csv_rows", "send_email"}


def _recall_at_1(idx: ToolIndex, queries: list[tuple[str, str]], mode: str) -> float:
    top = [idx.search(q, k=1, mode=mode) for q, _ in queries]
    return sum(
        bool(t) and t[0].id == gold for t, (_, gold) in zip(top, queries, strict=True)
    ) / len(queries)


def test_hybrid_is_at_least_as_good_as_either_mode_on_a_tiny_fixture() -> None:
    """Lexical wins on exact identifiers, dense on paraphrase; hybrid must keep both.

    Dense sees only the descriptions (two services share one, so dense cannot
    tell them apart); lexical also sees the names, but no paraphrase.
    """
    idx = ToolIndex(embedding="minilm")
    descriptions = {
        "restart_service_kx9": "Restarts one of the background services.",
        "restart_service_qb2": "Restarts one of the background services.",
        "lookup_icd10_code": "Finds the medical classification entry for a diagnosis.",
        "lookup_cpt_code": "Finds the billing entry for a medical procedure.",
        "compute_mean": "Computes the arithmetic average of numbers.",
        "fetch_web_page": "Downloads a document from a URL.",
        "send_email": "Sends a message to an inbox via SMTP.",
        "resize_image": "Scales a picture to a width and height.",
    }
    idx.upsert([IndexDoc(name, text, {"name": name}) for name, text in descriptions.items()])
    queries = [
        ("please restart qb2", "restart_service_qb2"),
        ("restart kx9", "restart_service_kx9"),
        ("icd10 for pneumonia", "lookup_icd10_code"),
        ("cpt for an appendectomy", "lookup_cpt_code"),
        ("what is the typical value of these figures", "compute_mean"),
        ("grab the contents of this link", "fetch_web_page"),
        ("make this photo smaller", "resize_image"),
        ("mail my boss", "send_email"),
    ]
    hybrid = _recall_at_1(idx, queries, "hybrid")
    dense = _recall_at_1(idx, queries, "dense")
    lexical = _recall_at_1(idx, queries, "lexical")
    assert dense < 1.0 and lexical < 1.0  # the fixture really separates the modes
    assert hybrid >= max(dense, lexical)
    assert hybrid == 1.0


@pytest.mark.parametrize("fusion", ["zscore", "minmax", "rrf"])
def test_every_fusion_method_works(fusion: str) -> None:
    idx = ToolIndex(embedding="hashing", fusion=fusion)  # type: ignore[arg-type]
    idx.upsert(docs())
    assert idx.search("parse csv rows", k=1)[0].id == "parse_csv_rows"


def test_bm25_incremental_updates_match_a_fresh_build() -> None:
    texts = {
        f"d{i}": f"word{i % 7} common text number {i} " + "filler " * (i % 4) for i in range(60)
    }
    live = BM25Index()
    for doc_id, text in texts.items():
        live.upsert(doc_id, text)
    for i in range(0, 60, 3):
        live.delete([f"d{i}"])
    live.upsert("d1", "replacement word3 text")
    fresh = BM25Index()
    for doc_id, text in texts.items():
        if int(doc_id[1:]) % 3:
            fresh.upsert(doc_id, "replacement word3 text" if doc_id == "d1" else text)

    def ranked(index: BM25Index, query: str) -> dict[str, float]:
        scores = index.scores(query)
        return {d: round(float(scores[s]), 5) for s, d in enumerate(index.slot_ids()) if d}

    for query in ("word3 text", "common filler", "number 5"):
        assert ranked(live, query) == ranked(fresh, query)


def test_bm25_compaction_after_many_deletes_keeps_the_scores() -> None:
    texts = {f"d{i}": f"word{i % 11} shared text {i} " + "pad " * (i % 5) for i in range(1600)}
    live = BM25Index()
    for doc_id, text in texts.items():
        live.upsert(doc_id, text)
    kept = {d: t for d, t in texts.items() if int(d[1:]) % 4 == 0}
    live.delete([d for d in texts if d not in kept])  # 1,200 dead slots: compacted
    assert len(live.slot_ids()) == len(kept) == len(live)
    fresh = BM25Index()
    for doc_id, text in kept.items():
        fresh.upsert(doc_id, text)
    for query in ("word3 text", "shared pad", "word8"):
        live_scores, fresh_scores = live.scores(query), fresh.scores(query)
        assert {d: round(float(live_scores[s]), 5) for s, d in enumerate(live.slot_ids())} == {
            d: round(float(fresh_scores[s]), 5) for s, d in enumerate(fresh.slot_ids())
        }


def test_where_operators() -> None:
    meta = {"name": "a", "v": 2, "network": False}
    assert matches_where(meta, {"name": "a"})
    assert matches_where(meta, {"v": {"$in": [1, 2]}, "network": {"$ne": True}})
    assert matches_where(meta, {"$or": [{"v": 9}, {"name": {"$eq": "a"}}]})
    assert not matches_where(meta, {"$and": [{"v": {"$gt": 2}}, {"name": "a"}]})
    assert not matches_where(meta, {"missing": {"$lt": 3}})
    with pytest.raises(ValueError, match="unsupported where operator"):
        matches_where(meta, {"v": {"$regex": "x"}})


def test_cached_vectors_of_lexical_candidates_follow_updates(tmp_path: Path) -> None:
    idx = ToolIndex.persistent(tmp_path / "c", embedding="hashing")
    idx.upsert(docs())
    query = "smtp message about images"  # lexically send_email, densely not its vector
    q = idx._query_vectors([query])[0]
    a = int(np.argmax(np.abs(q)))
    # Pointing away from the query, so never among the dense candidates: its
    # vector is looked up by id (then cached) to score it.
    first, second = np.zeros(384, np.float32), np.zeros(384, np.float32)
    first[a], second[a] = -np.sign(q[a]), -0.5 * np.sign(q[a])
    idx.upsert([IndexDoc("send_email", "send email: smtp message", {}, embedding=first)])

    def dense_score_of_send_email() -> float:
        hits = idx.search(query, k=2, candidates=1)
        return next(h.dense_score for h in hits if h.id == "send_email")

    assert dense_score_of_send_email() == pytest.approx(-abs(float(q[a])))
    assert "send_email" in idx._vector_cache
    assert dense_score_of_send_email() == pytest.approx(-abs(float(q[a])))  # from the cache
    idx.upsert([IndexDoc("send_email", "send email: smtp message", {}, embedding=second)])
    assert dense_score_of_send_email() == pytest.approx(-0.5 * abs(float(q[a])))
    idx.close()


def test_lexical_snapshot_is_reused_only_while_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from insitu.tool_store.index import _ChromaDense

    path = tmp_path / "c"
    first = ToolIndex.persistent(path, embedding="hashing")
    first.upsert(docs())
    first.search("parse csv", mode="lexical")
    first.close()
    snapshot = first.snapshot_path
    assert snapshot is not None and snapshot.is_file()

    def no_rebuild(self):  # loading from Chroma documents is what the snapshot avoids
        raise AssertionError("rebuilt from Chroma")

    with monkeypatch.context() as patch:
        patch.setattr(_ChromaDense, "documents", no_rebuild)
        second = ToolIndex.persistent(path, embedding="hashing")
        assert second.search("parse csv", k=1, mode="lexical")[0].id == "parse_csv_rows"
        # A write makes the saved snapshot stale: it is removed at once, so a
        # crash (no close) cannot leave a stale one behind.
        second.upsert([IndexDoc("count_lines", "count lines: Counts lines.", {})])
        assert not snapshot.exists()
    third = ToolIndex.persistent(path, embedding="hashing")  # "crashed": rebuilt from Chroma
    assert third.search("count lines", k=1, mode="lexical")[0].id == "count_lines"
    third.close()
    assert snapshot.is_file()
    # Another writer that bypasses ToolIndex changes the count: the snapshot is ignored.
    import chromadb
    from chromadb.config import Settings

    raw = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))
    raw.get_collection("insitu-tools").add(
        ids=["raw_doc"], embeddings=[[0.0] * 383 + [1.0]], documents=["zebra stripes"]
    )
    raw.close()
    fourth = ToolIndex.persistent(path, embedding="hashing")
    assert fourth.search("zebra stripes", k=1, mode="lexical")[0].id == "raw_doc"
    fourth.close()


def test_a_tampered_snapshot_is_never_executed(tmp_path: Path) -> None:
    import os
    import pickle

    path = tmp_path / "c"
    idx = ToolIndex.persistent(path, embedding="hashing")
    idx.upsert(docs())
    idx.search("x", mode="lexical")
    idx.close()
    assert idx.snapshot_path is not None
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    idx.snapshot_path.write_bytes(pickle.dumps({"format": 1, "header": {}, "state": Evil()}))
    again = ToolIndex.persistent(path, embedding="hashing")
    assert again.search("parse csv", k=1, mode="lexical")[0].id == "parse_csv_rows"
    assert not marker.exists()
    again.close()


def test_retrieval_benchmark_runs_on_a_tiny_set_and_skips_without_data(tmp_path: Path) -> None:
    import json

    from insitu.evals.retrieval import format_report, run_retrieval_benchmark

    assert "skipped" in run_retrieval_benchmark(tmp_path / "absent")
    data = tmp_path / "tool_retrieval" / "tiny"
    data.mkdir(parents=True)
    tools = [
        {"tool_id": "parseCsvRows", "name": "parseCsvRows", "text": "Parses CSV text into rows."},
        {
            "tool_id": "sendEmail",
            "name": "sendEmail",
            "text": "Sends an email via SMTP.",
            "raw": {"parameters": {"to": {"description": "recipient address"}}},
        },
        {"tool_id": "resizeImage", "name": "resizeImage", "text": "Scales a picture."},
    ]
    queries = [
        {"qid": "1", "query": "parse this csv", "gold": ["parseCsvRows"]},
        {
            "qid": "2",
            "query": "Mail it to the recipient address. Then parse the csv.",
            "gold": ["sendEmail", "parseCsvRows"],
        },
    ]
    (data / "tools.jsonl").write_text("\n".join(json.dumps(t) for t in tools))
    (data / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries))
    report = run_retrieval_benchmark(
        tmp_path / "tool_retrieval", embedding="hashing", cache_dir=tmp_path / "cache", sweep=True
    )
    tiny = report["sets"]["tiny"]
    assert tiny["tools"] == 3 and tiny["queries"] == 2
    assert tiny["modes"]["hybrid"]["recall@5"] == 1.0
    assert set(tiny["modes"]) == {"dense", "lexical", "hybrid"} and tiny["sweep"]
    assert "tiny" in format_report(report)
