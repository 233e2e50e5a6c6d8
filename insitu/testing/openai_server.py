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

Uses only the standard library (``http.server`` in a background thread).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from insitu.loopback import LoopbackHTTPServer, LoopbackService
from insitu.testing.scripted import (
    Empty,
    HTTPError,
    NormalizedReply,
    Script,
    Truncated,
    content_text,
    estimate_tokens,
    normalize_reply,
)

__all__ = ["Empty", "HTTPError", "ScriptedOpenAIServer", "Truncated"]

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
        super().__init__(address, _Handler)


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
        owner._record(body)
        try:
            if owner.latency_s:
                time.sleep(owner.latency_s)
            normalized = normalize_reply(owner._script.next(body))
        except HTTPError as exc:
            self._send_error(
                exc.status, exc.message, type_=exc.type, code=exc.code, headers=exc.headers
            )
            return
        except Exception as exc:
            owner._record_error(exc)
            self._send_error(500, f"Scripted responder failed: {type(exc).__name__}: {exc}")
            return
        if body.get("stream"):
            self._stream(body, normalized)
        else:
            self._send_json(200, self._completion(body, normalized))

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
    :attr:`errors`); an :class:`HTTPError` reply gives that status.

    Args:
        responder: ``responder(body) -> reply`` called once per chat completion
            with the request body (OpenAI-format ``messages``, ``tools``,
            ``model``, ...), or a list of replies used in order. Reply forms are
            those of :func:`insitu.testing.scripted.normalize_reply`: ``str``,
            ``{"content", "tool_calls": [{"name", "arguments": dict | str}]}``,
            ``AIMessage``, :class:`Truncated`, :class:`Empty`, :class:`HTTPError`,
            or any exception.
        host: Interface to bind; loopback by default.
        port: Port to bind; 0 picks a free one.
        api_key: The Bearer token required; ``None`` disables the check.
        models: Model ids listed by ``GET /v1/models``.
        latency_s: Seconds to wait before each chat completion reply.
        stream_chunk_chars: Characters of text (or tool arguments) per streamed delta.

    Attributes:
        requests: Every chat completion request body accepted, in order.
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
    ) -> None:
        self._script = Script(responder, owner="ScriptedOpenAIServer")
        self.host = host
        self.port = port
        self.api_key = api_key
        self.models = list(models)
        self.latency_s = latency_s
        self.stream_chunk_chars = max(1, stream_chunk_chars)
        self.started_at: float | None = None
        self._requests: list[dict[str, Any]] = []
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ records

    def _record(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(body)

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Chat completion request bodies received so far, in order (a copy of the list)."""
        with self._lock:
            return list(self._requests)

    @property
    def errors(self) -> list[BaseException]:
        """Responder/script exceptions so far (each was answered with HTTP 500)."""
        with self._lock:
            return list(self._errors)

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

    def _make_server(self, address: tuple[str, int]) -> _Server:
        self.started_at = time.time()
        return _Server(address, self)
