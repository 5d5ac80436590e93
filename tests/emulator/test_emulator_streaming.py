"""SSE parsed by the SDK's own stream helpers gives the same Message and usage as the JSON path."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import anthropic

from examples.emulator import Emulator, Reply, count_input_tokens, text_of_tokens

MODEL = "claude-sonnet-4-6"
SCRIPT = [
    Reply.tool_use("read_file", {"path": "docs/OWNERS.md", "reason": "who owns payments"}, text="Let me look at it."),
    Reply.text("The payments module is owned by the billing team; the change needs their review."),
]
TOOLS = [{"name": "read_file", "description": "Read a repository file.", "input_schema": {"type": "object"}}]


def body(turn: int) -> dict[str, Any]:
    system = [{"type": "text", "text": text_of_tokens(1500), "cache_control": {"type": "ephemeral"}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Who must review this diff?"}]
    if turn == 2:
        messages += [
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me look at it."},
                    {"type": "tool_use", "id": "toolu_emu_0001", "name": "read_file", "input": {"path": "x"}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_emu_0001", "content": "billing"}],
            },
        ]
    return {"model": MODEL, "max_tokens": 300, "system": system, "messages": messages, "tools": TOOLS}


def json_path() -> list[anthropic.types.Message]:
    with Emulator(SCRIPT) as emu:
        client = anthropic.Anthropic(base_url=emu.base_url, api_key="test", max_retries=0)
        return [client.messages.create(**body(1)), client.messages.create(**body(2))]


def test_stream_helper_final_message_equals_the_json_message() -> None:
    with Emulator(SCRIPT) as emu:
        client = anthropic.Anthropic(base_url=emu.base_url, api_key="test", max_retries=0)
        streamed = []
        for turn in (1, 2):
            with client.messages.stream(**body(turn)) as stream:
                texts = list(stream.text_stream)
                streamed.append(stream.get_final_message())
        assert "".join(texts) == SCRIPT[1].content[0]["text"]
    expected = json_path()
    for got, want in zip(streamed, expected, strict=True):
        assert got.usage == want.usage
        assert got.model_dump(include={"id", "content", "stop_reason", "model"}) == want.model_dump(
            include={"id", "content", "stop_reason", "model"}
        )
    first, second = expected
    assert (first.usage.cache_creation_input_tokens or 0) > 0 and (second.usage.cache_read_input_tokens or 0) > 0
    assert first.usage.output_tokens > 1 and second.usage.input_tokens > 0


def test_async_stream_helper_and_async_create_agree() -> None:
    async def run() -> tuple[anthropic.types.Message, anthropic.types.Message]:
        with Emulator([SCRIPT[0], SCRIPT[0]]) as emu:
            client = anthropic.AsyncAnthropic(base_url=emu.base_url, api_key="test", max_retries=0)
            async with client.messages.stream(**body(1)) as stream:
                streamed = await stream.get_final_message()
            emu.cache.clear()  # the JSON call must write again, exactly like the streamed one did
            created = await client.messages.create(**body(1))
            return streamed, created

    streamed, created = asyncio.run(run())
    assert streamed.usage == created.usage
    written = streamed.usage.cache_creation_input_tokens
    assert written is not None and written + streamed.usage.input_tokens == count_input_tokens(body(1))
    assert streamed.content[1].type == "tool_use" and streamed.content[1].input == SCRIPT[0].content[1]["input"]


def test_raw_event_sequence_is_the_real_one() -> None:
    with Emulator(SCRIPT[:1]) as emu:
        client = anthropic.Anthropic(base_url=emu.base_url, api_key="test", max_retries=0)
        raw = client.messages.with_raw_response.create(**body(1), stream=True)
        assert raw.headers["content-type"].startswith("text/event-stream") and raw.headers["request-id"]
        events = list(raw.parse())
    kinds = [event.type for event in events]  # the SDK drops `ping` events; the wire test below checks them
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 2
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and delta.type == "message_delta"
    assert start.message.usage.output_tokens == 1 and start.message.content == []
    final = delta.usage
    assert final.input_tokens == start.message.usage.input_tokens
    written = count_input_tokens(body(1)) - final.input_tokens  # tools, tool-use prompt and system: all cached
    assert final.cache_creation_input_tokens == start.message.usage.cache_creation_input_tokens == written > 1500
    assert final.cache_read_input_tokens == 0 and final.output_tokens > 1
    partials = [
        event.delta.partial_json
        for event in events
        if event.type == "content_block_delta" and event.delta.type == "input_json_delta"
    ]
    assert len(partials) >= 3 and partials[0] == ""
    assert json.loads("".join(partials)) == SCRIPT[0].content[1]["input"]
    texts = [e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"]
    assert "".join(texts) == "Let me look at it." and len(texts) >= 2


def test_wire_format_is_server_sent_events_with_a_ping() -> None:
    with Emulator([Reply.text("Hi there.")]) as emu:
        request = urllib.request.Request(
            f"{emu.base_url}/v1/messages",
            data=json.dumps({**body(1), "stream": True}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request) as response:
            assert response.headers["transfer-encoding"] == "chunked"
            wire = response.read().decode()
    frames = [frame for frame in wire.split("\n\n") if frame]
    names = [frame.split("\n")[0].removeprefix("event: ") for frame in frames]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(
        json.loads(frame.split("\n")[1].removeprefix("data: "))["type"] == name
        for frame, name in zip(frames, names, strict=True)
    )
