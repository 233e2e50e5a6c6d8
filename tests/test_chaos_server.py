"""Chaos mode of the scripted OpenAI server, seen through the real ``ChatOpenAI`` client.

Each fault an endpoint can show (rate limiting, server errors, an unknown model,
truncation, slowness past the timeout, dropped connections, ignored tools, an
outage) must reach the client as the exception or metadata a real endpoint
would give. Every client here has ``max_retries=0`` and a small timeout, so the
file stays fast.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from insitu.testing import (
    Drop,
    HTTPError,
    ScriptedOpenAIServer,
    Slow,
    Truncated,
    labelled_malformed_replies,
)
from insitu.testing.fuzz import CATEGORIES

pytestmark = pytest.mark.timeout(60)

TIMEOUT_S = 0.4


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _llm(server: ScriptedOpenAIServer, **kwargs: Any) -> ChatOpenAI:
    kwargs.setdefault("timeout", TIMEOUT_S)
    return ChatOpenAI(
        base_url=server.base_url, api_key="test-key", model="m", max_retries=0, **kwargs
    )


def _aggregate(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


def _eventually(condition: Any, within_s: float = 2.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# --------------------------------------------------------------------------- HTTP errors


def test_rate_limit_status_and_retry_after_reach_the_client() -> None:
    script = [
        HTTPError(429, "Rate limit reached", headers={"Retry-After": "1"}),
        HTTPError.rate_limited(2.5),
    ]
    with ScriptedOpenAIServer(script) as server:
        llm = _llm(server)
        with pytest.raises(openai.RateLimitError, match="Rate limit reached") as first:
            llm.invoke("a")
        with pytest.raises(openai.RateLimitError) as second:
            llm.invoke("b")
    assert first.value.status_code == 429
    assert first.value.response.headers["retry-after"] == "1"
    assert first.value.code == "rate_limit_exceeded"
    assert second.value.response.headers["Retry-After"] == "2.5"


def test_server_error_and_model_not_found() -> None:
    script = [HTTPError(500, "upstream exploded"), HTTPError.model_not_found("m")]
    with ScriptedOpenAIServer(script) as server:
        llm = _llm(server)
        with pytest.raises(openai.InternalServerError, match="upstream exploded") as crashed:
            llm.invoke("a")
        with pytest.raises(openai.NotFoundError, match="does not exist") as missing:
            llm.invoke("b")
    assert crashed.value.status_code == 500
    assert missing.value.status_code == 404
    assert missing.value.body == {
        "message": "The model `m` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }


def test_strict_models_refuses_an_unknown_model_without_consuming_the_script() -> None:
    with ScriptedOpenAIServer(["for the known model"], strict_models=True, models=["m"]) as server:
        wrong = ChatOpenAI(
            base_url=server.base_url, api_key="test-key", model="nope", max_retries=0
        )
        with pytest.raises(openai.NotFoundError) as info:
            wrong.invoke("a")
        assert info.value.code == "model_not_found"
        assert server.remaining == 1
        assert _llm(server).invoke("b").content == "for the known model"


# --------------------------------------------------------------------------- truncation


def test_truncated_reply_has_finish_reason_length_json_and_streaming() -> None:
    cut_call = {
        "tool_calls": [{"name": "add", "arguments": '{"a": 2, "b'}],
        "finish_reason": "length",
    }
    script = [Truncated("The answer is"), Truncated("The answer is"), cut_call]
    with ScriptedOpenAIServer(script, stream_chunk_chars=4) as server:
        llm = _llm(server)
        whole = llm.invoke("a")
        streamed = _aggregate(list(llm.stream("b")))
        cut = llm.bind_tools([add]).invoke("c")
    for message in (whole, streamed):
        assert message.content == "The answer is"
        assert message.response_metadata["finish_reason"] == "length"
    assert cut.response_metadata["finish_reason"] == "length"
    assert cut.tool_calls == [] and cut.invalid_tool_calls[0]["args"] == '{"a": 2, "b'


# --------------------------------------------------------------------------- slowness


def test_slow_reply_times_out_and_the_server_lets_go() -> None:
    script = [Slow(30, "too late"), Slow(0.05, "in time"), "next"]
    with ScriptedOpenAIServer(script) as server:
        llm = _llm(server)
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            llm.invoke("a")
        assert time.monotonic() - started < 5
        # The client closed its connection, so the handler stops waiting long before 30 s.
        assert _eventually(lambda: server.abandoned == 1)
        assert llm.invoke("b").content == "in time"
        assert llm.invoke("c").content == "next"


def test_streaming_request_times_out_too() -> None:
    with ScriptedOpenAIServer([Slow(30, "too late")]) as server:
        with pytest.raises(openai.APITimeoutError):
            list(_llm(server).stream("a"))
        assert _eventually(lambda: server.abandoned == 1)


def test_stop_ends_a_slow_wait_at_once() -> None:
    server = ScriptedOpenAIServer([Slow(30, "too late")]).start()
    llm = _llm(server, timeout=20)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            llm.invoke("a")
        except Exception as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert _eventually(lambda: len(server.requests) == 1)
    started = time.monotonic()
    server.stop()
    caller.join(timeout=5)
    assert time.monotonic() - started < 3
    assert not caller.is_alive()
    assert isinstance(outcome[0], openai.APIConnectionError)
    assert _eventually(lambda: server.abandoned == 1)


# --------------------------------------------------------------------------- dropped connections


def test_dropped_connection_is_a_connection_error() -> None:
    def responder(body: dict[str, Any]) -> Any:
        if body["messages"][-1]["content"] == "raise":
            raise Drop()
        return Drop() if body["messages"][-1]["content"] != "fine" else "fine"

    with ScriptedOpenAIServer(responder) as server:
        llm = _llm(server)
        for prompt in ("return", "raise"):
            with pytest.raises(openai.APIConnectionError) as info:
                llm.invoke(prompt)
            assert not isinstance(info.value, openai.APITimeoutError)
        with pytest.raises(openai.APIConnectionError):
            list(llm.stream("stream"))
        assert llm.invoke("fine").content == "fine"  # the client reconnects
    assert server.errors == []


# --------------------------------------------------------------------------- server-wide modes


def test_server_wide_fault_replaces_the_script_until_cleared() -> None:
    with ScriptedOpenAIServer(["scripted"], fault=HTTPError(500, "down for now")) as server:
        llm = _llm(server)
        with pytest.raises(openai.InternalServerError, match="down for now"):
            llm.invoke("a")
        server.fault = Drop()
        with pytest.raises(openai.APIConnectionError):
            llm.invoke("b")
        server.fault = HTTPError.rate_limited(1)
        with pytest.raises(openai.RateLimitError):
            llm.invoke("c")
        server.fault = "<|im_end|>{not json"
        assert llm.invoke("d").content == "<|im_end|>{not json"
        server.fault = Slow(30, "late")
        with pytest.raises(openai.APITimeoutError):
            llm.invoke("e")
        assert server.remaining == 1  # faults do not consume the script
        server.fault = None
        assert llm.invoke("f").content == "scripted"
    assert len(server.requests) == 6


def test_server_wide_latency_past_the_timeout() -> None:
    with ScriptedOpenAIServer(lambda body: "ok", latency_s=30) as server:
        with pytest.raises(openai.APITimeoutError):
            _llm(server).invoke("a")
        assert _eventually(lambda: server.abandoned == 1)
        server.latency_s = 0
        assert _llm(server).invoke("b").content == "ok"


def test_ignore_tools_hides_tools_from_the_responder_but_records_them() -> None:
    seen: list[dict[str, Any]] = []

    def responder(body: dict[str, Any]) -> str:
        seen.append(body)
        return "I have no tools, so here is prose."

    with ScriptedOpenAIServer(responder, ignore_tools=True) as server:
        message = _llm(server).bind_tools([add], tool_choice="add").invoke("What is 2 + 3?")
    assert message.content == "I have no tools, so here is prose."
    assert message.tool_calls == []
    assert "tools" not in seen[0] and "tool_choice" not in seen[0]
    assert seen[0]["messages"][-1]["content"] == "What is 2 + 3?"
    received = server.requests[0]
    assert received["tools"][0]["function"]["name"] == "add"
    assert received["tool_choice"]["function"]["name"] == "add"


# --------------------------------------------------------------------------- outage


def test_outage_then_recovery_on_the_same_port() -> None:
    with ScriptedOpenAIServer(["before", "after", "after restart"]) as server:
        llm = _llm(server)
        url, port = server.base_url, server.port
        assert llm.invoke("a").content == "before"
        with server.outage():
            assert not server.running
            with pytest.raises(openai.APIConnectionError):
                llm.invoke("while down")
        assert (server.base_url, server.port) == (url, port)
        assert llm.invoke("b").content == "after"  # the same client, built before the outage
        server.restart()
        assert server.port == port
        assert llm.invoke("c").content == "after restart"
    assert [r["messages"][-1]["content"] for r in server.requests] == ["a", "b", "c"]


# --------------------------------------------------------------------------- what was sent


def test_request_headers_and_output_token_limits_are_recorded() -> None:
    with ScriptedOpenAIServer(lambda body: "ok") as server:
        _llm(server, max_tokens=7).invoke("a")
        _llm(server).invoke("b")
        request = urllib.request.Request(
            f"{server.base_url}/chat/completions",
            data=json.dumps({"model": "m", "messages": [], "max_tokens": 5}).encode(),
            headers={"Authorization": "Bearer test-key", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
    assert server.requested_max_tokens == [7, None, 5]
    assert server.requests[0]["max_completion_tokens"] == 7
    headers = server.request_headers
    assert len(headers) == 3
    assert headers[0]["authorization"] == "Bearer test-key"
    assert headers[0]["content-type"] == "application/json"


# --------------------------------------------------------------------------- malformed replies


def test_every_malformed_category_is_served() -> None:
    stream = labelled_malformed_replies(seed=11)
    pairs = [next(stream) for _ in CATEGORIES]
    assert {category for category, _ in pairs} == set(CATEGORIES)
    replies = [reply for _, reply in pairs]
    # Large stream chunks: the client merges streamed tool-call chunks in quadratic time.
    with ScriptedOpenAIServer(replies + replies, stream_chunk_chars=65_536) as server:
        llm = _llm(server, timeout=10)
        for call in (llm.invoke, lambda prompt: list(llm.stream(prompt))):
            for category, _ in pairs:
                try:
                    call(category)
                except openai.APIError as exc:
                    pytest.fail(f"{category}: the server failed: {exc!r}")
                except ValueError:
                    # The client's own refusal (e.g. tool arguments that are a JSON list).
                    pass
    assert server.errors == [] and server.remaining == 0
