"""Anthropic's prompt-caching rules, applied to a request's segments on the emulator's clock.

Rules modelled (https://docs.claude.com/en/docs/build-with-claude/prompt-caching):

* at most ``MAX_BREAKPOINTS`` blocks with ``cache_control`` (more is a 400), TTL ``5m`` (default) or ``1h``, and a
  ``1h`` breakpoint may not follow a ``5m`` one in processing order (tools -> system -> messages);
* a breakpoint whose prefix is shorter than the model's minimum (``minimum_cacheable_tokens``) is neither written
  nor read, silently, as on the real API;
* read: the longest prefix already cached that ends at a breakpoint or at one of the ``LOOKBACK_BLOCKS`` block
  boundaries before it (so a breakpoint that moves forward each agent turn still hits the previous turn's entry);
  a hit refreshes that entry's TTL;
* write: every eligible breakpoint beyond the read prefix is stored; the tokens between the read prefix and the
  last such breakpoint are ``cache_creation_input_tokens``, split by the TTL of the breakpoint closing each span;
* ``input_tokens`` is what is left after the last cached or written prefix.

Not modelled: tiered invalidation (``tool_choice``/thinking changes), organisation isolation, eviction. Requests
are processed one at a time, so of two concurrent identical requests the second reads what the first wrote.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from .clock import Clock
from .counting import Segment
from .errors import invalid

MAX_BREAKPOINTS = 4
LOOKBACK_BLOCKS = 20
TTL_SECONDS: dict[str, float] = {"5m": 300.0, "1h": 3600.0}

MINIMUM_CACHEABLE_TOKENS: tuple[tuple[str, int], ...] = (
    ("opus-4-6", 4096),
    ("opus-4-5", 4096),
    ("haiku-4-5", 4096),
    ("3-haiku", 2048),
    ("3-5-haiku", 2048),
)
"""Anthropic's documented minimums: the first substring of the model name that matches wins; anything else
(Sonnet 3.7 to 4.6, Opus 4 and 4.1, and models newer than the table) uses the 1024 default."""
DEFAULT_MINIMUM_CACHEABLE_TOKENS = 1024


def minimum_cacheable_tokens(model: str) -> int:
    for fragment, minimum in MINIMUM_CACHEABLE_TOKENS:
        if fragment in model:
            return minimum
    return DEFAULT_MINIMUM_CACHEABLE_TOKENS


@dataclass(frozen=True)
class CacheUsage:
    """How one request's input tokens split between cache reads, cache writes (per TTL) and the rest."""

    read: int = 0
    write_5m: int = 0
    write_1h: int = 0
    uncached: int = 0

    @property
    def creation(self) -> int:
        return self.write_5m + self.write_1h

    @property
    def total(self) -> int:
        return self.read + self.creation + self.uncached


def breakpoint_ttls(segments: Sequence[Segment]) -> list[str | None]:
    """Each segment's TTL (``None`` when it is no breakpoint); raises the API's 400s for an invalid set."""
    ttls: list[str | None] = []
    seen_5m = False
    for segment in segments:
        control = segment.cache_control
        if control is None:
            ttls.append(None)
            continue
        if control.get("type") != "ephemeral":
            raise invalid(f"{segment.path}.cache_control.type: Input should be 'ephemeral'")
        ttl = control.get("ttl", "5m")
        if ttl not in TTL_SECONDS:
            raise invalid(f"{segment.path}.cache_control.ttl: Input should be '5m' or '1h'")
        if ttl == "1h" and seen_5m:
            raise invalid(
                f"{segment.path}.cache_control.ttl: a ttl='1h' cache_control block must not come after a ttl='5m' "
                "cache_control block. Note that blocks are processed in the following order: `tools`, `system`, "
                "`messages`."
            )
        seen_5m = seen_5m or ttl == "5m"
        ttls.append(str(ttl))
    found = sum(ttl is not None for ttl in ttls)
    if found > MAX_BREAKPOINTS:
        raise invalid(f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {found}.")
    return ttls


def prefix_keys(model: str, segments: Sequence[Segment]) -> list[str]:
    """A hash per prefix (segments 0..i), chained so equal keys mean equal content from the start."""
    keys: list[str] = []
    digest = hashlib.sha256(model.encode())
    for segment in segments:
        digest.update(b"\x00" + segment.fingerprint.encode())
        keys.append(digest.copy().hexdigest())
    return keys


class PromptCache:
    """Cached prefixes with their expiry on the emulator clock."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        now = self._clock.now()
        with self._lock:
            return sum(expires > now for expires, _ in self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def apply(self, model: str, segments: Sequence[Segment]) -> CacheUsage:
        """Read the longest live prefix, write the new breakpoints, and report the split."""
        ttls = breakpoint_ttls(segments)
        keys = prefix_keys(model, segments)
        ends: list[int] = []
        running = 0
        for segment in segments:
            running += segment.tokens
            ends.append(running)
        minimum = minimum_cacheable_tokens(model)
        breakpoints = [i for i, ttl in enumerate(ttls) if ttl is not None and ends[i] >= minimum]
        now = self._clock.now()
        with self._lock:
            hit = self._longest_hit(breakpoints, keys, now)
            read = ends[hit] if hit is not None else 0
            if hit is not None:
                _, ttl = self._entries[keys[hit]]
                self._entries[keys[hit]] = (now + TTL_SECONDS[ttl], ttl)
            written = {"5m": 0, "1h": 0}
            covered = read
            for index in breakpoints:
                if ends[index] <= covered:
                    continue
                ttl = ttls[index] or "5m"
                written[ttl] += ends[index] - covered
                covered = ends[index]
                self._entries[keys[index]] = (now + TTL_SECONDS[ttl], ttl)
        return CacheUsage(read=read, write_5m=written["5m"], write_1h=written["1h"], uncached=running - covered)

    def _longest_hit(self, breakpoints: Sequence[int], keys: Sequence[str], now: float) -> int | None:
        for index in reversed(breakpoints):
            for candidate in range(index, max(index - LOOKBACK_BLOCKS, 0) - 1, -1):
                entry = self._entries.get(keys[candidate])
                if entry is not None and entry[0] > now:
                    return candidate
        return None
