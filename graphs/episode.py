"""The episode graph: one task in, one answer out, and a better library afterwards.

    START -> prepare_workspace -> plan_task
    plan_task    -> build_tools | execute_task | write_answer
    build_tools  -> execute_task | plan_task | write_answer
    execute_task -> write_answer | plan_task | build_tools
    write_answer -> reflect (subgraph) -> END

``build_episode_graph()`` returns the uncompiled builder for composition;
``graph`` is the compiled graph that ``langgraph.json`` exposes to Studio.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING

from langgraph.graph import END, START, StateGraph

from insitu.context import InsituContext
from insitu.graphs.reflection import build_reflection_graph
from insitu.graphs.routes import (
    route_after_building,
    route_after_execution,
    route_after_planning,
)
from insitu.graphs.state import EpisodeInput, EpisodeOutput, EpisodeState
from insitu.nodes import executor, integrator, manager, tool_developer, workspace
from insitu.services import Services

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from insitu.sandbox import Sandbox
    from insitu.tool_store import ToolStore

#: Upper bound on node executions per run; the loops are bounded by counters in
#: state well below this, so hitting it means a bug, not a hard task.
RECURSION_LIMIT = 200


def build_episode_graph(
    *,
    models: BaseChatModel | Mapping[str, BaseChatModel] | None = None,
    store: ToolStore | None = None,
    sandbox: Sandbox | None = None,
    checkpoint_reflection: bool = True,
) -> StateGraph:
    """Return the uncompiled episode graph.

    Args:
        models: A chat model for every role, or a mapping role -> model
            (``manager``, ``tool_developer``, ``executor``, ``integrator``,
            ``reflection``, ``default``). Default: ``ChatOpenAI`` per role from
            the context and environment.
        store: An open ``ToolStore`` (default: the context's ``store_dir``).
        sandbox: A ``Sandbox`` (default: one per process from the context).
        checkpoint_reflection: Whether the reflection subgraph checkpoints its
            steps with the episode's checkpointer (LangGraph lends a parent's
            checkpointer to subgraphs even when the parent itself keeps none,
            so an episode without checkpoints turns this off).

    Returns:
        A ``StateGraph`` with input ``EpisodeInput``, output ``EpisodeOutput`` and
        context ``InsituContext``; compile it, or add it to a parent graph.
    """
    services = Services(models=models, store=store, sandbox=sandbox)
    builder = StateGraph(
        EpisodeState,
        context_schema=InsituContext,
        input_schema=EpisodeInput,
        output_schema=EpisodeOutput,
    )
    builder.add_node("prepare_workspace", partial(workspace.prepare_workspace, services=services))
    builder.add_node("plan_task", partial(manager.plan_task, services=services))
    builder.add_node("build_tools", partial(tool_developer.build_tools, services=services))
    builder.add_node("execute_task", partial(executor.execute_task, services=services))
    builder.add_node("write_answer", partial(integrator.write_answer, services=services))
    reflection = build_reflection_graph(services)
    builder.add_node(
        "reflect", reflection.compile(checkpointer=None if checkpoint_reflection else False)
    )

    builder.add_edge(START, "prepare_workspace")
    builder.add_edge("prepare_workspace", "plan_task")
    builder.add_conditional_edges(
        "plan_task", route_after_planning, ["build_tools", "execute_task", "write_answer"]
    )
    builder.add_conditional_edges(
        "build_tools", route_after_building, ["execute_task", "plan_task", "write_answer"]
    )
    builder.add_conditional_edges(
        "execute_task", route_after_execution, ["write_answer", "plan_task", "build_tools"]
    )
    builder.add_edge("write_answer", "reflect")
    builder.add_edge("reflect", END)
    return builder


def compile_episode_graph(checkpointer=None, **kwargs):
    """Compile :func:`build_episode_graph` with the recursion limit set.

    Args:
        checkpointer: Optional LangGraph checkpointer (resume by thread id);
            ``False``: no checkpoints at all, not even under a parent graph's
            checkpointer (the reflection subgraph included).
        **kwargs: Passed to :func:`build_episode_graph`.
    """
    builder = build_episode_graph(checkpoint_reflection=checkpointer is not False, **kwargs)
    compiled = builder.compile(checkpointer=checkpointer, name="episode")
    return compiled.with_config(recursion_limit=RECURSION_LIMIT)


#: The compiled graph for LangGraph Studio (``langgraph.json``).
graph = compile_episode_graph()
