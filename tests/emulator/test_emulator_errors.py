"""Errors in Anthropic's envelope, as the SDK sees them: 429 with retry-after, 529, 400, 404, broken scripts."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import anthropic
import pytest

from examples.emulator import Emulator, Reply, tool_results

MODEL = "claude-sonnet-4-6"
HELLO: Any = [{"role": "user", "content": "Hello"}]


def client_for(emulator: Emulator, retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=emulator.base_url, api_key="test", max_retries=retries)


def body_of(error: anthropic.APIStatusError) -> dict[str, Any]:
    assert isinstance(error.body, dict), error.body
    return error.body


def post(emulator: Emulator, path: str, payload: Any) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        emulator.base_url + path, data=json.dumps(payload).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_429_carries_retry_after_and_the_rate_limit_envelope() -> None:
    with Emulator([Reply.error(429, retry_after=7)]) as emu, pytest.raises(anthropic.RateLimitError) as raised:
        client_for(emu).messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    error = raised.value
    assert error.status_code == 429 and error.response.headers["retry-after"] == "7"
    assert body_of(error)["type"] == "error" and body_of(error)["error"]["type"] == "rate_limit_error"
    assert error.request_id == body_of(error)["request_id"] == "req_emu_0001"
    assert "rate limit" in body_of(error)["error"]["message"]


def test_the_sdk_honours_retry_after_and_each_retry_is_a_request() -> None:
    with Emulator(
        [Reply.error(429, retry_after=0.01), Reply.error(529, retry_after=0.01), Reply.text("Finally.")]
    ) as emu:
        client = client_for(emu, retries=2).with_options(timeout=10)
        message = client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert message.content[0].type == "text" and message.content[0].text == "Finally."
    assert [exchange.status for exchange in emu.exchanges] == [429, 529, 200]
    assert len(emu.requests) == 3 and emu.requests[0] == emu.requests[2]


def test_529_is_overloaded() -> None:
    with Emulator([Reply.error(529)]) as emu, pytest.raises(anthropic.OverloadedError) as raised:
        client_for(emu).messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert body_of(raised.value)["error"] == {"type": "overloaded_error", "message": "Overloaded"}


def test_scripted_400_and_no_usage_or_cache_write_on_errors() -> None:
    with Emulator([Reply.error(400, "messages: text content blocks must be non-empty")]) as emu:
        with pytest.raises(anthropic.BadRequestError, match="text content blocks must be non-empty"):
            client_for(emu).messages.create(model=MODEL, max_tokens=10, messages=HELLO)
        assert len(emu.cache) == 0


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"max_tokens": 5, "messages": HELLO}, "model: Field required"),
        ({"model": MODEL, "messages": HELLO}, "max_tokens: Field required"),
        ({"model": MODEL, "max_tokens": 5}, "messages: Field required"),
        (
            {"model": MODEL, "max_tokens": 0, "messages": HELLO},
            "max_tokens: Input should be greater than or equal to 1",
        ),
        ({"model": MODEL, "max_tokens": 5, "messages": []}, "messages: at least one message is required"),
        ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "bot", "content": "x"}]}, "messages.0.role: Input"),
    ],
)
def test_request_shape_is_validated_like_the_real_api(payload: dict[str, Any], message: str) -> None:
    with Emulator([]) as emu:
        status, body = post(emu, "/v1/messages", payload)
    assert status == 400
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith(message) and body["request_id"] == "req_emu_0001"


def test_a_tool_result_without_its_tool_use_is_rejected_through_the_sdk() -> None:
    orphan: Any = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}]
    with Emulator([Reply.text("never")]) as emu, pytest.raises(anthropic.BadRequestError) as raised:
        client_for(emu).messages.create(model=MODEL, max_tokens=10, messages=orphan)
    assert body_of(raised.value)["error"]["message"] == (
        "messages.0.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_9. "
        "Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
    )


def test_a_tool_use_without_its_tool_result_is_rejected() -> None:
    messages: Any = [
        {"role": "user", "content": "Check INV-7"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_invoice", "input": {}}]},
        {"role": "user", "content": "Never mind"},
    ]
    expected = r"messages\.1: `tool_use` ids were found without"
    with Emulator([Reply.text("never")]) as emu, pytest.raises(anthropic.BadRequestError, match=expected):
        client_for(emu).messages.create(model=MODEL, max_tokens=10, messages=messages)


def test_unknown_paths_and_models_are_404() -> None:
    with Emulator([Reply.text("never")]) as emu:
        status, body = post(emu, "/v1/complete", {"prompt": "x"})
        with pytest.raises(anthropic.NotFoundError) as raised:
            client_for(emu).messages.create(model="gpt-4o", max_tokens=10, messages=HELLO)
    assert (status, body["error"]) == (404, {"type": "not_found_error", "message": "Not Found"})
    assert body_of(raised.value)["error"] == {"type": "not_found_error", "message": "model: gpt-4o"}


def test_an_exhausted_script_fails_clearly_without_sdk_retries() -> None:
    with Emulator([Reply.text("only one")]) as emu:
        client = client_for(emu, retries=2)
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
        with pytest.raises(anthropic.InternalServerError, match="script exhausted: 1 replies scripted"):
            client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert len(emu.requests) == 2


def test_a_callable_script_answers_from_the_conversation_and_its_failures_are_reported() -> None:
    def agent_script(body: Any) -> Reply:
        results = tool_results(body)
        if results:
            return Reply.text(f"The invoice is {results[0]['content']}.")
        if "boom" in json.dumps(body["messages"]):
            raise RuntimeError("no rule for boom")
        return Reply.tool_use("get_invoice", {"invoice_id": "INV-7"})

    with Emulator(agent_script) as emu:
        client = client_for(emu, retries=2)
        first = client.messages.create(model=MODEL, max_tokens=50, messages=HELLO)
        call = first.content[0]
        assert call.type == "tool_use"
        follow: Any = [
            *HELLO,
            {"role": "assistant", "content": [call.model_dump(exclude_none=True)]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "paid"}]},
        ]
        second = client.messages.create(model=MODEL, max_tokens=50, messages=follow)
        with pytest.raises(anthropic.InternalServerError, match="script raised RuntimeError: no rule for boom"):
            client.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "boom"}])
    assert second.content[0].type == "text" and second.content[0].text == "The invoice is paid."
    assert len(emu.requests) == 3


def test_set_script_replaces_the_replies() -> None:
    with Emulator([Reply.text("a")]) as emu:
        client = client_for(emu)
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
        emu.set_script([Reply.text("b")])
        message = client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert message.content[0].type == "text" and message.content[0].text == "b" and message.id == "msg_emu_0002"
