"""Shared test fixtures: where the real survey data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shared_dir import SHARED_DIR

DATA_DIR = SHARED_DIR / "data"
HIPS_DIR = DATA_DIR / "hips"
FITS_DIR = DATA_DIR / "fits"


@pytest.fixture(scope="session")
def hips_dir() -> Path:
    """Folder of real CDS HiPS tile sets (``../shared/data/hips``)."""
    if not HIPS_DIR.is_dir():
        pytest.fail(f"shared test data missing: {HIPS_DIR}")
    return HIPS_DIR


@pytest.fixture(scope="session")
def fits_dir() -> Path:
    """Folder of real images with a celestial WCS (``../shared/data/fits``)."""
    if not FITS_DIR.is_dir():
        pytest.fail(f"shared test data missing: {FITS_DIR}")
    return FITS_DIR
