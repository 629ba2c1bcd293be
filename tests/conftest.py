"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KA_DATA_ROOT", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real corpora staged beside the clone (../shared/data or $KA_DATA_ROOT)."""
    if not (SHARED_DATA / "multi30k").is_dir():
        pytest.skip(f"real corpora not found at {SHARED_DATA}; set KA_DATA_ROOT")
    return SHARED_DATA
