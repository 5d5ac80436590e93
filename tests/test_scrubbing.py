"""Secrets never reach a cassette, usage figures always do, and scrubbed requests still replay (issue 2 §4).

The end-to-end tests drive the official ``anthropic`` SDK against the Messages API emulator inside the real vcrpy
cassette the plugin uses (`use_cassette`), then read the written file as text: what a reviewer or an attacker
would see. vcrpy also scrubs every live request before matching it, so each scenario is replayed with the
emulator stopped, and with different secret values than were recorded.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anthropic
import pytest
import yaml
from vcr.request import Request

from examples.emulator import ApiError, Emulator, Reply
from pytest_tokenbudget.cassettes import CassetteMiss, json_body_matcher, use_cassette
from pytest_tokenbudget.scrubbing import REDACTED, is_secret, scrub_request, scrub_response, scrub_text
from pytest_tokenbudget.traffic import calls_from_cassette, iter_sse

MODEL = "claude-sonnet-4-6"
GITHUB = "ghp_" + "Q7wX2mN9pL4vB8cT1zY6hJ3kF5dS0aG2e8Rt"
AWS = "AKIA" + "Q7WX2MN9PL4VB8CT"
API_KEY = "abcdef0123456789abcdef"
PASSWORD = "hunter2hunter2"
REQUEST_TOKEN = "rt-Resp0nseHeaderT0ken-77aa"
DB_PASSWORD = "correct-horse-battery-staple-0123456789"
SDK_KEY = "sk-ant-api03-Scrub7estKey0000000000000000000000-abcAA"
SECRETS = (GITHUB, AWS, API_KEY, PASSWORD, REQUEST_TOKEN, DB_PASSWORD, SDK_KEY)
OTHER = {
    "github": "ghp_" + "0therValue0therValue0therValue0ther1",
    "aws": "AKIA" + "0THER0THER0THER0",
    "api_key": "f" * 22,
}
RATE_LIMIT_HEADERS = {
    "anthropic-ratelimit-input-tokens-remaining": "0",
    "anthropic-ratelimit-tokens-reset": "2025-07-29T09:59:33Z",
    "x-ratelimit-reset-tokens": "6m0s",
    "x-ratelimit-remaining-tokens": "149998386",
}
TOOLS = [{"name": "deploy", "description": "Deploy the service", "input_schema": {"type": "object"}}]


def request(uri: str, body: Any = None, headers: Mapping[str, str] | None = None) -> Request:
    raw = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    return Request("POST", uri, raw, dict(headers or {"content-type": "application/json"}))


def response(body: Any, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    raw = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    return {
        "status": {"code": 200, "message": "OK"},
        "headers": {name: [value] for name, value in (headers or {"content-type": "application/json"}).items()},
        "body": {"string": raw},
    }


def scrubbed_twice(item: Request) -> tuple[Request, Request]:
    once = scrub_request(copy.deepcopy(item))
    return once, scrub_request(copy.deepcopy(once))


# --- requests: headers, query strings, bodies --------------------------------------------------------------------


def test_the_audited_request_secrets_are_redacted() -> None:
    body = {
        "model": MODEL,
        "max_tokens": 300,
        "api_key": API_KEY,
        "password": PASSWORD,
        "messages": [{"role": "user", "content": "hi"}],
    }
    headers = {"content-type": "application/json", "X-Custom-Key": GITHUB, "x-stainless-retry-count": "0"}
    item = request(f"https://api.example.com/v1/messages?access_key={AWS}&page=2&max_tokens=5", body, headers)
    scrubbed = scrub_request(copy.deepcopy(item))
    assert scrubbed.headers["X-Custom-Key"] == REDACTED
    assert scrubbed.headers["x-stainless-retry-count"] == "0"
    assert scrubbed.uri == "https://api.example.com/v1/messages?access_key=REDACTED&page=2&max_tokens=5"
    assert json.loads(scrubbed.body) == {**body, "api_key": REDACTED, "password": REDACTED}
    assert not any(secret.encode() in scrubbed.body for secret in SECRETS)


@pytest.mark.parametrize(
    "name",
    [
        *("x-api-key", "Authorization", "proxy-authorization", "cookie", "x-goog-api-key", "anthropic-admin-key"),
        *("X-Custom-Key", "x-access-key", "X-Amz-Credential", "X-Amz-Signature", "x-client-secret"),
        *("x-request-token", "X-Amz-Security-Token", "x-db-password", "x-session-id", "x-auth", "XApiKey"),
    ],
)
def test_a_header_or_query_parameter_named_like_a_credential_is_redacted_whatever_its_value(name: str) -> None:
    item = request(f"https://api.example.com/v1/x?{name}=plain&q=1", {"a": 1}, {name: "plain"})
    scrubbed = scrub_request(item)
    assert scrubbed.headers[name] == REDACTED
    assert scrubbed.uri == f"https://api.example.com/v1/x?{name}=REDACTED&q=1"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("anthropic-ratelimit-input-tokens-remaining", "40000"),
        ("anthropic-ratelimit-output-tokens-limit", "80000"),
        ("anthropic-ratelimit-tokens-reset", "2025-07-29T09:59:33Z"),
        ("x-ratelimit-limit-tokens", "150000000"),
        ("x-ratelimit-reset-tokens", "6m0s"),
        ("x-ratelimit-reset-tokens", "2ms"),
        ("max_tokens", "300"),
    ],
)
def test_names_that_count_tokens_keep_their_figures_but_not_a_secret(name: str, value: str) -> None:
    assert not is_secret(name, value)
    scrubbed = scrub_response(response({"ok": True}, {name: value}))
    assert scrubbed["headers"][name] == [value]
    assert is_secret(name, "opaque-Secret-value")  # a name alone never vouches for a value
    assert scrub_response(response({"ok": True}, {name: "opaque"}))["headers"][name] == [REDACTED]


@pytest.mark.parametrize(
    "secret",
    [
        GITHUB,
        "gho_" + "a" * 36,
        "ghs_" + "B1" * 18,
        "ghu_" + "c2" * 18,
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789",
        AWS,
        "ASIA" + "Z9Y8X7W6V5U4T3S2",
        "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp",
        "xoxa-2-abcdefghijkl",
        "xoxp-1111-2222-3333-abcdef",
        "xoxr-abcdefghij1234",
        "sk-ant-api03-abcdefghij",
        "sk-proj-abcdefghijklmnopqrstuvwxyz",
        "AIzaSyQueryStringKey0123456789abcdefghijk",
    ],
)
def test_key_shaped_values_are_redacted_in_any_header_url_or_body_string(secret: str) -> None:
    body = {"messages": [{"role": "user", "content": f"deploy with {secret} please"}], "note": secret}
    item = request(f"https://api.example.com/v1/x?q={secret}", body, {"x-note": f"value {secret}"})
    scrubbed = scrub_request(item)
    assert scrubbed.headers["x-note"] == "value REDACTED"
    assert scrubbed.uri == "https://api.example.com/v1/x?q=REDACTED"
    assert json.loads(scrubbed.body) == {
        "messages": [{"role": "user", "content": "deploy with REDACTED please"}],
        "note": REDACTED,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc123def456ghi789jkl", "Authorization: Bearer REDACTED"),
        ("use bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "use bearer REDACTED"),
        ("Basic dXNlcjpwYXNzd29yZA==", "Basic REDACTED"),  # base64 of user:password
        ("Basic dXNlcjpwYXNz", "Basic REDACTED"),  # short, all letters, still user:pass
        # prose is not a credential
        ("Basic understanding of the code", "Basic understanding of the code"),
        ("Basic authentication is deprecated", "Basic authentication is deprecated"),
        ("The Bearer of bad news", "The Bearer of bad news"),
        ("Bearer tokens expire", "Bearer tokens expire"),
        ("AKIA is the prefix of an access key id", "AKIA is the prefix of an access key id"),
    ],
)
def test_bearer_and_basic_credentials_are_redacted_and_prose_is_not(text: str, expected: str) -> None:
    assert scrub_text(text) == expected
    assert scrub_text(expected) == expected


def test_body_secrets_are_found_at_any_depth_and_only_strings_change() -> None:
    body = {
        "model": MODEL,
        "max_tokens": 300,
        "metadata": {"user_id": "user-1"},
        "mcp_servers": [{"name": "git", "url": "https://mcp.example.com", "authorization_token": "opaque-value"}],
        "tools": [{"name": "read", "input_schema": {"type": "object", "properties": {"key": {"type": "string"}}}}],
        "messages": [
            {"role": "user", "content": "Deploy"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "deploy",
                        "input": {
                            "credentials": {"aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"},
                            "api_keys": ["first-key-value", "second-key-value"],
                            "author": "Jane Doe",
                            "keyword": "deploy",
                            "key": "config.strict",
                            "token": "Hello",
                            "session": "4f1c2a9e8b7d6c5a4f3e2d1c0b9a8f7e",
                            "retries": 3,
                            "max_tokens": 512,
                        },
                    }
                ],
            },
        ],
    }
    scrubbed = json.loads(scrub_request(request("https://api.example.com/v1/messages", body)).body)
    tool_input = scrubbed["messages"][1]["content"][0]["input"]
    assert tool_input == {
        "credentials": {"aws_secret_access_key": REDACTED},
        "api_keys": [REDACTED, REDACTED],  # a list's strings count as its key's
        "author": "Jane Doe",  # names are compared word by word: "author" is not "auth"
        "keyword": "deploy",
        "key": "config.strict",  # a bare "key" or "token" goes only when shaped like a credential
        "token": "Hello",
        "session": REDACTED,
        "retries": 3,
        "max_tokens": 512,
    }
    assert scrubbed["mcp_servers"][0]["authorization_token"] == REDACTED
    assert scrubbed["tools"] == body["tools"] and scrubbed["metadata"] == body["metadata"]
    assert scrubbed["max_tokens"] == 300


def test_json_inside_a_string_is_scrubbed_and_stays_json() -> None:
    arguments = json.dumps({"password": PASSWORD, "host": "db"})
    body = {"choices": [{"message": {"tool_calls": [{"function": {"name": "login", "arguments": arguments}}]}}]}
    scrubbed = scrub_response(response(body))
    call = json.loads(scrubbed["body"]["string"])["choices"][0]["message"]["tool_calls"][0]["function"]
    assert json.loads(call["arguments"]) == {"password": REDACTED, "host": "db"}


def test_thinking_signatures_and_usage_in_a_response_stay() -> None:
    signature = "EvMCCkYICxgCKkCHP2cSuEdcJK/0rFwqES/ecn+VurRpNTwI4XNyM0vnNfGsc9OmE8YYHauwBZ"
    body = {
        "content": [{"type": "thinking", "thinking": "Let me think.", "signature": signature}],
        "usage": {"input_tokens": 12, "cache_read_input_tokens": 2048, "output_tokens": 7},
    }
    assert scrub_response(response(body))["body"]["string"] == json.dumps(body).encode()  # byte for byte


def test_form_bodies_and_passwords_in_urls_are_scrubbed() -> None:
    form = f"grant_type=client_credentials&client_id=app&client_secret={API_KEY}".encode()
    item = request(
        "https://me:pa55w0rd@auth.example.com/token", form, {"content-type": "application/x-www-form-urlencoded"}
    )
    scrubbed = scrub_request(item)
    assert scrubbed.body == b"grant_type=client_credentials&client_id=app&client_secret=REDACTED"
    assert scrubbed.uri == "https://me:REDACTED@auth.example.com/token"
    assert scrubbed.host == "auth.example.com"


def test_scrubbing_is_deterministic_and_idempotent_so_live_requests_match_stored_ones() -> None:
    body = {"model": MODEL, "api_key": API_KEY, "messages": [{"role": "user", "content": f"key {GITHUB}"}]}
    headers = {"content-type": "application/json", "X-Custom-Key": GITHUB, "traceparent": "00-abc-def-01"}
    live = request(f"https://api.example.com/v1/messages?access_key={AWS}", body, headers)
    once, twice = scrubbed_twice(live)
    assert (once.uri, dict(once.headers), once.body) == (twice.uri, dict(twice.headers), twice.body)
    assert "traceparent" not in once.headers  # differs on every run, never matched
    again = scrub_request(copy.deepcopy(live))
    assert (again.uri, again.body) == (once.uri, once.body)
    # the same request carrying other secrets scrubs to the same form: it still replays
    other_body = {
        **body,
        "api_key": OTHER["api_key"],
        "messages": [{"role": "user", "content": f"key {OTHER['github']}"}],
    }
    other = scrub_request(
        request(f"https://api.example.com/v1/messages?access_key={OTHER['aws']}", other_body, headers)
    )
    json_body_matcher(other, once)
    assert other.query == once.query
    # nothing secret: the body is left byte for byte, key order and spacing included
    plain = b'{"model": "m",  "max_tokens": 5}'
    assert scrub_request(request("https://api.example.com/v1/messages", plain)).body is plain


# --- streamed responses ------------------------------------------------------------------------------------------


def sse(*events: Mapping[str, Any]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def anthropic_stream(text_parts: list[str], json_parts: list[str]) -> bytes:
    return sse(
        {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 10, "output_tokens": 1}}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}} for t in text_parts),
        *(
            {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": p}}
            for p in json_parts
        ),
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 42}},
        {"type": "message_stop"},
    )


def joined(body: bytes, index: int, field: str) -> str:
    parts = []
    for _, data in iter_sse(body.decode()):
        event = json.loads(data)
        if event.get("type") == "content_block_delta" and event["index"] == index:
            parts.append(event["delta"].get(field, ""))
    return "".join(parts)


def test_a_secret_split_across_stream_events_is_scrubbed_and_the_stream_still_adds_up() -> None:
    arguments = json.dumps({"db_password": DB_PASSWORD, "region": "eu"})
    text = f"Your token is {GITHUB}, use it"
    body = anthropic_stream([text[:20], text[20:31], text[31:]], [arguments[:10], arguments[10:25], arguments[25:]])
    headers = {"content-type": "text/event-stream; charset=utf-8", "request-id": "req_1"}
    scrubbed = scrub_response(response(body, headers))["body"]["string"]
    assert isinstance(scrubbed, bytes)
    for secret in (GITHUB, DB_PASSWORD):
        assert not any(secret[i : i + 8] in scrubbed.decode() for i in range(len(secret) - 8)), secret
    assert joined(scrubbed, 0, "text") == "Your token is REDACTED, use it"
    assert json.loads(joined(scrubbed, 1, "partial_json")) == {"db_password": REDACTED, "region": "eu"}
    events = [json.loads(data) for _, data in iter_sse(scrubbed.decode())]
    assert events[-2]["usage"] == {"output_tokens": 42} and events[0]["message"]["usage"]["input_tokens"] == 10
    assert scrub_response(response(scrubbed, headers))["body"]["string"] == scrubbed  # idempotent


def test_a_secret_split_across_openai_chat_chunks_is_scrubbed() -> None:
    arguments = json.dumps({"api_key": API_KEY})
    chunks = [
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "key: sk-proj-abcdefgh"}}]},
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "ijklmnopqrstuvwx done"}}]},
        *(
            {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": part}}]}}],
            }
            for part in (arguments[:12], arguments[12:])
        ),
        {"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
    ]
    body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
    scrubbed = scrub_response(response(body.encode(), {"content-type": "text/event-stream"}))["body"]["string"]
    events = [json.loads(data) for _, data in iter_sse(scrubbed.decode()) if data != "[DONE]"]
    deltas = [event["choices"][0]["delta"] for event in events if event["choices"]]
    assert "".join(d.get("content", "") for d in deltas) == "key: REDACTED done"
    tool_arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if "tool_calls" in d)
    assert json.loads(tool_arguments) == {"api_key": REDACTED}
    assert events[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 4}
    assert scrubbed.endswith(b"data: [DONE]\n\n") and API_KEY.encode() not in scrubbed


# --- end to end: the anthropic SDK, the emulator, vcrpy, a file on disk ------------------------------------------


def deploy_agent(base_url: str, *, stream: bool, secrets: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Asks the model, runs the tool it requests, sends the result back; returns what it saw."""
    values = {"github": GITHUB, "aws": AWS, "api_key": API_KEY, **(secrets or {})}
    client = anthropic.Anthropic(
        base_url=base_url, api_key=SDK_KEY, max_retries=2, default_headers={"X-Custom-Key": values["github"]}
    )
    extra: dict[str, Any] = {
        "extra_query": {"access_key": values["aws"], "page": "2"},
        "extra_body": {"api_key": values["api_key"], "password": PASSWORD},
    }
    messages: list[Any] = [{"role": "user", "content": "Deploy the service"}]
    create: dict[str, Any] = {"model": MODEL, "max_tokens": 300, "tools": TOOLS, "messages": messages, **extra}
    if stream:
        with client.messages.stream(**create) as events:
            first = events.get_final_message()
    else:
        first = client.messages.create(**create)
    use = next(block for block in first.content if block.type == "tool_use")
    messages += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "deployed"}]},
    ]
    final = client.messages.create(**create)
    return {"tool_input": use.input, "answer": final.content[0].text}


def script() -> list[Reply]:
    throttled = ApiError(429, retry_after=0.01, headers={"x-request-token": REQUEST_TOKEN, **RATE_LIMIT_HEADERS})
    return [
        Reply(failure=throttled),
        Reply.tool_use("deploy", {"db_password": DB_PASSWORD, "region": "eu"}),
        Reply.text("Deployed to eu."),
    ]


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = Emulator(script()).start()
    try:
        yield emu
    finally:
        emu.stop()


def assert_no_secret_in(text: str) -> None:
    for secret in SECRETS:
        assert not any(secret[i : i + 10] in text for i in range(len(secret) - 9)), f"{secret} leaked"


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_recorded_cassette_holds_no_secret_and_replays_with_other_secrets(
    tmp_path: Path, emulator: Emulator, stream: bool
) -> None:
    path = tmp_path / "cassettes" / "test_deploy.yaml"
    with use_cassette(path, "once", "test_scrubbing.py::test_deploy") as cassette:
        live = deploy_agent(emulator.base_url, stream=stream)
    assert live == {"tool_input": {"db_password": DB_PASSWORD, "region": "eu"}, "answer": "Deployed to eu."}
    assert [exchange.status for exchange in emulator.exchanges] == [429, 200, 200]
    assert len(cassette.seen) == 3
    emulator.stop()

    text = path.read_text()
    assert_no_secret_in(text)
    interactions = yaml.safe_load(text)["interactions"]
    first = interactions[0]
    sent_headers = {name.lower(): value for name, value in first["request"]["headers"].items()}
    assert sent_headers["x-custom-key"] == [REDACTED]
    sdk_key = [sent_headers[name] for name in ("x-api-key", "authorization") if name in sent_headers]
    assert sdk_key and all(value == [REDACTED] for value in sdk_key)  # how the SDK sends it depends on its version
    assert f"access_key={REDACTED}&page=2" in first["request"]["uri"]
    sent = json.loads(first["request"]["body"])  # still valid JSON, usage limits untouched
    assert (sent["api_key"], sent["password"], sent["max_tokens"]) == (REDACTED, REDACTED, 300)
    throttled = first["response"]["headers"]
    assert throttled["x-request-token"] == [REDACTED]
    assert {name: throttled[name] for name in RATE_LIMIT_HEADERS} == {n: [v] for n, v in RATE_LIMIT_HEADERS.items()}
    echoed = json.loads(interactions[2]["request"]["body"])["messages"][1]["content"]
    assert next(block for block in echoed if block["type"] == "tool_use")["input"]["db_password"] == REDACTED

    recorded_usage = [(c.input_tokens, c.output_tokens, c.cache_read_tokens) for c in calls_from_cassette(path)]
    truth = [e.response["usage"] for e in emulator.exchanges if e.status == 200]
    assert [(u["input_tokens"], u["output_tokens"]) for u in truth] == [(i, o) for i, o, _ in recorded_usage[-2:]]

    # replay with the emulator stopped and every request secret different: scrubbed forms match
    with use_cassette(path, "none", "test_scrubbing.py::test_deploy") as replay:
        replayed = deploy_agent(emulator.base_url, stream=stream, secrets=OTHER)
    assert replayed == {"tool_input": {"db_password": REDACTED, "region": "eu"}, "answer": "Deployed to eu."}
    assert len(replay.seen) == 3 and replay.misses == []
    assert path.read_text() == text


def test_a_miss_in_once_mode_says_the_cassette_exists_and_once_does_not_add(tmp_path: Path, emulator: Emulator) -> None:
    path = tmp_path / "test_deploy.yaml"
    with use_cassette(path, "once", "test_scrubbing.py::test_deploy"):
        deploy_agent(emulator.base_url, stream=False)
    client = anthropic.Anthropic(base_url=emulator.base_url, api_key=SDK_KEY, max_retries=2)
    for mode, why in [
        ("once", "the cassette exists and record mode 'once' does not add to it."),
        ("none", "Recording is off (--tokenbudget-record-mode=none)."),
    ]:
        with (
            pytest.raises(anthropic.AnthropicError) as raised,
            use_cassette(path, mode, "test_scrubbing.py::test_deploy"),
        ):
            client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "Something new"}])
        assert isinstance(raised.value, CassetteMiss)
        message = str(raised.value)
        assert why in message, message
        assert ("Recording is off" in message) == (mode == "none"), message
        assert message.startswith(
            f'request not in cassette {path}: POST /v1/messages (model {MODEL}, last user message "Something new")'
        )
        assert message.endswith('pytest "test_scrubbing.py::test_deploy" --tokenbudget-record-mode=all')
    assert len(emulator.exchanges) == 3  # neither miss reached the server
