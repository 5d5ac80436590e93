"""A scripted `Reply` rendered as the Message the API returns: ids, stop reasons, ``max_tokens`` cuts, usage."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .caching import CacheUsage
from .counting import block_tokens, count_text, truncate_to_tokens
from .script import Reply


@dataclass(frozen=True)
class Output:
    content: list[dict[str, Any]]
    stop_reason: str
    stop_sequence: str | None
    output_tokens: int
    """Tokens of the blocks returned (text tokens; tool name + canonical input + a small overhead)."""


def _first_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    found = [(text.find(stop), stop) for stop in stops if stop and stop in text]
    return min(found) if found else None


def render_output(reply: Reply, body: Mapping[str, Any], next_tool_id: Callable[[], str]) -> Output:
    """Apply ``stop_sequences`` and ``max_tokens`` to the scripted blocks, as generation would have."""
    budget = int(body["max_tokens"])
    stops = [str(stop) for stop in body.get("stop_sequences") or []]
    content: list[dict[str, Any]] = []
    used = 0
    for block in reply.content:
        if block.get("type") == "tool_use":
            rendered = {"type": "tool_use", "id": next_tool_id(), "name": block["name"], "input": block["input"]}
            cost = block_tokens(rendered)
            if used + cost > budget:
                return Output(content, "max_tokens", None, budget)
            content.append(rendered)
            used += cost
            continue
        text = str(block.get("text", ""))
        stop = _first_stop(text, stops)
        if stop is not None:
            text = text[: stop[0]]
        cost = count_text(text)
        if used + cost > budget:
            content.append({"type": "text", "text": truncate_to_tokens(text, budget - used)})
            return Output(content, "max_tokens", None, budget)
        content.append({"type": "text", "text": text})
        used += cost
        if stop is not None:
            return Output(content, "stop_sequence", stop[1], used)
    called = any(block["type"] == "tool_use" for block in content)
    return Output(content, reply.stop_reason or ("tool_use" if called else "end_turn"), None, used)


def usage_json(cache: CacheUsage, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": cache.uncached,
        "cache_creation_input_tokens": cache.creation,
        "cache_read_input_tokens": cache.read,
        "cache_creation": {"ephemeral_5m_input_tokens": cache.write_5m, "ephemeral_1h_input_tokens": cache.write_1h},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def message_json(message_id: str, model: str, output: Output, cache: CacheUsage) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": output.content,
        "stop_reason": output.stop_reason,
        "stop_sequence": output.stop_sequence,
        "usage": usage_json(cache, output.output_tokens),
    }
