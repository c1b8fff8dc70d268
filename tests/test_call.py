"""The slide call (analysis.call): worst finding first, every state, thresholds at their edges, one set of words;
the sidecar's ``call`` section validated on load."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from cellview.analysis.call import CALL_STATES, HEADLINES, slide_call
from cellview.analysis.callrule import DEFAULT_THRESHOLDS, CallThresholds, CategoryThreshold
from cellview.analysis.domain import DomainInfo
from cellview.analysis.model_spec import ModelSpec, precision_copy
from cellview.analysis.results import TileState
from cellview.base.errors import ModelError
from cellview.testing.synthetic import grid_result, make_toy_model

TILE_MM2 = (100 * 0.5 / 1000) ** 2  # grid_result: 100 px stride at 0.5 µm/px


def thresholds(mal=(0.5, 0.1, None), ben=(0.5, 0.25, None), min_tiles=1) -> CallThresholds:
    return CallThresholds(CategoryThreshold(*mal), CategoryThreshold(*ben), min_tiles, chosen_by="test")


def mosaic_rows(n_malignant: int, n_benign: int = 0, cols: int = 8, rows: int = 6) -> list[str]:
    """Tiles in reading order: malignant first (one block), then benign, the rest normal."""
    letters = "M" * n_malignant + "B" * n_benign
    letters += "N" * (cols * rows - len(letters))
    return [letters[r * cols:(r + 1) * cols] for r in range(rows)]


# ----------------------------------------------------------------------------- the states


def test_a_malignant_minority_is_called_malignant_not_hidden_behind_the_largest_share():
    # 17 of 48 tiles malignant in two regions: the mosaic, which the largest share called normal
    rows = ["MMMMNNNN", "MMMMNNNN", "MNNNNNNN", "NNNNNNBB", "NNNNMMMM", "NNNNMMMM"]
    result = grid_result(rows)
    assert result.image_level()["pred_category"] == "normal"  # today's vote hides it
    call = slide_call(result, thresholds((0.5, 0.1, 0.05)))
    assert call.category == "malignant" and call.headline == "Malignant"
    assert call.text == "Malignant: 2 regions, largest 0.02 mm², 35 % of tiles (confidence ≥ 0.5)"
    f = call.finding("malignant")
    assert (f.tiles, f.regions, f.largest_tiles) == (17, 2, 9)
    assert f.largest_mm2 == pytest.approx(9 * TILE_MM2)
    assert call.shares_percent == {"malignant": 35, "benign": 4, "normal": 61}
    assert call.shares_text == "normal 61 % · malignant 35 % · benign 4 %"


@pytest.mark.parametrize("n_mal, expected", [(5, "malignant"), (4, "normal")])
def test_the_share_threshold_is_inclusive_at_its_edge(n_mal, expected):
    # 50 tiles: 5 = exactly 10 %
    result = grid_result(mosaic_rows(n_mal, cols=10, rows=5))
    assert slide_call(result, thresholds((0.5, 0.1, None))).category == expected


@pytest.mark.parametrize("n_mal, expected", [(8, "malignant"), (7, "normal")])
def test_the_area_threshold_is_inclusive_at_its_edge(n_mal, expected):
    result = grid_result(mosaic_rows(n_mal, cols=10, rows=5))
    call = slide_call(result, thresholds((0.5, None, 8 * TILE_MM2)))
    assert call.category == expected
    assert call.finding("malignant").largest_tiles == n_mal


@pytest.mark.parametrize("conf, expected", [(0.7, "malignant"), (0.69, "normal")])
def test_tiles_count_from_the_threshold_confidence_on(conf, expected):
    rows = mosaic_rows(10, cols=10, rows=5)
    n = 50
    confidence = np.full(n, 0.9, np.float32)
    confidence[:10] = conf
    result = grid_result(rows, conf=confidence)
    assert slide_call(result, thresholds((0.7, 0.2, None))).category == expected


def test_with_the_pixel_size_unknown_areas_are_not_used_and_the_words_say_so():
    rows = mosaic_rows(8, cols=10, rows=5)  # 16 %: under a 20 % share, over a 6-tile area
    t = thresholds((0.5, 0.2, 6 * TILE_MM2))
    known, unknown = slide_call(grid_result(rows), t), slide_call(grid_result(rows, mpp=None), t)
    assert known.category == "malignant" and known.area_known
    assert unknown.category == "normal" and not unknown.area_known
    assert unknown.finding("malignant").largest_mm2 is None
    assert "pixel size unknown: areas not used, shares only" in unknown.text
    assert "malignant 16 % of tiles, below the threshold" in unknown.text
    unknown_mal = slide_call(grid_result(mosaic_rows(12, cols=10, rows=5), mpp=None), t)
    assert unknown_mal.text.startswith("Malignant: 1 region of 12 tiles, 24 % of tiles")


def test_benign_when_malignant_stays_under_its_threshold_and_the_words_name_both():
    result = grid_result(mosaic_rows(2, 20, cols=10, rows=5))
    call = slide_call(result, thresholds())
    assert call.category == "benign"
    assert call.text == ("Benign: 1 region of 0.05 mm², 40 % of tiles (confidence ≥ 0.5); "
                         "malignant 4.0 % of tiles, below the threshold")


def test_normal_when_nothing_passes():
    call = slide_call(grid_result(mosaic_rows(0, 3)), thresholds())
    assert call.category == "normal"
    assert call.text == "Normal: 94 % of tiles normal; benign 6.2 % of tiles, below the threshold"
    assert call.is_finding


def test_the_largest_share_is_called_even_when_its_tiles_are_less_sure_than_the_threshold():
    t = thresholds((0.8, 0.15, None), (0.8, 0.25, None))
    one = slide_call(grid_result(["M"], conf=np.array([0.55])), t)
    assert one.text == "Malignant: the largest share, 100 % of tiles"
    f = one.finding("malignant")
    assert not f.passed and f.largest_share and f.called
    benign = slide_call(grid_result(["BBN"], conf=np.full(3, 0.6)), t)
    assert benign.text == "Benign: the largest share, 67 % of tiles"
    tie = slide_call(grid_result(["MBNN", "MBNN"], conf=np.full(8, 0.6)), t)  # normal is larger: no finding
    assert tie.category == "normal"
    worst = slide_call(grid_result(["MB"], conf=np.full(2, 0.6)), t)  # a tie goes to the worse category
    assert worst.category == "malignant" and not worst.finding("benign").largest_share


def test_worst_finding_first_malignant_beats_a_larger_benign_share():
    call = slide_call(grid_result(mosaic_rows(6, 30, cols=10, rows=5)), thresholds())
    assert call.category == "malignant"


def out_of_domain_result(in_domain: int, malignant: int):
    """40 tiles, the first ``malignant`` malignant; the first ``in_domain`` scored in domain."""
    base = grid_result(mosaic_rows(malignant, cols=8, rows=5))
    score = np.where(np.arange(40) < in_domain, 0.9, 0.1).astype(np.float32)
    model = replace(base.model, domain=DomainInfo(sha256="d", method="m", threshold=0.5, training_data="toy tiles"))
    return replace(base, model=model, domain_score=score)


def test_mostly_out_of_domain_is_no_call_but_still_names_malignant_tissue():
    call = slide_call(out_of_domain_result(in_domain=10, malignant=8), thresholds())
    assert call.category == "out_of_domain" and not call.is_finding
    assert call.out_of_domain_fraction == pytest.approx(0.75)
    assert call.text == ("No call: out of domain: 75 % of the tissue tiles are unlike toy tiles; "
                         "malignant tiles among the rest: 1 region of 0.02 mm², 80 % of tiles (confidence ≥ 0.5)")
    quiet = slide_call(out_of_domain_result(in_domain=10, malignant=0), thresholds())
    assert quiet.text == "No call: out of domain: 75 % of the tissue tiles are unlike toy tiles"
    mostly_in = slide_call(out_of_domain_result(in_domain=30, malignant=0), thresholds())
    assert mostly_in.category == "normal" and mostly_in.counted_tiles == 30


def test_too_little_tissue_no_tile_or_fewer_than_the_minimum():
    one = grid_result(["M"])
    none_i, none_f = np.zeros(0, np.int32), np.zeros(0, np.float32)
    grid = replace(one.grid, grid_col=none_i, grid_row=none_i, l0_x=none_i.astype(np.int64),
                   l0_y=none_i.astype(np.int64), tissue_fraction=none_f)
    empty = replace(one, grid=grid, probs=np.zeros((0, 3), np.float32), state=np.zeros(0, np.uint8))
    assert slide_call(empty, thresholds()).text == "No call: too little tissue: no tissue tile found"
    few = slide_call(grid_result(["MNN"]), thresholds(min_tiles=4))
    assert few.category == "too_little_tissue"
    assert few.text == "No call: too little tissue: 3 tiles counted, 4 needed"


def test_not_analysed_no_result_or_no_tile_classified():
    assert slide_call(None).text == "Not analysed: no result for this slide"
    pending = grid_result(["MMNN"])
    pending = replace(pending, state=np.full(4, TileState.PENDING, np.uint8), status="cancelled")
    assert slide_call(pending).text == "Not analysed: no tile classified yet"


def test_a_cancelled_run_says_its_call_is_partial():
    result = grid_result(mosaic_rows(3, cols=5, rows=2))
    state = np.full(10, TileState.DONE, np.uint8)
    state[6:] = TileState.PENDING
    call = slide_call(replace(result, state=state, status="cancelled"), thresholds())
    assert call.category == "malignant" and call.partial
    assert call.text.endswith("; partial run: 6 of 10 tiles")


def test_every_state_has_a_headline_and_the_default_thresholds_say_they_are_not_validated():
    assert set(HEADLINES) == set(CALL_STATES)
    result = grid_result(mosaic_rows(0))
    assert result.model.call is DEFAULT_THRESHOLDS
    call = slide_call(result)
    assert call.thresholds.is_default
    assert call.text.endswith("default thresholds, not validated for this model")
    assert "not validated" not in slide_call(result, thresholds()).text


def test_the_call_serialises_for_the_metadata():
    call = slide_call(grid_result(mosaic_rows(5, 2)), thresholds((0.5, 0.1, 0.05)))
    d = json.loads(json.dumps(call.to_dict()))
    assert d["category"] == "malignant" and d["text"] == call.text
    assert d["headline"] == "Malignant" and d["evidence"] == call.evidence
    assert d["findings"]["malignant"]["tiles"] == 5
    assert d["thresholds"]["malignant"] == {"min_confidence": 0.5, "min_share": 0.1, "min_area_mm2": 0.05}
    assert d["thresholds_chosen_by"] == "test" and d["rule_version"] == 1


def test_the_result_carries_the_models_thresholds():
    t = thresholds((0.5, 0.5, None))
    result = grid_result(mosaic_rows(10))  # 21 %: malignant by default (15 %), not at 50 %
    assert slide_call(result).category == "malignant"
    assert slide_call(replace(result, model=replace(result.model, call=t))).category == "normal"


# ----------------------------------------------------------------------------- the sidecar


GOOD = {"rule_version": 1, "malignant": {"min_confidence": 0.6, "min_share": 0.05, "min_area_mm2": 0.1},
        "benign": {"min_confidence": 0.5, "min_share": 0.3, "min_area_mm2": None}, "min_tissue_tiles": 2,
        "chosen_by": "a test", "validation": {"sensitivity": 0.9}}


def test_a_sidecar_call_section_is_read_and_a_missing_one_gets_the_default(tmp_path):
    spec = ModelSpec.load(make_toy_model(tmp_path / "good", sidecar_overrides={"call": GOOD}))
    assert spec.call.malignant == CategoryThreshold(0.6, 0.05, 0.1)
    assert spec.call.benign == CategoryThreshold(0.5, 0.3, None)
    assert (spec.call.min_tissue_tiles, spec.call.chosen_by) == (2, "a test")
    assert spec.call.validation == {"sensitivity": 0.9}
    assert ModelSpec.load(make_toy_model(tmp_path / "none")).call is DEFAULT_THRESHOLDS


@pytest.mark.parametrize("bad, words", [
    ("yes", "'call' must be an object"),
    ({"malignant": {"min_share": 1.5}}, "'call.malignant'.min_share must be above 0 and at most 1, got 1.5"),
    ({"malignant": {"min_share": 0}}, "min_share must be above 0"),
    ({"malignant": {"min_confidence": "high"}}, "min_confidence must be a number"),
    ({"benign": {"min_share": None, "min_area_mm2": None}}, "needs 'min_share' or 'min_area_mm2'"),
    ({"malignant": {"min_shares": 0.1}}, "unknown key 'min_shares'"),
    ({"thresholds": {}}, "unknown key 'thresholds' in 'call'"),
    ({"rule_version": 7}, "rule version 7; this cellview knows version 1"),
    ({"min_tissue_tiles": 0}, "'call.min_tissue_tiles' must be a whole number of tiles, at least 1"),
    ({"malignant": {"min_area_mm2": -1}}, "min_area_mm2 must be above 0"),
])
def test_a_bad_call_section_is_refused_with_a_clear_model_error(tmp_path, bad, words):
    path = make_toy_model(tmp_path / "bad", sidecar_overrides={"call": bad})
    with pytest.raises(ModelError) as err:
        ModelSpec.load(path)
    assert words in err.value.message
    assert "model sidecar for model.onnx" in err.value.message


def _copy_with_call(folder, call):
    """A toy model with an FP16 'copy' (the same file) whose sidecar holds ``call``."""
    path = make_toy_model(folder, sidecar_overrides={"call": GOOD})
    (folder / "model.fp16.onnx").write_bytes(path.read_bytes())
    side = json.loads((folder / "model.json").read_text())
    side["precision"] = "fp16"
    if call is None:
        side.pop("call")
    else:
        side["call"] = call
    (folder / "model.fp16.json").write_text(json.dumps(side))
    return ModelSpec.load(path)


def test_a_models_copies_share_its_thresholds(tmp_path):
    spec = _copy_with_call(tmp_path / "same", GOOD)
    assert precision_copy(spec, "fp16").call == spec.call
    inherits = _copy_with_call(tmp_path / "inherit", None)  # a copy without the section takes the model's
    assert precision_copy(inherits, "fp16").call == inherits.call
    differs = _copy_with_call(tmp_path / "differ", {**GOOD, "min_tissue_tiles": 5})
    with pytest.raises(ModelError, match="differ from those of model.json"):
        precision_copy(differs, "fp16")


def test_the_bundled_models_ship_validated_thresholds_in_every_copy():
    from cellview.analysis.model_lookup import available_models

    models = available_models()
    for name in ("colon-he", "lung-he"):
        spec = ModelSpec.load(models[name])
        assert not spec.call.is_default, f"{name} ships no 'call' section"
        assert "leave-one-source-out" in spec.call.chosen_by or "cross-validation" in spec.call.chosen_by
        sections = []
        for precision in ("fp32", "int8", "fp16"):
            copy = precision_copy(spec, precision)
            assert copy is not None and copy.call == spec.call
            sections.append(copy.raw["call"])
        assert sections[0] == sections[1] == sections[2]
