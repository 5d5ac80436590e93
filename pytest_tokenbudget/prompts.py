"""A prompt as an ordered list of blocks, whatever recorded it: a Messages / Chat Completions request body, or
the ``gen_ai.input.messages`` / ``gen_ai.system_instructions`` of an OTel GenAI span.

Provider prompt caches match a prefix in the order tools -> system -> messages, block by block, so that is the
order blocks come in here. A block's identity ignores ``cache_control`` (marking a block does not change what
it is) and treats a plain string content as the single text block it stands for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_tokenbudget.records import LLMCall, canonical_json

CONTENT_TYPES = frozenset({"text", "tool_result", "tool_call_response", "input_text", "output_text"})
"""Block types whose text is "context" for duplicate detection (text, system text, tool results)."""


@dataclass(frozen=True)
class Block:
    """One block of a prompt."""

    section: str
    """``tools``, ``system`` or ``messages``."""
    role: str | None
    key: str
    """Identity: a digest of section, role and the block's canonical JSON without ``cache_control``."""
    text: str
    """What the block says, as tokens are counted on it (tool calls as ``name {args}``; binary data as "")."""
    content: bool
    """A text, system text or tool result block: what duplicate-context detection compares."""


def _strip_cache_control(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_strip_cache_control(v) for v in value]
    return value


def _digest(section: str, role: str | None, value: Any) -> str:
    raw = f"{section}\x1f{role or ''}\x1f{canonical_json(_strip_cache_control(value))}"
    return hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()


def _as_json(value: Any) -> Any:
    """Span attributes may hold JSON as a string; a string that is not JSON stays a string."""
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def block_text(block: Any) -> str:
    """The text a request block carries (Anthropic, OpenAI or OTel GenAI part shapes)."""
    if isinstance(block, str):
        return block
    if not isinstance(block, Mapping):
        return "" if block is None else canonical_json(block)
    kind = block.get("type")
    if isinstance(block.get("text"), str):
        return str(block["text"])
    if kind in ("text", "reasoning") and isinstance(block.get("content"), str):  # OTel GenAI parts
        return str(block["content"])
    if kind == "thinking":
        return str(block.get("thinking") or "")
    if kind == "tool_result":
        inner = block.get("content")
        if isinstance(inner, list):
            return "\n".join(block_text(part) for part in inner)
        return block_text(inner)
    if kind == "tool_call_response":
        response = block.get("response")
        return response if isinstance(response, str) else canonical_json(response)
    if kind in ("tool_use", "server_tool_use", "tool_call", "function_call"):
        args = block.get("input", block.get("arguments", {}))
        return f"{block.get('name', '')} {canonical_json(args)}"
    if kind in ("image", "document", "image_url", "input_audio", "blob", "uri", "file", "redacted_thinking"):
        source = block.get("source")
        if isinstance(source, Mapping) and source.get("type") == "text" and isinstance(source.get("data"), str):
            return str(source["data"])
        return ""
    return canonical_json(_strip_cache_control(block))


def _block(section: str, role: str | None, value: Any) -> Block:
    kind = value.get("type") if isinstance(value, Mapping) else None
    text = block_text(value)
    if isinstance(value, str) or kind == "text":
        # One identity for a text block however it was spelled: "...", {text: ...} or an OTel {content: ...} part.
        return Block(section, role, _digest(section, role, {"type": "text", "text": text}), text, True)
    is_content = kind in CONTENT_TYPES or (kind is None and isinstance(value, Mapping) and "text" in value)
    return Block(section, role, _digest(section, role, value), text, is_content)


def _request_message_blocks(message: Any) -> Iterator[Block]:
    if not isinstance(message, Mapping):
        yield _block("messages", None, message)
        return
    role = message.get("role")
    role = role if isinstance(role, str) else None
    section = "system" if role in ("system", "developer") else "messages"
    content = message.get("content")
    if isinstance(content, list):
        for part in content:
            yield _block(section, role, part)
    elif content is not None:
        block = _block(section, role, content)
        # An OpenAI tool message's content is a tool result.
        yield Block(block.section, block.role, block.key, block.text, block.content or role == "tool")
    for extra in ("tool_calls", "function_call"):
        if message.get(extra):
            yield Block(section, role, _digest(section, role, message[extra]), canonical_json(message[extra]), False)


def request_blocks(request: Mapping[str, Any]) -> tuple[Block, ...]:
    """Blocks of a Messages API (or Chat Completions) request body, tools -> system -> messages."""
    blocks: list[Block] = []
    for tool in request.get("tools") or ():
        text = canonical_json(_strip_cache_control(tool))
        blocks.append(Block("tools", None, _digest("tools", None, tool), text, False))
    system = request.get("system")
    if isinstance(system, list):
        blocks.extend(_block("system", "system", part) for part in system)
    elif system:
        blocks.append(_block("system", "system", system))
    for message in request.get("messages") or ():
        blocks.extend(_request_message_blocks(message))
    return tuple(blocks)


def otel_blocks(input_messages: Any, system_instructions: Any) -> tuple[Block, ...]:
    """Blocks of OTel GenAI content: ``[{role, parts: [{type: text, content} | {type: tool_call ...} ...]}]``."""
    blocks: list[Block] = []
    system = _as_json(system_instructions)
    if isinstance(system, list):
        blocks.extend(_block("system", "system", part) for part in system)
    elif system:
        blocks.append(_block("system", "system", system))
    messages = _as_json(input_messages)
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, Mapping) and isinstance(message.get("parts"), list):
            role = message.get("role") if isinstance(message.get("role"), str) else None
            section = "system" if role in ("system", "developer") else "messages"
            blocks.extend(_block(section, role, part) for part in message["parts"])
        else:
            blocks.extend(_request_message_blocks(message))
    return tuple(blocks)


def prompt_blocks(call: LLMCall) -> tuple[Block, ...] | None:
    """The call's prompt: from its request body when known, else from span content; ``None`` when neither."""
    request = call.request
    if isinstance(request, Mapping) and ("messages" in request or "system" in request):
        return request_blocks(request)
    if call.input_messages is not None or call.system_instructions is not None:
        return otel_blocks(call.input_messages, call.system_instructions)
    return None


def _marked(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get("cache_control") is not None


def sets_cache_control(request: Mapping[str, Any] | None) -> bool:
    """Whether a request asks for caching: top-level ``cache_control``, or on a tool, system or content block."""
    if not isinstance(request, Mapping):
        return False
    if request.get("cache_control") is not None:
        return True
    if any(_marked(tool) for tool in request.get("tools") or ()):
        return True
    system = request.get("system")
    if isinstance(system, list) and any(_marked(part) for part in system):
        return True
    for message in request.get("messages") or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        for part in content if isinstance(content, list) else ():
            if _marked(part):
                return True
            inner = part.get("content") if isinstance(part, Mapping) else None
            if isinstance(inner, list) and any(_marked(p) for p in inner):
                return True
    return False
