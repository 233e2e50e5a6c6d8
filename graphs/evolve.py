"""The batch graph: a batch of tasks in parallel, then absorbing, then one commit.

    START --Send per task--> solve_task (the episode graph, one per task)
    solve_task   -> absorb_tools (cluster + merge the batch's new tools)
    absorb_tools -> review_tools (a human decision, only with tool_approval)
    review_tools -> commit_batch (one atomic, idempotent commit) -> END

``commit_batch`` also writes ``finished_at``: a batch is finished only when its
state has that marker (a checkpoint without pending nodes can still be one
whose fan-out never ran, when a process was killed at the right moment).

Every episode reads the library as it was at the start of the batch (episodes
defer their commits) plus its own local tools, never another episode's.
``create_evolve_graph()`` returns the compiled graph; ``build_evolve_graph()``
the uncompiled builder; ``graph`` is the compiled graph that ``langgraph.json``
serves.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired

from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from insitu.context import InsituContext
from insitu.graphs.episode import RECURSION_LIMIT, create_episode_graph
from insitu.graphs.interpreter import build_interpreter_graph
from insitu.graphs.routes import fan_out_tasks
from insitu.graphs.state import TokenCounts, merge_usage
from insitu.nodes import absorb, batch, review
from insitu.services import Services

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langgraph.checkpoint.base import BaseCheckpointSaver
    from langgraph.graph.state import CompiledStateGraph

    from insitu.sandbox import Sandbox
    from insitu.tool_store import ToolStore

#: Default parallel episodes of a compiled batch graph (LangGraph's max_concurrency).
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
    rejected_tools: list[dict[str, Any]]  # by a human reviewer (tool_approval)
    finished_at: str  # ISO time; written by commit_batch, the last node: the batch is done


class SolveInput(TypedDict):
    """What the fan-out sends to one ``solve_task``."""

    task: BatchTask


def build_evolve_graph(
    *,
    models: BaseChatModel | Mapping[str, BaseChatModel] | None = None,
    tool_store: ToolStore | None = None,
    sandbox: Sandbox | None = None,
    solver: Literal["episode", "interpreter"] = "episode",
) -> StateGraph:
    """Return the uncompiled batch graph.

    Args:
        models: A chat model for every role, or a mapping role -> model (see
            ``build_episode_graph``; the ``absorber`` role confirms and merges).
        tool_store: An open ``ToolStore`` (default: the context's ``store_dir``).
        sandbox: A ``Sandbox`` (default: one per process from the context).
        solver: The graph each task runs: the ``episode`` graph, or the
            python-interpreter baseline (``interpreter``; it builds no tools).

    Returns:
        A ``StateGraph`` with input ``EvolveInput``, output ``EvolveOutput`` and
        context ``InsituContext``.
    """
    services = Services(models=models, tool_store=tool_store, sandbox=sandbox)
    # Episodes keep no checkpoints of their own (checkpointer=False): a batch resumes
    # task by task (a finished episode's result is a saved write of the batch run;
    # an unfinished one runs again, harmlessly, as its commit was deferred), and
    # the dozen state snapshots per episode would cost every batch CPU time.
    if solver == "interpreter":
        episode = build_interpreter_graph(
            models=models, tool_store=tool_store, sandbox=sandbox
        ).compile(checkpointer=False)
    else:
        episode = create_episode_graph(
            checkpointer=False, models=models, tool_store=tool_store, sandbox=sandbox
        )
    builder = StateGraph(
        EvolveState,
        context_schema=InsituContext,
        input_schema=EvolveInput,
        output_schema=EvolveOutput,
    )
    builder.add_node(
        "solve_task",
        partial(batch.solve_task, episode=episode, slots=batch.EpisodeSlots()),
        input_schema=SolveInput,
    )
    builder.add_node("absorb_tools", partial(absorb.absorb_tools, services=services))
    builder.add_node("review_tools", partial(review.review_batch_tools, services=services))
    builder.add_node("commit_batch", partial(absorb.commit_batch, services=services))
    builder.add_conditional_edges(START, fan_out_tasks, ["solve_task", "absorb_tools"])
    builder.add_edge("solve_task", "absorb_tools")
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
) -> CompiledStateGraph:
    """Return the compiled batch graph, with recursion and concurrency limits set.

    Args:
        models: Chat model(s) (see :func:`build_evolve_graph`).
        tool_store: An open ``ToolStore`` (default: the context's ``store_dir``).
        sandbox: A ``Sandbox`` (default: one per process from the context).
        solver: ``episode`` or the ``interpreter`` baseline.
        checkpointer: Optional LangGraph checkpointer (resume a batch by thread id).
        name: The graph's name.
        max_concurrency: Threads LangGraph may use for the batch's episodes; the
            context's ``batch_concurrency`` bounds how many actually run at once.
    """
    builder = build_evolve_graph(
        models=models, tool_store=tool_store, sandbox=sandbox, solver=solver
    )
    compiled = builder.compile(checkpointer=checkpointer, name=name)
    # LangGraph runs a streaming consumer's waiter in the same bounded pool as the
    # nodes: one extra slot keeps max_concurrency=1 from starving the only episode.
    return compiled.with_config(
        recursion_limit=RECURSION_LIMIT, max_concurrency=max_concurrency + 1
    )


#: The compiled graph for LangGraph Studio (``langgraph.json``).
graph = create_evolve_graph()
