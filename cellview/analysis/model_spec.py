"""What a model is: its JSON sidecar, validated into a ModelSpec, and the copies of its weights.

The sidecar is a superset of WSInfer's ``config.json`` so the same description serves both
tools. It is validated on load so that a wrong or mismatched model fails with a sentence a
person understands instead of a shape error deep inside a run. The categories and colours every
screen and file uses live here because each class maps to one of them; the FP32 / INT8 / FP16
copies and the ``--precision`` choice live here because they are files next to the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellview.analysis.callrule import CallThresholds
from cellview.analysis.foreground import Reading
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
PRECISIONS = ("auto", "fp32", "int8", "fp16")
"""Which copy of the weights runs. ``auto``: on a CPU the model's INT8 copy when it ships one that passed its
validation (``model.int8.json``), else FP32; on a GPU FP16 (TensorRT's FP16 engine, or the FP16 copy on CUDA)."""
PRECISION_LABELS = {"fp32": "FP32", "int8": "INT8", "fp16": "FP16"}
PRECISION_CHOICES = {"auto": "Auto (INT8 on a CPU if validated)", "fp32": "FP32", "int8": "INT8", "fp16": "FP16"}
"""How the viewer and the kiosk name each ``--precision`` choice."""

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
    reading: Reading = field(default_factory=Reading)  # foreground rule; images without a pixel size (foreground.py)

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
        key = self.onnx_sha256 if not self.domain_sha256 else f"{self.onnx_sha256}+{self.domain_sha256}"
        if not self.reading.is_default:  # a smear model's reading rules shape its tiles (H&E keys unchanged)
            entries = json.dumps(self.reading.sidecar_entries(), sort_keys=True).encode()
            key += f"+reading:{hashlib.sha256(entries).hexdigest()[:16]}"
        return key

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
        reading = Reading.from_sidecar(data, where)
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
            reading=reading,
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
