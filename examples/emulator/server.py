"""The emulator on a loopback port: a stdlib threading HTTP server in a background thread.

Responses carry no ``Date``/``Server`` headers, so cassettes recorded from the emulator are byte-stable.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from .backend import Backend, Exchange
from .caching import PromptCache
from .clock import Clock
from .script import SCENARIOS, Script


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    backend: Backend


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        self._answer("POST")

    def do_GET(self) -> None:
        self._answer("GET")

    def _answer(self, method: str) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        response = self.server.backend.handle(method, self.path, raw)
        try:
            self.send_response_only(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if response.events is None:
                self.send_header("content-length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)
                return
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for chunk in response.events:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        return


class Emulator:
    """A loopback Anthropic Messages API; use as a context manager, point the SDK at ``base_url``.

    ``script`` defaults to the ``echo`` scenario. ``requests`` holds the decoded ``/v1/messages`` bodies in
    order (errors included), ``exchanges`` every request with its answer, ``clock`` drives cache TTLs.
    """

    def __init__(
        self, script: Script | None = None, *, host: str = "127.0.0.1", port: int = 0, clock: Clock | None = None
    ) -> None:
        self.clock = clock or Clock()
        self._backend = Backend(script if script is not None else SCENARIOS["echo"], self.clock)
        self._server = _Server((host, port), _Handler)
        self._server.backend = self._backend
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> list[Any]:
        return self._backend.requests

    @property
    def exchanges(self) -> list[Exchange]:
        return self._backend.exchanges

    @property
    def cache(self) -> PromptCache:
        return self._backend.cache

    def set_script(self, script: Script) -> None:
        """Replace the script (a fresh list starts from its first reply); the cache and ids carry on."""
        self._backend.set_script(script)

    def start(self) -> Emulator:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="anthropic-emulator",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
