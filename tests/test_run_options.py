"""Stain normalisation and test-time augmentation as viewer and kiosk settings, without Qt.

The viewer's ``ViewerModel`` offers them as the selected model allows, hands them to the run (its
``AnalysisParams`` and so the cache key and the metadata JSON); the kiosk reads them from its
settings file, leniently, and applies them to every case.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.model_spec import ModelSpec
from cellview.analysis.results import AnalysisParams
from cellview.analysis.stain import StainReference, estimate_reference
from cellview.outputs.legend import describe_run_options
from cellview.testing.synthetic import LAB_A_STAINS, make_toy_model, synthetic_he, synthetic_he_amounts
from cellview.viewer.analysis_settings import NO_MODEL_SELECTED, ModelOptions
from cellview.viewer.jobs import run_now
from cellview.viewer.kiosk.cases import process_case
from cellview.viewer.kiosk.settings import KioskSettings, KioskSettingsError
from cellview.viewer.model import ViewerModel
from cellview.viewer.settings import MemoryStore


def reference_stain() -> StainReference:
    return estimate_reference([synthetic_he(synthetic_he_amounts(256, 0), LAB_A_STAINS)])


def viewer(model_path: Path | None, **defaults) -> ViewerModel:
    m = ViewerModel(run_now, AnalysisParams(**defaults) if defaults else None, store=MemoryStore())
    m.analysis.use_cache = False
    m.set_model(str(model_path) if model_path else None)
    return m


def statuses(m: ViewerModel) -> list[str]:
    got: list[str] = []
    m.events.status.connect(lambda e: got.append(e.value))
    return got


# ----------------------------------------------------------------------------- what the model offers


def test_model_options_come_from_the_sidecar(stain_model, plain_model, tmp_path):
    assert ModelOptions.read(stain_model).stain_available
    assert ModelOptions.read(stain_model.parent).stain_available  # a model folder, as models/<name>/
    plain = ModelOptions.read(plain_model)
    assert not plain.stain_available and "toy-plain" in plain.stain_unavailable
    assert "reference stain" in plain.stain_unavailable
    assert ModelOptions.read(None).stain_unavailable == NO_MODEL_SELECTED
    assert "cannot be read" in ModelOptions.read(tmp_path / "missing.onnx").stain_unavailable
    broken = make_toy_model(tmp_path / "broken", sidecar_overrides={"stain_reference": {"macenko": []}})
    assert "stain_reference" in ModelOptions.read(broken).stain_unavailable
    for path in (stain_model, plain_model):  # the same answer as the loaded model gives
        assert ModelOptions.from_spec(ModelSpec.load(path)) == ModelOptions.read(path)
    # sidecars name no default yet: both start at "none", like the command line
    assert (plain.default_stain_normalize, plain.default_tta) == ("none", "none")


def test_normalisation_is_refused_without_a_reference_stain(plain_model):
    m = viewer(plain_model)
    said = statuses(m)
    m.settings.set(stain_normalize="macenko", tta="d4")
    assert m.settings.params.stain_normalize == "none" and m.settings.params.tta == "d4"  # TTA needs no reference
    assert said and "unavailable" in said[-1] and "toy-plain" in said[-1]
    with pytest.raises(ValueError, match="stain"):
        m.settings.set(stain_normalize="vahadane")


# ----------------------------------------------------------------------------- the run


def test_run_options_reach_the_run_its_cache_key_and_metadata(stain_model, he_slide, tmp_path):
    m = viewer(stain_model)
    m.open(he_slide)
    m.analysis.start()
    plain = m.analysis.result
    assert plain.params.stain_normalize == "none" and plain.stain == {} and describe_run_options(plain.params) == ""
    m.settings.set(stain_normalize="macenko", tta="flips")
    assert m.analysis.stale and m.analysis.result is plain  # auto-analyse off: flagged until Analyse
    m.analysis.start()
    run = m.analysis.result
    assert (run.params.stain_normalize, run.params.tta) == ("macenko", "flips") and not m.analysis.stale
    assert run.stain["applied"] == "macenko"
    key = run.params.cache_dict()
    assert key["stain_normalize"] == "macenko" and key["tta"] == "flips"
    assert "stain_normalize" not in plain.params.cache_dict() and "tta" not in plain.params.cache_dict()
    assert not np.allclose(run.probs, plain.probs)  # the colour toy model sees the normalised colours
    text = describe_run_options(run.params, run.stain)
    assert text.startswith("Macenko stain normalisation") and "Flips ×4" in text and "4 views" in text
    meta = json.loads(m.exports.export_file("json", tmp_path / "run.json").read_text())
    assert meta["parameters"]["stain_normalize"] == "macenko" and meta["parameters"]["tta"] == "flips"
    assert meta["stain_normalization"]["applied"] == "macenko"
    m.settings.set(tta="none")
    assert m.analysis.stale


def test_the_result_cache_tells_the_options_apart(stain_model, he_slide):
    m = viewer(stain_model)
    m.analysis.use_cache = True
    m.open(he_slide)
    m.analysis.start()
    m.settings.set(stain_normalize="reinhard")
    m.analysis.start()
    assert not m.analysis.result.from_cache and m.analysis.result.params.stain_normalize == "reinhard"
    m.settings.set(stain_normalize="none")
    m.analysis.start()
    assert m.analysis.result.from_cache and m.analysis.result.params.stain_normalize == "none"


def test_the_labels_count_the_views_the_model_runs():
    from cellview.analysis.classifier import TTA_MODES, tta_views
    from cellview.analysis.stain import STAIN_METHODS
    from cellview.outputs.legend import STAIN_LABELS, TTA_LABELS, TTA_VIEWS

    tiles = np.zeros((1, 4, 4, 3), np.uint8)
    assert set(STAIN_LABELS) == set(STAIN_METHODS) and set(TTA_LABELS) == set(TTA_VIEWS) == set(TTA_MODES)
    for mode in TTA_MODES:  # the cost the panel states is the cost the model pays
        assert len(tta_views(tiles, mode)) == TTA_VIEWS[mode]
        assert mode == "none" or TTA_LABELS[mode].endswith(f"×{TTA_VIEWS[mode]}")


def test_skipped_normalisation_is_said(stain_model):
    params = AnalysisParams(stain_normalize="reinhard")
    skipped = {"requested": "reinhard", "applied": "none",
               "note": "reinhard stain normalisation skipped: no readable tissue tile"}
    assert describe_run_options(params, skipped) == "Reinhard stain normalisation skipped: no readable tissue tile"


def test_changing_a_run_option_reruns_with_auto_analyse(stain_model, he_slide):
    m = viewer(stain_model)
    m.analysis.auto_analyse = True
    m.open(he_slide)
    first = m.analysis.result
    assert first is not None and first.params.tta == "none"
    running: list[bool] = []
    m.analysis.events.running.connect(lambda e: running.append(e.value))
    m.settings.set(tta="d4")
    assert running == [True, False] and m.analysis.result is not first and m.analysis.result.params.tta == "d4"
    assert not m.analysis.stale
    m.settings.set(tissue_threshold=0.5)  # other settings wait for Analyse, as before
    assert running == [True, False] and m.analysis.stale


# ----------------------------------------------------------------------------- across models


def test_a_choice_survives_a_model_that_cannot_honour_it(stain_model, plain_model):
    m = viewer(stain_model)
    m.settings.set(stain_normalize="macenko", tta="flips")
    options: list[ModelOptions] = []
    m.settings.events.model_options.connect(lambda e: options.append(e.value))
    said = statuses(m)
    m.set_model(str(plain_model))
    assert m.settings.params.stain_normalize == "none" and m.settings.params.tta == "flips"
    assert not options[-1].stain_available and "off for this model" in said[-1]
    m.set_model(str(stain_model))
    assert m.settings.params.stain_normalize == "macenko" and options[-1].stain_available


def test_model_defaults_apply_until_the_user_chooses(stain_model):
    m = viewer(stain_model)
    m.settings.set_model_options(ModelOptions(stain_unavailable="", default_stain_normalize="reinhard",
                                              default_tta="d4"))
    assert (m.settings.params.stain_normalize, m.settings.params.tta) == ("reinhard", "d4")  # preselected for the model
    m.settings.set(tta="none")
    m.settings.set_model_options(ModelOptions(stain_unavailable="", default_stain_normalize="macenko",
                                              default_tta="flips"))
    assert (m.settings.params.stain_normalize, m.settings.params.tta) == ("macenko", "none")  # the user's choice stays
    # launch options (`cellview --stain-normalize reinhard`) are a choice too, applied once a model allows them
    launched = viewer(None, stain_normalize="reinhard")
    assert launched.settings.params.stain_normalize == "none"
    launched.set_model(str(stain_model))
    assert launched.settings.params.stain_normalize == "reinhard"


# ----------------------------------------------------------------------------- kiosk settings


def test_kiosk_settings_parse_and_reach_the_case_params(tmp_path):
    s = KioskSettings(stain_normalize="reinhard", tta="d4")
    assert KioskSettings.load(s.save(tmp_path / "kiosk.json")) == s
    params = s.analysis_params(224, available_bytes=2 << 30)
    assert (params.stain_normalize, params.tta) == ("reinhard", "d4")
    assert KioskSettings().analysis_params(224, 2 << 30).stain_normalize == "none"


@pytest.mark.parametrize("data, words", [
    ({"stain_normalize": "vahadane"}, "'stain_normalize' must be one of 'none', 'macenko', 'reinhard'"),
    ({"stain_normalize": True}, "'stain_normalize'"),
    ({"tta": "d8"}, "'tta' must be one of 'none', 'flips', 'd4'"),
    ({"tta": 4}, "'tta'"),
])
def test_kiosk_rejects_bad_run_options(tmp_path, data, words):
    file = tmp_path / "kiosk.json"
    file.write_text(json.dumps(data))
    with pytest.raises(KioskSettingsError, match=words):
        KioskSettings.load(file)


def test_kiosk_lenient_loader_keeps_good_run_options_and_drops_bad_ones(tmp_path):
    file = tmp_path / "kiosk.json"
    file.write_text(json.dumps({"stain_normalize": "vahadane", "tta": "flips", "idle_s": 30}))
    loaded = KioskSettings.load_lenient(file)
    assert (loaded.settings.stain_normalize, loaded.settings.tta, loaded.settings.idle_s) == ("none", "flips", 30.0)
    (problem,) = loaded.problems
    assert problem.message.startswith(f"{file}: ") and "'stain_normalize'" in problem.message
    assert "its default applies" in problem.message
    loaded = KioskSettings.load_lenient(file, stain_normalize="macenko", tta="d8")  # the command line, one by one
    assert (loaded.settings.stain_normalize, loaded.settings.tta) == ("macenko", "flips")
    assert any(p.message.startswith("Command line: ") and "'tta'" in p.message for p in loaded.problems)


def test_kiosk_drops_normalisation_its_model_cannot_do(tmp_path, stain_model, plain_model):
    s = KioskSettings(stain_normalize="macenko", tta="flips")
    same, problems = s.for_model(ModelSpec.load(stain_model), "kiosk.json: ")
    assert same is s and problems == ()
    kept, (problem,) = s.for_model(ModelSpec.load(plain_model), "kiosk.json: ")
    assert (kept.stain_normalize, kept.tta) == ("none", "flips")
    assert problem.message.startswith("kiosk.json: ") and "'stain_normalize'" in problem.message
    assert "toy-plain" in problem.message and "Ignored" in problem.message


def test_kiosk_case_runs_and_records_the_options(tmp_path, stain_model, he_slide):
    settings = KioskSettings(outbox_dir=tmp_path / "out", stain_normalize="macenko", tta="flips",
                             formats=("json",), workers=1)
    case = process_case(he_slide, OnnxClassifier(ModelSpec.load(stain_model), device="cpu"), settings)
    assert case.ok, case.message
    meta = json.loads(case.outputs["json"].read_text())
    assert meta["parameters"]["stain_normalize"] == "macenko" and meta["parameters"]["tta"] == "flips"
    assert meta["stain_normalization"]["applied"] == "macenko"


def cam_model_with_reference(folder: Path) -> Path:
    """The toy class-activation-map net with a reference stain in its sidecar."""
    pytest.importorskip("onnx")
    from cellview.testing.synthetic import make_toy_cam_model

    path = make_toy_cam_model(folder, patch_px=64, spacing_um=1.0)
    sidecar = path.with_suffix(".json")
    side = json.loads(sidecar.read_text())
    side["stain_reference"] = reference_stain().to_dict()
    sidecar.write_text(json.dumps(side))
    return path


def test_explain_shows_the_tile_the_model_classified_after_stain_normalisation(tmp_path, he_slide):
    from cellview.analysis.explain import explain_at
    from cellview.analysis.pipeline import run_analysis

    path = cam_model_with_reference(tmp_path / "cam")
    clf = OnnxClassifier(ModelSpec.load(path), device="cpu")
    params = AnalysisParams(stain_normalize="macenko", workers=1)
    result = run_analysis(he_slide, clf, params)
    i = int(np.flatnonzero(result.done)[0])
    x, y, w, h = result.grid.rect(i)
    ex = explain_at(he_slide, clf, x + w / 2, y + h / 2, params)
    assert np.allclose(ex.probs, result.probs[i], atol=1e-5)
    scanned = explain_at(he_slide, clf, x + w / 2, y + h / 2, AnalysisParams(workers=1))
    assert not np.array_equal(scanned.patch, ex.patch)  # normalisation changed what the model saw


def test_the_inspector_explains_the_normalised_tile_and_fits_the_stain_once(tmp_path, he_slide, monkeypatch):
    import cellview.viewer.explain as viewer_module

    fits = []
    fit = viewer_module.slide_stain_transform
    monkeypatch.setattr(viewer_module, "slide_stain_transform", lambda *a: fits.append(a) or fit(*a))
    m = viewer(cam_model_with_reference(tmp_path / "cam"), stain_normalize="macenko", workers=1)
    m.open(he_slide)
    m.analysis.start()
    done = np.flatnonzero(m.analysis.result.done)
    m.explain.set_on(True)
    for i in done[:2]:
        m.selection.select(int(i))
        assert m.explain.current.state == "ready", m.explain.current.message
        assert np.allclose(m.explain.current.explanation.probs, m.analysis.result.probs[i], atol=1e-5)
    assert len(fits) == 1  # one stain estimate per result, not per explained tile
