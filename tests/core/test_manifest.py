"""Order choice and tile coverage of a field."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skyrender.geometry import make_geometry
from skyrender.manifest import choose_order, field_tiles, filter_by_moc, healpix_pixel_size_deg
from skyrender.render import compute_cells
from skyrender.sampling import needed_tiles


def test_order_rule_is_hips2fits():
    # 512-px tiles: a 1 arcsec output pixel needs pixel order 18 (0.8"), tile order 9.
    assert choose_order(1 / 3600, 512, 0, 11) == 9
    assert choose_order(1 / 3600, 512, 0, 3) == 3  # clamped to hips_order
    assert choose_order(10.0, 512, 3, 9) == 3  # clamped to hips_order_min
    for order in range(0, 12):
        px = healpix_pixel_size_deg(order + 9)
        assert choose_order(px, 512, 0, 20) == order
        assert choose_order(px * 0.999, 512, 0, 20) == order + 1


def _covers(geom, frame, order, depth, interpolation="bilinear"):
    listed = set(field_tiles(geom, frame, order, depth).tolist())
    needed = set(needed_tiles(compute_cells(geom, frame, order + depth, interpolation), depth).tolist())
    return needed - listed, listed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ra=st.floats(0, 360, exclude_max=True),
    dec=st.floats(-90, 90),
    log_fov=st.floats(math.log10(0.05), math.log10(60)),
    width=st.integers(16, 300),
    height=st.integers(16, 300),
    rotation=st.floats(-180, 180),
    projection=st.sampled_from(["TAN", "SIN", "ZEA", "STG", "ARC"]),
    galactic=st.booleans(),
)
def test_every_pixel_cell_is_in_the_manifest(ra, dec, log_fov, width, height, rotation, projection, galactic):
    fov = 10**log_fov
    geom = make_geometry(ra, dec, fov, width, height, projection, rotation)
    depth = 6  # 64-px tiles keep the exhaustive check fast
    order = choose_order(geom.pixel_scale_deg, 1 << depth, 0, 9)
    missing, listed = _covers(geom, "galactic" if galactic else "icrs", order, depth)
    assert not missing, f"tiles {sorted(missing)} feed pixels but are not listed"


def test_manifest_is_not_wasteful():
    geom = make_geometry(266.4, -28.9, 2.0, 1024, 768)
    order = choose_order(geom.pixel_scale_deg, 512, 0, 9)
    missing, listed = _covers(geom, "icrs", order, 9)
    assert not missing and len(listed) <= 16


def test_all_sky_fields_list_every_tile():
    geom = make_geometry(0, 0, 360, 400, 200, "AIT")
    assert len(field_tiles(geom, "icrs", 2, 5)) == 12 * 16


def test_moc_filter_keeps_only_covered_tiles():
    from mocpy import MOC

    moc = MOC.from_healpix_cells(np.array([5]), np.array([1]), max_depth=1)  # order-1 cell 5
    npix = np.arange(12 * 4**3)
    kept = filter_by_moc(npix, 3, moc)
    assert kept.tolist() == list(range(5 * 16, 6 * 16))
    deep = MOC.from_healpix_cells(np.array([5 * 64 + 3]), np.array([5]), max_depth=5)
    assert filter_by_moc(npix, 3, deep).tolist() == [5 * 4]
    assert filter_by_moc(npix, 3, None) is npix


@pytest.mark.parametrize("dec", [89.99, -89.99])
def test_manifest_covers_the_poles(dec):
    geom = make_geometry(123.0, dec, 5.0, 256, 256)
    missing, listed = _covers(geom, "icrs", 2, 6)
    assert not missing and len(listed) >= 4
