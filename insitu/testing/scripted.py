"""A scripted chat model: a test double for the LLM roles.

:class:`ScriptedChatModel` is a LangChain chat model whose replies come from a
script written by a test (a list of replies used in order, or a function that
looks at the prompt and picks a reply). It is not intelligence and never
pretends to be: it exists so that everything around the model (graphs, tools,
sandbox, stores, token accounting, streaming) can be exercised without an LLM
endpoint.

This module also holds the reply forms shared with
:class:`insitu.testing.openai_server.ScriptedOpenAIServer` and the single
function that normalises them, :func:`normalize_reply`. A reply may be:

- a ``str``: the reply's text;
- a ``dict`` ``{"content": str | None, "tool_calls": [...]}`` (see :func:`reply`),
  each tool call ``{"name", "args": dict}`` or ``{"name", "arguments": dict | str}``
  (a JSON string; if it is not valid JSON the call comes out as an invalid tool
  call), optionally with an ``"id"``; the OpenAI wire form
  ``{"id", "type": "function", "function": {"name", "arguments"}}`` is accepted too;
- an :class:`~langchain_core.messages.AIMessage`;
- :class:`Truncated` (cut off at the token limit, finish reason ``"length"``) or
  :class:`Empty` (an empty reply);
- :class:`Slow` ``(seconds, reply)``: ``reply``, after a wait (the scripted model
  sleeps; the scripted server waits, giving up early when the client has gone);
- an exception instance, which is raised instead of replying (an
  :class:`HTTPError` becomes that HTTP status on the scripted server, and
  :class:`Drop` makes it close the connection without any response).

A dict reply may also set ``"finish_reason"`` (e.g. ``"length"`` for tool calls
cut off mid-arguments).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.caches import BaseCache
from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
)
from langchain_core.messages.tool import (
    invalid_tool_call,
    tool_call,
    tool_call_chunk,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, PrivateAttr

__all__ = [
    "Drop",
    "Empty",
    "HTTPError",
    "NormalizedReply",
    "Script",
    "ScriptExhaustedError",
    "ScriptedChatModel",
    "ScriptedToolCall",
    "Slow",
    "Truncated",
    "estimate_tokens",
    "normalize_reply",
    "reply",
    "split_delay",
]

# --------------------------------------------------------------------------- reply forms


class ScriptExhaustedError(RuntimeError):
    """A scripted model or server was called more times than it has replies."""


class HTTPError(Exception):
    """A scripted endpoint failure.

    Returned (or raised) by a responder of the scripted server, it becomes an
    HTTP error response with an OpenAI-style error body. From a
    :class:`ScriptedChatModel` it is simply raised.

    Attributes:
        status: The HTTP status code, e.g. 429 or 500.
        message: The error message.
        type: The OpenAI error ``type``; derived from the status if not given.
        code: The OpenAI error ``code``; derived from the status if not given.
        headers: Extra response headers, e.g. ``{"retry-after": "0"}``.
    """

    def __init__(
        self,
        status: int,
        message: str = "scripted error",
        *,
        type: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.headers = dict(headers or {})

    @classmethod
    def rate_limited(
        cls, retry_after_s: float = 1, message: str = "Rate limit reached; try again later."
    ) -> HTTPError:
        """An HTTP 429 with a ``Retry-After`` header, as OpenAI sends when rate limited.

        Args:
            retry_after_s: The seconds given in ``Retry-After``.
            message: The error message.

        Returns:
            The error reply.
        """
        return cls(429, message, headers={"Retry-After": f"{retry_after_s:g}"})

    @classmethod
    def model_not_found(cls, model: str) -> HTTPError:
        """An HTTP 404 for an unknown model, with OpenAI's body (code ``model_not_found``).

        Args:
            model: The model id the client asked for.

        Returns:
            The error reply.
        """
        return cls(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            type="invalid_request_error",
            code="model_not_found",
        )


class Drop(ConnectionError):
    """A dropped connection: the scripted server closes the socket without any response.

    It is an exception, so a responder may return or raise it; the client sees a
    connection error (``openai.APIConnectionError`` through ``ChatOpenAI``). A
    :class:`ScriptedChatModel` raises it as it is (a ``ConnectionError``).
    """

    def __init__(self, message: str = "scripted dropped connection") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class Truncated:
    """A reply cut off at the output-token limit (finish reason ``"length"``).

    Attributes:
        content: The partial text that was produced.
    """

    content: str = ""


@dataclass(frozen=True)
class Empty:
    """An empty reply: no text and no tool calls (finish reason ``"stop"``)."""


@dataclass(frozen=True)
class Slow:
    """A reply that comes only after a wait, e.g. longer than the client's timeout.

    The scripted model sleeps for ``seconds`` and then replies. The scripted
    server waits at most ``seconds``, giving up as soon as the client has closed
    the connection or the server is stopped (so an abandoned request never holds
    a thread for longer than that).

    Attributes:
        seconds: How long to wait (>= 0).
        reply: The reply (any reply form, including an exception) after the wait.
    """

    seconds: float
    reply: Any = Empty()

    def __post_init__(self) -> None:
        if not self.seconds >= 0:
            raise ValueError(f"Slow seconds must be >= 0, got {self.seconds!r}")


def split_delay(value: Any) -> tuple[float, Any]:
    """Separate a reply's wait from the reply itself.

    Args:
        value: Any reply form; :class:`Slow` wrappers (even nested) are unwrapped.

    Returns:
        ``(seconds to wait, the reply to give after it)``; ``(0.0, value)`` for
        anything that is not :class:`Slow`.
    """
    seconds = 0.0
    while isinstance(value, Slow):
        seconds += value.seconds
        value = value.reply
    return seconds, value


@dataclass(frozen=True)
class ScriptedToolCall:
    """One tool call of a normalised reply.

    Attributes:
        name: The tool's name.
        arguments: The arguments as the JSON string sent on the wire.
        args: The parsed arguments, or ``None`` if ``arguments`` is not a JSON object.
        id: The tool call id (generated if the script gave none).
    """

    name: str
    arguments: str
    args: dict[str, Any] | None
    id: str


@dataclass(frozen=True)
class NormalizedReply:
    """A reply in the one form both test doubles build their responses from.

    Attributes:
        content: The text (or, for an ``AIMessage`` given as a reply, its content
            list, kept as is).
        tool_calls: The tool calls, in order.
        finish_reason: ``"stop"``, ``"tool_calls"`` or ``"length"``.
    """

    content: str | list[Any]
    tool_calls: list[ScriptedToolCall] = field(default_factory=list)
    finish_reason: str = "stop"

    @property
    def text(self) -> str:
        """The content as plain text (text parts joined for list content)."""
        return content_text(self.content)


def reply(
    content: str | None = None, tool_calls: Sequence[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Build a reply dict for a scripted model or server.

    Args:
        content: The reply text.
        tool_calls: Tool calls, each ``{"name": ..., "args": {...}}`` (or
            ``"arguments"``: a dict or a JSON string), optionally with ``"id"``.

    Returns:
        ``{"content": content or "", "tool_calls": [...]}``.
    """
    return {"content": content or "", "tool_calls": [dict(tc) for tc in tool_calls or ()]}


def new_tool_call_id() -> str:
    """Return a fresh OpenAI-looking tool call id (``call_...``)."""
    return f"call_{uuid.uuid4().hex[:24]}"


def content_text(content: Any) -> str:
    """Return message content as plain text.

    Args:
        content: A string, or a list of content parts (strings or dicts with a
            ``"text"`` key); anything else is JSON-encoded.

    Returns:
        The text.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                parts.append(json.dumps(part, default=str))
        return "".join(parts)
    return json.dumps(content, default=str)


def estimate_tokens(text: str) -> int:
    """Estimate a token count the way the test doubles do: about 4 characters a token.

    Args:
        text: Any text.

    Returns:
        ``ceil(len(text) / 4)``.
    """
    return (len(text) + 3) // 4


def _normalize_tool_call(raw: Any, position: int) -> ScriptedToolCall:
    if not isinstance(raw, dict):
        raise TypeError(f"tool call #{position} must be a dict, got {type(raw).__name__}")
    if isinstance(raw.get("function"), dict):  # OpenAI wire form
        raw = {**raw["function"], "id": raw.get("id")}
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise TypeError(f"tool call #{position} needs a non-empty 'name': {raw!r}")
    if "args" in raw and "arguments" in raw:
        raise TypeError(f"tool call #{position} has both 'args' and 'arguments'")
    value = raw.get("args", raw.get("arguments", {}))
    if value is None:
        value = {}
    if isinstance(value, dict):
        arguments, args = json.dumps(value), dict(value)
    elif isinstance(value, str):
        arguments = value
        try:
            parsed = json.loads(value) if value.strip() else {}
        except (json.JSONDecodeError, RecursionError):
            # Nesting deeper than the decoder's recursion limit is as unusable as bad JSON.
            parsed = None
        args = parsed if isinstance(parsed, dict) else None
    else:
        raise TypeError(
            f"tool call #{position} arguments must be a dict or a JSON string, "
            f"got {type(value).__name__}"
        )
    return ScriptedToolCall(
        name=name, arguments=arguments, args=args, id=raw.get("id") or new_tool_call_id()
    )


_REPLY_KEYS = {"content", "tool_calls", "finish_reason"}


def normalize_reply(value: Any) -> NormalizedReply:
    """Turn any accepted reply form into a :class:`NormalizedReply`.

    This is the one place reply forms are interpreted; the scripted model and
    the scripted OpenAI server both use it.

    Args:
        value: A ``str``, reply ``dict``, ``AIMessage``, :class:`Truncated`,
            :class:`Empty`, :class:`Slow` (its reply is normalised; waiting is
            the caller's business, see :func:`split_delay`), or an exception
            instance.

    Returns:
        The normalised reply. Tool calls without an id get a generated one.

    Raises:
        BaseException: ``value`` itself, if it is an exception instance.
        TypeError: If ``value`` is not an accepted form (e.g. ``None``).
    """
    _, value = split_delay(value)
    if isinstance(value, BaseException):
        raise value
    if isinstance(value, str):
        return NormalizedReply(content=value)
    if isinstance(value, Empty):
        return NormalizedReply(content="")
    if isinstance(value, Truncated):
        return NormalizedReply(content=value.content, finish_reason="length")
    if isinstance(value, AIMessage):
        calls = [
            {"name": tc["name"], "args": tc["args"], "id": tc.get("id")} for tc in value.tool_calls
        ]
        calls += [
            {"name": tc.get("name") or "", "arguments": tc.get("args") or "", "id": tc.get("id")}
            for tc in value.invalid_tool_calls
        ]
        value = {"content": value.content, "tool_calls": calls}
    if isinstance(value, dict):
        unknown = set(value) - _REPLY_KEYS
        if unknown:
            raise TypeError(
                f"unknown reply keys {sorted(unknown)}; expected some of {sorted(_REPLY_KEYS)}"
            )
        content = value.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str | list):
            raise TypeError(f"reply content must be a str, got {type(content).__name__}")
        raw_calls = value.get("tool_calls") or []
        if not isinstance(raw_calls, list | tuple):
            raise TypeError("reply tool_calls must be a list")
        calls = [_normalize_tool_call(raw, i) for i, raw in enumerate(raw_calls)]
        finish = value.get("finish_reason") or ("tool_calls" if calls else "stop")
        return NormalizedReply(content=content, tool_calls=calls, finish_reason=finish)
    raise TypeError(
        f"a scripted reply must be a str, dict, AIMessage, Truncated, Empty, Slow or an "
        f"exception instance, got {type(value).__name__}: {value!r}"
    )


class Script:
    """A thread-safe source of replies: a list used in order, or a responder function.

    Args:
        source: A list/tuple of replies, or a callable producing one reply per call.
        owner: How to name the owner in errors, e.g. ``"ScriptedChatModel 'manager'"``.
    """

    def __init__(self, source: Sequence[Any] | Callable[..., Any], owner: str) -> None:
        self.owner = owner
        self._lock = threading.Lock()
        self._used = 0
        if callable(source):
            self._responder: Callable[..., Any] | None = source
            self._replies: list[Any] | None = None
        elif isinstance(source, list | tuple):
            self._responder = None
            self._replies = list(source)
        else:
            raise TypeError(
                f"{owner}: a script must be a list of replies or a responder callable, "
                f"got {type(source).__name__}"
            )

    @property
    def used(self) -> int:
        """How many replies have been asked for so far."""
        return self._used

    @property
    def remaining(self) -> int | None:
        """Replies left in a list script; ``None`` for a responder."""
        if self._replies is None:
            return None
        with self._lock:
            return len(self._replies) - min(self._used, len(self._replies))

    def next(self, *args: Any) -> Any:
        """Return the next raw reply (calling the responder with ``args`` if there is one).

        Raises:
            ScriptExhaustedError: If a list script has no replies left.
        """
        with self._lock:
            self._used += 1
            number = self._used
            if self._replies is not None:
                if number > len(self._replies):
                    raise ScriptExhaustedError(
                        f"{self.owner} ran out of scripted replies: call #{number}, but all "
                        f"{len(self._replies)} replies were consumed by earlier calls"
                        f"{_describe_args(args)}"
                    )
                return self._replies[number - 1]
        assert self._responder is not None
        return self._responder(*args)


def _describe_args(args: tuple[Any, ...]) -> str:
    if not args:
        return ""
    first = args[0]
    if isinstance(first, list) and first and isinstance(first[-1], BaseMessage):
        last = first[-1]
        return f"; the last message was {last.type}: {content_text(last.content)[:200]!r}"
    if isinstance(first, dict) and isinstance(first.get("messages"), list) and first["messages"]:
        last = first["messages"][-1]
        if isinstance(last, dict):
            text = content_text(last.get("content"))[:200]
            return f"; the last message was {last.get('role')}: {text!r}"
    return ""


# --------------------------------------------------------------------------- chat model


def _message_text(message: BaseMessage) -> str:
    text = content_text(message.content)
    if isinstance(message, AIMessage) and message.tool_calls:
        text += json.dumps([{"name": t["name"], "args": t["args"]} for t in message.tool_calls])
    return text


_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n(.*?)```", re.DOTALL)


def _json_from_text(text: str) -> Any:
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    end = max(text.rfind("}"), text.rfind("]"))
    if start < 0 or end < start:
        raise ValueError(f"no JSON found in reply: {text[:200]!r}")
    return json.loads(text[start : end + 1])


class ScriptedChatModel(BaseChatModel):
    """A chat model that replies from a script. A test double, not intelligence.

    It replies with whatever its script says, in order (``replies``) or as
    computed from the prompt and bound tools (``responder``), in every reply
    form :func:`normalize_reply` accepts. It records every call, reports token
    usage (estimated at about 4 characters a token), can simulate latency, and
    supports ``bind_tools``, streaming (the whole reply as one chunk) and async.

    Examples:
        >>> model = ScriptedChatModel(["hello", reply(tool_calls=[{"name": "f", "args": {}}])])
        >>> model.invoke("hi").content
        'hello'

    Attributes:
        replies: Replies used in order, one per call; running out raises
            :class:`ScriptExhaustedError`. Thread-safe.
        responder: ``responder(messages, tools) -> reply``, called once per call
            with the prompt messages and the bound tools (OpenAI tool schemas).
        latency_s: Seconds to sleep per call (``time.sleep`` in sync calls,
            ``asyncio.sleep`` in async ones), to simulate an endpoint.
        label: Names the model in errors and in ``response_metadata["model_name"]``.
    """

    replies: list[Any] | None = None
    responder: Callable[..., Any] | None = None
    latency_s: float = 0.0
    label: str = "scripted"
    # A scripted model must consult its script on every call, whatever global
    # LLM cache a test may have configured.
    cache: BaseCache | bool | None = False

    _script: Script = PrivateAttr()
    _calls: list[list[BaseMessage]] = PrivateAttr(default_factory=list)
    _call_tools: list[list[dict[str, Any]]] = PrivateAttr(default_factory=list)
    _calls_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(
        self, script: Sequence[Any] | Callable[..., Any] | None = None, /, **data: Any
    ) -> None:
        """Create the model.

        Args:
            script: Optional positional shorthand: a list of replies (as
                ``replies=``) or a responder callable (as ``responder=``).
            **data: Field values (``replies``, ``responder``, ``latency_s``,
                ``label``, and any ``BaseChatModel`` field).
        """
        if script is not None:
            key = "responder" if callable(script) else "replies"
            if key in data:
                raise TypeError(f"{key} given both positionally and by keyword")
            data[key] = list(script) if key == "replies" else script
        super().__init__(**data)

    def model_post_init(self, context: Any, /) -> None:
        """Check the script and set up the shared script state (pydantic hook)."""
        super().model_post_init(context)
        if (self.replies is None) == (self.responder is None):
            raise ValueError(
                "ScriptedChatModel needs exactly one of `replies` (a list) or "
                "`responder` (a callable)"
            )
        if self.latency_s < 0:
            raise ValueError("latency_s must be >= 0")
        source = self.responder if self.responder is not None else self.replies
        self._script = Script(source, owner=f"ScriptedChatModel {self.label!r}")

    # ------------------------------------------------------------------ inspection

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"label": self.label}

    @property
    def calls(self) -> list[list[BaseMessage]]:
        """The prompt messages of every call so far, in order (a copy)."""
        with self._calls_lock:
            return [list(c) for c in self._calls]

    @property
    def call_tools(self) -> list[list[dict[str, Any]]]:
        """The tool schemas bound for every call so far, parallel to :attr:`calls`."""
        with self._calls_lock:
            return [list(t) for t in self._call_tools]

    @property
    def remaining(self) -> int | None:
        """Replies left in a ``replies`` script; ``None`` for a responder."""
        return self._script.remaining

    # ------------------------------------------------------------------ tools

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools, as a real chat model does.

        Args:
            tools: LangChain tools, functions, pydantic models or tool dicts.
            tool_choice: Recorded (passed through to the call kwargs) but not
                enforced: the script decides what to call.
            **kwargs: Further call kwargs to bind.

        Returns:
            A runnable over this same model (sharing its script and records)
            that passes the tools' OpenAI schemas as ``tools`` to every call,
            where the responder sees them.
        """
        schemas = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=schemas, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Return a runnable that parses the scripted reply into ``schema``.

        The schema is bound as a tool (so a responder sees it); the reply's first
        tool call's arguments are used if it has one, else JSON found in its text.

        Args:
            schema: A pydantic model class, or anything ``convert_to_openai_tool``
                accepts (the parsed output is then a dict).
            include_raw: Return ``{"raw", "parsed", "parsing_error"}`` instead of
                raising on a reply that does not parse.
            **kwargs: Ignored (accepted for signature compatibility, e.g. ``method``).

        Returns:
            A runnable producing the parsed object.
        """
        name = convert_to_openai_tool(schema)["function"]["name"]
        bound = self.bind_tools([schema], tool_choice=name)
        is_model = isinstance(schema, type) and issubclass(schema, BaseModel)

        def parse(message: AIMessage) -> Any:
            if message.tool_calls:
                data: Any = message.tool_calls[0]["args"]
            else:
                data = _json_from_text(content_text(message.content))
            return schema.model_validate(data) if is_model else data  # type: ignore[union-attr]

        if not include_raw:
            return bound | RunnableLambda(parse)

        def parse_with_raw(message: AIMessage) -> dict[str, Any]:
            try:
                return {"raw": message, "parsed": parse(message), "parsing_error": None}
            except Exception as exc:
                return {"raw": message, "parsed": None, "parsing_error": exc}

        return bound | RunnableLambda(parse_with_raw)

    # ------------------------------------------------------------------ replying

    def _next_reply(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> tuple[float, Any]:
        """Record the call and take its reply from the script, as ``split_delay`` returns it."""
        tools = list(kwargs.get("tools") or [])
        with self._calls_lock:
            self._calls.append(list(messages))
            self._call_tools.append(tools)
        return split_delay(self._script.next(list(messages), tools))

    def _next_message(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        """The next reply as a message, after sleeping out the latency and any ``Slow`` wait."""
        if self.latency_s:
            time.sleep(self.latency_s)
        delay, raw = self._next_reply(messages, kwargs)
        if delay:
            time.sleep(delay)
        return self._to_message(normalize_reply(raw), messages)

    async def _anext_message(
        self, messages: list[BaseMessage], kwargs: dict[str, Any]
    ) -> AIMessage:
        """As :meth:`_next_message`, waiting with ``asyncio.sleep`` (so a cancel ends the wait).

        The script runs on insitu's blocking threads: a responder may block
        (sleep, wait for an event) without stopping the other coroutines.
        """
        from insitu.aio import blocking

        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        delay, raw = await blocking(self._next_reply, messages, kwargs)
        if delay:
            await asyncio.sleep(delay)
        return self._to_message(normalize_reply(raw), messages)

    def _to_message(self, normalized: NormalizedReply, messages: list[BaseMessage]) -> AIMessage:
        calls, invalid = [], []
        for tc in normalized.tool_calls:
            if tc.args is not None:
                calls.append(tool_call(name=tc.name, args=tc.args, id=tc.id))
            else:
                invalid.append(
                    invalid_tool_call(
                        name=tc.name,
                        args=tc.arguments,
                        id=tc.id,
                        error="arguments are not a JSON object",
                    )
                )
        input_tokens = estimate_tokens("".join(_message_text(m) for m in messages))
        output_tokens = estimate_tokens(
            normalized.text + "".join(tc.name + tc.arguments for tc in normalized.tool_calls)
        )
        return AIMessage(
            content=normalized.content,
            tool_calls=calls,
            invalid_tool_calls=invalid,
            usage_metadata={
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
            },
            response_metadata={
                "model_name": self.label,
                "finish_reason": normalized.finish_reason,
            },
        )

    @staticmethod
    def _to_chunk(message: AIMessage) -> ChatGenerationChunk:
        pairs = [(tc["name"], json.dumps(tc["args"]), tc["id"]) for tc in message.tool_calls]
        pairs += [(tc["name"], tc["args"], tc["id"]) for tc in message.invalid_tool_calls]
        chunks = [
            tool_call_chunk(name=name, args=args, id=call_id, index=i)
            for i, (name, args, call_id) in enumerate(pairs)
        ]
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content=message.content,
                tool_call_chunks=chunks,
                usage_metadata=message.usage_metadata,
                response_metadata=dict(message.response_metadata),
                chunk_position="last",
            )
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(
            generations=[ChatGeneration(message=self._next_message(messages, kwargs))]
        )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = await self._anext_message(messages, kwargs)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield self._to_chunk(self._next_message(messages, kwargs))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        yield self._to_chunk(await self._anext_message(messages, kwargs))
