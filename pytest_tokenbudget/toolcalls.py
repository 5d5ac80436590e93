"""The tool calls of a scenario as one ordered sequence, each call once.

A tool call can be reported twice: as the model's request (``LLMCall.tool_calls``, ``ToolCall(source="requested")``)
and as its execution (an ``execute_tool`` record). Retry-storm and re-fetch detection need each call once, in
the order it happened, with the turn that asked for it:

* one call seen both ways counts once, matched by its call id;
* calls without an id cannot be matched, so when a scenario has ``execute_tool`` records those are the truth:
  requested calls are kept only when they carry an id that no execution has and every execution carries an id
  (a call the model asked for that never ran). Without ``execute_tool`` records the requested calls are the
  sequence;
* order: ``start_time`` (requested calls: their LLM call's ``end_time``), stable. LLM calls are numbered 1-based
  in ``start_time`` order; that number is the "turn" of the tool calls their output requested (an execution
  without a matching request follows the LLM call that ended last before it started).
* a call failed when its record says so or when a later recorded request sent its result back with
  ``is_error: true``: a hand-written agent loop emits no tool spans, but its requests still say which tool failed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pytest_tokenbudget.records import LLMCall, ToolCall


@dataclass(frozen=True)
class ToolEvent:
    """One tool call of the merged, ordered sequence of a scenario."""

    number: int
    """1-based position in the scenario's tool calls."""
    name: str
    arguments: str
    call_id: str | None
    error: str | None
    turn: int | None
    """The 1-based number of the LLM call whose output requested it (or that it followed)."""
    source: str
    """``execute_tool``, ``requested``, or ``both`` (one call seen both ways)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.arguments)

    @property
    def label(self) -> str:
        return call_label(self.name, self.arguments)


def call_label(name: str, arguments: str, width: int = 120) -> str:
    """``get_invoice {"id": "in_42"}``: the call as a reader would write it (arguments key-sorted)."""
    try:
        shown = json.dumps(json.loads(arguments), ensure_ascii=False, sort_keys=True)
    except ValueError:
        shown = arguments
    if len(shown) > width:
        shown = shown[: width - 1] + "…"
    return f"{name} {shown}"


def order_calls(calls: Sequence[LLMCall]) -> list[LLMCall]:
    """LLM calls by ``start_time``, stable: position + 1 is the call's number ("turn") in messages."""
    return [call for _, call in sorted(enumerate(calls), key=lambda item: (item[1].start_time, item[0]))]


@dataclass
class _Pending:
    tool: ToolCall
    turn: int | None
    time: int
    source: str


def _turn_before(ordered: Sequence[LLMCall], time: int) -> int | None:
    """The LLM call that ended last at or before ``time``: the turn an execution follows."""
    best: tuple[int, int] | None = None
    for number, call in enumerate(ordered, 1):
        if time and call.end_time and call.end_time <= time and (best is None or call.end_time >= best[0]):
            best = (call.end_time, number)
    return best[1] if best else None


def failed_call_ids(calls: Sequence[LLMCall]) -> frozenset[str]:
    """Ids of the tool calls whose ``tool_result`` a recorded request sent back with ``is_error: true``."""
    failed: set[str] = set()
    for call in calls:
        request = call.request
        for message in request.get("messages") or () if isinstance(request, Mapping) else ():
            content = message.get("content") if isinstance(message, Mapping) else None
            for block in content if isinstance(content, list) else ():
                if (
                    isinstance(block, Mapping)
                    and block.get("type") == "tool_result"
                    and block.get("is_error") is True
                    and block.get("tool_use_id")
                ):
                    failed.add(str(block["tool_use_id"]))
    return frozenset(failed)


def merge_tool_calls(calls: Sequence[LLMCall], tools: Sequence[ToolCall]) -> tuple[ToolEvent, ...]:
    """The scenario's tool calls, each once, in order (the merge rule is in the module docstring)."""
    ordered = order_calls(calls)
    turn_of_response = {c.response_id: n for n, c in enumerate(ordered, 1) if c.response_id}

    def turn_of(tool: ToolCall) -> int | None:
        if tool.requested_by and tool.requested_by in turn_of_response:
            return turn_of_response[tool.requested_by]
        return _turn_before(ordered, tool.start_time)

    requested: list[_Pending] = []
    seen_ids: set[str] = set()
    unmatched_without_id: Counter[tuple[int | None, str, str]] = Counter()
    for number, call in enumerate(ordered, 1):
        for tool in call.tool_calls:
            if tool.call_id:
                if tool.call_id in seen_ids:
                    continue
                seen_ids.add(tool.call_id)
            else:
                unmatched_without_id[(number, tool.name, tool.arguments)] += 1
            requested.append(_Pending(tool, number, call.end_time or call.start_time, "requested"))
    for tool in tools:
        if tool.source != "requested":
            continue
        turn = turn_of(tool)
        if tool.call_id:
            if tool.call_id in seen_ids:
                continue
            seen_ids.add(tool.call_id)
        elif unmatched_without_id[(turn, tool.name, tool.arguments)] > 0:
            unmatched_without_id[(turn, tool.name, tool.arguments)] -= 1  # the same request, reported twice
            continue
        time = ordered[turn - 1].end_time if turn and tool.requested_by in turn_of_response else tool.start_time
        requested.append(_Pending(tool, turn, time or tool.start_time, "requested"))

    executed = [tool for tool in tools if tool.source != "requested"]
    pending: list[_Pending]
    if not executed:
        pending = requested
    else:
        by_id = {p.tool.call_id: p for p in requested if p.tool.call_id}
        pending = []
        for tool in executed:
            match = by_id.get(tool.call_id) if tool.call_id else None
            turn = match.turn if match else turn_of(tool)
            time = tool.start_time or (match.time if match else 0)
            pending.append(_Pending(tool, turn, time, "both" if match else "execute_tool"))
        if all(tool.call_id for tool in executed):
            executed_ids = {tool.call_id for tool in executed}
            pending += [p for p in requested if p.tool.call_id and p.tool.call_id not in executed_ids]

    failed = failed_call_ids(ordered)
    ranked = sorted(enumerate(pending), key=lambda item: (item[1].time, item[1].turn or 0, item[0]))
    return tuple(
        ToolEvent(
            number=number,
            name=p.tool.name,
            arguments=p.tool.arguments,
            call_id=p.tool.call_id,
            error=p.tool.error or ("tool_error" if p.tool.call_id in failed else None),
            turn=p.turn,
            source=p.source,
        )
        for number, (_, p) in enumerate(ranked, 1)
    )
