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
    logger.info(message)
    try:
        from langgraph.config import get_stream_writer

        writer = get_stream_writer()
    except (RuntimeError, ImportError):  # not inside a graph run
        return
    writer({**data, "event": event, "message": message})
