"""INT8 copies (cellview.train.quantize) and ``--precision``: which copy runs, and that results say so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.model_spec import ModelSpec, choose_precision, precision_copy, precision_path
from cellview.base.errors import ModelError

onnx = pytest.importorskip("onnx")

from cellview.analysis.onnx_graph import find_linear_head  # noqa: E402
from cellview.testing.synthetic import make_toy_cam_model, square_tile  # noqa: E402
from cellview.train.quantize import (  # noqa: E402
    AGREEMENT_MIN,
    card_section,
    gptq_round,
    int8_sidecar,
    quantize_onnx,
    verdict,
)


def _tiles(n: int = 48, seed: int = 0) -> np.ndarray:
    """Coloured squares on grey at random places (what the toy CAM net tells apart), plus noise."""
    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 40, 220), (40, 200, 40)]
    out = [square_tile(colours[i % 3], (int(rng.integers(0, 48)), int(rng.integers(0, 48)))) for i in range(n)]
    tiles = np.stack(out).astype(np.int16) + rng.integers(-12, 13, (n, 64, 64, 3))
    return np.clip(tiles, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory) -> Path:
    """The toy CAM model with an INT8 copy; ``validated`` decides whether ``auto`` may pick it."""
    folder = tmp_path_factory.mktemp("int8")
    path = make_toy_cam_model(folder)
    dst = precision_path(path, "int8")
    info = quantize_onnx(path, dst, _tiles())
    spec = ModelSpec.load(path)
    side = int8_sidecar(spec, dst, info, {"passed": True, "reasons": [], "sets": {}})
    dst.with_suffix(".json").write_text(json.dumps(side))
    return path


def _set_validation(path: Path, passed: bool, reasons: list[str]) -> None:
    side_path = precision_path(path, "int8").with_suffix(".json")
    side = json.loads(side_path.read_text())
    side["validation"] = {"passed": passed, "reasons": reasons}
    side_path.write_text(json.dumps(side))


def test_int8_copy_keeps_outputs_head_and_exact_maps(int8_model):
    fp32 = ModelSpec.load(int8_model)
    copy = ModelSpec.load(precision_path(int8_model, "int8"))
    assert copy.precision == "int8" and copy.raw["quantization"]["source_onnx_sha256"] == fp32.onnx_sha256
    q = onnx.load(str(copy.onnx_path))
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # quantised for real
    assert [o.name for o in q.graph.output] == ["logits", "features", "feature_map", "cam"]
    # The head stays float under its own names, where cellview.analysis.onnx_graph finds it (issue 18 swaps it there).
    gemm = next(n for n in q.graph.node if n.op_type == "Gemm")
    assert list(gemm.input[1:]) == ["fc.weight", "fc.bias"]
    cam = next(n for n in q.graph.node if n.name == "cellview_cam")
    assert list(cam.input[1:]) == ["cam_weight", "cam_bias"]
    head, ref = find_linear_head(q), find_linear_head(onnx.load(str(int8_model)))
    assert np.array_equal(head.weight, ref.weight) and np.array_equal(head.bias, ref.bias)
    tiles = _tiles(24, seed=1)
    a = OnnxClassifier(fp32, device="cpu", precision="fp32")
    b = OnnxClassifier(fp32, device="cpu", precision="int8")
    la, _ = a.run(tiles, ("logits", "cam"))
    lb, cb = b.run(tiles, ("logits", "cam"))
    assert np.abs(cb.mean(axis=(2, 3)) - lb).max() < 1e-4  # the maps stay exact: mean = logit
    assert (la.argmax(1) == lb.argmax(1)).all()
    assert np.abs(la - lb).max() < 0.05 * np.abs(la).max()


def test_gptq_rounds_onto_the_grid_with_less_output_error_than_rounding():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(32, 32))
    x = rng.normal(size=(4000, 32)) @ mix  # correlated inputs, as a layer's are
    w = rng.normal(size=(16, 32))
    scale = np.abs(w).max(axis=1) / 127
    q = gptq_round(w, x.T @ x, scale)
    steps = q / scale[:, None]
    assert np.allclose(steps, np.round(steps)) and np.abs(np.round(steps)).max() <= 127
    rtn = np.clip(np.round(w / scale[:, None]), -127, 127) * scale[:, None]
    err_gptq = np.linalg.norm(x @ (w - q).T)
    err_rtn = np.linalg.norm(x @ (w - rtn).T)
    assert err_gptq < 0.8 * err_rtn


def test_auto_runs_int8_on_a_cpu_only_when_validated(int8_model):
    spec = ModelSpec.load(int8_model)
    _set_validation(int8_model, True, [])
    clf = OnnxClassifier(spec, device="cpu")
    assert clf.precision == "int8" and clf.spec.precision == "int8" and clf.spec.name == spec.name
    assert clf.provider_label == "CPU (INT8)" and "on CPU (INT8)" in clf.describe()
    _set_validation(int8_model, False, ["top-category agreement 98.00% < 99% on somewhere"])
    clf = OnnxClassifier(spec, device="cpu")
    assert clf.precision == "fp32" and clf.provider_label == "CPU"
    assert "INT8 copy not used (top-category agreement" in clf.describe()
    forced = OnnxClassifier(spec, device="cpu", precision="int8")  # asked for: runs, and says it is not validated
    assert forced.precision == "int8" and "not validated" in forced.describe()
    _set_validation(int8_model, True, [])


def test_precision_choices_without_copies_and_on_a_gpu(tmp_path, int8_model):
    plain = ModelSpec.load(make_toy_cam_model(tmp_path / "plain"))
    assert choose_precision(plain, "auto", gpu=False, tensorrt=False)[1] == "fp32"
    with pytest.raises(ModelError, match="ships no INT8 copy"):
        choose_precision(plain, "int8", gpu=False, tensorrt=False)
    with pytest.raises(ModelError, match="ships no FP16 copy"):
        choose_precision(plain, "fp16", gpu=True, tensorrt=False)
    spec = ModelSpec.load(int8_model)
    assert choose_precision(spec, "auto", gpu=True, tensorrt=True)[:2] == (precision_copy(spec, "fp32"), "fp16")
    assert choose_precision(spec, "auto", gpu=True, tensorrt=False)[1] == "fp32"  # no FP16 copy: FP32 on CUDA
    with pytest.raises(ModelError, match="Unknown precision"):
        choose_precision(spec, "int4", gpu=False, tensorrt=False)


def test_a_copy_made_from_other_weights_is_ignored(tmp_path, int8_model):
    folder = tmp_path / "stale"
    folder.mkdir()
    for f in int8_model.parent.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    side = json.loads((folder / "model.int8.json").read_text())
    side["quantization"]["source_onnx_sha256"] = "0" * 64
    (folder / "model.int8.json").write_text(json.dumps(side))
    spec = ModelSpec.load(folder / "model.onnx")
    assert precision_copy(spec, "int8") is None
    assert OnnxClassifier(spec, device="cpu").precision == "fp32"


def test_results_metadata_and_cache_key_say_which_copy_ran(int8_model, synthetic_slide, tmp_path):
    from cellview.analysis.cache import ResultCache
    from cellview.analysis.pipeline import run_analysis
    from cellview.analysis.results import AnalysisParams
    from cellview.outputs.export import metadata_dict

    spec = ModelSpec.load(int8_model)
    cache = ResultCache(tmp_path / "cache")
    results = {}
    for precision in ("fp32", "int8"):
        clf = OnnxClassifier(spec, device="cpu", precision=precision)
        params = AnalysisParams(precision=precision, mpp_um=0.5)
        results[precision] = run_analysis(synthetic_slide, clf, params, cache=cache)
    a, b = results["fp32"], results["int8"]
    assert not a.from_cache and not b.from_cache  # another copy of the weights is another cache entry
    assert (a.model.precision, b.model.precision) == ("fp32", "int8")
    assert b.provider == "CPU (INT8)" and b.model.sha256 == precision_copy(spec, "int8").onnx_sha256
    meta = metadata_dict(b)
    assert meta["model"]["precision"] == "int8" and meta["parameters"]["precision"] == "int8"
    again = run_analysis(synthetic_slide, OnnxClassifier(spec, device="cpu", precision="int8"),
                         AnalysisParams(precision="int8", mpp_um=0.5), cache=cache)
    assert again.from_cache and again.model.precision == "int8"


def test_verdict_names_each_failed_threshold_and_the_card_says_why():
    report = {
        "sets": {"a": {"tiles": 100, "top_category_agreement": 0.995, "domain_score_agreement": 0.999,
                       "domain_flag_agreement": 0.999},
                 "b": {"tiles": 50, "top_category_agreement": 0.98, "domain_score_agreement": 0.97,
                       "domain_flag_agreement": 0.995},
                 "empty": {"tiles": 0}},
        "cam": {"produced": True, "cam_mean_vs_logit_max_abs_diff": 1e-6},
        "protocol": {"loso": {"max_abs_diff": 0.02, "figures": {"x (vote)": {"fp32": 0.6, "int8": 0.62, "diff": 0.02}}}},
    }
    reasons = verdict(report, has_domain=True)
    assert any("top-category agreement 98.00% < 99% on b" in r for r in reasons)
    assert any("domain score agreement 97.00%" in r for r in reasons)
    assert any("LOSO figure x (vote) moves by +0.020" in r for r in reasons)
    assert not any(" on a" in r for r in reasons) and AGREEMENT_MIN == 0.99
    assert verdict({"sets": report["sets"] | {"b": report["sets"]["a"]}, "cam": report["cam"]}, True) == []

    class Spec:
        raw = {"quantization": {"calibration": {"tiles": 10, "per_source": {"s": 10}}},
               "validation": {"passed": False, "reasons": reasons, "sets": report["sets"], "protocol": report["protocol"]}}

    card = card_section(Spec())  # type: ignore[arg-type]
    assert card.startswith("## INT8 copy for CPUs") and "Not used by `--precision auto`:" in card
    assert "| b | 50 | 98.00% |" in card
