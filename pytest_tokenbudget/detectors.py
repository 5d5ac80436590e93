"""Bottleneck detectors: the hidden token sinks a per-test total does not show, each with its evidence.

Pure functions over one scenario's records (`LLMCall`, `ToolCall`): retry storms (a tool called again and again
in a row), re-fetching (the same tool call anywhere), cache misses (a low hit rate, ``cache_control`` that cached
nothing, a long prefix re-sent uncached), fan-out duplication (sibling calls sent the same block uncached), and
sycophantic preambles. `analyse` runs them all; `explain` turns a violated budget into its failure message.

Decisions the issue leaves open, made here:

* Tool calls are merged and ordered as `pytest_tokenbudget.toolcalls` says.
* Duplicate context is counted only between siblings with a known common parent span (``parent_span_id`` not
  ``None``): calls without a recorded parent cannot be known to be siblings. A sibling whose messages extend an
  earlier sibling's messages is that conversation continuing (re-sent history is the cache detector's job), so
  siblings are grouped into conversations and a block counts once per conversation that carries it after the
  first, in the first call of that conversation carrying it, unless that call read it from cache.
* A block was read from cache when it lies entirely within the first ``cache_read_tokens`` of its call's prompt
  (providers cache prefixes: tools -> system -> messages). Its position is estimated by counting every block
  before it with tiktoken, scaled so the whole prompt matches the call's reported ``input_tokens`` (that absorbs
  what tiktoken cannot see: the provider's own tokenizer, a hidden tool-use system prompt, per-message markers),
  and it may end up to `CACHE_POSITION_TOLERANCE` (5%) of the cache read beyond it: the estimate is not exact.
  How much of the cache read a call has does not matter, only where the block sits: cached tool definitions
  do not make an uncached diff after them "cached".
* A rate with nothing to measure is not unknown: no LLM call completed (cache hit rate), or no response had text
  (preamble rate). The metric is ``None`` then, `Analysis.unmeasured` names it and why, and its limit passes
  (`budgets.evaluate`). A rate is unknown (``None``, not in `Analysis.unmeasured`; its limit fails) when a call
  reported no usage (cache) or a response's content was not recorded (preambles). ``preambles`` is then
  ``None`` too, unless a preamble was found anyway (a known violation of ``forbid_preamble``).
* Preambles are looked for in the first non-empty text block of a response (a stream's empty first block
  before a tool call is no opening).
* A re-sent prefix is "uncached" when less than half of its tiktoken count was read from cache: tiktoken is not
  the provider's tokenizer, so an exact comparison would misfire on a properly cached prompt.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_tokenbudget import tokens
from pytest_tokenbudget.preambles import (
    DEFAULT_PREAMBLE_PATTERNS,
    find_preamble,
    opening,
    preamble_patterns_from_ini,
)
from pytest_tokenbudget.prompts import Block, prompt_blocks, sets_cache_control
from pytest_tokenbudget.records import LLMCall, ToolCall, Usage
from pytest_tokenbudget.toolcalls import ToolEvent, call_label, merge_tool_calls, order_calls

__all__ = [
    "DEFAULT_PREAMBLE_PATTERNS",
    "LIMIT_KEYS",
    "METRIC_KEYS",
    "Analysis",
    "DetectorSettings",
    "Finding",
    "ToolEvent",
    "analyse",
    "call_label",
    "explain",
    "first_text",
    "merge_tool_calls",
    "order_calls",
    "preamble_patterns_from_ini",
]

METRIC_KEYS = (
    "max_repeat",
    "max_identical",
    "resends",
    "cache_hit_rate",
    "duplicate_context_tokens",
    "preambles",
    "preamble_rate",
)
LIMIT_KEYS = (
    "max_repeated_tool_calls",
    "max_identical_tool_calls",
    "min_cache_hit_rate",
    "max_duplicate_context_tokens",
    "forbid_preamble",
    "max_preamble_rate",
)
_MAX_DETAILS = 10
CACHE_POSITION_TOLERANCE = 0.05
"""How far (a share of the cache read) a block's estimated end may lie beyond it and still count as read from
cache: tiktoken only approximates the provider's tokenizer."""


@dataclass(frozen=True)
class DetectorSettings:
    """Thresholds of the detectors (ini ``tokenbudget_min_prefix_tokens`` ... ``tokenbudget_preamble_patterns``)."""

    min_prefix_tokens: int = 1024
    min_duplicate_block_tokens: int = 256
    preamble_patterns: tuple[str, ...] = DEFAULT_PREAMBLE_PATTERNS

    def __post_init__(self) -> None:
        for name in ("min_prefix_tokens", "min_duplicate_block_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"tokenbudget_{name} must be a whole number >= 0, got {value!r}")
        if isinstance(self.preamble_patterns, str) or not all(isinstance(p, str) for p in self.preamble_patterns):
            raise ValueError(
                f"preamble_patterns must be a sequence of regular expressions, got {self.preamble_patterns!r}"
            )
        object.__setattr__(self, "preamble_patterns", tuple(self.preamble_patterns))


@dataclass(frozen=True)
class Finding:
    """One piece of evidence: which detector, a one-line summary, detail lines, and the numbers behind them."""

    detector: str
    summary: str
    details: tuple[str, ...] = ()
    data: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __str__(self) -> str:
        return "\n".join([self.summary, *(f"  {line}" for line in self.details)])


@dataclass(frozen=True)
class Analysis:
    """What the detectors found in one scenario: `METRIC_KEYS` metrics and the findings behind them."""

    metrics: dict[str, int | float | None] = field(hash=False)
    findings: tuple[Finding, ...] = ()
    facts: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    """Totals the failure messages quote (input and cache-read tokens, why a metric is unknown ...)."""

    @property
    def unmeasured(self) -> dict[str, str]:
        """Metrics that are ``None`` because there was nothing to measure (not unknown), each with why."""
        return dict(self.facts.get("nothing_to_measure") or {})

    def of(self, detector: str) -> tuple[Finding, ...]:
        """The findings of one detector (``repeated_tool_calls``, ``cache``, ``preamble`` ...)."""
        return tuple(f for f in self.findings if f.detector == detector)

    def as_dict(self) -> dict[str, Any]:
        return {
            "metrics": dict(self.metrics),
            "findings": [
                {"detector": f.detector, "summary": f.summary, "details": list(f.details)} for f in self.findings
            ],
        }


def _n(value: int) -> str:
    return f"{value:,}"


def _calls(numbers: Sequence[int]) -> str:
    """``call 3`` or ``calls 2-14``."""
    return f"call {numbers[0]}" if len(numbers) == 1 else f"calls {_numbers(numbers)}"


def _numbers(values: Sequence[int]) -> str:
    """``2, 3, 4`` or ``2-14`` for a consecutive range."""
    if len(values) > 2 and list(values) == list(range(values[0], values[0] + len(values))):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(str(v) for v in values)


# --- retry storms and re-fetching -----------------------------------------------------------------------------


def _runs(events: Sequence[ToolEvent]) -> list[tuple[ToolEvent, ...]]:
    """Maximal runs of consecutive identical calls (an error result inside a run is part of it)."""
    runs: list[list[ToolEvent]] = []
    for event in events:
        if runs and runs[-1][-1].key == event.key:
            runs[-1].append(event)
        else:
            runs.append([event])
    return [tuple(run) for run in runs]


def _run_data(run: Sequence[ToolEvent]) -> dict[str, Any]:
    return {
        "tool": run[0].name,
        "arguments": run[0].arguments,
        "count": len(run),
        "first_call": run[0].number,
        "last_call": run[-1].number,
        "turn": run[0].turn,
        "last_turn": run[-1].turn,
        "errors": sum(1 for e in run if e.error is not None),
    }


def _run_turns(data: Mapping[str, Any]) -> str:
    """`` of turn 2`` or `` of turns 2-8``: the LLM calls that requested the run, first to last."""
    known = [t for t in (data["turn"], data.get("last_turn")) if t is not None]
    if not known:
        return ""
    first, last = min(known), max(known)
    return f" of turn {first}" if first == last else f" of turns {first}-{last}"


def _run_message(data: Mapping[str, Any], limit: object = None) -> str:
    where = [] if limit is None else [f"max {limit}"]
    turn = _run_turns(data)
    if data["count"] == 1:
        where.append(f"call {data['first_call']}{turn}")
    else:
        where.append(f"calls {data['first_call']}-{data['last_call']}{turn}")
    if data["errors"]:
        where.append(f"{data['errors']} returned error{'s' if data['errors'] != 1 else ''}")
    times = "once" if data["count"] == 1 else f"{data['count']} times in a row"
    return f"{call_label(data['tool'], data['arguments'])} called {times} ({'; '.join(where)})"


def _repeat_findings(events: Sequence[ToolEvent]) -> tuple[int, Finding | None]:
    runs = _runs(events)
    if not runs:
        return 0, None
    longest = max(runs, key=len)  # max() keeps the first of equal runs
    if len(longest) < 2:
        return 1, None
    others = sorted((r for r in runs if len(r) >= 2 and r is not longest), key=len, reverse=True)
    data = _run_data(longest)
    data["other_runs"] = [_run_data(r) for r in others]
    details = tuple(_run_message(_run_data(r)) for r in others[:_MAX_DETAILS])
    return len(longest), Finding("repeated_tool_calls", _run_message(data), details, data)


def _identical_data(key: tuple[str, str], events: Sequence[ToolEvent]) -> dict[str, Any]:
    return {
        "tool": key[0],
        "arguments": key[1],
        "count": len(events),
        "calls": [e.number for e in events],
        "turns": [e.turn for e in events],
    }


def _identical_message(data: Mapping[str, Any], limit: object = None) -> str:
    bound = "" if limit is None else f" (max {limit})"
    times = "once" if data["count"] == 1 else f"{data['count']} times"
    return f"{call_label(data['tool'], data['arguments'])} called {times}{bound}"


def _identical_where(data: Mapping[str, Any]) -> str:
    turns = sorted({t for t in data["turns"] if t is not None})
    where = f"calls {_numbers(data['calls'])}"
    if not turns:
        return where
    return where + (f" (turn {turns[0]})" if len(turns) == 1 else f" (turns {_numbers(turns)})")


def _identical_findings(events: Sequence[ToolEvent]) -> tuple[int, Finding | None]:
    by_key: dict[tuple[str, str], list[ToolEvent]] = defaultdict(list)
    for event in events:
        by_key[event.key].append(event)
    if not by_key:
        return 0, None
    ranked = sorted(by_key.items(), key=lambda item: -len(item[1]))  # stable: first seen wins a tie
    top = len(ranked[0][1])
    if top < 2:
        return 1, None
    data = _identical_data(*ranked[0])
    data["others"] = [_identical_data(k, v) for k, v in ranked[1:] if len(v) >= 2]
    details = [_identical_where(data)]
    details += [f"{_identical_message(o)}: {_identical_where(o)}" for o in data["others"][:_MAX_DETAILS]]
    return top, Finding("identical_tool_calls", _identical_message(data), tuple(details), data)


# --- resends ----------------------------------------------------------------------------------------------------


def _resend_note(resends: int) -> str:
    return f"+ {resends} SDK resend{'s' if resends != 1 else ''} of LLM calls re-sent the full prompt"


def _resend_findings(ordered: Sequence[LLMCall]) -> tuple[int, Finding | None]:
    total = sum(call.resend_count for call in ordered)
    if not total:
        return 0, None
    details = []
    for number, call in enumerate(ordered, 1):
        if call.resend_count:
            prompt = f", each with its {_n(call.input_tokens)}-token prompt" if call.input_tokens else ""
            times = "once" if call.resend_count == 1 else f"{call.resend_count} times"
            details.append(f"call {number} ({call.model or 'unknown model'}) was re-sent {times}{prompt}")
    summary = f"{total} SDK resend{'s' if total != 1 else ''} of LLM calls re-sent the full prompt"
    return total, Finding("resends", summary, tuple(details), {"resends": total})


# --- cache ------------------------------------------------------------------------------------------------------


def _cache_control_finding(ordered: Sequence[LLMCall]) -> Finding | None:
    numbers: list[int] = []
    inputs: list[int] = []
    for number, call in enumerate(ordered, 1):
        if not call.usage_known or not sets_cache_control(call.request):
            continue
        if call.cache_read_tokens is None and call.cache_write_tokens is None:
            continue  # the source did not report cache usage: unknown, not "nothing cached"
        if not call.cache_read_tokens and not call.cache_write_tokens:
            numbers.append(number)
            inputs.append(call.input_tokens or 0)
    if not numbers:
        return None
    who = f"call {numbers[0]}" if len(numbers) == 1 else f"calls {_numbers(numbers)}"
    size = _n(inputs[0]) if len(set(inputs)) == 1 else f"{_n(min(inputs))}-{_n(max(inputs))}"
    summary = (
        f"{who} set cache_control but neither wrote nor read the cache: prefix below the model's minimum "
        f"cacheable length ({size} input tokens in all)"
    )
    return Finding("cache", summary, (), {"kind": "cache_control_uncached", "calls": numbers, "inputs": inputs})


def _common_prefix(a: Sequence[Block], b: Sequence[Block]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x.key != y.key:
            break
        length += 1
    return length


def _prefix_hint(calls: Sequence[LLMCall]) -> str:
    if any("openai" in (call.provider or "").lower() for call in calls):
        # OpenAI caches prefixes automatically: a miss means the calls did not reach the same cache.
        return "OpenAI caches automatically: keep the prefix byte-identical and set prompt_cache_key"
    if any(sets_cache_control(call.request) for call in calls):
        return "its cache_control breakpoints did not cache it"
    return "mark it with cache_control"


def _prefix_findings(
    ordered: Sequence[LLMCall], prompts: Sequence[tuple[Block, ...] | None], settings: DetectorSettings
) -> list[Finding]:
    """Consecutive calls re-sending the same long prefix without reading it from cache, grouped into ranges."""
    flagged: list[tuple[int, int, int, tuple[Block, ...]]] = []  # (number, prefix tokens, cache read, prefix)
    for index in range(1, len(ordered)):
        before, call = prompts[index - 1], prompts[index]
        previous, current = ordered[index - 1], ordered[index]
        if before is None or call is None or not current.usage_known:
            continue
        if previous.model and current.model and previous.model != current.model:
            continue  # a cache is per model: another model could not have served it
        shared = call[: _common_prefix(before, call)]
        counts = [tokens.count_tokens(block.text) for block in shared]
        if any(count is None for count in counts):
            return []
        prefix_tokens = sum(count for count in counts if count is not None)
        cache_read = current.cache_read_tokens or 0
        if prefix_tokens >= settings.min_prefix_tokens and cache_read * 2 < prefix_tokens:
            flagged.append((index + 1, prefix_tokens, cache_read, shared))
    groups: list[list[tuple[int, int, int, tuple[Block, ...]]]] = []
    for item in flagged:
        if groups and groups[-1][-1][0] == item[0] - 1:
            groups[-1].append(item)
        else:
            groups.append([item])
    findings = []
    for group in groups:
        numbers = [item[0] for item in group]
        smallest = min(group, key=lambda item: item[1])
        size, shared = smallest[1], smallest[3]
        hint = _prefix_hint([ordered[n - 1] for n in numbers])
        who = f"call {numbers[0]} re-sends" if len(numbers) == 1 else f"calls {numbers[0]}-{numbers[-1]} re-send"
        summary = f"{who} the same {_n(size)}-token prefix uncached; {hint}"
        uncached = sum(max(item[1] - item[2], 0) for item in group)
        first_text = next((block.text for block in shared if block.text.strip()), "")
        details = (
            f"the prefix ({len(shared)} blocks: tools -> system -> messages) starts {opening(first_text, 60)!r}",
            f"{_n(uncached)} prefix tokens re-sent without a cache read over {len(numbers)} call(s)",
        )
        data = {
            "kind": "uncached_prefix",
            "calls": numbers,
            "prefix_tokens": size,
            "uncached_tokens": uncached,
            "cache_read": [item[2] for item in group],
        }
        findings.append(Finding("cache", summary, details, data))
    return findings


# --- duplicate context ------------------------------------------------------------------------------------------


def _conversations(members: Sequence[tuple[int, tuple[Block, ...]]]) -> dict[int, int]:
    """Number of each sibling -> number of the first call of its conversation.

    A call continues an earlier sibling's conversation when its messages are that sibling's messages followed by
    an assistant reply (and whatever came after it); sub-agents handed the same input do not continue each other.
    """
    root: dict[int, int] = {}
    seen: list[tuple[int, list[str]]] = []
    for number, blocks in members:
        messages = [b for b in blocks if b.section == "messages"]
        keys = [b.key for b in messages]
        parent = None
        for other, other_keys in reversed(seen):
            extends = len(other_keys) < len(keys) and keys[: len(other_keys)] == other_keys
            if extends and messages[len(other_keys)].role == "assistant":
                parent = other
                break
        root[number] = root[parent] if parent is not None else number
        seen.append((number, keys))
    return root


def _read_from_cache(call: LLMCall, blocks: Sequence[Block]) -> list[bool]:
    """For each block of ``call``'s prompt: whether it lies entirely within the prefix the call read from cache.

    Block ends are running tiktoken counts in prompt order (tools -> system -> messages), scaled to the call's
    reported input tokens, with `CACHE_POSITION_TOLERANCE` of slack (see the module docstring).
    """
    read = call.cache_read_tokens or 0
    if read <= 0:
        return [False] * len(blocks)
    sizes = [tokens.count_tokens(block.text) or 0 for block in blocks]
    estimated = sum(sizes)
    scale = call.input_tokens / estimated if call.input_tokens and estimated else 1.0
    reach = read * (1 + CACHE_POSITION_TOLERANCE)
    served, end = [], 0
    for size in sizes:
        end += size
        served.append(end * scale <= reach)
    return served


def _duplicate_context(
    ordered: Sequence[LLMCall], prompts: Sequence[tuple[Block, ...] | None], settings: DetectorSettings
) -> tuple[int | None, list[Finding], str | None]:
    groups: dict[str, list[int]] = defaultdict(list)
    for number, call in enumerate(ordered, 1):
        if call.parent_span_id is not None:
            groups[call.parent_span_id].append(number)
    sibling_groups = {parent: numbers for parent, numbers in groups.items() if len(numbers) >= 2}
    if not sibling_groups:
        return 0, [], None
    reason = tokens.unavailable_reason()
    if reason:
        return None, [], reason
    unknown = [n for numbers in sibling_groups.values() for n in numbers if prompts[n - 1] is None]
    if unknown:
        return None, [], f"the inputs of sibling calls {_numbers(unknown)} were not recorded"
    total = 0
    findings = []
    for parent, numbers in sibling_groups.items():
        members = [(n, prompts[n - 1] or ()) for n in numbers]
        conversation = _conversations(members)
        carriers: dict[str, list[int]] = defaultdict(list)  # block text -> calls carrying it (first per conversation)
        charged: dict[str, list[int]] = defaultdict(list)
        sizes: dict[str, int] = {}
        seen_conversations: dict[str, set[int]] = defaultdict(set)
        for number, blocks in members:
            cached = _read_from_cache(ordered[number - 1], blocks)
            in_this_call: set[str] = set()
            for block, from_cache in zip(blocks, cached, strict=True):
                text = block.text
                if not block.content or text in in_this_call:
                    continue
                in_this_call.add(text)
                size = sizes.get(text)
                if size is None:
                    size = sizes[text] = tokens.count_tokens(text) or 0
                if size < settings.min_duplicate_block_tokens:
                    continue
                if conversation[number] in seen_conversations[text]:
                    continue  # the same conversation re-sending its history: the cache detector's business
                first = not seen_conversations[text]
                seen_conversations[text].add(conversation[number])
                carriers[text].append(number)
                if first:
                    continue
                if not from_cache:
                    charged[text].append(number)
        for text, uncached in charged.items():
            duplicated = sizes[text] * len(uncached)
            total += duplicated
            who = ", ".join(str(n) for n in carriers[text])
            summary = (
                f"{opening(text, 60)!r} ({_n(sizes[text])} tokens) carried by sibling calls {who}: "
                f"{_n(duplicated)} tokens duplicated uncached"
            )
            # The span id stays in `data`: text must not change between runs (reports and baselines are diffed).
            detail = f"siblings of one parent span; sent uncached again to call{'s' if len(uncached) > 1 else ''} " + (
                ", ".join(str(n) for n in uncached)
            )
            data = {
                "parent_span_id": parent,
                "block_tokens": sizes[text],
                "calls": carriers[text],
                "uncached_calls": uncached,
                "duplicated_tokens": duplicated,
                "opening": opening(text, 60),
            }
            findings.append(Finding("duplicate_context", summary, (detail,), data))
    findings.sort(key=lambda f: -int(f.data["duplicated_tokens"]))
    return total, findings, None


# --- preambles --------------------------------------------------------------------------------------------------


def first_text(call: LLMCall) -> str | None:
    """The first non-empty text block of a response (streamed blocks arrive assembled in ``output_texts``)."""
    for text in call.output_texts:
        if text and text.strip():
            return text
    if call.output_text and call.output_text.strip():
        return call.output_text
    return None


def content_recorded(call: LLMCall) -> bool:
    """Whether what the response said is known: its text (even empty) or the tool calls it requested."""
    return call.output_text is not None or bool(call.output_texts) or bool(call.tool_calls)


def _preamble_findings(ordered: Sequence[LLMCall], settings: DetectorSettings) -> tuple[int, int, Finding | None]:
    with_text = 0
    hits: list[dict[str, Any]] = []
    for number, call in enumerate(ordered, 1):
        text = first_text(call)
        if text is None:
            continue
        with_text += 1
        found = find_preamble(text, settings.preamble_patterns)
        if found is not None:
            cost = tokens.count_tokens(found.phrase)
            hits.append(
                {
                    "call": number,
                    "opening": found.opening,
                    "phrase": found.phrase,
                    "tokens": cost,
                    "pattern": found.pattern,
                }
            )
    if not hits:
        return with_text, 0, None
    known_costs = [h["tokens"] for h in hits if h["tokens"] is not None]
    cost_text = (
        f"{_n(sum(known_costs))} output tokens" if len(known_costs) == len(hits) else "output tokens not counted"
    )
    summary = f"{len(hits)} of {with_text} responses open with a preamble ({cost_text})"
    details = tuple(_preamble_line(h) for h in hits[:_MAX_DETAILS])
    data = {"preambles": hits, "responses_with_text": with_text}
    return with_text, len(hits), Finding("preamble", summary, details, data)


def _preamble_line(hit: Mapping[str, Any]) -> str:
    cost = "not counted" if hit["tokens"] is None else f"{hit['tokens']} output tokens"
    return f"call {hit['call']}: {hit['opening']!r} (preamble {hit['phrase']!r}: {cost})"


# --- entry points -----------------------------------------------------------------------------------------------


def analyse(
    calls: Sequence[LLMCall], tools: Sequence[ToolCall] = (), settings: DetectorSettings | None = None
) -> Analysis:
    """Run every detector over one scenario's records."""
    settings = settings or DetectorSettings()
    ordered = order_calls(calls)
    events = merge_tool_calls(ordered, tools)
    prompts = [prompt_blocks(call) for call in ordered]
    usage = Usage.of(ordered)

    max_repeat, repeat = _repeat_findings(events)
    max_identical, identical = _identical_findings(events)
    resends, resend = _resend_findings(ordered)
    cache: list[Finding] = []
    cache_control = _cache_control_finding(ordered)
    if cache_control:
        cache.append(cache_control)
    if tokens.unavailable_reason() is None:
        cache += _prefix_findings(ordered, prompts, settings)
    duplicate_tokens, duplicates, duplicate_reason = _duplicate_context(ordered, prompts, settings)
    with_text, found_preambles, preamble = _preamble_findings(ordered, settings)

    unmeasured: dict[str, str] = {}
    hit_rate_reason = None
    if usage.cache_hit_rate is None:
        if usage.input_tokens is None or usage.cache_read_tokens is None:
            hit_rate_reason = f"{usage.unknown_calls} LLM call(s) reported no usage"
        else:
            hit_rate_reason = unmeasured["cache_hit_rate"] = (
                "no LLM calls were made"
                if not ordered
                else "no LLM call completed"
                if not usage.llm_calls
                else "the LLM calls sent no input tokens"
            )
    unrecorded = [n for n, c in enumerate(ordered, 1) if c.error is None and not content_recorded(c)]
    preambles: int | None = found_preambles
    preamble_rate: float | None = found_preambles / with_text if with_text else None
    preamble_reason = None
    if unrecorded:
        preamble_rate = None
        preambles = found_preambles or None
        preamble_reason = f"the content of {_calls(unrecorded)} was not recorded"
    elif not with_text:
        preamble_reason = unmeasured["preamble_rate"] = (
            "no LLM calls were made" if not ordered else "no response had text"
        )

    metrics: dict[str, int | float | None] = {
        "max_repeat": max_repeat,
        "max_identical": max_identical,
        "resends": resends,
        "cache_hit_rate": usage.cache_hit_rate,
        "duplicate_context_tokens": duplicate_tokens,
        "preambles": preambles,
        "preamble_rate": preamble_rate,
    }
    findings = tuple(f for f in (repeat, identical, resend, *cache, *duplicates, preamble) if f is not None)
    facts = {
        "llm_calls": usage.llm_calls,
        "unknown_calls": usage.unknown_calls,
        "input_tokens": usage.input_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "tool_calls": len(events),
        "responses_with_text": with_text,
        "cache_hit_rate_reason": hit_rate_reason,
        "preamble_rate_reason": preamble_reason,
        "nothing_to_measure": unmeasured,
        "duplicate_context_unknown": duplicate_reason,
        "tokenizer_unavailable": tokens.unavailable_reason(),
        "cache_control_calls": [n for n, c in enumerate(ordered, 1) if sets_cache_control(c.request)],
    }
    return Analysis(metrics=metrics, findings=findings, facts=facts)


def _with_details(summary: str, findings: Sequence[Finding], *, include_summaries: bool = True) -> str:
    lines = [summary]
    for finding in findings:
        if include_summaries:
            lines.append(f"  {finding.summary}")
        lines.extend(f"    {line}" if include_summaries else f"  {line}" for line in finding.details)
    return "\n".join(lines)


def _percent(rate: float) -> str:
    return f"{rate:.1%}"


def explain(limit_key: str, analysis: Analysis, limit: object = None) -> str:
    """The failure message for a violated budget ``limit_key`` (one of `LIMIT_KEYS`), evidence first.

    ``limit`` (the budget's value), when given, is quoted in the message.
    """
    metrics, facts = analysis.metrics, analysis.facts
    if limit_key == "max_repeated_tool_calls":
        found = analysis.of("repeated_tool_calls")
        resends = metrics["resends"] or 0
        note = f"\n{_resend_note(int(resends))}" if resends else ""
        if found:
            data = found[0].data
            return _with_details(_run_message(data, limit), [found[0]], include_summaries=False) + note
        if metrics["max_repeat"]:
            bound = "" if limit is None else f", max {limit}"
            return f"no tool call was repeated in a row (longest run 1{bound})" + note
        return "no tool calls were recorded" + note
    if limit_key == "max_identical_tool_calls":
        found = analysis.of("identical_tool_calls")
        if found:
            return _with_details(_identical_message(found[0].data, limit), [found[0]], include_summaries=False)
        if metrics["max_identical"]:
            return "every tool call was made once" + ("" if limit is None else f" (max {limit})")
        return "no tool calls were recorded"
    if limit_key == "min_cache_hit_rate":
        rate = metrics["cache_hit_rate"]
        bound = "" if limit is None else f"; min {limit}"
        if rate is None:
            state = "not measured" if "cache_hit_rate" in analysis.unmeasured else "unknown"
            head = f"cache hit rate {state}: {facts.get('cache_hit_rate_reason') or 'no input tokens'}{bound}"
        else:
            head = (
                f"cache hit rate {_percent(float(rate))}{bound}: {_n(facts['cache_read_tokens'] or 0)} of "
                f"{_n(facts['input_tokens'] or 0)} input tokens were read from cache"
            )
        cache = analysis.of("cache")
        if not cache and not facts.get("cache_control_calls") and rate is not None:
            head += "\n  no request set cache_control"
        return _with_details(head, cache)
    if limit_key == "max_duplicate_context_tokens":
        value = metrics["duplicate_context_tokens"]
        bound = "" if limit is None else f" (max {limit})"
        if value is None:
            why = facts.get("duplicate_context_unknown") or facts.get("tokenizer_unavailable") or "unknown"
            return f"duplicate context tokens unknown{bound}: {why}"
        head = f"{_n(int(value))} context tokens duplicated uncached across sibling calls{bound}"
        return _with_details(head, analysis.of("duplicate_context"))
    if limit_key in ("forbid_preamble", "max_preamble_rate"):
        found = analysis.of("preamble")
        reason = facts.get("preamble_rate_reason") or "no response had text"
        state = "not measured" if "preamble_rate" in analysis.unmeasured else "unknown"
        if limit_key == "forbid_preamble":
            if found:
                head = found[0].summary
                if metrics["preamble_rate"] is None and state == "unknown":
                    head += f"; {reason}"
            elif metrics["preambles"] is None:
                head = f"preambles unknown: {reason}"
            else:
                head = "no response opened with a preamble"
            return _with_details(head, found, include_summaries=False)
        rate = metrics["preamble_rate"]
        bound = "" if limit is None else f"; max {limit}"
        if rate is None:
            return _with_details(f"preamble rate {state}: {reason}{bound}", found)
        head = (
            f"preamble rate {_percent(float(rate))} ({metrics['preambles']} of {facts['responses_with_text']} "
            f"responses{bound})"
        )
        return _with_details(head, found)
    raise ValueError(f"explain: unknown budget key {limit_key!r}; expected one of {', '.join(LIMIT_KEYS)}")
