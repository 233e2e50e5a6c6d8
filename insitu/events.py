"""Readable progress events, streamed on LangGraph's ``custom`` stream mode.

Nodes call :func:`emit` ("retrieved 5 tools", "building tool parse_csv
(attempt 2)", "calling fetch_text_url", ...). Inside a graph run the event goes
to ``stream_mode="custom"`` consumers (the CLI's progress display, Studio);
outside one it is only logged.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("insitu")


def emit(event: str, message: str, /, **data: Any) -> None:
    """Stream one progress event.

    Args:
        event: A short machine-readable category (``retrieved``, ``building``,
            ``calling``, ``admitted``, ...).
        message: The human-readable line.
        **data: Extra JSON-able fields (tool name, attempt, task id, ...).
    """
    # Debug, not info: inside a run the stream consumer shows the line already
    # (``insitu -v`` used to print every progress line twice).
    logger.debug(message)
    _write({**data, "event": event, "message": message})


def emit_detail(event: str, message: str, /, **data: Any) -> None:
    """Stream one per-call detail (a model request, a sandboxed tool call).

    Detail events carry ``"detail": True``: progress displays show them only
    when asked (``insitu -v``); Studio and ``on_event`` callbacks get them all.

    Args:
        event: ``model_call`` or ``tool_call``.
        message: The human-readable line (role, model, tokens, latency, ...).
        **data: The same figures as JSON-able fields.
    """
    logger.debug(message)
    _write({**data, "event": event, "message": message, "detail": True})


def _write(event: dict[str, Any]) -> None:
    try:
        from langgraph.config import get_stream_writer

        writer = get_stream_writer()
    except (RuntimeError, ImportError):  # not inside a graph run
        return
    writer(event)
