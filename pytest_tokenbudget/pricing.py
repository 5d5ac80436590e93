"""Price each LLM call on its own with genai-prices, then let callers sum.

Tiers (e.g. long-context rates) depend on one request's size, so summing tokens first would misprice.
Overrides (ini ``tokenbudget_prices``) take precedence and are USD per million tokens.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal

from .records import LLMCall

RATE_KEYS = ("input", "output", "cache_read", "cache_write")


class PriceConfigError(ValueError):
    """A malformed ``tokenbudget_prices`` line."""


@dataclass(frozen=True)
class Rates:
    """USD per million tokens. ``input`` is for uncached input; cache rates default to Anthropic's multipliers."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None

    def cost(self, call: LLMCall) -> float:
        assert call.input_tokens is not None and call.output_tokens is not None
        read = call.cache_read_tokens or 0
        write = call.cache_write_tokens or 0
        uncached = max(call.input_tokens - read - write, 0)
        cache_read = self.cache_read if self.cache_read is not None else self.input * 0.1
        cache_write = self.cache_write if self.cache_write is not None else self.input * 1.25
        output = call.output_tokens * self.output
        return (uncached * self.input + read * cache_read + write * cache_write + output) / 1e6


def parse_price_overrides(lines: Iterable[str]) -> dict[str, Rates]:
    """Parse ``MODEL input=3 output=15 [cache_read=0.3] [cache_write=3.75]`` lines (USD per MTok).

    MODEL may end in ``*`` to match a prefix (``claude-sonnet-4*``).
    """
    overrides: dict[str, Rates] = {}
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        model, *pairs = line.split()
        values: dict[str, float] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or key not in RATE_KEYS:
                raise PriceConfigError(
                    f"tokenbudget_prices: {line!r}: expected KEY=USD_PER_MTOK with KEY one of {', '.join(RATE_KEYS)}"
                )
            try:
                values[key] = float(value)
            except ValueError:
                raise PriceConfigError(f"tokenbudget_prices: {line!r}: {value!r} is not a number") from None
            if values[key] < 0:
                raise PriceConfigError(f"tokenbudget_prices: {line!r}: {key} must not be negative")
        if "input" not in values or "output" not in values:
            raise PriceConfigError(f"tokenbudget_prices: {line!r}: input= and output= are required")
        overrides[model] = Rates(**values)
    return overrides


def _override_for(model: str, overrides: Mapping[str, Rates]) -> Rates | None:
    if model in overrides:
        return overrides[model]
    for pattern, rates in overrides.items():
        if pattern.endswith("*") and model.startswith(pattern[:-1]):
            return rates
    return None


_DATE_SUFFIX = re.compile(r"-\d{8}$")


def price_call(call: LLMCall, overrides: Mapping[str, Rates] | None = None) -> float | None:
    """The call's cost in USD, or None when its usage is unknown or no price exists for its model."""
    if not call.usage_known or not call.model:
        return None
    rates = _override_for(call.model, overrides or {})
    if rates is not None:
        return rates.cost(call)
    from genai_prices import Usage, calc_price

    usage = Usage(
        input_tokens=call.input_tokens,
        output_tokens=call.output_tokens,
        cache_read_tokens=call.cache_read_tokens or 0,
        cache_write_tokens=call.cache_write_tokens or 0,
    )
    provider = call.provider if call.provider in ("anthropic", "openai") else None
    for model in dict.fromkeys((call.model, _DATE_SUFFIX.sub("", call.model))):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = calc_price(usage, model_ref=model, provider_id=provider)
        except LookupError:
            continue
        return float(Decimal(result.total_price))
    return None


def price_calls(calls: Iterable[LLMCall], overrides: Mapping[str, Rates] | None = None) -> list[LLMCall]:
    return [replace(call, cost_usd=price_call(call, overrides)) for call in calls]
