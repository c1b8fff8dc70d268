"""Smear images need no option: a model whose sidecar declares how it reads an image without a pixel size and a
foreground rule for smears is run by `cellview analyze SMEARS/ --model M` alone, and the run says what it assumed.
The H&E models' behaviour is unchanged (an image without a pixel size still needs --mpp)."""

from __future__ import annotations

import json

import cv2
import pytest

from cellview.analysis.model_spec import ModelSpec
from cellview.base.errors import ModelError
from cellview.cli import build_parser
from cellview.testing.synthetic import make_toy_model, synthetic_smear

SMEAR_READING = {
    "foreground": {"rule": "stained-cells", "fallback": "whole-field"},
    "unstated_pixel_size": {"read": "field", "field_um": 100, "note": "its training images are 100 µm fields"},
}


def _smears(folder):
    folder.mkdir()
    for k, (cells, tint) in enumerate(((1, "grey"), (2, "pink"), (0, "grey"))):
        rgb, _ = synthetic_smear(224, seed=10 + k, white_cells=cells, tint=tint)
        cv2.imwrite(str(folder / f"smear-{k + 1:03d}.png"), rgb[..., ::-1])
    return folder


def test_smear_images_run_without_any_option_and_the_run_says_what_it_assumed(tmp_path, capsys):
    model = make_toy_model(tmp_path / "toy-smear", patch_px=64, spacing_um=0.225, name="toy-smear",
                           sidecar_overrides=SMEAR_READING)
    smears = _smears(tmp_path / "smears")
    out = tmp_path / "out"
    args = build_parser().parse_args(["analyze", str(smears), "--model", str(model), "--out", str(out), "-q"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert "3 analysed" in captured.err and "0 failed" in captured.err
    assert "states no pixel size: taken as one field 100 µm wide" in captured.out + captured.err
    for k in (1, 2, 3):
        meta = json.loads((out / f"smear-{k:03d}.json").read_text())
        assert meta["slide"]["mpp_source"] == "field width assumed by the model" and meta["slide"]["mpp_approximate"]
        assert meta["slide"]["mpp_um"]["x"] == pytest.approx(100 / 224)
        assert "one field 100 µm wide" in meta["reading"]["pixel_size"]
        assert "nucleus-stained cell" in meta["reading"]["foreground"]
        assert meta["tiles"]["done"] >= 1  # every image is read, the one without a white cell whole-field
        assert meta["parameters"]["mpp_um"] is None and not meta["parameters"]["whole_image"]  # the user's own
    full = json.loads((out / "smear-003.json").read_text())["tiles"]["done"]
    cells = json.loads((out / "smear-001.json").read_text())["tiles"]["done"]
    assert cells < full  # stained cells only where there are some; the whole field where there are none


def test_whole_image_rule_and_an_h_and_e_model_without_it(tmp_path, capsys):
    smears = _smears(tmp_path / "smears")
    whole = make_toy_model(tmp_path / "whole", patch_px=64, spacing_um=0.45, name="toy-whole",
                           sidecar_overrides={"unstated_pixel_size": {"read": "whole-image"}})
    args = build_parser().parse_args(["analyze", str(smears / "smear-001.png"), "--model", str(whole),
                                      "--out", str(tmp_path / "w"), "-q"])
    assert args.func(args) == 0
    meta = json.loads((tmp_path / "w" / "smear-001.json").read_text())
    assert meta["grid"]["whole_image"] and meta["tiles"]["done"] == 1 and "resized to 64 px" in meta["reading"]["pixel_size"]
    capsys.readouterr()
    he = make_toy_model(tmp_path / "he", patch_px=64, spacing_um=0.5, name="toy-he")  # no reading rules: as before
    args = build_parser().parse_args(["analyze", str(smears / "smear-001.png"), "--model", str(he),
                                      "--out", str(tmp_path / "h"), "-q"])
    assert args.func(args) == 1
    assert "--mpp" in capsys.readouterr().err
    assert ModelSpec.load(he).reading.is_default and "reading" not in json.loads((he.parent / "model.json").read_text())


@pytest.mark.parametrize("entry, message", [
    ({"foreground": {"rule": "nuclei"}}, "'foreground' must be an object whose 'rule' is one of"),
    ({"unstated_pixel_size": {"read": "field"}}, "needs 'field_um'"),
    ({"foreground": {"rule": "stained-cells", "min_fraction": -1}}, "'min_fraction' must be a number from 0 to 1"),
])
def test_a_bad_reading_entry_fails_on_load_with_a_clear_message(tmp_path, capsys, entry, message):
    model = make_toy_model(tmp_path / "bad", sidecar_overrides=entry)
    with pytest.raises(ModelError, match=message):
        ModelSpec.load(model)
    args = build_parser().parse_args(["analyze", str(tmp_path), "--model", str(model), "--out", str(tmp_path / "o")])
    assert args.func(args) == 2
    assert message.split("'")[1] in capsys.readouterr().err


def test_the_viewer_launch_reads_a_smear_as_its_model_declares(tmp_path, capsys):
    from cellview.cli.viewer import build_gui_parser, scale_from_model

    model = make_toy_model(tmp_path / "toy-smear", patch_px=64, spacing_um=0.225, name="toy-smear",
                           sidecar_overrides=SMEAR_READING)
    smear = _smears(tmp_path / "smears") / "smear-001.png"
    args = build_gui_parser().parse_args([str(smear), "--model", str(model)])
    scale_from_model(args)
    # said as analyze says it; the viewer applies the rule to each image it opens (no --mpp for every later image)
    assert args.mpp is None and not args.whole_image
    assert "one field 100 µm wide" in capsys.readouterr().err
    given = build_gui_parser().parse_args([str(smear), "--model", str(model), "--mpp", "0.3"])
    scale_from_model(given)
    assert given.mpp == 0.3  # the user's own word wins
    he = make_toy_model(tmp_path / "he", name="toy-he")
    plain = build_gui_parser().parse_args([str(smear), "--model", str(he)])
    scale_from_model(plain)
    assert plain.mpp is None and not plain.whole_image  # an H&E model: the viewer asks, as before
