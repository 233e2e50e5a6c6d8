"""Inert distractor tools: a copy of a library padded to N tools, for ``insitu eval replay``.

Does a task solved once stay solvable as the library grows? To show it, the
replay runs against a *copy* of the run's library padded with tools that
compete for retrieval but do nothing: **inert distractors**. Each is a valid
tool record (verb_object name, description, typed inputs, a test) whose
``run`` raises ``RuntimeError("inert distractor ...")``, and whose own test
says so (``expect_error``): bound by mistake, it fails on its first call and
changes no file, network or state.

Their names, descriptions and input fields come from the public tool corpora
under ``../shared/data/tool_retrieval/`` (``tools.jsonl`` of each set: about
7,300 tools with non-empty descriptions). Past one copy of every corpus tool,
each further *round* adds every corpus tool again as a variant: the name gets
a suffix and the description a sentence (``..._batch``: "Processes many
requests in one call."), so every distractor has its own text, as a grown
library's near-duplicates would. The sequence is deterministic: distractor i
is the same tool in every build, which is what lets its vector be cached.

Building 100,000 of them is practical because of two caches (under
``cache_dir``, default ``$TMPDIR/insitu-replay-cache``):

* ``vectors/``: every distractor text's embedding, computed once in batches
  and reused by every later build, of any size and from any source library;
  the vectors go into the new library's vector cache
  (:meth:`~insitu.tool_store.ToolStore.seed_vector_cache`) so its commits
  embed nothing;
* ``libraries/<source digest>-n<N>/``: the padded library itself, keyed by the
  digest of the source library's tools (and of the corpus and this
  generator), so replaying again with the same N reopens it.

The source library is only ever opened read-only (to export it).
"""

from __future__ import annotations

import hashlib
import json
import keyword
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from insitu.tool_store.contract import ToolSpec, ToolTest

#: Bump when the generated tools change: it is part of every cache key.
GENERATOR_VERSION = 2
#: What an inert distractor raises when called.
INERT_MESSAGE = "inert distractor: padding added by insitu eval replay; it does nothing"
#: Note recorded on every distractor's version in the padded library.
DISTRACTOR_NOTE = "inert distractor (insitu eval replay --distractors)"
#: Longest description kept from a corpus tool (some are whole API manuals).
MAX_DESCRIPTION = 500
MAX_FIELDS = 5
MAX_NAME_WORDS = 6
#: Distractors per commit (one SQLite transaction and one index upsert each).
COMMIT_CHUNK = 2_000
#: Texts embedded between two saves of the vector cache (an interrupted build keeps them).
EMBED_CHUNK = 4_000
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "insitu-replay-cache"
#: The finished padded library's record; its presence marks the build complete.
PADDED_MARKER = "padded.json"

#: Rounds after the first: (name suffix, sentence added to the description).
VARIANTS: tuple[tuple[str, str], ...] = (
    ("batch", "Processes many requests in one call."),
    ("cached", "Serves repeated requests from a local cache."),
    ("async", "Runs asynchronously and returns a job handle to poll."),
    ("legacy", "Kept for compatibility with an older version of the API."),
    ("remote", "Calls a hosted service over HTTPS."),
    ("offline", "Works offline on the local machine."),
    ("audited", "Writes an audit log entry for every call."),
    ("strict", "Rejects incomplete or ambiguous input instead of guessing."),
    ("lite", "A lighter variant with fewer options."),
    ("extended", "An extended variant with more options and longer output."),
    ("streaming", "Streams partial results as they arrive."),
    ("retrying", "Retries failed requests with exponential backoff."),
    ("shared", "Shares its results with a team workspace."),
    ("mobile", "Tuned for mobile clients with small payloads."),
    ("scheduled", "Runs on a schedule and stores the latest result."),
    ("paged", "Returns results one page at a time."),
    ("verbose", "Explains each step of its result in plain text."),
    ("sandboxed", "Runs in an isolated environment with no side effects."),
    ("bulk", "Accepts a file of requests and writes a file of results."),
    ("secure", "Requires a signed request and encrypts its output."),
    ("regional", "Uses the data centre closest to the caller."),
    ("realtime", "Answers from live data rather than a daily snapshot."),
    ("archived", "Reads from the long-term archive instead of current data."),
    ("preview", "An experimental preview whose output may change."),
)


class DistractorError(ValueError):
    """The distractors cannot be built as asked (no corpus, a size too small)."""


@dataclass(frozen=True)
class CorpusTool:
    """One tool of a retrieval corpus, reduced to what a distractor needs.

    Attributes:
        corpus: The set it came from (``seal_tools``, ...).
        words: Its name as lower-case words (at least two).
        description: Its description, on one line.
        fields: Its input field names (Python identifiers).
    """

    corpus: str
    words: tuple[str, ...]
    description: str
    fields: tuple[str, ...]


# ------------------------------------------------------------------ the corpus


def _words(text: str) -> list[str]:
    """``"getStockPrice-v2"`` -> ``["get", "stock", "price", "v2"]``."""
    from insitu.tool_store.text import split_identifier

    return re.sub(r"[^a-z0-9]+", " ", split_identifier(text).lower()).split()


def _field_name(text: str) -> str | None:
    words = _words(text)
    if not words:
        return None
    name = "_".join(words)
    if name[0].isdigit() or keyword.iskeyword(name) or name in ("self", "input"):
        name = f"field_{name}"
    return name if name.isidentifier() else None


def _fields(raw: dict[str, Any] | None) -> tuple[str, ...]:
    """Input field names declared by a corpus record (``("query",)`` when none)."""
    raw = raw or {}
    names: list[str] = []
    declared = raw.get("parameters")
    if isinstance(declared, dict):
        declared = declared.get("properties", declared)
        names += [str(key) for key in declared]
    for key in ("required_parameters", "optional_parameters"):
        names += [
            str(p["name"]) for p in raw.get(key) or [] if isinstance(p, dict) and p.get("name")
        ]
    cleaned = [f for f in (_field_name(n) for n in names) if f]
    return tuple(dict.fromkeys(cleaned))[:MAX_FIELDS] or ("query",)


def _name_words(tool: dict[str, Any]) -> tuple[str, ...]:
    """A verb_object-ish name: the tool's own words, its provider's when it has only one."""
    words = _words(str(tool.get("name") or tool.get("tool_id") or ""))
    if len(words) < 2:
        provider = str(tool.get("tool_id") or "").split("::")[0]
        extra = _words(provider) if "::" in str(tool.get("tool_id") or "") else []
        words = (extra + words) if extra else ["use", *words]
    if words and words[0][0].isdigit():
        words = ["tool", *words]
    return tuple(words[:MAX_NAME_WORDS])


def read_corpus(data_dir: Path) -> list[CorpusTool]:
    """Every tool with a description in the corpus folder, interleaved across its sets.

    Sets are spread evenly through the order (tool i of a set of n sits at
    i / n), so any prefix of the distractor sequence samples every set.

    Args:
        data_dir: A ``tool_retrieval`` folder (sets holding ``tools.jsonl``).

    Raises:
        DistractorError: The folder holds no set with tools.
    """
    placed: list[tuple[float, str, int, CorpusTool]] = []
    sets = sorted(p for p in data_dir.iterdir() if (p / "tools.jsonl").is_file())
    for folder in sets:
        rows = [
            json.loads(line)
            for line in (folder / "tools.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        for i, row in enumerate(rows):
            description = " ".join(str(row.get("text") or "").split())[:MAX_DESCRIPTION]
            words = _name_words(row)
            if not description or len(words) < 2:
                continue
            tool = CorpusTool(folder.name, words, description, _fields(row.get("raw")))
            placed.append((i / len(rows), folder.name, i, tool))
    if not placed:
        raise DistractorError(f"{data_dir} holds no tools.jsonl with described tools")
    return [tool for *_, tool in sorted(placed, key=lambda p: p[:3])]


def corpus_digest(data_dir: Path) -> str:
    """SHA-256 of the corpus files (part of every cache key)."""
    digest = hashlib.sha256()
    for path in sorted(data_dir.glob("*/tools.jsonl")):
        digest.update(path.parent.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# ------------------------------------------------------------------ the tools


def inert_spec(name: str, description: str, fields: Sequence[str]) -> ToolSpec:
    """A valid tool that raises :data:`INERT_MESSAGE` whatever its input, and whose test says so.

    Args:
        name: A verb_object name.
        description: What the corpus tool it imitates does.
        fields: Its input field names (each a string).
    """
    from insitu.tool_store.testing import make_spec

    return make_spec(
        name,
        description,
        inputs=tuple(fields),
        body=f"raise RuntimeError({INERT_MESSAGE!r})",
        tests=[ToolTest(name="inert", input={f: "x" for f in fields}, expect_error=True)],
    )


def distractor_specs(
    count: int, corpus: Sequence[CorpusTool], taken: Iterable[str]
) -> list[ToolSpec]:
    """The first ``count`` distractors of the sequence, none named like a tool in ``taken``.

    Round 0 is every corpus tool once; round r adds every corpus tool again
    with the r-th of :data:`VARIANTS`. A name already used gets the set's name,
    then a number.

    Raises:
        DistractorError: ``count`` is beyond what the corpus and the variants give.
    """
    rounds = 1 + len(VARIANTS)
    if count > rounds * len(corpus):
        raise DistractorError(
            f"{count} distractors asked; this corpus gives at most {rounds * len(corpus)} "
            f"({len(corpus)} tools x {rounds} rounds)"
        )
    used = set(taken)
    specs: list[ToolSpec] = []
    for index in range(count):
        round_, tool = divmod(index, len(corpus))
        tool = corpus[tool]
        words, description = list(tool.words), tool.description
        if round_:
            suffix, sentence = VARIANTS[round_ - 1]
            words.append(suffix)
            description = f"{description.rstrip('.')}. {sentence}"
        name = "_".join(words)
        if name in used:
            name = f"{name}_{'_'.join(_words(tool.corpus))}"
        candidate, n = name, 2
        while candidate in used:
            candidate, n = f"{name}_{n}", n + 1
        used.add(candidate)
        specs.append(inert_spec(candidate, description, tool.fields))
    return specs


# ------------------------------------------------------------------ vectors


class VectorFile:
    """Embedding vectors of texts on disk (one ``.npy`` of vectors, one of keys), by model.

    A key is the first 16 bytes of the SHA-256 of the text, so a vector is
    found again whatever build asks for it.

    Args:
        directory: Where the files live.
        model: The embedding's name (``minilm``, ``hashing``).
    """

    def __init__(self, directory: Path, model: str) -> None:
        self.directory = directory
        self.model = model
        self._vectors_path = directory / f"{model}-vectors.npy"
        self._keys_path = directory / f"{model}-keys.npy"
        self._keys: list[bytes] = []
        self._rows: dict[bytes, int] = {}
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        if self._vectors_path.is_file() and self._keys_path.is_file():
            try:
                vectors = np.load(self._vectors_path)
                keys = [bytes(k) for k in np.load(self._keys_path)]
            except (OSError, ValueError):
                vectors, keys = self._vectors, []  # a damaged cache is rebuilt
            if len(keys) == len(vectors):
                self._vectors, self._keys = vectors, keys
                self._rows = {k: i for i, k in enumerate(keys)}

    @staticmethod
    def key(text: str) -> bytes:
        """The cache key of a text."""
        return hashlib.sha256(text.encode("utf-8")).digest()[:16]

    def __len__(self) -> int:
        return len(self._keys)

    def missing(self, texts: Sequence[str]) -> list[int]:
        """Indices of the texts without a cached vector."""
        return [i for i, text in enumerate(texts) if self.key(text) not in self._rows]

    def add(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Remember vectors and write the files (atomically)."""
        fresh = [(self.key(t), v) for t, v in zip(texts, vectors, strict=True)]
        fresh = [(k, v) for k, v in fresh if k not in self._rows]
        if not fresh:
            return
        block = np.stack([v for _, v in fresh]).astype(np.float32)
        self._vectors = block if not len(self._keys) else np.concatenate([self._vectors, block])
        for key, _ in fresh:
            self._rows[key] = len(self._keys)
            self._keys.append(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        for path, array in (
            (self._vectors_path, self._vectors),
            (self._keys_path, np.array(self._keys, dtype="S16")),
        ):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with tmp.open("wb") as handle:
                np.save(handle, array)
            os.replace(tmp, path)

    def get(self, texts: Sequence[str]) -> np.ndarray:
        """The cached vectors of texts that all have one, in order."""
        return self._vectors[[self._rows[self.key(t)] for t in texts]]


def embed_cached(
    texts: Sequence[str],
    model: str,
    cache: VectorFile,
    log: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, int, float]:
    """Vectors of ``texts`` with the store's embedding ``model``, embedding only the uncached.

    Returns:
        The vectors (one row per text), how many texts were embedded now, and
        the seconds that took.
    """
    from insitu.tool_store.embeddings import get_embedding_function

    missing = cache.missing(texts)
    started = time.perf_counter()
    if missing:
        function = get_embedding_function(model)
        for start in range(0, len(missing), EMBED_CHUNK):
            chunk = [texts[i] for i in missing[start : start + EMBED_CHUNK]]
            cache.add(chunk, function.embed(chunk))
            if log is not None:
                done = min(start + EMBED_CHUNK, len(missing))
                log(
                    f"embedded {done:,}/{len(missing):,} distractor texts ({model}, "
                    f"{time.perf_counter() - started:.0f} s)"
                )
    return cache.get(texts), len(missing), time.perf_counter() - started


# ------------------------------------------------------------------ the padded copy


@dataclass
class PaddedLibrary:
    """A padded copy of a library, as built or found in the cache.

    Attributes:
        path: The copy's store directory.
        size: Its active tools (the source's plus the distractors).
        source_tools: Active tools of the source library.
        distractors: Distractors added.
        embedding: The embedding of the source (and of the copy).
        source_digest: Digest of the source library's tools.
        cached: Found in the cache (nothing was built now).
        build_s: Seconds to build it (of the build that made it, when cached).
        copy_s: Of which generating the distractors and copying the source library.
        embed_s: Of which embedding distractor texts (0 when all were cached).
        embedded: Distractor texts embedded by that build.
        commit_s: Of which committing the distractors (records and index).
    """

    path: str
    size: int
    source_tools: int
    distractors: int
    embedding: str
    source_digest: str
    cached: bool = False
    build_s: float = 0.0
    copy_s: float = 0.0
    embed_s: float = 0.0
    embedded: int = 0
    commit_s: float = 0.0


def library_digest(store: Any) -> str:
    """SHA-256 of a library: its tools (name, version, content, status), what it learned
    (experiences), and its embedding."""
    digest = hashlib.sha256(store.embedding_name.encode())
    for record in store.list("all"):
        digest.update(f"\0{record.name}@{record.version}:{record.hash}:{record.status}".encode())
    for experience in store.experiences(limit=1_000_000):
        digest.update(f"\0experience:{experience.id}".encode())
    return digest.hexdigest()


def copy_records(source_dir: Path, store_dir: Path) -> None:
    """Copy a library's records (tools, versions, statistics, experiences, notes, cases).

    SQLite's online backup gives a consistent copy of ``tools.db`` even if the
    source is in use; the copy's index is rebuilt from these records when it is
    opened (the vectors come with them, so nothing is embedded again).
    """
    store_dir.mkdir(parents=True)
    source = sqlite3.connect(f"file:{source_dir / 'tools.db'}?mode=ro", uri=True)
    target = sqlite3.connect(store_dir / "tools.db")
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def padded_library(
    source_dir: Path,
    size: int,
    *,
    data_dir: Path,
    cache_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> PaddedLibrary:
    """A copy of the library in ``source_dir`` padded with inert distractors to ``size`` tools.

    The source is opened read-only. The copy is built in a temporary folder of
    the cache and renamed into place once complete, so a build that is
    interrupted leaves nothing that a later one would mistake for a library.

    Args:
        source_dir: The library to copy (never written).
        size: Active tools the copy must hold.
        data_dir: The ``tool_retrieval`` corpus.
        cache_dir: Where vectors and padded libraries are kept.
        log: Progress lines.

    Raises:
        DistractorError: ``size`` is not above the source's size, or beyond the corpus.
        StoreError: The source is not a library.
    """
    from insitu.tool_store import ToolStore
    from insitu.tool_store.changes import ChangeSet, ToolAdd

    cache_dir = Path(cache_dir or DEFAULT_CACHE)
    say = log or (lambda _message: None)
    with ToolStore.open(source_dir, read_only=True) as source:
        embedding = source.embedding_name
        source_tools = source.count()
        taken = {record.name for record in source.list("all")}
        digest = hashlib.sha256(
            f"{library_digest(source)}:{corpus_digest(data_dir)}:v{GENERATOR_VERSION}".encode()
        ).hexdigest()
        if size <= source_tools:
            raise DistractorError(
                f"--distractors {size} pads the library to {size} tools, but it already holds "
                f"{source_tools}; give a larger N"
            )
        target = cache_dir / "libraries" / f"{digest[:16]}-n{size}"
        if (target / PADDED_MARKER).is_file():
            found = PaddedLibrary(**json.loads((target / PADDED_MARKER).read_text()))
            found.path, found.cached = str(target / "store"), True
            say(f"padded library of {size:,} tools found in the cache: {target}")
            return found
        started = time.perf_counter()
        corpus = read_corpus(data_dir)
        specs = distractor_specs(size - source_tools, corpus, taken)
        building = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=_made(target.parent)))
    try:
        store_dir = building / "store"
        copy_records(Path(source_dir), store_dir)
        with ToolStore.open(store_dir, embedding=embedding) as copy:
            copy_s = time.perf_counter() - started
            say(f"copied the library ({source_tools} tools); {len(specs):,} distractors to add")
            texts = [spec.embedding_text() for spec in specs]
            vectors, embedded, embed_s = embed_cached(
                texts, embedding, VectorFile(cache_dir / "vectors", embedding), say
            )
            committing = time.perf_counter()
            for start in range(0, len(specs), COMMIT_CHUNK):
                chunk = specs[start : start + COMMIT_CHUNK]
                copy.seed_vector_cache(zip(chunk, vectors[start : start + len(chunk)], strict=True))
                copy.commit(
                    ChangeSet(
                        changes=[
                            ToolAdd(spec=s, origin="imported", note=DISTRACTOR_NOTE) for s in chunk
                        ]
                    ),
                    commit_id=f"distractors:{start}:{len(chunk)}",
                )
                say(f"committed {start + len(chunk):,}/{len(specs):,} distractors")
            commit_s = time.perf_counter() - committing
            padded = PaddedLibrary(
                path=str(target / "store"),
                size=copy.count(),
                source_tools=source_tools,
                distractors=len(specs),
                embedding=embedding,
                source_digest=digest,
                build_s=round(time.perf_counter() - started, 2),
                copy_s=round(copy_s, 2),
                embed_s=round(embed_s, 2),
                embedded=embedded,
                commit_s=round(commit_s, 2),
            )
        (building / PADDED_MARKER).write_text(json.dumps(asdict(padded), indent=1))
        try:
            os.rename(building, target)
        except OSError:  # another process finished the same build first: use it
            if not (target / PADDED_MARKER).is_file():
                raise
            shutil.rmtree(building, ignore_errors=True)
            padded.path = str(target / "store")
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    say(f"padded library of {padded.size:,} tools built in {padded.build_s:.1f} s: {target}")
    return padded


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
