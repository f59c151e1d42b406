"""Pictures of several layers on one grid: RGB, Lupton et al. (2004) asinh, and overlay.

Every layer is a grey float render on the same output grid (FITS order, NaN for no
data). The RGB mode passes each layer through the single-layer display path (its own
cuts and stretch, the ``gray`` colormap), so a channel is exactly the grey picture of
that layer; the Lupton mode is `astropy.visualization.make_lupton_rgb`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .display import NO_DATA_INDEX, DisplayImage, as_rgb, to_display
from .errors import DisplayError


@dataclass(frozen=True)
class LayerDisplay:
    """How one layer is shown: cuts (data units or ``"NN%"``), stretch, colormap.

    ``survey_cut`` is the survey's ``hips_pixel_cut``, used when both cuts are unset.
    """

    min_cut: float | str | None = None
    max_cut: float | str | None = None
    stretch: str = "linear"
    cmap: str = "viridis"
    survey_cut: tuple[float, float] | str | None = None

    def picture(self, image: np.ndarray, cmap: str | None = None) -> DisplayImage:
        """The layer as a picture (:func:`skyrender.display.to_display`)."""
        survey_cut = self.survey_cut if self.min_cut is None and self.max_cut is None else None
        return to_display(
            image,
            min_cut=self.min_cut,
            max_cut=self.max_cut,
            stretch=self.stretch,
            cmap=cmap or self.cmap,
            survey_cut=survey_cut,
        )


def _grey(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise DisplayError(f"composites take grey (single-band) layers; got a layer of shape {arr.shape}")
    return arr


def _same_grid(images: Sequence[np.ndarray]) -> None:
    shapes = {np.asarray(i).shape for i in images}
    if len(shapes) > 1:
        raise DisplayError(f"layers on different grids: {sorted(shapes)}")


def grey_channel(image: np.ndarray, display: LayerDisplay) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (H, W) grey level, no-data mask): the layer's ``gray`` picture, one plane.

    No-data pixels are 0.
    """
    img = display.picture(_grey(image), cmap="gray")
    # The gray table's red column, with the no-data entry black: one gather, not three.
    table = np.array(img.lut[:, 0])
    table[NO_DATA_INDEX] = 0
    return table[img.index], img.mask


def rgb_composite(images: Sequence[np.ndarray], displays: Sequence[LayerDisplay]) -> DisplayImage:
    """Three layers to red, green and blue, each with its own cuts and stretch.

    A pixel is no data only where all three layers are; a channel without data there
    is 0.
    """
    if len(images) != 3 or len(displays) != 3:
        raise DisplayError(f"an RGB composite takes exactly three layers, got {len(images)}")
    _same_grid(images)
    h, w = np.asarray(images[0]).shape
    rgb = np.empty((h, w, 3), dtype=np.uint8)
    mask = np.ones((h, w), dtype=bool)
    for k, (image, display) in enumerate(zip(images, displays, strict=True)):
        rgb[..., k], layer_mask = grey_channel(image, display)
        mask &= layer_mask
    return DisplayImage(mask=mask, rgb=rgb)


@dataclass(frozen=True)
class LuptonParams:
    """Parameters of `astropy.visualization.make_lupton_rgb`, in data units.

    Attributes
    ----------
    minimum : tuple of 3 float
        Black level of each channel.
    stretch : float
        Linear stretch of the asinh (data units), > 0.
    q : float
        Asinh softening parameter, > 0.
    """

    minimum: tuple[float, float, float]
    stretch: float
    q: float = 8.0

    def __post_init__(self) -> None:
        values = [*self.minimum, self.stretch, self.q]
        if len(self.minimum) != 3 or not all(math.isfinite(v) for v in values):
            raise DisplayError("Lupton parameters must be finite numbers, with three minima")
        if not (self.stretch > 0 and self.q > 0):
            raise DisplayError(f"Lupton stretch and Q must be > 0, got {self.stretch!r} and {self.q!r}")


def default_lupton(images: Sequence[np.ndarray], q: float = 8.0) -> LuptonParams:
    """Lupton parameters from the data: minima at each layer's 0.5 %, stretch to the widest 99.5 %."""
    from .display import compute_cuts

    cuts = [compute_cuts(_grey(i)) for i in images]
    width = max(hi - lo for lo, hi in cuts)
    return LuptonParams(minimum=tuple(lo for lo, _ in cuts), stretch=width if width > 0 else 1.0, q=q)


def lupton_composite(images: Sequence[np.ndarray], params: LuptonParams) -> DisplayImage:
    """Lupton et al. (2004) asinh colour picture of three layers (red, green, blue).

    No-data pixels enter ``make_lupton_rgb`` at their channel's minimum (black), and
    are no data in the picture where all three layers are.
    """
    from astropy.visualization import make_lupton_rgb

    if len(images) != 3:
        raise DisplayError(f"a Lupton composite takes exactly three layers, got {len(images)}")
    _same_grid(images)
    planes = [np.asarray(_grey(i), dtype=np.float64) for i in images]
    masks = [~np.isfinite(p) for p in planes]
    filled = [np.where(m, lo, p) for p, m, lo in zip(planes, masks, params.minimum, strict=True)]
    rgb = make_lupton_rgb(*filled, minimum=list(params.minimum), stretch=params.stretch, Q=params.q)
    return DisplayImage(mask=np.logical_and.reduce(masks), rgb=np.ascontiguousarray(rgb, dtype=np.uint8))


def overlay(base: DisplayImage, top: DisplayImage, opacity: float = 0.5) -> DisplayImage:
    """``top`` laid over ``base`` with ``opacity`` (0 transparent .. 1 opaque), where it has data.

    Where the base has no data the top layer shows alone (opaque); where neither has
    data the picture has none.
    """
    if not (math.isfinite(opacity) and 0.0 <= opacity <= 1.0):
        raise DisplayError(f"opacity must be within 0..1, got {opacity!r}")
    if base.mask.shape != top.mask.shape:
        raise DisplayError(f"layers on different grids: {base.mask.shape} and {top.mask.shape}")
    b, t = as_rgb(base), as_rgb(top)
    alpha = np.where(t.mask, 0.0, np.where(b.mask, 1.0, opacity)).astype(np.float32)[..., None]
    out = b.rgb.astype(np.float32) * (1.0 - alpha) + t.rgb.astype(np.float32) * alpha
    rgb = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return DisplayImage(mask=b.mask & t.mask, rgb=rgb)
