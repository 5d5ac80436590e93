"""The committed baseline: each marked test's spend as a reviewed number, and a run held against it.

Budgets catch a test that blows a fixed limit; most regressions are smaller (a prompt grows 20%, a turn is
added, caching stops hitting). The baseline file records every figure of every marked test, sorted and
2-space indented so its diff reads well in review, and written atomically so a killed run never truncates it.

Decisions made here:

* A metric *regresses* when it moved in the bad direction by more than its tolerance (all grow worse, except
  ``cache_hit_rate``, which drops worse). ``5%`` is relative to the baseline (any growth from 0 exceeds it); a
  plain number is absolute, ``0`` meaning "must not grow at all".
* ``cache_read_tokens`` has no good direction (more reads is what turning caching on looks like, and their cost
  is in ``cost_usd`` and ``total_tokens``), so it is recorded and shown but only fails with a tolerance of its
  own (``cache_read_tokens:10%``).
* A usage figure (tokens, cost, calls) that the baseline knows and the run cannot measure (``None``) is a
  regression: it cannot be shown not to have grown. A detector figure that became unknown (no answer text, so
  no preamble rate) is only reported.
* Any move in the good direction makes the entry "can be tightened": replayed cassettes are deterministic, so
  a smaller figure is real, and leaving the slack lets a later regression hide in it.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .detectors import METRIC_KEYS

SCHEMA = "pytest-tokenbudget/baseline"
VERSION = 1
USAGE_METRICS = (
    "total_tokens",
    "cost_usd",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "llm_calls",
    "tool_calls",
)
"""In the order messages name them: the headline figures first."""
DETECTOR_METRICS = tuple(key for key in METRIC_KEYS if key not in USAGE_METRICS)
METRICS = USAGE_METRICS + DETECTOR_METRICS
HIGHER_IS_BETTER = frozenset({"cache_hit_rate"})
NO_DIRECTION = frozenset({"cache_read_tokens"})
"""Compared only when given a tolerance of its own (see the module docstring)."""
RATES = frozenset({"cache_hit_rate", "preamble_rate"})
_DIGITS = {"cost_usd": 8, "cache_hit_rate": 6, "preamble_rate": 6}
_EPSILON = 1e-9

STATUS_REGRESSED = "regressed"
STATUS_MISSING = "missing"
"""No entry under ``--tokenbudget-strict``: fails like a regression."""
STATUS_NEW = "new"
STATUS_IMPROVED = "improved"
STATUS_WITHIN = "within"
STATUS_SAME = "same"
FAILING = frozenset({STATUS_REGRESSED, STATUS_MISSING})


class BaselineError(ValueError):
    """A baseline file or tolerance that cannot be used; the message names the file or option and the fault."""


# --- tolerances --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """How far a metric may move in the bad direction: ``value`` percent of the baseline, or absolute."""

    value: float
    relative: bool = True

    def allowance(self, old: float) -> float:
        return abs(old) * self.value / 100 if self.relative else self.value

    def __str__(self) -> str:
        number = f"{self.value:g}"
        return f"{number}%" if self.relative else number


def parse_tolerance(text: str) -> Tolerance:
    """``5%`` (relative to the baseline) or ``1000`` / ``0.01`` / ``0`` (absolute, in the metric's unit)."""
    raw = text.strip()
    relative = raw.endswith("%")
    number = raw[:-1].strip() if relative else raw
    try:
        value = float(number.replace("_", ""))
    except ValueError:
        raise BaselineError(f"{text!r} is not a tolerance: use a percentage like 5% or an absolute number") from None
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise BaselineError(f"{text!r} is not a tolerance: it must be a finite number >= 0")
    return Tolerance(value, relative)


def parse_compare_fail(words: Iterable[str]) -> dict[str, Tolerance]:
    """``total_tokens:5% cost_usd:10% llm_calls:0`` (pytest-benchmark's ``--benchmark-compare-fail`` form).

    ``words`` may each hold several space- or comma-separated items; later items override earlier ones.
    """
    tolerances: dict[str, Tolerance] = {}
    for word in words:
        for item in word.replace(",", " ").split():
            metric, sep, value = item.partition(":")
            if not sep or not metric or not value:
                raise BaselineError(f"{item!r}: expected METRIC:TOLERANCE, e.g. total_tokens:5% or llm_calls:0")
            if metric not in METRICS:
                raise BaselineError(f"{item!r}: unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
            tolerances[metric] = parse_tolerance(value)
    return tolerances


@dataclass(frozen=True)
class Tolerances:
    default: Tolerance = Tolerance(5.0)
    per_metric: Mapping[str, Tolerance] = field(default_factory=dict)

    def of(self, metric: str) -> Tolerance:
        return self.per_metric.get(metric, self.default)

    def as_dict(self) -> dict[str, Any]:
        return {"default": str(self.default), "per_metric": {k: str(v) for k, v in sorted(self.per_metric.items())}}

    @classmethod
    def parse(cls, default: str = "5%", compare_fail: Iterable[str] = ()) -> Tolerances:
        return cls(parse_tolerance(default), parse_compare_fail(compare_fail))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tolerances:
        per_metric = data.get("per_metric") or {}
        if not isinstance(per_metric, Mapping):
            raise BaselineError(f"per_metric = {per_metric!r} must be an object of metric -> tolerance")
        return cls(
            parse_tolerance(str(data.get("default", "5%"))),
            parse_compare_fail(f"{k}:{v}" for k, v in per_metric.items()),
        )


# --- entries and the file ----------------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    """A figure a document may hold: a finite int or float (JSON's ``true`` and ``NaN`` are not)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _clean(metric: str, value: Any) -> int | float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if metric in _DIGITS:
        return round(float(value), _DIGITS[metric])
    return int(value) if float(value).is_integer() else value


def entry_of(usage: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, int | float | None]:
    """A test's baseline entry: every `METRICS` figure from its usage and detector metrics (``None`` = unknown)."""
    entry: dict[str, int | float | None] = {}
    for metric in METRICS:
        source = usage if metric in USAGE_METRICS else metrics
        entry[metric] = _clean(metric, source.get(metric, metrics.get(metric)))
    return entry


def dumps(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """The file's text: sorted keys, 2-space indent, trailing newline, so equal baselines are equal bytes."""
    document = {"schema": SCHEMA, "version": VERSION, "tests": {k: dict(entries[k]) for k in sorted(entries)}}
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def read_document(
    text: str, source: str, *, kind: str, schema: str, version: int, error: type[ValueError]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A versioned JSON document this plugin wrote (a baseline, a report) and its ``tests`` object.

    ``error`` is raised naming ``source`` and what is wrong: not JSON, another schema, an unknown version.
    """
    try:
        document = json.loads(text)
    except ValueError as err:
        raise error(f"{source}: not a JSON {kind}: {err}") from None
    if not isinstance(document, dict) or document.get("schema") != schema:
        raise error(f'{source}: not a pytest-tokenbudget {kind} (expected "schema": "{schema}")')
    if document.get("version") != version:
        raise error(
            f"{source}: {kind} version {document.get('version')!r} is not supported (this version reads {version})"
        )
    tests = document.get("tests")
    if not isinstance(tests, dict):
        raise error(f'{source}: "tests" must be an object of node id -> {kind} entry')
    return document, tests


def parse(text: str, source: str) -> dict[str, dict[str, Any]]:
    """The entries of a baseline document; `BaselineError` names ``source`` and what is wrong."""
    _, tests = read_document(text, source, kind="baseline", schema=SCHEMA, version=VERSION, error=BaselineError)
    entries: dict[str, dict[str, Any]] = {}
    for nodeid, entry in tests.items():
        if not isinstance(entry, dict):
            raise BaselineError(f"{source}: entry {nodeid!r} must be an object of metric -> number")
        for metric, value in entry.items():
            if value is not None and not is_number(value):
                raise BaselineError(f"{source}: entry {nodeid!r}: {metric} = {value!r} is not a number or null")
        entries[nodeid] = dict(entry)
    return entries


def load(path: Path) -> dict[str, dict[str, Any]]:
    """The entries of the baseline at ``path``; an absent file is an empty baseline."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise BaselineError(f"{path}: cannot read the baseline: {err}") from None
    return parse(text, str(path))


def save(path: Path, entries: Mapping[str, Mapping[str, Any]]) -> None:
    """Replace the file atomically (readers and a killed writer leave the old or the new file, whole)."""
    from .atomic import write_atomic

    write_atomic(path, dumps(entries))


@dataclass(frozen=True)
class Update:
    """What `updated` did, for the session summary."""

    entries: dict[str, dict[str, Any]]
    written: tuple[str, ...]
    kept: tuple[str, ...]
    pruned: tuple[str, ...]
    skipped: tuple[str, ...]
    """Tests that ran but did not pass: their old entry (if any) is kept, never replaced by partial figures."""

    def summary(self, path: Path | str) -> str:
        parts = [f"{len(self.written)} written", f"{len(self.kept)} kept"]
        if self.pruned:
            parts.append(f"{len(self.pruned)} pruned")
        if self.skipped:
            parts.append(f"{len(self.skipped)} not written (test did not pass: {', '.join(self.skipped)})")
        return f"tokenbudget baseline {path}: " + ", ".join(parts)


# --- pruning ----------------------------------------------------------------------------------------------------

SELECTION_OPTIONS = (
    ("keyword", "-k"),
    ("markexpr", "-m"),
    ("deselect", "--deselect"),
    ("lf", "--last-failed"),
    ("stepwise", "--stepwise"),
    ("stepwise_skip", "--stepwise-skip"),
    ("stepwise_reset", "--stepwise-reset"),
    ("collectonly", "--collect-only"),
)
"""pytest options (argparse dest, flag) after which an unmeasured test may well still exist: pruning refuses them."""


@dataclass(frozen=True)
class PruneScope:
    """Which entries a prune may drop: those of tests under the session's collection arguments (``pytest
    examples`` never drops the entries of ``tests/``), minus ``--ignore``/``--ignore-glob`` paths.

    Paths are absolute and normalised, without resolving symlinks (as pytest compares them).
    """

    rootdir: str
    targets: tuple[tuple[str, str], ...]
    """(path, node id rest): a folder or file, and for ``file.py::Class::test`` the part after the file."""
    ignored: tuple[str, ...] = ()
    ignore_globs: tuple[str, ...] = ()

    def covers(self, nodeid: str) -> bool:
        """Whether the session collected everywhere ``nodeid`` could be (so its absence means it is gone)."""
        file, _, rest = nodeid.partition("::")
        path = os.path.normpath(os.path.join(self.rootdir, file))
        if any(_within(path, ignored) for ignored in self.ignored):
            return False
        if any(fnmatch.fnmatch(path, pattern) for pattern in self.ignore_globs):
            return False
        for target, target_rest in self.targets:
            if not target_rest:
                if _within(path, target):
                    return True
            elif path == target and (rest == target_rest or rest.startswith((target_rest + "::", target_rest + "["))):
                return True
        return False


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def prune_scope(option: Any, args: Sequence[str], invocation_dir: Path, rootdir: Path) -> PruneScope:
    """The scope of ``--tokenbudget-prune`` for a session run with pytest's parsed ``option`` namespace and its
    collection ``args`` (relative to ``invocation_dir``). A test-selection option is a `BaselineError` naming it:
    a test it deselected is not measured, yet exists, and its entry must stay."""
    for dest, flag in SELECTION_OPTIONS:
        if getattr(option, dest, None):
            raise BaselineError(
                f"--tokenbudget-prune cannot be combined with {flag}: tests it leaves out still exist and would lose "
                "their baseline entries (prune in a run of whole files or folders)"
            )

    def absolute(path: str) -> str:
        return os.path.normpath(os.path.join(invocation_dir, path))

    targets = []
    for arg in args:
        file, _, rest = str(arg).partition("::")
        targets.append((absolute(file), rest))
    return PruneScope(
        rootdir=os.path.normpath(rootdir),
        targets=tuple(targets),
        ignored=tuple(absolute(str(p)) for p in getattr(option, "ignore", None) or ()),
        ignore_globs=tuple(absolute(str(p)) for p in getattr(option, "ignore_glob", None) or ()),
    )


def updated(
    old: Mapping[str, Mapping[str, Any]],
    fresh: Mapping[str, Mapping[str, Any]],
    ran: Iterable[str],
    prune: PruneScope | None = None,
) -> Update:
    """``old`` with the entries of tests that passed (``fresh``) replaced; ``prune`` drops the entries in its
    scope of tests that were not measured in this session (``ran`` holds every measured node id, passed or not)."""
    ran = set(ran)
    entries = {k: dict(v) for k, v in old.items()}
    pruned = tuple(
        sorted(k for k in entries if prune is not None and k not in ran and k not in fresh and prune.covers(k))
    )
    for nodeid in pruned:
        del entries[nodeid]
    for nodeid, entry in fresh.items():
        entries[nodeid] = dict(entry)
    kept = tuple(sorted(k for k in entries if k not in fresh))
    skipped = tuple(sorted(ran - set(fresh)))
    return Update(entries, tuple(sorted(fresh)), kept, pruned, skipped)


# --- comparison --------------------------------------------------------------------------------------------------


def fmt_value(metric: str, value: Any) -> str:
    if value is None:
        return "unknown"
    if metric == "cost_usd":
        return f"${value:,.6f}"
    if metric in RATES:
        return f"{value:.1%}"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


@dataclass(frozen=True)
class Delta:
    metric: str
    old: int | float | None
    new: int | float | None
    tolerance: Tolerance
    regressed: bool

    @property
    def change(self) -> int | float | None:
        if self.old is None or self.new is None:
            return None
        return _clean(self.metric, self.new - self.old) if self.metric in _DIGITS else self.new - self.old

    def _percent(self) -> float | None:
        change = self.change
        if change is None or not self.old:
            return None
        return change / abs(self.old) * 100

    @property
    def percent(self) -> float | None:
        """The change in percent of the baseline (2 decimals); ``None`` from 0 or when unknown."""
        percent = self._percent()
        return None if percent is None else round(percent, 2)

    @property
    def improved(self) -> bool:
        change = self.change
        if change is None or abs(change) <= _EPSILON or self.metric in NO_DIRECTION:
            return False
        return change > 0 if self.metric in HIGHER_IS_BETTER else change < 0

    def describe(self, with_tolerance: bool = False) -> str:
        text = f"{self.metric} {fmt_value(self.metric, self.old)} -> {fmt_value(self.metric, self.new)}"
        change, percent = self.change, self._percent()
        inside = []
        if percent is not None:
            inside.append(f"{percent:+.1f}%")
        elif change:
            inside.append("from 0")
        if with_tolerance:
            inside.append(f"tolerance {self.tolerance}")
        return text + (f" ({', '.join(inside)})" if inside else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "change": self.change,
            "percent": self.percent,
            "tolerance": str(self.tolerance),
            "regressed": self.regressed,
        }


def _delta(metric: str, old: Any, new: Any, tolerance: Tolerance, judged: bool = True) -> Delta:
    old, new = _clean(metric, old), _clean(metric, new)
    if not judged:
        return Delta(metric, old, new, tolerance, False)
    if old is None or new is None:
        regressed = old is not None and new is None and metric in USAGE_METRICS
        return Delta(metric, old, new, tolerance, regressed)
    worse = old - new if metric in HIGHER_IS_BETTER else new - old
    return Delta(metric, old, new, tolerance, worse > tolerance.allowance(old) + _EPSILON)


@dataclass(frozen=True)
class Comparison:
    """One test against its baseline entry: status, the moved metrics, and the messages for people."""

    status: str
    entry: dict[str, Any] | None
    deltas: tuple[Delta, ...] = ()
    source: str = ""

    @property
    def failed(self) -> bool:
        return self.status in FAILING

    @property
    def regressions(self) -> tuple[Delta, ...]:
        return tuple(d for d in self.deltas if d.regressed)

    @property
    def improvements(self) -> tuple[Delta, ...]:
        return tuple(d for d in self.deltas if d.improved)

    def headline(self) -> str:
        """``token regression: total_tokens 14,230 -> 17,901 (+25.8%, tolerance 5%)``, further regressed metrics
        after it; or why a strict run fails a test without an entry."""
        if self.status == STATUS_MISSING:
            return (
                f"no baseline entry in {self.source or 'the baseline'} (--tokenbudget-strict): record one with "
                "--tokenbudget-update-baseline"
            )
        first, *more = self.regressions
        text = f"token regression: {first.describe(with_tolerance=True)}"
        return text + "".join(f"; {d.describe(with_tolerance=True)}" for d in more)

    def message(self) -> str:
        """The failure message: the headline, then the other metrics' deltas, then how to accept the change."""
        if self.status == STATUS_MISSING:
            return self.headline()
        lines = [self.headline()]
        others = [d.describe() for d in self.deltas if not d.regressed]
        if others:
            lines.append("  other changes: " + ", ".join(others))
        lines.append(
            f"  baseline: {self.source or 'the baseline'}; if the change is intended, accept it with "
            "--tokenbudget-update-baseline"
        )
        return "\n".join(lines)

    def note(self) -> str | None:
        """One line for the notes under the table (nothing to say for an unchanged test)."""
        if self.status == STATUS_NEW:
            return "no baseline entry: record one with --tokenbudget-update-baseline"
        if self.status == STATUS_IMPROVED:
            return "baseline can be tightened: " + ", ".join(d.describe() for d in self.improvements)
        if self.failed:
            return self.headline()
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "entry": self.entry,
            "deltas": {d.metric: d.as_dict() for d in sorted(self.deltas, key=lambda d: d.metric)},
            "regressed": [d.metric for d in self.regressions],
        }


def compare(
    entry: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    tolerances: Tolerances | None = None,
    *,
    strict: bool = False,
    source: str = "",
) -> Comparison:
    """Hold ``current`` (an `entry_of` dict) against the baseline ``entry`` (``None`` when the test has none)."""
    tolerances = tolerances or Tolerances()
    if entry is None:
        return Comparison(STATUS_MISSING if strict else STATUS_NEW, None, source=source)
    deltas = tuple(
        _delta(
            metric,
            entry.get(metric),
            current.get(metric),
            tolerances.of(metric),
            metric not in NO_DIRECTION or metric in tolerances.per_metric,
        )
        for metric in METRICS
        if _clean(metric, entry.get(metric)) != _clean(metric, current.get(metric))
    )
    if any(d.regressed for d in deltas):
        status = STATUS_REGRESSED
    elif any(d.improved for d in deltas):
        status = STATUS_IMPROVED
    else:
        status = STATUS_WITHIN if deltas else STATUS_SAME
    return Comparison(status, dict(entry), deltas, source)


@dataclass(frozen=True)
class Check:
    """What a test run needs to compare itself: its entry, the tolerances, and whether a regression fails."""

    entry: Mapping[str, Any] | None
    tolerances: Tolerances = field(default_factory=Tolerances)
    strict: bool = False
    enforce: bool = True
    """False while the baseline is being updated: the comparison is shown, never failed."""
    source: str = ""

    def compare(self, usage: Mapping[str, Any], metrics: Mapping[str, Any]) -> Comparison:
        return compare(self.entry, entry_of(usage, metrics), self.tolerances, strict=self.strict, source=self.source)


@dataclass(frozen=True)
class Options:
    """A session's baseline: the file (read once, at session start), tolerances, and what to do with it."""

    path: Path
    entries: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tolerances: Tolerances = field(default_factory=Tolerances)
    strict: bool = False
    update: bool = False
    prune: PruneScope | None = None
    """Set with ``--tokenbudget-prune``: which entries of unmeasured tests the update drops."""
    display: str = ""
    """The path as people should read it (relative to the rootdir)."""

    def check(self, nodeid: str) -> Check:
        return Check(
            self.entries.get(nodeid), self.tolerances, self.strict, not self.update, self.display or str(self.path)
        )

    def settings(self) -> dict[str, Any]:
        return {
            "baseline": self.display or str(self.path),
            "tolerance": self.tolerances.as_dict(),
            "strict": self.strict,
            "update_baseline": self.update,
        }
