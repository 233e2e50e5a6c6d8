"""Episodes on asyncio: cancelled at their time limit, bounded by the setting, ``arun_task``.

The models are the scripted team (a test double) behind the real ``ChatOpenAI``
client and a scripted OpenAI-protocol server on loopback, so a cancelled episode
is seen where it matters: its HTTP request ends (the server sees the client
leave), and the batch goes on at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from langchain_core.messages import convert_to_messages
from langchain_openai import ChatOpenAI

from insitu import aio, arun_task
from insitu.graphs.evolve import create_evolve_graph
from insitu.testing.openai_server import ScriptedOpenAIServer
from insitu.testing.scripted import Slow
from insitu.testing.team import ScriptedTeam, prompt_text

MEAN = "What is the mean of 3, 5, 10 and 2?"
DATES = "How many days are there between 2024-01-01 and 2024-03-01?"


def openai_model(server: ScriptedOpenAIServer) -> ChatOpenAI:
    return ChatOpenAI(base_url=server.base_url, api_key="k", model="m", max_retries=0)


def batch(*questions: str) -> dict[str, Any]:
    tasks = [{"id": f"t{i}", "question": q} for i, q in enumerate(questions)]
    return {"tasks": tasks, "batch_id": "b1"}


def test_an_episode_past_its_limit_is_cancelled_and_its_request_aborted(store, sandbox) -> None:
    respond = ScriptedTeam().openai_responder()

    def responder(body: dict[str, Any]) -> Any:
        text = prompt_text(convert_to_messages(body["messages"]))
        if text.startswith("You are the Executor") and "hang" in text:
            return Slow(600, "never sent")  # a hung endpoint: only a cancel ends it
        return respond(body)

    with ScriptedOpenAIServer(responder, api_key="k") as server:
        graph = create_evolve_graph(models=openai_model(server), tool_store=store, sandbox=sandbox)
        started = time.monotonic()
        final = aio.run(
            graph.ainvoke(
                batch(MEAN, "hang: " + DATES),
                context={"store_dir": str(store.path), "episode_timeout_s": 4.0},
            )
        )
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 10
        while server.abandoned < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        abandoned = server.abandoned
    # The hung request ended when its episode was cancelled: the server saw its client leave.
    assert abandoned == 1
    assert elapsed < 30  # the batch did not wait for the 600 s reply
    results = {r["task_id"]: r for r in final["results"]}
    assert results["t0"]["status"] == "completed" and results["t0"]["error_kind"] is None
    hung = results["t1"]
    assert hung["status"] == "failed" and hung["error_kind"] == "timeout"
    assert "episode_timeout_s=4" in hung["error"] and "cancelled" in hung["error"]
    assert hung["failure"]["kind"] == "timeout"
    # Its tools are discarded; the tokens its finished requests spent are kept.
    assert hung["new_tools"] == [] and hung["tools_created"] == []
    assert hung["usage"]["manager"]["calls"] == 1
    assert "executor" not in hung["usage"]  # the aborted request has no reply to count
    assert final["absorb"]["added"] == ["summarize_numbers"]


def test_a_cancelled_coroutine_ends_at_once(store, sandbox) -> None:
    """The hung model call is a coroutine that is cancelled, not a thread left running."""
    from insitu.testing.scripted import ScriptedChatModel

    ended: list[str] = []

    class HangingModel(ScriptedChatModel):
        async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
            if prompt_text(messages).startswith("You are the Manager") and "hang" in (
                prompt_text(messages)
            ):
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    ended.append("cancelled")
                    raise
            return await super()._agenerate(messages, stop, run_manager, **kwargs)

    team = ScriptedTeam()
    graph = create_evolve_graph(
        models=HangingModel(responder=team.respond), tool_store=store, sandbox=sandbox
    )
    started = time.monotonic()
    final = aio.run(
        graph.ainvoke(
            batch("hang: " + MEAN),
            context={"store_dir": str(store.path), "episode_timeout_s": 1.0},
        )
    )
    assert time.monotonic() - started < 15
    assert ended == ["cancelled"]
    (result,) = final["results"]
    assert result["error_kind"] == "timeout"


def test_model_requests_in_flight_never_exceed_batch_concurrency(store, sandbox) -> None:
    with ScriptedOpenAIServer(
        ScriptedTeam().openai_responder(), api_key="k", latency_s=0.3
    ) as server:
        graph = create_evolve_graph(
            models=openai_model(server), tool_store=store, sandbox=sandbox, max_concurrency=64
        )
        questions = [f"What is the mean of {i}, 5, 10 and 2?" for i in range(8)]
        final = aio.run(
            graph.ainvoke(
                batch(*questions),
                context={"store_dir": str(store.path), "batch_concurrency": 3},
            )
        )
        peak = server.peak_in_flight
    assert all(r["status"] == "completed" for r in final["results"])
    # Each episode has one request in flight at a time, and 3 episodes run at once.
    assert peak == 3


def test_arun_task_runs_on_the_callers_loop(store, sandbox) -> None:
    team = ScriptedTeam()

    async def main() -> tuple[Any, str]:
        result = await arun_task(
            MEAN,
            models=team.model(),
            tool_store=store,
            sandbox=sandbox,
            context={"store_dir": str(store.path)},
            checkpoint=False,
        )
        return result, threading_name()

    def threading_name() -> str:
        import threading

        return threading.current_thread().name

    result, thread = asyncio.run(main())
    assert result.completed and result.tools_created == ["summarize_numbers"]
    assert thread == "MainThread"  # not insitu's own loop
    # Checkpoints (AsyncSqliteSaver in the store) work from a coroutine too.
    again = asyncio.run(
        arun_task(
            MEAN,
            models=team.model(),
            tool_store=store,
            sandbox=sandbox,
            context={"store_dir": str(store.path)},
        )
    )
    assert again.completed and again.tools_used == ["summarize_numbers@1"]
