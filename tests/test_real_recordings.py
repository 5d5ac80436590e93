"""Real recordings: every standard-vcrpy Anthropic cassette of the shared corpus, replayed through the real SDK.

For each qualifying cassette an inner test re-sends every recorded ``/v1/messages`` request body through the
``anthropic`` SDK (sync or async as recorded; ``messages.stream`` for streamed ones) with recording off, and
the usage the plugin reports must equal MANIFEST.tsv's: gzip bodies, SSE, async, prompt caching and tool use
are all among them. MANIFEST's ``input_tokens`` is the raw Anthropic field, which excludes cached tokens; the
plugin reports the semconv figure, so the expected input is raw + cache creation + cache read.

The cassettes are read from ``<repo>/../shared/corpus/real-cassettes`` at test time (nothing is copied into
the repository). A missing corpus fails, it never skips.
"""

from __future__ import annotations

import json
import shutil
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anthropic  # noqa: F401  (imported once here, so in-process inner runs do not re-import it)
import pytest
import vcr  # noqa: F401
import yaml
from corpus import CORPUS, PER_INTERACTION, read_manifest

REPO = Path(__file__).resolve().parents[1]
PLUGIN_ARGS: tuple[str, ...] = (
    ()
    if any(ep.name == "tokenbudget" for ep in entry_points(group="pytest11"))
    else ("-p", "pytest_tokenbudget.plugin")
)

STANDARD_VCRPY_FOLDERS = ("openllmetry", "llm-anthropic", "openinference")
"""Raw vcrpy cassettes. pydantic-ai's use its own ``json_body_serializer`` (bodies stored as parsed YAML under
``parsed_body``), which vcrpy's standard serializer cannot load, so that folder is not standard vcrpy."""
EXPECTED_EXCLUSIONS = {
    "openllmetry/test_anthropic_completion_legacy.yaml": "no /v1/messages interaction",
    "openllmetry/test_openai_prompt_caching.yaml": "providers=openai",
}
EXPECTED_COUNT = 14

INNER_CONFTEST = """
import json
import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def dump_usage(tokenbudget, request):
    yield
    calls = [[c.input_tokens, c.output_tokens, c.cache_write_tokens, c.cache_read_tokens, c.response_id]
             for c in tokenbudget.llm_calls]
    data = {"usage": tokenbudget.usage.as_dict(), "calls": calls, "spans": len(tokenbudget.spans)}
    (Path(os.environ["USAGE_DUMP"]) / f"{request.node.callspec.id}.json").write_text(json.dumps(data))
"""

INNER_TESTS = '''
"""Re-send each recorded request body through the anthropic SDK, exactly as recorded."""
import asyncio
import inspect
import json
from pathlib import Path

import anthropic
import pytest

CASES = json.loads(Path(__file__).with_name("recorded_requests.json").read_text())


def split(method, body):
    """Parameters the SDK method takes by name, and the rest of the recorded body (sent as ``extra_body``)."""
    names = inspect.signature(method).parameters
    return ({k: v for k, v in body.items() if k in names and k != "stream"},
            {k: v for k, v in body.items() if k not in names})


def send_sync(request):
    client = anthropic.Anthropic(base_url=request["base_url"], api_key="sk-ant-api03-replay-only", max_retries=0)
    body = request["body"]
    if body.get("stream"):
        known, extra = split(client.messages.stream, body)
        with client.messages.stream(**known, extra_body=extra, extra_query=request["query"]) as stream:
            stream.until_done()
    else:
        known, extra = split(client.messages.create, body)
        client.messages.create(**known, extra_body=extra, extra_query=request["query"])


async def send_async(request):
    client = anthropic.AsyncAnthropic(base_url=request["base_url"], api_key="sk-ant-api03-replay-only",
                                      max_retries=0)
    body = request["body"]
    if body.get("stream"):
        known, extra = split(client.messages.stream, body)
        async with client.messages.stream(**known, extra_body=extra, extra_query=request["query"]) as stream:
            await stream.until_done()
    else:
        known, extra = split(client.messages.create, body)
        await client.messages.create(**known, extra_body=extra, extra_query=request["query"])


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, id=case["id"], marks=pytest.mark.tokenbudget(cassette=case["cassette"])) for case in CASES],
)
def test_recorded(case):
    for request in case["requests"]:
        if case["async"]:
            asyncio.run(send_async(request))
        else:
            send_sync(request)
'''


def messages_requests(path: Path) -> list[dict[str, Any]]:
    """Every recorded POST /v1/messages of a cassette: where it went, and its JSON body exactly as sent."""
    requests = []
    for interaction in yaml.safe_load(path.read_text(encoding="utf-8"))["interactions"]:
        request = interaction["request"]
        url = urlsplit(request["uri"])
        if request["method"] == "POST" and url.path == "/v1/messages":
            body = request["body"]
            requests.append(
                {
                    "base_url": f"{url.scheme}://{url.netloc}",
                    "query": dict(p.split("=", 1) for p in url.query.split("&") if p),
                    "body": json.loads(body if isinstance(body, (str, bytes)) else body["string"]),
                }
            )
    return requests


def select(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], dict[str, str]]:
    """The rows that qualify (standard vcrpy, Anthropic, with /v1/messages calls), and why the others do not."""
    chosen: list[dict[str, str]] = []
    excluded: dict[str, str] = {}
    for row in rows:
        if row["path"].split("/", 1)[0] not in STANDARD_VCRPY_FOLDERS:
            continue  # pydantic-ai's serializer, listed and counted in test_selection
        if row["providers"] != "anthropic":
            excluded[row["path"]] = f"providers={row['providers']}"
        elif not messages_requests(CORPUS / row["path"]):
            excluded[row["path"]] = "no /v1/messages interaction"
        else:
            chosen.append(row)
    return chosen, excluded


def expected_calls(row: dict[str, str]) -> list[tuple[int, int, int, int]]:
    """Per LLM call (semconv input incl. cache, output, cache write, cache read); ``-(...)`` entries are no call."""
    calls = []
    for entry in row[PER_INTERACTION].split("; "):
        if entry.startswith("-"):
            continue
        raw_in, out, create, read = (int(n) for n in entry.split("/"))
        calls.append((raw_in + create + read, out, create, read))
    return calls


def case_id(row: dict[str, str]) -> str:
    return row["path"].removesuffix(".yaml").replace("/", "__")


def test_selection_is_explicit() -> None:
    rows = read_manifest()
    chosen, excluded = select(rows)
    assert excluded == EXPECTED_EXCLUSIONS
    assert len(chosen) == EXPECTED_COUNT
    assert all(row["notes"].startswith("raw vcrpy") for row in chosen)
    others = [row for row in rows if row["path"].split("/", 1)[0] not in STANDARD_VCRPY_FOLDERS]
    assert {row["path"].split("/", 1)[0] for row in others} == {"pydantic-ai"}
    assert all("json_body_serializer" in row["notes"] for row in others)
    assert len(chosen) + len(excluded) + len(others) == len(rows)
    covers = {tag for row in chosen for tag in row["covers"].split(",")}
    assert {"gzip", "stream", "async", "cache", "tool", "tool_result", "parallel_tools"} <= covers


def test_every_recorded_request_replays_through_the_sdk_with_manifest_usage(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, subtests: Any
) -> None:
    chosen, _ = select(read_manifest())
    assert len(chosen) == EXPECTED_COUNT
    cases = []
    folder = pytester.path / "cassettes" / "test_replay"
    folder.mkdir(parents=True)
    for row in chosen:
        cassette = f"{case_id(row)}.yaml"
        shutil.copyfile(CORPUS / row["path"], folder / cassette)
        cases.append(
            {
                "id": case_id(row),
                "cassette": cassette,
                "async": "async" in row["covers"].split(","),
                "requests": messages_requests(CORPUS / row["path"]),
            }
        )
    (pytester.path / "recorded_requests.json").write_text(json.dumps(cases))
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_replay=INNER_TESTS)
    monkeypatch.setenv("USAGE_DUMP", str(tmp_path))

    result = pytester.runpytest(*PLUGIN_ARGS, "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning")

    result.assert_outcomes(passed=EXPECTED_COUNT)
    for row in chosen:
        with subtests.test(msg=row["path"]):
            dump = json.loads((tmp_path / f"{case_id(row)}.json").read_text())
            calls = expected_calls(row)
            # a cache figure the old API did not report is unknown (None) per call; MANIFEST writes it as 0
            measured = [(i, o, w or 0, r or 0) for i, o, w, r, _ in dump["calls"]]
            assert measured == calls
            assert dump["spans"] >= len(calls)  # the SDK's own spans were there (and were not counted twice)
            assert {
                k: dump["usage"][k]
                for k in (
                    "input_tokens",
                    "output_tokens",
                    "cache_write_tokens",
                    "cache_read_tokens",
                    "llm_calls",
                    "unknown_calls",
                )
            } == {
                "input_tokens": int(row["input_tokens"])
                + int(row["cache_creation_input_tokens"])
                + int(row["cache_read_input_tokens"]),
                "output_tokens": int(row["output_tokens"]),
                "cache_write_tokens": int(row["cache_creation_input_tokens"]),
                "cache_read_tokens": int(row["cache_read_input_tokens"]),
                "llm_calls": len(calls),
                "unknown_calls": 0,
            }
            assert dump["usage"]["cost_usd"] is not None and dump["usage"]["cost_usd"] > 0
