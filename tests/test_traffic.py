"""Unit tests of reading recorded LLM traffic: every cassette shape and every branch of the API parsers.

Cassettes are written by vcrpy's own serializer (or recorded by vcrpy against a loopback server), so the
shapes under test are the ones vcrpy really produces; the hand-written YAML ones copy shapes seen in the wild.
"""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import vcr
from vcr.request import Request
from vcr.serialize import serialize
from vcr.serializers import jsonserializer, yamlserializer

from pytest_tokenbudget.records import LLMCall, Usage, canonical_json
from pytest_tokenbudget.traffic import (
    CassetteFormatError,
    Interaction,
    call_from_interaction,
    calls_from_cassette,
    interaction_from_vcr,
    iter_sse,
    load_cassette,
)

ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
OPENAI_CHAT_URL = "https://api.openai.com/v1/chat/completions"
OPENAI_RESPONSES_URL = "https://api.openai.com/v1/responses"
JSON = "application/json"
SSE = "text/event-stream; charset=utf-8"


# --- builders --------------------------------------------------------------------------------------------------


def request(uri: str = ANTHROPIC_URL, body: Any = None, method: str = "POST") -> Request:
    raw = json.dumps(body).encode() if body is not None else b""
    return Request(method, uri, raw, {"content-type": JSON, "x-api-key": "sk-ant-test"})


def response(body: bytes | str, status: int = 200, content_type: str = JSON, **headers: str) -> dict[str, Any]:
    all_headers = {"Content-Type": [content_type]} | {k.replace("_", "-"): [v] for k, v in headers.items()}
    return {"status": {"code": status, "message": "OK"}, "headers": all_headers, "body": {"string": body}}


def sse(*events: tuple[str | None, Any]) -> str:
    lines = []
    for event, data in events:
        if event:
            lines.append(f"event: {event}")
        lines.append(f"data: {data if isinstance(data, str) else json.dumps(data)}")
        lines.append("")
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, *pairs: tuple[Request, dict[str, Any]], name: str = "c.yaml") -> Path:
    """A cassette as vcrpy writes it (its serializer), YAML or JSON by suffix."""
    serializer = jsonserializer if name.endswith(".json") else yamlserializer
    path = tmp_path / name
    path.write_text(serialize({"requests": [p[0] for p in pairs], "responses": [p[1] for p in pairs]}, serializer))
    return path


def only_call(path: Path) -> LLMCall:
    calls = calls_from_cassette(path)
    assert len(calls) == 1, calls
    return calls[0]


ANTHROPIC_REQUEST = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "Weather in Paris?"}],
}

ANTHROPIC_MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"unit": "c", "city": "Paris"}},
        {"type": "text", "text": "One moment."},
    ],
    "stop_reason": "tool_use",
    "usage": {
        "input_tokens": 12,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 2000,
        "output_tokens": 30,
    },
}


def anthropic_stream(start_usage: dict[str, Any], delta_usage: dict[str, Any] | None) -> str:
    events: list[tuple[str | None, Any]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {"id": "msg_s", "model": "claude-haiku-4-5", "content": [], "usage": start_usage},
            },
        ),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_s", "name": "lookup", "input": {}},
            },
        ),
    ]
    for piece in ['{"q": ', '"x", "n"', ": 2}"]:
        delta = {"type": "input_json_delta", "partial_json": piece}
        events.append(("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": delta}))
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 1}))
    if delta_usage is not None:
        events.append(
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": delta_usage})
        )
    events.append(("message_stop", {"type": "message_stop"}))
    return sse(*events)


# --- Anthropic JSON --------------------------------------------------------------------------------------------


def test_anthropic_json_usage_is_semconv_and_content_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, (request(body=ANTHROPIC_REQUEST), response(json.dumps(ANTHROPIC_MESSAGE))))
    call = only_call(path)
    assert call.provider == "anthropic"
    assert call.model == "claude-sonnet-4-5-20250929"  # the response's model, not the alias asked for
    assert call.response_id == "msg_1"
    assert call.input_tokens == 12 + 100 + 2000  # raw input excludes cache; semconv includes both
    assert (call.cache_read_tokens, call.cache_write_tokens, call.output_tokens) == (2000, 100, 30)
    assert call.reasoning_tokens is None
    assert call.stop_reason == "tool_use"
    assert call.output_texts == ("Let me check.", "One moment.")
    assert call.output_text == "Let me check.\nOne moment."
    (tool,) = call.tool_calls
    assert (tool.name, tool.arguments, tool.call_id) == ("get_weather", '{"city":"Paris","unit":"c"}', "toolu_1")
    assert (tool.source, tool.requested_by, tool.error) == ("requested", "msg_1", None)
    assert call.request == ANTHROPIC_REQUEST
    assert (call.source, call.operation, call.error) == ("http", "chat", None)
    assert call.usage_known


def test_model_falls_back_to_the_request(tmp_path: Path) -> None:
    message = {k: v for k, v in ANTHROPIC_MESSAGE.items() if k != "model"}
    path = write(tmp_path, (request(body=ANTHROPIC_REQUEST), response(json.dumps(message))))
    assert only_call(path).model == "claude-sonnet-4-5"


def test_gzip_json_body_is_stored_binary_and_decoded(tmp_path: Path) -> None:
    body = gzip.compress(json.dumps(ANTHROPIC_MESSAGE).encode())
    path = write(tmp_path, (request(body=ANTHROPIC_REQUEST), response(body, Content_Encoding="gzip")))
    assert "!!binary" in path.read_text()  # the openllmetry shape: raw gzip bytes in the cassette
    (interaction,) = load_cassette(path)
    assert interaction.response.json == ANTHROPIC_MESSAGE
    assert interaction.response.body == json.dumps(ANTHROPIC_MESSAGE).encode()
    assert "content-encoding" not in interaction.response.headers  # undone, so no longer claimed
    assert interaction.response.headers["CONTENT-TYPE"] == JSON  # case-insensitive lookup
    assert only_call(path).input_tokens == 2112


def test_gzip_sse_body_is_decoded(tmp_path: Path) -> None:
    stream = anthropic_stream({"input_tokens": 5, "output_tokens": 1}, {"output_tokens": 40})
    body = gzip.compress(stream.encode())
    path = write(tmp_path, (request(body=ANTHROPIC_REQUEST), response(body, content_type=SSE, Content_Encoding="gzip")))
    assert "!!binary" in path.read_text()
    call = only_call(path)
    assert (call.input_tokens, call.output_tokens, call.output_text) == (5, 40, "Hi!")


def test_deflate_body_is_decoded(tmp_path: Path) -> None:
    body = zlib.compress(json.dumps(ANTHROPIC_MESSAGE).encode())
    path = write(tmp_path, (request(body=ANTHROPIC_REQUEST), response(body, Content_Encoding="deflate")))
    assert only_call(path).output_tokens == 30


def test_body_already_decompressed_despite_header_is_read(tmp_path: Path) -> None:
    # httpx-based recorders store the decoded body but keep the Content-Encoding header
    path = write(
        tmp_path, (request(body=ANTHROPIC_REQUEST), response(json.dumps(ANTHROPIC_MESSAGE), Content_Encoding="gzip"))
    )
    assert only_call(path).output_tokens == 30


def test_brotli_body_decoded_when_available_else_usage_unknown(tmp_path: Path) -> None:
    try:
        import brotli  # type: ignore[import-not-found]
    except ImportError:
        brotli = None
    raw = json.dumps(ANTHROPIC_MESSAGE).encode()
    body = brotli.compress(raw) if brotli else b"\x1b\x8f\x00\xf8not-really-brotli"
    path = write(tmp_path, (request(body=ANTHROPIC_REQUEST), response(body, Content_Encoding="br")))
    call = only_call(path)
    if brotli:
        assert call.output_tokens == 30
    else:  # cannot be decoded here: the call is still seen, its usage unknown rather than 0
        assert (call.input_tokens, call.output_tokens, call.output_text, call.error) == (None, None, None, None)
        assert not call.usage_known


# --- Anthropic SSE ---------------------------------------------------------------------------------------------


def test_anthropic_stream_old_api_delta_has_only_output(tmp_path: Path) -> None:
    start = {"input_tokens": 7, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 0, "output_tokens": 1}
    path = write(
        tmp_path,
        (request(body=ANTHROPIC_REQUEST), response(anthropic_stream(start, {"output_tokens": 55}), content_type=SSE)),
    )
    call = only_call(path)
    assert (call.input_tokens, call.cache_read_tokens, call.cache_write_tokens) == (1007, 1000, 0)
    assert call.output_tokens == 55  # message_delta's, not message_start's placeholder
    assert (call.response_id, call.model, call.stop_reason) == ("msg_s", "claude-haiku-4-5", "tool_use")
    assert call.output_texts == ("Hi!",)
    (tool,) = call.tool_calls
    assert (tool.name, tool.arguments, tool.call_id, tool.requested_by) == (
        "lookup",
        '{"n":2,"q":"x"}',
        "toolu_s",
        "msg_s",
    )


def test_anthropic_stream_new_api_delta_repeats_input_and_last_wins(tmp_path: Path) -> None:
    start = {"input_tokens": 7, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0, "output_tokens": 3}
    final = {"input_tokens": 9, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 2, "output_tokens": 60}
    path = write(
        tmp_path, (request(body=ANTHROPIC_REQUEST), response(anthropic_stream(start, final), content_type=SSE))
    )
    call = only_call(path)
    assert (call.input_tokens, call.cache_read_tokens, call.cache_write_tokens, call.output_tokens) == (15, 4, 2, 60)


def test_anthropic_stream_without_message_delta_has_unknown_output(tmp_path: Path) -> None:
    stream = anthropic_stream({"input_tokens": 7, "output_tokens": 1}, None)  # cut off before the final usage
    path = write(tmp_path, (request(body=ANTHROPIC_REQUEST), response(stream, content_type=SSE)))
    call = only_call(path)
    assert (call.input_tokens, call.output_tokens) == (7, None)
    assert not call.usage_known


def test_anthropic_stream_error_event(tmp_path: Path) -> None:
    stream = anthropic_stream({"input_tokens": 7, "output_tokens": 1}, None) + sse(
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    )
    path = write(tmp_path, (request(body=ANTHROPIC_REQUEST), response(stream, content_type=SSE)))
    call = only_call(path)
    assert call.error == "overloaded_error"
    assert (call.input_tokens, call.output_tokens, call.output_text) == (None, None, None)
    assert Usage.of([call]).llm_calls == 0  # a failed call is not counted as spending


PADDED_SINGLE_QUOTED = """\
interactions:
- request:
    body: '{"max_tokens":1024,"messages":[{"role":"user","content":"It''s
      a test"}],"model":"claude-sonnet-4-6","stream":true}'
    headers: {}
    method: POST
    uri: https://api.anthropic.com/v1/messages
  response:
    body:
      string: 'event: message_start

        data: {"type":"message_start","message":{"model":"claude-sonnet-4-6","id":"msg_p","content":[],"usage":{"input_tokens":21,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":4}}               }


        event: content_block_start

        data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}      }


        event: content_block_delta

        data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"I''ll
        check"}            }


        event: message_delta

        data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":9}   }


        event: message_stop

        data: {"type":"message_stop"           }


        '
    headers: {}
    status:
      code: 200
      message: OK
version: 1
"""  # noqa: E501 - a copy of a real cassette's shape, long lines included


def test_padded_sse_in_single_quoted_yaml_without_headers(tmp_path: Path) -> None:
    path = tmp_path / "padded.yaml"
    path.write_text(PADDED_SINGLE_QUOTED)
    (interaction,) = load_cassette(path)
    assert interaction.request.json is not None
    assert interaction.request.json["messages"][0]["content"] == "It's a test"
    assert interaction.response.is_event_stream  # recognised by its body: the headers were scrubbed
    call = call_from_interaction(interaction)
    assert call is not None
    assert (call.input_tokens, call.output_tokens, call.output_text, call.stop_reason) == (
        21,
        9,
        "I'll check",
        "end_turn",
    )


def test_server_tool_result_error_is_attached_to_its_call(tmp_path: Path) -> None:
    message = dict(ANTHROPIC_MESSAGE)
    message["content"] = [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "code_execution", "input": {"code": "1"}},
        {
            "type": "code_execution_tool_result",
            "tool_use_id": "srvtoolu_1",
            "content": {"type": "code_execution_tool_result_error", "error_code": "unavailable"},
        },
        {"type": "server_tool_use", "id": "srvtoolu_2", "name": "code_execution", "input": {"code": "1"}},
        {
            "type": "code_execution_tool_result",
            "tool_use_id": "srvtoolu_2",
            "content": {"type": "code_execution_result"},
        },
    ]
    path = write(tmp_path, (request(body=ANTHROPIC_REQUEST), response(json.dumps(message))))
    first, second = only_call(path).tool_calls
    assert (first.error, second.error) == ("unavailable", None)
    assert first.key == second.key  # the same call made twice
    assert only_call(path).output_text == ""  # content recorded, no text in it


# --- errors, unknown usage, non-LLM traffic ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "status", "body", "expected"),
    [
        (
            ANTHROPIC_URL,
            429,
            {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}},
            "rate_limit_error",
        ),
        (ANTHROPIC_URL, 529, {"type": "error", "error": {"type": "overloaded_error"}}, "overloaded_error"),
        (
            OPENAI_CHAT_URL,
            400,
            {"error": {"message": "bad", "type": "invalid_request_error", "code": None}},
            "invalid_request_error",
        ),
        (
            OPENAI_CHAT_URL,
            429,
            {"error": {"message": "quota", "type": None, "code": "rate_limit_exceeded"}},
            "rate_limit_exceeded",
        ),
        (OPENAI_RESPONSES_URL, 500, "<html>upstream died</html>", "500"),
    ],
)
def test_error_responses(tmp_path: Path, uri: str, status: int, body: Any, expected: str) -> None:
    raw = body if isinstance(body, str) else json.dumps(body)
    path = write(tmp_path, (request(uri, {"model": "m-req"}), response(raw, status=status)))
    call = only_call(path)
    assert call.error == expected
    assert (call.input_tokens, call.output_tokens, call.cache_read_tokens) == (None, None, None)
    assert call.model == "m-req"
    assert call.provider == ("anthropic" if "anthropic" in uri else "openai")


def test_success_without_usage_object_is_unknown_not_zero(tmp_path: Path) -> None:
    message = {k: v for k, v in ANTHROPIC_MESSAGE.items() if k != "usage"}
    chat = {"id": "c", "object": "chat.completion", "model": "gpt", "choices": [{"message": {"content": "x"}}]}
    path = write(
        tmp_path,
        (request(body=ANTHROPIC_REQUEST), response(json.dumps(message))),
        (request(OPENAI_CHAT_URL, {"model": "gpt"}), response(json.dumps(chat))),
    )
    for call in calls_from_cassette(path):
        assert (call.input_tokens, call.output_tokens, call.error) == (None, None, None)
        assert not call.usage_known
    assert Usage.of(calls_from_cassette(path)).unknown_calls == 2


def test_non_llm_interactions_and_count_tokens_are_not_calls(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        (request("https://example.com/pelican.jpg", method="HEAD"), response(b"", content_type="image/jpeg")),
        (request("https://api.anthropic.com/v1/models", method="GET"), response('{"data": []}')),
        (request("https://api.openai.com/v1/embeddings", {"input": "x"}), response('{"usage": {"prompt_tokens": 3}}')),
        (request(ANTHROPIC_URL + "/count_tokens", ANTHROPIC_REQUEST), response('{"input_tokens": 14}')),
        (
            request(ANTHROPIC_URL + "/count_tokens?beta=true", ANTHROPIC_REQUEST),
            response('{"type":"error","error":{"type":"not_found_error"}}', status=404),
        ),
        (request(body=ANTHROPIC_REQUEST), response(json.dumps(ANTHROPIC_MESSAGE))),
    )
    interactions = load_cassette(path)
    assert [i.index for i in interactions] == [0, 1, 2, 3, 4, 5]
    assert [call_from_interaction(i) is None for i in interactions] == [True] * 5 + [False]
    assert [c.response_id for c in calls_from_cassette(path)] == ["msg_1"]


def test_legacy_complete_is_a_call_with_unknown_usage(tmp_path: Path) -> None:
    body = {
        "type": "completion",
        "id": "compl_1",
        "completion": " Hello!",
        "stop_reason": "stop_sequence",
        "model": "claude-instant-1.2",
    }
    path = write(
        tmp_path,
        (request("https://api.anthropic.com/v1/complete", {"prompt": "\n\nHuman: hi"}), response(json.dumps(body))),
    )
    call = only_call(path)
    assert (call.provider, call.model, call.response_id, call.output_text) == (
        "anthropic",
        "claude-instant-1.2",
        "compl_1",
        " Hello!",
    )
    assert (call.input_tokens, call.output_tokens, call.error) == (None, None, None)  # unknown, never 0
    assert call.operation == "text_completion"


def test_legacy_complete_stream(tmp_path: Path) -> None:
    stream = sse(
        (
            "completion",
            {"type": "completion", "id": "compl_2", "completion": " Hel", "stop_reason": None, "model": "claude-2"},
        ),
        (
            "completion",
            {
                "type": "completion",
                "id": "compl_2",
                "completion": "lo",
                "stop_reason": "stop_sequence",
                "model": "claude-2",
            },
        ),
    )
    path = write(
        tmp_path,
        (request("https://api.anthropic.com/v1/complete", {"prompt": "x"}), response(stream, content_type=SSE)),
    )
    call = only_call(path)
    assert (call.output_text, call.stop_reason, call.input_tokens) == (" Hello", "stop_sequence", None)


# --- OpenAI ----------------------------------------------------------------------------------------------------


def test_openai_chat_cached_prompt(tmp_path: Path) -> None:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"b": 1, "a": 2}'}}
                    ],
                },
            }
        ],
        "usage": {
            "prompt_tokens": 2006,
            "completion_tokens": 300,
            "prompt_tokens_details": {"cached_tokens": 1920},
            "completion_tokens_details": {"reasoning_tokens": 256},
        },
    }
    path = write(
        tmp_path,
        (
            request(OPENAI_CHAT_URL, {"model": "gpt-4o-mini"}),
            response(gzip.compress(json.dumps(body).encode()), Content_Encoding="gzip"),
        ),
    )
    call = only_call(path)
    assert call.provider == "openai"
    assert call.input_tokens == 2006  # prompt_tokens already includes the cached ones
    assert (call.cache_read_tokens, call.cache_write_tokens, call.output_tokens, call.reasoning_tokens) == (
        1920,
        None,
        300,
        256,
    )
    assert (call.stop_reason, call.output_text, call.model) == ("tool_calls", "Checking.", "gpt-4o-mini-2024-07-18")
    (tool,) = call.tool_calls
    assert (tool.name, tool.arguments, tool.call_id, tool.requested_by) == (
        "f",
        '{"a":2,"b":1}',
        "call_1",
        "chatcmpl-1",
    )


def chat_chunk(choices: list[Any], usage: Any = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "model": "gpt-4o",
        "choices": choices,
        "usage": usage,
    }


def test_openai_chat_stream_with_usage_chunk(tmp_path: Path) -> None:
    stream = sse(
        (None, chat_chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])),
        (None, chat_chunk([{"index": 0, "delta": {"content": "Hel"}}])),
        (None, chat_chunk([{"index": 0, "delta": {"content": "lo"}}])),
        (
            None,
            chat_chunk(
                [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [{"index": 0, "id": "call_s", "function": {"name": "g", "arguments": ""}}]
                        },
                    }
                ]
            ),
        ),
        (None, chat_chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}}])),
        (None, chat_chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}}])),
        (None, chat_chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])),
        (
            None,
            chat_chunk(
                [], {"prompt_tokens": 50, "completion_tokens": 8, "prompt_tokens_details": {"cached_tokens": 0}}
            ),
        ),
        (None, "[DONE]"),
    )
    path = write(
        tmp_path, (request(OPENAI_CHAT_URL, {"model": "gpt-4o", "stream": True}), response(stream, content_type=SSE))
    )
    call = only_call(path)
    assert (call.input_tokens, call.cache_read_tokens, call.output_tokens) == (50, 0, 8)
    assert (call.response_id, call.output_text, call.stop_reason) == ("chatcmpl-s", "Hello", "tool_calls")
    (tool,) = call.tool_calls
    assert (tool.name, tool.arguments, tool.call_id) == ("g", '{"x":1}', "call_s")


def test_openai_chat_stream_without_usage_is_unknown(tmp_path: Path) -> None:
    stream = sse(
        (None, chat_chunk([{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}])), (None, "[DONE]")
    )
    path = write(
        tmp_path, (request(OPENAI_CHAT_URL, {"model": "gpt-4o", "stream": True}), response(stream, content_type=SSE))
    )
    call = only_call(path)
    assert (call.input_tokens, call.output_tokens, call.output_text) == (None, None, "Hi")


def test_openai_chat_stream_error_payload(tmp_path: Path) -> None:
    stream = sse((None, {"error": {"type": "server_error", "message": "boom"}}))
    path = write(tmp_path, (request(OPENAI_CHAT_URL, {"model": "gpt-4o"}), response(stream, content_type=SSE)))
    assert only_call(path).error == "server_error"


RESPONSE_OBJECT = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "model": "gpt-5-2025-08-07",
    "output": [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "content": [{"type": "output_text", "text": "Sure."}]},
        {"type": "function_call", "call_id": "call_r", "name": "search", "arguments": '{"q":"a"}'},
    ],
    "usage": {
        "input_tokens": 900,
        "input_tokens_details": {"cached_tokens": 512},
        "output_tokens": 120,
        "output_tokens_details": {"reasoning_tokens": 64},
    },
}


def test_openai_responses_json(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        (request(OPENAI_RESPONSES_URL, {"model": "gpt-5", "input": "hi"}), response(json.dumps(RESPONSE_OBJECT))),
    )
    call = only_call(path)
    assert (call.provider, call.model, call.response_id) == ("openai", "gpt-5-2025-08-07", "resp_1")
    assert (call.input_tokens, call.cache_read_tokens, call.output_tokens, call.reasoning_tokens) == (900, 512, 120, 64)
    assert (call.output_text, call.stop_reason) == ("Sure.", "completed")
    (tool,) = call.tool_calls
    assert (tool.name, tool.arguments, tool.call_id, tool.requested_by) == ("search", '{"q":"a"}', "call_r", "resp_1")


def test_openai_responses_stream_uses_response_completed(tmp_path: Path) -> None:
    created = {k: v for k, v in RESPONSE_OBJECT.items() if k not in ("usage", "output")} | {"status": "in_progress"}
    stream = sse(
        ("response.created", {"type": "response.created", "response": created}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Sure."}),
        ("response.completed", {"type": "response.completed", "response": RESPONSE_OBJECT}),
    )
    path = write(
        tmp_path,
        (request(OPENAI_RESPONSES_URL, {"model": "gpt-5", "stream": True}), response(stream, content_type=SSE)),
    )
    call = only_call(path)
    assert (call.input_tokens, call.output_tokens, call.output_text, call.stop_reason) == (
        900,
        120,
        "Sure.",
        "completed",
    )


def test_openai_responses_stream_cut_off_has_unknown_usage(tmp_path: Path) -> None:
    created = {"id": "resp_2", "object": "response", "status": "in_progress", "model": "gpt-5", "output": []}
    stream = sse(("response.created", {"type": "response.created", "response": created}))
    path = write(
        tmp_path,
        (request(OPENAI_RESPONSES_URL, {"model": "gpt-5", "stream": True}), response(stream, content_type=SSE)),
    )
    call = only_call(path)
    assert (call.response_id, call.input_tokens, call.output_tokens) == ("resp_2", None, None)


def test_openai_responses_stream_error_event(tmp_path: Path) -> None:
    stream = sse(("error", {"type": "error", "code": "rate_limit_exceeded", "message": "slow down"}))
    path = write(
        tmp_path,
        (request(OPENAI_RESPONSES_URL, {"model": "gpt-5", "stream": True}), response(stream, content_type=SSE)),
    )
    assert only_call(path).error == "rate_limit_exceeded"


# --- provider detection --------------------------------------------------------------------------------------


def test_provider_by_path_not_host_and_by_shape_behind_a_gateway(tmp_path: Path) -> None:
    chat = {
        "id": "c1",
        "object": "chat.completion",
        "model": "gpt",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    path = write(
        tmp_path,
        (request("http://127.0.0.1:8765/v1/messages", ANTHROPIC_REQUEST), response(json.dumps(ANTHROPIC_MESSAGE))),
        (
            request("http://localhost:9000/anthropic/v1/messages?beta=true", ANTHROPIC_REQUEST),
            response(json.dumps(ANTHROPIC_MESSAGE)),
        ),
        (
            request("https://gw.internal/model/claude/invoke", ANTHROPIC_REQUEST),
            response(json.dumps(ANTHROPIC_MESSAGE)),
        ),
        (request("https://api.anthropic.com/v1/chat/completions", {"model": "claude"}), response(json.dumps(chat))),
        (request("https://gw.internal/llm", {"model": "gpt"}), response(json.dumps(chat))),
    )
    calls = calls_from_cassette(path)
    assert [c.provider for c in calls] == ["anthropic", "anthropic", "anthropic", "openai", "openai"]
    assert [c.input_tokens for c in calls] == [2112, 2112, 2112, 3, 3]


# --- cassette formats ------------------------------------------------------------------------------------------

PARSED_BODY = """\
interactions:
- request:
    headers:
      content-type:
      - application/json
    method: POST
    parsed_body:
      max_tokens: 10
      messages:
      - content: hi
        role: user
      model: claude-3-opus-latest
    uri: https://api.anthropic.com/v1/messages?beta=true
  response:
    headers:
      content-type:
      - application/json
    parsed_body:
      content:
      - text: Hello
        type: text
      id: msg_pb
      model: claude-3-opus-20240229
      role: assistant
      stop_reason: end_turn
      type: message
      usage:
        cache_creation_input_tokens: 0
        cache_read_input_tokens: 0
        input_tokens: 20
        output_tokens: 10
    status:
      code: 200
      message: OK
version: 1
"""


def test_pydantic_ai_parsed_body_on_both_sides(tmp_path: Path) -> None:
    path = tmp_path / "parsed.yaml"
    path.write_text(PARSED_BODY)
    (interaction,) = load_cassette(path)
    assert interaction.request.json is not None
    assert interaction.request.json["model"] == "claude-3-opus-latest"
    assert json.loads(interaction.request.body or b"") == interaction.request.json
    assert json.loads(interaction.response.body or b"")["id"] == "msg_pb"
    call = call_from_interaction(interaction)
    assert call is not None
    assert (call.input_tokens, call.output_tokens, call.output_text) == (20, 10, "Hello")
    assert call.request == interaction.request.json


def test_vcrpy_json_serializer_cassette(tmp_path: Path) -> None:
    path = write(tmp_path, (request(body=ANTHROPIC_REQUEST), response(json.dumps(ANTHROPIC_MESSAGE))), name="c.json")
    assert json.loads(path.read_text())["interactions"]
    assert only_call(path).input_tokens == 2112


def test_python_str_tag_of_old_vcrpy_is_accepted(tmp_path: Path) -> None:
    text = PARSED_BODY.replace("method: POST", "method: !!python/unicode 'POST'")
    path = tmp_path / "old.yaml"
    path.write_text(text)
    assert load_cassette(path)[0].request.method == "POST"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("interactions: [\n  - {request: }", "not a vcrpy YAML cassette"),
        ("", "not a vcrpy cassette: the file is empty"),
        ("just a string", "not a vcrpy cassette: top level is a str"),
        ("- request: {}\n", "pre-1.0 vcrpy format"),
        ("version: 1\nrecorded: []\n", "not a vcrpy cassette: top-level key 'interactions' missing"),
        ("interactions: {a: 1}\n", "'interactions' is not a list"),
        (
            "interactions:\n- request: {method: POST, uri: 'http://x/v1/messages'}\n",
            "interaction 0: key 'response' missing",
        ),
        ("interactions:\n- 3\n", "interaction 0: expected a mapping"),
        (
            "interactions:\n- request: {uri: 'http://x'}\n  response: {status: {code: 200}}\n",
            "interaction 0: request has no 'method' string",
        ),
        (
            "interactions:\n- request: {method: POST, uri: 'http://x'}\n  response: {headers: {}}\n",
            "interaction 0: response has no status code",
        ),
        (
            "interactions:\n- request: {method: POST, uri: 'http://x', body: 3}\n  response: {status: {code: 200}}\n",
            "interaction 0: body must be text or bytes",
        ),
        ("interactions: !!python/object/apply:os.system ['true']\n", "not a vcrpy YAML cassette"),
    ],
)
def test_malformed_cassettes_raise_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cassettes" / "bad.yaml"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(CassetteFormatError) as info:
        load_cassette(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_malformed_json_cassette_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CassetteFormatError, match=r"bad\.json: not a vcrpy JSON cassette"):
        load_cassette(bad)
    with pytest.raises(CassetteFormatError, match=r"missing\.yaml: cannot read cassette"):
        load_cassette(tmp_path / "missing.yaml")


# --- live vcrpy objects ----------------------------------------------------------------------------------------


def test_interaction_from_vcr_request_object_and_mapping() -> None:
    live = interaction_from_vcr(
        request(body=ANTHROPIC_REQUEST), response(json.dumps(ANTHROPIC_MESSAGE).encode()), index=3
    )
    as_dict = interaction_from_vcr(
        {
            "method": "POST",
            "uri": ANTHROPIC_URL,
            "body": json.dumps(ANTHROPIC_REQUEST),
            "headers": {"Content-Type": [JSON]},
        },
        response(json.dumps(ANTHROPIC_MESSAGE)),
    )
    assert isinstance(live, Interaction) and live.index == 3
    assert live.request.headers["X-API-KEY"] == "sk-ant-test"
    assert live.request.json == as_dict.request.json == ANTHROPIC_REQUEST
    assert call_from_interaction(live) == call_from_interaction(as_dict)
    with pytest.raises(TypeError):
        interaction_from_vcr(request(body=ANTHROPIC_REQUEST), "not a response")  # type: ignore[arg-type]


def test_iter_sse_follows_the_event_stream_rules() -> None:
    text = ": comment\r\nevent: a\r\ndata: 1\r\ndata: 2\r\n\r\nid: 7\ndata:3\n\nevent: empty\n\n\ndata: last"
    assert list(iter_sse(text)) == [("a", "1\n2"), ("message", "3"), ("message", "last")]


class _LoopbackLLM(http.server.BaseHTTPRequestHandler):
    """Speaks just enough Messages and Chat Completions API to be recorded: gzip JSON and gzip SSE."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/messages" and body.get("stream"):
            payload = anthropic_stream({"input_tokens": 11, "output_tokens": 1}, {"output_tokens": 22}).encode()
            content_type = SSE
        elif self.path == "/v1/messages":
            payload, content_type = json.dumps(ANTHROPIC_MESSAGE).encode(), JSON
        else:
            chat = {
                "id": "c9",
                "object": "chat.completion",
                "model": "gpt",
                "choices": [{"message": {"content": "ok"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 0}},
            }
            payload, content_type = json.dumps(chat).encode(), JSON
        payload = gzip.compress(payload)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def loopback() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LoopbackLLM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_recorded_by_vcrpy_from_loopback_server(tmp_path: Path, loopback: str) -> None:
    path = tmp_path / "recorded.yaml"

    def post(url: str, body: dict[str, Any]) -> None:
        req = urllib.request.Request(
            url, json.dumps(body).encode(), {"Content-Type": JSON, "x-api-key": "sk-ant-secret"}
        )
        with urllib.request.urlopen(req) as resp:
            resp.read()

    with vcr.use_cassette(str(path), record_mode="once", filter_headers=["x-api-key"]) as cassette:
        post(f"{loopback}/v1/messages", ANTHROPIC_REQUEST)
        post(f"{loopback}/v1/messages", ANTHROPIC_REQUEST | {"stream": True})
        post(f"{loopback}/v1/chat/completions", {"model": "gpt"})
    live = [call_from_interaction(interaction_from_vcr(rq, rs, i)) for i, (rq, rs) in enumerate(cassette.data)]
    from_file = calls_from_cassette(path)
    assert "!!binary" in path.read_text()  # gzip kept as recorded, as in openllmetry's cassettes
    assert live == from_file
    assert [(c.provider, c.input_tokens, c.output_tokens) for c in from_file] == [
        ("anthropic", 2112, 30),
        ("anthropic", 11, 22),
        ("openai", 5, 2),
    ]
    assert [c.output_text for c in from_file] == ["Let me check.\nOne moment.", "Hi!", "ok"]
    assert canonical_json(from_file[1].tool_calls[0].arguments) == '{"n":2,"q":"x"}'


def test_openai_responses_failed_and_anthropic_error_body_with_200(tmp_path: Path) -> None:
    failed = RESPONSE_OBJECT | {"status": "failed", "error": {"code": "server_error", "message": "x"}, "usage": None}
    stream = sse(("response.failed", {"type": "response.failed", "response": failed}))
    path = write(
        tmp_path,
        (request(OPENAI_RESPONSES_URL, {"model": "gpt-5", "stream": True}), response(stream, content_type=SSE)),
        (request(body=ANTHROPIC_REQUEST), response('{"type": "error", "error": {"type": "api_error"}}')),
    )
    assert [(c.error, c.input_tokens) for c in calls_from_cassette(path)] == [
        ("server_error", None),
        ("api_error", None),
    ]
