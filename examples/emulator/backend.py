"""The emulator's logic without HTTP: route, validate, consult the script, count, cache, render.

Requests are handled one at a time (under a lock) so ids, cache state and script order are deterministic.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .caching import PromptCache, breakpoint_ttls
from .clock import Clock
from .counting import count_input_tokens, request_segments
from .errors import ApiError, invalid
from .message import message_json, render_output
from .script import Script, ScriptRunner
from .sse import message_events
from .validation import validate_common, validate_messages_request

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream; charset=utf-8"


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    events: tuple[bytes, ...] | None = None
    """SSE events, each sent as its own HTTP chunk; ``None`` for a plain body."""


@dataclass(frozen=True)
class Exchange:
    """One request as the emulator saw it, for tests that check what was sent and answered."""

    path: str
    request_id: str
    body: Any
    status: int
    response: Mapping[str, Any] = field(default_factory=dict)
    """The Message (also for streams), the ``count_tokens`` answer, or the error envelope."""


class Backend:
    def __init__(self, script: Script, clock: Clock) -> None:
        self.clock = clock
        self.cache = PromptCache(clock)
        self.requests: list[Any] = []
        self.exchanges: list[Exchange] = []
        self._runner = ScriptRunner(script)
        self._lock = threading.Lock()
        self._counters = {"req": 0, "msg": 0, "toolu": 0}

    def set_script(self, script: Script) -> None:
        with self._lock:
            self._runner = ScriptRunner(script)

    def _next_id(self, kind: str) -> str:
        self._counters[kind] += 1
        return f"{kind}_emu_{self._counters[kind]:04d}"

    def handle(self, method: str, target: str, raw: bytes) -> Response:
        path = urlsplit(target).path
        with self._lock:
            request_id = self._next_id("req")
            body: Any = None
            try:
                if method != "POST" or path not in (MESSAGES_PATH, COUNT_TOKENS_PATH):
                    raise ApiError(404, "Not Found")
                try:
                    body = json.loads(raw or b"null")
                except ValueError as exc:
                    raise invalid(f"There was an error parsing the body of your request: {exc}") from exc
                if path == MESSAGES_PATH:
                    self.requests.append(body)
                    answer, stream = self._messages(body), bool(isinstance(body, Mapping) and body.get("stream"))
                else:
                    answer, stream = self._count_tokens(body), False
            except ApiError as error:
                envelope = error.body(request_id)
                self.exchanges.append(Exchange(path, request_id, body, error.status, envelope))
                headers = {"content-type": JSON_TYPE, "request-id": request_id, **error.headers()}
                return Response(error.status, headers, json.dumps(envelope).encode())
            self.exchanges.append(Exchange(path, request_id, body, 200, answer))
        if stream:
            headers = {"content-type": SSE_TYPE, "cache-control": "no-cache", "request-id": request_id}
            return Response(200, headers, events=tuple(message_events(answer)))
        return Response(200, {"content-type": JSON_TYPE, "request-id": request_id}, json.dumps(answer).encode())

    def _messages(self, body: Any) -> dict[str, Any]:
        body = validate_messages_request(body)
        segments = request_segments(body)
        breakpoint_ttls(segments)  # a bad cache_control set is a 400 before the model is consulted
        reply = self._runner.next(body)
        if reply.failure is not None:
            raise reply.failure
        usage = self.cache.apply(str(body["model"]), segments)
        output = render_output(reply, body, lambda: self._next_id("toolu"))
        return message_json(self._next_id("msg"), str(body["model"]), output, usage)

    def _count_tokens(self, body: Any) -> dict[str, Any]:
        body = validate_common(body)
        breakpoint_ttls(request_segments(body))
        return {"input_tokens": count_input_tokens(body)}
