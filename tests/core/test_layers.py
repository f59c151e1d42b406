"""Several layers on one grid, through the core alone: epochs compared, contours, composites, blink.

The epochs are MAGPIS 20 cm built as HiPS with a known injected source and a known faded
one (`tests.epoch_fields`); the composites use the shared CDS surveys.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image
from scipy.optimize import curve_fit

from skyrender.animation import blink_frames, encode_animation
from skyrender.composite import LayerDisplay, LuptonParams, lupton_composite, overlay, rgb_composite
from skyrender.contours import contour_levels, contours_geojson, draw_contours, trace_contours
from skyrender.decode import decode_tile
from skyrender.display import compute_cuts, to_display
from skyrender.encode import encode_fits
from skyrender.epochs import (
    EpochImage,
    compare_epochs,
    difference,
    difference_display,
    difference_header,
    symmetric_cuts,
)
from skyrender.errors import DisplayError, EncodeError, GeometryError
from skyrender.fieldstats import Region, icrs_to_pixel, robust_noise
from skyrender.geometry import make_geometry
from skyrender.properties import load_survey
from skyrender.render import render_field
from tests.epoch_fields import FADE, INJECTED_PEAK, build_epochs


def _load_local(tile):
    path = Path(tile.url)
    return decode_tile(path.read_bytes()) if path.is_file() else None


def render_local(hips: Path, geom) -> np.ndarray:
    return render_field(geom, load_survey(str(hips)), _load_local)


@pytest.fixture(scope="module")
def epochs(fits_dir, tmp_path_factory):
    return build_epochs(fits_dir, tmp_path_factory.mktemp("epochs"))


@pytest.fixture(scope="module")
def grid(epochs):
    """A TAN grid over the field, not the image's own (2.1" pixels, 256x256)."""
    ra, dec = epochs.centre_radec
    return make_geometry(ra, dec, 0.15, 256, 256)


@pytest.fixture(scope="module")
def renders(epochs, grid):
    return {label: render_local(d, grid) for label, d in epochs.dirs.items()}


def _gauss2d(xy, amp, x0, y0, sigma, offset):
    x, y = xy
    return amp * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2)) + offset


def fit_source(image: np.ndarray, x: float, y: float, box: int = 10):
    """(peak, x, y) of a 2-D Gaussian fitted around pixel (x, y)."""
    ix, iy = int(round(x)), int(round(y))
    cut = image[iy - box : iy + box + 1, ix - box : ix + box + 1]
    yy, xx = np.mgrid[iy - box : iy + box + 1, ix - box : ix + box + 1]
    ok = np.isfinite(cut)
    guess = (cut[box, box], ix, iy, 3.0, 0.0)
    popt, _ = curve_fit(_gauss2d, (xx[ok], yy[ok]), cut[ok], p0=guess)
    return popt[0], popt[1], popt[2]


def test_difference_shows_the_injected_source_where_and_as_bright_as_it_was_put(epochs, grid, renders):
    diff = difference(renders["2"], renders["1"])
    x, y = icrs_to_pixel(grid, *epochs.injected_radec)
    peak, fx, fy = fit_source(diff, float(x), float(y))
    assert np.hypot(fx - x, fy - y) <= 0.5, f"found at ({fx:.2f}, {fy:.2f}), put at ({x:.2f}, {y:.2f})"
    assert abs(peak - INJECTED_PEAK) <= 0.05 * INJECTED_PEAK, f"peak {peak:.4g}, injected {INJECTED_PEAK}"


def test_difference_shows_the_faded_source_negative_by_the_right_amount(epochs, grid, renders):
    diff = difference(renders["3"], renders["1"])
    x, y = icrs_to_pixel(grid, *epochs.faded_radec)
    # The change is FADE times the source: fit the epoch-1 source and the change alike.
    before, bx, by = fit_source(renders["1"], float(x), float(y), box=4)
    change, cx, cy = fit_source(diff, float(x), float(y), box=4)
    assert change < 0
    assert abs(change / before + FADE) <= 0.05 * FADE, f"change {change:.4g} of {before:.4g}"
    assert np.hypot(cx - bx, cy - by) <= 0.5


def test_difference_is_nothing_elsewhere(epochs, grid, renders):
    yy, xx = np.mgrid[0 : grid.height, 0 : grid.width]
    far = np.ones(yy.shape, bool)
    for radec in (epochs.injected_radec, epochs.faded_radec):
        x, y = icrs_to_pixel(grid, *radec)
        far &= np.hypot(xx - x, yy - y) > 20
    for later in ("2", "3"):
        diff = difference(renders[later], renders["1"])
        ok = far & np.isfinite(diff)
        assert ok.mean() > 0.5
        assert np.median(np.abs(diff[ok])) <= 1e-3 * epochs.data_range


def test_significance_high_for_the_injected_source_low_for_an_unchanged_field(epochs, grid, renders):
    pair = [EpochImage("1", renders["1"]), EpochImage("2", renders["2"])]
    field = compare_epochs(pair, grid)
    assert field.later == "2" and field.earlier == "1"
    assert field.difference.significance > 50
    x, y = icrs_to_pixel(grid, *epochs.injected_radec)
    assert np.hypot(field.difference.peak_x - x, field.difference.peak_y - y) <= 1.5
    assert abs(field.difference.peak_ra - epochs.injected_radec[0]) < 3e-4
    # An aperture elsewhere: the noise alone.
    ra, dec = epochs.centre_radec
    quiet = compare_epochs(pair, grid, Region(ra, dec + 0.03, 0.02))
    assert quiet.difference.significance < 6
    # Per-epoch numbers: the peak is the field's brightest source, noise is MAD-based.
    stats1 = dict(field.epochs)["1"]
    assert stats1.peak == pytest.approx(np.nanmax(renders["1"]))
    assert stats1.noise == pytest.approx(robust_noise(renders["1"]))
    with pytest.raises(GeometryError):
        compare_epochs(pair[:1], grid)


def test_difference_display_is_diverging_and_centred_on_zero(renders):
    diff = difference(renders["2"], renders["1"])
    vmin, vmax = symmetric_cuts(diff)
    assert vmin == -vmax > -np.inf and vmax == pytest.approx(
        np.percentile(np.abs(diff[np.isfinite(diff)]), 99.5)
    )
    img = difference_display(diff)
    zero_pixel = np.unravel_index(np.nanargmin(np.abs(diff)), diff.shape)
    assert abs(int(img.index[zero_pixel]) - 127) <= 1  # the middle of the colour table
    mid = img.lut[127]
    assert mid.min() > 230  # RdBu_r's middle is (near) white
    assert symmetric_cuts(diff, max_cut=0.01) == (-0.01, 0.01)
    assert symmetric_cuts(diff, min_cut=-0.002, max_cut=0.01) == (-0.002, 0.01)


def test_difference_fits_keeps_wcs_and_both_epochs(grid, renders):
    diff = difference(renders["2"], renders["1"])
    body = encode_fits(diff, difference_header(grid, "magpis", "2", "1", unit="Jy/beam"))
    with fits.open(io.BytesIO(body)) as hdul:
        hdr, data = hdul[0].header, hdul[0].data
        assert hdr["BITPIX"] == -32 and hdr["EPOCHNEW"] == "2" and hdr["EPOCHREF"] == "1"
        assert hdr["BUNIT"] == "Jy/beam"
        assert np.array_equal(data, diff, equal_nan=True)
        assert np.allclose(WCS(hdr).wcs.crval, grid.wcs.wcs.crval)


def test_contours_at_sigma_levels_and_as_geojson(grid, renders):
    image = renders["1"]
    sigma = robust_noise(image)
    levels = contour_levels(image, [3, 5, 10], in_sigma=True)
    assert levels == pytest.approx([3 * sigma, 5 * sigma, 10 * sigma])
    traced = trace_contours(image, levels, [3, 5, 10])
    assert all(c.lines for c in traced)
    # Every contour point lies on a pixel edge where the image, interpolated along it, is the level.
    from scipy.ndimage import map_coordinates

    for c in traced:
        pts = np.concatenate(c.lines)
        # (corner cells next to no-data pixels are cut along a diagonal instead)
        on_edge = np.isclose(pts, np.rint(pts), atol=1e-9).any(axis=1)
        assert on_edge.mean() > 0.98
        pts = pts[on_edge]
        values = map_coordinates(image.astype(np.float64), [pts[:, 1], pts[:, 0]], order=1)
        ok = np.isfinite(values)
        assert ok.mean() > 0.99 and np.isclose(values[ok], c.level, rtol=1e-5).mean() > 0.99
    gj = contours_geojson(traced, grid)
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 3
    f0 = gj["features"][0]
    assert f0["properties"]["sigma"] == 3 and f0["geometry"]["type"] == "MultiLineString"
    # Back to pixels: the same lines.
    back = [np.array(line) for line in f0["geometry"]["coordinates"]]
    x, y = icrs_to_pixel(grid, back[0][:, 0], back[0][:, 1])
    assert np.allclose(np.c_[x, y], traced[0].lines[0], atol=1e-3)
    with pytest.raises(DisplayError):
        contour_levels(image, ["3"])
    with pytest.raises(DisplayError):
        contour_levels(image, [])


def test_contours_drawn_over_a_colormapped_base(grid, renders):
    image = renders["1"]
    base = to_display(image, cmap="magma")
    traced = trace_contours(image, [0.01])
    picture = draw_contours(base, traced, colour=(0, 255, 0), line_width=2.0)
    assert picture.is_colour
    on = np.concatenate(traced[0].lines)
    xs, ys = np.rint(on[:, 0]).astype(int), np.rint(on[:, 1]).astype(int)
    green = picture.rgb[ys, xs]
    assert np.mean((green[:, 1] > 200) & (green[:, 0] < 80)) > 0.9
    # Far from every line: the base's colours, untouched.
    from scipy.ndimage import distance_transform_edt

    near = np.zeros(image.shape, bool)
    near[ys.clip(0, 255), xs.clip(0, 255)] = True
    far = distance_transform_edt(~near) > 4
    base_rgb = base.lut[base.index]
    assert np.array_equal(picture.rgb[far], base_rgb[far])
    # Anti-aliased: partial coverage makes in-between colours at line edges.
    edge = (distance_transform_edt(~near) > 1) & (distance_transform_edt(~near) < 2.5)
    blend = picture.rgb[edge]
    assert np.any((blend[:, 1] > 20) & (blend[:, 1] < 235))


@pytest.fixture(scope="module")
def three_bands(hips_dir):
    """IRAC 8 um, DSS2 red and Planck 143 GHz on one Galactic-centre grid (TAN, 2 deg)."""
    geom = make_geometry(266.4, -28.9, 2.0, 160, 120)
    return [
        render_local(hips_dir / n, geom) for n in ("cds-spitzer-irac4", "cds-dss2-red", "cds-planck-hfi143")
    ]


def test_rgb_channels_equal_the_grey_renders(three_bands):
    displays = [
        LayerDisplay(min_cut="1%", max_cut="99%", stretch="asinh"),
        LayerDisplay(min_cut=4000, max_cut=12000, stretch="linear"),
        LayerDisplay(stretch="sqrt"),
    ]
    picture = rgb_composite(three_bands, displays)
    for k, (image, d) in enumerate(zip(three_bands, displays, strict=True)):
        grey = to_display(image, min_cut=d.min_cut, max_cut=d.max_cut, stretch=d.stretch, cmap="gray")
        want = grey.lut[grey.index][..., 0]
        has = ~grey.mask
        assert np.array_equal(picture.rgb[..., k][has], want[has])
    with pytest.raises(DisplayError):
        rgb_composite(three_bands[:2], displays[:2])


def test_lupton_equals_make_lupton_rgb(three_bands):
    from astropy.visualization import make_lupton_rgb

    # Scale each band to comparable units first, as a user would with their cuts.
    params = LuptonParams(minimum=(0.0, 4000.0, 0.0), stretch=50.0, q=8.0)
    scaled = [three_bands[0], three_bands[1] / 100.0 + 4000.0 * 0.99, three_bands[2] * 1e4]
    picture = lupton_composite(scaled, params)
    finite = np.isfinite(np.stack(scaled)).all(axis=0)
    want = make_lupton_rgb(
        *[np.nan_to_num(s) for s in scaled], minimum=[0.0, 4000.0, 0.0], stretch=50.0, Q=8.0
    )
    assert np.array_equal(picture.rgb[finite], want[finite])
    with pytest.raises(DisplayError):
        LuptonParams(minimum=(0.0, 0.0, 0.0), stretch=0.0)


def test_overlay_blends_with_opacity(three_bands):
    base = to_display(three_bands[1], cmap="gray")
    top = to_display(three_bands[0], cmap="inferno")
    half = overlay(base, top, 0.4)
    both = ~base.mask & ~top.mask
    want = base.lut[base.index] * 0.6 + top.lut[top.index] * 0.4
    assert np.abs(half.rgb[both].astype(float) - want[both]).max() <= 0.5 + 1e-6
    assert np.array_equal(overlay(base, top, 0.0).rgb[both], base.lut[base.index][both])
    only_top = base.mask & ~top.mask
    assert np.array_equal(half.rgb[only_top], top.lut[top.index][only_top])
    with pytest.raises(DisplayError):
        overlay(base, top, 1.5)


def test_blink_frames_share_cuts_and_animate(renders):
    images = [renders["1"], renders["2"], renders["3"]]
    frames, (vmin, vmax) = blink_frames(images, stretch="sqrt", cmap="gray")
    pooled = np.concatenate([i[np.isfinite(i)] for i in images])
    assert (vmin, vmax) == pytest.approx(compute_cuts(pooled), rel=0.02)
    for fmt, media in (("apng", "image/apng"), ("gif", "image/gif")):
        body, media_type = encode_animation(frames, fmt, frame_ms=500)
        assert media_type == media
        im = Image.open(io.BytesIO(body))
        assert im.n_frames == 3 and im.info["loop"] == 0
        for k in range(3):
            im.seek(k)
            rgb = np.asarray(im.convert("RGB"))[::-1]
            f = frames[k]
            ok = ~f.mask
            assert np.array_equal(rgb[ok], f.lut[f.index][ok])
    with pytest.raises(EncodeError):
        encode_animation(frames, "mp4")


def test_sigma_contours_of_a_field_without_noise_are_none():
    # Any request the document allows is answered: k x sigma of a flat field has no line.
    from skyrender.contours import contour_levels

    assert contour_levels(np.full((16, 16), 3.0, np.float32), [3.0, 5.0], in_sigma=True) == []
