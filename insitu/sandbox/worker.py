"""Host side of one sandbox process: start it, talk to it, kill it.

A :class:`SandboxProcess` is one bwrap (or degraded) process running the
runner's ``serve`` loop. Warm workers answer many requests; a cold call uses a
fresh one for a single request. All reads and writes have deadlines, so a
stuck or hostile sandbox can only ever cost its own timeout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from insitu.fdwait import wait_fd
from insitu.sandbox import runner
from insitu.sandbox.backend import UidLease, spawner, sweep_uid

logger = logging.getLogger("insitu.sandbox")


class WorkerError(Exception):
    """The sandbox process failed; ``kind`` says how (``crash``/``timeout``/``sandbox``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class SandboxProcess:
    """One running sandbox process and its framed pipe protocol."""

    def __init__(
        self,
        argv: list[str],
        *,
        pass_fds: Sequence[int] = (),
        env: dict[str, str] | None,
        cwd: str,
        lease: UidLease | None,
        key: tuple[Any, ...],
        backend: str,
        startup_timeout_s: float,
        max_frame_bytes: int,
    ) -> None:
        """Start the process and wait until it reports ready.

        Raises:
            WorkerError: It did not start (kind ``sandbox``, with its stderr).
        """
        self.key = key
        self.backend = backend
        self.lease = lease
        self.max_frame_bytes = max_frame_bytes
        self.last_used = time.monotonic()
        self.requests = 0
        self.retired = ""
        """Why the sandbox asked to be replaced after its last answer ('' if it did not)."""
        self._buffer = bytearray()
        self._closed = False
        self._close_lock = threading.Lock()
        # A file, not a pipe: nobody has to keep reading it for the sandbox to progress.
        self._errfile = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        try:
            self.proc = spawner.popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._errfile,
                env=env,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
                pass_fds=tuple(pass_fds),
            )
        except OSError as exc:
            self._errfile.close()
            if lease is not None:
                lease.release()
            raise WorkerError("sandbox", f"cannot start the sandbox process: {exc}") from None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._in, False)
        os.set_blocking(self._out, False)
        try:
            ready = self._read_frame(time.monotonic() + startup_timeout_s)
        except WorkerError as exc:
            tail = self._tail()  # before close(), which closes the stderr file
            self.close(graceful=False)
            raise WorkerError(
                "sandbox", f"the sandbox process did not start ({exc.message}){tail}"
            ) from None
        if not isinstance(ready, dict) or not ready.get("ready"):
            self.close(graceful=False)
            raise WorkerError("sandbox", f"unexpected greeting from the sandbox: {ready!r}")
        self.uid = ready.get("uid")

    @property
    def alive(self) -> bool:
        """Whether the process is still running and usable (not retired)."""
        return not self._closed and not self.retired and self.proc.poll() is None

    def _tail(self, limit: int = 1500) -> str:
        try:
            self._errfile.seek(0, os.SEEK_END)
            size = self._errfile.tell()
            self._errfile.seek(max(0, size - limit))
            text = self._errfile.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        return f"; its stderr ends with:\n{text}" if text else ""

    def request(self, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request and wait for its answer.

        Args:
            message: The request.
            timeout_s: Host-side deadline (the call's limit plus a grace margin).

        Returns:
            The runner's response.

        Raises:
            WorkerError: The process died, broke the protocol or missed the deadline;
                it is no longer usable.
        """
        deadline = time.monotonic() + timeout_s
        self.requests += 1
        self._write(runner.encode_frame(message), deadline)
        response = self._read_frame(deadline)
        self.last_used = time.monotonic()
        if not isinstance(response, dict):
            raise WorkerError("crash", f"the sandbox sent an invalid response: {response!r}")
        retire = response.pop("retire", None)
        if retire:
            # The answer stands, but the sandbox cannot serve another call cleanly
            # (e.g. its private /tmp could not be emptied): it is closed on release.
            self.retired = str(retire)
            logger.warning("retiring a sandbox worker: %s", self.retired)
        return response

    def _write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerError("timeout", "the sandbox stopped reading its requests")
            if not wait_fd(self._in, write=True, timeout_s=remaining):
                continue
            try:
                written = os.write(self._in, view)
            except BlockingIOError:
                continue
            except (BrokenPipeError, OSError) as exc:
                raise WorkerError("crash", self._death_text(f"write failed: {exc}")) from None
            view = view[written:]

    def _fill(self, size: int, deadline: float) -> None:
        while len(self._buffer) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerError("timeout", "no answer from the sandbox in time")
            if not wait_fd(self._out, timeout_s=remaining):
                continue
            try:
                chunk = os.read(self._out, 1 << 20)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise WorkerError("crash", self._death_text(f"read failed: {exc}")) from None
            if not chunk:
                raise WorkerError("crash", self._death_text("the sandbox process ended"))
            self._buffer += chunk

    def _read_frame(self, deadline: float) -> Any:
        header = runner.HEADER.size
        self._fill(header, deadline)
        (size,) = runner.HEADER.unpack(bytes(self._buffer[:header]))
        if size > self.max_frame_bytes:
            raise WorkerError("crash", f"the sandbox sent an oversized frame ({size} bytes)")
        self._fill(header + size, deadline)
        body = bytes(self._buffer[header : header + size])
        del self._buffer[: header + size]
        try:
            return json.loads(body.decode("utf-8", "surrogatepass"))
        except ValueError as exc:
            raise WorkerError("crash", f"the sandbox sent a corrupt frame: {exc}") from None

    def _death_text(self, what: str) -> str:
        try:
            code = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            return what
        if code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        elif code >= 128:
            try:
                how = f"was killed by {signal.Signals(code - 128).name}"
            except ValueError:
                how = f"exited with status {code}"
        else:
            how = f"exited with status {code}"
        return f"{what}: the sandbox worker {how}"

    def close(self, graceful: bool = True) -> None:
        """Stop the process (politely first if ``graceful``) and release its uid.

        Safe to call more than once and from any thread.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            if graceful and self.proc.poll() is None:
                # End of input: the worker exits, its supervisor kills leftovers.
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()  # type: ignore[union-attr]
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=1.0)
            if self.proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5.0)
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
        finally:
            if self.lease is not None:
                # A process that escaped the session (degraded backend) dies here.
                sweep_uid(self.lease.uid)
                self.lease.release()
                self.lease = None
            with contextlib.suppress(OSError):
                self._errfile.close()
