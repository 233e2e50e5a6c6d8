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

import inspect
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

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


#: ``response_metadata`` key of a reply that the client could not decode (see
#: :func:`insitu.llm.call_model`); its value says why.
UNREADABLE_KEY = "insitu_unreadable"


def unreadable_reason(message: BaseMessage) -> str | None:
    """Why a reply could not be decoded by the client, or ``None`` for a readable one."""
    meta = getattr(message, "response_metadata", None) or {}
    reason = meta.get(UNREADABLE_KEY)
    return f"the reply could not be read ({str(reason)[:300]})" if reason else None


def is_truncated(message: BaseMessage) -> bool:
    """Whether a reply was cut off at the output-token limit (any provider's spelling)."""
    meta = getattr(message, "response_metadata", None) or {}
    reasons = (meta.get("finish_reason"), meta.get("stop_reason"), meta.get("done_reason"))
    return any(r in ("length", "max_tokens", "MAX_TOKENS") for r in reasons)


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
            except RecursionError:
                last_error = "the JSON in the reply is nested too deeply; reply with a flat object"
                break
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
    except RecursionError:
        raise StructuredOutputError(
            "the JSON is nested too deeply; reply with a flat object"
        ) from None
    except ValidationError as exc:
        raise StructuredOutputError(
            f"the JSON does not match the expected fields:\n{format_validation_error(exc)}"
        ) from None


@dataclass
class Asked:
    """The outcome of :func:`ask_structured`: the value, the last reply and its attempt."""

    value: Any
    reply: BaseMessage
    attempts: int


async def ask_structured(
    call: Callable[[list[BaseMessage]], Awaitable[BaseMessage]],
    messages: Sequence[BaseMessage],
    parse: Callable[[str], Any | Awaitable[Any]],
    *,
    max_attempts: int = 3,
    on_retry: Callable[[int, str], None] | None = None,
) -> Asked:
    """Ask a model and re-ask with the parse error until the reply parses.

    Args:
        call: ``messages -> awaitable reply``: a chat model's ``ainvoke``, or a
            bounded caller such as :func:`insitu.nodes.common.model_caller` (which
            also counts tokens).
        messages: The prompt.
        parse: Turns the reply text into the value, raising
            ``StructuredOutputError`` (or ``ValueError``) with a reason the model
            can act on. Extra checks (e.g. unknown tool names) belong here; a
            check that reads the store returns an awaitable (it runs off the loop).
        max_attempts: Total number of model calls allowed.
        on_retry: Called with (attempt, reason) before each re-ask.

    Returns:
        The parsed value and bookkeeping.

    Raises:
        StructuredOutputError: After ``max_attempts`` unusable replies, with the
            last reason.
    """
    conversation = list(messages)
    reason = "no attempt was made"
    for attempt in range(1, max_attempts + 1):
        reply = await call(conversation)
        text = clean_reply_text(message_text(reply))
        try:
            value = parse(text)
            if inspect.isawaitable(value):
                value = await value
            return Asked(value, reply, attempt)
        except (StructuredOutputError, ValueError, TypeError, RecursionError) as exc:
            reason = " ".join(str(exc).split())[:2000] or type(exc).__name__
            if isinstance(exc, RecursionError):
                reason = "the reply is nested too deeply to read; reply with a flat JSON object"
        if is_truncated(reply):
            reason = (
                "the reply was cut off at the output-token limit before it was complete; "
                "reply again, much shorter"
            )
        reason = unreadable_reason(reply) or reason
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


# --------------------------------------------------------------------- judging final replies

#: Chat-template control tokens that weak models or misconfigured servers leak into replies.
_TEMPLATE_TOKENS = re.compile(
    r"<\|(?:im_start|im_end|im_sep|eot_id|end_of_text|begin_of_text|start_header_id|"
    r"end_header_id|endoftext|eom_id|assistant|user|system|end)\|>"
    r"|</?(?:start_of_turn|end_of_turn|s|bos|eos)>|\[/?INST\]"
)
#: After a template token, the role name it introduces (``<|im_start|>user``).
_ROLE_AFTER_TOKEN = re.compile(
    r"(<\|im_start\|>|<start_of_turn>|<\|start_header_id\|>)\s*(?:user|assistant|system|model)\b"
)
#: Words that are no answer at all.
_NON_ANSWERS = frozenset(
    [
        "none",
        "null",
        "nil",
        "undefined",
        "n/a",
        "na",
        "nan",
        "unknown",
        "user",
        "assistant",
        "system",
        "model",
        "answer",
        "result",
        "done",
        "todo",
        "tbd",
    ]
)
#: Openings of a reply that gives up rather than answers.
_GIVE_UP = re.compile(
    r"^\W*(?:i(?:'|’)m\s+(?:sorry|afraid|unable)|i\s+(?:could\s*n[o']t|can\s*n[o']t|cannot|was\s+(?:not\s+)?unable|am\s+(?:not\s+)?"
    r"unable|am\s+sorry|apologi[sz]e|do\s*n[o']t\s+know|don't\s+know|have\s+no|did\s*n[o']t"
    r"\s+find|failed)|sorry\b|unfortunately\b|unable\s+to\b|(?:it\s+is\s+)?not\s+possible"
    r"|there\s+is\s+no\s+way|as\s+an\s+ai\b|no\s+(?:answer|result|solution)\b"
    r"|could\s*n[o']t|cannot\b|(?:this|the)\s+task\s+is\s+(?:impossible|not\s+possible)"
    r"|.*\bi\s+give\s+up\b)",
    re.IGNORECASE,
)


#: Hidden reasoning (``<think>…</think>``) and leaked system blocks, removed whole.
_HIDDEN_BLOCKS = re.compile(
    r"<think>.*?(?:</think>|\Z)|<<SYS>>.*?(?:<</SYS>>|\Z)", re.DOTALL | re.IGNORECASE
)
#: Terminal escape sequences and invisible direction or format controls.
_CONTROLS = re.compile(
    r"\x1b\[[0-9;]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
)
#: Keys of insitu's own reply formats (a plan, an action, a verdict): never an answer.
_PROTOCOL_KEYS = re.compile(
    r'["\']\s*(?:bind|requests|duplicates|tool_calls|arguments)\s*["\']\s*:'
)


def clean_reply_text(text: str) -> str:
    """Strip hidden reasoning, chat-template tokens, control characters and outer space."""
    text = _HIDDEN_BLOCKS.sub(" ", text)
    text = _ROLE_AFTER_TOKEN.sub(" ", text)
    text = _TEMPLATE_TOKENS.sub(" ", text)
    return _CONTROLS.sub("", text).strip()


def _structure_reason(text: str) -> str | None:
    """Why a reply that opens with ``{`` or ``[`` is not an answer (``None``: a plain list)."""
    end = _balanced_span(text, 0)
    if end is None:
        return "the reply is a fragment of JSON or code, not an answer"
    try:
        value = _loads(text[:end])
    except (json.JSONDecodeError, ValueError, SyntaxError, RecursionError):
        return "the reply is a fragment of JSON or code, not an answer"
    if isinstance(value, list) and all(not isinstance(v, list | dict) for v in value):
        return None if value else "the reply is an empty list"
    return "the reply is a JSON structure, not an answer in words"


def unusable_answer_reason(text: str) -> str | None:
    """Why a final reply is not an answer (empty, junk, a give-up), or ``None`` if it may be one.

    Args:
        text: The reply, already passed through :func:`clean_reply_text`.
    """
    if not text:
        return "the reply was empty"
    if not any(ch.isalnum() for ch in text):
        return f"the reply {text[:40]!r} holds no answer"
    outside_code = _FENCE.sub(" ", text).strip()
    if not any(ch.isalnum() for ch in outside_code):
        return "the reply holds only code, no answer in words"
    if outside_code != text and len(outside_code.split()) < 6:
        return "the reply is code with a caption, not an answer"
    if _PROTOCOL_KEYS.search(text):
        return "the reply is a plan or a tool call written as JSON, not an answer"
    if outside_code[0] in "{[":
        structure = _structure_reason(outside_code)
        if structure:
            return structure
    if text.strip(" .!\"'`").lower() in _NON_ANSWERS:
        return f"the reply {text[:40]!r} is not an answer"
    if _GIVE_UP.match(text):
        return f"the reply gives up: {' '.join(text.split())[:160]!r}"
    return None
