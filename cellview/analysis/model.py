"""Model metadata (a JSON sidecar next to the ONNX file) and an ONNX Runtime classifier.

The sidecar is a superset of WSInfer's ``config.json`` so the same description serves both
tools. It is validated on load so that a wrong or mismatched model fails with a sentence a
person understands instead of a shape error deep inside a run.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import platformdirs

from cellview.analysis.callrule import CallThresholds
from cellview.analysis.stain import StainReference
from cellview.base.errors import ModelError

if TYPE_CHECKING:
    from cellview.analysis.domain import DomainStats

log = logging.getLogger(__name__)

CATEGORIES = ("malignant", "benign", "normal")
"""The three categories the heatmap shows; every class maps to one of them."""

CATEGORY_COLORS = {"malignant": "#d62728", "benign": "#ff9f1c", "normal": "#2ca02c"}
"""Heatmap colours per category (red / amber / green)."""

ACTIVATIONS = ("softmax", "sigmoid", "none")
LAYOUTS = ("NHWC", "NCHW")
DTYPES = ("uint8", "float32")
DEVICES = ("auto", "cpu", "cuda", "tensorrt")
PRECISIONS = ("auto", "fp32", "int8", "fp16")
"""Which copy of the weights runs. ``auto``: on a CPU the model's INT8 copy when it ships one that passed its
validation (``model.int8.json``), else FP32; on a GPU FP16 (TensorRT's FP16 engine, or the FP16 copy on CUDA)."""
PRECISION_LABELS = {"fp32": "FP32", "int8": "INT8", "fp16": "FP16"}
PRECISION_CHOICES = {"auto": "Auto (INT8 on a CPU if validated)", "fp32": "FP32", "int8": "INT8", "fp16": "FP16"}
"""How the viewer and the kiosk name each ``--precision`` choice."""
TTA_MODES = ("none", "flips", "d4")
"""Test-time augmentation: none; the 4 flips (identity, left-right, up-down, both); all 8 flips/90° rotations."""

_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


@dataclass(frozen=True)
class InputSpec:
    """How tiles are fed to the graph: raw uint8 (normalisation inside the graph) or float."""

    layout: str = "NHWC"
    dtype: str = "uint8"
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ModelSpec:
    """Validated model metadata. ``onnx_path`` is where the weights live."""

    name: str
    version: str
    class_names: tuple[str, ...]
    class_categories: tuple[str, ...]
    class_colors: tuple[str, ...]
    patch_size_pixels: int
    spacing_um_px: float
    activation: str
    temperature: float
    input: InputSpec
    onnx_path: Path
    onnx_sha256: str
    license: str = ""
    training_data: str = ""
    description: str = ""
    architecture: str = ""
    stain_reference: StainReference | None = None  # the training data's stain; None: normalisation unavailable
    metrics: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    domain_path: Path | None = None  # out-of-domain statistics (``domain.npz``), validated on load
    domain_sha256: str = ""
    domain: DomainStats | None = field(default=None, compare=False, hash=False, repr=False)
    precision: str = "fp32"  # of these weights: fp32, or the model's int8 / fp16 copy
    call: CallThresholds = field(default_factory=CallThresholds)  # the slide call's thresholds (sidecar 'call')

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def sidecar_path(self) -> Path:
        return sidecar_for(self.onnx_path)

    def category_index(self) -> np.ndarray:
        """Index into CATEGORIES for every class (int array of length num_classes)."""
        return np.array([CATEGORIES.index(c) for c in self.class_categories], dtype=np.int64)

    def class_rgb(self) -> np.ndarray:
        return np.array([hex_to_rgb(c) for c in self.class_colors], dtype=np.uint8)

    @property
    def int8_validated(self) -> bool:
        """An INT8 copy whose validation against FP32 met every threshold (what ``--precision auto`` runs)."""
        return self.precision == "int8" and (self.raw.get("validation") or {}).get("passed") is True

    @property
    def validation_note(self) -> str:
        """Why an INT8 copy is not validated, in one line ('' when it is, or for other precisions); the model
        card and ``raw['validation']['reasons']`` list every figure that missed."""
        if self.precision != "int8" or self.int8_validated:
            return ""
        reasons = [str(r) for r in (self.raw.get("validation") or {}).get("reasons") or ["not validated"]]
        more = f" and {len(reasons) - 1} more, see the model card" if len(reasons) > 1 else ""
        return reasons[0] + more

    @property
    def result_sha256(self) -> str:
        """Identity of everything that shapes a result: the weights, plus the domain statistics when present
        (the result cache's model key; the metadata JSON records the two hashes separately)."""
        return self.onnx_sha256 if not self.domain_sha256 else f"{self.onnx_sha256}+{self.domain_sha256}"

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelSpec:
        """Load from an ``.onnx`` file, its sidecar ``.json``, or a folder holding ``model.onnx``."""
        onnx_path, sidecar = _resolve_paths(Path(path))
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelError(f"The model sidecar {sidecar.name} is not valid JSON.", str(exc)) from exc
        except OSError as exc:
            raise ModelError(f"Cannot read the model sidecar {sidecar}.", str(exc)) from exc
        return cls.from_dict(data, onnx_path, verify_sha256=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], onnx_path: Path, verify_sha256: bool = True) -> ModelSpec:
        where = f"model sidecar for {onnx_path.name}"
        if not isinstance(data, dict):
            raise ModelError(f"The {where} must be a JSON object.")

        def need(key: str) -> Any:
            if key not in data:
                raise ModelError(f"The {where} has no '{key}' field.")
            return data[key]

        class_names = need("class_names")
        if not isinstance(class_names, list) or not class_names or not all(isinstance(c, str) for c in class_names):
            raise ModelError(f"The {where}: 'class_names' must be a non-empty list of names.")
        n = len(class_names)
        num_classes = need("num_classes")
        if num_classes != n:
            raise ModelError(
                f"The {where} says num_classes={num_classes} but lists {n} class names.",
            )
        cats = data.get("class_categories")
        if cats is None:
            guessed = [c.lower() for c in class_names]
            if all(c in CATEGORIES for c in guessed):
                cats = guessed
            else:
                raise ModelError(
                    f"The {where} has no 'class_categories': give each class one of "
                    f"{', '.join(CATEGORIES)}.",
                )
        if not isinstance(cats, list) or len(cats) != n:
            raise ModelError(f"The {where}: 'class_categories' must list one category per class ({n}).")
        bad = [c for c in cats if c not in CATEGORIES]
        if bad:
            raise ModelError(
                f"The {where}: unknown category {bad[0]!r}; use one of {', '.join(CATEGORIES)}.",
            )
        colors = data.get("class_colors") or [CATEGORY_COLORS[c] for c in cats]
        if not isinstance(colors, list) or len(colors) != n or not all(isinstance(c, str) and _HEX.match(c) for c in colors):
            raise ModelError(f"The {where}: 'class_colors' must be {n} colours like '#d62728'.")
        patch = need("patch_size_pixels")
        if isinstance(patch, list):  # WSInfer allows [h, w]; we support square patches
            if len(patch) != 2 or patch[0] != patch[1]:
                raise ModelError(f"The {where}: only square patches are supported, got {patch}.")
            patch = patch[0]
        if not isinstance(patch, int) or not 8 <= patch <= 4096:
            raise ModelError(f"The {where}: 'patch_size_pixels' must be an integer from 8 to 4096.")
        spacing = need("spacing_um_px")
        if not isinstance(spacing, (int, float)) or not 0.01 <= float(spacing) <= 100:
            raise ModelError(f"The {where}: 'spacing_um_px' must be a number of µm per pixel (0.01–100).")
        activation = data.get("activation", "softmax")
        if activation not in ACTIVATIONS:
            raise ModelError(f"The {where}: 'activation' must be one of {', '.join(ACTIVATIONS)}.")
        temperature = data.get("temperature", 1.0)
        if not isinstance(temperature, (int, float)) or not 0.01 <= float(temperature) <= 100:
            raise ModelError(f"The {where}: 'temperature' must be a positive number.")
        inp = data.get("input", {})
        if not isinstance(inp, dict):
            raise ModelError(f"The {where}: 'input' must be an object.")
        layout = inp.get("layout", "NHWC")
        dtype = inp.get("dtype", "uint8")
        if layout not in LAYOUTS:
            raise ModelError(f"The {where}: input 'layout' must be NHWC or NCHW.")
        if dtype not in DTYPES:
            raise ModelError(f"The {where}: input 'dtype' must be uint8 or float32.")
        try:
            mean = tuple(float(v) for v in inp.get("mean", (0.0, 0.0, 0.0)))
            std = tuple(float(v) for v in inp.get("std", (1.0, 1.0, 1.0)))
            scale = float(inp.get("scale", 1.0 if dtype == "uint8" else 1.0 / 255.0))
        except (TypeError, ValueError) as exc:
            raise ModelError(f"The {where}: input 'mean', 'std' and 'scale' must be numbers.") from exc
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ModelError(f"The {where}: input 'mean' and 'std' need 3 values, std > 0.")
        stain = data.get("stain_reference")
        stain_reference = None if stain is None else StainReference.from_dict(stain, where)
        sha = data.get("onnx_sha256", "")
        if not onnx_path.is_file():
            raise ModelError(f"The model file {onnx_path} does not exist.")
        if verify_sha256 and sha:
            actual = sha256_file(onnx_path)
            if actual != sha:
                raise ModelError(
                    f"The model file {onnx_path.name} does not match its sidecar (sha256 differs); "
                    "the sidecar may belong to another model.",
                    f"sidecar {sha[:12]}…, file {actual[:12]}…",
                )
        domain_path, domain_sha, domain = _load_domain(data.get("domain"), onnx_path, where, len(class_names))
        precision = data.get("precision") or ("fp16" if onnx_path.name.endswith(".fp16.onnx") else "fp32")
        if precision not in PRECISION_LABELS:
            raise ModelError(f"The {where}: 'precision' must be one of {', '.join(PRECISION_LABELS)}.")
        call = CallThresholds.from_sidecar(data.get("call"), where)
        return cls(
            name=str(data.get("name") or onnx_path.parent.name or onnx_path.stem),
            version=str(data.get("version", "")),
            class_names=tuple(class_names),
            class_categories=tuple(cats),
            class_colors=tuple(c.lower() for c in colors),
            patch_size_pixels=int(patch),
            spacing_um_px=float(spacing),
            activation=activation,
            temperature=float(temperature),
            input=InputSpec(layout=layout, dtype=dtype, scale=scale, mean=mean, std=std),  # type: ignore[arg-type]
            onnx_path=onnx_path,
            onnx_sha256=sha or sha256_file(onnx_path),
            license=str(data.get("license", "")),
            training_data=str(data.get("training_data", "")),
            description=str(data.get("description", "")),
            architecture=str(data.get("architecture", "")),
            stain_reference=stain_reference,
            metrics=dict(data.get("metrics", {}) or {}),
            raw=data,
            domain_path=domain_path,
            domain_sha256=domain_sha,
            domain=domain,
            precision=precision,
            call=call,
        )


def _load_domain(entry: Any, onnx_path: Path, where: str,
                 num_classes: int) -> tuple[Path | None, str, DomainStats | None]:
    """The sidecar's optional ``domain`` entry → (path, sha256, validated statistics)."""
    if entry is None:
        return None, "", None
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"]:
        raise ModelError(f"The {where}: 'domain' must be an object with the statistics 'file' and its 'sha256'.")
    sha = entry.get("sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ModelError(f"The {where}: 'domain' needs the sha256 of {entry['file']}.")
    path = onnx_path.parent / entry["file"]
    if not path.is_file():
        raise ModelError(
            f"The {where} names domain statistics {entry['file']} that are not next to the model; "
            "restore the file, or remove the sidecar's 'domain' entry to run without a domain score.",
        )
    from cellview.analysis.domain import DomainStats

    stats = DomainStats.load(path, sha)
    if len(stats.class_means) > num_classes:
        raise ModelError(f"The domain statistics {path.name} hold {len(stats.class_means)} classes; the model has "
                         f"{num_classes}. They belong to another model.")
    return path, sha, stats


def sidecar_for(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


def precision_path(onnx_path: Path, precision: str) -> Path:
    """The file of a model's copy at ``precision``: ``model.onnx`` ↔ ``model.int8.onnx`` / ``model.fp16.onnx``."""
    stem = onnx_path.name.removesuffix(".onnx")
    for p in PRECISION_LABELS:
        stem = stem.removesuffix(f".{p}")
    return onnx_path.with_name(f"{stem}.onnx" if precision == "fp32" else f"{stem}.{precision}.onnx")


def precision_copy(spec: ModelSpec, precision: str) -> ModelSpec | None:
    """The same model's weights at ``precision`` (a file next to it), under the model's name; None when it
    ships no such copy or the copy was made from other weights (an INT8 copy records its source's sha256)."""
    if spec.precision == precision:
        return spec
    path = precision_path(spec.onnx_path, precision)
    if not path.is_file() or not sidecar_for(path).is_file():
        return None
    copy = ModelSpec.load(path)
    base, other = (copy, spec) if precision == "fp32" else (spec, copy)
    if base.precision == "fp32" and other.precision != "fp32":
        source = (other.raw.get("quantization") or {}).get("source_onnx_sha256")
        if (source and source != base.onnx_sha256) or (other.version, other.class_names) != (base.version, base.class_names):
            log.warning("%s was not made from %s; ignoring it", other.onnx_path.name, base.onnx_path.name)
            return None
    return replace(copy, name=spec.name, call=same_call(spec, copy))


def same_call(spec: ModelSpec, copy: ModelSpec) -> CallThresholds:
    """The slide-call thresholds of a model and its copy at another precision: one set for the model. A sidecar
    without a ``call`` section takes the other's; two different sections are refused (ModelError)."""
    has_spec, has_copy = "call" in spec.raw, "call" in copy.raw
    if has_spec and has_copy and spec.call != copy.call:
        raise ModelError(f"The slide-call thresholds ('call') of {copy.sidecar_path.name} differ from those of "
                         f"{spec.sidecar_path.name}; the copies of one model must share them.")
    return spec.call if has_spec or not has_copy else copy.call


def copy_with_sha(spec: ModelSpec, sha256: str) -> ModelSpec | None:
    """The model's copy (FP32, INT8 or FP16) whose weights have this sha256, e.g. the one that made a result."""
    for precision in PRECISION_LABELS:
        copy = precision_copy(spec, precision)
        if copy is not None and copy.onnx_sha256 == sha256:
            return copy
    return None


def choose_precision(spec: ModelSpec, requested: str, gpu: bool, tensorrt: bool) -> tuple[ModelSpec, str, str]:
    """(weights to load, precision that runs, note for the user) for a ``--precision`` choice.

    ``gpu``: a GPU provider will run the model; ``tensorrt``: TensorRT will, which builds its own FP16 engine
    from the FP32 graph (and an INT8 one from the INT8 copy's quantise / dequantise nodes).
    Raises ModelError when an explicitly requested copy is not shipped.
    """
    if requested not in PRECISIONS:
        raise ModelError(f"Unknown precision {requested!r}; use one of {', '.join(PRECISIONS)}.")
    base = precision_copy(spec, "fp32") or spec
    if requested == "fp32":
        return base, "fp32", ""
    if requested == "int8":
        copy = precision_copy(base, "int8")
        if copy is None:
            raise ModelError(f"The model {base.name} ships no INT8 copy ({precision_path(base.onnx_path, 'int8').name}); "
                             "make one with `cellview export RUN --out MODEL_DIR --int8-only`, or use --precision fp32.")
        note = "" if copy.int8_validated else f"INT8 copy not validated: {copy.validation_note}"
        return copy, "int8", note
    if requested == "fp16":
        if tensorrt:
            return base, "fp16", ""
        copy = precision_copy(base, "fp16")
        if copy is None:
            raise ModelError(f"The model {base.name} ships no FP16 copy ({precision_path(base.onnx_path, 'fp16').name}).")
        return copy, "fp16", "" if gpu else "FP16 on a CPU runs slower than FP32"
    if gpu:
        if tensorrt:
            return base, "fp16", ""
        copy = precision_copy(base, "fp16")
        return (copy, "fp16", "") if copy is not None else (base, "fp32", "")
    copy = precision_copy(base, "int8")
    if copy is not None and copy.int8_validated:
        return copy, "int8", ""
    note = f"INT8 copy not used ({copy.validation_note})" if copy is not None else ""
    return base, "fp32", note


def _resolve_paths(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        path = path / "model.onnx"
    if path.suffix.lower() == ".json":
        sidecar, onnx_path = path, path.with_suffix(".onnx")
    else:
        onnx_path, sidecar = path, sidecar_for(path)
    if not onnx_path.exists():
        raise ModelError(f"The model file {onnx_path} does not exist.")
    if not sidecar.exists():
        raise ModelError(
            f"The model {onnx_path.name} has no sidecar {sidecar.name} next to it; CellView needs it "
            "to know the classes, tile size and µm per pixel.",
        )
    return onnx_path, sidecar


# ----------------------------------------------------------------------------- model discovery


MODELS_ENV = "CELLVIEW_MODELS_DIR"
DEFAULT_MODEL = "colon-he"

ORIGINS = {
    "env": "$CELLVIEW_MODELS_DIR",
    "user": "your models folder",
    "bundled": "bundled with CellView",
}
"""Where a model was found (``ModelEntry.origin``), in lookup order, with the words ``cellview models`` uses."""


def user_models_dir() -> Path:
    """This user's own models: where ``cellview export``, ``cellview adapt`` and the viewer save new ones."""
    return Path(platformdirs.user_data_dir("cellview")) / "models"


def bundled_models_dir() -> Path | None:
    """The models shipped with CellView, or None when this install has none.

    A wheel (and the PyInstaller bundle) carries them as ``cellview/models/`` next to this module;
    a source checkout, editable installs included, has them at the repository's ``models/``: the
    wheel's copy is made from that folder at build time (pyproject.toml maps it), so the repository
    keeps one copy.
    """
    package = Path(__file__).resolve().parents[1]  # cellview/
    if (package / "models").is_dir():
        return package / "models"
    checkout = package.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "models").is_dir():
        return checkout / "models"
    return None


@dataclass(frozen=True)
class ModelRoot:
    """A folder of ``<name>/model.onnx`` + ``model.json``; ``origin`` is a key of ORIGINS."""

    origin: str
    path: Path


def model_roots(keep_duplicates: bool = False) -> list[ModelRoot]:
    """The folders a model name is looked up in, in order; the first that has the name wins.

    The lookup (README, Install; printed by ``cellview models``): an explicit path (``--model
    PATH``, a file or a folder) is used as it is; a name is looked up in $CELLVIEW_MODELS_DIR, then
    in the user's models folder (user_models_dir), then among the models bundled with CellView.
    So a model you export or adapt under a bundled model's name is the one that runs, and
    ``cellview models`` says which one it hides. A folder that is listed twice counts once (unless
    ``keep_duplicates``).
    """
    candidates = []
    env = os.environ.get(MODELS_ENV)
    if env:
        candidates.append(ModelRoot("env", Path(env).expanduser()))
    candidates.append(ModelRoot("user", user_models_dir()))
    bundled = bundled_models_dir()
    if bundled is not None:
        candidates.append(ModelRoot("bundled", bundled))
    if keep_duplicates:
        return candidates
    roots: list[ModelRoot] = []
    seen: set[Path] = set()
    for root in candidates:
        key = root.path.resolve()
        if key not in seen:
            seen.add(key)
            roots.append(root)
    return roots


@dataclass(frozen=True)
class ModelEntry:
    """One model found by the lookup. ``hidden_by`` is the origin of an earlier model of the same name."""

    name: str
    path: Path  # the model.onnx
    origin: str
    hidden_by: str = ""


def _scan(root: Path) -> list[tuple[str, Path]]:
    """(name, onnx) for every ``root/<name>/model.onnx`` with its sidecar, by name."""
    if not root.is_dir():
        return []
    return [(onnx.parent.name, onnx) for onnx in sorted(root.glob("*/model.onnx")) if sidecar_for(onnx).exists()]


def model_entries(include_hidden: bool = False) -> list[ModelEntry]:
    """Every model the lookup finds, in lookup order (root by root, by name within a root).

    Without ``include_hidden`` only the model each name resolves to; with it also the ones an
    earlier root hides (``hidden_by`` says which root).
    """
    entries: list[ModelEntry] = []
    winner: dict[str, str] = {}
    for root in model_roots():
        for name, onnx in _scan(root.path):
            if name not in winner:
                winner[name] = root.origin
                entries.append(ModelEntry(name, onnx, root.origin))
            elif include_hidden:
                entries.append(ModelEntry(name, onnx, root.origin, hidden_by=winner[name]))
    return entries


def available_models(root: Path | None = None) -> dict[str, Path]:
    """Model name → onnx path over every model root (see model_roots), or of one ``root`` folder."""
    if root is not None:
        return dict(_scan(root))
    return {e.name: e.path for e in model_entries()}


def resolve_model(name_or_path: str | None) -> Path:
    """A model name (looked up as model_roots says) or a path; ModelError says plainly when none is there."""
    if name_or_path and (os.sep in name_or_path or name_or_path.endswith((".onnx", ".json")) or Path(name_or_path).exists()):
        return Path(name_or_path)
    models = available_models()
    name = name_or_path or DEFAULT_MODEL
    if name in models:
        return models[name]
    if not models:
        where = "; ".join(f"{ORIGINS[r.origin]} {r.path}" for r in model_roots())
        raise ModelError(
            f"No model found: no <name>/model.onnx with its sidecar in {where}. "
            "Pass one with --model PATH.onnx (train one with `cellview train`; `cellview models` shows where "
            "models are looked up).",
        )
    raise ModelError(f"No model named {name!r}; available: {', '.join(sorted(models))}.")


# ----------------------------------------------------------------------------- inference

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
