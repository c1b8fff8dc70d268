"""An INT8 copy of a model for CPUs (``model.int8.onnx`` + ``model.int8.json``), and its validation.

How the copy is made (``quantize_onnx``):

1. ONNX Runtime's pre-processing (shape inference, constant folding, the static padding folded
   into the convolutions).
2. Weight rounding by GPTQ (Frantar et al., 2023; the optimal brain surgeon update of Hassibi &
   Stork): each convolution's weights are rounded to the per-output-channel int8 grid one input
   column at a time, and the columns not rounded yet absorb the error, weighted by the second
   moments of the layer's inputs on real calibration tiles. Plain rounding to nearest left 13 % of
   the pooled features' norm as error on colon-he; GPTQ leaves 5 %, with the same int8 weights format.
3. Static QDQ quantisation by ONNX Runtime: uint8 activations calibrated (min / max) on the same
   tiles, int8 per-channel weights on exactly the GPTQ grid (scale overrides), so the CPU runs
   integer convolutions (VNNI where the processor has it).
4. The head stays in float32: global pooling, the linear layer (``fc.weight`` / ``fc.bias`` under
   their own names, so ``cellview.analysis.onnx_graph.find_linear_head`` finds it and a new head can be
   swapped in as in the FP32 graph) and the class-activation-map convolution (``cam_weight`` /
   ``cam_bias``). The outputs are the FP32 graph's: logits, features, feature_map, cam.

The out-of-domain statistics stay in ``domain.npz`` (one file for every copy). ``validate_int8``
compares the copy with the FP32 model on the run's own images (a user's model: up to ``RUN_SET_IMAGES`` per
source, calibration images left out) or, for the bundled H&E models (their recipes say
``"int8_validation": "data-folder"``), on every set in the data folder and its real slides; and on the run's
protocol folds. ``model.int8.json`` records the figures, and only a copy that meets every threshold is
picked by ``--precision auto`` (``ModelSpec.int8_validated``). A copy that cannot be validated (the run's
images are gone) says so and is not picked.

On a Jetson, TensorRT builds an INT8 engine from this same QDQ graph (explicit quantisation): the
scales calibrated here travel inside the graph, no calibration table is needed (docs/int8.md).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellview.analysis.classifier import OnnxClassifier, probabilities
from cellview.analysis.model_spec import ModelSpec, precision_path, sha256_file
from cellview.analysis.results import category_probabilities
from cellview.base.errors import ModelError
from cellview.base.files import atomic_write_bytes, atomic_write_text
from cellview.train import data as D

METHOD = ("ONNX Runtime static QDQ: uint8 activations (min/max calibration), int8 per-channel weights rounded "
          "by GPTQ on the calibration tiles; pooling, linear head and class-activation-map convolution in float32")
AGREEMENT_MIN = 0.99
"""Top-category agreement with FP32 needed on every set (and for the domain flag / score)."""
PROTOCOL_MAX_DIFF = 0.01
"""Largest change allowed in any leave-one-source-out / CV figure (category balanced accuracy)."""
DOMAIN_SCORE_TOLERANCE = 0.05
"""A tile's INT8 domain score 'agrees' when it is within this of the FP32 score (scores are 0–1 p-values)."""
CAM_TOLERANCE = 1e-3
"""Largest |spatial mean of a class activation map − its logit| allowed (exact up to rounding)."""
GPTQ_DAMP = 0.01
CALIBRATION_TILES = 384
RUN_CALIBRATION_TILES = 64
"""Calibration tiles of a user's model (validated on its own images): GPTQ's cost grows with the tiles (about
0.3 CPU-s each), and a user's export should take a minute or two on a laptop, not ten."""
RUN_SET_IMAGES = 200
"""Images per source of a run that validate its INT8 copy (spread over its classes; calibration images left out)."""
VALIDATION_MODES = ("auto", "run", "data-folder", "skip")
"""Where the INT8 copy is validated: the run's images, every set of the data folder, or nowhere (not picked)."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- calibration tiles


def calibration_tiles(samples: Sequence[D.Sample], spacing_um: float, patch: int, total: int = CALIBRATION_TILES,
                      seed: int = 0, reading: Any = None) -> tuple[np.ndarray, list[int]]:
    """One analysis tile from each of ``total`` images, the same number from every source, spread over its
    classes (round robin over classes, images drawn at random). Returns (tiles, indices of the images used)."""
    rng = np.random.default_rng(seed)
    sources = sorted({s.source for s in samples})
    per_source = max(1, total // max(1, len(sources)))
    picked: list[int] = []
    for src in sources:
        by_class: dict[int, list[int]] = {}
        for i, s in enumerate(samples):
            if s.source == src and Path(s.path).is_file():  # a moved image is left out, not a crash
                by_class.setdefault(s.label, []).append(i)
        queues = [list(rng.permutation(v)) for _, v in sorted(by_class.items())]
        # At most half of a source's images, so every set keeps images the copy was not calibrated on.
        limit = min(per_source, max(1, sum(len(q) for q in queues) // 2))
        taken = 0
        while taken < limit and any(queues):
            for q in queues:
                if q and taken < limit:
                    picked.append(int(q.pop()))
                    taken += 1
    tiles, used = [], []
    for i in picked:
        s = samples[i]
        t = D.analysis_tiles(D.read_rgb(s.path), s.spacing_um_px, spacing_um, patch, reading=reading)
        if len(t):
            tiles.append(t[rng.integers(len(t))])
            used.append(i)
    if not tiles:
        raise ModelError("No calibration tile: the images yield no tissue tile at the model's spacing.")
    return np.stack(tiles), used


# ----------------------------------------------------------------------------- GPTQ


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _conv_kind(node: Any, w: np.ndarray) -> str | None:
    """'dense' (group 1) or 'depthwise'; None for a convolution GPTQ leaves to plain rounding."""
    if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or any(d != 1 for d in _attr(node, "dilations", [1, 1])):
        return None
    group = _attr(node, "group", 1)
    if group == 1:
        return "dense"
    if w.shape[1] == 1 and group == w.shape[0]:
        return "depthwise"
    return None


def _windows(x: np.ndarray, node: Any, k: tuple[int, int]) -> np.ndarray:
    """(N, C, Ho, Wo, kh, kw) input windows of a convolution (explicit pads and strides)."""
    from numpy.lib.stride_tricks import sliding_window_view

    st = _attr(node, "strides", [1, 1])
    p = _attr(node, "pads", [0, 0, 0, 0])
    x = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    return sliding_window_view(x, k, axis=(2, 3))[:, :, ::st[0], ::st[1]]


def _input_moments(model: Any, convs: list[Any], weights: dict[str, np.ndarray], tiles: np.ndarray,
                   input_name: str, batch: int = 4) -> dict[str, np.ndarray]:
    """Σ x xᵀ of each convolution's input columns over the calibration tiles (per channel for depthwise)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    names = sorted({n.input[0] for n in convs})
    if not names:
        return {}
    have = {o.name for o in aug.graph.output}
    for t in names:
        if t not in have:
            aug.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(aug.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(tiles), batch):
        acts = dict(zip(names, sess.run(names, {input_name: tiles[start:start + batch]}), strict=True))
        for n in convs:
            w = weights[n.input[1]]
            x = acts[n.input[0]]
            k = (w.shape[2], w.shape[3])
            if _conv_kind(n, w) == "depthwise":
                v = _windows(x, n, k)
                c = v.shape[1]
                cols = np.ascontiguousarray(v.transpose(1, 0, 2, 3, 4, 5)).reshape(c, -1, k[0] * k[1])
                h = np.einsum("cpi,cpj->cij", cols, cols, optimize=True).astype(np.float64)
            else:
                if k == (1, 1) and not any(_attr(n, "pads", [0, 0, 0, 0])):
                    st = _attr(n, "strides", [1, 1])
                    cols = x[:, :, ::st[0], ::st[1]].transpose(0, 2, 3, 1).reshape(-1, x.shape[1])
                else:
                    v = _windows(x, n, k)
                    cols = v.transpose(0, 2, 3, 1, 4, 5).reshape(-1, int(np.prod(w.shape[1:])))
                cols = cols.astype(np.float64)
                h = cols.T @ cols
            out[n.input[1]] = out.get(n.input[1], 0) + h
    return out


def _cached_moments(model: Any, convs: list[Any], weights: dict[str, np.ndarray], tiles: np.ndarray, input_name: str,
                    src: Path, cache: Path | None) -> dict[str, np.ndarray]:
    if cache is None:
        return _input_moments(model, convs, weights, tiles, input_name)
    import hashlib

    key = hashlib.sha256(sha256_file(src).encode() + tiles.tobytes()).hexdigest()[:16]
    path = Path(cache) / f"gptq-moments-{key}.npz"
    if path.exists():
        with np.load(path) as z:
            got = {k: z[k] for k in z.files}
        if all(n.input[1] in got for n in convs):
            return got
    out = _input_moments(model, convs, weights, tiles, input_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    import io

    buf = io.BytesIO()
    np.savez(buf, **out)
    atomic_write_bytes(path, buf.getvalue())
    return out


def gptq_round(w: np.ndarray, h: np.ndarray, scale: np.ndarray, damp: float = GPTQ_DAMP) -> np.ndarray:
    """GPTQ: int8 values (as float multiples of ``scale``) for weights ``w`` (rows: outputs, columns: inputs).

    ``h`` is Σ x xᵀ of the inputs (columns × columns), or one such matrix per row (rows × cols × cols,
    depthwise). Columns are rounded in order; each rounding error is spread over the columns not rounded
    yet through the inverse Hessian's Cholesky factor, so the layer's output on the calibration inputs
    changes least.
    """
    w = np.array(w, dtype=np.float64)
    batched = h.ndim == 3
    hs = np.array(h if batched else h[None], dtype=np.float64)
    d = w.shape[1]
    diag = np.diagonal(hs, axis1=1, axis2=2).copy()
    dead = diag <= 0
    idx = np.arange(d)
    for b in range(len(hs)):
        hs[b, idx[dead[b]], idx[dead[b]]] = 1.0
        hs[b] += damp * max(float(diag[b].mean()), 1e-12) * np.eye(d)
    if not batched:
        w[:, dead[0]] = 0.0
    # Upper Cholesky factor of H⁻¹ (one per row when batched).
    u = np.transpose(np.linalg.cholesky(np.linalg.inv(hs)), (0, 2, 1))
    q = np.zeros_like(w)
    s = np.asarray(scale, np.float64)
    for j in range(d):
        col = w[:, j]
        qc = np.clip(np.round(col / s), -127, 127) * s
        q[:, j] = qc
        if batched:
            err = (col - qc) / u[:, j, j]
            w[:, j + 1:] -= err[:, None] * u[:, j, j + 1:]
        else:
            err = (col - qc) / u[0, j, j]
            w[:, j + 1:] -= np.outer(err, u[0, j, j + 1:])
    return q


def _weight_scale(w: np.ndarray) -> np.ndarray:
    """Symmetric per-output-channel int8 scale, max |w| / 127 (1 for an all-zero channel)."""
    s = np.abs(w.reshape(len(w), -1)).max(axis=1) / 127.0
    s[s == 0] = 1.0
    return s.astype(np.float32)


# ----------------------------------------------------------------------------- the copy


class _Tiles:
    """ONNX Runtime calibration reader over a tile array (equal batches: the histogram calibrators need them)."""

    def __init__(self, tiles: np.ndarray, input_name: str, batch: int = 8) -> None:
        self.tiles, self.name, self.batch, self.i = tiles, input_name, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.tiles):
            return None
        out = {self.name: self.tiles[self.i:self.i + self.batch]}
        self.i += self.batch
        return out

    def rewind(self) -> None:
        self.i = 0


def _restore_float_nodes(q: Any, original: Any, names: Sequence[str]) -> None:
    """Give the float head / CAM nodes their own initializers under the FP32 graph's names (pre-processing
    merges equal constants, e.g. the head's bias with the CAM bias)."""
    orig_nodes = {n.name: n for n in original.graph.node}
    orig_init = {i.name: i for i in original.graph.initializer}
    have = {i.name for i in q.graph.initializer}
    for node in q.graph.node:
        src = orig_nodes.get(node.name)
        if node.name not in names or src is None or len(src.input) != len(node.input):
            continue
        for k, name in enumerate(src.input):
            if name in orig_init:
                if name not in have:
                    q.graph.initializer.append(orig_init[name])
                    have.add(name)
                node.input[k] = name
    used = {i for n in q.graph.node for i in n.input}
    keep = [i for i in q.graph.initializer if i.name in used]
    del q.graph.initializer[:]
    q.graph.initializer.extend(keep)


def quantize_onnx(src: Path, dst: Path, tiles: np.ndarray, gptq: bool = True, float_layers: Sequence[str] = (),
                  cache: Path | None = None) -> dict[str, Any]:
    """Write the INT8 copy of ``src`` to ``dst`` (see the module docstring); returns what was done.

    ``float_layers``: more nodes to keep in float (by name); ``cache``: a folder where the input moments
    GPTQ needs are kept for the same model and tiles (re-quantising is then quick)."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from cellview.analysis.onnx_graph import find_linear_head, head_node_names

    t0 = time.time()
    original = onnx.load(str(src))
    for k, node in enumerate(original.graph.node):  # nodes are excluded from quantisation by name
        if not node.name:
            node.name = f"node_{k}_{node.op_type}"
    input_name = original.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="cellview-int8-") as tmp:
        named, pre = Path(tmp) / "named.onnx", Path(tmp) / "pre.onnx"
        onnx.save(original, str(named))
        quant_pre_process(str(named), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        keep_float = head_node_names(model) + [n for n in float_layers if n]
        keep_out = {o for n in model.graph.node if n.name in float_layers for o in n.output}
        keep_float += [n.name for n in model.graph.node if n.op_type in ("Clip", "Relu") and n.input[0] in keep_out]
        inits = {i.name: i for i in model.graph.initializer}
        weights = {k: numpy_helper.to_array(v) for k, v in inits.items()}
        uses: dict[str, int] = {}
        for n in model.graph.node:
            for i in n.input:
                uses[i] = uses.get(i, 0) + 1
        convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in keep_float
                 and n.input[1] in weights and weights[n.input[1]].ndim == 4 and uses[n.input[1]] == 1]
        overrides: dict[str, list[dict[str, Any]]] = {}
        rounded = 0
        if gptq:
            tuned = [n for n in convs if _conv_kind(n, weights[n.input[1]]) is not None]
            moments = _cached_moments(model, tuned, weights, tiles, input_name, src, cache)
            for n in tuned:
                w = weights[n.input[1]]
                scale = _weight_scale(w)
                flat = w.reshape(len(w), -1)
                q = gptq_round(flat, moments[n.input[1]], scale)
                inits[n.input[1]].CopyFrom(numpy_helper.from_array(q.reshape(w.shape).astype(np.float32), n.input[1]))
                overrides[n.input[1]] = [{"scale": np.array(v, np.float32), "zero_point": np.array(0, np.int8),
                                          **({"axis": 0} if j == 0 else {})} for j, v in enumerate(scale)]
                rounded += 1
            tuned_path = Path(tmp) / "gptq.onnx"
            onnx.save(model, str(tuned_path))
        else:
            tuned_path = pre
        qpath = Path(tmp) / "int8.onnx"
        quantize_static(str(tuned_path), str(qpath), _Tiles(tiles, input_name), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=keep_float, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"TensorQuantOverrides": overrides} if overrides else None)
        q = onnx.load(str(qpath))
    _restore_float_nodes(q, original, keep_float)
    _check_grid(q, overrides, {k: numpy_helper.to_array(inits[k]) for k in overrides})
    q.producer_name = (original.producer_name + "+cellview-int8").lstrip("+")
    onnx.checker.check_model(q)
    head = find_linear_head(q)
    ref = find_linear_head(original)
    if not (np.array_equal(head.weight, ref.weight) and np.array_equal(head.bias, ref.bias)):
        raise ModelError("The INT8 copy's linear head differs from the FP32 model's.")
    atomic_write_bytes(dst, q.SerializeToString())
    return {"method": METHOD, "calibration_tiles": int(len(tiles)), "gptq_layers": rounded,
            "float_nodes": list(keep_float), "seconds": round(time.time() - t0, 1)}


def _check_grid(q: Any, overrides: dict[str, Any], expected: dict[str, np.ndarray]) -> None:
    """Each GPTQ-rounded weight must come out of ONNX Runtime's quantiser unchanged (its scale was imposed)."""
    from onnx import numpy_helper

    got = {i.name: i for i in q.graph.initializer}
    for name, w in expected.items():
        qi, sc = got.get(f"{name}_quantized"), got.get(f"{name}_scale")
        if qi is None or sc is None:
            raise ModelError(f"The quantiser left the weights {name} in float.")
        dq = numpy_helper.to_array(qi).astype(np.float32) * numpy_helper.to_array(sc).reshape(-1, *[1] * (w.ndim - 1))
        if not np.allclose(dq, w, rtol=0, atol=1e-6 * max(float(np.abs(w).max()), 1e-12)):
            raise ModelError(f"The quantiser changed the GPTQ-rounded weights {name}.")


def int8_sidecar(fp32: ModelSpec, int8_path: Path, info: dict[str, Any],
                 validation: dict[str, Any] | None) -> dict[str, Any]:
    """The FP32 sidecar with this copy's file hash, precision, how it was made and its validation."""
    side = dict(fp32.raw)
    side.update({
        "precision": "int8",
        "onnx_sha256": sha256_file(int8_path),
        "quantization": {**info, "source_onnx_sha256": fp32.onnx_sha256},
    })
    side["validation"] = validation if validation is not None else {
        "passed": False, "reasons": ["not validated (no figures yet): --precision auto keeps FP32"]}
    return side


# ----------------------------------------------------------------------------- validation


def _categories(logits: np.ndarray, spec: ModelSpec) -> np.ndarray:
    probs = probabilities(logits, spec.activation, spec.temperature)
    return category_probabilities(probs, spec.class_categories, spec.activation).argmax(1)


def compare_outputs(spec: ModelSpec, a: Any, b: Any) -> dict[str, Any]:
    """Agreement of two TileSets (FP32, INT8) of the same tiles: categories, classes, domain score and flag."""
    n = len(a)
    out: dict[str, Any] = {"tiles": n}
    if not n:
        return out
    out["top_category_agreement"] = round(float(np.mean(_categories(a.logits, spec) == _categories(b.logits, spec))), 4)
    out["top_class_agreement"] = round(float(np.mean(a.logits.argmax(1) == b.logits.argmax(1))), 4)
    pa = probabilities(a.logits, spec.activation, spec.temperature)
    pb = probabilities(b.logits, spec.activation, spec.temperature)
    out["max_abs_probability_diff"] = round(float(np.abs(pa - pb).max()), 4)
    out["feature_relative_error"] = round(float(np.linalg.norm(a.features - b.features)
                                                / max(np.linalg.norm(a.features), 1e-12)), 4)
    if spec.domain is not None:
        sa = spec.domain.score(a.features, quality=a.quality)
        sb = spec.domain.score(b.features, quality=b.quality)
        out["domain_score_agreement"] = round(float(np.mean(np.abs(sa - sb) <= DOMAIN_SCORE_TOLERANCE)), 4)
        out["domain_flag_agreement"] = round(float(np.mean(spec.domain.in_domain(sa) == spec.domain.in_domain(sb))), 4)
        out["domain_score_median_abs_diff"] = round(float(np.median(np.abs(sa - sb))), 4)
    return out


def cam_check(fp32: OnnxClassifier, int8: OnnxClassifier, tiles: np.ndarray) -> dict[str, Any]:
    """The INT8 copy still produces class activation maps: present, exact (mean = logit), like FP32's."""
    if "cam" not in int8.output_names:
        return {"produced": False}
    la, ca = fp32.run(tiles, (fp32.output_name, "cam"))
    lb, cb = int8.run(tiles, (int8.output_name, "cam"))
    k = la.argmax(1)
    rows = np.arange(len(tiles))
    ma, mb = ca[rows, k].reshape(len(tiles), -1), cb[rows, k].reshape(len(tiles), -1)
    ma, mb = ma - ma.mean(1, keepdims=True), mb - mb.mean(1, keepdims=True)
    corr = (ma * mb).sum(1) / np.maximum(np.linalg.norm(ma, axis=1) * np.linalg.norm(mb, axis=1), 1e-12)
    return {"produced": bool(cb.shape == ca.shape and np.isfinite(cb).all()), "tiles": int(len(tiles)),
            "shape": list(cb.shape[1:]),
            "cam_mean_vs_logit_max_abs_diff": float(np.abs(cb.mean(axis=(2, 3)) - lb).max()),
            "predicted_class_map_correlation_median": round(float(np.median(corr)), 4)}


def data_sets(data_root: Path) -> dict[str, list[D.Sample]]:
    """Every labelled set in the data folder (the bundled recipes' sources, by name), for agreement figures."""
    from cellview.train import RECIPES

    sets: dict[str, list[D.Sample]] = {}
    for path in sorted(RECIPES.glob("*.json")):
        recipe = D.load_recipe(path, data_root)
        for s in D.read_samples(recipe):
            sets.setdefault(s.source, []).append(s)
    return {k: v for k, v in sorted(sets.items()) if v}


def slide_sets(data_root: Path) -> list[Path]:
    """The real slides at the top of ``data/slides`` (not derived copies, fixtures or broken files)."""
    folder = data_root / "slides"
    return sorted(p for p in folder.glob("*") if p.is_file() and p.suffix.lower() in (".svs", ".ndpi", ".mrxs",
                                                                                     ".scn", ".tif", ".tiff"))


def fold_heads(run_dir: Path, samples: Sequence[D.Sample]) -> dict[str, list[tuple[Any, np.ndarray, np.ndarray]]]:
    """The protocol's fold heads of a run: {protocol: [(fold, weight, bias)]} (those ``cellview evaluate`` trained)."""
    import torch

    from cellview.train.protocol import PROTOCOLS, fold_stem, make_folds
    from cellview.train.train import Run

    run = Run(run_dir)
    cfg = run.config()
    if cfg.finetune_blocks:
        raise ModelError("The run fine-tunes the backbone: its fold models are not linear heads on the shipped "
                         "features, so INT8 features cannot be scored with them.")
    protocol = run.load_json("eval/protocol.json")
    n_folds = len(protocol.get("cv", {}).get("folds", [])) or 5
    out: dict[str, list[tuple[Any, np.ndarray, np.ndarray]]] = {}
    for p in PROTOCOLS:
        if p not in protocol:
            continue
        for fold in make_folds(list(samples), p, n_folds, cfg.seed):
            path = fold_stem(run.path / "folds", cfg, fold).with_suffix(".pt")
            if not path.exists():
                raise ModelError(f"The fold model {path.name} of {run.path} is missing; run `cellview evaluate "
                                 f"{run.path}` first.")
            state = torch.load(path, map_location="cpu", weights_only=True)
            out.setdefault(p, []).append((fold, state["fc.weight"].numpy().astype(np.float32),
                                          state["fc.bias"].numpy().astype(np.float32)))
    return out


def protocol_figures(heads: dict[str, list[tuple[Any, np.ndarray, np.ndarray]]], features: np.ndarray,
                     index: np.ndarray, samples: list[D.Sample], recipe: D.Recipe,
                     temperature: float, only: np.ndarray | None = None) -> dict[str, Any]:
    """The protocol report (``cellview.train.protocol``) with every fold's head applied to these features
    (``only``: the images scored, bool per sample; default every image)."""
    from cellview.train.protocol import protocol_report

    logits: dict[str, dict[str, Any]] = {}
    folds: dict[str, list[Any]] = {}
    for p, entries in heads.items():
        lg, ix = [], []
        for fold, w, b in entries:
            keep = fold.test[index]
            lg.append(features[keep] @ w.T + b)
            ix.append(index[keep])
        logits[p] = {"plain": (np.concatenate(lg), np.concatenate(ix)), "_seconds": [0.0] * len(entries)}
        folds[p] = [f for f, _, _ in entries]
    return protocol_report(logits, samples, recipe, folds, temperature=temperature,
                           subsets=None if only is None else {"plain": only})


def _protocol_diffs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per protocol, source and image rule: category balanced accuracy with FP32 and INT8 features."""
    from cellview.train.protocol import PROTOCOLS, RULES

    out: dict[str, Any] = {}
    for p in PROTOCOLS:
        if p not in a:
            continue
        rows = {}
        for src, va in a[p]["plain"].items():
            vb = b[p]["plain"][src]
            for rule in RULES:
                fa = va[rule]["category_balanced_accuracy"]
                fb = vb[rule]["category_balanced_accuracy"]
                rows[f"{src} ({rule})"] = {"fp32": fa, "int8": fb, "diff": round(fb - fa, 4)}
            if "tile_category_accuracy" in va:
                rows[f"{src} (tile accuracy)"] = {"fp32": va["tile_category_accuracy"],
                                                  "int8": vb["tile_category_accuracy"],
                                                  "diff": round(vb["tile_category_accuracy"]
                                                                - va["tile_category_accuracy"], 4)}
        out[p] = {"figures": rows, "max_abs_diff": round(max(abs(r["diff"]) for r in rows.values()), 4)}
    return out


def run_sets(samples: Sequence[D.Sample], exclude_images: Sequence[str] = (), per_source: int = RUN_SET_IMAGES,
             seed: int = 0) -> dict[str, list[D.Sample]]:
    """The run's own images that validate its INT8 copy: per source up to ``per_source`` images that exist and
    did not calibrate it, round robin over the source's classes (drawn at random within a class)."""
    rng = np.random.default_rng(seed)
    excluded = set(exclude_images)
    out: dict[str, list[D.Sample]] = {}
    for src in sorted({s.source for s in samples}):
        by_class: dict[int, list[D.Sample]] = {}
        for s in samples:
            if s.source == src and s.path not in excluded and Path(s.path).is_file():
                by_class.setdefault(s.label, []).append(s)
        queues = [[v[i] for i in rng.permutation(len(v))] for _, v in sorted(by_class.items())]
        picked: list[D.Sample] = []
        while len(picked) < per_source and any(queues):
            for q in queues:
                if q and len(picked) < per_source:
                    picked.append(q.pop())
        if picked:
            out[src] = sorted(picked, key=lambda s: s.path)
    return out


def validate_int8(model_dir: Path, run_dir: Path | None, data_root: Path | None, exclude_images: Sequence[str] = (),
                  cache: Path | None = None, sets: dict[str, list[D.Sample]] | None = None,
                  known: Any = None) -> dict[str, Any]:
    """Every validation figure of the INT8 copy against FP32, and the verdict (``passed``, ``reasons``).

    Sets: ``sets`` (the run's own images, ``run_sets``), or else each labelled set in ``data_root`` at the
    model's spacing and each real slide's tissue tiles (calibration images left out); the run's
    leave-one-source-out / CV folds re-scored with INT8 features (on the images of the sets); domain score and
    flag; class activation maps.
    """
    from cellview.train.domain import run_tiles, sample_features, slide_tiles

    t0 = time.time()
    fp32_spec = ModelSpec.load(Path(model_dir) / "model.onnx")
    int8_spec = ModelSpec.load(precision_path(fp32_spec.onnx_path, "int8"))
    fp32 = OnnxClassifier(fp32_spec, device="cpu", intra_op_threads=2, precision="fp32")
    int8 = OnnxClassifier(int8_spec, device="cpu", intra_op_threads=2, precision="int8")
    excluded = set(exclude_images)
    report: dict[str, Any] = {"thresholds": {"top_category_agreement": AGREEMENT_MIN,
                                             "domain_score_agreement": AGREEMENT_MIN,
                                             "domain_flag_agreement": AGREEMENT_MIN,
                                             "domain_score_tolerance": DOMAIN_SCORE_TOLERANCE,
                                             "protocol_max_abs_diff": PROTOCOL_MAX_DIFF,
                                             "cam_mean_vs_logit": CAM_TOLERANCE},
                              "sets": {}}
    per_image: dict[str, tuple[Any, Any, int]] = {}  # image path → (FP32 tiles, INT8 tiles) of its set, index
    own = sets is not None
    if sets is None:
        if data_root is None:
            raise ModelError("validate_int8 needs the run's image sets or a data folder.")
        sets = data_sets(data_root)
    report["sets_from"] = "the run's own images" if own else f"every labelled set in {data_root} and its real slides"
    for name, samples in sets.items():
        a = sample_features(fp32, samples, f"fp32-{name}", cache, known=known)  # a run's cache stands for FP32
        b = sample_features(int8, samples, f"int8-{name}", cache)
        for i, s in enumerate(samples):
            per_image[s.path] = (a, b, i)
        keep = np.array([samples[i].path not in excluded for i in a.image], bool)
        figures = compare_outputs(fp32_spec, a.subset(keep), b.subset(keep))
        figures["images"] = len({s.path for s in samples} - excluded)
        figures["calibration_images_left_out"] = len({s.path for s in samples} & excluded)
        report["sets"][name] = figures
        _say(f"  int8 vs fp32 on {name}: {figures}")
    for slide in ([] if own or data_root is None else slide_sets(data_root)):
        tiles = slide_tiles(slide, fp32_spec)
        figures = compare_outputs(fp32_spec, run_tiles(fp32, tiles), run_tiles(int8, tiles))
        report["sets"][f"slide {slide.name}"] = figures
        _say(f"  int8 vs fp32 on {slide.name}: {figures}")
    tiles = _spread_tiles([s for v in sets.values() for s in v[:: max(1, len(v) // 32)]], fp32_spec, 64)
    if len(tiles):
        report["cam"] = cam_check(fp32, int8, tiles)
    if run_dir is not None:
        report["protocol"] = _validate_protocol(Path(run_dir), per_image)
    report["reasons"] = verdict(report, fp32_spec.domain is not None)
    report["passed"] = not report["reasons"]
    report["seconds"] = round(time.time() - t0, 1)
    return report


def _spread_tiles(samples: Sequence[D.Sample], spec: ModelSpec, n: int) -> np.ndarray:
    """The first analysis tile of images spread over the sets (for the class activation map check)."""
    tiles: list[np.ndarray] = []
    for s in samples:
        tiles.extend(D.analysis_tiles(D.read_rgb(s.path), s.spacing_um_px, spec.spacing_um_px,
                                      spec.patch_size_pixels, reading=spec.reading)[:1])
        if len(tiles) >= n:
            break
    return np.stack(tiles) if tiles else np.zeros((0, spec.patch_size_pixels, spec.patch_size_pixels, 3), np.uint8)


def _validate_protocol(run_dir: Path, per_image: dict[str, tuple[Any, Any, int]]) -> dict[str, Any]:
    """LOSO / CV figures from FP32 and from INT8 features with the same fold heads (the run's images are the
    data sets' images: their features were computed there)."""
    from cellview.train.train import Run

    run = Run(run_dir)
    recipe = run.recipe()
    samples, _ = run.samples()
    present = np.array([s.path in per_image for s in samples])
    if not present.any():
        return {"skipped": "none of the run's images was in the validation sets"}
    protocol = run.load_json("eval/protocol.json")
    heads = fold_heads(run_dir, samples)
    temperature = float(protocol.get("temperature", 1.0))
    reports = []
    for which in (0, 1):
        feats, index = [], []
        for k in np.flatnonzero(present):
            ts, i = per_image[samples[k].path][which], per_image[samples[k].path][2]
            rows = ts.features[ts.image == i]
            feats.append(rows)
            index.append(np.full(len(rows), k))
        reports.append(protocol_figures(heads, np.concatenate(feats), np.concatenate(index), samples, recipe,
                                        temperature, None if present.all() else present))
    out = _protocol_diffs(*reports)
    out["run"] = str(run_dir)
    out["temperature"] = temperature
    out["images"] = int(present.sum())
    out["note"] = ("the run's fold heads (cellview evaluate) applied to the pooled features of the shipped FP32 "
                   "graph and of the INT8 copy, on the analysis tiles of "
                   + ("every image" if present.all() else f"the {int(present.sum())} images of the validation sets"))
    return out


def verdict(report: dict[str, Any], has_domain: bool) -> list[str]:
    """Why the copy may not be picked automatically (empty: every figure meets its threshold)."""
    reasons = []
    for name, f in report.get("sets", {}).items():
        if not f.get("tiles"):
            continue
        if f["top_category_agreement"] < AGREEMENT_MIN:
            reasons.append(f"top-category agreement {f['top_category_agreement']:.2%} < {AGREEMENT_MIN:.0%} on {name}")
        if has_domain:
            for key, label in (("domain_score_agreement", "domain score agreement"),
                               ("domain_flag_agreement", "in-domain flag agreement")):
                if f.get(key, 1.0) < AGREEMENT_MIN:
                    reasons.append(f"{label} {f[key]:.2%} < {AGREEMENT_MIN:.0%} on {name}")
    cam = report.get("cam")
    if cam is not None and (not cam.get("produced") or cam.get("cam_mean_vs_logit_max_abs_diff", 0) > CAM_TOLERANCE):
        reasons.append("class activation maps missing or inexact")
    if not any(f.get("tiles") for f in report.get("sets", {}).values()):
        reasons.append("no validation tile")
    for p, v in (report.get("protocol") or {}).items():
        if isinstance(v, dict) and "max_abs_diff" in v and v["max_abs_diff"] > PROTOCOL_MAX_DIFF:
            worst = max(v["figures"].items(), key=lambda kv: abs(kv[1]["diff"]))
            reasons.append(f"{p.upper()} figure {worst[0]} moves by {worst[1]['diff']:+.3f} (> {PROTOCOL_MAX_DIFF})")
    return reasons


# ----------------------------------------------------------------------------- model folder + card


def make_int8(model_dir: Path, samples: Sequence[D.Sample], run_dir: Path | None, data_root: Path | None,
              cache: Path | None = None, validate: bool = True, seed: int = 0, mode: str = "data-folder",
              known: Any = None) -> dict[str, Any]:
    """``models/<name>/model.int8.onnx`` + ``model.int8.json`` from the folder's ``model.onnx``, calibrated on
    ``samples`` (real training images of every source), validated, with an 'INT8 copy' card section.

    ``mode``: ``run`` validates on the run's own images (``run_sets``), ``data-folder`` on every set of
    ``data_root`` and its slides, ``skip`` not at all (the copy is then not picked by ``--precision auto``)."""
    model_dir = Path(model_dir)
    fp32 = ModelSpec.load(model_dir / "model.onnx")
    dst = precision_path(fp32.onnx_path, "int8")
    total = RUN_CALIBRATION_TILES if mode in ("run", "skip") else CALIBRATION_TILES
    tiles, used = calibration_tiles(samples, fp32.spacing_um_px, fp32.patch_size_pixels, total=total, seed=seed,
                                    reading=fp32.reading)
    _say(f"INT8: {len(tiles)} calibration tiles from {len({samples[i].source for i in used})} sources")
    info = quantize_onnx(fp32.onnx_path, dst, tiles, cache=cache)
    info["calibration"] = {"tiles": int(len(tiles)), "images": len(used),
                           "per_source": {src: sum(samples[i].source == src for i in used)
                                          for src in sorted({samples[i].source for i in used})},
                           "rule": "one analysis tile per image, the same number of images from every source, "
                                   "round robin over its classes"}
    sidecar_path = dst.with_suffix(".json")
    atomic_write_text(sidecar_path, json.dumps(int8_sidecar(fp32, dst, info, None), indent=2) + "\n")
    _say(f"INT8: {dst.name} written in {info['seconds']:.0f} s ({dst.stat().st_size / 1e6:.1f} MB)")
    validation = None
    calibrated = [samples[i].path for i in used]
    sets = run_sets(samples, calibrated, seed=seed) if mode == "run" else None
    if validate and mode == "skip":
        validation = {"passed": False, "skipped": True,
                      "reasons": ["validation skipped (--int8-validate skip): --precision auto keeps FP32"]}
    elif validate and mode == "run" and not sets:
        validation = {"passed": False, "skipped": True,
                      "reasons": ["not validated: none of the run's images is where the run saw it (moved or "
                                  "deleted); --precision auto keeps FP32"]}
    elif validate:
        validation = validate_int8(model_dir, run_dir, data_root if mode != "run" else None, calibrated, cache, sets,
                                   known)
    if validation is not None:
        atomic_write_text(sidecar_path, json.dumps(int8_sidecar(fp32, dst, info, validation), indent=2) + "\n")
        update_card_int8(model_dir / "MODEL_CARD.md", ModelSpec.load(dst))
    ModelSpec.load(dst)  # what ships must validate
    return {"path": str(dst), "quantization": info, "validation": validation}


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.2%}"


def card_section(spec: ModelSpec) -> str:
    """The model card's 'INT8 copy for CPUs' section from the INT8 sidecar."""
    q = spec.raw.get("quantization", {})
    v = spec.raw.get("validation", {})
    lines = ["## INT8 copy for CPUs", "",
             f"`model.int8.onnx` + `model.int8.json`: {q.get('method', METHOD)}. Calibrated on "
             f"{q.get('calibration', {}).get('tiles', '?')} real training tiles "
             f"({', '.join(f'{k} {n}' for k, n in q.get('calibration', {}).get('per_source', {}).items())}). "
             "`--precision auto` runs it on a CPU only when every figure below meets its threshold; "
             "`--precision fp32` always runs the FP32 weights.", ""]
    if v.get("passed"):
        lines.append("**Validated: every figure meets its threshold, so `--precision auto` uses INT8 on CPUs.**")
    else:
        lines.append("**Not used by `--precision auto`:** " + "; ".join(v.get("reasons", ["not validated"])) + ".")
    lines += ["", "| set | tiles | top category = FP32 | top class = FP32 | domain score within "
                  f"{DOMAIN_SCORE_TOLERANCE} | in-domain flag = FP32 | pooled-feature error |",
              "|---|---|---|---|---|---|---|"]
    for name, f in v.get("sets", {}).items():
        if not f.get("tiles"):
            lines.append(f"| {name} | 0 | – | – | – | – | – |")
            continue
        lines.append(f"| {name} | {f['tiles']} | {_pct(f.get('top_category_agreement'))} | "
                     f"{_pct(f.get('top_class_agreement'))} | {_pct(f.get('domain_score_agreement'))} | "
                     f"{_pct(f.get('domain_flag_agreement'))} | {f.get('feature_relative_error', 0):.1%} |")
    if "own" in v.get("sets_from", ""):
        lines += ["", f"Sets: the run's own images, up to {RUN_SET_IMAGES} per source that did not calibrate the copy "
                      "(spread over its classes); thresholds: ≥ 99 % agreement each."]
    else:
        lines += ["", "Sets: every labelled set in the data folder at this model's spacing (calibration images left "
                      "out) and the real slides' tissue tiles; thresholds: ≥ 99 % agreement each."]
    for p, entry in (v.get("protocol") or {}).items():
        if not isinstance(entry, dict) or "figures" not in entry:
            continue
        lines += ["", f"{p.upper()} with the run's fold heads on FP32 vs INT8 features (category balanced accuracy; "
                      f"largest change {entry['max_abs_diff']:.3f}, threshold ±{PROTOCOL_MAX_DIFF}):", "",
                  "| held-out source (rule) | FP32 | INT8 | change |", "|---|---|---|---|"]
        for k, r in entry["figures"].items():
            lines.append(f"| {k} | {r['fp32']:.3f} | {r['int8']:.3f} | {r['diff']:+.3f} |")
    cam = v.get("cam")
    if cam:
        lines += ["", f"Class activation maps: produced ({'×'.join(map(str, cam.get('shape', [])))} per tile), "
                      f"spatial mean − logit at most {cam.get('cam_mean_vs_logit_max_abs_diff', 0):.1e}; "
                      f"median correlation with the FP32 map of the predicted class "
                      f"{cam.get('predicted_class_map_correlation_median', float('nan')):.3f} "
                      f"({cam.get('tiles')} tiles)."]
    lines += ["", "TensorRT on a Jetson builds its INT8 engine from this QDQ graph (explicit quantisation, the same "
                  "calibration): see docs/int8.md. Reproduce: `cellview export RUN --out models/NAME --int8-only`."]
    return "\n".join(lines) + "\n"


def update_card_int8(card: Path, spec: ModelSpec) -> None:
    from cellview.train.domain import update_card

    update_card(card, card_section(spec))

