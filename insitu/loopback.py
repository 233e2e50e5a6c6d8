"""Loopback HTTP services: a server that can drop its open connections, and its owner.

Shared by the evaluation suite's local API and the scripted OpenAI-protocol
server: ``ThreadingHTTPServer.shutdown`` stops accepting but leaves keep-alive
connections (and their handler threads) open, so ``close_connections`` ends
them; :class:`LoopbackService` is the start / stop / ``with`` lifecycle both use.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` that tracks its connections so it can close them all."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def serve_in_background(self, name: str) -> threading.Thread:
        """Serve requests in a started daemon thread, and return it."""
        thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )
        thread.start()
        return thread

    def stop(self, thread: threading.Thread | None) -> None:
        """Stop serving, end open connections, close the socket and join ``thread``."""
        self.shutdown()
        self.close_connections()
        self.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def close_connections(self) -> None:
        """Shut down every connection still open (idle keep-alives included)."""
        with self._open_lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class LoopbackService:
    """Owns a :class:`LoopbackHTTPServer` served by a daemon thread: ``start``, ``stop``, ``with``.

    Subclasses set ``host`` and ``port`` (0: a free one, known after ``start``)
    and build their server in :meth:`_make_server`.
    """

    host: str = "127.0.0.1"
    port: int = 0
    _server: LoopbackHTTPServer | None = None
    _thread: threading.Thread | None = None

    def _make_server(self, address: tuple[str, int]) -> LoopbackHTTPServer:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._server is not None

    def start(self) -> Self:
        """Bind the socket and serve in a daemon thread.

        Returns:
            The service itself.

        Raises:
            RuntimeError: If it is already running.
        """
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        server = self._make_server((self.host, self.port))
        self.port = server.server_address[1]
        self._server = server
        self._thread = server.serve_in_background(f"{type(self).__name__}:{self.port}")
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and the socket. Safe to call twice."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.stop(thread)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
