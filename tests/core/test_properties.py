"""HiPS properties files."""

from __future__ import annotations

import pytest

from skyrender.errors import PropertiesError
from skyrender.properties import load_survey, parse_properties, survey_from_properties


def test_dss2_red_commented_order_and_duplicates(hips_dir):
    s = load_survey(str(hips_dir / "cds-dss2-red"))
    assert s.order == 3  # "# hips_order = 9" is a comment
    assert s.tile_width == 512 and s.frame == "icrs" and s.tile_formats == ("jpeg", "fits")
    assert s.data_format == "fits" and s.default_format == "jpeg"
    assert s.creator_did == "ivo://CDS/P/DSS2/red"


@pytest.mark.parametrize(
    "name,frame,width,cut",
    [
        ("cds-spitzer-irac4", "galactic", 512, None),
        ("cds-planck-hfi143", "galactic", 256, None),
        ("cds-gaia-dr2-rv", "icrs", 32, (-55.0, 60.0)),
        ("cds-dss2-color", "icrs", 512, None),
    ],
)
def test_real_surveys(hips_dir, name, frame, width, cut):
    s = load_survey(str(hips_dir / name / "properties"))
    assert (s.frame, s.tile_width, s.pixel_cut) == (frame, width, cut)
    assert s.tile_depth == width.bit_length() - 1


def test_parse_tolerates_junk_and_keeps_last():
    props = parse_properties("# c\n\nhips_order = 5\nno equals\nhips_order=7\nurl = a=b\n")
    assert props == {"hips_order": "7", "url": "a=b"}


def test_old_keywords():
    s = survey_from_properties("maxOrder = 8\ncoordsys = G\nformat = png fits\n", "http://x/")
    assert (s.order, s.frame, s.tile_formats, s.root) == (8, "galactic", ("png", "fits"), "http://x")


def test_defaults_and_errors():
    s = survey_from_properties("hips_order = 4\n", "/tmp/x")
    assert (s.order_min, s.tile_width, s.tile_formats, s.frame) == (0, 512, ("fits",), "icrs")
    with pytest.raises(PropertiesError, match="hips_order"):
        survey_from_properties("hips_tile_width = 512\n", "/tmp/x")
    with pytest.raises(PropertiesError, match="hips_tile_width"):
        survey_from_properties("hips_order = 3\nhips_tile_width = 500\n", "/tmp/x")
    with pytest.raises(PropertiesError, match="hips_order"):
        survey_from_properties("hips_order = three\n", "/tmp/x")
    with pytest.raises(PropertiesError):
        load_survey("/nonexistent/survey")
