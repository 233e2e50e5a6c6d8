"""The batch graph: a batch of tasks in parallel, then absorbing, then one commit.

    START -> schedule_tasks --Send per task of the next wave--> solve_task (the episode
             graph as a subgraph, one per task, at most batch_concurrency at once; an
             asyncio task each, cancelled at episode_timeout_s) -> schedule_tasks
    schedule_tasks -> absorb_tools once every task has a result (cluster + merge)
    absorb_tools -> review_tools (a human decision, only with tool_approval)
    review_tools -> commit_batch (one atomic, idempotent commit) -> END

``commit_batch`` also writes ``finished_at``: a batch is finished only when its
state has that marker (a checkpoint without pending nodes can still be one
whose fan-out never ran, when a process was killed at the right moment).

Every episode reads the library as it was at the start of the batch (episodes
defer their commits) plus its own local tools, never another episode's.
Run it with ``ainvoke``/``astream`` (``insitu evolve`` and
:func:`insitu.evolve.evolve` do, on insitu's event loop; so does Studio): the
episodes are asyncio tasks, cancelled at ``episode_timeout_s``. Under
``invoke``/``stream`` they are LangGraph's threads instead, stopped by their
roles at the first step past the limit. ``create_evolve_graph()`` returns the compiled graph;
``build_evolve_graph()`` the uncompiled builder; ``graph`` is the compiled graph
that ``langgraph.json`` serves.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired

from langgraph._internal._runnable import RunnableCallable
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from typing_extensions import TypedDict

from insitu.aio import node
from insitu.context import InsituContext
from insitu.graphs.episode import RECURSION_LIMIT, create_episode_graph
from insitu.graphs.interpreter import build_interpreter_graph
from insitu.graphs.routes import fan_out_tasks
from insitu.graphs.state import EpisodeInput, TokenCounts, merge_usage
from insitu.nodes import absorb, batch, review
from insitu.services import Services

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langgraph.checkpoint.base import BaseCheckpointSaver
    from langgraph.graph.state import CompiledStateGraph

    from insitu.sandbox import Sandbox
    from insitu.tool_store import ToolStore

#: Default bound of a compiled batch graph's parallel tasks (LangGraph's max_concurrency);
#: the episodes are bounded by their waves (``batch_concurrency``).
DEFAULT_CONCURRENCY = 16


class BatchTask(TypedDict):
    """One task of a batch."""

    id: str
    question: str
    files: NotRequired[list[str]]


class EvolveInput(TypedDict):
    """A batch of tasks, and an id that makes its commit idempotent."""

    tasks: list[BatchTask]
    batch_id: NotRequired[str]


class EvolveOutput(TypedDict):
    """Per-task results, what absorbing did, the commit, and when the batch finished."""

    batch_id: str
    results: list[dict[str, Any]]
    absorb: dict[str, Any]
    commit: dict[str, Any]
    usage: dict[str, TokenCounts]
    rejected_tools: NotRequired[list[dict[str, Any]]]
    finished_at: str


class EvolveState(TypedDict, total=False):
    """The batch graph's state; ``results`` collects one entry per parallel episode."""

    tasks: list[BatchTask]
    batch_id: str
    results: Annotated[list[dict[str, Any]], operator.add]
    changes: dict[str, Any]
    absorb: dict[str, Any]
    commit: dict[str, Any]
    usage: Annotated[dict[str, TokenCounts], merge_usage]
    wave_size: int  # episodes run at once (batch_concurrency), written by schedule_tasks
    rejected_tools: list[dict[str, Any]]  # by a human reviewer (tool_approval)
    finished_at: str  # ISO time; written by commit_batch, the last node: the batch is done


def build_evolve_graph(
    *,
    models: BaseChatModel | Mapping[str, BaseChatModel] | None = None,
    tool_store: ToolStore | None = None,
    sandbox: Sandbox | None = None,
    solver: Literal["episode", "interpreter"] = "episode",
    episode_checkpoints: bool = True,
) -> StateGraph:
    """Return the uncompiled batch graph.

    Args:
        models: A chat model for every role, or a mapping role -> model (see
            ``build_episode_graph``; the ``absorber`` role confirms and merges).
        tool_store: An open ``ToolStore`` (default: the context's ``store_dir``).
        sandbox: A ``Sandbox`` (default: one per process from the context).
        solver: The graph each task runs: the ``episode`` graph, or the
            python-interpreter baseline (``interpreter``; it builds no tools).
        episode_checkpoints: Whether each episode checkpoints its own steps with
            the batch's checkpointer (a task can then be inspected, forked and
            resumed mid-way, in Studio too); without them a batch resumes task by
            task (an unfinished episode runs again: harmless, as its commit is
            deferred) and spends no CPU time on the episodes' snapshots.

    Returns:
        A ``StateGraph`` with input ``EvolveInput``, output ``EvolveOutput`` and
        context ``InsituContext``.
    """
    services = Services(models=models, tool_store=tool_store, sandbox=sandbox)
    # Each task is a real subgraph (Studio expands it); its whole output is one item
    # of ``results`` and its new tools wait for absorbing (commit_mode="defer").
    checkpointer = None if episode_checkpoints else False
    if solver == "interpreter":
        interpreter = build_interpreter_graph(
            models=models, tool_store=tool_store, sandbox=sandbox, output_key="results"
        )
        episode = interpreter.compile(checkpointer=checkpointer, name="interpreter")
    else:
        episode = create_episode_graph(
            models=models,
            tool_store=tool_store,
            sandbox=sandbox,
            checkpointer=checkpointer,
            output_key="results",
            commit_mode="defer",
        )
    builder = StateGraph(
        EvolveState,
        context_schema=InsituContext,
        input_schema=EvolveInput,
        output_schema=EvolveOutput,
    )

    # Closures over ``episode``, so that LangGraph (and Studio) see it as the subgraph.
    async def solve_task(task: EpisodeInput, runtime: Runtime[InsituContext]) -> dict[str, Any]:
        return await batch.solve_task(task, runtime, episode=episode)

    def solve_task_in_thread(
        task: EpisodeInput, runtime: Runtime[InsituContext]
    ) -> dict[str, Any]:  # LangGraph injects from this signature into both variants
        return batch.solve_task_in_thread(task, episode=episode)

    builder.add_node("schedule_tasks", node(batch.schedule_tasks))
    builder.add_node(
        "solve_task",
        RunnableCallable(solve_task_in_thread, solve_task, name="solve_task", trace=False),
        input_schema=EpisodeInput,
        error_handler=batch.episode_crashed,
    )
    builder.add_node("absorb_tools", node(absorb.absorb_tools, services=services))
    builder.add_node("review_tools", node(review.review_batch_tools, services=services))
    builder.add_node("commit_batch", node(absorb.commit_batch, services=services))
    builder.add_edge(START, "schedule_tasks")
    builder.add_conditional_edges("schedule_tasks", fan_out_tasks, ["solve_task", "absorb_tools"])
    builder.add_edge("solve_task", "schedule_tasks")
    builder.add_edge("absorb_tools", "review_tools")
    builder.add_edge("review_tools", "commit_batch")
    builder.add_edge("commit_batch", END)
    return builder


def create_evolve_graph(
    *,
    models: BaseChatModel | Mapping[str, BaseChatModel] | None = None,
    tool_store: ToolStore | None = None,
    sandbox: Sandbox | None = None,
    solver: Literal["episode", "interpreter"] = "episode",
    checkpointer: BaseCheckpointSaver | None = None,
    name: str = "evolve",
    max_concurrency: int = DEFAULT_CONCURRENCY,
    episode_checkpoints: bool = True,
) -> CompiledStateGraph:
    """Return the compiled batch graph, with recursion and concurrency limits set.

    Args:
        models: Chat model(s) (see :func:`build_evolve_graph`).
        tool_store: An open ``ToolStore`` (default: the context's ``store_dir``).
        sandbox: A ``Sandbox`` (default: one per process from the context).
        solver: ``episode`` or the ``interpreter`` baseline.
        checkpointer: Optional LangGraph checkpointer (resume a batch by thread id).
        name: The graph's name.
        max_concurrency: Tasks LangGraph may run at once (at least the largest
            ``batch_concurrency`` you will run with, which bounds the episodes).
        episode_checkpoints: See :func:`build_evolve_graph`.
    """
    builder = build_evolve_graph(
        models=models,
        tool_store=tool_store,
        sandbox=sandbox,
        solver=solver,
        episode_checkpoints=episode_checkpoints,
    )
    compiled = builder.compile(checkpointer=checkpointer, name=name)
    # Under invoke/stream LangGraph's bound also counts a streaming consumer's waiter;
    # the episodes are bounded by their waves (batch_concurrency): this only keeps room.
    return compiled.with_config(
        recursion_limit=RECURSION_LIMIT, max_concurrency=max_concurrency + 1
    )


#: The compiled graph for LangGraph Studio (``langgraph.json``).
graph = create_evolve_graph()
