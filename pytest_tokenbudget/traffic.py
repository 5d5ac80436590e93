"""Turn recorded LLM HTTP traffic into `LLMCall` records, with no pytest and no network.

The HTTP exchange is the ground truth of what a call cost: the provider's own usage object, before any
instrumentation rounded, renamed or dropped it. Both ``tokenbudget inspect`` (cassettes on disk) and the plugin
(``cassette.data`` after a test) read it here. The API is told by the request path (and, behind a gateway with
another path, by the response's shape), never by the host, so loopback emulators and proxies work too.

Token figures follow the OTel GenAI conventions of `records.LLMCall`: ``input_tokens`` includes cache reads and
writes. Anthropic reports ``input_tokens`` without them, OpenAI's ``prompt_tokens`` already includes them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

from .cassette_format import (
    CassetteFormatError,
    Interaction,
    RequestRecord,
    ResponseRecord,
    interaction_from_vcr,
    load_cassette,
)
from .records import LLMCall, ToolCall, canonical_json

__all__ = [
    "CassetteFormatError",
    "Interaction",
    "RequestRecord",
    "ResponseRecord",
    "call_from_interaction",
    "calls_from_cassette",
    "interaction_from_vcr",
    "iter_sse",
    "load_cassette",
    "read_interaction",
]

ANTHROPIC = "anthropic"
OPENAI = "openai"

# Server-executed tool calls appear in Anthropic's content beside the client ones; they count as requested
# calls too (a model that runs the same code twice wastes tokens either way).
_ANTHROPIC_TOOL_BLOCKS = ("tool_use", "server_tool_use", "mcp_tool_use")
_OPENAI_TOOL_ITEMS = ("function_call", "custom_tool_call", "mcp_call")


# --- server-sent events ----------------------------------------------------------------------------------------

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def iter_sse(text: str) -> Iterator[tuple[str, str]]:
    """``(event, data)`` pairs of a text/event-stream body, per the WHATWG parsing rules (event defaults to
    ``message``; several ``data:`` lines join with newlines; comments and ids are skipped)."""
    event, data = "", list[str]()
    for line in _LINE_BREAK.split(text):
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield event or "message", "\n".join(data)


def _sse_json(response: ResponseRecord) -> Iterator[tuple[str, Any]]:
    """The JSON payloads of a stream, with their event names; ``[DONE]`` and non-JSON data are skipped."""
    for event, data in iter_sse(response.text):
        try:
            payload = json.loads(data)
        except ValueError:
            continue
        yield event, payload


# --- small helpers -----------------------------------------------------------------------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(value: Any) -> int | None:
    """A token count as reported, or ``None`` when absent or not a number (never guessed as 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def _count(parsed: _Parsed, usage: Mapping[str, Any], key: str, where: str = "usage") -> int | None:
    """A token count of a usage object; a value that is no whole number >= 0 is unknown (``None``), never used,
    and noted in ``parsed.faults`` naming the field. An absent or null field is simply unknown."""
    value = usage.get(key)
    if value is None:
        return None
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole:
        parsed.faults.append(f"{where}.{key} = {value!r} is not a whole number: treated as unknown")
        return None
    if value < 0:
        parsed.faults.append(f"{where}.{key} = {value!r} is negative: treated as unknown")
        return None
    return int(value)


def _usage_object(parsed: _Parsed, usage: Any) -> Mapping[str, Any]:
    """The usage object; its absence is noted (unless the body itself was already unreadable)."""
    if isinstance(usage, Mapping) and usage:
        return usage
    if usage not in (None, {}):
        parsed.faults.append(f"usage = {usage!r} is not an object: treated as unknown")
    elif not parsed.faults:
        parsed.faults.append("the response reported no usage")
    return {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _error_type(body: Any, fallback: int | str) -> str:
    """The API's error type: Anthropic ``{"error": {"type"}}``, OpenAI ``{"error": {"type", "code"}}``; else
    ``fallback`` (the HTTP status, or ``"error"`` inside a stream)."""
    error = _mapping(body).get("error")
    if isinstance(error, Mapping):
        for key in ("type", "code"):
            if _str(error.get(key)):
                return str(error[key])
    if _str(error):
        return str(error)
    return str(fallback)


def _arguments(value: Any) -> str:
    """Canonical JSON of tool arguments; ``"{}"`` when none were recorded."""
    if value is None or value == "":
        return "{}"
    return canonical_json(value)


@dataclass
class _Parsed:
    """What one API's parser found; turned into an `LLMCall` by `_to_call`."""

    provider: str
    operation: str = "chat"
    response_id: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    stop_reason: str | None = None
    texts: list[str] | None = None
    """``None`` when the content is not known (errors, unreadable bodies); else each text block."""
    tools: list[tuple[str, Any, str | None, str | None]] = field(default_factory=list)
    """(name, arguments, call id, error) of each tool call the response requested."""
    error: str | None = None
    faults: list[str] = field(default_factory=list)
    """What was wrong with the response (an unreadable body, a bad usage figure), one note per fault."""


def _to_call(parsed: _Parsed, request: RequestRecord) -> LLMCall:
    request_json = request.json if isinstance(request.json, Mapping) else None
    model = parsed.model or (_str(request_json.get("model")) if request_json else None)
    texts = parsed.texts
    return LLMCall(
        provider=parsed.provider,
        model=model,
        response_id=parsed.response_id,
        input_tokens=None if parsed.error else parsed.input_tokens,
        cache_read_tokens=None if parsed.error else parsed.cache_read_tokens,
        cache_write_tokens=None if parsed.error else parsed.cache_write_tokens,
        output_tokens=None if parsed.error else parsed.output_tokens,
        reasoning_tokens=None if parsed.error else parsed.reasoning_tokens,
        stop_reason=parsed.stop_reason,
        output_text=None if texts is None else "\n".join(texts),
        output_texts=tuple(texts or ()),
        tool_calls=tuple(
            ToolCall(
                name=name,
                arguments=_arguments(arguments),
                call_id=call_id,
                error=error,
                source="requested",
                requested_by=parsed.response_id,
            )
            for name, arguments, call_id, error in parsed.tools
        ),
        error=parsed.error,
        source="http",
        operation=parsed.operation,
        request=request_json,
    )


def _body_faults(parsed: _Parsed, response: ResponseRecord) -> None:
    """Note why a (non-stream) response body cannot be read: still compressed, empty, not JSON, not an object."""
    if isinstance(response.json, Mapping):
        return
    encoding = response.headers.get("content-encoding")  # left in place only when the body was not decoded
    if encoding and response.json is None:
        hint = " (install brotli to read it)" if "br" in encoding.lower() else ""
        parsed.faults.append(f"the response body is {encoding}-encoded and could not be decoded{hint}")
    elif not response.body:
        parsed.faults.append("the response body is empty")
    elif response.json is None:
        parsed.faults.append(f"the response body is not JSON: {response.text[:40]!r}")
    elif not isinstance(response.json, Mapping):
        parsed.faults.append(f"the response body is a JSON {type(response.json).__name__}, not an object")


# --- Anthropic ---------------------------------------------------------------------------------------------------


def _anthropic_usage(parsed: _Parsed, usage: Any) -> None:
    """Raw Anthropic usage -> semconv: input = input_tokens + cache_read + cache_creation."""
    usage = _usage_object(parsed, usage)
    raw_input = _count(parsed, usage, "input_tokens")
    cache_read = _count(parsed, usage, "cache_read_input_tokens")
    cache_write = _count(parsed, usage, "cache_creation_input_tokens")
    if cache_write is None and isinstance(usage.get("cache_creation"), Mapping):
        creation = usage["cache_creation"]
        parts = [_count(parsed, creation, str(k), "usage.cache_creation") for k in creation]
        cache_write = sum(p for p in parts if p is not None) if any(p is not None for p in parts) else None
    parsed.input_tokens = None if raw_input is None else raw_input + (cache_read or 0) + (cache_write or 0)
    parsed.cache_read_tokens = cache_read
    parsed.cache_write_tokens = cache_write
    parsed.output_tokens = _count(parsed, usage, "output_tokens")


def _anthropic_content(parsed: _Parsed, content: Any) -> None:
    blocks = [b for b in content if isinstance(b, Mapping)] if isinstance(content, list) else []
    tool_errors: dict[str, str] = {}
    for block in blocks:  # a server tool's result comes in the same response; its error belongs to the call
        result = block.get("content")
        if str(block.get("type", "")).endswith("_tool_result") and isinstance(result, Mapping):
            if str(result.get("type", "")).endswith("_error"):
                tool_errors[str(block.get("tool_use_id"))] = str(result.get("error_code") or result["type"])
        elif block.get("type") == "mcp_tool_result" and block.get("is_error"):
            tool_errors[str(block.get("tool_use_id"))] = "tool_error"
    parsed.texts = [str(b.get("text", "")) for b in blocks if b.get("type") == "text"]
    parsed.tools = [
        (str(b.get("name")), b.get("input"), _str(b.get("id")), tool_errors.get(str(b.get("id"))))
        for b in blocks
        if b.get("type") in _ANTHROPIC_TOOL_BLOCKS
    ]


def _anthropic_message(parsed: _Parsed, message: Mapping[str, Any]) -> None:
    parsed.response_id = _str(message.get("id"))
    parsed.model = _str(message.get("model"))
    parsed.stop_reason = _str(message.get("stop_reason"))
    _anthropic_usage(parsed, message.get("usage"))
    _anthropic_content(parsed, message.get("content"))


def _anthropic_stream(response: ResponseRecord) -> tuple[dict[str, Any], str | None]:
    """Rebuild the final Message from a Messages stream; also return the error type of an ``error`` event.

    ``message_start`` carries input and cache figures and a placeholder output count; ``message_delta.usage`` is
    cumulative and final (newer API versions repeat the input and cache figures there), so the last value seen of
    each field wins, and output is known only once a ``message_delta`` reported it.
    """
    message: dict[str, Any] = {}
    usage: dict[str, Any] = {}
    blocks: dict[int, dict[str, Any]] = {}
    partial_json: dict[int, str] = {}
    for event, data in _sse_json(response):
        kind = data.get("type", event) if isinstance(data, Mapping) else event
        data = _mapping(data)
        if kind == "error":
            return message, _error_type(data, "error")
        if kind == "message_start":
            message = dict(_mapping(data.get("message")))
            start_usage = dict(_mapping(message.get("usage")))
            start_usage.pop("output_tokens", None)  # a placeholder, not the output of the call
            usage.update({k: v for k, v in start_usage.items() if v is not None})
        elif kind == "message_delta":
            message.update({k: v for k, v in _mapping(data.get("delta")).items() if v is not None})
            usage.update({k: v for k, v in _mapping(data.get("usage")).items() if v is not None})
        elif kind == "content_block_start":
            index = _int(data.get("index"))
            if index is not None:
                blocks[index] = dict(_mapping(data.get("content_block")))
        elif kind == "content_block_delta":
            block = blocks.setdefault(_int(data.get("index")) or 0, {})
            delta = _mapping(data.get("delta"))
            if delta.get("type") == "text_delta":
                block["text"] = str(block.get("text", "")) + str(delta.get("text", ""))
            elif delta.get("type") == "thinking_delta":
                block["thinking"] = str(block.get("thinking", "")) + str(delta.get("thinking", ""))
            elif delta.get("type") == "input_json_delta":
                index = _int(data.get("index")) or 0
                partial_json[index] = partial_json.get(index, "") + str(delta.get("partial_json", ""))
    for index, text in partial_json.items():
        if text.strip():
            try:
                blocks[index]["input"] = json.loads(text)
            except ValueError:
                blocks[index]["input"] = text  # truncated stream: keep what arrived
    message["content"] = [blocks[i] for i in sorted(blocks)]
    message["usage"] = usage
    return message, None


def _anthropic_messages(response: ResponseRecord) -> _Parsed:
    parsed = _Parsed(ANTHROPIC)
    if response.is_event_stream:
        message, parsed.error = _anthropic_stream(response)
    else:
        _body_faults(parsed, response)
        message = dict(_mapping(response.json))
        if message.get("type") == "error":
            parsed.error = _error_type(message, "error")
    if not parsed.error:
        _anthropic_message(parsed, message)
        if not message.get("content") and not response.is_event_stream and response.json is None:
            parsed.texts = None  # an unreadable body: content and usage unknown
    return parsed


def _anthropic_complete(response: ResponseRecord) -> _Parsed:
    """The legacy Text Completions API: it never reported token usage, so usage stays unknown (not 0)."""
    parsed = _Parsed(ANTHROPIC, operation="text_completion")
    if response.is_event_stream:
        pieces = []
        for event, data in _sse_json(response):
            data = _mapping(data)
            if data.get("type", event) == "error":
                parsed.error = _error_type(data, "error")
                return parsed
            pieces.append(str(data.get("completion") or ""))
            parsed.response_id = parsed.response_id or _str(data.get("id"))
            parsed.model = parsed.model or _str(data.get("model"))
            parsed.stop_reason = _str(data.get("stop_reason")) or parsed.stop_reason
        parsed.texts = ["".join(pieces)]
        return parsed
    body = _mapping(response.json)
    if body.get("type") == "error":
        parsed.error = _error_type(body, "error")
        return parsed
    parsed.response_id = _str(body.get("id"))
    parsed.model = _str(body.get("model"))
    parsed.stop_reason = _str(body.get("stop_reason"))
    parsed.texts = [str(body["completion"])] if "completion" in body else None
    return parsed


# --- OpenAI ------------------------------------------------------------------------------------------------------


def _openai_usage(parsed: _Parsed, usage: Any) -> None:
    """Chat Completions (prompt/completion_tokens) or Responses (input/output_tokens) usage; input incl. cache."""
    usage = _usage_object(parsed, usage)
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        parsed.input_tokens = _count(parsed, usage, "prompt_tokens")
        parsed.output_tokens = _count(parsed, usage, "completion_tokens")
        details = ("prompt_tokens_details", "completion_tokens_details")
    else:
        parsed.input_tokens = _count(parsed, usage, "input_tokens")
        parsed.output_tokens = _count(parsed, usage, "output_tokens")
        details = ("input_tokens_details", "output_tokens_details")
    input_details, output_details = (_mapping(usage.get(key)) for key in details)
    parsed.cache_read_tokens = _count(parsed, input_details, "cached_tokens", f"usage.{details[0]}")
    parsed.cache_write_tokens = _count(parsed, input_details, "cache_write_tokens", f"usage.{details[0]}")
    parsed.reasoning_tokens = _count(parsed, output_details, "reasoning_tokens", f"usage.{details[1]}")


def _message_text(content: Any) -> str | None:
    """A chat message's content: a string, or a list of parts (some compatible servers) of which text counts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and "text" in p)
    return None


def _openai_completion(parsed: _Parsed, body: Mapping[str, Any]) -> None:
    """A Chat Completions (or legacy Completions) response body, or one rebuilt from its stream."""
    parsed.response_id = _str(body.get("id"))
    parsed.model = _str(body.get("model"))
    _openai_usage(parsed, body.get("usage"))
    choices = [c for c in body.get("choices") or [] if isinstance(c, Mapping)]
    parsed.texts = []
    for choice in choices:
        message = _mapping(choice.get("message"))
        text = _message_text(message.get("content")) if message else _str(choice.get("text"))
        if text:
            parsed.texts.append(text)
        for call in message.get("tool_calls") or []:
            function = _mapping(_mapping(call).get("function"))
            parsed.tools.append(
                (str(function.get("name")), function.get("arguments"), _str(_mapping(call).get("id")), None)
            )
    if choices:
        parsed.stop_reason = _str(choices[0].get("finish_reason"))


def _openai_chat_stream(response: ResponseRecord) -> tuple[dict[str, Any], str | None]:
    """Rebuild a completion from ``chat.completion.chunk`` events; usage comes in the chunk that has it (the
    last one with ``stream_options.include_usage``). An ``error`` payload ends the stream with its type."""
    body: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for event, chunk in _sse_json(response):
        chunk = _mapping(chunk)
        if event == "error" or chunk.get("error"):
            return body, _error_type(chunk, "error")
        for key in ("id", "model"):
            if _str(chunk.get(key)) and not body.get(key):
                body[key] = chunk[key]
        if isinstance(chunk.get("usage"), Mapping):
            body["usage"] = chunk["usage"]
        for raw_choice in chunk.get("choices") or []:
            choice_delta = _mapping(raw_choice)
            choice = choices.setdefault(_int(choice_delta.get("index")) or 0, {"content": "", "tool_calls": {}})
            if _str(choice_delta.get("finish_reason")):
                choice["finish_reason"] = choice_delta["finish_reason"]
            if "text" in choice_delta:  # legacy Completions stream
                choice["content"] += str(choice_delta.get("text") or "")
            delta = _mapping(choice_delta.get("delta"))
            choice["content"] += _message_text(delta.get("content")) or ""
            for raw_call in delta.get("tool_calls") or []:
                call_delta = _mapping(raw_call)
                call = choice["tool_calls"].setdefault(_int(call_delta.get("index")) or 0, {"arguments": ""})
                if _str(call_delta.get("id")):
                    call["id"] = call_delta["id"]
                function = _mapping(call_delta.get("function"))
                if _str(function.get("name")):
                    call["name"] = function["name"]
                call["arguments"] += str(function.get("arguments") or "")
    body["choices"] = [
        {
            "index": index,
            "finish_reason": choice.get("finish_reason"),
            "message": {
                "content": choice["content"],
                "tool_calls": [
                    {"id": call.get("id"), "function": {"name": call.get("name"), "arguments": call["arguments"]}}
                    for _, call in sorted(choice["tool_calls"].items())
                ],
            },
        }
        for index, choice in sorted(choices.items())
    ]
    return body, None


def _openai_chat(response: ResponseRecord, operation: str = "chat") -> _Parsed:
    parsed = _Parsed(OPENAI, operation=operation)
    if response.is_event_stream:
        body, parsed.error = _openai_chat_stream(response)
    else:
        _body_faults(parsed, response)
        body = dict(_mapping(response.json))
        if body.get("error") and not body.get("choices"):
            parsed.error = _error_type(body, "error")
    if not parsed.error:
        _openai_completion(parsed, body)
        if response.json is None and not response.is_event_stream:
            parsed.texts = None
    return parsed


def _openai_response_object(parsed: _Parsed, body: Mapping[str, Any]) -> None:
    """A Responses API ``response`` object (the JSON body, or the one in ``response.completed``)."""
    parsed.response_id = _str(body.get("id"))
    parsed.model = _str(body.get("model"))
    _openai_usage(parsed, body.get("usage"))
    if body.get("status") == "failed":
        parsed.error = _error_type(body, "failed")
    incomplete = _mapping(body.get("incomplete_details"))
    parsed.stop_reason = _str(incomplete.get("reason")) or _str(body.get("status"))
    parsed.texts = []
    for item in body.get("output") or []:
        item = _mapping(item)
        if item.get("type") == "message":
            for part in item.get("content") or []:
                part = _mapping(part)
                if part.get("type") == "output_text":
                    parsed.texts.append(str(part.get("text", "")))
        elif item.get("type") in _OPENAI_TOOL_ITEMS:
            arguments = item.get("arguments", item.get("input"))
            call_id = _str(item.get("call_id")) or _str(item.get("id"))
            parsed.tools.append((str(item.get("name")), arguments, call_id, _str(item.get("error"))))


_RESPONSES_FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


def _openai_responses(response: ResponseRecord) -> _Parsed:
    parsed = _Parsed(OPENAI)
    if response.is_event_stream:
        final: Mapping[str, Any] = {}
        for event, data in _sse_json(response):
            data = _mapping(data)
            kind = data.get("type", event)
            if kind == "error":
                nested = isinstance(data.get("error"), Mapping)  # ResponseErrorEvent: code/message at top level
                parsed.error = _error_type(data, "error") if nested else _str(data.get("code")) or "error"
                return parsed
            if (kind == "response.created" and not final) or kind in _RESPONSES_FINAL_EVENTS:
                final = _mapping(data.get("response"))
        _openai_response_object(parsed, final)
        return parsed
    _body_faults(parsed, response)
    body = _mapping(response.json)
    if isinstance(body.get("error"), Mapping) and "output" not in body:
        parsed.error = _error_type(body, "error")
        return parsed
    _openai_response_object(parsed, body)
    if response.json is None:
        parsed.texts = None
    return parsed


# --- dispatch ----------------------------------------------------------------------------------------------------


def _api_by_path(path: str) -> str | None:
    for suffix, api in (
        ("/messages", "anthropic_messages"),
        ("/complete", "anthropic_complete"),
        ("/chat/completions", "openai_chat"),
        ("/responses", "openai_responses"),
        ("/completions", "openai_completions"),
    ):
        if path.endswith(suffix):
            return api
    return None


def _api_by_shape(response: ResponseRecord) -> str | None:
    """For a gateway that serves a known API under another path: recognise the response body itself."""
    if response.is_event_stream:
        first = next(_sse_json(response), ("", None))[1]
        body = _mapping(first)
        if body.get("type") == "message_start":
            return "anthropic_messages"
        if body.get("object") == "chat.completion.chunk":
            return "openai_chat"
        if str(body.get("type", "")).startswith("response."):
            return "openai_responses"
        return None
    body = _mapping(response.json)
    if body.get("type") == "message" and body.get("role") == "assistant":
        return "anthropic_messages"
    if body.get("object") == "chat.completion":
        return "openai_chat"
    if body.get("object") == "response":
        return "openai_responses"
    return None


def _error_parsed(api: str, response: ResponseRecord) -> _Parsed:
    provider = ANTHROPIC if api.startswith("anthropic") else OPENAI
    operation = "text_completion" if api in ("anthropic_complete", "openai_completions") else "chat"
    return _Parsed(provider, operation=operation, error=_error_type(response.json, response.status))


def call_from_interaction(interaction: Interaction) -> LLMCall | None:
    """The model call recorded in one interaction, or ``None`` when it is not a generation (count_tokens,
    model lists, fetched images ...). Errors give a call with ``error`` set and no usage; a response without a
    usage object gives a call whose usage is unknown (``None``)."""
    return read_interaction(interaction)[0]


def read_interaction(interaction: Interaction) -> tuple[LLMCall | None, tuple[str, ...]]:
    """`call_from_interaction`'s call, and a note per fault of the response that left a figure unknown (a body
    that is not JSON or cannot be decompressed, a negative or fractional token count ...)."""
    request, response = interaction.request, interaction.response
    if request.method.upper() != "POST":
        return None, ()
    path = request.path.rstrip("/")
    if path.endswith("/count_tokens"):  # a token count, not a generation: it costs nothing
        return None, ()
    api = _api_by_path(path) or _api_by_shape(response)
    if api is None:
        return None, ()
    if response.status >= 400:
        parsed = _error_parsed(api, response)
    elif api == "anthropic_messages":
        parsed = _anthropic_messages(response)
    elif api == "anthropic_complete":
        parsed = _anthropic_complete(response)
    elif api == "openai_chat":
        parsed = _openai_chat(response)
    elif api == "openai_completions":
        parsed = _openai_chat(response, operation="text_completion")
    else:
        parsed = _openai_responses(response)
    return _to_call(parsed, request), tuple(parsed.faults)


def calls_from_cassette(path: str | PathLike[str]) -> list[LLMCall]:
    """Every model call recorded in a cassette file, in order (non-LLM interactions left out)."""
    return [call for call in map(call_from_interaction, load_cassette(path)) if call is not None]
