"""The analysis settings the Analysis panel edits, the selected model, and what that model offers them.

They change together: another model changes which run options (stain normalisation, TTA, precision) can
apply, and the user's choices are kept across models that cannot honour them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cellview.analysis.model import ModelSpec, sidecar_for
from cellview.analysis.stain import StainReference
from cellview.base.errors import ModelError

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

    @property
    def stain_available(self) -> bool:
        return not self.stain_unavailable

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ModelOptions:
        return cls(stain_unavailable="" if spec.stain_reference is not None else _no_reference(spec.name))

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
        if data.get("stain_reference") is None:
            return cls(stain_unavailable=_no_reference(name))
        try:
            StainReference.from_dict(data["stain_reference"], f"model sidecar {sidecar.name}")
        except ModelError as exc:
            return cls(stain_unavailable=exc.message)
        return cls(stain_unavailable="")


def _no_reference(model_name: str) -> str:
    return (f"The model {model_name} does not store the reference stain of its training data, so there is "
            "nothing to normalise to (a model exported by a current cellview train stores it).")
