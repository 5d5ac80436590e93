"""The request checks the real API makes before any token is spent, with its error texts.

An agent that builds a broken conversation (a ``tool_result`` without its ``tool_use``) must fail here as it
would in production, not be answered by a forgiving fake.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ApiError, invalid


def _require(body: Mapping[str, Any], field: str) -> Any:
    if field not in body:
        raise invalid(f"{field}: Field required")
    return body[field]


def _tool_ids(content: Any, kind: str, key: str) -> list[str]:
    if not isinstance(content, list):
        return []
    return [str(block.get(key)) for block in content if isinstance(block, Mapping) and block.get("type") == kind]


def validate_common(body: Any) -> Mapping[str, Any]:
    """Checks shared by ``/v1/messages`` and ``count_tokens``: model, messages, content shape, tool pairing."""
    if not isinstance(body, Mapping):
        raise invalid("Request body must be a JSON object")
    model = _require(body, "model")
    if not isinstance(model, str) or not model:
        raise invalid("model: Input should be a valid string")
    if not model.startswith("claude"):
        raise ApiError(404, f"model: {model}")
    messages = _require(body, "messages")
    if not isinstance(messages, list):
        raise invalid("messages: Input should be a valid list")
    if not messages:
        raise invalid("messages: at least one message is required")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in ("user", "assistant"):
            raise invalid(f"messages.{index}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise invalid(f"messages.{index}.content: Input should be a valid string or list")
        for position, block in enumerate(content):
            if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
                raise invalid(f"messages.{index}.content.{position}.type: Field required")
    _validate_tool_pairing(messages)
    tools = body.get("tools")
    if tools is not None and (
        not isinstance(tools, list) or not all(isinstance(tool, Mapping) and "name" in tool for tool in tools)
    ):
        raise invalid("tools: each tool must be an object with a name")
    return body


def _validate_tool_pairing(messages: list[Any]) -> None:
    for index, message in enumerate(messages):
        uses = _tool_ids(message.get("content"), "tool_use", "id") if message["role"] == "assistant" else []
        if uses:
            following = messages[index + 1] if index + 1 < len(messages) else None
            answered = set(_tool_ids(following.get("content"), "tool_result", "tool_use_id")) if following else set()
            missing = [tool_id for tool_id in uses if tool_id not in answered]
            if missing and following is not None:
                raise invalid(
                    f"messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block in "
                    "the next message."
                )
        if message["role"] != "user" or not isinstance(message.get("content"), list):
            continue
        previous = messages[index - 1] if index > 0 else None
        requested = set(_tool_ids(previous.get("content"), "tool_use", "id")) if previous else set()
        for position, block in enumerate(message["content"]):
            if block.get("type") == "tool_result" and str(block.get("tool_use_id")) not in requested:
                raise invalid(
                    f"messages.{index}.content.{position}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding `tool_use` "
                    "block in the previous message."
                )


def validate_messages_request(body: Any) -> Mapping[str, Any]:
    checked = validate_common(body)
    max_tokens = _require(checked, "max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise invalid("max_tokens: Input should be greater than or equal to 1")
    return checked
