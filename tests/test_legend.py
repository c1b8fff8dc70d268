"""One description for every legend and scale bar (cellview.outputs.legend), Qt-free (issue 19)."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from cellview.analysis.domain import DomainInfo
from cellview.analysis.model_spec import CATEGORIES
from cellview.outputs.legend import describe_legend, format_um, nice_length_um, out_of_domain_row, scale_bar
from cellview.outputs.overlay import (
    CATEGORY_MODE,
    PER_SLIDE,
    OverlaySettings,
    describe_overrides,
    fill_rgba,
    shown_tiles,
)
from cellview.testing.synthetic import grid_result

# ----------------------------------------------------------------------------- scale bar


@pytest.mark.parametrize("max_px", [60, 120, 160, 304])
def test_the_bar_is_as_long_as_its_label_says_at_every_zoom(max_px):
    for um_per_px in np.geomspace(0.005, 400, 300):
        bar = scale_bar(float(um_per_px), max_px)
        assert bar is not None
        mantissa = bar.length_um / 10 ** np.floor(np.log10(bar.length_um))
        assert round(mantissa, 6) in (1, 2, 5)  # a 1-2-5 length
        assert max_px / 2.5 - 1e-6 <= bar.length_px <= max_px + 1e-6  # fits its room, never clipped by it
        assert abs(bar.length_px * um_per_px - bar.length_um) < 1e-6 * bar.length_um
        assert abs(bar.drawn_px - bar.length_px) <= 0.5  # whole pixels drawn: within half a pixel
        number, unit = re.fullmatch(r"([0-9.]+) (µm|mm)", bar.label).groups()
        assert float(number) * (1000 if unit == "mm" else 1) == pytest.approx(bar.length_um)


def test_scale_bar_edge_cases():
    assert scale_bar(None, 100) is None and scale_bar(0.0, 100) is None and scale_bar(0.5, 0) is None
    assert nice_length_um(100) == 100 and nice_length_um(99.9) == 50 and nice_length_um(1000) == 1000
    assert format_um(500) == "500 µm" and format_um(2000) == "2 mm" and format_um(0.5) == "0.5 µm"


# ----------------------------------------------------------------------------- legend counts


def domain_result():
    """Six tiles: two in-domain (malignant), four out of domain (two malignant 0.9, two benign 0.55);
    four classes, two of them malignant."""
    base = grid_result(["MMMB", "MB.."], conf=np.array([0.9, 0.9, 0.9, 0.55, 0.9, 0.55]))
    probs = np.zeros((6, 4), np.float32)
    cat = [0, 0, 0, 1, 0, 1]
    conf = [0.9, 0.9, 0.9, 0.55, 0.9, 0.55]
    for i, (k, c) in enumerate(zip(cat, conf)):
        if k == 0:
            probs[i, 0], probs[i, 1], probs[i, 2] = c - 0.1, 0.1, 1 - c
        else:
            probs[i, 2], probs[i, 0] = c, 1 - c
    model = replace(base.model, class_names=("adenocarcinoma", "signet ring", "adenoma", "normal"),
                    class_categories=("malignant", "malignant", "benign", "normal"),
                    class_colors=("#aa0000", "#cc3333", "#ff9f1c", "#2ca02c"),
                    domain=DomainInfo(sha256="d", method="m", threshold=0.5, training_data="toy tiles"))
    score = np.array([0.9, 0.8, 0.1, 0.1, 0.2, 0.3], np.float32)
    return replace(base, model=model, probs=probs, domain_score=score)


def test_class_rows_count_what_the_category_rows_count():
    result = domain_result()
    for anyway in (False, True):
        for min_conf in (0.0, 0.6):
            ov = OverlaySettings(show_out_of_domain=anyway, min_confidence=min_conf)
            legend = describe_legend(result, ov)
            by_category = {r.key: r.count for r in legend.categories}
            classes = {r.key: r.count for r in legend.classes}
            # "malignant 20 74 %" then "adenocarcinoma: 0" was the contradiction: the malignant classes add up
            assert classes["adenocarcinoma"] + classes["signet ring"] == by_category["malignant"]
            assert classes["adenoma"] == by_category["benign"] and classes["normal"] == by_category["normal"]
    anyway = describe_legend(result, OverlaySettings(show_out_of_domain=True))
    assert {r.key: r.count for r in anyway.categories}["malignant"] == 4


def test_the_out_of_domain_row_follows_the_confidence_filter():
    result = domain_result()
    row = out_of_domain_row(result, OverlaySettings())
    assert (row.count, row.percent) == (4, 67)
    row = out_of_domain_row(result, OverlaySettings(min_confidence=0.6))  # the two benign 0.55 go
    assert (row.count, row.percent) == (2, 50)
    assert out_of_domain_row(grid_result(["MB"]), OverlaySettings()) is None  # no statistics: no row


def test_every_legend_line_comes_from_the_description():
    result = domain_result()
    ov = OverlaySettings(min_confidence=0.6, categories=("malignant", "normal"))
    lines = describe_legend(result, ov, source="the viewer").lines()
    assert "benign (hidden): 0  0%" in lines
    assert any(line.startswith("Shown: only tiles ≥ 60% confident; benign hidden") for line in lines)
    assert lines[-1] == "Exported from the viewer: as shown on screen."


# ----------------------------------------------------------------------------- filters and toggles


def test_colour_by_probability_hides_the_categories_switched_off():
    result = grid_result(["MBN"])
    ov = OverlaySettings(mode=0, categories=("malignant", "normal"))
    assert not ov.by_category
    assert shown_tiles(result, ov).tolist() == [True, False, True]
    assert fill_rgba(result, ov)[0, 1, 3] == 0  # the hidden benign tile is not painted
    assert "benign hidden" in describe_overrides(ov)


def test_a_new_slide_starts_without_the_last_ones_filters_and_override():
    ov = OverlaySettings(style="fill", opacity=0.7, mode=CATEGORY_MODE, min_confidence=0.8,
                         categories=("benign",), show_regions=True, show_out_of_domain=True)
    fresh = ov.for_new_slide()
    assert (fresh.min_confidence, fresh.categories, fresh.show_out_of_domain) == (0.0, CATEGORIES, False)
    assert (fresh.style, fresh.opacity, fresh.show_regions) == ("fill", 0.7, True)  # the look stays
    assert set(PER_SLIDE) == {"show_out_of_domain", "min_confidence", "categories"}
    assert describe_overrides(fresh) == ""
    assert "counted anyway" in describe_overrides(OverlaySettings(show_out_of_domain=True))


def test_the_annotated_png_draws_the_same_true_bar():
    from io import BytesIO

    from PIL import Image

    from cellview.outputs.export import annotated_png

    result = grid_result(["MBN" * 4] * 6, stride=100, mpp=0.37)  # 1200 × 600 level-0 px
    thumb = np.full((300, 600, 3), 255, np.uint8)  # 2 level-0 px per picture px
    img = np.asarray(Image.open(BytesIO(annotated_png(result, thumb))).convert("RGB"))[:, :600]
    bar = scale_bar(2 * 0.37, 600 / 5)
    black = (img[250:, :300].max(axis=2) < 8).astype(np.int8)  # the bar is pure black (contours are casing grey)
    runs = []
    for row in black:
        edges = np.diff(np.concatenate([[0], row, [0]]))
        runs += (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()
    assert max(runs) == bar.drawn_px and abs(bar.drawn_px * 2 * 0.37 - bar.length_um) <= 0.5 * 2 * 0.37


def test_a_small_image_with_many_classes_gets_a_png_tall_enough_for_its_legend(tmp_path):
    """A 224 px smear field and a model with many classes: the canvas grows, the legend does not run into the
    footer (it did: the canvas was the image's height or 480 px, whatever the legend needed)."""
    from io import BytesIO

    import cv2
    from PIL import Image

    from cellview.analysis.classifier import OnnxClassifier
    from cellview.analysis.model_spec import ModelSpec
    from cellview.analysis.pipeline import run_analysis
    from cellview.analysis.results import AnalysisParams
    from cellview.outputs.export import annotated_png
    from cellview.testing.synthetic import make_toy_model

    names = [f"class {i}" for i in range(12)]
    cats = ["malignant", "benign", "normal"] * 4
    model = make_toy_model(tmp_path / "many", patch_px=64, spacing_um=0.5, num_outputs=12, sidecar_overrides={
        "num_classes": 12, "class_names": names, "class_categories": cats, "class_colors": ["#d62728"] * 12})
    image = tmp_path / "field.png"
    cv2.imwrite(str(image), np.full((128, 128, 3), (60, 40, 200), np.uint8))
    result = run_analysis(image, OnnxClassifier(ModelSpec.load(model), device="cpu"), AnalysisParams(mpp_um=0.5))
    png = np.asarray(Image.open(BytesIO(annotated_png(result, np.full((128, 128, 3), 200, np.uint8)))).convert("L"))
    assert png.shape[0] > 480  # taller than the old fixed canvas
    panel = png[:, 140:]
    inked = np.flatnonzero((panel < 200).any(axis=1))
    gaps = np.diff(inked)
    assert inked.max() < png.shape[0] - 2 and gaps.max() >= 6  # the footer sits below the legend, not on it
