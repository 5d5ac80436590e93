"""The real recorded cassettes in ``../shared/corpus/real-cassettes`` and their MANIFEST.tsv, for the tests.

The corpus is ground truth and must never be skipped: when it is absent, the parametrised tests get one
failing case instead of none.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "real-cassettes"
MANIFEST = CORPUS / "MANIFEST.tsv"
PER_INTERACTION = "per_interaction_in/out/cache_create/cache_read"
MISSING = (
    f"the real-cassette corpus is missing: expected {MANIFEST} (the repository's ../shared/corpus/real-cassettes); "
    "these tests read it and must not be skipped"
)


def require_corpus() -> None:
    """Fail the calling test when the corpus is absent."""
    if not MANIFEST.is_file():
        pytest.fail(MISSING, pytrace=False)


def read_manifest() -> list[dict[str, str]]:
    """Every MANIFEST row; fails the calling test when the corpus is absent."""
    require_corpus()
    with MANIFEST.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def manifest_rows() -> list[Any]:
    """One parameter per MANIFEST row; a single ``corpus-missing`` one when the corpus is absent (never a skip)."""
    if not MANIFEST.is_file():
        return [pytest.param(None, id="corpus-missing")]
    return [pytest.param(row, id=row["path"]) for row in read_manifest()]


def require(row: dict[str, str] | None) -> dict[str, str]:
    """The row of a `manifest_rows` case, or the failure that says the corpus is missing."""
    if row is None:
        pytest.fail(MISSING, pytrace=False)
    return row
