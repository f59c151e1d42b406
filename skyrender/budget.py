"""A render within a tile budget: wide fields degrade to a shallower order, not a refusal.

The order chosen from the output pixel size (`skyrender.manifest.choose_order`) may need
more tiles, or more decoded bytes, than a service allows per render. Then the render
reads the deepest order whose tiles fit, and, when that order is 3 or less and the survey
has an ``Norder3/Allsky`` mosaic, that one file (all order-3 tiles at reduced width), as
HiPS clients do. Only a field that no order fits is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import GeometryError
from .geometry import OutputGeometry
from .render import RenderPlan, plan_render

__all__ = ["ALLSKY_ORDER", "BudgetedPlan", "TileBudget", "plan_within"]

#: The order of the Allsky mosaics HipsGen writes (``Norder3/Allsky.*``).
ALLSKY_ORDER = 3


@dataclass(frozen=True)
class TileBudget:
    """What one render may read.

    Attributes
    ----------
    max_tiles : int
        Tiles per render.
    max_bytes : int
        Decoded tile bytes per render (float32 values, every channel) [bytes].
    """

    max_tiles: int
    max_bytes: int


@dataclass(frozen=True)
class BudgetedPlan:
    """A `RenderPlan` that fits its budget.

    Attributes
    ----------
    plan : RenderPlan
        The order and tiles actually read.
    wanted_order : int
        The order the pixel size asked for (``plan.order`` when nothing degraded).
    allsky : bool
        Read ``Norder3/Allsky`` rather than the tiles of ``plan.tiles``.
    """

    plan: RenderPlan
    wanted_order: int
    allsky: bool = False

    @property
    def degraded(self) -> bool:
        return self.plan.order < self.wanted_order or self.allsky


def tile_bytes(n_tiles: int, tile_width: int, channels: int) -> int:
    """Decoded size of ``n_tiles`` tiles [bytes] (float32 per channel)."""
    return n_tiles * tile_width * tile_width * 4 * channels


def plan_within(
    geom: OutputGeometry,
    survey,
    budget: TileBudget,
    *,
    moc=None,
    has_allsky: bool = False,
    order: int | None = None,
) -> BudgetedPlan:
    """The deepest plan of ``survey`` (a `HipsSurvey`) for ``geom`` that fits ``budget``.

    Parameters
    ----------
    has_allsky : bool
        The survey serves ``Norder3/Allsky.<format>``: used when the fitting order is 3 or less.
    order : int, optional
        Start from this order instead of the pixel size's.

    Raises
    ------
    GeometryError
        No order of the survey fits the budget.
    """
    channels = 3 if survey.is_colour else 1
    first = plan_render(geom, survey, order=order, moc=moc)
    wanted = first.order
    plan: RenderPlan | None = first
    while plan is not None and not _fits(plan, survey.tile_width, channels, budget):
        lower = plan.order - 1
        plan = plan_render(geom, survey, order=lower, moc=moc) if lower >= survey.order_min else None
    allsky_possible = has_allsky and survey.order_min <= ALLSKY_ORDER <= survey.order
    shallow = plan is None or (plan.order < wanted and plan.order <= ALLSKY_ORDER)
    if allsky_possible and shallow:
        allsky = plan_render(geom, survey, order=ALLSKY_ORDER, moc=moc)
        # The mosaic's tiles are at most 64 pixels wide (HipsGen's choice): budget them so.
        if tile_bytes(len(allsky.tiles), min(64, survey.tile_width), channels) <= budget.max_bytes:
            return BudgetedPlan(allsky, wanted, allsky=True)
    if plan is None:
        raise GeometryError(
            f"no order of this survey fits the limits ({budget.max_tiles} tiles, {budget.max_bytes} bytes "
            f"of decoded tiles) for this field"
        )
    return BudgetedPlan(plan, wanted)


def _fits(plan: RenderPlan, tile_width: int, channels: int, budget: TileBudget) -> bool:
    n = len(plan.tiles)
    return n <= budget.max_tiles and tile_bytes(n, tile_width, channels) <= budget.max_bytes
