"""A Message as the server-sent event sequence the real API streams, so SDK stream helpers parse it unchanged.

``message_start`` carries the input and cache figures with ``output_tokens: 1``; ``message_delta`` carries the
final cumulative usage (input and cache fields included, as the current API sends them).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

WORDS_PER_TEXT_DELTA = 3
JSON_DELTAS = 3
FINAL_USAGE_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def encode_event(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


def _text_deltas(text: str) -> Iterator[dict[str, Any]]:
    words = re.findall(r"\s*\S+\s*", text) or [text]
    for start in range(0, len(words), WORDS_PER_TEXT_DELTA):
        yield {"type": "text_delta", "text": "".join(words[start : start + WORDS_PER_TEXT_DELTA])}


def _json_deltas(arguments: Any) -> Iterator[dict[str, Any]]:
    encoded = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)
    size = max(1, math.ceil(len(encoded) / JSON_DELTAS))
    yield {"type": "input_json_delta", "partial_json": ""}
    for start in range(0, len(encoded), size):
        yield {"type": "input_json_delta", "partial_json": encoded[start : start + size]}


def message_events(message: Mapping[str, Any]) -> Iterator[bytes]:
    usage = message["usage"]
    started = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    yield encode_event("message_start", {"type": "message_start", "message": started})
    if not message["content"]:
        yield encode_event("ping", {"type": "ping"})
    for index, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            empty: dict[str, Any] = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            deltas = _json_deltas(block["input"])
        else:
            empty = {"type": "text", "text": ""}
            deltas = _text_deltas(block["text"])
        yield encode_event(
            "content_block_start", {"type": "content_block_start", "index": index, "content_block": empty}
        )
        if index == 0:
            yield encode_event("ping", {"type": "ping"})
        for delta in deltas:
            yield encode_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        yield encode_event("content_block_stop", {"type": "content_block_stop", "index": index})
    yield encode_event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
            "usage": {name: usage[name] for name in FINAL_USAGE_FIELDS},
        },
    )
    yield encode_event("message_stop", {"type": "message_stop"})
