"""Chat models for the roles: built from settings, called within bounds, failures typed.

Every model call of every role goes through :func:`call_model`, whatever the
provider:

* **Transient** endpoint errors (connection refused or reset, a timeout, HTTP
  408, 429, 5xx) are retried with exponential backoff that honours
  ``Retry-After``, within ``retry_budget_s`` for the whole call.
* **Permanent** errors (HTTP 400, 401, 403, 404, an unknown model, anything
  else the model raises) fail at once.
* Either way the caller gets a :class:`ModelEndpointError` that names the
  role, the model, the endpoint, the status and what to check.

Models are built by :func:`build_chat_model`: a role's model setting is either
``provider:model`` (LangChain's ``init_chat_model``: ``openai:gpt-4.1-mini``,
``anthropic:claude-…``, ``ollama:qwen2.5-coder``; the provider's package is an
optional extra) or a bare name, which means the OpenAI-compatible endpoint of
``OPENAI_BASE_URL``. Every built model sends the role's ``max_output_tokens``.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import threading
import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from insitu.context import ROLES, InsituContext
from insitu.events import emit, emit_detail
from insitu.structured import UNREADABLE_KEY, TokenUsage

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel


#: ``provider:`` prefixes that select LangChain's ``init_chat_model`` (and the pip extra).
PROVIDER_PACKAGES = {
    "openai": "langchain-openai",
    "azure_openai": "langchain-openai",
    "anthropic": "langchain-anthropic",
    "ollama": "langchain-ollama",
    "google_genai": "langchain-google-genai",
    "google_vertexai": "langchain-google-vertexai",
    "bedrock": "langchain-aws",
    "bedrock_converse": "langchain-aws",
    "mistralai": "langchain-mistralai",
    "groq": "langchain-groq",
    "fireworks": "langchain-fireworks",
    "together": "langchain-together",
    "deepseek": "langchain-deepseek",
    "xai": "langchain-xai",
    "cohere": "langchain-cohere",
    "huggingface": "langchain-huggingface",
    "perplexity": "langchain-perplexity",
}
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
#: HTTP statuses worth retrying: the server is busy, overloaded or briefly broken.
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
#: Words in an exception's class names that mark a transport failure worth retrying.
_TRANSIENT_NAMES = ("Timeout", "Connection", "Connect", "RemoteProtocol", "ReadError", "Network")
_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0


class ConfigurationError(RuntimeError):
    """insitu is not configured well enough to run; the message says what to set."""


class ModelEndpointError(RuntimeError):
    """A role's model call failed at the endpoint (after retries, if it was transient).

    Attributes:
        role: The role whose call failed (``manager``, ``executor``, …).
        model: The model name or ``provider:model`` setting.
        url: The endpoint (base URL), or the provider when it has none.
        status: The HTTP status, when there was a response.
        transient: Whether the error was of a kind that is retried (it was, until
            the budget ran out).
        reason: What went wrong, in a few words.
        hint: What to check.
    """

    def __init__(
        self,
        *,
        role: str,
        model: str,
        url: str,
        status: int | None = None,
        transient: bool = False,
        reason: str,
        hint: str = "",
        line: str | None = None,
    ) -> None:
        self.role = role
        self.model = model
        self.url = url
        self.status = status
        self.transient = transient
        self.reason = reason
        self.hint = hint
        self._line = line
        #: The episode's result, when the error ended an episode (``run_task``).
        self.result: Any = None
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The error as one line: who, where, what, and what to check."""
        if self._line is not None:
            return self._line
        status = f" (HTTP {self.status})" if self.status else ""
        text = f"the {self.role} model {self.model!r} at {self.url} failed{status}: {self.reason}"
        return " ".join(f"{text}. {self.hint}".split()) if self.hint else " ".join(text.split())

    def as_failure(self) -> dict[str, Any]:
        """The error as an episode's ``failure`` record (plain data, for state and files)."""
        return {
            "kind": "endpoint",
            "role": self.role,
            "model": self.model,
            "url": self.url,
            "status": self.status,
            "message": self.one_line(),
        }

    @classmethod
    def from_failure(cls, failure: dict[str, Any]) -> ModelEndpointError:
        """Rebuild the error from a ``failure`` record (see :meth:`as_failure`)."""
        message = str(failure.get("message") or "the model endpoint failed")
        return cls(
            role=str(failure.get("role", "?")),
            model=str(failure.get("model", "?")),
            url=str(failure.get("url", "?")),
            status=failure.get("status"),
            reason=message,
            line=message,
        )


# --------------------------------------------------------------------- building models


def provider_of(model_setting: str) -> str | None:
    """The provider of a ``provider:model`` setting, or ``None`` for a bare name.

    Only known providers count, so an Ollama tag such as ``qwen2.5:7b`` stays a
    bare name served by ``OPENAI_BASE_URL``.
    """
    prefix, sep, _rest = model_setting.partition(":")
    return prefix if sep and prefix in PROVIDER_PACKAGES else None


def build_chat_model(role: str, context: InsituContext) -> BaseChatModel:
    """Build a role's chat model from the settings.

    Args:
        role: One of ``insitu.context.ROLES``.
        context: Supplies the model setting, temperature, endpoint, timeout and
            the role's ``max_output_tokens``.

    Returns:
        A chat model that sends ``max_tokens`` on every request and makes no
        retries of its own (:func:`call_model` retries).

    Raises:
        ConfigurationError: No endpoint is configured for a bare model name, or
            the provider's package is not installed.
    """
    setting = context.model_for(role)
    max_tokens = context.max_output_tokens_for(role)
    provider = provider_of(setting)
    if provider is None or (provider == "openai" and context.openai_base_url):
        return _openai_compatible(setting.partition(":")[2] if provider else setting, role, context)
    try:
        from langchain.chat_models import init_chat_model
    except ImportError:  # pragma: no cover - a dependency of insitu
        raise ConfigurationError(
            f"{role}_model={setting!r} needs LangChain's init_chat_model: pip install langchain"
        ) from None
    try:
        return init_chat_model(
            setting,
            temperature=context.temperature,
            max_tokens=max_tokens,
            timeout=context.request_timeout_s,
            max_retries=0,
        )
    except ImportError:
        package = PROVIDER_PACKAGES[provider]
        raise ConfigurationError(
            f"{role}_model={setting!r} needs the {package} package: pip install {package} "
            "(docs/models.md lists insitu's extras for the common providers)"
        ) from None
    except Exception as exc:  # the provider's client refused its settings (e.g. no API key)
        raise ConfigurationError(
            f"{role}_model={setting!r} could not be set up: {' '.join(str(exc).split())[:300]}"
        ) from None


def _openai_compatible(name: str, role: str, context: InsituContext) -> BaseChatModel:
    from insitu.services import NO_ENDPOINT_MESSAGE

    api_key = os.environ.get("OPENAI_API_KEY")
    base_url = context.openai_base_url
    if not api_key and not base_url:
        raise ConfigurationError(NO_ENDPOINT_MESSAGE)
    from langchain_openai import ChatOpenAI

    max_tokens = context.max_output_tokens_for(role)
    return ChatOpenAI(
        model=name,
        temperature=context.temperature,
        base_url=base_url,
        # Local servers (Ollama, vLLM, llama.cpp) accept any key but the client needs one.
        api_key=api_key or "not-needed",
        timeout=context.request_timeout_s,
        max_retries=0,
        max_tokens=max_tokens,
        # The client sends max_completion_tokens; llama.cpp and older servers read only
        # max_tokens, so any endpoint but OpenAI's own (whose reasoning models refuse
        # max_tokens) gets both.
        extra_body={"max_tokens": max_tokens} if _is_custom_endpoint(base_url) else None,
    )


def _is_custom_endpoint(base_url: str | None) -> bool:
    """Whether ``base_url`` is a server other than OpenAI's own API."""
    if not base_url:
        return False
    host = urlsplit(base_url).hostname or ""
    return not (host == "api.openai.com" or host.endswith(".openai.azure.com"))


def endpoint_of(model: Any, context: InsituContext, role: str) -> tuple[str, str]:
    """The (model name, endpoint) to name in an error about ``model``."""
    bound = getattr(model, "bound", model)  # a RunnableBinding from bind_tools
    name = (
        getattr(bound, "model_name", None)
        or getattr(bound, "model", None)
        or (context.model_for(role) if role in ROLES else type(bound).__name__)
    )
    url = (
        getattr(bound, "openai_api_base", None)
        or getattr(bound, "base_url", None)
        or getattr(bound, "anthropic_api_url", None)
    )
    if url is None:
        provider = provider_of(context.model_for(role)) if role in ROLES else None
        if type(bound).__name__ == "ChatOpenAI":
            url = OPENAI_DEFAULT_URL
        else:
            url = provider or f"(a {type(bound).__name__} passed from Python)"
    return str(name), str(url)


def needs_bind_tools(model: Any) -> bool:
    """Whether ``model`` lacks tool calling (``bind_tools`` not implemented)."""
    from langchain_core.language_models import BaseChatModel

    method = getattr(type(model), "bind_tools", None)
    return method is None or method is BaseChatModel.bind_tools


def require_tool_calling(model: Any, role: str = "executor") -> None:
    """Fail with what to do when a role's model cannot call tools natively.

    Raises:
        ConfigurationError: ``model`` does not implement ``bind_tools``.
    """
    if needs_bind_tools(model):
        raise ConfigurationError(
            f"the {role}'s model ({type(model).__name__}) cannot call tools: it does not "
            "implement bind_tools. Pass a chat model with tool calling, or set "
            "tool_calling='text' to use the JSON text protocol."
        )


# --------------------------------------------------------------------- calling models


@dataclass
class _Classified:
    transient: bool
    status: int | None
    retry_after_s: float | None
    reason: str
    #: The endpoint answered, but its reply could not be read (a malformed reply).
    unreadable: bool = False


def _status_of(exc: BaseException) -> int | None:
    for candidate in (exc, getattr(exc, "response", None)):
        status = getattr(candidate, "status_code", None) or getattr(candidate, "status", None)
        if isinstance(status, int) and 100 <= status <= 599:
            return status
    return None


def _retry_after(exc: BaseException) -> float | None:
    """Seconds a server asked us to wait (``Retry-After`` or ``retry-after-ms``)."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if not headers:
        return None
    try:
        millis = headers.get("retry-after-ms")
        if millis:
            return max(0.0, float(millis) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _error_message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        message = inner.get("message") if isinstance(inner, dict) else None
        if message:
            return " ".join(str(message).split())[:300]
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def classify(exc: BaseException) -> _Classified:
    """Decide whether a model call's exception is worth retrying, and why it happened."""
    status = _status_of(exc)
    names = [cls.__name__ for cls in type(exc).__mro__]
    message = _error_message(exc)
    if status is not None:
        return _Classified(status in TRANSIENT_STATUSES, status, _retry_after(exc), message)
    transport = isinstance(exc, ConnectionError | TimeoutError) or any(
        word in name for name in names for word in _TRANSIENT_NAMES
    )
    if transport:
        kind = "timed out" if any("Timeout" in n for n in names) else "could not connect"
        return _Classified(True, None, None, f"{kind} ({type(exc).__name__}: {message})")
    if isinstance(exc, ValueError | TypeError | KeyError | IndexError | AttributeError):
        # The client failed to decode what the server sent (e.g. tool call arguments
        # that are not an object): a malformed reply, which the role re-asks.
        return _Classified(False, None, None, f"{type(exc).__name__}: {message}", True)
    return _Classified(False, None, None, f"{type(exc).__name__}: {message}")


def _hint(classified: _Classified, url: str, model: str) -> str:
    status = classified.status
    if status in (401, 403):
        return "Check the API key (OPENAI_API_KEY or the provider's key variable)."
    if status == 404:
        return f"Check that the server at {url} serves a model named {model!r} (`insitu doctor`)."
    if status == 400:
        return "The server refused the request; check the model's settings (`insitu doctor`)."
    if status == 429:
        return "The endpoint is rate limiting; lower batch_concurrency or wait."
    if classified.transient:
        return (
            f"Check that the server at {url} is running and reachable; raise request_timeout_s "
            "or retry_budget_s for a slow one."
        )
    return "Run `insitu doctor` to check the endpoint."


#: The tag of every model call whose reply is the team's own work, not the final answer:
#: a chat UI reading the ``messages`` stream mode can drop chunks tagged with it.
INTERNAL_TAG = "insitu:internal"


def call_tags(role: str) -> list[str]:
    """Tags of a role's model calls (``insitu:<role>``; ``insitu:internal`` but for the answer)."""
    tags = ["insitu", f"insitu:{role}"]
    return tags if role == "integrator" else [*tags, INTERNAL_TAG]


def unreadable_reply(reason: str) -> AIMessage:
    """A reply that stands for one the client could not decode (see ``UNREADABLE_KEY``)."""
    return AIMessage(content="", response_metadata={UNREADABLE_KEY: reason})


#: Token counts per role of every reply in this context (an episode's, in a batch): kept by
#: :func:`call_model` beside the roles' own counts, so that an episode cancelled at its
#: time limit still reports what it spent before.
usage_ledger: ContextVar[dict[str, TokenUsage] | None] = ContextVar(
    "insitu_usage_ledger", default=None
)


async def call_model(
    model: Any,
    messages: Sequence[BaseMessage],
    *,
    role: str,
    context: InsituContext,
    usage: TokenUsage | None = None,
) -> AIMessage:
    """Call a role's model once, retrying transient endpoint errors within the budget.

    The request is awaited (``ainvoke``) and so is the backoff, so cancelling
    the caller aborts the request in flight.

    Args:
        model: A chat model, possibly with tools bound.
        messages: The conversation.
        role: Names the role in errors and progress events.
        context: Supplies ``max_retries`` and ``retry_budget_s``.
        usage: Receives the reply's token counts.

    Returns:
        The model's reply (check :func:`insitu.structured.is_truncated`). A reply the
        client could not decode comes back empty, with the reason under
        ``response_metadata[UNREADABLE_KEY]``: the role re-asks as for any
        unusable reply.

    Raises:
        ModelEndpointError: A permanent error, or a transient one that outlasted
            the retries or the time budget.
    """
    started = time.monotonic()
    attempt = 0
    config = {"tags": call_tags(role)}
    while True:
        sent = time.monotonic()
        try:
            reply = await model.ainvoke(list(messages), config=config)
        except Exception as exc:
            classified = classify(exc)
            if classified.unreadable:
                emit(
                    "unreadable", f"{role}: the reply could not be read: {classified.reason[:160]}"
                )
                reply = unreadable_reply(classified.reason)
                _count_usage(role, reply, usage)
                return reply
            attempt += 1
            waited = time.monotonic() - started
            delay = min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2 ** (attempt - 1))
            delay *= 0.5 + random.random() / 2  # jitter: parallel episodes do not retry in step
            if classified.retry_after_s is not None:
                delay = classified.retry_after_s
            left = context.retry_budget_s - waited
            if classified.transient and attempt <= context.max_retries and delay < left:
                emit(
                    "retrying",
                    f"{role}: {classified.reason[:120]}; retrying in {delay:.1f} s "
                    f"(attempt {attempt + 1})",
                    role=role,
                )
                await asyncio.sleep(delay)
                continue
            name, url = endpoint_of(model, context, role)
            reason = classified.reason
            if classified.transient:
                reason += f" (gave up after {attempt} attempt(s) in {waited:.0f} s)"
            raise ModelEndpointError(
                role=role,
                model=name,
                url=url,
                status=classified.status,
                transient=classified.transient,
                reason=reason,
                hint=_hint(classified, url, name),
            ) from exc
        if not isinstance(reply, AIMessage):  # a plain runnable or a str-returning double
            reply = AIMessage(content=str(getattr(reply, "content", reply)))
        _count_usage(role, reply, usage)
        _report_call(model, context, role, reply, time.monotonic() - sent)
        return reply


def _count_usage(role: str, reply: AIMessage, usage: TokenUsage | None) -> None:
    """Add a reply's tokens to the role's counts and to the context's ledger."""
    if usage is not None:
        usage.add_response(reply)
    ledger = usage_ledger.get()
    if ledger is not None:
        ledger.setdefault(role, TokenUsage()).add_response(reply)


def _report_call(
    model: Any, context: InsituContext, role: str, reply: AIMessage, latency_s: float
) -> None:
    """One detail event per answered request: role, model, tokens, latency."""
    name, _url = endpoint_of(model, context, role)
    counts = reply.usage_metadata or {}
    tokens_in, tokens_out = counts.get("input_tokens", 0), counts.get("output_tokens", 0)
    finish = (reply.response_metadata or {}).get("finish_reason") or "-"
    emit_detail(
        "model_call",
        f"{role} · {name} · {tokens_in} in / {tokens_out} out tokens · {latency_s:.2f} s"
        f" · finish {finish}",
        role=role,
        model=name,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        latency_s=round(latency_s, 4),
    )


def truncation_notice(context: InsituContext, role: str) -> str:
    """What to tell a model whose reply was cut off (it is re-asked once more)."""
    return (
        f"Your reply was cut off at the limit of {context.max_output_tokens_for(role)} tokens. "
        "Reply again, much shorter: only what is required, in the required format."
    )


# --------------------------------------------------------------------- probing endpoints

_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "record_number",
        "description": "Record a number.",
        "parameters": {
            "type": "object",
            "properties": {"value": {"type": "integer", "description": "The number."}},
            "required": ["value"],
        },
    },
}
#: The probe's prompt; the scripted test team recognises it by its first words.
PROBE_SYSTEM = "You are checking tool calling. Call the record_number tool with value 7."
#: The JSON check's instructions (``insitu doctor``), recognised the same way.
JSON_CHECK_SYSTEM = "You are checking JSON replies. Reply with only the JSON object asked for."
_probe_lock = threading.Lock()
_tool_calling_probes: dict[tuple[str, str], bool] = {}


async def probe_completion(role: str, context: InsituContext) -> AIMessage:
    """Send the smallest request a role's model accepts (1 output token).

    Raises:
        ModelEndpointError: The endpoint is down or refuses the model.
        ConfigurationError: The model cannot be built from the settings.
    """
    tiny = replace(context, **{f"{role}_max_output_tokens": 1, "max_retries": 0})
    model = build_chat_model(role, tiny)
    prompt = [HumanMessage(content="Reply with OK.")]
    return await call_model(model, prompt, role=role, context=tiny)


async def probe_tool_calling(model: Any, role: str, context: InsituContext) -> bool:
    """Whether the endpoint returns native tool calls (asked once per model and endpoint).

    Raises:
        ModelEndpointError: The endpoint failed (not a verdict on tool calling).
    """
    key = endpoint_of(model, context, role)
    with _probe_lock:
        if key in _tool_calling_probes:
            return _tool_calling_probes[key]
    bound = model.bind_tools([_PROBE_TOOL], tool_choice=context.tool_choice)
    reply = await call_model(
        bound,
        [SystemMessage(content=PROBE_SYSTEM), HumanMessage(content="Record the number 7.")],
        role=role,
        context=context,
    )
    native = any(call.get("name") == "record_number" for call in reply.tool_calls)
    with _probe_lock:
        _tool_calling_probes[key] = native
    emit(
        "probed",
        f"{role}: the endpoint {'does' if native else 'does not'} return native tool calls"
        + ("" if native else "; using the text protocol"),
        role=role,
    )
    return native


async def preflight(context: InsituContext, roles: Sequence[str] = ROLES) -> None:
    """Refuse to start a run on a dead endpoint: one 1-token request per distinct model.

    Does nothing when ``context.preflight`` is off. Models passed from Python
    are not probed (the caller skips this for them).

    Raises:
        ModelEndpointError: An endpoint is down or refuses its model.
        ConfigurationError: A model cannot be built from the settings.
    """
    if not context.preflight:
        return
    seen: set[tuple[str, str | None]] = set()
    for role in roles:
        key = (context.model_for(role), context.openai_base_url)
        if key in seen:
            continue
        seen.add(key)
        await probe_completion(role, context)
