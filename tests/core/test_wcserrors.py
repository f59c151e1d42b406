"""wcslib's errors told as sentences about the request, the library's words kept apart."""

from __future__ import annotations

import pytest

from skyrender.errors import GeometryError
from skyrender.geometry import FIELD_PROJECTIONS, PARAMETRIC_PROJECTIONS, make_geometry
from skyrender.wcserrors import explain_wcs_error, library_reason

WCSLIB_SINGULAR = (
    "ERROR 3 in wcsset() at line 2868 of file cextern/wcslib/C/wcs.c:\n"
    "Linear transformation matrix is singular.\n"
    "ERROR 3 in linset() at line 691 of file cextern/wcslib/C/lin.c:\nPCi_ja matrix is singular.\n"
)


def test_library_reason_drops_c_sources_and_line_numbers():
    reason = library_reason(WCSLIB_SINGULAR)
    assert reason == "Linear transformation matrix is singular. PCi_ja matrix is singular."
    assert library_reason("") == "unknown WCS error"


def test_singular_matrix_names_the_scale():
    problem = explain_wcs_error(WCSLIB_SINGULAR)
    assert problem.field == "CDELT1" and "singular" in problem.message and ".c" not in problem.message


def test_tiny_field_of_view_is_blamed_on_fov():
    # The case a fuzzer found: fovDeg=5e-324 used to answer wcslib's raw text.
    with pytest.raises(GeometryError) as info:
        make_geometry(0.0, 0.0, 5e-324, 512, 512)
    assert info.value.field == "fov"
    assert "widen the field" in str(info.value) and "cextern" not in str(info.value)


@pytest.mark.parametrize("code", PARAMETRIC_PROJECTIONS)
def test_projections_needing_parameters_are_refused_for_a_field(code):
    with pytest.raises(GeometryError) as info:
        make_geometry(10.0, 20.0, 5.0, 64, 64, code)
    assert info.value.field == "projection" and code in str(info.value)


@pytest.mark.parametrize("code", FIELD_PROJECTIONS)
def test_every_field_projection_makes_a_geometry(code):
    # The OpenAPI enum lists these: each must work at any centre, rotation and fov extreme.
    for fov in (1e-4, 360.0):
        for dec in (-90.0, 0.0, 90.0):
            make_geometry(359.9, dec, fov, 4096, 1, code, 33.0)

