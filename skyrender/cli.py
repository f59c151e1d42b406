"""Command line: one-off renders and manifests, for debugging and scripting.

skyrender render --hips PATH_OR_URL --ra 266.4 --dec -28.9 --fov 2 --width 1024 --height 768 -o gc.png
skyrender manifest --hips PATH_OR_URL --ra 266.4 --dec -28.9 --fov 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .display import STRETCHES
from .errors import SkyRenderError

__all__ = [
    "main",
]


def _geometry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hips", required=True, help="survey root: local directory or http(s) URL")
    p.add_argument(
        "--ra", type=float, required=True, help="centre longitude [deg] (ra, or l with --frame galactic)"
    )
    p.add_argument("--dec", type=float, required=True, help="centre latitude [deg]")
    p.add_argument("--fov", type=float, required=True, help="field of view along the larger side [deg]")
    p.add_argument("--width", type=int, default=512, help="output width [pixels]")
    p.add_argument("--height", type=int, default=512, help="output height [pixels]")
    p.add_argument(
        "--projection", default="TAN", help="wcslib projection code (TAN, SIN, AIT, MOL, CAR, ...)"
    )
    p.add_argument("--rotation", type=float, default=0.0, help="sky rotation, CROTA2 convention [deg]")
    p.add_argument("--frame", default="icrs", help="frame of the centre and output WCS: icrs | galactic")
    p.add_argument("--format", dest="tile_format", default=None, help="tile format to read (fits, jpeg, png)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skyrender", description="Render HiPS tiles into sky images.")
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="render a field to PNG, JPEG or FITS")
    _geometry_args(render)
    render.add_argument("--stretch", default="linear", choices=STRETCHES)
    render.add_argument("--cmap", default="viridis", help="matplotlib colormap name (_r reverses)")
    render.add_argument("--min-cut", default=None, help="data value or percentile like 0.5%%")
    render.add_argument("--max-cut", default=None, help="data value or percentile like 99.5%%")
    render.add_argument("--interpolation", default="bilinear", choices=["bilinear", "nearest"])
    render.add_argument(
        "--output-format", "--out-format", dest="out_format", default=None, help="png | jpeg | fits"
    )
    render.add_argument("-o", "--output", required=True, help="output file; its suffix picks the format")
    manifest = sub.add_parser("manifest", help="list the tiles a field needs, as JSON")
    _geometry_args(manifest)
    return parser


def _read(location: str) -> bytes | None:
    """Bytes of a tile (local path or URL), None when it does not exist."""
    if location.startswith(("http://", "https://")):
        import httpx

        r = httpx.get(location, timeout=30.0)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.content
    path = Path(location)
    return path.read_bytes() if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    from .decode import decode_tile
    from .display import to_display
    from .encode import encode_fits, encode_image
    from .geometry import make_geometry
    from .manifest import load_moc
    from .properties import load_survey
    from .render import plan_render, reproject
    from .sampling import TileSet

    args = _parser().parse_args(argv)
    try:
        survey = load_survey(args.hips)
        geom = make_geometry(
            args.ra, args.dec, args.fov, args.width, args.height, args.projection, args.rotation, args.frame
        )
        moc_bytes = _read(f"{survey.root.rstrip('/')}/Moc.fits")
        moc = load_moc(moc_bytes) if moc_bytes else None
        plan = plan_render(geom, survey, fmt=args.tile_format, moc=moc)
        if args.command == "manifest":
            out = {
                "order": plan.order,
                "tile_width": survey.tile_width,
                "frame": survey.frame,
                "tiles": [
                    {"id": t.id, "order": t.order, "npix": t.npix, "nside": t.nside, "url": t.url}
                    for t in plan.tiles
                ],
            }
            json.dump(out, sys.stdout, indent=2)
            print()
            return 0
        decoded = {}
        for tile in plan.tiles:
            data = _read(tile.url)
            if data is not None:
                decoded[tile.npix] = decode_tile(data)
        tiles = TileSet.from_tiles(plan.order, decoded, tile_width=survey.tile_width)
        image = reproject(geom, tiles, survey.frame, interpolation=args.interpolation)
        fmt = (args.out_format or Path(args.output).suffix.lstrip(".") or "png").lower()
        if fmt in ("fits", "fit"):
            body = encode_fits(image, geom.header())
        else:
            disp = to_display(
                image,
                min_cut=args.min_cut,
                max_cut=args.max_cut,
                stretch=args.stretch,
                cmap=args.cmap,
            )
            body, _ = encode_image(disp, fmt)
        Path(args.output).write_bytes(body)
        print(
            f"wrote {args.output}: {geom.width}x{geom.height} {geom.projection}, order {plan.order}, "
            f"{len(decoded)}/{len(plan.tiles)} tiles"
        )
        return 0
    except SkyRenderError as exc:
        print(f"skyrender: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
