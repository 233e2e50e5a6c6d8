"""Structured replies from chat models that do not always behave.

Every role asks its model for JSON (or a code block) in plain text and parses
the reply itself, rather than relying on provider-specific structured-output
modes, so that any OpenAI-compatible endpoint works, small local models
included. Replies in code fences, wrapped in prose, with Python literals,
trailing commas, missing or mistyped fields, empty or truncated, are either
recovered or turned into a precise error that is shown to the model in a
bounded number of re-asks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from pydantic import BaseModel, ValidationError

from insitu import pyast

ModelT = TypeVar("ModelT", bound=BaseModel)

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


class StructuredOutputError(ValueError):
    """A reply could not be turned into the expected structure."""


@dataclass
class TokenUsage:
    """Token counts summed over model responses (from ``usage_metadata``)."""

    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def add_response(self, message: BaseMessage) -> None:
        """Add the usage reported on one model response (missing usage counts as 0)."""
        usage = getattr(message, "usage_metadata", None) or {}
        self.input_tokens += int(usage.get("input_tokens", 0) or 0)
        self.output_tokens += int(usage.get("output_tokens", 0) or 0)
        self.calls += 1

    def add(self, other: TokenUsage) -> None:
        """Add another accumulator's counts to this one."""
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.calls += other.calls

    def as_dict(self) -> dict[str, int]:
        """Return the counts as a plain dict (for state and reports)."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "calls": self.calls,
        }


def message_text(message: BaseMessage | str) -> str:
    """Return the text of a message whose content may be a list of parts."""
    content = message if isinstance(message, str) else message.content
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
    return "".join(parts)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """Return the fenced code blocks of a reply as (language, body) pairs.

    An unterminated last fence (a truncated reply) is returned too, so that the
    caller can report truncation precisely.
    """
    return [(lang.lower(), body) for lang, body in _FENCE.findall(text)]


def _balanced_span(text: str, start: int) -> int | None:
    """Return the end index of the JSON value opening at ``start``, or None."""
    stack: list[str] = []
    in_string = False
    escaped = False
    quote = ""
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                in_string = False
            continue
        if ch in "\"'":
            in_string, quote = True, ch
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return i + 1
    return None


def _loads(candidate: str) -> Any:
    try:
        return json.loads(candidate)
    except json.JSONDecodeError as first:
        repaired = _TRAILING_COMMA.sub(r"\1", candidate)
        try:
            return json.loads(repaired)
        except json.JSONDecodeError:
            pass
        try:  # Python literals: single quotes, True/False/None.
            return pyast.literal_eval(repaired)
        except (ValueError, SyntaxError):
            raise first from None


def extract_json(text: str) -> Any:
    """Find and parse the JSON value in a model reply.

    Looks in ```json fences first, then for the first balanced object or array
    anywhere in the text.

    Args:
        text: The raw reply.

    Returns:
        The parsed value.

    Raises:
        StructuredOutputError: Empty reply, no JSON found, truncated JSON, or
            JSON that does not parse (with the parser's position).
    """
    if not text or not text.strip():
        raise StructuredOutputError("the reply was empty; reply with one JSON object.")
    candidates = [body for lang, body in code_blocks(text) if lang in ("json", "", "javascript")]
    candidates.append(text)
    last_error = "no JSON object was found in the reply"
    for candidate in candidates:
        for match in re.finditer(r"[{\[]", candidate):
            end = _balanced_span(candidate, match.start())
            if end is None:
                last_error = (
                    "the JSON in the reply is incomplete (unbalanced braces: the reply looks "
                    "truncated); reply with a shorter, complete JSON object"
                )
                break
            try:
                return _loads(candidate[match.start() : end])
            except (json.JSONDecodeError, ValueError) as exc:
                last_error = f"the JSON in the reply does not parse: {exc}"
                break
    raise StructuredOutputError(last_error + ".")


def format_validation_error(error: ValidationError) -> str:
    """Render a Pydantic validation error as short, model-readable lines."""
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ())) or "(root)"
        lines.append(f"- {where}: {item.get('msg')}")
    return "\n".join(lines)


def parse_reply(text: str, schema: type[ModelT]) -> ModelT:
    """Parse a reply into ``schema``.

    Args:
        text: The raw reply.
        schema: The Pydantic model expected.

    Returns:
        The validated model.

    Raises:
        StructuredOutputError: With the reason, phrased for the model.
    """
    data = extract_json(text)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise StructuredOutputError(
            f"the JSON does not match the expected fields:\n{format_validation_error(exc)}"
        ) from None


@dataclass
class Asked:
    """The outcome of :func:`ask_structured`: the value, the last reply and usage."""

    value: Any
    reply: AIMessage
    attempts: int
    usage: TokenUsage = field(default_factory=TokenUsage)


def ask_structured(
    model: BaseChatModel,
    messages: Sequence[BaseMessage],
    parse: Callable[[str], Any],
    *,
    max_attempts: int = 3,
    usage: TokenUsage | None = None,
    on_retry: Callable[[int, str], None] | None = None,
) -> Asked:
    """Ask a model and re-ask with the parse error until the reply parses.

    Args:
        model: Any LangChain chat model.
        messages: The prompt.
        parse: Turns the reply text into the value, raising
            ``StructuredOutputError`` (or ``ValueError``) with a reason the model
            can act on. Extra checks (e.g. unknown tool names) belong here.
        max_attempts: Total number of model calls allowed.
        usage: Accumulator for token usage across attempts.
        on_retry: Called with (attempt, reason) before each re-ask.

    Returns:
        The parsed value and bookkeeping.

    Raises:
        StructuredOutputError: After ``max_attempts`` unusable replies, with the
            last reason.
    """
    usage = usage if usage is not None else TokenUsage()
    conversation = list(messages)
    reason = "no attempt was made"
    for attempt in range(1, max_attempts + 1):
        reply = model.invoke(conversation)
        usage.add_response(reply)
        text = message_text(reply)
        try:
            return Asked(parse(text), reply, attempt, usage)
        except (StructuredOutputError, ValueError) as exc:
            reason = str(exc)
        if attempt < max_attempts:
            if on_retry:
                on_retry(attempt, reason)
            conversation += [
                AIMessage(content=text or "(empty reply)"),
                HumanMessage(
                    content=f"Your reply could not be used: {reason}\n"
                    "Reply again, following the required format exactly."
                ),
            ]
    raise StructuredOutputError(
        f"no usable reply after {max_attempts} attempts; last problem: {reason}"
    )
