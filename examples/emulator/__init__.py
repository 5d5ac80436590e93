"""A loopback Anthropic Messages API emulator for tests and the worked example (never imported by the plugin).

    with Emulator([Reply.text("Hi")]) as emu:
        client = anthropic.Anthropic(base_url=emu.base_url, api_key="test")
        client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=[...])

Usage is counted with tiktoken from the request (see `counting`), prompt caching follows Anthropic's rules on a
controllable clock (see `caching`), answers come from a script (see `script`), JSON or SSE.
"""

from __future__ import annotations

from .backend import Exchange
from .caching import CacheUsage, PromptCache, minimum_cacheable_tokens
from .clock import Clock
from .counting import count_input_tokens, count_text, request_segments, text_of_tokens
from .errors import ApiError
from .script import SCENARIOS, Reply, Script, last_message, load_scenario, message_text, system_text, tool_results
from .server import Emulator

__all__ = [
    "SCENARIOS",
    "ApiError",
    "CacheUsage",
    "Clock",
    "Emulator",
    "Exchange",
    "PromptCache",
    "Reply",
    "Script",
    "count_input_tokens",
    "count_text",
    "last_message",
    "load_scenario",
    "message_text",
    "minimum_cacheable_tokens",
    "request_segments",
    "system_text",
    "text_of_tokens",
    "tool_results",
]
