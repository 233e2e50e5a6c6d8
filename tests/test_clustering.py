"""Candidate groups of duplicate tools: who is grouped, who is not, and at what cost."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pytest

from insitu.tool_store.clustering import (
    DEFAULT_K,
    DEFAULT_NAME_WEIGHT,
    DEFAULT_THRESHOLD,
    CandidateGroup,
    GroupingStats,
    candidate_groups,
    cluster_items,
    clustering_text,
    name_similarity,
    pair_score,
)
from insitu.tool_store.contract import ToolRecord, ToolSpec
from insitu.tool_store.embeddings import HashingEmbedding
from insitu.tool_store.testing import catalogue_specs, make_spec

#: The hashing embedding's cosines run higher than MiniLM's: its own threshold.
HASHING_THRESHOLD = 0.8

LIBRARY = catalogue_specs()
# Same behaviour as library tools, under other names, inputs and code.
AVERAGE = make_spec(
    "calculate_average",
    "Calculates the arithmetic mean (average) of a list of numbers.",
    inputs=("numbers",),
    body="return {'result': sum(numbers) / len(numbers)}",
)
HYPERLINKS = make_spec(
    "extract_hyperlinks",
    "Returns every hyperlink target found in an HTML document.",
    inputs=("html",),
    body="return {'result': []}",
)
# Two new tools that duplicate each other but nothing in the library.
SLUG_A = make_spec(
    "slugify_title",
    "Converts a title into a lowercase URL slug with hyphens between the words.",
    inputs=("title",),
)
SLUG_B = make_spec(
    "make_url_slug",
    "Turns a title into a lowercase URL slug, with hyphens between words.",
    inputs=("text",),
    body="return {'result': text.lower()}",
)
# Nothing like it anywhere.
REVERSE = make_spec(
    "reverse_string", "Reverses the order of the characters of a string.", inputs=("text",)
)


def record(spec: ToolSpec, **changes: object) -> ToolRecord:
    return ToolRecord(**spec.model_dump(), version=1, hash=spec.content_hash(), **changes)


def by_new_member(groups: Sequence[CandidateGroup]) -> dict[str, CandidateGroup]:
    return {name: g for g in groups for name in g.new_members}


class CountingEmbedding:
    """Wraps the hashing embedding and records every batch it is asked for."""

    def __init__(self) -> None:
        self.inner = HashingEmbedding()
        self.batches: list[int] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(len(texts))
        return self.inner.embed(texts)


def synthetic_library(n: int, seed: int = 0) -> list[ToolSpec]:
    """``n`` distinct tools made of random words (none about slugs, means or strings)."""
    rng = random.Random(seed)
    words = [f"{a}{b}" for a in ("al", "bra", "can", "del", "em", "fjo") for b in "qxzvkw"]
    specs = []
    for i in range(n):
        picked = rng.sample(words, 6)
        specs.append(
            make_spec(
                f"survey_{picked[0]}_{i}",
                f"Surveys the {' '.join(picked)} records of region {i}.",
                inputs=(picked[1],),
            )
        )
    return specs


# ---------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------


def test_clustering_text_has_description_and_signature_but_not_the_name() -> None:
    text = clustering_text(AVERAGE)
    assert text.startswith("Calculates the arithmetic mean")
    assert "Inputs: numbers (string)." in text
    assert "Outputs: result (any)." in text
    assert "calculate_average" not in text and "calculate average" not in text


def test_name_similarity_splits_stems_and_folds_synonyms() -> None:
    assert name_similarity("calculate_average", "compute_mean") == 1.0
    assert name_similarity("fetchWebPage", "get_web_pages") == 1.0
    assert name_similarity("parse_csv_rows", "send_email") == 0.0
    assert name_similarity("get_mean_value", "compute_mean") == pytest.approx(1 / 3)
    assert name_similarity("", "compute_mean") == 0.0


def test_pair_score_names_only_raise_the_cosine() -> None:
    assert pair_score(0.8, 0.0, 0.5) == pytest.approx(0.8)
    assert pair_score(0.8, 1.0, 0.5) == pytest.approx(0.9)
    assert pair_score(0.8, 1.0, 0.0) == pytest.approx(0.8)
    assert pair_score(1.0, 0.3, 0.5) == pytest.approx(1.0)
    # With the defaults, equal names alone cannot link unrelated descriptions.
    assert pair_score(0.5, 1.0, DEFAULT_NAME_WEIGHT) < DEFAULT_THRESHOLD


# ---------------------------------------------------------------------------
# candidate_groups
# ---------------------------------------------------------------------------


def test_near_duplicates_are_grouped_and_distinct_tools_are_not() -> None:
    groups = candidate_groups(
        [AVERAGE, HYPERLINKS, SLUG_A, SLUG_B, REVERSE],
        [record(spec) for spec in LIBRARY],
        embedding="hashing",
        threshold=HASHING_THRESHOLD,
    )
    found = {frozenset(g.members) for g in groups}
    assert found == {
        frozenset({"calculate_average", "compute_mean"}),
        frozenset({"extract_hyperlinks", "extract_links"}),
        frozenset({"slugify_title", "make_url_slug"}),
    }
    groups_of = by_new_member(groups)
    assert "reverse_string" not in groups_of
    mean = groups_of["calculate_average"]
    assert mean.new_members == ["calculate_average"]
    assert mean.library_members == ["compute_mean"]
    assert mean.members == ["calculate_average", "compute_mean"]  # new ones first
    assert mean.score >= HASHING_THRESHOLD
    assert "calculate_average ~ compute_mean" in mean.reasons[0]
    slugs = groups_of["slugify_title"]
    assert slugs.library_members == [] and sorted(slugs.new_members) == sorted(slugs.members)
    # Strongest first.
    assert [g.score for g in groups] == sorted((g.score for g in groups), reverse=True)


def test_only_groups_with_a_new_tool_are_returned() -> None:
    # Two near-identical *library* tools: the library is assumed deduplicated, so they
    # are never compared with each other and never proposed on their own.
    twin = make_spec(
        "compute_average", "Computes the arithmetic mean of a list of numbers.", inputs=("xs",)
    )
    library = [*LIBRARY, twin]
    stats = GroupingStats()
    groups = candidate_groups(
        [REVERSE], library, embedding="hashing", threshold=HASHING_THRESHOLD, stats=stats
    )
    assert groups == []
    # One new tool against the library: exactly one row of comparisons.
    assert stats.comparisons == len(library)
    # A new tool close to both brings both in, through itself.
    groups = candidate_groups([AVERAGE], library, embedding="hashing", threshold=HASHING_THRESHOLD)
    assert len(groups) == 1
    assert groups[0].new_members == ["calculate_average"]
    assert set(groups[0].library_members) == {"compute_mean", "compute_average"}


def test_singletons_are_opt_in_and_come_last() -> None:
    args = {"embedding": "hashing", "threshold": HASHING_THRESHOLD}
    assert candidate_groups([REVERSE], LIBRARY, **args) == []
    groups = candidate_groups([REVERSE, AVERAGE], LIBRARY, include_singletons=True, **args)
    assert [g.members for g in groups] == [
        ["calculate_average", "compute_mean"],
        ["reverse_string"],
    ]
    single = groups[-1]
    assert single.size == 1 and single.library_members == []
    assert 0.0 < single.score < HASHING_THRESHOLD
    assert single.reasons[0].startswith("no tool scored 0.80 or more")


def test_cost_grows_with_new_tools_not_with_the_library_squared() -> None:
    new = [AVERAGE, SLUG_A, SLUG_B]
    embedder = CountingEmbedding()
    for size in (30, 600):
        library = LIBRARY + synthetic_library(size - len(LIBRARY))
        vectors = embedder.inner.embed([clustering_text(t) for t in library])
        embedder.batches.clear()
        stats = GroupingStats()
        groups = candidate_groups(
            new,
            library,
            embedding=embedder,
            library_vectors=vectors,
            threshold=HASHING_THRESHOLD,
            stats=stats,
        )
        # The library was not embedded again: one batch, the new tools only.
        assert embedder.batches == [len(new)] and stats.embedded == len(new)
        # new x library plus new x new (ordered pairs), never library x library.
        assert stats.comparisons == len(new) * size + len(new) * (len(new) - 1)
        # Names are compared only in a fixed-size pool per new tool.
        pool = 3 * DEFAULT_K
        assert stats.name_comparisons <= len(new) * (pool + pool)
        assert all(n <= DEFAULT_K for n in stats.links_per_query)
        assert {frozenset(g.members) for g in groups} == {
            frozenset({"calculate_average", "compute_mean"}),
            frozenset({"slugify_title", "make_url_slug"}),
        }


def test_each_new_tool_keeps_at_most_k_library_neighbours() -> None:
    clones = [
        make_spec(
            f"compute_mean_{i}", "Computes the arithmetic mean of a list of numbers.", inputs=("v",)
        )
        for i in range(6)
    ]
    for k in (1, 2, 4):
        stats = GroupingStats()
        groups = candidate_groups(
            [AVERAGE], clones, embedding="hashing", threshold=0.75, k=k, stats=stats
        )
        assert len(groups) == 1 and len(groups[0].library_members) == k
        assert stats.links_per_query == [k]


def test_groups_never_exceed_the_size_limit() -> None:
    news = [
        make_spec(f"mean_of_values_{i}", "Computes the arithmetic mean of a list of numbers.")
        for i in range(5)
    ]
    stats = GroupingStats()
    groups = candidate_groups(
        news,
        LIBRARY,
        embedding="hashing",
        threshold=0.75,
        max_group_size=3,
        include_singletons=True,
        stats=stats,
    )
    # Six identical tools (compute_mean's description too): two full groups, no loner,
    # because a link refused by the limit does not use up a tool's k links.
    assert [g.size for g in groups] == [3, 3]
    assert sorted(n for g in groups for n in g.new_members) == sorted(t.name for t in news)
    assert all(n <= DEFAULT_K for n in stats.links_per_query)
    assert stats.capped > 0
    assert any("not joined (group size limit 3)" in r for g in groups for r in g.reasons)


def test_library_vectors_as_array_or_mapping_give_the_same_groups() -> None:
    fn = HashingEmbedding()
    vectors = fn.embed([clustering_text(t) for t in LIBRARY])
    new = [AVERAGE, HYPERLINKS, REVERSE]
    args = {"embedding": "hashing", "threshold": HASHING_THRESHOLD}
    plain = candidate_groups(new, LIBRARY, **args)
    as_array = candidate_groups(new, LIBRARY, library_vectors=vectors, **args)
    partial = {t.name: vectors[i] for i, t in enumerate(LIBRARY) if t.name != "compute_mean"}
    stats = GroupingStats()
    as_mapping = candidate_groups(new, LIBRARY, library_vectors=partial, stats=stats, **args)
    assert plain == as_array == as_mapping
    assert stats.embedded == len(new) + 1  # only the vector missing from the mapping
    with pytest.raises(ValueError, match="library vectors"):
        candidate_groups(new, LIBRARY, library_vectors=vectors[:3], **args)


def test_archived_tools_and_new_versions_are_left_out_of_the_library_side() -> None:
    library = [
        record(spec, status="archived") if spec.name == "compute_mean" else record(spec)
        for spec in LIBRARY
    ]
    args = {"embedding": "hashing", "threshold": HASHING_THRESHOLD}
    assert candidate_groups([AVERAGE], library, **args) == []
    # A new version of a library tool is not its own duplicate.
    changed = make_spec("extract_links", "Extracts every hyperlink target from an HTML page.")
    assert candidate_groups([changed], LIBRARY, **args) == []


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="distinct names"):
        candidate_groups([AVERAGE, AVERAGE], LIBRARY, embedding="hashing")
    with pytest.raises(ValueError, match="max_group_size"):
        candidate_groups([AVERAGE], LIBRARY, embedding="hashing", max_group_size=1)
    with pytest.raises(ValueError, match="name_weight"):
        candidate_groups([AVERAGE], LIBRARY, embedding="hashing", name_weight=2.0)
    assert candidate_groups([], LIBRARY, embedding="hashing") == []


def test_real_minilm_embedding_with_the_default_threshold() -> None:
    # Paraphrases under unrelated names: only the meaning can group them.
    mean = make_spec(
        "summarise_numbers",
        "Calculates the mean of the given list of numbers.",
        inputs=("numbers",),
    )
    groups = candidate_groups(
        [mean, AVERAGE, HYPERLINKS, SLUG_A, SLUG_B, REVERSE],
        LIBRARY,
        embedding="minilm",
        include_singletons=True,
    )
    by_members = {frozenset(g.members) for g in groups if g.size > 1}
    assert by_members == {
        frozenset({"summarise_numbers", "calculate_average", "compute_mean"}),
        frozenset({"extract_hyperlinks", "extract_links"}),
        frozenset({"slugify_title", "make_url_slug"}),
    }
    assert [g.members for g in groups if g.size == 1] == [["reverse_string"]]


# ---------------------------------------------------------------------------
# cluster_items
# ---------------------------------------------------------------------------


def test_cluster_items_partitions_and_groups_duplicates() -> None:
    texts = [
        "Computes the arithmetic mean of a list of numbers.",
        "Sends an email message through an SMTP server.",
        "Calculates the arithmetic mean (average) of a list of numbers.",
        "Reverses the order of the characters of a string.",
        "Sends an email message via an SMTP server.",
    ]
    names = ["compute_mean", "send_email", "calculate_average", "reverse_string", "mail_message"]
    stats = GroupingStats()
    groups = cluster_items(
        texts, names, embedding="hashing", threshold=HASHING_THRESHOLD, stats=stats
    )
    assert groups == [[0, 2], [1, 4], [3]]
    assert stats.comparisons == len(texts) * (len(texts) - 1)
    # Without names only the texts count; precomputed vectors skip the embedding.
    vectors = HashingEmbedding().embed(texts)
    stats = GroupingStats()
    assert cluster_items(texts, vectors=vectors, threshold=HASHING_THRESHOLD, stats=stats) == [
        [0, 2],
        [1, 4],
        [3],
    ]
    assert stats.embedded == 0
    assert cluster_items([], embedding="hashing") == []
    with pytest.raises(ValueError, match="names"):
        cluster_items(texts, names[:2], embedding="hashing")


def test_cluster_items_caps_group_size_strongest_links_first() -> None:
    texts = ["Computes the arithmetic mean of a list of numbers."] * 5 + ["Sorts numbers."]
    groups = cluster_items(texts, embedding="hashing", threshold=0.9, k=5, max_group_size=2)
    assert sorted(len(g) for g in groups) == [1, 1, 2, 2]
    assert [5] in groups
    assert sorted(i for g in groups for i in g) == list(range(6))
