"""Read vcrpy cassettes, in every shape they are found in the wild, into plain HTTP records.

Cassettes are written by vcrpy's YAML or JSON serializer, but projects bend the format: raw bytes of a gzip
body kept as ``!!binary`` with its ``Content-Encoding`` header, or pydantic-ai's serializer, which stores a JSON
body as a decoded mapping under ``parsed_body`` and drops ``body``. This module undoes all of that once, so the
code that reads LLM traffic (`traffic`) sees one shape: decoded bytes plus the parsed JSON when there is one.
Live vcrpy objects (``cassette.data`` after a test) go through the same path, via `interaction_from_vcr`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from vcr.filters import decode_response
from vcr.util import CaseInsensitiveDict

__all__ = [
    "CassetteFormatError",
    "Interaction",
    "RequestRecord",
    "ResponseRecord",
    "interaction_from_vcr",
    "load_cassette",
]


class CassetteFormatError(ValueError):
    """A cassette file that cannot be read; the message names the file and what is wrong with it."""


_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _CassetteLoader(_BaseLoader):  # type: ignore[misc]
    """PyYAML's safe loader plus the harmless Python tags old vcrpy versions wrote (never arbitrary objects)."""


_CassetteLoader.add_constructor("tag:yaml.org,2002:python/str", lambda loader, node: loader.construct_scalar(node))
_CassetteLoader.add_constructor("tag:yaml.org,2002:python/unicode", lambda loader, node: loader.construct_scalar(node))
_CassetteLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node))
)


def _headers(raw: Any) -> Mapping[str, str]:
    """Case-insensitive headers, one string per name (repeated values joined with ", " as HTTP does)."""
    result = CaseInsensitiveDict()
    for name, value in _header_lists(raw).items():
        result[name] = ", ".join(value)
    return result  # type: ignore[no-any-return]


def _header_lists(raw: Any) -> dict[str, list[str]]:
    """Headers as vcrpy stores them in cassettes: name -> list of values (live objects may hold plain strings)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise TypeError(f"headers must be a mapping, not {type(raw).__name__}")
    lists: dict[str, list[str]] = {}
    for name, value in raw.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        lists[str(name)] = [v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in values]
    return lists


def _to_bytes(value: Any) -> bytes | None:
    """A recorded body as bytes: YAML gives str (text) or bytes (``!!binary``); live requests may hold a file."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if hasattr(value, "getvalue"):
        return _to_bytes(value.getvalue())
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        return b"".join(_to_bytes(part) or b"" for part in value)
    raise TypeError(f"body must be text or bytes, not {type(value).__name__}")


def _decode(headers: Mapping[str, Any], body: bytes | None) -> tuple[dict[str, list[str]], bytes | None]:
    """Undo Content-Encoding (gzip, deflate, br when brotli is installed) the way vcrpy's own filter does."""
    lists = _header_lists(headers)
    if body is None:
        return lists, None
    decoded = decode_response({"headers": lists, "body": {"string": body}})
    return dict(decoded["headers"]), decoded["body"]["string"]


def _parse_json(body: bytes | None) -> Any | None:
    """The body as JSON, or ``None`` when it is not JSON (SSE streams, empty bodies, images)."""
    if not body:
        return None
    stripped = body.lstrip()
    if stripped[:1] not in (b"{", b"["):
        return None
    try:
        return json.loads(stripped)
    except ValueError:
        return None


@dataclass(frozen=True)
class RequestRecord:
    """One recorded request. ``body`` is decoded bytes; ``json`` its parsed JSON when it is JSON."""

    method: str
    uri: str
    headers: Mapping[str, str] = field(hash=False)
    """Case-insensitive lookup: ``headers["content-type"]`` finds ``Content-Type``."""
    body: bytes | None
    json: Any | None = field(hash=False)

    @property
    def path(self) -> str:
        return urlparse(self.uri).path


@dataclass(frozen=True)
class ResponseRecord:
    """One recorded response, body decompressed (headers then no longer carry the undone Content-Encoding)."""

    status: int
    headers: Mapping[str, str] = field(hash=False)
    body: bytes | None
    json: Any | None = field(hash=False)

    @property
    def text(self) -> str:
        return (self.body or b"").decode("utf-8", errors="replace")

    @property
    def is_event_stream(self) -> bool:
        """A server-sent-events body, by content type or, when headers were scrubbed, by its first line."""
        if self.headers.get("content-type", "").split(";")[0].strip().lower() == "text/event-stream":
            return True
        head = (self.body or b"").lstrip()[:6]
        return head.startswith((b"event:", b"data:", b"id:", b":"))


@dataclass(frozen=True)
class Interaction:
    """One request and the response it got, ``index`` its position in the cassette (from 0)."""

    request: RequestRecord
    response: ResponseRecord
    index: int


def _request_from_dict(data: Mapping[str, Any]) -> RequestRecord:
    for key in ("method", "uri"):
        if not isinstance(data.get(key), str):
            raise TypeError(f"request has no {key!r} string")
    if data.get("parsed_body") is not None:  # pydantic-ai's serializer: the JSON body, already decoded
        parsed = data["parsed_body"]
        return RequestRecord(data["method"], data["uri"], _headers(data.get("headers")), _dump(parsed), parsed)
    headers, body = _decode(data.get("headers") or {}, _to_bytes(data.get("body")))
    return RequestRecord(data["method"], data["uri"], _headers(headers), body, _parse_json(body))


def _request_from_vcr(request: Any) -> RequestRecord:
    """A live ``vcr.request.Request`` (its headers hold one string per name)."""
    headers, body = _decode(dict(request.headers.items()), _to_bytes(request.body))
    return RequestRecord(str(request.method), str(request.uri), _headers(headers), body, _parse_json(body))


def _status(data: Mapping[str, Any]) -> int:
    status = data.get("status")
    code = status.get("code") if isinstance(status, Mapping) else status
    if isinstance(code, bool) or not isinstance(code, (int, str)) or not str(code).isdigit():
        raise TypeError(f"response has no status code (got {status!r})")
    return int(code)


def _response_from_dict(data: Mapping[str, Any]) -> ResponseRecord:
    status = _status(data)
    if data.get("parsed_body") is not None:
        parsed = data["parsed_body"]
        return ResponseRecord(status, _headers(data.get("headers")), _dump(parsed), parsed)
    raw = data.get("body")
    if isinstance(raw, Mapping):
        raw = raw.get("string")
    headers, body = _decode(data.get("headers") or {}, _to_bytes(raw))
    return ResponseRecord(status, _headers(headers), body, _parse_json(body))


def _dump(parsed: Any) -> bytes:
    return json.dumps(parsed, ensure_ascii=False).encode("utf-8")


def interaction_from_vcr(
    request: Any,
    response: Mapping[str, Any],
    index: int = 0,
) -> Interaction:
    """An `Interaction` from vcrpy's live objects (``cassette.data``) or from a cassette's dict form.

    ``request`` is a ``vcr.request.Request`` or a mapping with method/uri/body/headers (or ``parsed_body``);
    ``response`` is vcrpy's response dict (status, headers, ``body.string`` as bytes or text).
    Raises `TypeError` for objects of the wrong shape.
    """
    if not isinstance(response, Mapping):
        raise TypeError(f"response must be a mapping, not {type(response).__name__}")
    record = _request_from_dict(request) if isinstance(request, Mapping) else _request_from_vcr(request)
    return Interaction(record, _response_from_dict(response), index)


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CassetteFormatError(f"{path}: cannot read cassette: {exc}") from exc
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise CassetteFormatError(f"{path}: not a vcrpy JSON cassette: {exc}") from exc
    try:
        return yaml.load(text, Loader=_CassetteLoader)  # a safe loader (see _CassetteLoader)
    except yaml.YAMLError as exc:
        raise CassetteFormatError(f"{path}: not a vcrpy YAML cassette: {exc}") from exc


def load_cassette(path: str | PathLike[str]) -> list[Interaction]:
    """Every interaction of a vcrpy cassette (YAML, or JSON for a ``.json`` file), bodies decoded.

    Raises `CassetteFormatError` naming the file (and the interaction) when it cannot be read as one.
    """
    path = Path(path)
    data = _read(path)
    if isinstance(data, list):
        raise CassetteFormatError(
            f"{path}: not a vcrpy cassette: a top-level list is the pre-1.0 vcrpy format (re-record the cassette)"
        )
    if not isinstance(data, Mapping):
        what = "the file is empty" if data is None else f"top level is a {type(data).__name__}, not a mapping"
        raise CassetteFormatError(f"{path}: not a vcrpy cassette: {what}")
    if "interactions" not in data:
        raise CassetteFormatError(f"{path}: not a vcrpy cassette: top-level key 'interactions' missing")
    raw_interactions = data["interactions"]
    if raw_interactions is None:
        raw_interactions = []
    if not isinstance(raw_interactions, list):
        raise CassetteFormatError(f"{path}: not a vcrpy cassette: 'interactions' is not a list")
    interactions = []
    for index, raw in enumerate(raw_interactions):
        try:
            if not isinstance(raw, Mapping):
                raise TypeError(f"expected a mapping with 'request' and 'response', got {type(raw).__name__}")
            for key in ("request", "response"):
                if not isinstance(raw.get(key), Mapping):
                    raise TypeError(f"key {key!r} missing or not a mapping")
            interactions.append(interaction_from_vcr(raw["request"], raw["response"], index))
        except TypeError as exc:
            raise CassetteFormatError(f"{path}: interaction {index}: {exc}") from exc
    return interactions
