"""Tests for the LLM test doubles in ``insitu.testing``.

The scripted model is checked on its own and inside a LangGraph tool loop; the
scripted OpenAI server is checked through the real ``langchain_openai``
client (and raw HTTP for the exact wire schema).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypedDict

import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition
from pydantic import BaseModel

from insitu.testing import (
    MALFORMED_CATEGORIES,
    Drop,
    Empty,
    HTTPError,
    ScriptedChatModel,
    ScriptedOpenAIServer,
    ScriptExhaustedError,
    Slow,
    Truncated,
    labelled_malformed_replies,
    malformed_replies,
    malformed_reply,
    malformed_responder,
    normalize_reply,
    random_malformed_reply,
    reply,
    split_delay,
)
from insitu.testing.fuzz import DEEP_NESTING

pytestmark = pytest.mark.timeout(60)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _aggregate(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


# --------------------------------------------------------------------------- normalisation


def test_normalize_reply_forms() -> None:
    assert normalize_reply("hi").content == "hi"
    assert normalize_reply(Empty()).content == ""
    truncated = normalize_reply(Truncated("cut"))
    assert (truncated.content, truncated.finish_reason) == ("cut", "length")

    r = normalize_reply(
        reply(
            "text",
            [
                {"name": "a", "args": {"x": 1}},
                {"name": "b", "arguments": '{"y": 2}', "id": "call_fixed"},
                {"id": "c1", "type": "function", "function": {"name": "c", "arguments": "{}"}},
                {"name": "d", "arguments": "{not json"},
            ],
        )
    )
    assert r.finish_reason == "tool_calls"
    assert [tc.name for tc in r.tool_calls] == ["a", "b", "c", "d"]
    assert r.tool_calls[0].id.startswith("call_") and r.tool_calls[0].arguments == '{"x": 1}'
    assert (r.tool_calls[1].id, r.tool_calls[1].args) == ("call_fixed", {"y": 2})
    assert r.tool_calls[2].id == "c1"
    assert r.tool_calls[3].args is None and r.tool_calls[3].arguments == "{not json"

    message = AIMessage(content="m", tool_calls=[{"name": "f", "args": {"k": 1}, "id": "i"}])
    assert normalize_reply(message).tool_calls[0].args == {"k": 1}

    with pytest.raises(ValueError, match="boom"):
        normalize_reply(ValueError("boom"))
    with pytest.raises(TypeError, match="NoneType"):
        normalize_reply(None)
    with pytest.raises(TypeError, match="unknown reply keys"):
        normalize_reply({"contents": "typo"})
    with pytest.raises(TypeError, match="name"):
        normalize_reply({"tool_calls": [{"args": {}}]})


# --------------------------------------------------------------------------- scripted model


def test_replies_in_order_then_clear_exhaustion_error() -> None:
    model = ScriptedChatModel(replies=["one", "two"], label="manager")
    assert model._llm_type == "scripted"
    assert "not intelligence" in (ScriptedChatModel.__doc__ or "")
    assert model.invoke("a").content == "one"
    assert model.invoke([HumanMessage("b")]).content == "two"
    assert model.remaining == 0
    with pytest.raises(ScriptExhaustedError, match=r"'manager'.*all 2 replies.*'c'"):
        model.invoke("c")
    assert [[m.content for m in call] for call in model.calls] == [["a"], ["b"], ["c"]]


def test_constructor_forms_and_validation() -> None:
    assert ScriptedChatModel(["x"]).invoke("q").content == "x"
    assert ScriptedChatModel(lambda messages, tools: "y").invoke("q").content == "y"
    with pytest.raises(ValueError, match="exactly one"):
        ScriptedChatModel()
    with pytest.raises(ValueError, match="exactly one"):
        ScriptedChatModel(replies=["a"], responder=lambda m, t: "b")


def test_usage_and_response_metadata() -> None:
    model = ScriptedChatModel(["x" * 40], label="exec")
    message = model.invoke([HumanMessage("y" * 400)])
    assert message.usage_metadata == {"input_tokens": 100, "output_tokens": 10, "total_tokens": 110}
    assert message.response_metadata["model_name"] == "exec"
    assert message.response_metadata["finish_reason"] == "stop"


def test_bind_tools_responder_sees_schemas_and_tool_calls_get_ids() -> None:
    seen: list[list[dict[str, Any]]] = []

    def responder(messages: list, tools: list[dict[str, Any]]) -> Any:
        seen.append(tools)
        if not any(isinstance(m, ToolMessage) for m in messages):
            return {"content": "", "tool_calls": [{"name": "add", "args": {"a": 2, "b": 3}}]}
        return f"sum is {messages[-1].content}"

    model = ScriptedChatModel(responder=responder)
    bound = model.bind_tools([add], tool_choice="auto")
    first = bound.invoke("add 2 and 3")
    assert seen[0][0]["type"] == "function"
    assert seen[0][0]["function"]["name"] == "add"
    assert set(seen[0][0]["function"]["parameters"]["properties"]) == {"a", "b"}
    assert first.tool_calls[0]["name"] == "add"
    assert first.tool_calls[0]["args"] == {"a": 2, "b": 3}
    assert first.tool_calls[0]["id"].startswith("call_")
    assert first.response_metadata["finish_reason"] == "tool_calls"
    assert model.call_tools[0] == seen[0]
    # the binding shares the model's script and records
    assert len(model.calls) == 1


def test_invalid_json_arguments_become_invalid_tool_calls() -> None:
    model = ScriptedChatModel([{"tool_calls": [{"name": "add", "arguments": "{oops"}]}])
    message = model.invoke("x")
    assert message.tool_calls == []
    assert message.invalid_tool_calls[0]["args"] == "{oops"


def test_exception_replies_are_raised() -> None:
    model = ScriptedChatModel([RuntimeError("endpoint down"), HTTPError(429, "slow down"), "ok"])
    with pytest.raises(RuntimeError, match="endpoint down"):
        model.invoke("a")
    with pytest.raises(HTTPError) as info:
        model.invoke("b")
    assert info.value.status == 429
    assert model.invoke("c").content == "ok"


def test_truncated_and_empty_with_model() -> None:
    model = ScriptedChatModel([Truncated("half a"), Empty()])
    cut = model.invoke("a")
    assert (cut.content, cut.response_metadata["finish_reason"]) == ("half a", "length")
    assert model.invoke("b").content == ""


def test_stream_is_one_chunk_with_tool_call_chunks() -> None:
    model = ScriptedChatModel([reply("thinking", [{"name": "add", "args": {"a": 1, "b": 1}}])])
    chunks = list(model.bind_tools([add]).stream("x"))
    assert len(chunks) == 1
    assert chunks[0].tool_call_chunks[0]["name"] == "add"
    assert chunks[0].tool_call_chunks[0]["index"] == 0
    whole = _aggregate(chunks)
    assert whole.content == "thinking"
    assert whole.tool_calls[0]["args"] == {"a": 1, "b": 1}
    assert whole.usage_metadata is not None and whole.usage_metadata["total_tokens"] > 0


def test_thread_safe_consumption_and_recording() -> None:
    n = 60
    model = ScriptedChatModel([f"r{i}" for i in range(n)])
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: model.invoke(f"q{i}").content, range(n)))
    assert sorted(results) == sorted(f"r{i}" for i in range(n))
    assert len(model.calls) == n
    assert model.remaining == 0


def test_latency_sync_threads_and_async_overlap() -> None:
    model = ScriptedChatModel(responder=lambda m, t: "ok", latency_s=0.2)
    start = time.perf_counter()
    model.invoke("one")
    assert time.perf_counter() - start >= 0.19

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(model.invoke, ["a", "b", "c", "d"]))
    assert time.perf_counter() - start < 0.6

    async def run() -> list[AIMessage]:
        return await asyncio.gather(*(model.ainvoke(str(i)) for i in range(6)))

    start = time.perf_counter()
    assert [m.content for m in asyncio.run(run())] == ["ok"] * 6
    assert time.perf_counter() - start < 0.6


def test_async_stream() -> None:
    model = ScriptedChatModel([reply(tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}}])])

    async def run() -> list[AIMessageChunk]:
        return [chunk async for chunk in model.astream("x")]

    chunks = asyncio.run(run())
    assert _aggregate(chunks).tool_calls[0]["args"] == {"a": 1, "b": 2}


class Plan(BaseModel):
    steps: list[str]


def test_with_structured_output() -> None:
    model = ScriptedChatModel(
        [
            '```json\n{"steps": ["a", "b"]}\n```',
            reply(tool_calls=[{"name": "Plan", "args": {"steps": ["c"]}}]),
            "no json here",
        ]
    )
    structured = model.with_structured_output(Plan)
    assert structured.invoke("plan").steps == ["a", "b"]
    assert structured.invoke("plan").steps == ["c"]
    raw = model.with_structured_output(Plan, include_raw=True).invoke("plan")
    assert raw["parsed"] is None and raw["parsing_error"] is not None
    assert model.call_tools[0][0]["function"]["name"] == "Plan"


# --------------------------------------------------------------------------- LangGraph


class _State(TypedDict):
    messages: Annotated[list, add_messages]


def _tool_loop(llm: Any) -> Any:
    bound = llm.bind_tools([add])
    graph = StateGraph(_State)
    graph.add_node("agent", lambda state: {"messages": [bound.invoke(state["messages"])]})
    graph.add_node("tools", ToolNode([add]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def _adding_responder(messages: list, tools: list[dict[str, Any]]) -> Any:
    assert [t["function"]["name"] for t in tools] == ["add"]
    results = [m for m in messages if isinstance(m, ToolMessage)]
    if not results:
        return reply(tool_calls=[{"name": "add", "args": {"a": 20, "b": 22}}])
    return f"The answer is {results[-1].content}."


def test_langgraph_tool_loop_invoke() -> None:
    model = ScriptedChatModel(responder=_adding_responder)
    out = _tool_loop(model).invoke({"messages": [HumanMessage("What is 20 + 22?")]})
    messages = out["messages"]
    assert isinstance(messages[2], ToolMessage) and messages[2].content == "42"
    assert messages[2].tool_call_id == messages[1].tool_calls[0]["id"]
    assert messages[-1].content == "The answer is 42."
    assert len(model.calls) == 2


def test_langgraph_stream_mode_messages() -> None:
    model = ScriptedChatModel(responder=_adding_responder)
    streamed = list(
        _tool_loop(model).stream(
            {"messages": [HumanMessage("What is 20 + 22?")]}, stream_mode="messages"
        )
    )
    from_agent = [m for m, meta in streamed if meta["langgraph_node"] == "agent"]
    assert any(getattr(m, "tool_call_chunks", None) for m in from_agent)
    assert any(m.content == "The answer is 42." for m in from_agent)
    tool_outputs = [m for m, meta in streamed if meta["langgraph_node"] == "tools"]
    assert tool_outputs and tool_outputs[0].content == "42"


# --------------------------------------------------------------------------- OpenAI server


def _llm(server: ScriptedOpenAIServer, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=server.base_url, api_key="test-key", model="m", max_retries=0, **kwargs
    )


def _openai_responder(body: dict[str, Any]) -> Any:
    if body.get("tools"):
        if body["messages"][-1]["role"] == "tool":
            return f"The answer is {body['messages'][-1]['content']}."
        return {"content": None, "tool_calls": [{"name": "add", "arguments": {"a": 20, "b": 22}}]}
    return "hello from the script"


def test_server_plain_reply_through_chat_openai() -> None:
    with ScriptedOpenAIServer(_openai_responder) as server:
        message = _llm(server).invoke("hi")
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.base_url.endswith("/v1")
    assert message.content == "hello from the script"
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0
    assert server.requests[0]["model"] == "m"
    assert server.requests[0]["messages"] == [{"role": "user", "content": "hi"}]


def test_server_tool_call_and_langgraph_loop_with_real_client() -> None:
    with ScriptedOpenAIServer(_openai_responder) as server:
        llm = _llm(server)
        first = llm.bind_tools([add]).invoke("What is 20 + 22?")
        out = _tool_loop(llm).invoke({"messages": [HumanMessage("What is 20 + 22?")]})
    assert first.tool_calls[0]["name"] == "add"
    assert first.tool_calls[0]["args"] == {"a": 20, "b": 22}
    assert first.usage_metadata is not None and first.usage_metadata["total_tokens"] > 0
    assert server.requests[0]["tools"][0]["function"]["name"] == "add"
    assert out["messages"][-1].content == "The answer is 42."
    tool_message = server.requests[-1]["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["content"] == "42"


def test_server_streaming_with_tool_call_chunks_and_usage() -> None:
    with ScriptedOpenAIServer(_openai_responder, stream_chunk_chars=4) as server:
        llm = _llm(server, stream_usage=True)
        text_chunks = list(llm.stream("hi"))
        tool_chunks = list(llm.bind_tools([add]).stream("What is 20 + 22?"))
    assert len(text_chunks) > 3
    assert _aggregate(text_chunks).content == "hello from the script"
    assert sum(1 for c in tool_chunks if c.tool_call_chunks) > 2  # arguments arrive in pieces
    whole = _aggregate(tool_chunks)
    assert whole.tool_calls[0]["args"] == {"a": 20, "b": 22}
    assert whole.usage_metadata is not None and whole.usage_metadata["total_tokens"] > 0
    assert server.requests[0]["stream"] is True


def test_server_rejects_bad_key() -> None:
    with ScriptedOpenAIServer(["never used"]) as server:
        llm = ChatOpenAI(base_url=server.base_url, api_key="wrong", model="m", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            llm.invoke("hi")
    assert server.requests == [] and server.remaining == 1


def test_server_faults_errors_and_exhaustion() -> None:
    script = [
        HTTPError(429, "Rate limit reached", headers={"retry-after": "0"}),
        HTTPError(500, "upstream exploded"),
        ValueError("responder bug"),
        Truncated("The answer is"),
        Empty(),
    ]
    with ScriptedOpenAIServer(script) as server:
        llm = _llm(server)
        with pytest.raises(openai.RateLimitError, match="Rate limit reached"):
            llm.invoke("a")
        with pytest.raises(openai.InternalServerError, match="upstream exploded"):
            llm.invoke("b")
        with pytest.raises(openai.InternalServerError, match="responder bug"):
            llm.invoke("c")
        cut = llm.invoke("d")
        empty = llm.invoke("e")
        with pytest.raises(openai.InternalServerError, match="ran out of scripted replies"):
            llm.invoke("f")
    assert (cut.content, cut.response_metadata["finish_reason"]) == ("The answer is", "length")
    assert empty.content == "" and empty.tool_calls == []
    assert [type(e).__name__ for e in server.errors] == ["ValueError", "ScriptExhaustedError"]
    assert len(server.requests) == 6


def test_server_async_and_parallel_requests() -> None:
    with ScriptedOpenAIServer(lambda body: "ok", latency_s=0.2) as server:
        llm = _llm(server)

        async def run() -> list[AIMessage]:
            return await asyncio.gather(llm.ainvoke("a"), llm.ainvoke("b"), llm.ainvoke("c"))

        start = time.perf_counter()
        results = asyncio.run(run())
        elapsed = time.perf_counter() - start
    assert [m.content for m in results] == ["ok"] * 3
    assert elapsed < 0.55  # served concurrently
    assert len(server.requests) == 3


def test_server_serves_a_process_holding_descriptors_past_1024() -> None:
    """A long test session numbers its sockets past 1024, where select() refuses them."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with ScriptedOpenAIServer(lambda body: "ok", latency_s=0.05) as server:
            assert _llm(server).invoke("a").content == "ok"
    finally:
        for fd in held:
            os.close(fd)


def _http(url: str, body: dict[str, Any] | None = None, key: str = "test-key") -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {key}"})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_server_wire_schema_raw_http() -> None:
    tool_reply = reply(tool_calls=[{"name": "add", "arguments": '{"a": 1, "b": 2}', "id": "c9"}])
    with ScriptedOpenAIServer(["plain", tool_reply, tool_reply], models=["m1"]) as server:
        url = server.base_url
        status, raw = _http(f"{url}/chat/completions", {"model": "x", "messages": []})
        assert status == 200
        body = json.loads(raw)
        assert body["object"] == "chat.completion" and body["model"] == "x"
        assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
        assert body["choices"][0]["message"] == {
            "role": "assistant",
            "content": "plain",
            "refusal": None,
        }
        assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}

        status, raw = _http(f"{url}/chat/completions", {"model": "x", "messages": []})
        choice = json.loads(raw)["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        assert choice["message"]["tool_calls"] == [
            {
                "id": "c9",
                "type": "function",
                "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
            }
        ]

        stream_body = {
            "model": "x",
            "messages": [{"role": "user", "content": "q"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        status, raw = _http(f"{url}/chat/completions", stream_body)
        events = [line[6:] for line in raw.decode().split("\n\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
        assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
        deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
        call_deltas = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
        assert call_deltas[0]["id"] == "c9" and call_deltas[0]["index"] == 0
        assert "".join(d["function"]["arguments"] for d in call_deltas) == '{"a": 1, "b": 2}'

        status, raw = _http(f"{url}/models")
        assert status == 200 and json.loads(raw)["data"][0]["id"] == "m1"
        status, raw = _http(f"{url}/models", key="bad")
        assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
        status, raw = _http(f"{url}/nowhere", {"messages": []})
        assert status == 404
        status, raw = _http(f"{url}/chat/completions", {"model": "x"})
        assert status == 400 and "messages" in json.loads(raw)["error"]["message"]


def test_server_stop_is_clean_and_idempotent() -> None:
    server = ScriptedOpenAIServer(lambda body: "ok").start()
    _llm(server).invoke("keep-alive connection stays open")
    threads_before = threading.active_count()
    server.stop()
    server.stop()
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.base_url
    time.sleep(0.1)
    assert threading.active_count() <= threads_before


# --------------------------------------------------------------------------- chaos reply forms


def test_slow_drop_and_http_error_factories() -> None:
    assert normalize_reply(Slow(5, "late")).content == "late"
    assert normalize_reply(Slow(5)).content == ""
    assert split_delay(Slow(1, Slow(0.5, "x"))) == (1.5, "x")
    assert split_delay("x") == (0.0, "x")
    with pytest.raises(ValueError, match=">= 0"):
        Slow(-1)
    with pytest.raises(ValueError, match=">= 0"):
        Slow(float("nan"))
    with pytest.raises(Drop):
        normalize_reply(Drop())
    with pytest.raises(HTTPError):
        normalize_reply(Slow(1, HTTPError(500)))
    assert isinstance(Drop(), ConnectionError)

    limited = HTTPError.rate_limited(2)
    assert (limited.status, limited.headers) == (429, {"Retry-After": "2"})
    missing = HTTPError.model_not_found("gpt-x")
    assert (missing.status, missing.code, missing.type) == (
        404,
        "model_not_found",
        "invalid_request_error",
    )
    assert "`gpt-x` does not exist" in missing.message


def test_model_sleeps_for_slow_and_raises_drop() -> None:
    model = ScriptedChatModel([Slow(0.2, "late"), Drop(), Slow(0.2, "async late")])
    start = time.perf_counter()
    assert model.invoke("a").content == "late"
    assert time.perf_counter() - start >= 0.19
    with pytest.raises(ConnectionError, match="dropped"):
        model.invoke("b")
    start = time.perf_counter()
    assert asyncio.run(model.ainvoke("c")).content == "async late"
    assert time.perf_counter() - start >= 0.19


def test_arguments_nested_past_the_recursion_limit_are_invalid_not_a_crash() -> None:
    deep = "[" * 10_000 + "]" * 10_000
    normalized = normalize_reply({"tool_calls": [{"name": "f", "arguments": deep}]})
    assert normalized.tool_calls[0].args is None
    message = ScriptedChatModel([{"tool_calls": [{"name": "f", "arguments": deep}]}]).invoke("x")
    assert message.tool_calls == [] and message.invalid_tool_calls[0]["name"] == "f"


# --------------------------------------------------------------------------- malformed replies


def test_malformed_replies_cover_every_category_deterministically() -> None:
    count = 2000
    first = labelled_malformed_replies(seed=1234)
    again = labelled_malformed_replies(seed=1234)
    other = malformed_replies(seed=4321)
    seen: dict[str, int] = {}
    differs = False
    for _ in range(count):
        category, value = next(first)
        assert next(again) == (category, value)
        differs = differs or next(other) != value
        seen[category] = seen.get(category, 0) + 1
        if isinstance(value, BaseException):
            continue
        normalized = normalize_reply(value)
        assert isinstance(normalized.text, str)
    assert set(seen) == set(MALFORMED_CATEGORIES)
    assert differs
    assert min(seen.values()) >= count // len(MALFORMED_CATEGORIES) - 1


def test_malformed_reply_helpers() -> None:
    rng = random.Random(5)
    for category in MALFORMED_CATEGORIES:
        normalize_reply(malformed_reply(category, rng))
    assert malformed_reply("empty_string", rng) == ""
    assert isinstance(malformed_reply("empty_form", rng), Empty)
    manager = json.loads(malformed_reply("manager_wrong_types", random.Random(0)))
    assert manager != {"bind": [], "requests": []}
    loop = malformed_reply("tool_infinite_loop", random.Random(0))
    assert "while True:" in loop and "```python" in loop and "```json" in loop
    for seed in range(6):
        deep = malformed_reply("deep_braces", random.Random(seed))
        text = deep if isinstance(deep, str) else deep["tool_calls"][0]["arguments"]
        assert '{"a":' * DEEP_NESTING in text
    prose = random_malformed_reply(random.Random(9), ["give_up_prose"])
    assert isinstance(prose, str) and prose == random_malformed_reply(
        random.Random(9), ["give_up_prose"]
    )
    with pytest.raises(ValueError, match="unknown malformed-reply categories"):
        malformed_reply("nope", rng)
    with pytest.raises(ValueError, match="no malformed-reply categories"):
        next(malformed_replies(1, categories=[]))

    model = ScriptedChatModel(malformed_responder(seed=3, categories=["whitespace", "empty_form"]))
    assert all(not model.invoke(str(i)).content.strip() for i in range(6))
