"""Shared test fixtures and paths."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("OSTEOIMMUNE_MIRROR") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The offline mirror of the registered datasets (../shared/data), or skip."""
    if not (MIRROR / "MANIFEST.tsv").is_file():
        pytest.skip(f"no dataset mirror at {MIRROR}; set OSTEOIMMUNE_MIRROR")
    return MIRROR
