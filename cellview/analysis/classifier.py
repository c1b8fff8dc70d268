"""The ONNX Runtime side of a model: providers (TensorRT → CUDA → CPU), probabilities, test-time views.

A ModelSpec (model_spec) says what a model is; this module runs it, on whatever the machine
offers, and says in plain words when a GPU that was asked for is not used.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from cellview.analysis.model_spec import PRECISION_LABELS, ModelSpec, choose_precision
from cellview.base.errors import ModelError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
TTA_MODES = ("none", "flips", "d4")
"""Test-time augmentation: none; the 4 flips (identity, left-right, up-down, both); all 8 flips/90° rotations."""

_PROVIDER_LABELS = {
    "TensorrtExecutionProvider": "TensorRT",
    "CUDAExecutionProvider": "CUDA",
    "CPUExecutionProvider": "CPU",
}


def _can_load(*names: str) -> bool:
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def gpu_runtime_status() -> tuple[bool, bool, str]:
    """(cuda_usable, tensorrt_usable, reason) without asking ONNX Runtime to fail loudly."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    if "CUDAExecutionProvider" not in available:
        return False, False, "this onnxruntime build has no GPU support"
    if not _can_load("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        return False, False, "no NVIDIA GPU driver found"
    try:  # CUDA/cuDNN from the nvidia-* wheels when present (no-op otherwise)
        ort.preload_dlls(cuda=True, cudnn=True)
    except Exception as exc:  # noqa: BLE001 - informational only
        log.debug("preload_dlls failed: %s", exc)
    if not _can_load("libcudart.so.13", "libcudart.so.12", "libcudart.so", "cudart64_12.dll"):
        return False, False, "CUDA runtime libraries not found"
    trt = "TensorrtExecutionProvider" in available and _can_load("libnvinfer.so.10", "nvinfer_10.dll")
    return True, trt, "" if trt else "TensorRT libraries not found"


def spinning_helps() -> bool:
    """Whether ONNX Runtime's threads should spin-wait between operators (its default) rather than sleep.

    Measured on 2 cores (bench/RESULTS.md, issue 21): on an otherwise quiet machine spinning made the
    pipeline 4–6 % faster (the tile readers mostly wait on a full queue, so the spinning costs nothing);
    with other programs running (load average 8–12) it took CPU they and the readers needed: 18 % more CPU
    per tile and up to 45 % fewer tiles per second. So: spin unless the 1-minute load average exceeds the
    cores by more than one (a finished analysis of our own still counts in it for a minute).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return True
    return load <= max(1, cores) + 1


def trt_cache_dir() -> Path:
    path = Path(platformdirs.user_cache_dir("cellview")) / "tensorrt"
    path.mkdir(parents=True, exist_ok=True)
    return path


def probabilities(logits: np.ndarray, activation: str, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probabilities from raw outputs (temperature scaling, then the activation)."""
    z = logits.astype(np.float32) / np.float32(temperature)
    if activation == "softmax":
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    if activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    return logits.astype(np.float32)


class OnnxClassifier:
    """Runs a ModelSpec on batches of RGB uint8 tiles (N, H, W, 3) and returns probabilities.

    Provider order for ``device="auto"``: TensorRT (FP16, cached engine) → CUDA → CPU, each only
    when its libraries are present. When a GPU was asked for and cannot be used, the classifier
    runs on CPU and ``fallback_message`` says why, once, in plain words. ``precision`` picks the copy of
    the weights (``choose_precision``): ``spec`` is then the copy that runs and ``precision`` says which.
    """

    def __init__(self, spec: ModelSpec, device: str = "auto", intra_op_threads: int | None = None,
                 max_batch: int = 64, precision: str = "auto") -> None:
        import onnxruntime as ort

        if device not in DEVICES:
            raise ModelError(f"Unknown device {device!r}; use one of {', '.join(DEVICES)}.")
        self.requested_device = device
        self.requested_precision = precision
        self.domain_cpu_s = 0.0  # CPU time spent on domain scores (the maths after the forward pass)
        self.max_batch = max(1, int(max_batch))
        self.fallback_message: str | None = None
        ort.set_default_logger_severity(3)
        cuda_ok, trt_ok, reason = (False, False, "") if device == "cpu" else gpu_runtime_status()
        use_trt = device in ("auto", "tensorrt") and trt_ok
        use_cuda = device in ("auto", "tensorrt", "cuda") and cuda_ok
        self.spec, self.precision, self.precision_note = choose_precision(spec, precision, use_cuda or use_trt, use_trt)
        wanted: list[Any] = []
        if use_trt:
            wanted.append(("TensorrtExecutionProvider", self._tensorrt_options(ort, self.spec, max_batch,
                                                                                self.precision)))
        if use_cuda:
            wanted.append("CUDAExecutionProvider")
        wanted.append("CPUExecutionProvider")
        if device == "tensorrt" and not trt_ok:
            self.fallback_message = f"TensorRT was asked for but {reason or 'is not usable'}"
        elif device == "cuda" and not cuda_ok:
            self.fallback_message = f"CUDA was asked for but {reason or 'is not usable'}"

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.spinning = spinning_helps()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        # Operators cut into blocks that shrink as they run, so a thread that lost its core to a tile reader
        # leaves less work behind: +5–8 % tiles/s for inference alone on 2 cores (issue 21).
        opts.add_session_config_entry("session.dynamic_block_base", "4")
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        try:
            self.session = ort.InferenceSession(str(self.spec.onnx_path), sess_options=opts, providers=wanted)
        except Exception as exc:  # noqa: BLE001 - ORT raises several types
            if len(wanted) > 1:
                self.fallback_message = f"the GPU provider failed to start ({_first_line(exc)})"
                # The copy chosen for a GPU may not be the one to run on the CPU (FP16 → INT8 / FP32).
                self.spec, self.precision, self.precision_note = choose_precision(spec, precision, False, False)
                self.session = ort.InferenceSession(
                    str(self.spec.onnx_path), sess_options=opts, providers=["CPUExecutionProvider"],
                )
            else:
                raise ModelError(f"ONNX Runtime cannot load {self.spec.onnx_path.name}.", _first_line(exc)) from exc
        self.provider = self.session.get_providers()[0]
        first_wanted = wanted[0][0] if isinstance(wanted[0], tuple) else wanted[0]
        if self.provider != first_wanted and self.fallback_message is None and device != "auto":
            self.fallback_message = f"{_PROVIDER_LABELS.get(first_wanted, first_wanted)} failed to start"
        if self.fallback_message:
            self.fallback_message += "; running on CPU."
            log.info(self.fallback_message)
        self._check_io()

    @staticmethod
    def _tensorrt_options(ort: Any, spec: ModelSpec, max_batch: int, precision: str = "fp16") -> dict[str, Any]:
        """FP16 (or INT8 from the INT8 copy's Q/DQ nodes), engine + timing cache on disk, and one
        optimisation profile for batch 1..max_batch.

        Without a profile TensorRT rebuilds the engine (minutes on a Jetson) for every new batch
        size it meets, such as the last, smaller batch of a slide.
        """
        opts: dict[str, Any] = {
            "trt_fp16_enable": precision in ("fp16", "int8"),
            "trt_int8_enable": precision == "int8",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(trt_cache_dir()),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(trt_cache_dir()),
        }
        quick = ort.SessionOptions()  # only the input's name and shape are read: skip graph optimisation
        quick.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        probe = ort.InferenceSession(str(spec.onnx_path), sess_options=quick, providers=["CPUExecutionProvider"])
        inp = probe.get_inputs()[0]
        p = spec.patch_size_pixels
        dims = (p, p, 3) if spec.input.layout == "NHWC" else (3, p, p)
        if not isinstance(inp.shape[0], int):
            shape = "x".join(str(d) for d in dims)
            opts["trt_profile_min_shapes"] = f"{inp.name}:1x{shape}"
            opts["trt_profile_opt_shapes"] = f"{inp.name}:{max_batch}x{shape}"
            opts["trt_profile_max_shapes"] = f"{inp.name}:{max_batch}x{shape}"
        return opts

    # -- introspection -------------------------------------------------------------------------

    @property
    def provider_label(self) -> str:
        """Provider and, unless plain FP32 on a CPU or CUDA, the precision: 'CPU (INT8)', 'TensorRT (FP16)'."""
        label = _PROVIDER_LABELS.get(self.provider, self.provider)
        if self.precision == "fp32" and label != "TensorRT":
            return label
        return f"{label} ({PRECISION_LABELS[self.precision]})"

    @property
    def on_gpu(self) -> bool:
        return self.provider != "CPUExecutionProvider"

    @property
    def needs_attention(self) -> bool:
        """A GPU was asked for and is not used, or none was found: worth a warning colour."""
        return bool(self.fallback_message) or not self.on_gpu

    def describe(self) -> str:
        """One line for a status bar or CLI: which model runs on what."""
        text = f"{self.spec.name} {self.spec.version}".strip() + f" on {self.provider_label}"
        if self.fallback_message:
            text += f" — {self.fallback_message}"
        elif self.requested_device == "auto" and self.provider == "CPUExecutionProvider":
            text += " (no usable GPU)"
        if self.precision_note:
            text += f"; {self.precision_note}"
        return text

    def _check_io(self) -> None:
        spec = self.spec
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"{spec.onnx_path.name} must have one input, it has {len(inputs)}.")
        inp = inputs[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4:
            raise ModelError(
                f"{spec.onnx_path.name} takes a {len(shape)}-D input {shape}; expected a batch of images "
                f"({spec.input.layout}).",
            )
        if spec.input.layout == "NHWC":
            h, w, c = shape[1], shape[2], shape[3]
        else:
            c, h, w = shape[1], shape[2], shape[3]
        p = spec.patch_size_pixels
        if isinstance(c, int) and c != 3:
            raise ModelError(f"{spec.onnx_path.name} expects {c} channels in {spec.input.layout}; tiles are RGB (3).")
        for dim in (h, w):
            if isinstance(dim, int) and dim != p:
                raise ModelError(
                    f"{spec.onnx_path.name} takes {h}×{w} inputs but its sidecar says {p}×{p} patches.",
                    f"input {inp.name} shape {shape}, layout {spec.input.layout}",
                )
        expected_type = "tensor(uint8)" if spec.input.dtype == "uint8" else "tensor(float)"
        if inp.type != expected_type:
            raise ModelError(
                f"{spec.onnx_path.name} takes {inp.type} but its sidecar says {spec.input.dtype}.",
            )
        out_shape = list(outputs[0].shape)
        if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != spec.num_classes):
            raise ModelError(
                f"{spec.onnx_path.name} outputs shape {out_shape} but its sidecar lists "
                f"{spec.num_classes} classes.",
            )
        self.output_name = outputs[0].name
        self.output_names = tuple(o.name for o in outputs)
        shapes = {o.name: list(o.shape) for o in outputs}
        if spec.domain is not None:
            if "features" not in shapes:
                raise ModelError(
                    f"{spec.onnx_path.name} has domain statistics but no 'features' output to score tiles with; "
                    "add it with `cellview domain upgrade`.",
                )
            dim = shapes["features"][-1] if len(shapes["features"]) == 2 else None
            if isinstance(dim, int) and dim != spec.domain.feature_dim:
                raise ModelError(
                    f"{spec.onnx_path.name} gives {dim} features per tile but its domain statistics expect "
                    f"{spec.domain.feature_dim}; they belong to another model.",
                )

    @property
    def has_domain(self) -> bool:
        """Tiles get a domain score (the model has domain statistics and a features output)."""
        return self.spec.domain is not None

    @property
    def has_cam(self) -> bool:
        """The graph exposes class activation maps (``cam`` output, see cellview.analysis.onnx_graph)."""
        return "cam" in self.output_names

    # -- inference -----------------------------------------------------------------------------

    def prepare(self, tiles: np.ndarray) -> np.ndarray:
        """Tiles (N, H, W, 3) uint8 → the array the graph takes."""
        spec = self.spec.input
        x = tiles
        if spec.dtype == "float32":
            x = x.astype(np.float32) * np.float32(spec.scale)
            x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
        if spec.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x)

    def run(self, tiles: np.ndarray, names: tuple[str, ...] | list[str]) -> list[np.ndarray]:
        """The named graph outputs for a batch of tiles (logits first when asked for, shape-checked)."""
        if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
            raise ModelError(f"Tiles must be (N, H, W, 3) uint8, got {tiles.shape} {tiles.dtype}.")
        missing = [n for n in names if n not in self.output_names]
        if missing:
            raise ModelError(f"{self.spec.onnx_path.name} has no {missing[0]!r} output; "
                             "`cellview domain upgrade` adds features, feature maps and class activation maps.")
        if tiles.shape[0] > self.max_batch:  # the TensorRT profile covers 1..max_batch
            parts = [self.run(tiles[i:i + self.max_batch], names) for i in range(0, tiles.shape[0], self.max_batch)]
            return [np.concatenate([p[j] for p in parts]) for j in range(len(names))]
        outs = self.session.run(list(names), {self.input_name: self.prepare(tiles)})
        for name, out in zip(names, outs):
            if name == self.output_name and out.shape != (tiles.shape[0], self.spec.num_classes):
                raise ModelError(
                    f"{self.spec.onnx_path.name} returned shape {out.shape}; expected "
                    f"({tiles.shape[0]}, {self.spec.num_classes}).",
                )
            if out.shape[0] != tiles.shape[0]:
                raise ModelError(f"{self.spec.onnx_path.name} returned {out.shape[0]} {name} rows for "
                                 f"{tiles.shape[0]} tiles.")
        return outs

    def logits(self, tiles: np.ndarray) -> np.ndarray:
        return self.run(tiles, (self.output_name,))[0]

    def _forward(self, tiles: np.ndarray, tta: str, extra: tuple[str, ...] = ()) -> tuple[np.ndarray, list[np.ndarray]]:
        """Probabilities averaged over the ``tta`` views, and the ``extra`` outputs of the tiles as read."""
        views = tta_views(tiles, tta)
        outs = self.run(views[0] if len(views) == 1 else np.concatenate(views), (self.output_name, *extra))
        probs = probabilities(outs[0], self.spec.activation, self.spec.temperature)
        if len(views) > 1:
            probs = probs.reshape(len(views), len(tiles), -1).mean(axis=0)
        return probs, [out[:len(tiles)] for out in outs[1:]]

    def predict(self, tiles: np.ndarray, tta: str = "none") -> np.ndarray:
        """Calibrated class probabilities, float32 (N, num_classes); ``tta`` averages them over views."""
        return self._forward(tiles, tta)[0]

    def classify(self, tiles: np.ndarray, quality: np.ndarray | None = None,
                 tta: str = "none") -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, domain score or None): logits only, unless the model has domain statistics.

        ``quality`` (``domain.tile_quality`` of the tiles, e.g. computed by the reader threads)
        is computed here when not given. With ``tta`` the probabilities are averaged over the views;
        the domain score is the tile's as read (the first view).
        """
        domain = self.spec.domain
        if domain is None:
            return self.predict(tiles, tta), None
        probs, (features,) = self._forward(tiles, tta, ("features",))
        c0 = time.thread_time()
        score = domain.score(features, tiles=tiles if quality is None else None, quality=quality)
        self.domain_cpu_s += time.thread_time() - c0
        return probs, score


def tta_views(tiles: np.ndarray, mode: str) -> list[np.ndarray]:
    """The flipped / rotated copies of a (N, H, W, 3) batch that test-time augmentation averages over.

    ``flips``: identity, left-right, up-down, both (= 180°); ``d4``: those and the 4 transposed ones,
    i.e. every symmetry of the square, so averaged predictions do not change when a tile is rotated.
    """
    if mode not in TTA_MODES:
        raise ModelError(f"Unknown test-time augmentation {mode!r}; use one of {', '.join(TTA_MODES)}.")
    if mode == "none":
        return [tiles]
    return [dihedral_view(tiles, k) for k in range({"flips": 4, "d4": 8}[mode])]


def dihedral_view(tiles: np.ndarray, k: int) -> np.ndarray:
    """View k (0–7) of a (N, H, W, 3) batch: identity, left-right, up-down, both; then those transposed."""
    out = (tiles, tiles[:, :, ::-1], tiles[:, ::-1], tiles[:, ::-1, ::-1])[k % 4]
    if k >= 4:
        out = out.transpose(0, 2, 1, 3)
    return np.ascontiguousarray(out)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
