"""End to end through the real SDKs: record against a loopback server, stop it, replay, and get the same figures.

The inner suite calls the Messages API emulator (``examples.emulator``) with the official ``anthropic`` SDK in
every way an agent does (sync and async; ``messages.create`` as JSON and with ``stream=True``;
``messages.stream``; a tool round trip). Each inner test caches a system prompt of its own, so every scenario
writes and then reads the prompt cache. An inner conftest dumps ``tokenbudget.usage`` of every test to a file, so
runs can be compared figure for figure; the emulator's own answers are the ground truth.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import anthropic  # noqa: F401  (imported once here, so in-process inner runs do not re-import it)
import openai  # noqa: F401
import pytest
import vcr  # noqa: F401
import yaml

from examples.emulator import SCENARIOS, Emulator, Reply

REPO = Path(__file__).resolve().parents[1]
PLUGIN_ARGS: tuple[str, ...] = (
    ()
    if any(ep.name == "tokenbudget" for ep in entry_points(group="pytest11"))
    else ("-p", "pytest_tokenbudget.plugin")
)
RECORD_KEY = "sk-ant-api03-Rec0rdKeyQ7wX2mN9pL4vB8cT1zY6hJ3kF5dS0aG-e2eAA"
REPLAY_KEY = "sk-ant-api03-Rep1ayKeyDifferentFromTheRecordingOne000-e2eBB"
MODEL = "claude-sonnet-4-6"
USAGE_KEYS = ("input_tokens", "output_tokens", "total_tokens", "cache_write_tokens", "llm_calls", "cost_usd")

SCENARIO_NAMES = (
    "sync_create",
    "sync_create_stream",
    "sync_messages_stream",
    "async_create",
    "async_create_stream",
    "async_messages_stream",
    "sync_tool_loop",
)
PROMPTS: dict[str, list[str]] = {
    name: [f"Review change number one of {name}", f"Now review change number two of {name}"] for name in SCENARIO_NAMES
}
PROMPTS["sync_tool_loop"] = ["What does the repository config say?"]
PROMPTS["sync_create"].append(f"By the way, my key is {RECORD_KEY}, keep it secret")

INNER_CONFTEST = """
import json
import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def dump_usage(tokenbudget, request):
    yield
    folder = Path(os.environ["USAGE_DUMP"])
    folder.mkdir(exist_ok=True)
    (folder / f"{request.node.name}.json").write_text(json.dumps(tokenbudget.usage.as_dict()))
"""

INNER_TESTS = '''
import asyncio
import os

import anthropic
import pytest

BASE_URL = __BASE_URL__
MODEL = __MODEL__
PROMPTS = __PROMPTS__
LIMITS = __LIMITS__
REORDER = __REORDER__
SYSTEM_TOKENS = 1100
TOOLS = [{"name": "read_config", "description": "Read the repository config",
          "input_schema": {"type": "object", "properties": {}}}]


def key():
    return os.environ["INNER_API_KEY"]


def request(name, text, **extra):
    """A request whose JSON body has a different key order when REORDER is set (the cassette must not care)."""
    system = [{"type": "text", "text": f"You review {name}." + " word" * SYSTEM_TOKENS,
               "cache_control": {"type": "ephemeral"}}]
    message = {"role": "user", "content": text}
    body = {"model": MODEL, "max_tokens": 300, "system": system, "messages": [message], **extra}
    if REORDER:
        system[0] = dict(reversed(list(system[0].items())))
        body["messages"] = [dict(reversed(list(message.items())))]
        body = dict(reversed(list(body.items())))
    return body


def budget(name):
    return pytest.mark.tokenbudget(**LIMITS.get(name, {}))


@budget("sync_create")
def test_sync_create():
    client = anthropic.Anthropic(base_url=BASE_URL, api_key=key())
    for text in PROMPTS["sync_create"]:
        client.messages.create(**request("sync_create", text))


@budget("sync_create_stream")
def test_sync_create_stream():
    client = anthropic.Anthropic(base_url=BASE_URL, api_key=key())
    for text in PROMPTS["sync_create_stream"]:
        events = [event.type for event in client.messages.create(**request("sync_create_stream", text), stream=True)]
        assert events[0] == "message_start" and events[-1] == "message_stop"


@budget("sync_messages_stream")
def test_sync_messages_stream():
    client = anthropic.Anthropic(base_url=BASE_URL, api_key=key())
    for text in PROMPTS["sync_messages_stream"]:
        with client.messages.stream(**request("sync_messages_stream", text)) as stream:
            assert "".join(stream.text_stream)
            assert stream.get_final_message().usage.output_tokens > 0


@budget("async_create")
def test_async_create():
    async def main():
        client = anthropic.AsyncAnthropic(base_url=BASE_URL, api_key=key())
        for text in PROMPTS["async_create"]:
            await client.messages.create(**request("async_create", text))
    asyncio.run(main())


@budget("async_create_stream")
def test_async_create_stream():
    async def main():
        client = anthropic.AsyncAnthropic(base_url=BASE_URL, api_key=key())
        for text in PROMPTS["async_create_stream"]:
            stream = await client.messages.create(**request("async_create_stream", text), stream=True)
            async for _ in stream:
                pass
    asyncio.run(main())


@budget("async_messages_stream")
def test_async_messages_stream():
    async def main():
        client = anthropic.AsyncAnthropic(base_url=BASE_URL, api_key=key())
        for text in PROMPTS["async_messages_stream"]:
            async with client.messages.stream(**request("async_messages_stream", text)) as stream:
                await stream.get_final_message()
    asyncio.run(main())


@budget("sync_tool_loop")
def test_sync_tool_loop(tokenbudget):
    client = anthropic.Anthropic(base_url=BASE_URL, api_key=key())
    body = request("sync_tool_loop", PROMPTS["sync_tool_loop"][0], tools=TOOLS)
    first = client.messages.create(**body)
    use = next(block for block in first.content if block.type == "tool_use")
    body["messages"] = [*body["messages"], {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                      "content": "strict = true"}]}]
    client.messages.create(**body)
    assert tokenbudget.usage.tool_calls == 1
'''


def inner_module(
    base_url: str,
    *,
    limits: Mapping[str, Mapping[str, Any]] | None = None,
    reorder: bool = False,
    prompts: Mapping[str, list[str]] | None = None,
) -> str:
    text = INNER_TESTS
    for token, value in (
        ("__BASE_URL__", base_url),
        ("__MODEL__", MODEL),
        ("__PROMPTS__", prompts or PROMPTS),
        ("__LIMITS__", dict(limits or {})),
        ("__REORDER__", reorder),
    ):
        text = text.replace(token, repr(value))
    return text


def run(pytester: pytest.Pytester, dump: Path, *args: str, key: str = REPLAY_KEY) -> pytest.RunResult:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("USAGE_DUMP", str(dump))  # where the inner conftest writes each test's usage
        patch.setenv("INNER_API_KEY", key)
        return pytester.runpytest(*PLUGIN_ARGS, "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning", *args)


def dumped(folder: Path) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def failure_text(result: pytest.RunResult, nodeid: str) -> str:
    for report in result.reprec.getreports("pytest_runtest_logreport"):  # type: ignore[attr-defined]
        if report.nodeid == nodeid and report.failed:
            return str(report.longrepr)
    raise AssertionError(f"{nodeid} did not fail")


def emulator_usage(emu: Emulator, name: str) -> dict[str, int]:
    """What the emulator answered to one scenario, in the plugin's (semconv) terms."""
    totals = {"input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0, "llm_calls": 0}
    for exchange in emu.exchanges:
        if f"You review {name}." not in json.dumps(exchange.body):
            continue
        usage = exchange.response["usage"]
        totals["input_tokens"] += (
            usage["input_tokens"] + usage["cache_creation_input_tokens"] + usage["cache_read_input_tokens"]
        )
        totals["output_tokens"] += usage["output_tokens"]
        totals["cache_read_tokens"] += usage["cache_read_input_tokens"]
        totals["cache_write_tokens"] += usage["cache_creation_input_tokens"]
        totals["llm_calls"] += 1
    return totals


class Recording:
    """The inner suite recorded with ``once``; the emulator is stopped before anything is replayed."""

    def __init__(self, pytester: pytest.Pytester, tmp: Path) -> None:
        self.pytester = pytester
        self.tmp = tmp
        self.emulator = Emulator(SCENARIOS["tool-loop"]).start()
        self.base_url = self.emulator.base_url
        pytester.makeconftest(INNER_CONFTEST)
        pytester.makepyfile(test_e2e=inner_module(self.base_url))
        self.result = run(pytester, tmp / "record", "--tokenbudget-record-mode=once", key=RECORD_KEY)
        self.usage = dumped(tmp / "record")
        self.truth = {name: emulator_usage(self.emulator, name) for name in SCENARIO_NAMES}
        self.emulator.stop()
        self.cassettes = pytester.path / "cassettes" / "test_e2e"

    def replay(self, label: str, *args: str, **module: Any) -> tuple[pytest.RunResult, dict[str, dict[str, Any]]]:
        self.pytester.makepyfile(test_e2e=inner_module(self.base_url, **module))
        result = run(self.pytester, self.tmp / label, *args)
        return result, dumped(self.tmp / label)


@pytest.fixture
def recording(pytester: pytest.Pytester, tmp_path: Path) -> Recording:
    return Recording(pytester, tmp_path)


def test_record_then_replay_without_the_server_gives_identical_usage(recording: Recording) -> None:
    recording.result.assert_outcomes(passed=len(SCENARIO_NAMES))
    assert sorted(p.name for p in recording.cassettes.iterdir()) == sorted(f"test_{n}.yaml" for n in SCENARIO_NAMES)
    for name in SCENARIO_NAMES:
        usage, truth = recording.usage[f"test_{name}"], recording.truth[name]
        assert {k: usage[k] for k in truth} == truth, name
        assert truth["cache_write_tokens"] > 1000 and truth["cache_read_tokens"] > 1000, name  # caching happened
        assert usage["unknown_calls"] == 0 and usage["cost_usd"] > 0, name
    assert recording.usage["test_sync_tool_loop"]["tool_calls"] == 1

    result, replayed = recording.replay("replay")  # default record mode: none; the emulator is gone
    result.assert_outcomes(passed=len(SCENARIO_NAMES))
    assert replayed == recording.usage

    parallel, in_workers = recording.replay("xdist", "-p", "xdist", "-n", "2")
    parallel.assert_outcomes(passed=len(SCENARIO_NAMES))
    assert in_workers == recording.usage
    # the workers' results reached the controller: one row per test and the totals of all of them
    assert len(re.findall(r"^ *test_e2e\.py::test_\w+ +\d", parallel.stdout.str(), re.MULTILINE)) == len(SCENARIO_NAMES)
    total_input = sum(usage["input_tokens"] for usage in recording.usage.values())
    assert re.search(rf"TOTAL \({len(SCENARIO_NAMES)} tests\) +\d+ +{total_input:,} ", parallel.stdout.str())


def test_budget_one_token_under_the_real_figure_fails_and_at_it_passes(recording: Recording) -> None:
    at_figure = {f: {k: recording.usage[f"test_{f}"][k] for k in USAGE_KEYS} for f in SCENARIO_NAMES}
    result, _ = recording.replay("at", limits=at_figure)
    result.assert_outcomes(passed=len(SCENARIO_NAMES))

    under = {f: {"total_tokens": recording.usage[f"test_{f}"]["total_tokens"] - 1} for f in SCENARIO_NAMES}
    result, _ = recording.replay("under", limits=under)
    result.assert_outcomes(failed=len(SCENARIO_NAMES))
    for name in SCENARIO_NAMES:
        total = recording.usage[f"test_{name}"]["total_tokens"]
        message = failure_text(result, f"test_e2e.py::test_{name}")
        assert f"total_tokens: {total:,} > limit {total - 1:,}" in message, message
        assert f"1. {MODEL}: input " in message

    cache_under = {
        f: {"cache_write_tokens": recording.usage[f"test_{f}"]["cache_write_tokens"] - 1} for f in SCENARIO_NAMES
    }
    result, _ = recording.replay("cache-under", limits=cache_under)
    result.assert_outcomes(failed=len(SCENARIO_NAMES))


def test_recorded_cassettes_contain_no_api_key(recording: Recording) -> None:
    checked_headers = 0
    for path in recording.cassettes.iterdir():
        text = path.read_text()
        assert RECORD_KEY not in text and RECORD_KEY[14:] not in text, path
        assert REPLAY_KEY not in text, path
        assert "sk-ant-" not in text, path
        for interaction in yaml.safe_load(text)["interactions"]:
            headers = {k.lower(): v for k, v in interaction["request"]["headers"].items()}
            for name in ("x-api-key", "authorization"):
                if name in headers:
                    assert headers[name] == ["REDACTED"], (path, name)
                    checked_headers += 1
    assert checked_headers >= len(SCENARIO_NAMES)
    body = yaml.safe_load((recording.cassettes / "test_sync_create.yaml").read_text())["interactions"][2]
    assert "my key is REDACTED, keep it secret" in body["request"]["body"]


def test_reordered_json_keys_replay_but_a_changed_prompt_is_a_fast_clear_miss(recording: Recording) -> None:
    result, reordered = recording.replay("reordered", reorder=True)
    result.assert_outcomes(passed=len(SCENARIO_NAMES))
    assert reordered == recording.usage

    prompts = {name: list(texts) for name, texts in PROMPTS.items()}
    prompts["sync_create"][1] = "Now review change number two of sync_create, and be thorough about the tests"
    prompts["async_messages_stream"][0] = "Review change number one of async_messages_stream carefully"
    result, _ = recording.replay("changed", prompts=prompts)
    result.assert_outcomes(passed=len(SCENARIO_NAMES) - 2, failed=2)
    cassette = recording.cassettes / "test_sync_create.yaml"
    message = failure_text(result, "test_e2e.py::test_sync_create")
    assert message.count("request not in cassette") == 1, message  # the SDK did not retry the miss
    assert (
        f"request not in cassette {cassette}: POST /v1/messages (model {MODEL}, last user message "
        '"Now review change number two of sync_create, and ...")'  # the first eight words
    ) in message
    assert 'pytest "test_e2e.py::test_sync_create" --tokenbudget-record-mode=all' in message
    message = failure_text(result, "test_e2e.py::test_async_messages_stream")
    assert message.count("request not in cassette") == 1, message
    assert 'last user message "Review change number one of async_messages_stream carefully")' in message
    assert 'pytest "test_e2e.py::test_async_messages_stream" --tokenbudget-record-mode=all' in message
    assert "RetryError" not in result.stdout.str() and "APIConnectionError" not in result.stdout.str()


def test_a_missing_cassette_names_the_once_command(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_e2e=inner_module("http://127.0.0.1:9"))
    result = run(pytester, tmp_path / "none", "-k", "sync_create and not stream")
    message = failure_text(result, "test_e2e.py::test_sync_create")
    assert f"request not in cassette {pytester.path / 'cassettes' / 'test_e2e' / 'test_sync_create.yaml'}" in message
    assert 'pytest "test_e2e.py::test_sync_create" --tokenbudget-record-mode=once' in message


# --- openai: no spans, measured from the HTTP traffic alone ---------------------------------------------------------


class _ChatCompletions(BaseHTTPRequestHandler):
    """The smallest OpenAI chat-completions endpoint: a fixed answer with a realistic usage object."""

    protocol_version = "HTTP/1.1"
    served: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        number = len(self.served) + 1
        self.served.append(body)
        prompt = 120 * number
        answer = {
            "id": f"chatcmpl-loop{number}",
            "object": "chat.completion",
            "created": 1700000000,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": f"Answer {number}", "refusal": None},
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": 7,
                "total_tokens": prompt + 7,
                "prompt_tokens_details": {"cached_tokens": 64 * (number - 1), "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def chat_server() -> Iterator[tuple[str, list[dict[str, Any]], ThreadingHTTPServer]]:
    handler: type[_ChatCompletions] = type("Handler", (_ChatCompletions,), {"served": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host!s}:{port}/v1", handler.served, server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_openai_measured_from_http_traffic_only(
    pytester: pytest.Pytester, tmp_path: Path, chat_server: tuple[str, list[dict[str, Any]], ThreadingHTTPServer]
) -> None:
    base_url, served, server = chat_server
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(
        test_openai=f"""
        import openai
        import pytest

        @pytest.mark.tokenbudget(llm_calls=2, input_tokens=360, output_tokens=14)
        def test_two_calls(tokenbudget):
            client = openai.OpenAI(base_url={base_url!r}, api_key="sk-proj-0penAIKeyThatMustNeverBeWritten000000")
            for text in ("first question", "second question"):
                client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": text}}])
            assert tokenbudget.spans == ()  # the openai SDK emits no spans: the cassette is the only evidence
        """
    )
    record = run(pytester, tmp_path / "record", "--tokenbudget-record-mode=once")
    record.assert_outcomes(passed=1)
    assert len(served) == 2
    server.shutdown()
    server.server_close()
    replay = run(pytester, tmp_path / "replay")
    replay.assert_outcomes(passed=1)
    usage = dumped(tmp_path / "record")["test_two_calls"]
    assert dumped(tmp_path / "replay")["test_two_calls"] == usage
    assert {k: usage[k] for k in ("input_tokens", "cache_read_tokens", "output_tokens", "llm_calls")} == {
        "input_tokens": 360,
        "cache_read_tokens": 64,
        "output_tokens": 14,
        "llm_calls": 2,
    }
    assert usage["cost_usd"] is not None and usage["cost_usd"] > 0
    cassette = (pytester.path / "cassettes" / "test_openai" / "test_two_calls.yaml").read_text()
    assert "sk-proj-" not in cassette and "0penAIKey" not in cassette

    (pytester.path / "test_openai.py").write_text(
        (pytester.path / "test_openai.py").read_text().replace('"second question"', '"a different second question"')
    )
    changed = run(pytester, tmp_path / "changed")
    message = failure_text(changed, "test_openai.py::test_two_calls")
    assert message.count("request not in cassette") == 1, message  # the openai SDK did not retry it either
    assert 'POST /v1/chat/completions (model gpt-4o-mini, last user message "a different second question")' in message


# --- beside pytest-recording ----------------------------------------------------------------------------------------


def test_pytest_recording_and_tokenbudget_on_one_test(pytester: pytest.Pytester, tmp_path: Path) -> None:
    emu = Emulator([Reply.text("Looks good to me."), Reply.text("Still fine.")]).start()
    pytester.makeini("[pytest]\ntokenbudget_cassette_dir = tb-cassettes\n")
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(
        test_both=f"""
        import anthropic
        import pytest

        @pytest.mark.vcr
        @pytest.mark.tokenbudget(llm_calls=2)
        def test_both(tokenbudget):
            client = anthropic.Anthropic(base_url={emu.base_url!r}, api_key="sk-ant-api03-RecordingPluginKey0000000")
            for text in ("Review this", "And this"):
                client.messages.create(model={MODEL!r}, max_tokens=50, messages=[{{"role": "user", "content": text}}])
            assert tokenbudget.llm_calls[-1].request is not None  # the recorded request body is read live
        """
    )
    try:
        record = run(pytester, tmp_path / "record", "--record-mode=once", "--tokenbudget-record-mode=none")
        record.assert_outcomes(passed=1)
        assert len(emu.requests) == 2  # pytest-recording recorded: our "none" did not block it (no double patching)
    finally:
        emu.stop()
    files = sorted(str(p.relative_to(pytester.path)) for p in pytester.path.rglob("*.yaml"))
    assert files == [os.path.join("cassettes", "test_both", "test_both.yaml")]  # pytest-recording's, once
    replay = run(pytester, tmp_path / "replay", "--record-mode=none")
    replay.assert_outcomes(passed=1)
    usage = dumped(tmp_path / "record")["test_both"]
    assert dumped(tmp_path / "replay")["test_both"] == usage
    assert usage["llm_calls"] == 2 and usage["output_tokens"] > 0
    assert re.search(r"test_both\.py::test_both\s+2\s", replay.stdout.str())

    # a test that plays only part of pytest-recording's cassette is charged for what it played, not the whole file
    module = pytester.path / "test_both.py"
    module.write_text(module.read_text().replace('("Review this", "And this")', '("Review this",)'))
    part = run(pytester, tmp_path / "part", "--record-mode=none")
    part.assert_outcomes(passed=1)
    assert dumped(tmp_path / "part")["test_both"]["llm_calls"] == 1


def test_a_recorded_retry_replays_in_order_and_counts_one_call(pytester: pytest.Pytester, tmp_path: Path) -> None:
    emu = Emulator([Reply.error(429, retry_after=0.01), Reply.text("Done after one retry.")]).start()
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(
        test_retry=f"""
        import anthropic
        import pytest

        @pytest.mark.tokenbudget(llm_calls=1)
        def test_retried(tokenbudget):
            client = anthropic.Anthropic(base_url={emu.base_url!r}, api_key="sk-ant-api03-RetryKey000000000000")
            reply = client.messages.create(model={MODEL!r}, max_tokens=50,
                                           messages=[{{"role": "user", "content": "Try hard"}}])
            assert reply.content[0].text == "Done after one retry."
            assert tokenbudget.metrics["resends"] == 1
        """
    )
    try:
        run(pytester, tmp_path / "record", "--tokenbudget-record-mode=once").assert_outcomes(passed=1)
    finally:
        emu.stop()
    assert [e.status for e in emu.exchanges] == [429, 200]
    cassette = yaml.safe_load((pytester.path / "cassettes" / "test_retry" / "test_retried.yaml").read_text())
    assert [i["response"]["status"]["code"] for i in cassette["interactions"]] == [429, 200]
    run(pytester, tmp_path / "replay").assert_outcomes(passed=1)
    usage = dumped(tmp_path / "record")["test_retried"]
    assert dumped(tmp_path / "replay")["test_retried"] == usage
    assert usage["llm_calls"] == 1 and usage["input_tokens"] == emu.exchanges[1].response["usage"]["input_tokens"]


def test_secrets_in_query_strings_cookies_and_custom_headers_never_reach_the_disk(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    secrets = {
        "query": "AIzaSyQueryStringKey0123456789abcdefghijk",
        "cookie": "sessionid=CookieSecretValue12345",
        "header": "sk-ant-api03-HeaderCarriedKey99887766554433",
    }
    emu = Emulator([Reply.text("ok")]).start()
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(
        test_secrets=f"""
        import anthropic
        import pytest

        @pytest.mark.tokenbudget
        def test_secrets():
            client = anthropic.Anthropic(base_url={emu.base_url!r}, api_key="sk-ant-api03-MainKey0000000000000000")
            client.messages.create(
                model={MODEL!r}, max_tokens=20, messages=[{{"role": "user", "content": "hi"}}],
                extra_query={{"key": {secrets["query"]!r}, "page": "2"}},
                extra_headers={{"cookie": {secrets["cookie"]!r}, "x-proxy-token": "proxy-secret-value-42",
                                "x-forwarded-key": {secrets["header"]!r}}},
            )
        """
    )
    try:
        run(pytester, tmp_path / "record", "--tokenbudget-record-mode=once").assert_outcomes(passed=1)
    finally:
        emu.stop()
    text = (pytester.path / "cassettes" / "test_secrets" / "test_secrets.yaml").read_text()
    for value in [*secrets.values(), "CookieSecretValue", "proxy-secret-value-42", "MainKey"]:
        assert value not in text, value
    request = yaml.safe_load(text)["interactions"][0]["request"]
    assert "key=REDACTED" in request["uri"] and "page=2" in request["uri"]
    assert request["headers"]["cookie"] == ["REDACTED"] and request["headers"]["x-proxy-token"] == ["REDACTED"]
    run(pytester, tmp_path / "replay").assert_outcomes(passed=1)  # the live request is scrubbed before matching
