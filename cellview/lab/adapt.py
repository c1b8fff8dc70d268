"""``cellview adapt``: a lab's labelled tiles refit the model's linear head, with an honest before / after.

The whole run (``adapt``): plan the labels and warn before the run (``plan``), read the lab's tiles
(``labtiles``), cross-validate the refit (``check``) and decide from the estimate and its uncertainty
(``decision``), fit the head on every label (``head``) and write the model folder (``modelfolder``) when
it is better — or, when the labels cannot tell, when the person chooses it — or when forced. The names
other modules import from here are re-exported.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.model_spec import ModelSpec, precision_copy
from cellview.analysis.pipeline import CancelToken
from cellview.analysis.results import AnalysisParams
from cellview.base.errors import ModelError
from cellview.lab.check import (
    AdaptReport,
    CheckResult,
    Figures,
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
from cellview.lab.plan import RECOMMENDED_PER_CATEGORY, AdaptPlan, plan_labels, single_warning

__all__ = [
    "ADAPTATION_FILE", "DEFAULT_SETTINGS", "RECOMMENDED_PER_CATEGORY", "WRITES", "AdaptError", "AdaptNotWritten",
    "AdaptPlan", "AdaptProgress", "AdaptReport",
    "AdaptSettings", "Figures", "LabItem", "LabTiles", "LabelTarget", "CheckResult", "adapt", "cross_validate",
    "default_command", "figures", "fit_head", "label_targets", "label_warnings", "label_weights", "model_card",
    "not_written_message", "plan_labels", "read_lab_tiles", "source_labels", "write_adapted",
]


class AdaptNotWritten(AdaptError):
    """The check did not show the adapted head better, so nothing was written; ``report`` has both figures, so the
    person can choose (the viewer shows both and offers to write it; the CLI says how)."""

    def __init__(self, message: str, report: AdaptReport) -> None:
        super().__init__(message)
        self.report = report


WRITES = ("better", "not distinguishable")
"""``adapt(..., writes=…)``: the weakest verdict that writes without ``force``."""


def adapt(sources: Sequence[LabelSource], base: ModelSpec, out_dir: Path | None, params: AnalysisParams,
          name: str | None = None, force: bool = False, settings: AdaptSettings = DEFAULT_SETTINGS,
          cancel: CancelToken | None = None, command: str = "",
          classifier: OnnxClassifier | None = None, writes: str = "better",
          mapping: Mapping[str, str] | None = None) -> Iterator[AdaptPlan | AdaptProgress | AdaptReport]:
    """The whole adaptation: plan, read, cross-validate, decide, fit on everything, write.

    Yields the AdaptPlan (the labels as the model reads them, and the warnings, before any tile is
    read), AdaptProgress, then one AdaptReport. The model is written when the check says better, or
    also when it says not distinguishable with ``writes="not distinguishable"``, or whatever it says with
    ``force``; otherwise AdaptNotWritten carries the report. Raises LabelError / AdaptError / ModelError
    for input that cannot be adapted on; the message says what to change. ``out_dir`` None: measure
    only. ``mapping``: QuPath class → label (default: the remembered one; ``classmap``).
    """
    import time

    if writes not in WRITES:
        raise ValueError(f"writes must be one of {WRITES}")
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
    sources, plan = plan_labels(sources, base, mapping)
    yield plan
    if not sources:
        raise LabelError("None of the labels is a category or class of the model: "
                         + "; ".join(plan.notes) + ".")
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
    lab = replace(lab, notes=(*plan.notes, *lab.notes))
    if len({it.category for it in lab.items}) < 2:
        raise AdaptError(_one_category(lab, base))
    cv: CheckResult | None = None
    for item in cross_validate(lab, base, *head, settings, cancel):
        if isinstance(item, CheckResult):
            cv = item
        else:
            yield item
    if cv is None:
        return
    warnings = label_warnings(lab, base)
    single = single_warning(cv.plan.single, sorted({it.category for it in lab.items}))
    if single:
        warnings.append(single)
    report = AdaptReport(base, lab, cv.before, cv.after, cv.how, cv.folds, tuple(warnings), cv.decision.better,
                         seconds=time.perf_counter() - t0, decision=cv.decision)
    if out_dir is None or cancel.cancelled:
        yield report
        return
    d = cv.decision
    because = ("better" if d.better else "chosen" if d.uncertain and writes == "not distinguishable"
               else "forced" if force else "")
    if not because:
        raise AdaptNotWritten(not_written_message(report), report)
    yield AdaptProgress("fitting", cv.folds, cv.folds + 1, "fitting on every label")
    weight, bias = fit_head(lab.features, lab.allowed, label_weights(lab.category, lab.item), *head, settings,
                            base.class_categories)
    report = replace(report, written_because=because)
    yield AdaptProgress("writing", 0, 1, f"writing {out_dir}")
    written, sidecar = write_adapted(Path(out_dir), base, lab, weight, bias, report, params, settings, name, command)
    yield AdaptProgress("writing", 1, 1, "written")
    yield replace(report, written=written, sidecar=sidecar, seconds=time.perf_counter() - t0)


def not_written_message(report: AdaptReport) -> str:
    """Why nothing was written, with both figures (no command-line advice: the CLI and the viewer add their own)."""
    d = report.decision
    assert d is not None
    figures_ = (f"balanced accuracy of the labelled images / regions {report.before.items_balanced_accuracy:.2f} → "
                f"{report.after.items_balanced_accuracy:.2f}, of their tiles {report.before.tiles_balanced_accuracy:.2f}"
                f" → {report.after.tiles_balanced_accuracy:.2f}; {report.cv_how}")
    if d.worse:
        return (f"The adapted model is not better than the base model on your labels — it is {d.phrase()} — so it "
                f"was not written ({figures_}). Label more images or regions, especially where the model is wrong.")
    why = f" ({d.note})" if d.note else ""
    return (f"The adapted model is not better than the base model by more than your labels can show: "
            f"{d.phrase()}{why}. It was not written ({figures_}). Both are shown so you can choose: keep the base "
            "model, write the adapted one anyway, or label more images or regions, especially where the model is "
            "wrong.")


def _one_category(lab: LabTiles, base: ModelSpec) -> str:
    """'Only malignant tissue is labelled', with why the other labels labelled nothing when annotations say."""
    only = lab.items[0].category
    text = (f"Only {only} tissue is labelled. Label at least two categories (for example {only} and what it is "
            f"confused with): with one, the head would learn to call everything {only}, and the before / after "
            "could not show it.")
    missing = [(label, why) for label, why in lab.unlabelled
               if label_targets([label], base)[label].category != only]
    if missing:
        text += " Labelled nothing: " + "; ".join(f"{label} ({why})" for label, why in missing) + "."
    return text


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

