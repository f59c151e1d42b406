"""Blink: several renders of one grid as an animated PNG (APNG) or GIF, one frame each.

All frames share one display interval (cuts resolved on the frames' pooled values) and
one stretch and colour table, so a change in brightness between frames is a change in
the sky, not in the display. Frames are indexed pictures: the colour table is the
palette of both formats, and no-data pixels use the reserved transparent index.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from .display import (
    NO_DATA_INDEX,
    DisplayImage,
    apply_stretch,
    compute_cuts,
    cut_sample,
    display_lut,
    to_index,
)
from .errors import EncodeError

#: Media type of each animation format.
ANIMATION_MEDIA_TYPES = {"apng": "image/apng", "gif": "image/gif"}


def blink_frames(
    images: Sequence[np.ndarray],
    *,
    min_cut: float | str | None = None,
    max_cut: float | str | None = None,
    stretch: str = "linear",
    cmap: str = "viridis",
    survey_cut: tuple[float, float] | str | None = None,
) -> tuple[list[DisplayImage], tuple[float, float]]:
    """Indexed pictures of ``images`` (grey, same grid) with one shared interval.

    Returns
    -------
    (list of DisplayImage, (vmin, vmax))
        The frames, and the shared cuts in data units.
    """
    arrays = [np.asarray(i) for i in images]
    if not arrays:
        raise EncodeError("a blink needs at least one frame")
    if any(a.ndim != 2 for a in arrays) or len({a.shape for a in arrays}) > 1:
        raise EncodeError("blink frames must be grey renders of one grid")
    pooled = np.concatenate([cut_sample(a) for a in arrays])
    method = "survey" if survey_cut is not None and min_cut is None and max_cut is None else "percentile"
    vmin, vmax = compute_cuts(pooled, min_cut, max_cut, method=method, survey_cut=survey_cut)
    lut = display_lut(cmap)
    frames = []
    for a in arrays:
        index, mask = to_index(apply_stretch(a, vmin, vmax, stretch))
        frames.append(DisplayImage(mask=mask, index=index, lut=lut))
    return frames, (vmin, vmax)


def encode_animation(
    frames: Sequence[DisplayImage], fmt: str = "apng", *, frame_ms: int = 700, compress_level: int = 1
) -> tuple[bytes, str]:
    """Encode indexed frames as an endlessly looping APNG or GIF.

    Parameters
    ----------
    frames : sequence of DisplayImage
        Indexed pictures of one size sharing one colour table (see :func:`blink_frames`),
        FITS row order.
    fmt : {"apng", "gif"}
    frame_ms : int
        Time each frame is shown [ms], 20..10000.
    compress_level : int
        zlib level of the APNG.

    Returns
    -------
    (bytes, str)
        The file and its media type.
    """
    from PIL import Image

    key = str(fmt).strip().lower()
    if key not in ANIMATION_MEDIA_TYPES:
        raise EncodeError(f"unknown animation format {fmt!r}; expected apng or gif")
    if isinstance(frame_ms, bool) or not isinstance(frame_ms, int) or not 20 <= frame_ms <= 10_000:
        raise EncodeError(f"frame duration must be an integer within 20..10000 ms, got {frame_ms!r}")
    if not frames or any(f.is_colour for f in frames):
        raise EncodeError("animation frames must be indexed (single-band) pictures")
    lut = frames[0].lut
    if any(not np.array_equal(f.lut, lut) for f in frames):
        raise EncodeError("animation frames must share one colour table")
    palette = np.ascontiguousarray(lut, dtype=np.uint8).tobytes()
    pictures = []
    for f in frames:
        index = np.where(f.mask, np.uint8(NO_DATA_INDEX), f.index)[::-1]
        pil = Image.fromarray(np.ascontiguousarray(index), mode="L")
        pil.putpalette(palette, rawmode="RGB")
        pil.info["transparency"] = NO_DATA_INDEX
        pictures.append(pil)
    buf = io.BytesIO()
    common = {"save_all": True, "append_images": pictures[1:], "duration": frame_ms, "loop": 0}
    if key == "apng":
        # blend 0 (source): a frame's pixels replace the last frame's, transparent ones too.
        pictures[0].save(
            buf, format="PNG", compress_level=compress_level, disposal=0, blend=0,
            transparency=NO_DATA_INDEX, default_image=False, **common,
        )  # fmt: skip
    else:
        pictures[0].save(buf, format="GIF", optimize=False, disposal=2, transparency=NO_DATA_INDEX, **common)
    return buf.getvalue(), ANIMATION_MEDIA_TYPES[key]
