"""Synthetic slides and toy ONNX models with known answers, for tests and benchmarks.

The toy model's rule: a tile's class follows its dominant colour (red → malignant, blue →
benign, green → normal), so end-to-end results can be checked exactly. Needs the ``onnx``,
``tifffile`` and ``imagecodecs`` packages (the ``test`` extra).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cellview.analysis.model_spec import sha256_file

TOY_CLASSES = ("malignant", "benign", "normal")
TOY_COLORS = {"malignant": (220, 30, 40), "benign": (40, 60, 220), "normal": (30, 200, 60)}


def make_toy_model(
    folder: Path,
    patch_px: int = 64,
    spacing_um: float = 0.5,
    layout: str = "NHWC",
    dtype: str = "uint8",
    fixed_hw: int | None = None,
    num_outputs: int = 3,
    sidecar_overrides: dict[str, Any] | None = None,
    name: str = "toy-colour",
    features: bool = False,
) -> Path:
    """Write ``folder/model.onnx`` + ``model.json`` and return the .onnx path.

    logits = 0.1 × (mean RGB − mean of the three channels), in the class order R, B, G →
    (malignant, benign, normal). ``fixed_hw`` bakes a spatial size into the input (to test the
    shape check); ``num_outputs`` ≠ 3 makes a model that disagrees with its sidecar.
    ``features`` adds a second output, ``features`` = the tile's mean RGB (N, 3), for domain tests.
    """
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    hw: list[Any] = [fixed_hw or "H", fixed_hw or "W"]
    if layout == "NHWC":
        in_shape = ["N", *hw, 3]
        axes, channel_axis = [1, 2], 1
    else:
        in_shape = ["N", 3, *hw]
        axes, channel_axis = [2, 3], 1
    elem = TensorProto.UINT8 if dtype == "uint8" else TensorProto.FLOAT
    inp = helper.make_tensor_value_info("tiles", elem, in_shape)
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_outputs])
    # Channel order R, G, B → classes (R, B, G) so red → malignant, blue → benign, green → normal.
    weights = np.zeros((3, num_outputs), dtype=np.float32)
    centre = np.eye(3, dtype=np.float32) - 1.0 / 3.0
    perm = [0, 2, 1]
    for k in range(min(3, num_outputs)):
        weights[:, k] = 0.1 * centre[:, perm[k]]
    if dtype == "float32":
        weights *= 255.0  # float inputs arrive scaled to [0, 1]
    nodes = [
        helper.make_node("Cast", ["tiles"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["logits"]),
    ]
    _ = channel_axis
    inits = [
        helper.make_tensor("axes", TensorProto.INT64, [2], axes),
        helper.make_tensor("w", TensorProto.FLOAT, list(weights.shape), weights.flatten().tolist()),
    ]
    outputs = [out]
    if features:
        nodes.append(helper.make_node("Identity", ["m"], ["features"]))
        outputs.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3]))
    graph = helper.make_graph(nodes, "toy", [inp], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    sidecar = {
        "spec_version": "1.0",
        "name": name,
        "version": "0.0-test",
        "architecture": "toy-mean-colour",
        "num_classes": 3,
        "class_names": list(TOY_CLASSES),
        "class_categories": list(TOY_CLASSES),
        "class_colors": ["#d62728", "#ff9f1c", "#2ca02c"],
        "patch_size_pixels": patch_px,
        "spacing_um_px": spacing_um,
        "transform": [{"name": "Resize", "arguments": {"size": patch_px}}, {"name": "ToTensor"}],
        "activation": "softmax",
        "temperature": 1.0,
        "input": {"layout": layout, "dtype": dtype, "scale": 1 / 255 if dtype == "float32" else 1.0},
        "onnx_sha256": sha256_file(path),
        "license": "CC0-1.0",
        "training_data": "none: a fixed rule for tests",
    }
    sidecar.update(sidecar_overrides or {})
    (folder / "model.json").write_text(json.dumps(sidecar, indent=2))
    return path


def make_spatial_toy_model(folder: Path, patch_px: int = 16, spacing_um: float = 1.0, seed: int = 0,
                           sidecar_overrides: dict[str, Any] | None = None) -> Path:
    """A toy model whose logits depend on where colours are in the tile (fixed random pixel weights).

    Unlike ``make_toy_model`` it changes its answer when a tile is flipped or rotated, so tests can
    tell whether test-time augmentation averaged over the views.
    """
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    n_in = patch_px * patch_px * 3
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(n_in, 3)) * 0.5 / (np.sqrt(n_in) * 64.0)  # logits of order 1
    weights = (weights - weights.mean(axis=0)).astype(np.float32)  # a flat grey tile scores 0 for every class
    inp = helper.make_tensor_value_info("tiles", TensorProto.UINT8, ["N", patch_px, patch_px, 3])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])
    nodes = [
        helper.make_node("Cast", ["tiles"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    inits = [
        helper.make_tensor("shape", TensorProto.INT64, [2], [-1, n_in]),
        helper.make_tensor("w", TensorProto.FLOAT, list(weights.shape), weights.flatten().tolist()),
    ]
    model = helper.make_model(helper.make_graph(nodes, "toy-spatial", [inp], [out], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    sidecar = {
        "spec_version": "1.0", "name": "toy-spatial", "version": "0.0-test", "num_classes": 3,
        "class_names": list(TOY_CLASSES), "class_categories": list(TOY_CLASSES),
        "patch_size_pixels": patch_px, "spacing_um_px": spacing_um, "activation": "softmax", "temperature": 1.0,
        "input": {"layout": "NHWC", "dtype": "uint8"}, "onnx_sha256": sha256_file(path),
    }
    sidecar.update(sidecar_overrides or {})
    (folder / "model.json").write_text(json.dumps(sidecar, indent=2))
    return path


# A lab's H&E stain vectors (Ruifrok's haematoxylin and eosin, unit OD): the tests' reference staining.
LAB_A_STAINS = np.stack([v / np.linalg.norm(v) for v in (np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11]))])


def synthetic_he(concentrations: np.ndarray, stain_matrix: np.ndarray) -> np.ndarray:
    """RGB uint8 image from stain amounts (H, W, k) and k OD stain vectors (Beer–Lambert, as ``optical_density``)."""
    od = concentrations.reshape(-1, concentrations.shape[-1]) @ np.asarray(stain_matrix, np.float64)
    rgb = 256.0 * np.exp(-od) - 1.0
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(*concentrations.shape[:2], 3)


def synthetic_he_amounts(size: int = 256, seed: int = 0) -> np.ndarray:
    """(size, size, 2) haematoxylin / eosin amounts: round nuclei on eosin-stained stroma, some white background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    h = np.zeros((size, size))
    for _ in range(size // 4):
        cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.uniform(3, 7)
        h = np.maximum(h, rng.uniform(0.6, 1.2) * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r))
    e = rng.uniform(0.25, 0.6) + 0.15 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    e = e * (1.0 - 0.9 * (h > 0))  # nuclei take up little eosin
    background = (xx > size * 0.8) & (yy > size * 0.7)
    e = np.where(background, 0.0, e)
    h = np.where(background, 0.0, h)
    return np.stack([h, np.clip(e, 0, None)], axis=-1)


def toy_expected_class(rgb_mean: np.ndarray) -> int:
    """The toy model's answer for a tile's mean colour (index into TOY_CLASSES)."""
    logits = (np.asarray(rgb_mean, np.float64) - np.mean(rgb_mean)) * 0.1
    return int(np.argmax(logits[[0, 2, 1]]))


def write_pyramid_tiff(path: Path, rgb: np.ndarray, mpp_um: float | None, levels: int = 4,
                       tile: int = 256, compression: str = "zlib",
                       damage: Callable[[int, np.ndarray], np.ndarray] | None = None) -> Path:
    """A tiled pyramidal TIFF (successive IFDs, each half the size) that OpenSlide opens.

    ``damage(level, rgb)`` may alter what is stored for a level (e.g. false colours on reduced
    levels, as some converters write them); the next level is still made from the sound pixels.
    """
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if mpp_um:
        kwargs = {"resolution": (1e4 / mpp_um, 1e4 / mpp_um), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(str(path), bigtiff=False) as tif:
        img = rgb
        for level in range(levels):
            if level and min(img.shape[:2]) < 2 * 16:
                break
            if level:
                img = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)
            tif.write(
                img if damage is None else damage(level, img), photometric="rgb", tile=(tile, tile), compression=compression,
                subfiletype=1 if level else 0, metadata=None, **kwargs,
            )
    return path


SYNTH_TILE = 128
"""Tile size (level-0 px) of the synthetic slide at 0.5 µm/px for a 64-px model at 1.0 µm/px (read from level 1)."""

SYNTH_BLOCKS = {
    # (row0, row1, col0, col1) in tile units, end-exclusive.
    "malignant": (2, 6, 2, 6),
    "normal": (2, 6, 8, 12),
    "benign": (7, 11, 4, 10),
}


def synthetic_slide_rgb(n_cols: int = 16, n_rows: int = 12, tile: int = SYNTH_TILE, seed: int = 0) -> np.ndarray:
    """White background with three tile-aligned coloured blocks (plus mild noise)."""
    rng = np.random.default_rng(seed)
    img = np.full((n_rows * tile, n_cols * tile, 3), 245, dtype=np.uint8)
    for cls, (r0, r1, c0, c1) in SYNTH_BLOCKS.items():
        img[r0 * tile:r1 * tile, c0 * tile:c1 * tile] = TOY_COLORS[cls]
    noise = rng.integers(-6, 7, size=img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


MOSAIC = ["NNNNNNNNNN",
          "NMMMNNNNNN",
          "NMMMNNNBBB",
          "NMMMNNNBBB",
          "NNNNNNNBBN",
          "NNNNNNNNNN",
          "NNNNNMMMNN",
          "NNNNNMMMNN"]
"""A mosaic slide's tiles under the toy model: 15 of 80 malignant in two regions, 8 benign, the rest normal (by
far the largest share): a malignant minority, called malignant (issue 25)."""


def mosaic_rgb(rows: list[str] = MOSAIC, tile: int = SYNTH_TILE, seed: int = 0) -> np.ndarray:
    """An RGB slide of ``rows`` (one letter a tile: M, B, N) in the toy model's colours, with a little noise."""
    colours = {"M": TOY_COLORS["malignant"], "B": TOY_COLORS["benign"], "N": TOY_COLORS["normal"]}
    img = np.zeros((len(rows) * tile, len(rows[0]) * tile, 3), np.uint8)
    for r, line in enumerate(rows):
        for c, ch in enumerate(line):
            img[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = colours[ch]
    noise = np.random.default_rng(seed).integers(-6, 7, size=img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def expected_synthetic_tiles() -> dict[tuple[int, int], str]:
    """(grid_row, grid_col) → class for every tissue tile of ``synthetic_slide_rgb()``."""
    out = {}
    for cls, (r0, r1, c0, c1) in SYNTH_BLOCKS.items():
        for r in range(r0, r1):
            for c in range(c0, c1):
                out[(r, c)] = cls
    return out


def ycbcr_as_rgb(level: int, rgb: np.ndarray) -> np.ndarray:
    """``write_pyramid_tiff(damage=…)``: reduced levels stored as YCbCr labelled RGB (teal / salmon)."""
    return rgb if level == 0 else cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[..., [0, 2, 1]].copy()


def tiff_claiming_size(width: int, height: int, real_px: int = 8) -> bytes:
    """A baseline RGB TIFF with one small uncompressed strip whose header claims ``width × height``.

    A huge claimed size makes OpenCV's decoder assert (``validateInputImageSize``) instead of
    returning nothing: the shape of ``shared/data/slides/bad/pyramid-header-huge-height.tiff``.
    """
    import struct

    pixels = np.full((real_px, real_px, 3), 128, np.uint8).tobytes()
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 2), (273, 4, -1),
               (277, 3, 3), (278, 4, height), (279, 4, len(pixels))]
    ifd_at = 8
    data_at = ifd_at + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", len(entries)))
    for tag, kind, value in entries:
        value = data_at if value == -1 else value
        out += struct.pack("<HHIHH", tag, kind, 1, value, 0) if kind == 3 else struct.pack("<HHII", tag, kind, 1, value)
    return bytes(out + struct.pack("<I", 0) + pixels)


def grid_result(cats: list[str], conf: np.ndarray | None = None, stride: int = 100, mpp: float | None = 0.5,
                slide_wh: tuple[int, int] | None = None) -> Any:
    """A result on a grid of tiles: each string row is one grid row, 'M'/'B'/'N' a tile, '.' none.

    Each tile's category gets probability ``conf`` (0.9 by default), the next category the rest.
    """
    from cellview.analysis.model_spec import CATEGORIES
    from cellview.analysis.results import AnalysisParams, AnalysisResult, ModelInfo, TileState
    from cellview.analysis.tiling import TileGrid
    from cellview.slides.slide import Mpp, SlideInfo

    n_rows, n_cols = len(cats), len(cats[0])
    rows, cols, letters = [], [], []
    for r, line in enumerate(cats):
        for c, ch in enumerate(line):
            if ch != ".":
                rows.append(r)
                cols.append(c)
                letters.append(ch)
    n = len(letters)
    conf = np.full(n, 0.9, np.float32) if conf is None else np.asarray(conf, np.float32)
    k = np.array(["MBN".index(ch) for ch in letters])
    probs = np.full((n, 3), 0.0, np.float32)
    probs[np.arange(n), k] = conf
    probs[np.arange(n), (k + 1) % 3] = 1 - conf
    w, h = slide_wh or (n_cols * stride, n_rows * stride)
    grid = TileGrid(
        slide_w_l0=w, slide_h_l0=h, tile_px=64, tile_l0_w=stride, tile_l0_h=stride, stride_l0_x=stride,
        stride_l0_y=stride, read_level=0, read_w=stride, read_h=stride, n_cols=n_cols, n_rows=n_rows,
        grid_col=np.array(cols, np.int32), grid_row=np.array(rows, np.int32),
        l0_x=np.array(cols, np.int64) * stride, l0_y=np.array(rows, np.int64) * stride,
        tissue_fraction=np.ones(n, np.float32), tissue_threshold=0.25,
    )
    info = SlideInfo(path="grid.tiff", name="grid", vendor="generic-tiff", fingerprint="x",
                     level_dimensions=((w, h),), level_downsamples=(1.0,),
                     mpp=None if mpp is None else Mpp(mpp, mpp, "user"))
    model = ModelInfo(name="toy", version="1", sha256="0", class_names=CATEGORIES, class_categories=CATEGORIES,
                      class_colors=("#ff0000", "#0000ff", "#00ff00"), activation="softmax", temperature=1.0,
                      spacing_um_px=1.0, patch_size_pixels=64)
    return AnalysisResult(slide=info, model=model, params=AnalysisParams(), grid=grid, probs=probs,
                          state=np.full(n, TileState.DONE, np.uint8), provider="CPU", status="complete")


# ----------------------------------------------------------------------------- explain / domain toys

CAM_STRIDE = 8
"""The toy CAM network's feature map is the patch averaged over 8 × 8 pixel cells."""


def make_toy_cam_model(folder: Path, patch_px: int = 64, spacing_um: float = 0.5, explain_outputs: bool = True,
                       name: str = "toy-cam") -> Path:
    """A GAP + linear conv net whose answer depends on where a coloured square is (no torch needed).

    uint8 NHWC tiles → /255 → NCHW → 1×1 convolution into colour detectors (red-, blue-,
    green-ness: a channel minus the mean of the other two, ReLU; plus brightness) → 8 × 8 average
    pooling → 1×1 convolution + ReLU (the "last conv" feature map, 4 channels) → global average
    pooling → Flatten → Gemm → logits (malignant, benign, normal). A red square on grey makes the
    tile malignant, and the malignant class activation map peaks on the square. With
    ``explain_outputs`` the graph gets ``features``, ``feature_map`` and ``cam`` by the same graph
    surgery that upgrades real models (cellview.analysis.onnx_graph).
    """
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    inp = helper.make_tensor_value_info("tiles", TensorProto.UINT8, ["N", patch_px, patch_px, 3])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])
    half = -0.5
    colour = np.array([[1, half, half], [half, half, 1], [half, 1, half], [1 / 3, 1 / 3, 1 / 3]], np.float32)
    head = np.array([[30, 0, 0, 0], [0, 30, 0, 0], [0, 0, 30, 0]], np.float32)
    inits = [
        helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 255]),
        helper.make_tensor("colour_w", TensorProto.FLOAT, [4, 3, 1, 1], colour.flatten().tolist()),
        helper.make_tensor("mix_w", TensorProto.FLOAT, [4, 4, 1, 1], np.eye(4, dtype=np.float32).flatten().tolist()),
        helper.make_tensor("mix_b", TensorProto.FLOAT, [4], [0.0] * 4),
        helper.make_tensor("fc.weight", TensorProto.FLOAT, [3, 4], head.flatten().tolist()),
        helper.make_tensor("fc.bias", TensorProto.FLOAT, [3], [0.0, 0.0, 0.05]),
    ]
    nodes = [
        helper.make_node("Cast", ["tiles"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "scale"], ["xs"]),
        helper.make_node("Transpose", ["xs"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "colour_w"], ["colour"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["colour"], ["detect"]),
        helper.make_node("AveragePool", ["detect"], ["cells"], kernel_shape=[CAM_STRIDE, CAM_STRIDE],
                         strides=[CAM_STRIDE, CAM_STRIDE]),
        helper.make_node("Conv", ["cells", "mix_w", "mix_b"], ["mixed"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["mixed"], ["fmap"]),
        helper.make_node("GlobalAveragePool", ["fmap"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(nodes, "toy-cam", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    if explain_outputs:
        from cellview.analysis.onnx_graph import add_explain_outputs

        model = add_explain_outputs(model)
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    sidecar = {
        "spec_version": "1.0", "name": name, "version": "0.0-test", "architecture": "toy-cam",
        "num_classes": 3, "class_names": list(TOY_CLASSES), "class_categories": list(TOY_CLASSES),
        "class_colors": ["#d62728", "#ff9f1c", "#2ca02c"], "patch_size_pixels": patch_px,
        "spacing_um_px": spacing_um, "activation": "softmax", "temperature": 1.0,
        "input": {"layout": "NHWC", "dtype": "uint8"}, "onnx_sha256": sha256_file(path),
        "license": "CC0-1.0", "training_data": "none: a fixed rule for tests",
    }
    if explain_outputs:
        sidecar["outputs"] = ["logits", "features", "feature_map", "cam"]
    (folder / "model.json").write_text(json.dumps(sidecar, indent=2))
    return path


def square_tile(colour: tuple[int, int, int], xy: tuple[int, int], size: int = 16, patch_px: int = 64,
                background: int = 200) -> np.ndarray:
    """A grey (``background``) tile with one coloured square whose top-left corner is ``xy``."""
    tile = np.full((patch_px, patch_px, 3), background, np.uint8)
    x, y = xy
    tile[y:y + size, x:x + size] = colour
    return tile


def toy_domain_tiles(n_per_class: int = 40, patch_px: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tiles of the toy colour model's domain, made like the synthetic slide's: a class colour (give or
    take a little) with ±6 noise, read at half resolution (tiles, labels)."""
    rng = np.random.default_rng(seed)
    tiles, labels = [], []
    for k, cls in enumerate(TOY_CLASSES):
        base = np.array(TOY_COLORS[cls], np.int16)
        for _ in range(n_per_class):
            full = base + rng.integers(-3, 4, 3) + rng.integers(-6, 7, (2 * patch_px, 2 * patch_px, 3))
            full = np.clip(full, 0, 255).astype(np.uint8)
            tiles.append(cv2.resize(full, (patch_px, patch_px), interpolation=cv2.INTER_AREA))
            labels.append(k)
    return np.stack(tiles), np.array(labels)


def make_toy_domain(model_path: Path, patch_px: int = 64, training_data: str = "red, blue and green test tiles") -> Path:
    """Fit and write domain statistics for a toy model with a ``features`` output; returns the .npz path.

    Fitted on noisy tiles of the three class colours (``toy_domain_tiles``), calibrated on another
    draw of the same: tiles of other colours score out of domain.
    """
    from cellview.analysis.classifier import OnnxClassifier
    from cellview.analysis.domain import fit_domain, tile_quality
    from cellview.analysis.domain_store import write_domain
    from cellview.analysis.model_spec import ModelSpec

    clf = OnnxClassifier(ModelSpec.load(model_path), device="cpu")
    fit_tiles, fit_labels = toy_domain_tiles(patch_px=patch_px, seed=1)
    cal_tiles, cal_labels = toy_domain_tiles(patch_px=patch_px, seed=2)
    (fit_f,) = clf.run(fit_tiles, ("features",))
    (cal_f,) = clf.run(cal_tiles, ("features",))
    stats = fit_domain(fit_f, fit_labels, cal_f, cal_labels, tile_quality(cal_tiles),
                       info={"training_data": training_data})
    return write_domain(model_path, stats)


def make_toy_cam_domain_model(folder: Path, patch_px: int = 64, spacing_um: float = 1.0) -> Path:
    """The toy class-activation-map net (``make_toy_cam_model``) with domain statistics of plain red,
    blue and green tiles (``make_toy_domain``): the viewer's domain banner and activation maps together."""
    path = make_toy_cam_model(folder, patch_px=patch_px, spacing_um=spacing_um, name="toy-cam-domain")
    make_toy_domain(path, patch_px=patch_px)
    return path


SQUARE_BLOCK = (1, 5, 1, 7)
"""(row0, row1, col0, col1) in tiles of ``square_slide_rgb``: pink tiles, each with a red square."""
SQUARE_AT = (40, 8, 16)
"""x, y and side of the red square inside each of those tiles, in model patch pixels (64-px patches)."""
PINK = (240, 190, 220)


def square_slide_rgb(n_cols: int = 8, n_rows: int = 6, tile: int = SYNTH_TILE, seed: int = 0) -> np.ndarray:
    """White glass with a block of pink tiles (stroma-like, no class colour), each with one red square at
    ``SQUARE_AT``: the toy CAM model calls them malignant from the square (its map peaks there), and
    domain statistics fitted on plain class colours call them out of domain. At 0.5 µm/px, read by a
    64-px model at 1.0 µm/px, every tile is a 128-px cell of this image."""
    rng = np.random.default_rng(seed)
    img = np.full((n_rows * tile, n_cols * tile, 3), 245, dtype=np.uint8)
    r0, r1, c0, c1 = SQUARE_BLOCK
    img[r0 * tile:r1 * tile, c0 * tile:c1 * tile] = PINK
    k = tile // 64  # level-0 pixels per model pixel
    x, y, side = (v * k for v in SQUARE_AT)
    for r in range(r0, r1):
        for c in range(c0, c1):
            img[r * tile + y:r * tile + y + side, c * tile + x:c * tile + x + side] = TOY_COLORS["malignant"]
    noise = rng.integers(-6, 7, size=img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def odd_slide_rgb(block: tuple[int, int, int, int] = (7, 10, 12, 16), colour: tuple[int, int, int] = (230, 200, 40)
                  ) -> np.ndarray:
    """``synthetic_slide_rgb`` with one more block in a colour of no class (yellow by default): out of the
    toy domain, a minority of the tissue (12 of 68 tiles)."""
    rgb = synthetic_slide_rgb()
    r0, r1, c0, c1 = block
    rgb[r0 * SYNTH_TILE:r1 * SYNTH_TILE, c0 * SYNTH_TILE:c1 * SYNTH_TILE] = colour
    return rgb


def hatch_stripes(img: np.ndarray) -> float:
    """How much a picture changes across "/" diagonals compared with along them: about 1 for stain and
    squares, several times more where the out-of-domain hatching's lines run (tests of what is drawn)."""
    g = np.asarray(img)[..., :3].astype(np.float64).mean(axis=-1)
    along = np.abs(g[1:, :-1] - g[:-1, 1:]).mean()
    across = np.abs(g[1:, 1:] - g[:-1, :-1]).mean()
    return float(across / max(along, 1e-9))


LAB_COLOURS = {"malignant": (170, 60, 225), "benign": (225, 60, 170), "normal": (60, 200, 60)}
"""A lab the toy models get wrong: its malignant tissue is bluish purple and its benign reddish purple, so the
colour rule calls them the other way round (the adaptation tests' known answer)."""
LAB_BLOCKS = ("malignant", "benign", "normal", "malignant", "benign", "normal")
"""Left to right, the categories of ``lab_slide_rgb``'s six blocks."""


def lab_image(colour: tuple[int, int, int], seed: int, size: int = 128) -> np.ndarray:
    """A ``size`` square of ``colour`` (give or take 12) with ±8 noise: one labelled image of the lab."""
    rng = np.random.default_rng(seed)
    img = np.array(colour, np.int16) + rng.integers(-12, 13, 3) + rng.integers(-8, 9, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def lab_slide_rgb(block_px: int = 128, gap_px: int = 64, height_px: int = 384) -> np.ndarray:
    """Glass with the six ``LAB_BLOCKS`` side by side, ``block_px`` wide and ``height_px`` tall, ``gap_px`` apart
    (at 1 µm/px and the toy models' 64-px tiles: 2 × 6 tiles per block)."""
    width = gap_px + len(LAB_BLOCKS) * (block_px + gap_px)
    rgb = np.full((height_px + 2 * gap_px, width, 3), 240, np.uint8)
    for k, cat in enumerate(LAB_BLOCKS):
        x0 = gap_px + k * (block_px + gap_px)
        rgb[gap_px:gap_px + height_px, x0:x0 + block_px] = lab_image(LAB_COLOURS[cat], k, size=max(block_px, height_px))[
            :height_px, :block_px]
    return rgb


def lab_block_rect(k: int, block_px: int = 128, gap_px: int = 64, height_px: int = 384) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) level-0 corners of block ``k`` of ``lab_slide_rgb``."""
    x0 = gap_px + k * (block_px + gap_px)
    return x0, gap_px, x0 + block_px, gap_px + height_px


def synthetic_smear(size: int = 224, seed: int = 0, white_cells: int = 1, red_cell_px: float = 16.0,
                    tint: str = "pink") -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A blood smear field (RGB uint8) and the centres (x, y) of its white cells.

    A pale field, red cells ``red_cell_px`` across (pink, or grey-lilac with ``tint="grey"``) with paler
    centres, and ``white_cells`` white cells: a saturated violet nucleus in a faint cytoplasm — what a
    Wright-Giemsa smear at 100× looks like, and what the H&E tissue rule sees no tissue in.
    """
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.float32)
    img[...] = (246, 244, 240)
    img += rng.normal(0, 1.5, img.shape)
    rbc = (236, 196, 202) if tint == "pink" else (200, 196, 222)
    r = red_cell_px / 2
    for _ in range(int((size / red_cell_px) ** 2 * 0.45)):
        cx, cy = rng.uniform(0, size, 2)
        cv2.circle(img, (int(cx), int(cy)), int(round(r)), rbc, -1, cv2.LINE_AA)
        pale = tuple(0.5 * c + 0.5 * 245 for c in rbc)
        cv2.circle(img, (int(cx), int(cy)), max(1, int(round(r * 0.4))), pale, -1, cv2.LINE_AA)
    centres = []
    for _ in range(white_cells):
        cx, cy = (int(v) for v in rng.uniform(red_cell_px * 1.2, size - red_cell_px * 1.2, 2))
        cv2.circle(img, (cx, cy), int(round(red_cell_px * 0.75)), (205, 195, 225), -1, cv2.LINE_AA)
        cv2.ellipse(img, (cx, cy), (int(round(red_cell_px * 0.55)), int(round(red_cell_px * 0.45))),
                    float(rng.uniform(0, 180)), 0, 360, (120, 60, 170), -1, cv2.LINE_AA)
        centres.append((cx, cy))
    return np.clip(img, 0, 255).astype(np.uint8), centres
