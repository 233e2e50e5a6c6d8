"""The python-interpreter baseline graph: the same Executor with only a "run Python" tool.

    START -> prepare_workspace -> bind_interpreter -> execute_task -> write_answer
          -> summarize_interpreter_run -> END

Input and output are the episode graph's, so the batch graph and the evaluation
harness run it in place of the episode graph (``solver="interpreter"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from langgraph.graph import START, StateGraph

from insitu.aio import node
from insitu.context import InsituContext
from insitu.graphs.episode import end_with_output, namespaced_output
from insitu.graphs.state import EpisodeInput, EpisodeOutput, EpisodeState
from insitu.nodes import executor, integrator, interpreter, workspace
from insitu.services import Services

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from insitu.sandbox import Sandbox
    from insitu.tool_store import ToolStore


def build_interpreter_graph(
    *,
    models: BaseChatModel | Mapping[str, BaseChatModel] | None = None,
    tool_store: ToolStore | None = None,
    sandbox: Sandbox | None = None,
    output_key: str | None = None,
) -> StateGraph:
    """Return the uncompiled baseline graph (arguments as ``build_episode_graph``)."""
    services = Services(models=models, tool_store=tool_store, sandbox=sandbox)
    builder = StateGraph(
        EpisodeState,
        context_schema=InsituContext,
        input_schema=EpisodeInput,
        output_schema=EpisodeOutput if output_key is None else namespaced_output(output_key),
    )
    builder.add_node("prepare_workspace", node(workspace.prepare_workspace, services=services))
    builder.add_node("bind_interpreter", node(interpreter.bind_interpreter, services=services))
    builder.add_node("execute_task", node(executor.execute_task, services=services))
    builder.add_node("write_answer", node(integrator.write_answer, services=services))
    builder.add_node("summarize_interpreter_run", node(interpreter.summarize_interpreter_run))
    builder.add_edge(START, "prepare_workspace")
    builder.add_edge("prepare_workspace", "bind_interpreter")
    builder.add_edge("bind_interpreter", "execute_task")
    builder.add_edge("execute_task", "write_answer")
    builder.add_edge("write_answer", "summarize_interpreter_run")
    end_with_output(builder, "summarize_interpreter_run", output_key)
    return builder
