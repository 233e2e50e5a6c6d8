"""The reflection subgraph: runs after an episode's answer is written.

update_tool_stats -> repair_failed_tools -> review_tools -> summarize_episode
    -> distill_usage_notes -> harvest_cases -> commit_tools

``review_tools`` pauses for a human decision (a LangGraph interrupt) only when
``tool_approval`` asks for it (see ``nodes/review.py``). ``summarize_episode``
writes the note and the episode's experience, ``distill_usage_notes`` and
``harvest_cases`` what it learned about its tools (``nodes/learning.py``), and
``commit_tools`` commits the tools with all of it in one transaction (or hands
it to the batch).
"""

from __future__ import annotations

from typing import Any, NotRequired

from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from insitu.aio import node
from insitu.context import CommitMode, InsituContext
from insitu.graphs.state import (
    BuildFailure,
    Candidate,
    EpisodeFailure,
    EpisodeMetrics,
    EpisodeState,
    ExecutorReport,
    Invocation,
    TokenCounts,
)
from insitu.nodes import learning, reflection, review
from insitu.services import Services


class ReflectionInput(TypedDict):
    """What reflection reads from a finished episode."""

    task: str
    task_id: str
    workdir: str
    answer: str
    status: str
    invocations: list[Invocation]
    local_tools: NotRequired[dict[str, dict[str, Any]]]
    repaired_tools: NotRequired[dict[str, dict[str, Any]]]
    build_failures: NotRequired[list[BuildFailure]]
    failure: NotRequired[EpisodeFailure]
    report: NotRequired[ExecutorReport]
    rounds: NotRequired[int]
    plan_reused: NotRequired[str]
    executor_steps: NotRequired[int]
    guidance: NotRequired[str]
    bound_tools: NotRequired[list[str]]
    candidates: NotRequired[list[Candidate]]
    plan_error: NotRequired[str]
    tokens_spent: NotRequired[int]


class ReflectionOutput(TypedDict):
    """What reflection hands back: counters, committed or deferred tools, the note."""

    metrics: EpisodeMetrics
    tools_used: list[str]
    tools_created: list[str]
    tools_repaired: list[str]
    repaired_tools: dict[str, dict[str, Any]]
    new_tools: list[dict[str, Any]]
    library_calls: list[dict[str, Any]]
    commit_error: NotRequired[str]
    rejected_tools: NotRequired[list[dict[str, Any]]]
    reflection: str
    usage: dict[str, TokenCounts]
    learning: NotRequired[dict[str, list[dict[str, Any]]]]


def build_reflection_graph(
    services: Services | None = None, *, commit_mode: CommitMode | None = None
) -> StateGraph:
    """Return the uncompiled reflection graph.

    Args:
        services: Live models, store and sandbox (defaults from the context).
        commit_mode: ``store`` or ``defer`` for every run of this graph (the batch
            graph's episodes defer); ``None``: the context's ``commit_mode``.
    """
    services = services or Services()
    bound = {"services": services, "commit_mode": commit_mode}
    builder = StateGraph(
        EpisodeState,
        context_schema=InsituContext,
        input_schema=ReflectionInput,
        output_schema=ReflectionOutput,
    )
    builder.add_node("update_tool_stats", node(reflection.update_tool_stats, **bound))
    builder.add_node("repair_failed_tools", node(reflection.repair_failed_tools, services=services))
    builder.add_node("review_tools", node(review.review_episode_tools, **bound))
    builder.add_node("summarize_episode", node(reflection.summarize_episode, services=services))
    builder.add_node("distill_usage_notes", node(learning.distill_usage_notes, services=services))
    builder.add_node("harvest_cases", node(learning.harvest_cases, services=services))
    builder.add_node("commit_tools", node(reflection.commit_tools, **bound))
    builder.add_edge(START, "update_tool_stats")
    builder.add_edge("update_tool_stats", "repair_failed_tools")
    builder.add_edge("repair_failed_tools", "review_tools")
    builder.add_edge("review_tools", "summarize_episode")
    builder.add_edge("summarize_episode", "distill_usage_notes")
    builder.add_edge("distill_usage_notes", "harvest_cases")
    builder.add_edge("harvest_cases", "commit_tools")
    builder.add_edge("commit_tools", END)
    return builder
