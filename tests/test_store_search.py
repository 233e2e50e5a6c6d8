"""Search with the real MiniLM model: obvious queries find the obvious tool."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from insitu.tool_store import ToolStore
from insitu.tool_store.testing import catalogue_specs


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolStore]:
    path: Path = tmp_path_factory.mktemp("minilm") / "lib"
    with ToolStore.open(path, embedding="minilm") as s:
        for spec in catalogue_specs():
            s.add(spec)
        yield s


@pytest.mark.parametrize(
    ("query", "tool"),
    [
        ("average of a list of numbers", "compute_mean"),
        ("middle value of my measurements", "compute_median"),
        ("parse csv", "parse_csv_rows"),
        ("download the html of https://example.com", "fetch_web_page"),
        ("how many words are in this paragraph", "count_words"),
        ("convert 30 degrees celsius to fahrenheit", "convert_temperature"),
        ("is this a valid e-mail address: bob@example", "validate_email"),
        ("make the picture 200 pixels wide", "resize_image"),
        ("what will the weather be in Paris", "get_weather"),
        ("put this paragraph into Spanish", "translate_text"),
        ("list primes below 100", "find_primes"),
        ("5! = ?", "compute_factorial"),
    ],
)
def test_obvious_query_finds_the_obvious_tool(store: ToolStore, query: str, tool: str) -> None:
    hits = store.search(query, k=5)
    assert hits[0].record.name == tool, [h.record.name for h in hits]
    assert hits[0].rank == 1 and hits[0].dense_score is not None


def test_all_modes_and_read_only_agree_on_the_obvious(store: ToolStore) -> None:
    for mode in ("hybrid", "dense"):
        assert store.search("average of a list of numbers", k=1, mode=mode)[0].record.name == (
            "compute_mean"
        )
    with ToolStore.open(store.path, read_only=True) as reader:
        assert reader.embedding_name == "minilm"
        hits = reader.search("average of a list of numbers", k=3)
        assert hits[0].record.name == "compute_mean"
        writer_hits = store.search("average of a list of numbers", k=3)
        assert [h.record.name for h in hits] == [h.record.name for h in writer_hits]
        assert [h.score for h in hits] == pytest.approx([h.score for h in writer_hits], abs=1e-4)
