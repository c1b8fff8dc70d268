"""``cellview adapt``: a lab's labelled tiles refit the model's linear head, with an honest before / after.

The whole run (``adapt``): read the lab's tiles (``labtiles``), cross-validate the refit by image or
slide (``check``), fit the head on every label (``head``) and write the model folder (``modelfolder``)
when it is better, or when forced. The names other modules import from here are re-exported.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cellview.analysis.model import ModelSpec, OnnxClassifier, precision_copy
from cellview.analysis.pipeline import CancelToken
from cellview.analysis.results import AnalysisParams
from cellview.base.errors import ModelError
from cellview.lab.check import (
    RECOMMENDED_PER_CATEGORY,
    AdaptReport,
    Figures,
    better,
    cross_validate,
    figures,
    label_warnings,
)
from cellview.lab.head import (
    DEFAULT_SETTINGS,
    AdaptSettings,
    LabelTarget,
    fit_head,
    label_targets,
    label_weights,
    source_labels,
)
from cellview.lab.labels import LabelError, LabelSource
from cellview.lab.labtiles import AdaptError, AdaptProgress, LabItem, LabTiles, read_lab_tiles
from cellview.lab.modelfolder import ADAPTATION_FILE, check_out_dir, model_card, write_adapted

__all__ = [
    "ADAPTATION_FILE", "DEFAULT_SETTINGS", "RECOMMENDED_PER_CATEGORY", "AdaptError", "AdaptProgress", "AdaptReport",
    "AdaptSettings", "Figures", "LabItem", "LabTiles", "LabelTarget", "adapt", "better", "cross_validate",
    "default_command", "figures", "fit_head", "label_targets", "label_warnings", "label_weights", "model_card",
    "read_lab_tiles", "source_labels", "write_adapted",
]


def adapt(sources: Sequence[LabelSource], base: ModelSpec, out_dir: Path | None, params: AnalysisParams,
          name: str | None = None, force: bool = False, settings: AdaptSettings = DEFAULT_SETTINGS,
          cancel: CancelToken | None = None, command: str = "",
          classifier: OnnxClassifier | None = None) -> Iterator[AdaptProgress | AdaptReport]:
    """The whole adaptation: read, cross-validate, fit on everything, write (when better, or forced).

    Yields AdaptProgress, then one AdaptReport. Raises LabelError / AdaptError / ModelError for input
    that cannot be adapted on; the message says what to change. ``out_dir`` None: measure only.
    """
    import time

    t0 = time.perf_counter()
    cancel = cancel or CancelToken()
    if base.precision != "fp32":  # the head is fitted on, and written into, the trained weights
        fp32 = precision_copy(base, "fp32")
        if fp32 is None:
            raise AdaptError(f"{base.onnx_path.name} is the model's {base.precision} copy and its FP32 model.onnx is "
                             "not beside it; adapt the FP32 model.")
        base = fp32
    if base.activation != "softmax":
        raise AdaptError(f"The model {base.name} uses a {base.activation} output; adapt refits softmax heads only.")
    if out_dir is not None:
        check_out_dir(Path(out_dir), base)
    if not sources:
        raise LabelError("No labels given: name images or slides with their labels (image,label), or slides' "
                         "annotations.")
    for source in sources:  # fail before reading, naming where an unknown label is
        try:
            label_targets(source_labels(source), base)
        except LabelError as exc:
            raise LabelError(f"{exc.message} It is in {source.origin or source.name}.") from None
    head = _base_head(base)
    classifier = classifier or OnnxClassifier(base, device=params.device, max_batch=params.batch_size, precision="fp32")
    lab = None
    for item in read_lab_tiles(sources, classifier, params, settings, cancel):
        if isinstance(item, LabTiles):
            lab = item
        else:
            yield item
    if lab is None:
        return
    if len({it.category for it in lab.items}) < 2:
        only = lab.items[0].category
        raise AdaptError(f"Only {only} tissue is labelled. Label at least two categories (for example {only} and "
                         "what it is confused with): with one, the head would learn to call everything "
                         f"{only}, and the before / after could not show it.")
    cv: dict[str, Any] | None = None
    for item in cross_validate(lab, base, *head, settings, cancel):
        if isinstance(item, dict):
            cv = item
        else:
            yield item
    if cv is None:
        return
    warnings = label_warnings(lab, base)
    improved = better(cv["after"], cv["before"])
    report = AdaptReport(base, lab, cv["before"], cv["after"], cv["how"], cv["folds"], tuple(warnings), improved,
                         seconds=time.perf_counter() - t0)
    if out_dir is None or cancel.cancelled:
        yield report
        return
    if not improved and not force:
        raise AdaptError(
            "The adapted model is not better than the base model on your labels, so it was not written "
            f"(balanced accuracy of the labelled images / regions {report.before.items_balanced_accuracy:.2f} → "
            f"{report.after.items_balanced_accuracy:.2f}, of their tiles {report.before.tiles_balanced_accuracy:.2f} → "
            f"{report.after.tiles_balanced_accuracy:.2f}; {report.cv_how}). Label more images or regions, "
            "especially where the model is wrong, or write it anyway (cellview adapt --force).")
    yield AdaptProgress("fitting", cv["folds"], cv["folds"] + 1, "fitting on every label")
    weight, bias = fit_head(lab.features, lab.allowed, label_weights(lab.category, lab.item), *head, settings)
    yield AdaptProgress("writing", 0, 1, f"writing {out_dir}")
    written, sidecar = write_adapted(Path(out_dir), base, lab, weight, bias, report, params, settings, name, command)
    yield AdaptProgress("writing", 1, 1, "written")
    yield replace(report, written=written, sidecar=sidecar, seconds=time.perf_counter() - t0)


def _base_head(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    import onnx

    from cellview.analysis.onnx_graph import find_linear_head

    try:
        head = find_linear_head(onnx.load(str(spec.onnx_path)))
    except ModelError as exc:
        raise AdaptError(f"The model {spec.name} cannot be adapted: {exc.message}") from exc
    return head.weight, head.bias


def default_command(argv: Sequence[str] | None = None) -> str:
    """The command line as typed (for the card's Reproduce section)."""
    import shlex

    return " ".join(shlex.quote(a) for a in ["cellview", *(sys.argv[1:] if argv is None else argv)])

