"""pytest hooks, options and fixtures of pytest-tokenbudget. The work happens in the modules below this one.

Heavy modules (vcrpy, OpenTelemetry, the detectors) are imported when the session starts, not when pytest
loads plugins: importing vcrpy early would stop pytest-recording from registering its assertion rewriting.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import budgets

if TYPE_CHECKING:
    from . import baseline, detectors
    from .measure import Settings
    from .records import LLMCall, Usage
    from .result import TestResult
    from .run import TestRun

MARKER = "tokenbudget"
RECORD_MODE_ENV = "TOKENBUDGET_RECORD_MODE"
RECORD_MODES = ("none", "once", "new_episodes", "all")
RUN_KEY = pytest.StashKey["TestRun"]()
RESULT_KEY = pytest.StashKey["TestResult"]()
STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"
OUTCOME_KEY = pytest.StashKey[str]()
CALLED_KEY = pytest.StashKey[bool]()


class BudgetExceeded(pytest.fail.Exception):  # type: ignore[misc,name-defined]
    """A test failed on its token budget or its baseline, not on its own assertions or a cassette miss.

    ``@pytest.mark.xfail(strict=True, raises=BudgetExceeded)`` expects exactly that failure.
    """


def fail_budget(message: str) -> None:
    __tracebackhide__ = True
    raise BudgetExceeded(message, pytrace=False)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tokenbudget", "token budgets for LLM agent tests")
    group.addoption(
        "--tokenbudget-record-mode",
        choices=RECORD_MODES,
        default=None,
        help=f"vcrpy record mode for marked tests (env {RECORD_MODE_ENV}); default 'none': never reach the network",
    )
    group.addoption("--tokenbudget-disable", action="store_true", help="turn pytest-tokenbudget off entirely")
    parser.addini(
        "tokenbudget_cassette_dir", "cassette directory, relative to the ini file's folder", default="cassettes"
    )
    parser.addini(
        "tokenbudget_default_limits",
        "limits for every marked test, e.g. 'total_tokens=200000 cost_usd=0.50'; a marker overrides key by key",
        default="",
    )
    parser.addini(
        "tokenbudget_prices",
        "price overrides, one per line: 'MODEL input=3 output=15 "
        "[cache_read=0.3] [cache_write=3.75]' (USD per million tokens)",
        type="linelist",
        default=[],
    )
    parser.addini(
        "tokenbudget_min_prefix_tokens", "shortest re-sent prefix reported as uncached (tokens)", default="1024"
    )
    parser.addini(
        "tokenbudget_preamble_patterns",
        "preamble regexes, one per line; a first line 'replace' drops the built-in list, otherwise the lines extend it",
        type="linelist",
        default=[],
    )
    group.addoption(
        "--tokenbudget-update-baseline",
        action="store_true",
        help="write each measured test's figures to the baseline file (replacing its entry)",
    )
    group.addoption(
        "--tokenbudget-prune",
        action="store_true",
        help="with --tokenbudget-update-baseline: drop entries of tests that no longer exist (under the paths "
        "collected; refused together with -k/-m/--deselect/--lf/--sw)",
    )
    group.addoption(
        "--tokenbudget-compare-fail",
        action="append",
        default=[],
        metavar="METRIC:TOL",
        help="per-metric tolerance, e.g. 'total_tokens:5%% cost_usd:10%% llm_calls:0' (repeatable)",
    )
    group.addoption("--tokenbudget-strict", action="store_true", help="a measured test without a baseline entry fails")
    group.addoption("--tokenbudget-json", metavar="PATH", default=None, help="write the JSON report to PATH")
    group.addoption(
        "--tokenbudget-markdown",
        metavar="PATH",
        default=None,
        help=f"write the Markdown summary to PATH (appended to ${STEP_SUMMARY_ENV} when set)",
    )
    parser.addini("tokenbudget_baseline", "baseline file, relative to the rootdir", default="tokenbudget-baseline.json")
    parser.addini(
        "tokenbudget_tolerance", "growth over the baseline that still passes: '5%' or an absolute number", default="5%"
    )
    parser.addini(
        "tokenbudget_compare_fail",
        "per-metric tolerances, e.g. 'total_tokens:5% llm_calls:0'",
        type="linelist",
        default=[],
    )
    parser.addini(
        "tokenbudget_warn_ratio", "share of a limit from which a passing test is flagged (0..1)", default="0.8"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """Ask the anthropic SDK for content on its spans before any conftest can construct a client."""
    if not getattr(early_config.known_args_namespace, "tokenbudget_disable", False):
        from .capture import enable_content_mode

        enable_content_mode()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tokenbudget(**limits, cassette=None): measure the test's LLM spend from OpenTelemetry spans, replay its "
        f"vcrpy cassette, and fail it over budget. Limits: {', '.join(budgets.LIMITS)}",
    )
    if config.getoption("--tokenbudget-disable"):
        return
    config.pluginmanager.register(TokenBudgetPlugin(config), "tokenbudget-session")


def _record_mode(config: pytest.Config) -> str:
    mode = config.getoption("--tokenbudget-record-mode") or os.environ.get(RECORD_MODE_ENV) or "none"
    if mode not in RECORD_MODES:
        raise pytest.UsageError(f"{RECORD_MODE_ENV}={mode!r}: must be one of {', '.join(RECORD_MODES)}")
    return mode


def _settings(config: pytest.Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validated settings (as `measure.Settings` keyword arguments, built at the first measured test so that a
    session without one never imports vcrpy) and the default limits. Bad values are usage errors."""
    from . import detectors
    from .pricing import PriceConfigError, parse_price_overrides

    try:
        overrides = parse_price_overrides(config.getini("tokenbudget_prices"))
    except PriceConfigError as err:
        raise pytest.UsageError(f"ini option {err}") from None
    try:
        defaults = budgets.parse_limits(config.getini("tokenbudget_default_limits"))
    except budgets.LimitError as err:
        raise pytest.UsageError(f"ini option tokenbudget_default_limits: {err}") from None
    raw_prefix = str(config.getini("tokenbudget_min_prefix_tokens")).strip()
    if not raw_prefix.isdigit():
        raise pytest.UsageError(
            f"ini option tokenbudget_min_prefix_tokens: {raw_prefix!r} is not a whole number of tokens"
        )
    try:
        patterns = detectors.preamble_patterns_from_ini(config.getini("tokenbudget_preamble_patterns"))
    except ValueError as err:
        raise pytest.UsageError(f"ini option tokenbudget_preamble_patterns: {err}") from None
    detector_settings = detectors.DetectorSettings(min_prefix_tokens=int(raw_prefix), preamble_patterns=patterns)
    return {"price_overrides": overrides, "detectors": detector_settings}, defaults


def marker_limits(item: pytest.Item, defaults: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The item's limits (ini defaults, then module/class/function markers, closest last) and cassette name."""
    limits = dict(defaults)
    cassette: str | None = None
    for mark in reversed(list(item.iter_markers(MARKER))):
        if mark.args:
            raise budgets.LimitError(f"takes keyword arguments only, got positional {mark.args!r}")
        kwargs = dict(mark.kwargs)
        name = kwargs.pop("cassette", None)  # None (the documented default) means "named after the test"
        if name is not None:
            if not isinstance(name, str) or not name or "/" in name or "\\" in name:
                raise budgets.LimitError(f"cassette={name!r}: must be a file name such as 'review.yaml'")
            cassette = name
        limits.update(budgets.validate_limits(kwargs))
    return limits, cassette


def _warn_ratio(config: pytest.Config) -> float:
    raw = str(config.getini("tokenbudget_warn_ratio")).strip()
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0 < ratio <= 1:
        raise pytest.UsageError(f"ini option tokenbudget_warn_ratio: {raw!r} is not a number in (0, 1], e.g. 0.8")
    return ratio


def _baseline_options(config: pytest.Config) -> baseline.Options:
    """The baseline file (read once per process, here) and how it is compared and updated."""
    from . import baseline

    path = Path(str(config.getini("tokenbudget_baseline")))
    path = path if path.is_absolute() else config.rootpath / path
    try:
        tolerances = baseline.Tolerances.parse(
            str(config.getini("tokenbudget_tolerance")),
            [*config.getini("tokenbudget_compare_fail"), *config.getoption("--tokenbudget-compare-fail")],
        )
    except baseline.BaselineError as err:
        raise pytest.UsageError(
            f"tokenbudget tolerance (ini tokenbudget_tolerance / tokenbudget_compare_fail / "
            f"--tokenbudget-compare-fail): {err}"
        ) from None
    update = bool(config.getoption("--tokenbudget-update-baseline"))
    prune = None
    if config.getoption("--tokenbudget-prune"):
        if not update:
            raise pytest.UsageError("--tokenbudget-prune only works together with --tokenbudget-update-baseline")
        try:  # only entries under the collected paths, and never after a test selection
            prune = baseline.prune_scope(config.option, config.args, config.invocation_params.dir, config.rootpath)
        except baseline.BaselineError as err:
            raise pytest.UsageError(str(err)) from None
    try:
        entries = baseline.load(path)
    except baseline.BaselineError as err:
        raise pytest.UsageError(
            f"{err}\n(fix the file, restore it from version control, or delete it and run "
            "with --tokenbudget-update-baseline)"
        ) from None
    return baseline.Options(
        path=path,
        entries=entries,
        tolerances=tolerances,
        strict=bool(config.getoption("--tokenbudget-strict")),
        update=update,
        prune=prune,
        display=_display_path(path, config.rootpath),
    )


def _display_path(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


class TokenBudgetPlugin:
    """Session state: the span capture, settings, and the results gathered from every (worker's) test."""

    def __init__(self, config: pytest.Config) -> None:
        from .capture import SpanCapture, enable_content_mode

        self.config = config
        self.record_mode = _record_mode(config)
        self.settings_kwargs, self.default_limits = _settings(config)
        self._settings: Settings | None = None
        self.capture = SpanCapture()
        self.results: list[TestResult] = []
        enable_content_mode()
        base = config.inipath.parent if config.inipath else config.rootpath
        self.cassette_dir = base / str(config.getini("tokenbudget_cassette_dir"))
        self.warn_ratio = _warn_ratio(config)
        self.baseline = _baseline_options(config)
        self.messages: list[str] = []
        self.started = time.time()

    def is_measured(self, item: pytest.Item) -> bool:
        return item.get_closest_marker(MARKER) is not None or "tokenbudget" in getattr(item, "fixturenames", ())

    @pytest.hookimpl(wrapper=True)
    def pytest_pycollect_makeitem(self, collector: pytest.Collector, name: str, obj: object) -> Any:
        made = yield
        for item in made if isinstance(made, list) else [made]:
            if isinstance(item, pytest.Item) and item.get_closest_marker(MARKER) is not None:
                try:
                    marker_limits(item, {})
                except budgets.LimitError as err:
                    raise pytest.Collector.CollectError(f"{item.nodeid}: @pytest.mark.{MARKER}: {err}") from None
        return made

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from .measure import Settings

            self._settings = Settings(**self.settings_kwargs)
        return self._settings

    def _new_run(self, item: pytest.Item) -> TestRun:
        from . import cassettes
        from .run import TestRun

        limits, cassette = marker_limits(item, self.default_limits)
        external = None
        path: Path | None = None
        if item.get_closest_marker("vcr") is not None and self.config.pluginmanager.has_plugin("recording"):
            external = True  # pytest-recording patches this test; reading its cassette avoids double patching
        else:
            try:
                module = item.path.relative_to(self.config.rootpath).as_posix()
            except ValueError:
                module = item.path.name
            # Class-qualified (``TestA.test_run``), so same-named tests in two classes never share a cassette.
            name = ".".join([*(n.name for n in item.listchain() if isinstance(n, pytest.Class)), item.name])
            path = cassettes.cassette_path(self.cassette_dir, module, name, cassette)
        return TestRun(
            nodeid=item.nodeid,
            limits=limits,
            capture=self.capture,
            settings=self.settings,
            cassette_path=path,
            record_mode=self.record_mode,
            external_cassette=external,
            warn_ratio=self.warn_ratio,
            baseline=self.baseline.check(item.nodeid),
        )

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Open capture and cassette before any fixture runs (tryfirst: ahead of the runner's fixture setup,
        inside every wrapper, so a failure here is an ordinary setup error)."""
        if not self.is_measured(item):
            return
        from .capture import CaptureError
        from .cassettes import CassetteError

        try:
            run = self._new_run(item)
        except budgets.LimitError as err:  # a marker added after collection (e.g. by a conftest hook)
            raise pytest.fail.Exception(f"{item.nodeid}: @pytest.mark.{MARKER}: {err}", pytrace=False) from None
        try:
            run.start()
        except (CaptureError, CassetteError) as err:
            run.stop()
            raise pytest.fail.Exception(str(err), pytrace=False) from None
        item.stash[RUN_KEY] = run

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        run = item.stash.get(RUN_KEY, None)
        item.stash[CALLED_KEY] = True
        if run is not None and run.external_cassette is True:
            # pytest-recording's autouse ``vcr`` fixture is set up by now: read it live, as the fixture reads ours
            run.external_cassette = getattr(item, "funcargs", {}).get("vcr")
        try:
            result = yield
        except Exception:
            if run is not None and run.misses:  # the SDK raised the miss: say what to do, not where it was raised
                raise pytest.fail.Exception("\n\n".join(run.misses), pytrace=False) from None
            raise
        if run is not None:
            measurement = run.measure()
            violations = run.violations(measurement)
            if run.misses:
                pytest.fail("\n\n".join(run.misses), pytrace=False)
            if violations:
                fail_budget(run.failure_message(measurement, violations))
            regression = run.regression(measurement)
            if regression is not None:
                fail_budget(regression.message())
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
        run = item.stash.get(RUN_KEY, None)
        try:
            result = yield
        except BaseException:
            if run is not None:  # a fixture's teardown raised: never leave the cassette patched in or capture on
                run.stop()
                item.stash[RESULT_KEY] = run.result(run.measure(), compared=False)
            raise
        if run is None:
            return result
        run.stop()
        measurement = run.measure()
        call_outcome = item.stash.get(OUTCOME_KEY, "passed")
        # Only a test body that ran to its end (or failed on its own) is held against the baseline.
        ran = CALLED_KEY in item.stash and call_outcome in ("passed", "failed")
        test_result = run.result(measurement, compared=ran)
        item.stash[RESULT_KEY] = test_result
        for key in (
            "total_tokens",
            "input_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "output_tokens",
            "cost_usd",
            "llm_calls",
            "tool_calls",
        ):
            item.user_properties.append((f"tokenbudget.{key}", test_result.usage.get(key)))
        item.user_properties.append(("tokenbudget.status", test_result.status))
        if test_result.baseline is not None:
            item.user_properties.append(("tokenbudget.baseline", test_result.baseline["status"]))
        if call_outcome == "passed" and run.misses:
            pytest.fail("\n\n".join(run.misses), pytrace=False)
        over = run.violations(measurement) if call_outcome == "passed" else []
        if over:  # spent during teardown (a fixture's finaliser): the call phase could not see it
            fail_budget(run.failure_message(measurement, over))
        regression = run.regression(measurement) if call_outcome == "passed" else None
        if regression is not None:
            fail_budget(regression.message())
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        if RUN_KEY not in item.stash:
            return report
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            outcome = report.outcome
            if hasattr(report, "wasxfail"):
                outcome = "xfailed" if report.outcome == "skipped" else "xpassed"
            item.stash[OUTCOME_KEY] = outcome
        if report.when == "teardown" and RESULT_KEY in item.stash:
            data = item.stash[RESULT_KEY].to_dict()
            data["outcome"] = item.stash.get(OUTCOME_KEY, "passed")
            report.tokenbudget = data
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "tokenbudget", None)
        if report.when == "teardown" and data is not None:
            from .result import TestResult

            self.results.append(TestResult.from_dict(data))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """The controller alone writes files (an xdist worker only measures and sends its results over)."""
        if hasattr(self.config, "workerinput"):
            return
        from .reports import write_session_files

        complete = exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) and not (
            session.shouldstop or session.shouldfail
        )
        messages, ok = write_session_files(
            self.results,
            self.baseline,
            complete=complete,
            rootdir=self.config.rootpath,
            json_path=self.config.getoption("--tokenbudget-json"),
            markdown_path=self.config.getoption("--tokenbudget-markdown"),
            settings={"warn_ratio": self.warn_ratio},
            started=self.started,
        )
        self.messages += messages
        if not ok and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.results:
            for message in self.messages:
                terminalreporter.write_line(message)
            return
        from .report import notes, summary_line, terminal_table

        if self.config.get_verbosity() < 0:
            terminalreporter.write_line(summary_line(self.results))
            for message in self.messages:
                terminalreporter.write_line(message)
            return
        terminalreporter.section("token budget")
        terminalreporter.write_line(terminal_table(self.results))
        for line in [*notes(self.results), *self.messages]:
            terminalreporter.write_line(line)


class TokenBudget:
    """What the running test has spent so far (live), and named scenarios with their own limits."""

    def __init__(self, run: TestRun) -> None:
        self._run = run

    @property
    def usage(self) -> Usage:
        return self._run.measure().usage

    @property
    def llm_calls(self) -> tuple[LLMCall, ...]:
        return self._run.measure().calls

    @property
    def tool_calls(self) -> tuple[detectors.ToolEvent, ...]:
        """Every tool call once (executed or only requested by a response), in order."""
        return self._run.measure().tool_calls

    @property
    def spans(self) -> tuple[Any, ...]:
        return self._run.capture.spans()

    @property
    def findings(self) -> tuple[detectors.Finding, ...]:
        return self._run.measure().analysis.findings

    @property
    def metrics(self) -> dict[str, int | float | None]:
        return dict(self._run.measure().analysis.metrics)

    @contextmanager
    def scenario(self, name: str, **limits: Any) -> Iterator[TokenBudget]:
        """Measure the block on its own and hold it to ``limits``; a violation fails the test, naming ``name``."""
        __tracebackhide__ = True
        try:
            checked = budgets.validate_limits(limits)
        except budgets.LimitError as err:
            raise pytest.fail.Exception(f"tokenbudget.scenario({name!r}): {err}", pytrace=False) from None
        span_mark, http_mark = len(self._run.capture.spans()), len(self._run.interactions())
        yield self
        measurement = self._run.measure(span_mark, http_mark)
        violations = measurement.check(checked)
        self._run.scenarios.append(
            {
                "name": name,
                "limits": checked,
                "usage": measurement.usage.as_dict(),
                "metrics": dict(measurement.analysis.metrics),
                "violations": [v.message for v in violations],
            }
        )
        if violations:
            fail_budget(self._run.failure_message(measurement, violations, scope=name))


@pytest.fixture
def tokenbudget(request: pytest.FixtureRequest) -> TokenBudget:
    """Live token usage of the running test; using it measures the test even without the marker."""
    run = request.node.stash.get(RUN_KEY, None)
    if run is None:
        pytest.fail(
            "the tokenbudget fixture is unavailable: pytest-tokenbudget is disabled (--tokenbudget-disable)",
            pytrace=False,
        )
    return TokenBudget(run)
