"""A scripted OpenAI-protocol HTTP server on loopback: a test double for an LLM endpoint.

:class:`ScriptedOpenAIServer` speaks enough of the OpenAI Chat Completions
protocol (``POST /v1/chat/completions``, streaming or not, and
``GET /v1/models``) for the real ``langchain_openai.ChatOpenAI`` client, and
everything between it and the socket, to be exercised end to end. Its replies
come from a script, exactly as for
:class:`~insitu.testing.scripted.ScriptedChatModel` (same reply forms, same
normalisation); it is not intelligence.

Example:
    >>> from langchain_openai import ChatOpenAI
    >>> with ScriptedOpenAIServer(["hello"]) as server:  # doctest: +SKIP
    ...     llm = ChatOpenAI(base_url=server.base_url, api_key="test-key", model="m")
    ...     llm.invoke("hi").content
    'hello'

Chaos: the server can misbehave the ways real endpoints do, per request (a
reply in a list script, or returned by a responder) or for every request (the
``fault`` attribute, which answers in place of the script while it is set):

==========================  ====================================================
junk text                   any ``str``
cut off at the token limit  :class:`Truncated` (``finish_reason: "length"``, JSON
                            and streaming alike)
rate limited                ``HTTPError.rate_limited(1)``: 429 with ``Retry-After``
server error                ``HTTPError(500, ...)``
unknown model               ``HTTPError.model_not_found("m")`` (404, code
                            ``model_not_found``); or ``strict_models=True``
slower than the timeout     ``Slow(seconds, reply)``; ``latency_s`` for every request
dropped connection          :class:`Drop` (socket closed, no HTTP response)
``tools`` ignored           ``ignore_tools=True`` (as llama.cpp with some chat
                            templates)
endpoint down               :meth:`ScriptedOpenAIServer.stop` then ``start()``
                            (same port), or ``with server.outage(): ...``
==========================  ====================================================

Uses only the standard library (``http.server`` in a background thread).
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler
from typing import Any, Self
from urllib.parse import urlsplit

from insitu.fdwait import wait_fd
from insitu.loopback import LoopbackHTTPServer, LoopbackService
from insitu.testing.scripted import (
    Drop,
    Empty,
    HTTPError,
    NormalizedReply,
    Script,
    Slow,
    Truncated,
    content_text,
    estimate_tokens,
    normalize_reply,
    split_delay,
)

__all__ = ["Drop", "Empty", "HTTPError", "ScriptedOpenAIServer", "Slow", "Truncated"]

#: Request keys removed before the responder sees a body when ``ignore_tools`` is set.
TOOL_REQUEST_KEYS = ("tools", "tool_choice", "parallel_tool_calls", "functions", "function_call")

# How often a waiting handler checks whether its client has gone.
_POLL_S = 0.05

_ERROR_KINDS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def _error_body(
    status: int, message: str, type_: str | None = None, code: str | None = None
) -> dict[str, Any]:
    default_type, default_code = _ERROR_KINDS.get(
        status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )
    return {
        "error": {
            "message": message,
            "type": type_ or default_type,
            "param": None,
            "code": code or default_code,
        }
    }


def _prompt_text(messages: Any) -> str:
    """All text of OpenAI-format request messages (content and tool call arguments)."""
    if not isinstance(messages, list):
        return ""
    parts = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        parts.append(content_text(message.get("content")))
        for call in message.get("tool_calls") or []:
            function = (call.get("function") or {}) if isinstance(call, dict) else {}
            parts.append(str(function.get("name", "")) + str(function.get("arguments", "")))
    return "".join(parts)


def _usage(body: dict[str, Any], normalized: NormalizedReply) -> dict[str, int]:
    prompt = estimate_tokens(_prompt_text(body.get("messages")))
    completion = estimate_tokens(
        normalized.text + "".join(tc.name + tc.arguments for tc in normalized.tool_calls)
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class _Server(LoopbackHTTPServer):
    """The loopback server, holding what its handlers serve."""

    def __init__(self, address: tuple[str, int], owner: ScriptedOpenAIServer) -> None:
        self.owner = owner
        # Set on stop, so that handlers waiting out a slow reply give up at once.
        self.stopping = threading.Event()
        super().__init__(address, _Handler)

    def stop(self, thread: threading.Thread | None) -> None:
        """Wake waiting handlers, then stop as :class:`LoopbackHTTPServer` does."""
        self.stopping.set()
        super().stop(thread)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Report a handler's exception, unless it is only the client hanging up.

        Clients that time out or are killed mid-response are part of chaos
        tests; their broken pipes and resets are not server faults.
        """
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 60  # an idle keep-alive connection is dropped after this long

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    # ------------------------------------------------------------------ plumbing

    def _route(self) -> str:
        path = urlsplit(self.path).path.rstrip("/")
        return path.removeprefix("/v1") or "/"

    def _send_json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, message: str, **kwargs: Any) -> None:
        headers = kwargs.pop("headers", None)
        self._send_json(status, _error_body(status, message, **kwargs), headers)

    def _authorized(self) -> bool:
        key = self.server.owner.api_key
        if key is None:
            return True
        given = self.headers.get("Authorization", "")
        if given == f"Bearer {key}":
            return True
        shown = given.removeprefix("Bearer ")
        self._send_error(
            401,
            f"Incorrect API key provided: {shown[:4]}***. "
            "(ScriptedOpenAIServer expects its api_key as a Bearer token.)",
        )
        return False

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # ------------------------------------------------------------------ endpoints

    def do_GET(self) -> None:
        if self._route() != "/models":
            self._send_error(404, f"Unknown path {self.path}")
            return
        if not self._authorized():
            return
        created = int(self.server.owner.started_at or time.time())
        self._send_json(
            200,
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": created, "owned_by": "insitu-testing"}
                    for m in self.server.owner.models
                ],
            },
        )

    def do_POST(self) -> None:
        raw = self._read_body()
        if self._route() != "/chat/completions":
            self._send_error(404, f"Unknown path {self.path}")
            return
        if not self._authorized():
            return
        try:
            body = json.loads(raw or b"null")
        except json.JSONDecodeError as exc:
            self._send_error(400, f"Request body is not valid JSON: {exc}")
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._send_error(400, "Request body must be a JSON object with a 'messages' list")
            return
        owner = self.server.owner
        owner._record(body, {key.lower(): value for key, value in self.headers.items()})
        owner._count_in_flight(+1)
        try:
            self._answer(owner, body)
        finally:
            owner._count_in_flight(-1)

    def _answer(self, owner: ScriptedOpenAIServer, body: dict[str, Any]) -> None:
        """Reply to one recorded chat completion request, as its script says."""
        try:
            normalized = self._scripted_reply(owner, body)
        except Drop:
            self._drop()
            return
        except HTTPError as exc:
            self._send_error(
                exc.status, exc.message, type_=exc.type, code=exc.code, headers=exc.headers
            )
            return
        except Exception as exc:
            owner._record_error(exc)
            self._send_error(500, f"Scripted responder failed: {type(exc).__name__}: {exc}")
            return
        if normalized is None:  # the client left (or the server stopped) during a wait
            owner._record_abandoned()
            self.close_connection = True
            return
        if body.get("stream"):
            self._stream(body, normalized)
        else:
            self._send_json(200, self._completion(body, normalized))

    def _scripted_reply(
        self, owner: ScriptedOpenAIServer, body: dict[str, Any]
    ) -> NormalizedReply | None:
        """The reply to give, after any waits; ``None`` if nobody is left to receive it.

        Raises:
            Drop: The connection is to be dropped.
            HTTPError: An HTTP error is to be sent.
            Exception: The responder failed or the script ran out.
        """
        if owner.latency_s and not self._wait(owner.latency_s):
            return None
        if owner.strict_models and body.get("model") not in owner.models:
            raise HTTPError.model_not_found(str(body.get("model")))
        fault = owner.fault
        delay, raw = split_delay(
            fault if fault is not None else owner._script.next(owner._forwarded(body))
        )
        if delay and not self._wait(delay):
            return None
        return normalize_reply(raw)

    def _wait(self, seconds: float) -> bool:
        """Wait ``seconds``; give up early if the client closes the connection or the server stops.

        Returns:
            Whether the wait ran its course (``False``: there is no one to answer).
        """
        deadline = time.monotonic() + seconds
        stopping = self.server.stopping
        watch_client = True
        while (remaining := deadline - time.monotonic()) > 0:
            if stopping.is_set():
                return False
            if not watch_client:
                stopping.wait(remaining)
                continue
            try:
                if wait_fd(self.connection.fileno(), timeout_s=min(remaining, _POLL_S)):
                    # A closed connection reads as end of file; peeking leaves any data for later.
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        return False
                    # The client sent more (a pipelined request): it is there, so stop polling.
                    watch_client = False
            except (OSError, ValueError):  # the socket was shut down or closed under us
                return False
        return not stopping.is_set()

    def _drop(self) -> None:
        """Close the connection without sending anything."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------------ responses

    @staticmethod
    def _completion(body: dict[str, Any], normalized: NormalizedReply) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": normalized.text if normalized.text or not normalized.tool_calls else None,
            "refusal": None,
        }
        if normalized.tool_calls:
            message["tool_calls"] = [
                {
                    "id": tc.id,
                    "type": "function",
                    "function": {"name": tc.name, "arguments": tc.arguments},
                }
                for tc in normalized.tool_calls
            ]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or "scripted",
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": normalized.finish_reason,
                }
            ],
            "usage": _usage(body, normalized),
        }

    def _events(self, body: dict[str, Any], normalized: NormalizedReply) -> Iterator[dict]:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model") or "scripted",
            "system_fingerprint": None,
        }
        size = self.server.owner.stream_chunk_chars

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            event = {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            if include_usage:
                event["usage"] = None
            return event

        yield chunk({"role": "assistant", "content": "", "refusal": None})
        if normalized.text:
            for piece in _pieces(normalized.text, size):
                yield chunk({"content": piece})
        for index, tc in enumerate(normalized.tool_calls):
            yield chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": tc.id,
                            "type": "function",
                            "function": {"name": tc.name, "arguments": ""},
                        }
                    ]
                }
            )
            for piece in _pieces(tc.arguments, size):
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        yield chunk({}, normalized.finish_reason)
        if include_usage:
            yield {**base, "choices": [], "usage": _usage(body, normalized)}

    def _stream(self, body: dict[str, Any], normalized: NormalizedReply) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in self._events(body, normalized):
                self._write_chunk(f"data: {json.dumps(event)}\n\n".encode())
            self._write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class ScriptedOpenAIServer(LoopbackService):
    """A loopback HTTP server speaking the OpenAI Chat Completions protocol, from a script.

    Endpoints: ``POST /v1/chat/completions`` (JSON, or server-sent events when
    ``"stream": true``, with a usage chunk when ``stream_options.include_usage``)
    and ``GET /v1/models``. Every request must carry
    ``Authorization: Bearer <api_key>`` (401 otherwise). A responder that raises,
    or a list script that runs out, gives HTTP 500 (the exception is kept in
    :attr:`errors`); an :class:`HTTPError` reply gives that status, a
    :class:`Drop` closes the connection unanswered and a :class:`Slow` reply
    comes after its wait (abandoned, see :attr:`abandoned`, if the client leaves
    first).

    The server can be stopped and started again: it binds the same port the
    second time (so a client built on :attr:`base_url` before the outage reaches
    it again after), and keeps its script and records.

    Args:
        responder: ``responder(body) -> reply`` called once per chat completion
            with the request body (OpenAI-format ``messages``, ``tools``,
            ``model``, ...), or a list of replies used in order. Reply forms are
            those of :func:`insitu.testing.scripted.normalize_reply`: ``str``,
            ``{"content", "tool_calls": [{"name", "arguments": dict | str}]}``,
            ``AIMessage``, :class:`Truncated`, :class:`Empty`, :class:`Slow`,
            :class:`HTTPError`, :class:`Drop`, or any exception.
        host: Interface to bind; loopback by default.
        port: Port to bind; 0 picks a free one.
        api_key: The Bearer token required; ``None`` disables the check.
        models: Model ids listed by ``GET /v1/models``.
        latency_s: Seconds to wait before each chat completion reply (cut short,
            like a :class:`Slow` wait, when the client leaves).
        stream_chunk_chars: Characters of text (or tool arguments) per streamed delta.
        fault: A reply given to every chat completion in place of the script's
            (which is then not consulted), e.g. ``Drop()`` or
            ``HTTPError.rate_limited(1)``; ``None`` for none. Also an attribute,
            to switch a fault on and off while the server runs.
        ignore_tools: Remove ``tools`` and ``tool_choice`` (all of
            :data:`TOOL_REQUEST_KEYS`) from each body before the responder sees
            it, as some servers (llama.cpp with some chat templates) do;
            :attr:`requests` still holds the bodies as received.
        strict_models: Answer a chat completion for a model not in ``models``
            with OpenAI's 404 ``model_not_found``.

    Attributes:
        requests: Every chat completion request body accepted, as received, in order.
        request_headers: The HTTP headers of each, lower-cased names, parallel to requests.
        errors: Exceptions from the responder/script (each answered with a 500).
    """

    def __init__(
        self,
        responder: Callable[[dict[str, Any]], Any] | Sequence[Any],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = "test-key",
        models: Sequence[str] = ("scripted",),
        latency_s: float = 0.0,
        stream_chunk_chars: int = 8,
        fault: Any = None,
        ignore_tools: bool = False,
        strict_models: bool = False,
    ) -> None:
        self._script = Script(responder, owner="ScriptedOpenAIServer")
        self.host = host
        self.port = port
        self.api_key = api_key
        self.models = list(models)
        self.latency_s = latency_s
        self.stream_chunk_chars = max(1, stream_chunk_chars)
        self.fault = fault
        self.ignore_tools = ignore_tools
        self.strict_models = strict_models
        self.started_at: float | None = None
        self._requests: list[dict[str, Any]] = []
        self._request_headers: list[dict[str, str]] = []
        self._errors: list[BaseException] = []
        self._abandoned = 0
        self._in_flight = 0
        self._peak_in_flight = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ records

    def _record(self, body: dict[str, Any], headers: dict[str, str]) -> None:
        with self._lock:
            self._requests.append(body)
            self._request_headers.append(headers)

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    def _count_in_flight(self, change: int) -> None:
        with self._lock:
            self._in_flight += change
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    def _record_abandoned(self) -> None:
        with self._lock:
            self._abandoned += 1

    def _forwarded(self, body: dict[str, Any]) -> dict[str, Any]:
        """The body the responder sees: as received, or without its tools if they are ignored."""
        if not self.ignore_tools:
            return body
        return {key: value for key, value in body.items() if key not in TOOL_REQUEST_KEYS}

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Chat completion request bodies received so far, in order (a copy of the list).

        Bodies are kept as the client sent them (``tools`` included even with
        ``ignore_tools``). The output-token limit a client asked for is the body's
        ``max_completion_tokens`` (or the older ``max_tokens``): see
        :attr:`requested_max_tokens`.
        """
        with self._lock:
            return list(self._requests)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        """HTTP headers of each chat completion request (lower-cased names), parallel to
        :attr:`requests` (a copy)."""
        with self._lock:
            return [dict(headers) for headers in self._request_headers]

    @property
    def requested_max_tokens(self) -> list[int | None]:
        """Each request's output-token limit (``max_completion_tokens``, else ``max_tokens``).

        ``None`` for a request that set neither. Parallel to :attr:`requests`.
        """
        limits = []
        for body in self.requests:
            value = body.get("max_completion_tokens")
            limits.append(value if value is not None else body.get("max_tokens"))
        return limits

    @property
    def errors(self) -> list[BaseException]:
        """Responder/script exceptions so far (each was answered with HTTP 500)."""
        with self._lock:
            return list(self._errors)

    @property
    def peak_in_flight(self) -> int:
        """The most chat completion requests that were being answered at the same time."""
        with self._lock:
            return self._peak_in_flight

    @property
    def abandoned(self) -> int:
        """Requests left unanswered because the client went away (or the server stopped)
        during a wait (:class:`Slow` or ``latency_s``)."""
        with self._lock:
            return self._abandoned

    @property
    def remaining(self) -> int | None:
        """Replies left in a list script; ``None`` for a responder."""
        return self._script.remaining

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        """The OpenAI base URL to give a client, e.g. ``http://127.0.0.1:PORT/v1``."""
        if not self.running:
            raise RuntimeError("ScriptedOpenAIServer is not running; call start() first")
        return f"http://{self.host}:{self.port}/v1"

    def restart(self) -> Self:
        """Stop (if running) and start again on the same port, keeping script and records.

        Returns:
            The server itself.
        """
        self.stop()
        return self.start()

    @contextlib.contextmanager
    def outage(self) -> Iterator[Self]:
        """Take the endpoint down for the ``with`` block, then bring it back on the same port.

        While down, clients get connection refused. Read :attr:`base_url` before
        the block: it raises while the server is stopped.

        Yields:
            The (stopped) server.
        """
        self.stop()
        try:
            yield self
        finally:
            self.start()

    def _make_server(self, address: tuple[str, int]) -> _Server:
        self.started_at = time.time()
        return _Server(address, self)
