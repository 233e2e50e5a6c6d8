"""Embedding functions: deterministic, normalised, selectable, and known to Chroma's registry."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from insitu.tool_store.embeddings import (
    TOKENIZER_PATH,
    HashingEmbedding,
    MiniLMEmbedding,
    embed,
    get_embedding_function,
    resolve_embedding_name,
)


def test_hashing_is_deterministic_normalised_and_similarity_aware() -> None:
    fn = HashingEmbedding()
    vectors = fn.embed(["parse csv rows", "parse_csv_rows", "send an email", ""])
    assert vectors.shape == (4, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > 0.99  # identifiers are split into the same words
    assert vectors[0] @ vectors[2] < 0.3
    again = HashingEmbedding().embed(["parse csv rows"])
    assert np.array_equal(again[0], vectors[0])


def test_hashing_is_identical_in_another_process() -> None:
    code = (
        "from insitu.tool_store.embeddings import HashingEmbedding;"
        "print(HashingEmbedding().embed(['compute the mean'])[0].tobytes().hex())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert bytes.fromhex(other) == HashingEmbedding().embed(["compute the mean"])[0].tobytes()


def test_selection_by_argument_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSITU_EMBEDDING", "hashing")
    assert isinstance(get_embedding_function(None), HashingEmbedding)
    assert isinstance(get_embedding_function("minilm"), MiniLMEmbedding)
    assert resolve_embedding_name("insitu-hashing") == "hashing"
    monkeypatch.delenv("INSITU_EMBEDDING")
    assert resolve_embedding_name(None) == "minilm"
    with pytest.raises(ValueError, match=r"unknown embedding 'bert'.*minilm, hashing"):
        get_embedding_function("bert")
    # One shared instance per process: the ONNX session loads once.
    assert get_embedding_function("minilm") is get_embedding_function("minilm")


def test_tokenizer_asset_and_license_note_are_shipped() -> None:
    assert TOKENIZER_PATH.is_file()
    note = (TOKENIZER_PATH.parent / "LICENSE-NOTE.md").read_text()
    assert "sentence-transformers/all-MiniLM-L6-v2" in note and "Apache" in note


def test_minilm_embeds_meaning() -> None:
    vectors = embed(
        [
            "average of a list of numbers",
            "Computes the arithmetic mean of numbers.",
            "Downloads a web page over HTTP.",
        ],
        "minilm",
    )
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > 0.5 > vectors[0] @ vectors[2]


def test_minilm_batch_padding_does_not_change_vectors() -> None:
    fn = get_embedding_function("minilm")
    short = "compute mean"
    alone = fn.embed([short])[0]
    with_long = fn.embed([short, "a much longer text " * 40])[0]
    assert float(alone @ with_long) > 0.9999
    truncated = fn.embed(["word " * 2000])  # longer than 256 tokens: truncated, no error
    assert truncated.shape == (1, 384)


def test_chroma_calls_the_function_and_validates_output() -> None:
    out = HashingEmbedding()(["a b c", "d e f"])
    assert len(out) == 2 and out[0].shape == (384,)


def test_embedding_function_round_trips_through_chromas_registry(tmp_path: Path) -> None:
    """A collection made with our function reopens in a new process by name alone."""
    import chromadb

    client = chromadb.PersistentClient(path=str(tmp_path))
    collection = client.create_collection("roundtrip", embedding_function=HashingEmbedding(dim=384))
    collection.add(ids=["a", "b"], documents=["parse csv rows", "send an email"])
    client.close()
    code = textwrap.dedent(
        f"""
        import chromadb
        import insitu.tool_store.embeddings  # registers the functions with Chroma
        client = chromadb.PersistentClient(path={str(tmp_path)!r})
        collection = client.get_collection("roundtrip")  # no embedding function given
        print(type(collection.configuration["embedding_function"]).__name__)
        print(collection.query(query_texts=["csv parsing"], n_results=1)["ids"][0][0])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["HashingEmbedding", "a"]
