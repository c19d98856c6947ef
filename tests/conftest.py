"""Shared test fixtures and paths."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("OSTEOIMMUNE_MIRROR") or REPO.parent / "shared" / "data")

# Cells x genes of every registered dataset as read, from ../shared/data/MANIFEST.tsv.
MANIFEST_SHAPES = {
    "matsushita2023_bm_stroma": (250, 20243),
    "paul2015_bm_myeloid": (2660, 240),
    "shalek2014_bmdc_lps": (131, 16776),
    "weinreb2020_larry_bm_culture": (781, 2481),
    "luecken2021_bmmc_cite": (600, 1000),
    "luecken2021_bmmc_multiome": (500, 600),
}


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The offline mirror of the registered datasets (../shared/data), or skip."""
    if not (MIRROR / "MANIFEST.tsv").is_file():
        pytest.skip(f"no dataset mirror at {MIRROR}; set OSTEOIMMUNE_MIRROR")
    return MIRROR
