"""Sycophantic or filler openings ("You're absolutely right!", "Great question!") that cost output tokens.

Only the opening of a response counts: the patterns are regular expressions matched at the start of the first
non-empty text block, case-insensitively, after leading whitespace and markdown emphasis are dropped and curly
quotes are made straight. A phrase later in the answer is content, not a preamble.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_PREAMBLE_PATTERNS: tuple[str, ...] = (
    r"(yes|oh|ah)?[,!.]?\s*you('re| are)\s+(absolutely|totally|completely|entirely|quite|so|exactly)?\s*"
    r"(right|correct)\b",
    r"((that'?s|that is|what)\s+(a|an)\s+)?(great|good|excellent|fantastic|wonderful|interesting|insightful)\s+"
    r"(question|point|catch|observation|idea)\b",
    r"certainly\b",
    r"sure(\s+thing)?\s*[,!.]",
    r"of course\b",
    r"absolutely\b",
    r"i('d| would|'ll| will)\s+be\s+(happy|glad|delighted|more than happy)\s+to\b",
    r"(happy|glad)\s+to\s+help\b",
    r"(thanks|thank you)\s+(so much\s+)?for\s+(asking|the question|your question|sharing|pointing)",
    r"(great|excellent|perfect|wonderful|awesome)\s*[!,]",
)
"""Agreement and filler openings. Extend or replace them with the ini option `tokenbudget_preamble_patterns`."""

REPLACE_MARKER = "replace"

_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201b": "'", "\u2032": "'", "\u201c": '"', "\u201d": '"'})
_DECORATION = re.compile(r"[\s*_>#\"]*")
_SENTENCE_END = re.compile(r"[.!?\u2026:]+[\"'*_)\]]*(?=\s|$)|\n")


def preamble_patterns_from_ini(
    lines: Iterable[str] | str, default: Sequence[str] = DEFAULT_PREAMBLE_PATTERNS
) -> tuple[str, ...]:
    """Read the ``tokenbudget_preamble_patterns`` ini lines: they EXTEND ``default`` unless the first one is
    ``replace``, which makes the remaining lines the whole list. Blank lines and ``#`` comments are ignored.

    Raises ``ValueError`` naming the ini option and the pattern when a line is not a valid regular expression.
    """
    if isinstance(lines, str):
        lines = lines.splitlines()
    patterns = [line.strip() for line in lines]
    patterns = [line for line in patterns if line and not line.startswith("#")]
    replace = bool(patterns) and patterns[0].lower() == REPLACE_MARKER
    if replace:
        patterns = patterns[1:]
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"tokenbudget_preamble_patterns: invalid regular expression {pattern!r}: {exc}") from exc
    merged = patterns if replace else [*default, *(p for p in patterns if p not in default)]
    return tuple(merged)


@dataclass(frozen=True)
class Preamble:
    """A response opening that matched a preamble pattern."""

    phrase: str
    """The opening sentence as written, up to its first sentence end: what the preamble cost."""
    pattern: str
    opening: str
    """The block's first 80 characters on one line, to show in a failure message."""


def normalise(text: str) -> str:
    """Curly quotes made straight, one character for one, so offsets still point into the original text."""
    return text.translate(_QUOTES)


@functools.lru_cache(maxsize=32)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(pattern, re.IGNORECASE) for pattern in patterns)


def opening(text: str, width: int = 80) -> str:
    """The first ``width`` characters of ``text`` on one line (whitespace runs collapsed)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width] + "…"


def find_preamble(text: str, patterns: Sequence[str] = DEFAULT_PREAMBLE_PATTERNS) -> Preamble | None:
    """The preamble ``text`` opens with, or ``None``. Patterns match at the start only (``re.match``)."""
    normalised = normalise(text)
    start = _DECORATION.match(normalised)
    offset = start.end() if start else 0
    body = normalised[offset:]
    if not body:
        return None
    for pattern, compiled in zip(patterns, _compiled(tuple(patterns)), strict=True):
        match = compiled.match(body)
        if match is None or match.end() == 0:
            continue
        end = _SENTENCE_END.search(body, max(match.end() - 1, 0))
        stop = end.end() if end else len(body)
        phrase = text[offset : offset + stop].strip()
        return Preamble(phrase=phrase, pattern=pattern, opening=opening(text[offset:]))
    return None
