"""The analysis settings the Analysis panel edits, the selected model, and what that model offers them.

They change together: another model changes which run options (stain normalisation, TTA, precision) can
apply, and the user's choices are kept across models that cannot honour them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cellview.analysis.foreground import Reading
from cellview.analysis.model_spec import ModelSpec, sidecar_for
from cellview.analysis.results import AnalysisParams
from cellview.analysis.stain import StainReference
from cellview.base.errors import ModelError
from cellview.outputs.legend import STAIN_LABELS
from cellview.viewer.events import EmitterGroup, Messages
from cellview.viewer.jobs import nothing
from cellview.viewer.slide import WHOLE_IMAGE, SlideState

NO_MODEL_SELECTED = "No model is selected."


@dataclass(frozen=True)
class ModelOptions:
    """What the selected model lets the Analysis settings offer, known as soon as it is selected.

    ``stain_unavailable`` says why stain normalisation cannot run ("" when it can: the sidecar
    stores its training data's reference stain). ``default_stain_normalize`` / ``default_tta`` are
    preselected for the model; sidecars name no such default (issue 11: normalisation becomes a
    default only if leave-one-source-out shows it helps, and the CLI's default is "none" too), so
    both are "none" until one does.
    """

    stain_unavailable: str = NO_MODEL_SELECTED
    default_stain_normalize: str = "none"
    default_tta: str = "none"
    default_precision: str = "auto"  # the model's validated INT8 copy on a CPU, FP16 on a GPU (model.choose_precision)
    reading: Reading = Reading()  # how it reads an image (foreground rule; an image without a pixel size)

    @property
    def stain_available(self) -> bool:
        return not self.stain_unavailable

    @property
    def reads_unstated_scale(self) -> bool:
        """The model says how to read an image that states no pixel size (a smear model): nobody is asked."""
        return self.reading.unstated.read != "ask"

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ModelOptions:
        return cls(stain_unavailable="" if spec.stain_reference is not None else _no_reference(spec.name),
                   reading=spec.reading)

    @classmethod
    def read(cls, model_path: str | os.PathLike[str] | None) -> ModelOptions:
        """From the model's sidecar alone: cheap (no weights hashed), so the UI thread may call it on selection.

        A sidecar that cannot be read leaves normalisation unavailable with the reason; the run
        itself reports the sidecar's problem as usual.
        """
        if not model_path:
            return cls()
        path = Path(model_path)
        onnx_path = path / "model.onnx" if path.is_dir() else path.with_suffix(".onnx")
        sidecar = path if path.suffix.lower() == ".json" else sidecar_for(onnx_path)
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return cls(stain_unavailable=f"The model's sidecar {sidecar.name} cannot be read ({exc}).")
        if not isinstance(data, dict):
            return cls(stain_unavailable=f"The model's sidecar {sidecar.name} is not a JSON object.")
        name = str(data.get("name") or onnx_path.parent.name or onnx_path.stem)
        try:
            reading = Reading.from_sidecar(data, f"model sidecar {sidecar.name}")
        except ModelError:
            reading = Reading()  # the run reports the sidecar's problem
        if data.get("stain_reference") is None:
            return cls(stain_unavailable=_no_reference(name), reading=reading)
        try:
            StainReference.from_dict(data["stain_reference"], f"model sidecar {sidecar.name}")
        except ModelError as exc:
            return cls(stain_unavailable=exc.message, reading=reading)
        return cls(stain_unavailable="", reading=reading)


def _no_reference(model_name: str) -> str:
    return (f"The model {model_name} does not store the reference stain of its training data, so there is "
            "nothing to normalise to (a model exported by a current cellview train stores it).")


class AnalysisSettings:
    """The analysis settings and the selected model as ``model.settings`` (module docstring).

    Events: ``model`` (the selected model's path, or None), ``model_options`` (a ``ModelOptions``) and
    ``settings`` (the new ``AnalysisParams``). ``on_run_options`` is called when the user changed a run
    option (``RUN_OPTIONS``): the viewer re-runs the open slide then if auto-analyse is on.
    """

    EVENTS = ("model", "model_options", "settings")

    RUN_OPTIONS = ("stain_normalize", "tta", "precision")
    """Settings that change what the model sees (like choosing another model): with auto-analyse on,
    changing one re-runs the slide; each is the model's default until the user chooses it."""

    def __init__(self, slide: SlideState, messages: Messages, defaults: AnalysisParams) -> None:
        self.events = EmitterGroup(*self.EVENTS)
        self.slide, self.messages = slide, messages
        self.defaults = defaults
        """The launch settings (the command line, the kiosk's settings file)."""
        self.params = defaults
        """The settings as the Analysis panel shows them (``current()``: as a run would use them now)."""
        self.model_path: str | None = None
        self.options = ModelOptions()
        """What the selected model offers (``events.model_options`` when it changes)."""
        self._chosen: dict[str, str] = {k: getattr(defaults, k) for k in self.RUN_OPTIONS
                                        if getattr(defaults, k) != "none"}
        """Run options the user asked for (the command line, the Analysis panel); the rest follow the model."""
        self.on_run_options: Callable[[], None] = nothing
        self._apply_model_options(self.options)

    def current(self) -> AnalysisParams:
        """The analysis settings as a run would use them now (the pixel size choice applied)."""
        d, choice = self.params, self.slide.mpp_choice
        tissue = replace(d.tissue, max_threshold=max(d.tissue.max_threshold, d.tissue.min_threshold))
        whole = choice == WHOLE_IMAGE or d.whole_image
        mpp = choice if isinstance(choice, float) else d.mpp_um
        return replace(d, tissue=tissue, whole_image=whole, mpp_um=None if whole else mpp)

    def set(self, **changes: Any) -> None:
        """Change analysis settings (``tissue``, ``tissue_threshold``, ``nuclei``, ``device``, …, and any
        field later added to ``AnalysisParams``); the result stays until Analyse, marked stale.

        ``stain_normalize``, ``tta`` and ``precision`` (``RUN_OPTIONS``) are remembered as the user's choice across
        models, and with auto-analyse on re-run the open slide as a new model would. Stain
        normalisation is refused, with the reason, when the model stores no reference stain.
        """
        new = replace(self.params, **changes)  # AnalysisParams rejects an unknown choice here
        if new.stain_normalize != "none" and not self.options.stain_available:
            self.messages.status(f"{STAIN_LABELS[new.stain_normalize]} stain normalisation is unavailable: "
                                 f"{self.options.stain_unavailable}")
            changes = {k: v for k, v in changes.items() if k != "stain_normalize"}
            new = replace(new, stain_normalize=self.params.stain_normalize)
        self._chosen.update({k: v for k, v in changes.items() if k in self.RUN_OPTIONS})
        if new == self.params:
            return
        rerun = any(getattr(new, k) != getattr(self.params, k) for k in self.RUN_OPTIONS)
        self.params = new
        self.events.settings(new)
        if rerun:
            self.on_run_options()

    def set_tissue(self, **changes: Any) -> None:
        self.set(tissue=replace(self.params.tissue, **changes))

    def select_model(self, model_path: str | None) -> bool:
        """The model a run will use (``ViewerModel.set_model`` clears the last model's result); what it offers
        is read from its sidecar. False when it was selected already."""
        if model_path == self.model_path:
            return False
        self.model_path = model_path
        self.events.model(model_path)
        self._apply_model_options(ModelOptions.read(model_path))
        return True

    def set_model_options(self, options: ModelOptions) -> None:
        """What the model offers, when known otherwise than from the selected file (a loaded model, the kiosk's)."""
        if options != self.options:
            self._apply_model_options(options)

    def _apply_model_options(self, options: ModelOptions) -> None:
        """The run options for this model: the user's choices where it can honour them, else its defaults."""
        self.options = options
        self.events.model_options(options)
        wanted = {k: self._chosen.get(k, getattr(options, f"default_{k}")) for k in self.RUN_OPTIONS}
        dropped = wanted["stain_normalize"] if not options.stain_available else "none"
        if dropped != "none":
            wanted["stain_normalize"] = "none"
        new = replace(self.params, **wanted)
        if new != self.params:
            self.params = new
            self.events.settings(new)
        if dropped != "none" and options.stain_unavailable != NO_MODEL_SELECTED:
            self.messages.status(f"{STAIN_LABELS[dropped]} stain normalisation is off for this model: "
                                 f"{options.stain_unavailable}")
