"""vcrpy cassettes for agent tests: where they live, how requests match, what never reaches the disk.

* Matching: method, scheme, host, port, path, query and the request body compared as canonical JSON (key order
  and whitespace ignored; headers never compared), so a changed prompt is a miss, not a stale replay.
* Secrets: scrubbed (`scrubbing`) before an interaction is stored, and before a live request is matched.
* Persistence: written to a temporary file and renamed, so an interrupted run never truncates a cassette.
* Misses: a request the cassette cannot answer raises `CassetteMiss`, which names the cassette, the request and
  the command that re-records it; it subclasses the SDKs' own error types so they fail at once instead of
  retrying a connection error.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import vcr.matchers
from vcr.cassette import Cassette
from vcr.errors import CannotOverwriteExistingCassetteException
from vcr.persisters.filesystem import CassetteNotFoundError
from vcr.record_mode import RecordMode
from vcr.serialize import deserialize, serialize
from vcr.serializers import yamlserializer

from .atomic import write_atomic
from .scrubbing import scrub_request, scrub_response

RECORD_MODES = ("none", "once", "new_episodes", "all")


class CassetteError(Exception):
    """A cassette file that cannot be read; the message names it and says how to fix it."""


class CassetteMiss(CannotOverwriteExistingCassetteException):  # type: ignore[misc]
    """A request that is not in the cassette while recording is off."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)

    def __str__(self) -> str:
        return str(self.args[0])


SDK_ERRORS = (("anthropic", "AnthropicError"), ("openai", "OpenAIError"))
"""Base errors of SDKs that re-raise their own errors unwrapped and do not retry them."""


@functools.cache
def _miss_type(bases: tuple[type[BaseException], ...]) -> type[CassetteMiss]:
    return type("CassetteMiss", (CassetteMiss, *bases), {"__module__": __name__})


def cassette_miss(message: str) -> CassetteMiss:
    """A `CassetteMiss` that is also an error of every SDK already imported, so that SDK fails at once instead of
    retrying a connection error. An SDK that was never imported cannot have sent the request, so none is imported
    here (importing openai costs most of a second)."""
    bases = tuple(
        getattr(sys.modules[module], name)
        for module, name in SDK_ERRORS
        if module in sys.modules and hasattr(sys.modules[module], name)
    )
    return _miss_type(bases)(message)


def _json_body(request: Any) -> Any:
    body = request.body
    if body is None or body in (b"", ""):
        return None
    try:
        return json.loads(body)
    except (ValueError, TypeError):
        return body


def json_body_matcher(r1: Any, r2: Any) -> None:
    """vcrpy matcher: bodies equal as JSON (canonical), else byte for byte."""
    b1, b2 = _json_body(r1), _json_body(r2)
    if b1 != b2:
        raise AssertionError("request bodies differ")


MATCHERS: tuple[Callable[[Any, Any], None], ...] = (
    vcr.matchers.method,
    vcr.matchers.scheme,
    vcr.matchers.host,
    vcr.matchers.port,
    vcr.matchers.path,
    vcr.matchers.query,
    json_body_matcher,
)


class AtomicPersister:
    """vcrpy persister that never leaves a half-written cassette (temp file + ``os.replace``)."""

    @classmethod
    def load_cassette(cls, cassette_path: str | Path, serializer: Any) -> Any:
        path = Path(cassette_path)
        if not path.is_file():
            raise CassetteNotFoundError()
        try:
            data = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise CassetteError(f"{path}: cannot read cassette ({err}); re-record it or restore it from git") from None
        if not data.strip():
            raise CassetteNotFoundError()
        try:
            return deserialize(data, serializer)
        except Exception as err:
            raise CassetteError(
                f"{path}: not a valid vcrpy cassette ({type(err).__name__}: {err}); fix the file or delete it and "
                "re-record with --tokenbudget-record-mode=once"
            ) from None

    @staticmethod
    def save_cassette(cassette_path: str | Path, cassette_dict: Any, serializer: Any) -> None:
        write_atomic(Path(cassette_path), serialize(cassette_dict, serializer))


def describe_request(request: Any) -> str:
    """``POST /v1/messages (model claude-x, last user message "Review this diff ...")`` for error messages."""
    parts = urlsplit(request.uri)
    text = f"{request.method} {parts.path}"
    body = _json_body(request)
    if isinstance(body, Mapping):
        details = []
        if body.get("model"):
            details.append(f"model {body['model']}")
        words = _last_user_words(body)
        if words:
            details.append(f'last user message "{words}"')
        if details:
            text += f" ({', '.join(details)})"
    return text


def _last_user_words(body: Mapping[str, Any], limit: int = 8) -> str:
    messages = body.get("messages") or body.get("input")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if not isinstance(message, Mapping) or message.get("role") != "user":
            continue
        content = message.get("content")
        texts: list[str] = []
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for block in content:
                if isinstance(block, Mapping):
                    if isinstance(block.get("text"), str):
                        texts.append(block["text"])
                    elif block.get("type") == "tool_result":
                        texts.append(f"[tool_result {block.get('tool_use_id', '')}]")
        words = " ".join(texts).split()
        return " ".join(words[:limit]) + (" ..." if len(words) > limit else "")
    return ""


class TrackingCassette(Cassette):  # type: ignore[misc]
    """A vcrpy cassette that remembers, in order, every interaction the test played or recorded."""

    miss_hint: Callable[[Any], str] = staticmethod(lambda request: "")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[Any, Any]] = []
        self.misses: list[str] = []

    def _load(self) -> None:
        super()._load()
        # vcrpy loads the file through `append`: those interactions are not seen until the test plays them.
        self.seen.clear()

    def can_play_response_for(self, request: Any) -> bool:
        playable = bool(super().can_play_response_for(request))
        if not playable and self.write_protected and self.filter_request(request):
            message = self.miss_hint(request)
            self.misses.append(message)
            raise cassette_miss(message)
        return playable

    def play_response(self, request: Any) -> Any:
        response = super().play_response(request)
        self.seen.append((request, response))
        return response

    def append(self, request: Any, response: Any) -> None:
        before = len(self.data)
        super().append(request, response)
        if len(self.data) > before:
            self.seen.append(self.data[-1])


@dataclass
class CassetteSettings:
    directory: Path
    record_mode: str = "none"
    extra: Mapping[str, Any] = field(default_factory=dict)


def cassette_path(directory: Path, module_path: str, test_name: str, override: str | None = None) -> Path:
    """``<dir>/<module path without .py>/<test name>.yaml``; ``override`` replaces the file name."""
    module = Path(module_path)
    stem = module.with_suffix("") if module.suffix == ".py" else module
    name = override if override is not None else re.sub(r"[^\w.\-\[\]]+", "_", test_name)
    if not name.endswith((".yaml", ".yml", ".json")):
        name += ".yaml"
    return directory / stem / name


def played_interactions(cassette: Any) -> list[tuple[Any, Any]]:
    """What a plain vcrpy cassette someone else opened (pytest-recording's) played or recorded, in order.

    Its ``data`` holds every interaction loaded from the file; a test that plays only some of them must not be
    charged for the rest. ``play_counts`` remembers the played indices in the order first played, and whatever
    was recorded during the test follows the loaded entries.
    """
    data = list(getattr(cassette, "data", []))
    counts = getattr(cassette, "play_counts", {})
    loaded = getattr(cassette, "_loaded_count", len(getattr(cassette, "_old_interactions", data)))
    return [data[index] for index, count in counts.items() if count and index < loaded] + data[loaded:]


def rerecord_command(nodeid: str, path: Path) -> str:
    mode = "all" if path.is_file() else "once"
    return f'pytest "{nodeid}" --tokenbudget-record-mode={mode}'


@contextmanager
def use_cassette(path: Path, record_mode: str, nodeid: str, **overrides: Any) -> Iterator[TrackingCassette]:
    """Run the block inside the cassette at ``path``; yields it so callers can read what was played."""
    if record_mode not in RECORD_MODES:
        raise ValueError(f"record mode {record_mode!r}: use one of {', '.join(RECORD_MODES)}")

    def hint(request: Any) -> str:
        why = (
            "Nothing was recorded: the cassette exists and record mode 'once' does not add to it."
            if record_mode == "once"
            else f"Recording is off (--tokenbudget-record-mode={record_mode})."
        )
        return (
            f"request not in cassette {path}: {describe_request(request)}.\n"
            f"{why} If the prompt changed on purpose, re-record with:\n    {rerecord_command(nodeid, path)}"
        )

    cls: Any = type("TestCassette", (TrackingCassette,), {"miss_hint": staticmethod(hint)})
    config: dict[str, Any] = {
        "path": str(path),
        "serializer": yamlserializer,
        "persister": AtomicPersister,
        "record_mode": RecordMode(record_mode),
        "match_on": MATCHERS,
        "before_record_request": scrub_request,
        "before_record_response": _decode_then_scrub,
        "allow_playback_repeats": False,
    }
    config.update(overrides)
    with cls.use(**config) as cassette:
        yield cassette


def _decode_then_scrub(response: dict[str, Any]) -> dict[str, Any]:
    from vcr.filters import decode_response

    return scrub_response(decode_response(response))
