"""A model's foreground rule and its rule for images without a pixel size (cellview.analysis.foreground): a smear's
pale field with one white cell is no tissue to the H&E rule, but the stained-cells rule reads its white cell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellview.analysis.foreground import Foreground, Reading, UnstatedScale, choose_scale
from cellview.analysis.pipeline import plan_grid
from cellview.analysis.results import AnalysisParams
from cellview.base.errors import ModelError
from cellview.slides.image_slide import ImageSlide
from cellview.slides.slide import Mpp
from cellview.testing.synthetic import synthetic_smear


def _plan(rgb: np.ndarray, fg: Foreground, mpp: float = 0.45, tile: int = 224):
    slide = ImageSlide(Path("smear.png"), rgb, {}, Mpp(mpp, mpp, "user"))
    return plan_grid(slide, tile, mpp, AnalysisParams(), fg)


def test_tissue_rule_sees_no_tissue_on_a_healthy_smear_the_stained_cells_rule_reads_its_white_cells():
    rgb, centres = synthetic_smear(448, seed=1, white_cells=2, tint="grey")
    _, tissue = _plan(rgb, Foreground())
    assert tissue.n_tiles == 0  # the H&E rule: a pale field is glass
    mask, cells = _plan(rgb, Foreground("stained-cells"))
    assert 1 <= cells.n_tiles <= len(centres)
    for x, y in centres:  # every white cell lies in a tile that is read, and the mask covers its nucleus
        assert any(cells.l0_x[i] <= x < cells.l0_x[i] + 224 and cells.l0_y[i] <= y < cells.l0_y[i] + 224
                   for i in range(cells.n_tiles))
        assert mask.mask[int(y / mask.downsample), int(x / mask.downsample)]
    assert mask.method == "stained-cells" and mask.fraction < 0.1  # red cells and the field are not cells
    _, field = _plan(rgb, Foreground("whole-field"))
    assert field.n_tiles == 4 and (field.tissue_fraction == 1).all()


def test_a_field_without_a_white_cell_has_no_stained_cell_tile():
    rgb, _ = synthetic_smear(448, seed=2, white_cells=0)
    assert _plan(rgb, Foreground("stained-cells"))[1].n_tiles == 0


def test_the_tissue_rule_is_unchanged_by_default():
    from cellview.analysis.tiling import build_grid
    from cellview.analysis.tissue import detect_tissue
    from cellview.testing.synthetic import synthetic_slide_rgb

    rgb = synthetic_slide_rgb(6, 4)
    slide = ImageSlide(Path("he.png"), rgb, {}, Mpp(0.5, 0.5, "user"))
    params = AnalysisParams(tissue_threshold=0.3)
    tissue, grid = plan_grid(slide, 64, 0.5, params)
    ref_tissue = detect_tissue(slide, params.tissue, 0.5)
    ref = build_grid(slide, 64, 0.5, ref_tissue, tissue_threshold=0.3)
    assert np.array_equal(tissue.mask, ref_tissue.mask) and tissue.method == ref_tissue.method
    assert np.array_equal(grid.l0_x, ref.l0_x) and np.array_equal(grid.tissue_fraction, ref.tissue_fraction)


@pytest.mark.parametrize("entry, message", [
    ({"rule": "cells"}, "'rule' is one of tissue, whole-field, stained-cells"),
    ("stained-cells", "'rule' is one of"),
    ({"rule": "stained-cells", "min_fraction": 2}, "'min_fraction' must be a number from 0 to 1"),
    ({"rule": "stained-cells", "min_fraction": "0.1"}, "'min_fraction' must be a number"),
    ({"rule": "stained-cells", "hue_deg": [300, 200]}, "'hue_deg' must be [low, high]"),
    ({"rule": "stained-cells", "size": 3}, "unknown setting 'size'"),
])
def test_bad_foreground_entries_are_clear_model_errors(entry, message):
    with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Foreground.from_sidecar(entry, "model sidecar for x.onnx")


@pytest.mark.parametrize("entry, message", [
    ({"read": "guess"}, "'read' is one of ask, whole-image, assume"),
    ({"read": "assume"}, "needs 'mpp_um'"),
    ({"read": "assume", "mpp_um": 500}, "needs 'mpp_um', a pixel size from 0.02 to 50"),
    ({"read": "whole-image", "mpp_um": 0.5}, "belongs to read 'assume' only"),
    ({"read": "whole-image", "note": 3}, "'note' must be text"),
])
def test_bad_unstated_pixel_size_entries_are_clear_model_errors(entry, message):
    with pytest.raises(ModelError, match=message):
        UnstatedScale.from_sidecar(entry, "model sidecar for x.onnx")


def test_reading_round_trips_and_the_defaults_write_nothing():
    assert Reading().sidecar_entries() == {} and Reading.from_sidecar({}, "x") == Reading()
    smear = Reading(Foreground("stained-cells", min_fraction=0.01), UnstatedScale("whole-image", note="fields"))
    assert Reading.from_sidecar(smear.sidecar_entries(), "x") == smear
    assumed = Reading(Foreground("whole-field"), UnstatedScale("assume", 0.45))
    assert Reading.from_sidecar(assumed.sidecar_entries(), "x") == assumed


def test_an_image_without_a_pixel_size_is_read_as_the_model_declares_and_says_so():
    stated = Mpp(0.5, 0.5, "tiff-resolution")
    whole = Reading(unstated=UnstatedScale("whole-image", note="its training fields"))
    assert choose_scale(whole, stated, False, "blood", 224) == choose_scale(Reading(), stated, False, "blood", 224)
    got = choose_scale(whole, None, False, "blood", 224)
    assert got.whole_image and got.mpp is None
    assert "states no pixel size" in got.note and "224 px" in got.note and "blood" in got.note
    assumed = choose_scale(Reading(unstated=UnstatedScale("assume", 0.45)), None, False, "blood", 224)
    assert not assumed.whole_image and assumed.mpp.um == 0.45 and assumed.mpp.approximate
    assert "assumed 0.45 µm/px" in assumed.note
    asked = choose_scale(Reading(), None, False, "colon-he", 224)  # H&E: needs --mpp, nothing assumed
    assert asked.mpp is None and not asked.whole_image and asked.note == ""


def test_the_field_rule_scales_by_the_image_size_and_the_fallback_reads_a_field_without_cells():
    field = Reading(Foreground("stained-cells", fallback="whole-field"), UnstatedScale("field", field_um=100.0))
    small = choose_scale(field, None, False, "blood", 224, (224, 224))
    big = choose_scale(field, None, False, "blood", 224, (550, 518))
    assert small.mpp.um == pytest.approx(100 / 224) and big.mpp.um == pytest.approx(100 / 550)
    assert "one field 100 µm wide" in big.note and big.mpp.approximate
    assert Reading.from_sidecar(field.sidecar_entries(), "x") == field
    with pytest.raises(ModelError, match="needs 'field_um'"):
        UnstatedScale.from_sidecar({"read": "field"}, "x")
    with pytest.raises(ModelError, match="'fallback' must be 'whole-field'"):
        Foreground.from_sidecar({"rule": "stained-cells", "fallback": "tissue"}, "x")
    rgb, _ = synthetic_smear(448, seed=2, white_cells=0)  # no white cell: read whole-field, and the mask says so
    mask, grid = _plan(rgb, field.foreground)
    assert grid.n_tiles == 4 and "none found: whole field read" in mask.method


def test_cell_outlines_surround_the_white_cells_in_level_0_pixels():
    from cellview.analysis.foreground import cell_outlines

    rgb, centres = synthetic_smear(448, seed=1, white_cells=2, tint="grey")
    mask, _ = _plan(rgb, Foreground("stained-cells"))
    outlines = cell_outlines(mask)
    assert len(outlines) == len(centres)
    for x, y in centres:  # each cell's centre lies inside one outline, within the image
        inside = [o for o in outlines if cv2_inside(o, x, y)]
        assert len(inside) == 1 and inside[0].max() <= 448
    assert cell_outlines(_plan(rgb, Foreground("whole-field"))[0]) == []


def cv2_inside(polygon: np.ndarray, x: float, y: float) -> bool:
    import cv2

    return cv2.pointPolygonTest(polygon.astype(np.float32), (float(x), float(y)), False) >= 0
