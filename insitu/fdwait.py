"""Waiting on one file descriptor, whatever its number (the sandbox host, test servers).

``select.select`` refuses descriptors numbered 1024 or more, which a long-lived
process (a test session, a server holding many stores) reaches; ``poll`` has
no such limit.
"""

from __future__ import annotations

import math
import select


def wait_fd(fd: int, *, write: bool = False, timeout_s: float) -> bool:
    """Whether ``fd`` became readable (or writable) within ``timeout_s`` seconds.

    A hung-up or failed descriptor counts as ready: the read or write that
    follows reports what happened.
    """
    poller = select.poll()
    poller.register(fd, select.POLLOUT if write else select.POLLIN)
    return bool(poller.poll(max(0, math.ceil(timeout_s * 1000))))
