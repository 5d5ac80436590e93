from __future__ import annotations

import pytest

from pytest_tokenbudget.budgets import LimitError, evaluate, parse_limits, usage_ratios, validate_limits


def test_parse_ini_limits() -> None:
    assert parse_limits("total_tokens=200_000 cost_usd=0.50 forbid_preamble=true") == {
        "total_tokens": 200000,
        "cost_usd": 0.5,
        "forbid_preamble": True,
    }


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"total_tokenz": 1}, "unknown budget key 'total_tokenz'; valid keys: input_tokens"),
        ({"total_tokens": -1}, "total_tokens=-1: must not be negative"),
        ({"total_tokens": "10"}, "total_tokens='10': must be a whole number, got str"),
        ({"total_tokens": 1.5}, "must be a whole number"),
        ({"total_tokens": True}, "must be a whole number, got bool"),
        ({"min_cache_hit_rate": 1.5}, "is a rate between 0 and 1"),
        ({"forbid_preamble": 1}, "must be True or False"),
    ],
)
def test_invalid_limits_name_the_key(limits: dict[str, object], message: str) -> None:
    with pytest.raises(LimitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_limits(limits)


def test_bad_ini_word() -> None:
    with pytest.raises(LimitError, match="expected KEY=VALUE"):
        parse_limits("total_tokens")


def test_inclusive_maximum_and_unknown() -> None:
    assert evaluate({"total_tokens": 100}, {"total_tokens": 100}) == []
    (v,) = evaluate({"total_tokens": 99}, {"total_tokens": 100})
    assert v.message == "total_tokens: 100 > limit 99 (+1.0%)"
    (v,) = evaluate({"cost_usd": 1.0}, {"cost_usd": None}, unknown_reason=lambda k: "no price for model 'x'")
    assert "unknown" in v.message and "no price for model 'x'" in v.message
    (v,) = evaluate({"min_cache_hit_rate": 0.5}, {"cache_hit_rate": 0.25})
    assert v.message.startswith("min_cache_hit_rate: 25.0% < 50.0%")
    assert evaluate({"forbid_preamble": False}, {"preambles": 3}) == []
    (v,) = evaluate({"forbid_preamble": True}, {"preambles": 3}, explain=lambda k: "evidence")
    assert v.message.endswith("evidence")


def test_ratios() -> None:
    assert usage_ratios({"total_tokens": 100, "min_cache_hit_rate": 0.5}, {"total_tokens": 85}) == {
        "total_tokens": 0.85
    }


def test_plugin_record_modes_match_cassettes() -> None:
    from pytest_tokenbudget import cassettes, plugin

    assert plugin.RECORD_MODES == cassettes.RECORD_MODES
