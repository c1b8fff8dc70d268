"""Sidecar validation, input preparation and provider choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cellview.analysis.classifier import OnnxClassifier, probabilities
from cellview.analysis.model_spec import ModelSpec
from cellview.base.errors import ModelError
from cellview.testing.synthetic import TOY_COLORS, make_toy_model


def _tiles(color, n=2, px=64):
    return np.tile(np.array(color, np.uint8), (n, px, px, 1))


def test_toy_model_follows_colour(toy_model):
    clf = OnnxClassifier(ModelSpec.load(toy_model), device="cpu")
    for k, name in enumerate(clf.spec.class_names):
        probs = clf.predict(_tiles(TOY_COLORS[name]))
        assert probs.shape == (2, 3) and probs.dtype == np.float32
        assert np.argmax(probs[0]) == k and probs[0, k] > 0.9
        assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_float_nchw_model_gives_the_same_answer(tmp_path, toy_model):
    nchw = make_toy_model(tmp_path / "nchw", patch_px=64, spacing_um=1.0, layout="NCHW", dtype="float32")
    a = OnnxClassifier(ModelSpec.load(toy_model), device="cpu")
    b = OnnxClassifier(ModelSpec.load(nchw), device="cpu")
    tiles = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    assert np.allclose(a.predict(tiles), b.predict(tiles), atol=1e-4)


def test_load_by_folder_sidecar_or_onnx(toy_model):
    for p in (toy_model, toy_model.with_suffix(".json"), toy_model.parent):
        assert ModelSpec.load(p).class_names == ("malignant", "benign", "normal")


def test_temperature_and_activation():
    logits = np.array([[2.0, 0.0, -2.0]], np.float32)
    sharp, soft = probabilities(logits, "softmax", 1.0), probabilities(logits, "softmax", 4.0)
    assert sharp[0, 0] > soft[0, 0] > 1 / 3
    assert np.allclose(probabilities(logits, "sigmoid"), 1 / (1 + np.exp(-logits)))


def _write_sidecar(model_path, **changes):
    sidecar = model_path.with_suffix(".json")
    data = json.loads(sidecar.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    sidecar.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"num_classes": 4}, "num_classes=4 but lists 3"),
        ({"class_categories": ["malignant", "benign", "cancerous"]}, "unknown category 'cancerous'"),
        ({"class_categories": ["malignant", "benign"]}, "one category per class"),
        ({"class_colors": ["red", "green", "blue"]}, "colours like"),
        ({"patch_size_pixels": None}, "no 'patch_size_pixels'"),
        ({"spacing_um_px": -1}, "spacing_um_px"),
        ({"activation": "relu"}, "activation"),
        ({"onnx_sha256": "0" * 64}, "does not match its sidecar"),
        ({"input": {"layout": "HWC"}}, "layout"),
        ({"input": {"dtype": "float32"}}, "takes tensor\\(uint8\\) but its sidecar says float32"),
        ({"patch_size_pixels": [64, 32]}, "square"),
    ],
)
def test_sidecar_errors_are_specific(tmp_path, changes, match):
    path = make_toy_model(tmp_path / "m", patch_px=64)
    _write_sidecar(path, **changes)
    with pytest.raises(ModelError, match=match):
        OnnxClassifier(ModelSpec.load(path), device="cpu")


def test_missing_and_broken_sidecar(tmp_path):
    path = make_toy_model(tmp_path / "m")
    sidecar = path.with_suffix(".json")
    sidecar.write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        ModelSpec.load(path)
    sidecar.unlink()
    with pytest.raises(ModelError, match="has no sidecar model.json"):
        ModelSpec.load(path)
    with pytest.raises(ModelError, match="does not exist"):
        ModelSpec.load(tmp_path / "none.onnx")


def test_wrong_input_shape_and_class_count(tmp_path):
    fixed = make_toy_model(tmp_path / "fixed", patch_px=64, fixed_hw=256)
    with pytest.raises(ModelError, match="takes 256×256 inputs but its sidecar says 64×64"):
        OnnxClassifier(ModelSpec.load(fixed), device="cpu")
    four = make_toy_model(tmp_path / "four", patch_px=64, num_outputs=4)
    with pytest.raises(ModelError, match="outputs shape .* sidecar lists 3 classes"):
        OnnxClassifier(ModelSpec.load(four), device="cpu")


def test_corrupt_onnx_file(tmp_path):
    path = make_toy_model(tmp_path / "m")
    path.write_bytes(b"garbage")
    _write_sidecar(path, onnx_sha256=None)
    with pytest.raises(ModelError, match="ONNX Runtime cannot load"):
        OnnxClassifier(ModelSpec.load(path), device="cpu")


def test_gpu_request_falls_back_to_cpu_with_one_plain_message(toy_model, capfd):
    import onnxruntime as ort

    from cellview.analysis.classifier import gpu_runtime_status

    cuda_ok, _, _ = gpu_runtime_status()
    if cuda_ok:
        pytest.skip("a usable GPU is present; the fallback path is not exercised")
    for device in ("cuda", "tensorrt"):
        clf = OnnxClassifier(ModelSpec.load(toy_model), device=device)
        assert clf.provider == "CPUExecutionProvider"
        assert clf.fallback_message and "running on CPU" in clf.fallback_message
        assert "CPU" in clf.describe() and "asked for" in clf.describe()
    auto = OnnxClassifier(ModelSpec.load(toy_model), device="auto")
    assert auto.fallback_message is None and auto.describe().endswith("on CPU (no usable GPU)")
    err = capfd.readouterr().err
    assert "CUDA" not in err.replace("CUDA was asked for", ""), err  # no ONNX Runtime error spray
    assert ort.get_device() in ("CPU", "GPU")


def test_unknown_device(toy_model):
    with pytest.raises(ModelError, match="Unknown device"):
        OnnxClassifier(ModelSpec.load(toy_model), device="gpu")


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_tensorrt_options_profile_covers_every_batch_size(tmp_path, monkeypatch, layout):
    """One profile for batch 1..max, or TensorRT rebuilds its engine for each new (last, smaller) batch."""
    import onnxruntime as ort

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = make_toy_model(tmp_path / layout, patch_px=64, spacing_um=1.0, layout=layout, dtype="float32")
    spec = ModelSpec.load(model)
    opts = OnnxClassifier._tensorrt_options(ort, spec, 16)
    assert opts["trt_fp16_enable"] and opts["trt_engine_cache_enable"] and opts["trt_timing_cache_enable"]
    assert opts["trt_engine_cache_path"].startswith(str(tmp_path / "cache"))
    name = ort.InferenceSession(str(spec.onnx_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    shape = "64x64x3" if layout == "NHWC" else "3x64x64"
    assert opts["trt_profile_min_shapes"] == f"{name}:1x{shape}"
    assert opts["trt_profile_opt_shapes"] == opts["trt_profile_max_shapes"] == f"{name}:16x{shape}"
