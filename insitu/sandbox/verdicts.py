"""Verdicts: results of repeatable sandbox work, computed once per key.

Importing a tool module to describe it, and running a tool's tests in an
emptied directory, give the same answer for the same inputs (source, test
cases, interpreter). When a batch of parallel episodes builds the same tool -
every episode of a first batch often asks for the same capability, and a model
at temperature 0 writes the same code for the same request - the work is done
once: concurrent askers wait for the one computation in flight ("single
flight"), later askers get the remembered answer.

Only answers the caller marks as worth keeping are remembered (a passing test
report, a successful describe); a failure is shared with the askers who waited
for it, then forgotten, so a failure caused by load (a timeout) is never made
permanent.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Remembered verdicts per sandbox (least recently used are forgotten first).
DEFAULT_SIZE = 512


def verdict_key(*parts: Any) -> str:
    """A stable key (SHA-256) for JSON-able parts: an operation and everything it depends on."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class _Flight:
    """One computation in flight: its waiters and, once done, its result."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False
        self.result: Any = None


class Verdicts:
    """A thread-safe, bounded, single-flight memo of sandbox results."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        """Create an empty memo that keeps at most ``size`` results."""
        self._size = max(1, size)
        self._lock = threading.Lock()
        self._done: OrderedDict[str, Any] = OrderedDict()
        self._running: dict[str, _Flight] = {}
        self.computed = 0
        self.reused = 0

    def get_or_compute(self, key: str, compute: Callable[[], T], keep: Callable[[T], bool]) -> T:
        """Return the remembered result for ``key``, or compute it (once at a time).

        Args:
            key: What the result depends on (see :func:`verdict_key`).
            compute: Produces the result; runs in the calling thread.
            keep: Whether a computed result is remembered for later askers
                (the askers already waiting for it get it either way).

        Returns:
            The result: remembered, the one computed by the thread this one
            waited for, or this thread's own.
        """
        with self._lock:
            if key in self._done:
                self._done.move_to_end(key)
                self.reused += 1
                return self._done[key]
            flight = self._running.get(key)
            mine = flight is None
            if mine:
                flight = self._running[key] = _Flight()
        assert flight is not None
        if not mine:
            flight.done.wait()
            if flight.ok:
                with self._lock:
                    self.reused += 1
                return flight.result
            # The computation raised: try on our own.
            return self._compute(key, compute, keep, None)
        return self._compute(key, compute, keep, flight)

    def _compute(
        self, key: str, compute: Callable[[], T], keep: Callable[[T], bool], flight: _Flight | None
    ) -> T:
        try:
            result = compute()
            with self._lock:
                self.computed += 1
                if keep(result):
                    self._done[key] = result
                    while len(self._done) > self._size:
                        self._done.popitem(last=False)
            if flight is not None:
                flight.result, flight.ok = result, True
            return result
        finally:
            if flight is not None:
                with self._lock:
                    self._running.pop(key, None)
                flight.done.set()

    def clear(self) -> None:
        """Forget every remembered result."""
        with self._lock:
            self._done.clear()
