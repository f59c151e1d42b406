"""Fixtures shared by the service tests."""

import pytest

from .loopback import StaticHips


@pytest.fixture(scope="module")
def upstream(hips_dir):
    """A loopback HTTP server holding ``../shared/data/hips`` (one per test module)."""
    server = StaticHips(hips_dir)
    yield server
    server.stop()
