"""Usage counted from the request and the reply, through the real SDK; ids, headers and determinism."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest

from examples.emulator import Emulator, Reply, count_input_tokens, count_text
from examples.emulator.counting import MESSAGE_OVERHEAD, TOOL_BLOCK_OVERHEAD, TOOL_USE_SYSTEM_PROMPT, canonical

MODEL = "claude-sonnet-4-6"
TOOL: Any = {
    "name": "get_invoice",
    "description": "Fetch an invoice from the payments service by its id.",
    "input_schema": {"type": "object", "properties": {"invoice_id": {"type": "string"}}, "required": ["invoice_id"]},
}


def conversation(result: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Is invoice INV-7 paid?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_invoice", "input": {"invoice_id": "INV-7"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": result}]},
    ]


def create(emulator: Emulator, *, max_tokens: int = 256, **body: Any) -> anthropic.types.Message:
    client = anthropic.Anthropic(base_url=emulator.base_url, api_key="test", max_retries=0)
    message: anthropic.types.Message = client.messages.create(model=MODEL, max_tokens=max_tokens, **body)
    return message


def test_input_tokens_are_the_text_plus_documented_overheads() -> None:
    body = {"model": MODEL, "system": "You review pull requests.", "messages": [{"role": "user", "content": "Hello"}]}
    assert count_input_tokens(body) == count_text("You review pull requests.") + MESSAGE_OVERHEAD + count_text("Hello")


def test_usage_matches_count_tokens_and_the_local_count() -> None:
    body: dict[str, Any] = {"system": "You review pull requests.", "messages": conversation("paid"), "tools": [TOOL]}
    with Emulator([Reply.text("It is paid.")]) as emu:
        usage = create(emu, **body).usage
        client = anthropic.Anthropic(base_url=emu.base_url, api_key="test", max_retries=0)
        counted = client.messages.count_tokens(model=MODEL, **body).input_tokens
    assert usage.input_tokens == counted == count_input_tokens({"model": MODEL, **body})
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)
    assert len(emu.requests) == 1  # count_tokens is not a model call


def test_tool_definitions_are_counted_with_the_tool_use_system_prompt() -> None:
    messages = [{"role": "user", "content": "Is invoice INV-7 paid?"}]
    with Emulator([Reply.text("ok")] * 2) as emu:
        without = create(emu, messages=messages).usage.input_tokens
        with_tool = create(emu, messages=messages, tools=[TOOL]).usage.input_tokens
    assert with_tool - without == count_text(canonical(TOOL)) + TOOL_USE_SYSTEM_PROMPT["auto"]


def test_tool_use_inputs_and_tool_results_are_counted() -> None:
    short, long = "paid", "paid on 2024-05-01 by bank transfer, reference 99812, amount 1,250.00 EUR"
    with Emulator([Reply.text("ok")] * 2) as emu:
        small = create(emu, messages=conversation(short)).usage.input_tokens
        large = create(emu, messages=conversation(long)).usage.input_tokens
    assert large - small == count_text(long) - count_text(short)
    tool_use = TOOL_BLOCK_OVERHEAD + count_text("get_invoice") + count_text(canonical({"invoice_id": "INV-7"}))
    expected = (
        MESSAGE_OVERHEAD * 3
        + count_text("Is invoice INV-7 paid?")
        + count_text("Checking.")
        + tool_use
        + TOOL_BLOCK_OVERHEAD
        + count_text(short)
    )
    assert small == expected


def test_output_tokens_count_the_text_and_tool_calls_returned() -> None:
    text = "I will fetch the invoice before answering."
    with Emulator([Reply.text(text), Reply.tool_use("get_invoice", {"invoice_id": "INV-7"}, text="Checking.")]) as emu:
        answered = create(emu, messages=[{"role": "user", "content": "Hi"}])
        called = create(emu, messages=[{"role": "user", "content": "Hi"}], tools=[TOOL])
    assert answered.usage.output_tokens == count_text(text) and answered.stop_reason == "end_turn"
    tool_cost = TOOL_BLOCK_OVERHEAD + count_text("get_invoice") + count_text(canonical({"invoice_id": "INV-7"}))
    assert called.usage.output_tokens == count_text("Checking.") + tool_cost
    assert called.stop_reason == "tool_use"
    block = called.content[1]
    assert block.type == "tool_use" and block.id == "toolu_emu_0001" and block.input == {"invoice_id": "INV-7"}


def test_max_tokens_cuts_the_reply() -> None:
    with Emulator([Reply.text("one two three four five six seven eight")]) as emu:
        message = create(emu, messages=[{"role": "user", "content": "Count"}], max_tokens=3)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3
    assert message.content[0].type == "text" and message.content[0].text == "one two three"


def test_stop_sequences_end_the_reply() -> None:
    with Emulator([Reply.text("Summary: fine.\nEND\nPreamble nobody wants")]) as emu:
        message = create(emu, messages=[{"role": "user", "content": "Go"}], stop_sequences=["END"])
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")
    assert message.content[0].type == "text" and message.content[0].text == "Summary: fine.\n"


def test_message_shape_ids_and_headers() -> None:
    with Emulator([Reply.text("a"), Reply.text("b")]) as emu:
        client = anthropic.Anthropic(base_url=emu.base_url, api_key="test", max_retries=0)
        raw = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )
        second = create(emu, messages=[{"role": "user", "content": "Hi"}])
    payload = json.loads(raw.http_response.content)
    assert raw.headers["request-id"] == "req_emu_0001" and raw.headers["content-type"] == "application/json"
    assert payload["id"] == "msg_emu_0001" and second.id == "msg_emu_0002"
    assert {key: payload[key] for key in ("type", "role", "model", "stop_sequence")} == {
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "stop_sequence": None,
    }
    assert payload["usage"]["service_tier"] == "standard"
    assert set(payload["usage"]["cache_creation"]) == {"ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"}
    assert [exchange.request_id for exchange in emu.exchanges] == ["req_emu_0001", "req_emu_0002"]
    assert emu.requests[0]["messages"] == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("stream", [False, True])
def test_the_same_requests_give_the_same_answers(stream: bool) -> None:
    def run() -> list[dict[str, Any]]:
        script = [Reply.tool_use("get_invoice", {"invoice_id": "INV-7"}, text="Checking."), Reply.text("Paid.")]
        with Emulator(script) as emu:
            client = anthropic.Anthropic(base_url=emu.base_url, api_key="test", max_retries=0)
            first: Any = [{"role": "user", "content": "Is invoice INV-7 paid?"}]
            reply: anthropic.types.Message
            if stream:
                with client.messages.stream(model=MODEL, max_tokens=99, messages=first, tools=[TOOL]) as events:
                    reply = events.get_final_message()
            else:
                reply = client.messages.create(model=MODEL, max_tokens=99, messages=first, tools=[TOOL])
            call = reply.content[1]
            assert call.type == "tool_use"
            follow: Any = [
                *first,
                {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in reply.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "paid"}]},
            ]
            final = client.messages.create(model=MODEL, max_tokens=99, messages=follow, tools=[TOOL])
            return [reply.model_dump(), final.model_dump()]

    assert run() == run()
