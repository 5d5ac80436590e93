"""Prompt caching through the real SDK: minimum length, write then read, TTLs on the clock, breakpoint rules."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import pytest

from examples.emulator import Emulator, Reply, count_input_tokens, request_segments, text_of_tokens

MODEL = "claude-sonnet-4-6"
EPHEMERAL: dict[str, Any] = {"type": "ephemeral"}
HOUR: dict[str, Any] = {"type": "ephemeral", "ttl": "1h"}


def cached_system_body(tokens: int, model: str = MODEL, control: dict[str, Any] = EPHEMERAL) -> dict[str, Any]:
    """A request whose only breakpoint closes a system prefix of exactly ``tokens`` tokens."""
    return {
        "model": model,
        "max_tokens": 64,
        "system": [{"type": "text", "text": text_of_tokens(tokens), "cache_control": control}],
        "messages": [{"role": "user", "content": "Summarise the rules above."}],
    }


def replies(count: int) -> list[Reply]:
    return [Reply.text("Done.")] * count


def usage_of(client: anthropic.Anthropic, body: dict[str, Any]) -> anthropic.types.Usage:
    usage: anthropic.types.Usage = client.messages.create(**body).usage
    return usage


@pytest.fixture
def emulator() -> Any:
    with Emulator(replies(10)) as emu:
        yield emu


@pytest.fixture
def client(emulator: Emulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=emulator.base_url, api_key="test", max_retries=0)


def test_the_breakpoint_prefix_is_exactly_the_system_block() -> None:
    segments = request_segments(cached_system_body(1024))
    assert segments[0].tokens == 1024 and segments[0].cache_control == EPHEMERAL


@pytest.mark.parametrize(
    ("model", "minimum"),
    [(MODEL, 1024), ("claude-opus-4-1", 1024), ("claude-3-haiku-20240307", 2048), ("claude-haiku-4-5", 4096)],
)
def test_prefix_one_token_below_the_minimum_is_neither_written_nor_read(
    client: anthropic.Anthropic, model: str, minimum: int
) -> None:
    body = cached_system_body(minimum - 1, model)
    for _ in range(2):
        usage = usage_of(client, body)
        assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)
        assert usage.input_tokens == count_input_tokens(body)


@pytest.mark.parametrize(
    ("model", "minimum"), [(MODEL, 1024), ("claude-3-haiku-20240307", 2048), ("claude-haiku-4-5", 4096)]
)
def test_prefix_at_the_minimum_is_written_then_read(client: anthropic.Anthropic, model: str, minimum: int) -> None:
    body = cached_system_body(minimum, model)
    rest = count_input_tokens(body) - minimum
    first, second = usage_of(client, body), usage_of(client, body)
    assert (first.cache_creation_input_tokens, first.cache_read_input_tokens, first.input_tokens) == (minimum, 0, rest)
    assert first.cache_creation is not None and first.cache_creation.ephemeral_5m_input_tokens == minimum
    assert (second.cache_creation_input_tokens, second.cache_read_input_tokens, second.input_tokens) == (
        0,
        minimum,
        rest,
    )


def test_cache_is_per_model(client: anthropic.Anthropic) -> None:
    usage_of(client, cached_system_body(1500))
    other = usage_of(client, cached_system_body(1500, "claude-opus-4-1"))
    assert other.cache_creation_input_tokens == 1500 and other.cache_read_input_tokens == 0


def test_five_minute_ttl_expires_on_the_clock_and_a_hit_refreshes_it(
    client: anthropic.Anthropic, emulator: Emulator
) -> None:
    body = cached_system_body(1200)
    assert usage_of(client, body).cache_creation_input_tokens == 1200
    emulator.clock.advance(299)
    assert usage_of(client, body).cache_read_input_tokens == 1200
    emulator.clock.advance(299)  # 598 s after the write, 299 s after the refreshing hit
    assert usage_of(client, body).cache_read_input_tokens == 1200
    emulator.clock.advance(300)
    expired = usage_of(client, body)
    assert (expired.cache_read_input_tokens, expired.cache_creation_input_tokens) == (0, 1200)


def test_one_hour_ttl_outlives_five_minutes_then_expires(client: anthropic.Anthropic, emulator: Emulator) -> None:
    body = cached_system_body(1200, control=HOUR)
    written = usage_of(client, body)
    assert written.cache_creation is not None
    assert (written.cache_creation.ephemeral_1h_input_tokens, written.cache_creation.ephemeral_5m_input_tokens) == (
        1200,
        0,
    )
    emulator.clock.advance(3599)
    assert usage_of(client, body).cache_read_input_tokens == 1200
    emulator.clock.advance(3600)
    assert usage_of(client, body).cache_creation_input_tokens == 1200


def test_more_than_four_breakpoints_is_a_400(client: anthropic.Anthropic, emulator: Emulator) -> None:
    blocks = [
        {"type": "text", "text": f"Rule {n}." + text_of_tokens(300), "cache_control": EPHEMERAL} for n in range(5)
    ]
    body: Any = {"model": MODEL, "max_tokens": 16, "system": blocks, "messages": [{"role": "user", "content": "Go"}]}
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(**body)
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["error"] == {
        "type": "invalid_request_error",
        "message": "A maximum of 4 blocks with cache_control may be provided. Found 5.",
    }
    body["system"] = blocks[:4]
    usage = usage_of(client, body)
    assert usage.cache_creation_input_tokens == count_input_tokens(body) - usage.input_tokens
    assert emulator.exchanges[0].status == 400 and emulator.exchanges[1].status == 200


def test_a_one_hour_breakpoint_after_a_five_minute_one_is_a_400(client: anthropic.Anthropic) -> None:
    body = cached_system_body(1200)
    body["messages"] = [{"role": "user", "content": [{"type": "text", "text": "Go", "cache_control": HOUR}]}]
    with pytest.raises(anthropic.BadRequestError, match=r"messages\.0\.content\.0\.cache_control\.ttl: a ttl='1h'"):
        client.messages.create(**body)


def test_one_hour_then_five_minute_writes_are_split_by_ttl(client: anthropic.Anthropic) -> None:
    body = cached_system_body(1200, control=HOUR)
    question = {"type": "text", "text": text_of_tokens(50), "cache_control": EPHEMERAL}
    body["messages"] = [{"role": "user", "content": [question]}]
    usage = usage_of(client, body)
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_1h_input_tokens == 1200
    assert usage.cache_creation.ephemeral_5m_input_tokens == 50 + 3  # the block and the message's role marker
    assert usage.input_tokens == 0


TOOL: Any = {
    "name": "read_file",
    "description": "Read a file of the repository under review. " + text_of_tokens(1100),
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    "cache_control": EPHEMERAL,
}


def test_prefix_order_is_tools_then_system_then_messages(client: anthropic.Anthropic) -> None:
    body = cached_system_body(1200)
    body["tools"] = [TOOL]
    tools_prefix = request_segments(body)[0].tokens
    first = usage_of(client, body)
    assert first.cache_creation_input_tokens == count_input_tokens(body) - first.input_tokens
    body["system"] = [{**body["system"][0], "text": "Changed. " + text_of_tokens(1200)}]
    changed_system = usage_of(client, body)
    assert changed_system.cache_read_input_tokens == tools_prefix  # tools come first: still cached
    body["tools"] = [{**TOOL, "description": "Changed. " + TOOL["description"]}]
    changed_tools = usage_of(client, body)
    assert changed_tools.cache_read_input_tokens == 0  # everything after a changed tool is new


def test_a_breakpoint_moving_forward_each_turn_reads_the_previous_turn(client: anthropic.Anthropic) -> None:
    """Anthropic also checks block boundaries before a breakpoint; an agent loop relies on that."""
    first_turn = [{"type": "text", "text": "Review this diff. " + text_of_tokens(1200), "cache_control": EPHEMERAL}]
    body = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": first_turn}]}
    written = usage_of(client, body)
    assert written.cache_creation_input_tokens == count_input_tokens(body)
    body["messages"] = [
        {"role": "user", "content": [{"type": "text", "text": first_turn[0]["text"]}]},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": [{"type": "text", "text": "And the tests?", "cache_control": EPHEMERAL}]},
    ]
    second = usage_of(client, body)
    assert second.cache_read_input_tokens == written.cache_creation_input_tokens
    assert second.cache_creation_input_tokens == count_input_tokens(body) - second.cache_read_input_tokens
    assert second.input_tokens == 0


def test_top_level_cache_control_caches_up_to_the_last_block(client: anthropic.Anthropic) -> None:
    body: Any = {
        "model": MODEL,
        "max_tokens": 64,
        "system": text_of_tokens(1300),
        "messages": [{"role": "user", "content": "Go on."}],
    }
    total = count_input_tokens(body)
    first = client.messages.create(**body, extra_body={"cache_control": EPHEMERAL}).usage
    second = client.messages.create(**body, extra_body={"cache_control": EPHEMERAL}).usage
    assert (first.cache_creation_input_tokens, second.cache_read_input_tokens, second.input_tokens) == (total, total, 0)


def test_concurrent_requests_are_served_one_at_a_time_so_one_writes_and_the_others_read() -> None:
    """Three sub-reviewers fanned out in parallel over one shared cached diff block."""
    diff = {"type": "text", "text": "diff --git a/pay.py b/pay.py\n" + text_of_tokens(2000), "cache_control": EPHEMERAL}

    def reviewer(role: str) -> dict[str, Any]:
        question = {"type": "text", "text": f"Review it for {role} issues."}
        return {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": [diff, question]}]}

    def script(body: Any) -> Reply:
        return Reply.text(f"No {body['messages'][0]['content'][1]['text'].split()[3]} issues.")

    async def fan_out(emu: Emulator) -> list[anthropic.types.Message]:
        client = anthropic.AsyncAnthropic(base_url=emu.base_url, api_key="test", max_retries=0)
        roles = ("architecture", "security", "performance")
        return list(await asyncio.gather(*(client.messages.create(**reviewer(role)) for role in roles)))

    prefix = request_segments(reviewer("any"))[0].tokens  # the diff block and the message's role marker
    with Emulator(script) as emu:
        answers = asyncio.run(fan_out(emu))
    assert sorted(answer.usage.cache_creation_input_tokens or 0 for answer in answers) == [0, 0, prefix]
    assert sorted(answer.usage.cache_read_input_tokens or 0 for answer in answers) == [0, prefix, prefix]
    assert {answer.content[0].text for answer in answers if answer.content[0].type == "text"} == {
        "No architecture issues.",
        "No security issues.",
        "No performance issues.",
    }
