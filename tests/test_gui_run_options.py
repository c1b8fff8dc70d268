"""Stain normalisation and test-time augmentation in the viewer's Analysis panel and in the kiosk (pytest-qt)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from cellview.viewer.kiosk.settings import KioskSettings  # noqa: E402

TIMEOUT_MS = 30000


pytestmark = pytest.mark.usefixtures("isolated_settings")  # conftest: never the user's settings


def make_window(qtbot, model: Path, auto: bool = False):
    from cellview.gui.app import make_app
    from cellview.gui.desktop.window import MainWindow

    make_app()
    window = MainWindow()
    window.errors = []
    window.show_error = lambda exc, title="": window.errors.append(exc)
    qtbot.addWidget(window)
    window.run_controls.auto_box.setChecked(auto)
    window.use_cache = False
    window.resize(1400, 900)
    window.show()
    assert window.add_model(model)
    return window


def choose(box, value: str) -> None:
    """Pick an entry by its data, as a click on the combo box would (its signal fires)."""
    index = box.findData(value)
    assert index >= 0, value
    box.setCurrentIndex(index)


def test_panel_controls_set_the_run_and_show_in_its_details(qtbot, stain_model, he_slide):
    window = make_window(qtbot, stain_model)
    assert window.run_controls.stain_box.isEnabled() and "training data" in window.run_controls.stain_box.toolTip()
    assert "4×" in window.run_controls.tta_box.toolTip() and "8×" in window.run_controls.tta_box.toolTip()  # the cost, said
    assert window.run_controls.stain_box.currentData() == "none" and window.run_controls.tta_box.currentData() == "none"
    with qtbot.waitSignal(window.viewer.slideOpened, timeout=TIMEOUT_MS):
        window.open_path(he_slide)
    choose(window.run_controls.stain_box, "reinhard")
    choose(window.run_controls.tta_box, "d4")
    assert (window.model.settings.params.stain_normalize, window.model.settings.params.tta) == ("reinhard", "d4")
    with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS) as blocker:
        window.start_analysis()
        assert not window.run_controls.stain_box.isEnabled() and not window.run_controls.tta_box.isEnabled()  # not while it runs
    result = blocker.args[0]
    assert (result.params.stain_normalize, result.params.tta) == ("reinhard", "d4")
    assert result.params.cache_dict()["stain_normalize"] == "reinhard" and result.params.cache_dict()["tta"] == "d4"
    assert window.run_controls.stain_box.isEnabled() and window.run_controls.tta_box.isEnabled()
    summary = window.viewer.heatmap.summary_label.text()
    assert "Reinhard stain normalisation" in summary and "D4 ×8" in summary
    choose(window.run_controls.tta_box, "none")
    assert "Settings changed since this result" in window.viewer.heatmap.summary_label.text()  # stale until Analyse
    assert window.errors == []
    assert window.shutdown(20000)


def test_normalisation_is_disabled_with_the_reason_for_a_model_without_reference(qtbot, stain_model, plain_model):
    window = make_window(qtbot, stain_model)
    choose(window.run_controls.stain_box, "macenko")
    assert window.add_model(plain_model)
    assert not window.run_controls.stain_box.isEnabled() and window.run_controls.stain_box.currentData() == "none"
    assert "toy-plain does not store the reference stain" in window.run_controls.stain_box.toolTip()
    assert window.run_controls.stain_hint.isVisible() and "unavailable" in window.run_controls.stain_hint.text()
    assert window.run_controls.tta_box.isEnabled()
    assert window.model.settings.params.stain_normalize == "none"
    assert window.add_model(stain_model)  # back to a model that can: the choice returns
    assert window.run_controls.stain_box.isEnabled() and window.run_controls.stain_box.currentData() == "macenko"
    assert not window.run_controls.stain_hint.isVisible()
    assert window.shutdown(20000)


def test_changing_an_option_reruns_with_auto_analyse(qtbot, stain_model, he_slide):
    window = make_window(qtbot, stain_model, auto=True)
    with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS) as blocker:
        window.open_path(he_slide)
    assert blocker.args[0].params.stain_normalize == "none"
    with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS,
                          check_params_cb=lambda r: r.params.stain_normalize == "macenko") as blocker:
        choose(window.run_controls.stain_box, "macenko")
    assert blocker.args[0].stain["applied"] == "macenko" and not window.model.analysis.stale
    assert window.shutdown(20000)


@pytest.fixture(scope="module")
def int8_cam_model(tmp_path_factory) -> Path:
    """The toy CAM model with a validated INT8 copy (what ``--precision auto`` runs on a CPU)."""
    pytest.importorskip("onnx")
    import numpy as np

    from cellview.analysis.model_spec import ModelSpec, precision_path
    from cellview.testing.synthetic import make_toy_cam_model
    from cellview.train.quantize import int8_sidecar, quantize_onnx

    path = make_toy_cam_model(tmp_path_factory.mktemp("int8-gui"), patch_px=64, spacing_um=1.0)
    tiles = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    dst = precision_path(path, "int8")
    info = quantize_onnx(path, dst, tiles)
    side = int8_sidecar(ModelSpec.load(path), dst, info, {"passed": True, "reasons": []})
    dst.with_suffix(".json").write_text(json.dumps(side))
    return path


def test_precision_choice_runs_that_copy_and_the_status_bar_says_which(qtbot, int8_cam_model, he_slide):
    window = make_window(qtbot, int8_cam_model)
    assert window.run_controls.precision_box.currentData() == "auto" and "validation" in window.run_controls.precision_box.toolTip()
    with qtbot.waitSignal(window.viewer.slideOpened, timeout=TIMEOUT_MS):
        window.open_path(he_slide)
    with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS) as blocker:
        window.start_analysis()
    assert blocker.args[0].model.precision == "int8" and "CPU (INT8)" in window.status.provider_label.text()
    choose(window.run_controls.precision_box, "fp32")
    assert window.model.settings.params.precision == "fp32" and window.model.analysis.stale  # another copy: re-analyse
    with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS) as blocker:
        window.start_analysis()
    assert blocker.args[0].model.precision == "fp32" and "INT8" not in window.status.provider_label.text()
    assert window.errors == []
    assert window.shutdown(20000)


# ----------------------------------------------------------------------------- kiosk


def make_kiosk(qtbot, tmp_path: Path, model: Path, config: dict):
    from cellview.cli.viewer import build_gui_parser
    from cellview.gui.app import make_app
    from cellview.gui.kiosk import build_kiosk

    (tmp_path / "watch").mkdir(exist_ok=True)
    values = dict(watch_dir=str(tmp_path / "watch"), outbox_dir=str(tmp_path / "outbox"), idle_s=0,
                  settle_s=0.4, poll_s=0.1, png_size_px=256, workers=1, formats=["json"])
    values.update(config)
    file = tmp_path / "kiosk.json"
    file.write_text(json.dumps(values))
    args = build_gui_parser().parse_args(["--kiosk", "--kiosk-config", str(file), "--model", str(model),
                                          "--device", "cpu"])
    make_app()
    window = build_kiosk(args)
    qtbot.addWidget(window, before_close_func=lambda w: w.exit_kiosk())
    with qtbot.waitSignal(window.modelReady, timeout=TIMEOUT_MS):
        window.start()
    qtbot.waitExposed(window)
    return window


def run_case(qtbot, kiosk, path):
    with qtbot.waitSignal(kiosk.caseFinished, timeout=TIMEOUT_MS) as blocker:
        kiosk.enqueue(path)
    return blocker.args[0]


def test_kiosk_settings_apply_to_every_case_and_are_shown(qtbot, tmp_path, stain_model, he_slide):
    kiosk = make_kiosk(qtbot, tmp_path, stain_model, {"stain_normalize": "macenko", "tta": "flips"})
    assert not kiosk.cards.settings_card.isVisible() and kiosk.settings_problems == ()
    line = kiosk.waiting.run_options_label.text()
    assert kiosk.waiting.run_options_label.isVisible() and "toy-stain" in line and "Macenko" in line and "Flips ×4" in line
    assert "weights: FP32" in line  # the toy model ships no INT8 copy: auto runs FP32
    case = run_case(qtbot, kiosk, he_slide)
    assert case.ok, case.message
    result = kiosk.model.analysis.result
    assert (result.params.stain_normalize, result.params.tta) == ("macenko", "flips")
    assert result.stain["applied"] == "macenko"
    meta = json.loads(case.outputs["json"].read_text())
    assert meta["parameters"]["stain_normalize"] == "macenko" and meta["parameters"]["tta"] == "flips"
    summary = kiosk.viewer.heatmap.summary_label.text()
    assert "Macenko stain normalisation" in summary and "Settings changed" not in summary


def test_kiosk_drops_a_bad_value_and_normalisation_its_model_cannot_do(qtbot, tmp_path, plain_model, he_slide):
    kiosk = make_kiosk(qtbot, tmp_path, plain_model, {"stain_normalize": "macenko", "tta": "d8"})
    assert (kiosk.settings.stain_normalize, kiosk.settings.tta) == ("none", "none")
    text = kiosk.cards.settings_label.text()
    assert kiosk.cards.settings_card.isVisible() and "'tta'" in text and "'stain_normalize'" in text
    assert "toy-plain" in text and str(tmp_path / "kiosk.json") in text
    assert "stain normalisation: None" in kiosk.waiting.run_options_label.text()
    case = run_case(qtbot, kiosk, he_slide)  # cases run, without normalisation, instead of all failing
    assert case.ok, case.message
    assert json.loads(case.outputs["json"].read_text())["parameters"]["stain_normalize"] == "none"


def test_kiosk_command_line_sets_the_options(tmp_path):
    from cellview.cli.viewer import build_gui_parser
    from cellview.gui.kiosk import settings_from_args

    file = tmp_path / "kiosk.json"
    KioskSettings(tta="flips").save(file)
    args = build_gui_parser().parse_args(["--kiosk", "--kiosk-config", str(file), "--stain-normalize", "reinhard"])
    settings = settings_from_args(args).settings
    assert (settings.stain_normalize, settings.tta) == ("reinhard", "flips")  # `--tta none` is "not given"
    args = build_gui_parser().parse_args(["--kiosk", "--kiosk-config", str(file), "--tta", "d4"])
    assert settings_from_args(args).settings.tta == "d4"


def test_kiosk_precision_from_its_file_and_the_command_line(tmp_path):
    from cellview.cli.viewer import build_gui_parser
    from cellview.gui.kiosk import settings_from_args
    from cellview.viewer.kiosk.settings import KioskSettingsError

    file = tmp_path / "kiosk.json"
    KioskSettings(precision="fp32").save(file)
    args = build_gui_parser().parse_args(["--kiosk", "--kiosk-config", str(file)])
    settings = settings_from_args(args).settings
    assert settings.precision == "fp32" and settings.analysis_params(224).precision == "fp32"
    args = build_gui_parser().parse_args(["--kiosk", "--kiosk-config", str(file), "--precision", "int8"])
    assert settings_from_args(args).settings.precision == "int8"
    with pytest.raises(KioskSettingsError, match="'precision' must be one of"):
        KioskSettings(precision="int4")
