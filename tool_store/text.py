"""Text normalisation shared by lexical retrieval and the hashing embedding.

Tool names are identifiers (``parse_csv_rows``, ``calculateNetIncome``,
``yahoo-finance::get_stock_price``) while queries are prose, so every token
stream here splits identifiers into their words first: "parse csv" must meet
``parse_csv_rows``. This module imports nothing heavy; the CLI loads it early.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

# An upper-case run followed by a capitalised word ("HTTPServer" -> "HTTP Server"),
# then a lower/digit followed by an upper ("netIncome" -> "net Income").
_ACRONYM_BOUNDARY = re.compile(r"([A-Z]+)([A-Z][a-z])")
_CAMEL_BOUNDARY = re.compile(r"([a-z0-9])([A-Z])")
_WORD = re.compile(r"[a-z0-9]+")

#: Very common English words that carry no retrieval signal. Kept short on
#: purpose: words such as "not", "all", "first" or "between" can matter for tools.
STOPWORDS = frozenset(
    # A word list reads better as text than as 70 quoted literals.
    """
    a an and are as at be been but by can could do does for from had has have how i if in
    into is it its me my of on or our please so some such than that the their them then
    there these this those to us was we were what when where which while who whom why will
    with would you your
    """.split()  # noqa: SIM905
)

# Light suffix stripping (a tiny subset of Porter's step 1): enough for
# "rows"/"row", "parsing"/"parse", "computed"/"compute" to meet, without a
# dependency. Ordered longest first; each entry is (suffix, replacement, min stem).
_SUFFIXES: tuple[tuple[str, str, int], ...] = (
    ("ational", "ate", 3),
    ("ization", "ize", 3),
    ("fulness", "ful", 3),
    ("iveness", "ive", 3),
    ("ations", "ate", 3),
    ("ation", "ate", 3),
    ("ments", "ment", 3),
    ("ings", "", 3),
    ("ing", "", 3),
    ("ies", "y", 2),
    ("ied", "y", 2),
    ("sses", "ss", 2),
    ("edly", "", 3),
    ("ed", "", 3),
    ("es", "e", 3),
    ("s", "", 3),
)


def split_identifier(text: str) -> str:
    """Split identifiers in ``text`` into space-separated words.

    Args:
        text: Any text, e.g. ``"parse_csv_rows"`` or ``"calculateNetIncome"``.

    Returns:
        The text with camelCase, snake_case, kebab-case and ``a::b`` boundaries
        turned into spaces (case preserved).
    """
    text = _ACRONYM_BOUNDARY.sub(r"\1 \2", text)
    text = _CAMEL_BOUNDARY.sub(r"\1 \2", text)
    return re.sub(r"[_\-:./\\]+", " ", text)


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """Strip one common English suffix from a lower-case word.

    Args:
        word: A lower-case token.

    Returns:
        The stem; words shorter than a suffix's minimum stem are unchanged.
    """
    if word.isdigit():
        return word
    for suffix, replacement, min_stem in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= min_stem:
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                return word
            word = word[: len(word) - len(suffix)] + replacement
            break
    # "parse" and "pars(ing)" should meet: drop a final e after stripping.
    if len(word) > 4 and word.endswith("e"):
        word = word[:-1]
    return word


def tokenize(text: str, *, stopwords: bool = True, stemming: bool = True) -> list[str]:
    """Split text into lower-case lexical tokens, identifiers split into words.

    Args:
        text: Document or query text.
        stopwords: Drop :data:`STOPWORDS`.
        stemming: Apply :func:`stem` to each token.

    Returns:
        Tokens in order of appearance (repeats kept, for term frequencies).
    """
    words = _WORD.findall(split_identifier(text).lower())
    if stopwords:
        words = [w for w in words if w not in STOPWORDS]
    if stemming:
        words = [stem(w) for w in words]
    return words


def name_words(name: str) -> str:
    """Render a tool name as lower-case words (``"parse_csv_rows"`` -> ``"parse csv rows"``).

    Args:
        name: A tool name or identifier.

    Returns:
        Its words joined by single spaces.
    """
    return " ".join(split_identifier(name).lower().split())


#: Bumped whenever :func:`tool_text` changes what it renders: a store whose
#: index was built from another version re-embeds and re-indexes its tools.
TOOL_TEXT_VERSION = 2


def tool_text(name: str, description: str, inputs: Sequence[tuple[str, str]] = ()) -> str:
    """The text a tool is retrieved by, for the store's index and the benchmark alike.

    One function for both so that the retrieval benchmark measures what the
    product indexes: the name's words, the description, then each input's
    name (as words) and description. Example or default values are never
    included (in public sets they repeat the query's own values).

    Args:
        name: The tool's name (any identifier style).
        description: What the tool does.
        inputs: ``(name, description)`` of each input parameter, in order; a
            description may be empty.

    Returns:
        One line, e.g. ``"parse csv rows: Parse CSV text. Inputs: text (the CSV)."``.
    """
    head = f"{name_words(name)}: {description}".strip()
    params = "; ".join(
        name_words(param) + (f" ({about.strip()})" if about.strip() else "")
        for param, about in inputs
    )
    return f"{head} Inputs: {params}." if params else head


def schema_inputs(input_schema: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """``(name, description)`` of each property of a JSON-schema object, in order.

    Args:
        input_schema: A tool's input schema (``{"properties": {...}}``), or None.

    Returns:
        One pair per property; a property without a string description gets ``""``.
    """
    properties = (input_schema or {}).get("properties") or {}
    if not isinstance(properties, Mapping):
        return []
    return [
        (str(key), value["description"])
        if isinstance(value, Mapping) and isinstance(value.get("description"), str)
        else (str(key), "")
        for key, value in properties.items()
    ]
