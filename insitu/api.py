"""The Python API: run one task against a tool library and get a typed result.

    from insitu import run_task
    result = run_task("What is the median of 3, 1, 7, 4?", store_dir=".insitu")
    print(result.answer, result.tools_created)

    result = await arun_task("...", store_dir=".insitu")  # from a coroutine

Chat models can be injected (``models=``); by default every role uses the
model its setting names (``provider:model``, or a bare name on the
OpenAI-compatible endpoint of ``OPENAI_BASE_URL``). A model endpoint that
fails raises ``insitu.llm.ModelEndpointError``. Runs are checkpointed in the
store directory (SQLite), or in the database of the ``checkpoint_url`` setting
(PostgreSQL; see :mod:`insitu.checkpoints`), so an interrupted task resumes by
thread id.

The episode runs on asyncio: :func:`arun_task` on the caller's event loop,
:func:`run_task` on insitu's own (:mod:`insitu.aio`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from insitu import aio
from insitu.checkpoints import open_async_checkpointer
from insitu.context import InsituContext
from insitu.services import check_model_configuration, open_store

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langgraph.checkpoint.base import BaseCheckpointSaver

    from insitu.sandbox import Sandbox
    from insitu.tool_store import ToolStore


class EpisodeResult(BaseModel):
    """The typed result of one task."""

    task_id: str
    thread_id: str
    answer: str
    status: str = Field(
        description="completed | incomplete | failed, or paused: awaiting_review (a tool "
        "review) | paused (pause_before)"
    )
    tools_used: list[str] = Field(default_factory=list)
    tools_created: list[str] = Field(default_factory=list)
    tools_repaired: list[str] = Field(default_factory=list)
    metrics: dict[str, int] = Field(default_factory=dict)
    usage: dict[str, dict[str, int]] = Field(default_factory=dict)
    reflection: str = ""
    failure: dict[str, Any] | None = Field(
        default=None, description="Why a failed task failed (a model endpoint), as a record."
    )
    review: dict[str, Any] | None = Field(
        default=None,
        description="What the paused run waits for: the tools awaiting a reviewer's decision "
        "(awaiting_review), or the step it paused before (paused); resume with "
        "run_task(None, thread_id=..., resume=...).",
    )
    rejected_tools: list[dict[str, Any]] = Field(
        default_factory=list, description="Tools a reviewer kept out of the library."
    )
    sandbox: dict[str, str] = Field(
        default_factory=dict,
        description="Where the tools ran: the sandbox backend and its isolation "
        "(strong, weak or none).",
    )

    @property
    def completed(self) -> bool:
        """Whether the task was completed."""
        return self.status == "completed"


def _paused_status(payload: dict[str, Any]) -> str:
    """The status of a run that an interrupt paused: a tool review, or ``pause_before``."""
    from insitu.nodes.common import PAUSE_KIND

    return "paused" if payload.get("kind") == PAUSE_KIND else "awaiting_review"


def run_task(task: str | None, **options: Any) -> EpisodeResult:
    """Solve one task with the episode graph, synchronously: :func:`arun_task` on insitu's loop.

    Takes the same arguments as :func:`arun_task` and raises the same errors.
    Ctrl-C cancels the episode (its checkpoints stay, so the task resumes).
    """
    return aio.run(arun_task(task, **options))


async def arun_task(
    task: str | None,
    *,
    files: Sequence[str | Path] = (),
    task_id: str | None = None,
    context: InsituContext | Mapping[str, Any] | None = None,
    store_dir: str | Path | None = None,
    models: BaseChatModel | Mapping[str, BaseChatModel] | None = None,
    tool_store: ToolStore | None = None,
    sandbox: Sandbox | None = None,
    thread_id: str | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: bool = True,
    checkpointer: BaseCheckpointSaver | None = None,
    resume: Any = None,
) -> EpisodeResult:
    """Solve one task with the episode graph, on the caller's event loop.

    Model requests are awaited; sandboxed tool calls and the store run on
    insitu's blocking threads (``blocking_threads``).

    Args:
        task: The question or instruction. ``None`` resumes ``thread_id`` from
            its last checkpoint (with ``resume``: a run paused for a review).
        files: Files copied into the task's working directory.
        task_id: Stable id (default: derived from the task text).
        context: Settings (``InsituContext`` or a dict of its fields).
        store_dir: Shortcut for ``context.store_dir``.
        models: Chat model(s) to use instead of ``ChatOpenAI`` from the environment.
        tool_store: An open ``ToolStore`` to use.
        sandbox: A ``Sandbox`` to use.
        thread_id: Checkpoint thread (default: the task id).
        on_event: Receives each progress event (dicts with ``event`` and ``message``).
        checkpoint: Keep checkpoints: in the store directory (SQLite), or in the
            ``checkpoint_url`` database (PostgreSQL).
        checkpointer: A LangGraph checkpointer to use instead (e.g. Postgres, or
            the one of your own application); ``checkpoint`` is then ignored.
        resume: The reviewer's decisions for a run paused by ``tool_approval``
            (``result.status == "awaiting_review"``): passed as
            ``Command(resume=...)``; see ``insitu.nodes.review`` for their form.

    Returns:
        The answer, status, tools used and created, counters and token usage;
        or, paused for a review, status ``awaiting_review`` with the tools to
        review in ``review``.

    Raises:
        ConfigurationError: No model endpoint and no injected models, or an
            executor model that cannot call tools.
        InvalidTaskError: An empty or unusable task.
        ModelEndpointError: A role's model endpoint failed (after its retries),
            or the preflight found it dead; ``error.result`` holds the episode's
            result (tokens spent included) when the episode ran.
    """
    from langgraph.types import Command

    from insitu.graphs.episode import create_episode_graph
    from insitu.llm import ConfigurationError, ModelEndpointError, preflight
    from insitu.nodes.workspace import check_task
    from insitu.services import Services

    settings = InsituContext.coerce(context)
    if store_dir is not None:
        settings = replace(settings, store_dir=str(store_dir))
    aio.set_blocking_threads(settings.blocking_threads)
    if models is None:
        check_model_configuration(settings)
        await preflight(settings)
    else:
        Services(models=models).check_models(settings)
    if settings.tool_approval != "none" and checkpointer is None and not checkpoint:
        raise ConfigurationError(
            "tool_approval pauses the run until a reviewer decides, which needs checkpoints: "
            "pass checkpoint=True or a checkpointer"
        )
    if resume is not None:
        if thread_id is None:
            raise ValueError("resume= needs the thread_id of the run paused for a review")
        payload: Any = Command(resume=resume)
    elif task is not None:
        task, task_id = check_task({"task": task, "task_id": task_id})
        payload = {
            "task": task,
            "task_id": task_id,
            "files": [str(f) for f in files],
        }
    elif thread_id is None:
        raise ValueError("give a task, or the thread_id of an interrupted run to resume")
    else:
        payload = None
    thread = thread_id or task_id
    config = {"configurable": {"thread_id": thread}}
    if tool_store is None:
        # Opened before the checkpoints are created: a store that cannot be used
        # (read-only, damaged) is refused with nothing written in it.
        tool_store = await aio.blocking(open_store, settings)

    async def execute(checkpointer: Any) -> dict[str, Any]:
        graph = create_episode_graph(
            checkpointer=checkpointer, models=models, tool_store=tool_store, sandbox=sandbox
        )
        final: dict[str, Any] = {}
        review: dict[str, Any] | None = None
        # subgraphs=True: the reflection subgraph's progress events reach on_event too.
        async for namespace, mode, chunk in graph.astream(
            payload,
            config,
            context=settings,
            stream_mode=["custom", "values", "updates"],
            subgraphs=True,
        ):
            if mode == "custom" and on_event is not None:
                on_event(chunk)
            elif mode == "values" and not namespace:
                final = chunk
            elif mode == "updates" and not namespace and "__interrupt__" in chunk:
                review = chunk["__interrupt__"][0].value
        return {**final, "review": review} if review else final

    if checkpointer is not None:
        final = await execute(checkpointer)
    elif checkpoint:
        async with open_async_checkpointer(
            settings.store_dir, url=settings.checkpoint_url
        ) as saver:
            final = await execute(saver)
    else:
        final = await execute(None)
    review = final.get("review")
    result = EpisodeResult(
        task_id=final.get("task_id") or thread or "",
        thread_id=thread or "",
        answer=final.get("answer", ""),
        status=_paused_status(review) if review else final.get("status", "failed"),
        tools_used=final.get("tools_used", []),
        tools_created=final.get("tools_created", []),
        tools_repaired=final.get("tools_repaired", []),
        metrics=dict(final.get("metrics") or {}),
        usage=dict(final.get("usage") or {}),
        reflection=final.get("reflection", ""),
        failure=final.get("failure"),
        review=review,
        rejected_tools=list(final.get("rejected_tools") or []),
        sandbox=dict(final.get("sandbox") or {}),
    )
    if result.status == "failed" and (result.failure or {}).get("kind") == "endpoint":
        error = ModelEndpointError.from_failure(result.failure)
        error.result = result
        raise error
    return result
