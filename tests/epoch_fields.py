"""Epochs of a real radio field as HiPS, with known changes: the ground truth of the epoch tests.

MAGPIS 20 cm (G10.5+0.0, 300x300 px of 2") becomes three epochs, each with its own
independent Gaussian noise (as two real observations would have):

- epoch ``1``: the image;
- epoch ``2``: the image plus a new point source (a Gaussian of known peak and width)
  at a known position where the field is empty;
- epoch ``3``: the image with a known compact source faded to half its brightness.

Each is written as a HiPS with ``reproject.hips.reproject_to_hips`` (a third-party
writer). Building takes a few seconds; a module builds them once into its tmp dir.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

MAGPIS = "magpis_20cm_G10.5+0.0.fits"

#: Peak of the injected source [Jy/beam] and its Gaussian sigma [image pixels of 2"].
INJECTED_PEAK = 0.05
INJECTED_SIGMA_PX = 3.0
#: Where it goes (image pixel, 0-based x, y): an empty part of the field.
INJECTED_XY = (70.0, 230.0)
#: The faded source: its fraction of brightness lost, and the Gaussian taper [px].
FADE = 0.5
FADE_TAPER_PX = 6.0
#: Noise added to each epoch independently [Jy/beam] (seeded: the files are reproducible).
EPOCH_NOISE = 3e-5


@dataclass(frozen=True)
class EpochField:
    """The built epochs and what was changed where.

    Attributes
    ----------
    dirs : dict
        epoch label → HiPS directory.
    wcs : WCS
        The image's celestial WCS (galactic SIN).
    shape : (int, int)
    injected_radec, faded_radec : (float, float)
        ICRS positions [deg] of the injected and the faded source.
    faded_peak : float
        The faded source's peak in epoch 1 [Jy/beam] (it loses ``FADE`` of it).
    centre_radec : (float, float)
        ICRS centre of the image [deg].
    data_range : float
        max - min of epoch 1 before noise [Jy/beam].
    """

    dirs: dict[str, Path]
    wcs: WCS
    shape: tuple[int, int]
    injected_radec: tuple[float, float]
    faded_radec: tuple[float, float]
    faded_peak: float
    centre_radec: tuple[float, float]
    data_range: float


def _gaussian(shape, x0, y0, sigma):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))


def _icrs(wcs: WCS, x: float, y: float) -> tuple[float, float]:
    sky = wcs.pixel_to_world(x, y).icrs
    return float(sky.ra.deg), float(sky.dec.deg)


def _brightest_compact(data: np.ndarray, avoid: tuple[float, float]) -> tuple[int, int]:
    """A bright local maximum away from the edges and from ``avoid``."""
    from scipy.ndimage import maximum_filter

    peaks = (data == maximum_filter(data, size=15)) & (data > np.percentile(data, 99))
    peaks[:30, :] = peaks[-30:, :] = peaks[:, :30] = peaks[:, -30:] = False
    ys, xs = np.nonzero(peaks)
    far = np.hypot(xs - avoid[0], ys - avoid[1]) > 40
    ys, xs = ys[far], xs[far]
    i = int(np.argmax(data[ys, xs]))
    return int(xs[i]), int(ys[i])


def build_epochs(fits_dir: Path, out_dir: Path) -> EpochField:
    """Write epochs ``1``, ``2`` and ``3`` of MAGPIS 20 cm as HiPS under ``out_dir``."""
    from reproject import reproject_interp
    from reproject.hips import reproject_to_hips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdu = fits.open(fits_dir / MAGPIS)[0]
        wcs = WCS(hdu.header).celestial
        data = np.squeeze(hdu.data).astype(np.float64)
    shape = data.shape
    fx, fy = _brightest_compact(data, INJECTED_XY)
    rng = np.random.default_rng(20261129)
    epochs = {
        "1": data.copy(),
        "2": data + INJECTED_PEAK * _gaussian(shape, *INJECTED_XY, INJECTED_SIGMA_PX),
        "3": data * (1.0 - FADE * _gaussian(shape, fx, fy, FADE_TAPER_PX)),
    }
    dirs = {}
    for label, image in epochs.items():
        image = image + rng.normal(0.0, EPOCH_NOISE, size=shape)
        target = out_dir / f"magpis-epoch{label}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reproject_to_hips(
                (image, wcs),
                coord_system_out="equatorial",
                reproject_function=reproject_interp,
                output_directory=str(target),
                tile_size=128,
                progress_bar=None,
            )
        dirs[label] = target
    return EpochField(
        dirs=dirs,
        wcs=wcs,
        shape=shape,
        injected_radec=_icrs(wcs, *INJECTED_XY),
        faded_radec=_icrs(wcs, fx, fy),
        faded_peak=float(data[fy, fx]),
        centre_radec=_icrs(wcs, (shape[1] - 1) / 2, (shape[0] - 1) / 2),
        data_range=float(data.max() - data.min()),
    )
