"""What never reaches a cassette: credentials in headers, URLs and bodies, and volatile trace headers.

``REDACTED`` replaces the values of headers (request and response), query parameters and JSON keys (at any
depth of a request or response body, streamed ones included) whose names say credential (`SECRET_WORDS`), and
anything shaped like a provider key or a ``Bearer``/``Basic`` credential in a header, URL or body. Usage figures
(``max_tokens``, ``*-tokens-remaining``) stay. Scrubbing is deterministic and idempotent: vcrpy applies it to live
requests before matching too, so both sides of a match are compared scrubbed.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "REDACTED"
SECRET_WORDS = frozenset(
    {
        *("key", "keys", "apikey", "accesskey", "secretkey", "privatekey"),
        *("secret", "secrets", "password", "passwords", "passwd", "passphrase"),
        *("token", "credential", "credentials", "signature", "sig", "session", "sessionid"),
        *("auth", "authorization", "bearer", "cookie", "cookies"),
    }
)
"""Words that make a header, query-parameter or JSON-key name a credential's. Names are split into words at
``-``, ``_``, ``.`` and camelCase (``X-Custom-Key``, ``accessKey``, ``aws_secret_access_key``), so ``author``,
``keyword`` or ``tokenizer`` never match."""
COUNT_WORDS = frozenset({"tokens"})
"""``anthropic-ratelimit-input-tokens-remaining``, ``x-ratelimit-reset-tokens``: usage figures, not credentials.
Such a name is kept while its value is shaped like a figure (`COUNT_VALUE`), so a secret under it still goes."""
AMBIGUOUS_BODY_NAMES = frozenset({"key", "keys", "token", "sig", "session"})
"""A JSON key that is just one of these words is an ordinary field as often as a secret (a config ``key``, a
logprobs ``token``): its value goes only when shaped like a credential, because a scrubbed response body is what
the SDK returns on replay."""
KEPT_BODY_NAMES = frozenset({"signature"})
"""A thinking block's ``signature`` is no credential, and the API rejects a conversation whose signature was
altered: scrubbing it would break re-recording with ``new_episodes`` after a replayed thinking turn."""
VOLATILE_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})
"""Trace context differs on every run; never matched, so dropped to keep re-recorded cassettes diffable."""
SECRET_VALUE = re.compile(
    r"sk-ant-[A-Za-z0-9_\-]{8,}"  # Anthropic
    r"|sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"  # OpenAI
    r"|AIza[0-9A-Za-z_\-]{30,}"  # Google
    r"|\bgh[opsur]_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}"  # GitHub
    r"|\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"  # AWS access key id
    r"|\bxox[abpr]-[A-Za-z0-9\-]{10,}"  # Slack
)
"""Provider keys recognised by shape wherever they appear: header values, URLs, any string in a body."""
AUTH_SCHEME = re.compile(r"\b(Bearer|Basic)(\s+)([A-Za-z0-9._~+/\-]+=*)", re.IGNORECASE)
"""``Bearer <token>`` / ``Basic <base64 user:password>``; the scheme word stays so the text still reads."""
CREDENTIAL_VALUE = re.compile(r"(?=\S*\d)(?=\S*[A-Za-z])[A-Za-z0-9+/=_.~\-]{16,}")
"""Long, no spaces, letters and digits: how an opaque key or token looks (and prose or a config key does not)."""
COUNT_VALUE = re.compile(
    r"\d+(?:\.\d+)?"  # 40000
    r"|\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?"  # 2025-07-29T09:59:33Z
    r"|(?:\d+(?:\.\d+)?(?:ms|us|ns|h|m|s))+"  # 6m0s, 2ms
)


def scrub_text(text: str) -> str:
    """``text`` with every provider key and ``Bearer``/``Basic`` credential replaced by ``REDACTED``."""
    return AUTH_SCHEME.sub(_redact_credential, SECRET_VALUE.sub(REDACTED, text))


def _redact_credential(match: re.Match[str]) -> str:
    credential = match[3]
    if CREDENTIAL_VALUE.fullmatch(credential) or (match[1].lower() == "basic" and _is_basic_pair(credential)):
        return f"{match[1]}{match[2]}{REDACTED}"
    return match[0]


def _is_basic_pair(credential: str) -> bool:
    """``dXNlcjpwYXNz`` is base64 of ``user:pass``; ``Basic understanding`` is not base64 of anything printable."""
    try:
        decoded = base64.b64decode(credential, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return False
    return ":" in decoded and decoded.isprintable()


def _name_words(name: str) -> list[str]:
    return [word.lower() for word in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)]


def is_secret(name: str, value: str, *, in_body: bool = False) -> bool:
    """Whether ``value`` under the header, query parameter or (``in_body``) JSON key ``name`` is a credential."""
    words = _name_words(name)
    if in_body and len(words) == 1 and words[0] in KEPT_BODY_NAMES:
        return False
    if in_body and len(words) == 1 and words[0] in AMBIGUOUS_BODY_NAMES:
        return bool(CREDENTIAL_VALUE.fullmatch(value))
    if any(word in SECRET_WORDS for word in words):
        return True
    if any(word in COUNT_WORDS for word in words):
        if in_body:
            return bool(CREDENTIAL_VALUE.fullmatch(value))
        return not COUNT_VALUE.fullmatch(value.strip())
    return False


def _dump_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _scrub_string(value: str, name: str | None) -> str:
    if name is not None and is_secret(name, value, in_body=True):
        return REDACTED
    if value.lstrip().startswith(("{", "[")):  # JSON inside a string: tool arguments, a tool result
        try:
            parsed = json.loads(value)
        except ValueError:
            pass
        else:
            if isinstance(parsed, (dict, list)):
                scrubbed = _scrub_json(parsed)
                return value if scrubbed == parsed else _dump_json(scrubbed)
    return scrub_text(value)


def _scrub_json(value: Any, name: str | None = None) -> Any:
    """A scrubbed copy: string values under secret keys become ``REDACTED``, key-shaped strings anywhere too.
    Numbers are never touched (``max_tokens``, ``input_tokens`` ... stay); a list's items count as its key's."""
    if isinstance(value, dict):
        return {scrub_text(str(key)): _scrub_json(item, str(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrub_json(item, name) for item in value]
    if isinstance(value, str):
        return _scrub_string(value, name)
    return value


def _stream_fragments(event: Any) -> Iterator[tuple[tuple[Any, ...], dict[str, Any], str]]:
    """The pieces of text a streamed event adds to one growing string, each with the key of that string: a
    secret split across events is only recognisable once they are joined."""
    if not isinstance(event, dict):
        return
    delta = event.get("delta")
    if event.get("type") == "content_block_delta" and isinstance(delta, dict):  # Anthropic Messages
        for field_name in ("text", "partial_json", "thinking"):
            if isinstance(delta.get(field_name), str):
                yield ("anthropic", event.get("index"), field_name), delta, field_name
    elif isinstance(delta, str) and isinstance(event.get("type"), str):  # OpenAI Responses
        key = ("responses", event["type"], event.get("item_id"), event.get("output_index"), event.get("content_index"))
        yield key, event, "delta"
    choices = event.get("choices")
    for choice in choices if isinstance(choices, list) else ():  # OpenAI chat completions
        part = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("content"), str):
            yield ("chat", choice.get("index"), "content"), part, "content"
        calls = part.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                yield ("chat", choice.get("index"), "tool", call.get("index")), function, "arguments"


def _scrub_stream_fragments(events: list[Any]) -> None:
    """Scrub each streamed string whole; when it changes, the first fragment carries it and the rest are empty,
    so a client joining the fragments gets the scrubbed string (and scrubbing again changes nothing)."""
    strings: dict[tuple[Any, ...], list[tuple[dict[str, Any], str]]] = {}
    for event in events:
        for key, container, field_name in _stream_fragments(event):
            strings.setdefault(key, []).append((container, field_name))
    for parts in strings.values():
        whole = "".join(container[field_name] for container, field_name in parts)
        scrubbed = _scrub_string(whole, None)
        if scrubbed != whole:
            for number, (container, field_name) in enumerate(parts):
                container[field_name] = scrubbed if number == 0 else ""


def _scrub_event_stream(text: str) -> str:
    lines = text.splitlines(keepends=True)
    events: list[tuple[int, str, str, Any, Any]] = []
    for number, line in enumerate(lines):
        content = line.rstrip("\r\n")
        ending = line[len(content) :]
        if content.startswith("data:"):
            payload = content[len("data:") :]
            try:
                parsed = json.loads(payload)
            except ValueError:
                lines[number] = scrub_text(content) + ending  # "data: [DONE]"
                continue
            lead = payload[: len(payload) - len(payload.lstrip())]
            events.append((number, lead, ending, parsed, _scrub_json(parsed)))
        else:
            lines[number] = scrub_text(content) + ending
    _scrub_stream_fragments([scrubbed for *_, scrubbed in events])
    for number, lead, ending, parsed, scrubbed in events:
        if scrubbed != parsed:
            lines[number] = f"data:{lead}{_dump_json(scrubbed)}{ending}"
    return "".join(lines)


def _looks_like_event_stream(text: str) -> bool:
    return re.match(r"\s*(?:event|data|id|retry):", text) is not None


def _scrub_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    scrubbed = [(name, REDACTED if is_secret(name, value) else scrub_text(value)) for name, value in pairs]
    return query if scrubbed == pairs else urlencode(scrubbed)


def _scrub_text_body(text: str, content_type: str) -> str:
    try:
        parsed = json.loads(text)
    except ValueError:
        pass
    else:
        scrubbed = _scrub_json(parsed)
        return text if scrubbed == parsed else _dump_json(scrubbed)
    if _looks_like_event_stream(text):
        return _scrub_event_stream(text)
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        return _scrub_query(text)
    return scrub_text(text)


def _scrub_body(body: Any, content_type: str = "") -> Any:
    """A scrubbed body of the same type (bytes or text); JSON stays valid JSON, untouched when nothing is secret."""
    if isinstance(body, bytes):
        try:
            decoded = body.decode("utf-8")
        except UnicodeDecodeError:
            return body
        scrubbed = _scrub_text_body(decoded, content_type)
        return body if scrubbed == decoded else scrubbed.encode("utf-8")
    if isinstance(body, str):
        return _scrub_text_body(body, content_type)
    return body


def _scrub_uri(uri: str) -> str:
    parts = urlsplit(uri)
    netloc = parts.netloc
    if parts.password and parts.password != REDACTED:  # https://user:password@host
        netloc = f"{parts.username or ''}:{REDACTED}@{netloc.rpartition('@')[2]}"
    query = _scrub_query(parts.query) if parts.query else parts.query
    scrubbed = parts._replace(netloc=netloc, path=scrub_text(parts.path), query=query)
    return uri if scrubbed == parts else urlunsplit(scrubbed)


def scrub_request(request: Any) -> Any:
    """vcrpy ``before_record_request``. vcrpy also applies it to every live request before matching (and again to
    an already scrubbed one), and compares that with the stored, scrubbed request: so it is deterministic and
    idempotent, and a request whose secrets differ from the recording's still replays."""
    for name in list(request.headers):
        if name.lower() in VOLATILE_HEADERS:
            del request.headers[name]
            continue
        value = str(request.headers[name])
        scrubbed = REDACTED if is_secret(name, value) else scrub_text(value)
        if scrubbed != value:
            request.headers[name] = scrubbed
    request.uri = _scrub_uri(request.uri)
    body = request.body_bytes if hasattr(request, "body_bytes") else request.body
    scrubbed_body = _scrub_body(body, str(request.headers.get("content-type") or ""))
    if scrubbed_body is not body:
        request.body = [scrubbed_body] if getattr(request, "_was_iter", False) else scrubbed_body
    return request


def scrub_response(response: dict[str, Any]) -> dict[str, Any]:
    """vcrpy ``before_record_response`` (after decoding): the same rules as requests, for headers and body."""
    headers = response.get("headers") or {}
    content_type = ""
    for name in list(headers):
        values = headers[name] if isinstance(headers[name], list) else [headers[name]]
        headers[name] = [REDACTED if is_secret(name, str(v)) else scrub_text(str(v)) for v in values]
        if name.lower() == "content-type" and values:
            content_type = str(values[0])
    body = response.get("body") or {}
    if "string" in body:
        body["string"] = _scrub_body(body["string"], content_type)
    return response
