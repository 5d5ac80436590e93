"""What the emulated model answers: a deterministic script per scenario.

A script is either a sequence of `Reply` consumed one per ``/v1/messages`` request (SDK retries consume entries
too, which is how a test scripts "429 then success"), or a callable ``(request_body) -> Reply`` that decides from
the conversation, e.g. "if the last message carries tool results, answer with text". Helpers below read the
conversation for such callables. Concurrent requests reach a callable in arrival order, so a callable should look
at the request (system prompt, last message), not count calls, when an agent fans out in parallel.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from .errors import ApiError


@dataclass(frozen=True)
class Reply:
    """One scripted answer: content blocks (``text`` / ``tool_use`` without ids) or an HTTP error."""

    content: tuple[Mapping[str, Any], ...] = ()
    stop_reason: str | None = None
    """``None``: ``tool_use`` when the reply calls a tool, else ``end_turn`` (``max_tokens`` still applies)."""
    failure: ApiError | None = field(default=None, compare=False)

    @classmethod
    def text(cls, text: str) -> Reply:
        return cls(content=({"type": "text", "text": text},))

    @classmethod
    def tool_use(cls, name: str, input: Mapping[str, Any], *, text: str | None = None) -> Reply:
        return cls.tool_uses([(name, input)], text=text)

    @classmethod
    def tool_uses(cls, calls: Sequence[tuple[str, Mapping[str, Any]]], *, text: str | None = None) -> Reply:
        """Several tool calls in one turn (parallel tool use), optionally after a text block."""
        blocks: list[Mapping[str, Any]] = [{"type": "text", "text": text}] if text else []
        blocks += [{"type": "tool_use", "name": name, "input": dict(arguments)} for name, arguments in calls]
        return cls(content=tuple(blocks))

    @classmethod
    def error(cls, status: int, message: str | None = None, *, retry_after: float | None = None) -> Reply:
        """An HTTP error answer: 429 ``rate_limit_error``, 529 ``overloaded_error``, 400, 500 ..."""
        return cls(failure=ApiError(status, message, retry_after=retry_after))


Script: TypeAlias = Sequence[Reply] | Callable[[Mapping[str, Any]], Reply]


def _harness_error(message: str) -> ApiError:
    """A 500 the SDK will not retry (``x-should-retry: false``): a broken script is a test bug, not a blip."""
    return ApiError(500, f"emulator: {message}", headers={"x-should-retry": "false"})


class ScriptRunner:
    """Hands out the next reply for a request, with a clear error when a script is exhausted or broken."""

    def __init__(self, script: Script) -> None:
        if not callable(script) and not all(isinstance(reply, Reply) for reply in script):
            raise TypeError("a script is a sequence of Reply or a callable (request_body) -> Reply")
        self._script = script
        self._served = 0
        self._lock = threading.Lock()

    def next(self, body: Mapping[str, Any]) -> Reply:
        with self._lock:
            self._served += 1
            served = self._served
        if callable(self._script):
            try:
                reply = self._script(body)
            except Exception as exc:
                raise _harness_error(f"script raised {type(exc).__name__}: {exc}") from exc
            if not isinstance(reply, Reply):
                raise _harness_error(f"script returned {type(reply).__name__}, expected Reply")
            return reply
        if served > len(self._script):
            raise _harness_error(f"script exhausted: {len(self._script)} replies scripted, this is request #{served}")
        return self._script[served - 1]


def last_message(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return dict(body["messages"][-1])


def tool_results(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The ``tool_result`` blocks of the last message (empty when the last turn is not a tool answer)."""
    content = last_message(body).get("content")
    if not isinstance(content, list):
        return []
    return [block for block in content if block.get("type") == "tool_result"]


def message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(str(block.get("text", "")) for block in content or [] if block.get("type") == "text")


def system_text(body: Mapping[str, Any]) -> str:
    system = body.get("system") or ""
    return system if isinstance(system, str) else "\n".join(str(block.get("text", "")) for block in system)


def _echo(body: Mapping[str, Any]) -> Reply:
    return Reply.text(f"You said: {message_text(last_message(body))}")


def _tool_loop(body: Mapping[str, Any]) -> Reply:
    """Call the first tool once with ``{}``, then answer with what it returned."""
    results = tool_results(body)
    if results:
        returned = results[0].get("content", "")
        return Reply.text(f"The tool returned: {returned}")
    tools = body.get("tools") or []
    if tools:
        return Reply.tool_use(str(tools[0]["name"]), {}, text="Let me check.")
    return _echo(body)


SCENARIOS: dict[str, Script] = {"echo": _echo, "tool-loop": _tool_loop}


def load_scenario(spec: str) -> Script:
    """A built-in scenario by name, or ``package.module:attribute`` naming a script (list or callable)."""
    if spec in SCENARIOS:
        return SCENARIOS[spec]
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise ValueError(f"unknown scenario {spec!r}: use one of {sorted(SCENARIOS)} or 'package.module:attribute'")
    script = getattr(importlib.import_module(module_name), attribute)
    ScriptRunner(script)  # fail now, not on the first request, when it is not a script
    return script  # type: ignore[no-any-return]
