"""The episode graph: one task in, one answer out, and a better library afterwards.

    START -> prepare_workspace -> plan_task
    plan_task    -> build_tools | execute_task | write_answer
    build_tools  -> execute_task | plan_task | write_answer
    execute_task -> write_answer | plan_task | build_tools
    write_answer -> reflect (subgraph) -> END

``create_episode_graph()`` returns the compiled graph (to invoke, or to add to a
parent graph; ``send_tasks`` fans a parent's tasks out to it);
``build_episode_graph()`` returns the uncompiled builder; ``graph`` is the
compiled graph that ``langgraph.json`` exposes to Studio.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from typing_extensions import TypedDict

from insitu.aio import node
from insitu.context import CommitMode, InsituContext
from insitu.events import emit
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
    from langgraph.checkpoint.base import BaseCheckpointSaver
    from langgraph.graph.state import CompiledStateGraph

    from insitu.sandbox import Sandbox
    from insitu.tool_store import ToolStore

#: Upper bound on node executions per run; the loops are bounded by counters in
#: state well below this, so hitting it means a bug, not a hard task.
RECURSION_LIMIT = 200


def build_episode_graph(
    *,
    models: BaseChatModel | Mapping[str, BaseChatModel] | None = None,
    tool_store: ToolStore | None = None,
    sandbox: Sandbox | None = None,
    checkpoint_reflection: bool = True,
    output_key: str | None = None,
    commit_mode: CommitMode | None = None,
) -> StateGraph:
    """Return the uncompiled episode graph.

    Args:
        models: A chat model for every role, or a mapping role -> model
            (``manager``, ``tool_developer``, ``executor``, ``integrator``,
            ``reflection``, ``default``). Default: ``ChatOpenAI`` per role from
            the context and environment.
        tool_store: An open ``ToolStore`` (default: the context's ``store_dir``).
        sandbox: A ``Sandbox`` (default: one per process from the context).
        checkpoint_reflection: Whether the reflection subgraph checkpoints its
            steps with the episode's checkpointer (LangGraph lends a parent's
            checkpointer to subgraphs even when the parent itself keeps none,
            so an episode without checkpoints turns this off).
        output_key: Put the output under this one key (see
            :func:`create_episode_graph`).
        commit_mode: ``store`` or ``defer`` for every run (default: the
            context's ``commit_mode``).

    Returns:
        A ``StateGraph`` with input ``EpisodeInput``, output ``EpisodeOutput`` (or
        ``{output_key: [EpisodeOutput]}``) and context ``InsituContext``; compile
        it, or add it to a parent graph.
    """
    services = Services(models=models, tool_store=tool_store, sandbox=sandbox)
    builder = StateGraph(
        EpisodeState,
        context_schema=InsituContext,
        input_schema=EpisodeInput,
        output_schema=EpisodeOutput if output_key is None else namespaced_output(output_key),
    )
    builder.add_node("prepare_workspace", node(workspace.prepare_workspace, services=services))
    builder.add_node("plan_task", node(manager.plan_task, services=services))
    builder.add_node("build_tools", node(tool_developer.build_tools, services=services))
    builder.add_node("execute_task", node(executor.execute_task, services=services))
    builder.add_node("write_answer", node(integrator.write_answer, services=services))
    reflection = build_reflection_graph(services, commit_mode=commit_mode)
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
    end_with_output(builder, "reflect", output_key)
    return builder


def end_with_output(builder: StateGraph, last: str, output_key: str | None) -> None:
    """Connect ``last`` to END, through ``package_output`` when the output goes under one key."""
    if output_key is None:
        builder.add_edge(last, END)
        return
    builder.add_node("package_output", node(package_output, output_key=output_key))
    builder.add_edge(last, "package_output")
    builder.add_edge("package_output", END)


def namespaced_output(output_key: str) -> type:
    """The output schema ``{output_key: [EpisodeOutput]}`` (a list, so parallel episodes add up)."""
    return TypedDict(  # type: ignore[operator]
        "NamespacedEpisodeOutput",
        {output_key: Annotated[list[EpisodeOutput], operator.add]},
    )


async def package_output(state: EpisodeState, *, output_key: str) -> dict[str, Any]:
    """Node of a namespaced episode: its output keys, as one item under ``output_key``.

    The item also says how long the episode took (``wall_time_s``) and, when it
    failed, why in one line (``error``) and of what kind (``error_kind``:
    ``endpoint`` or ``timeout``), as a batch records each task.
    """
    output = {key: state[key] for key in EpisodeOutput.__annotations__ if key in state}
    failure = state.get("failure") or {}
    output["error"] = failure.get("message")  # one line already (see EpisodeFailure)
    output["error_kind"] = failure.get("kind")
    if state.get("started_at") is not None:
        output["wall_time_s"] = round(time.time() - state["started_at"], 3)
    task_id, status = state.get("task_id", "?"), state.get("status", "failed")
    if failure:
        emit(
            "task_failed",
            f"task {task_id} failed ({failure['kind']}): {output['error'][:200]}",
            task_id=task_id,
            error_kind=failure["kind"],
        )
    else:
        emit("task_done", f"task {task_id}: {status}", task_id=task_id)
    return {output_key: [output]}


def create_episode_graph(
    *,
    models: BaseChatModel | Mapping[str, BaseChatModel] | None = None,
    tool_store: ToolStore | None = None,
    sandbox: Sandbox | None = None,
    checkpointer: BaseCheckpointSaver | bool | None = None,
    name: str = "episode",
    output_key: str | None = None,
    commit_mode: CommitMode | None = None,
) -> CompiledStateGraph:
    """Return the compiled episode graph, ready to invoke or to add to a parent graph.

    Args:
        models: A chat model for every role, or a mapping role -> model (see
            :func:`build_episode_graph`).
        tool_store: An open ``ToolStore`` (default: the context's ``store_dir``).
        sandbox: A ``Sandbox`` (default: one per process from the context).
        checkpointer: A LangGraph checkpointer (resume by thread id); ``None``
            uses a parent graph's; ``False`` keeps no checkpoints at all, not
            even under a parent's (the reflection subgraph included).
        name: The graph's name (as a parent's subgraph and in traces).
        output_key: Write the whole output as one item of a list under this key
            instead of as top-level keys (``answer``, ``status``, ``usage``, …),
            so that a parent's own keys are never overwritten and parallel
            episodes (a ``Send`` fan-out, see :func:`send_tasks`) add up under a
            list reducer.
        commit_mode: ``store`` (commit new tools to the library) or ``defer``
            (hand them back in the output, as the batch graph's episodes do);
            ``None``: the context's ``commit_mode``.

    Returns:
        The compiled graph, with the recursion limit set.
    """
    builder = build_episode_graph(
        models=models,
        tool_store=tool_store,
        sandbox=sandbox,
        checkpoint_reflection=checkpointer is not False,
        output_key=output_key,
        commit_mode=commit_mode,
    )
    compiled = builder.compile(checkpointer=checkpointer, name=name)
    return compiled.with_config(recursion_limit=RECURSION_LIMIT)


def send_tasks(node: str, tasks_key: str = "tasks") -> Callable[[Mapping[str, Any]], list[Send]]:
    """A router for a parent graph: one episode per task, run in parallel with ``Send``.

    Each item of ``state[tasks_key]`` is a task text, or a dict with ``task``
    (or ``question``) and optional ``task_id`` (or ``id``) and ``files``. Give
    the episode node ``output_key`` (see :func:`create_episode_graph`) and the
    parent that key with a list reducer, e.g.
    ``episodes: Annotated[list[dict], operator.add]``.

    Args:
        node: The parent's node that runs the episode graph.
        tasks_key: The parent's state key holding the tasks.
    """

    def fan_out(state: Mapping[str, Any]) -> list[Send]:
        sends = []
        for item in state.get(tasks_key) or []:
            if isinstance(item, str):
                sends.append(Send(node, {"task": item}))
                continue
            payload = {"task": item.get("task") or item.get("question") or ""}
            if item.get("task_id") or item.get("id"):
                payload["task_id"] = str(item.get("task_id") or item.get("id"))
            if item.get("files"):
                payload["files"] = list(item["files"])
            sends.append(Send(node, payload))
        return sends

    return fan_out


#: The compiled graph for LangGraph Studio (``langgraph.json``).
graph = create_episode_graph()
