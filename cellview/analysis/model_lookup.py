"""Where a model name is looked up: $CELLVIEW_MODELS_DIR, the user's models folder, the bundled models.

Kept apart from the sidecar (model_spec) and the runtime (classifier) because it is about folders
and names: what ``--model NAME`` means, what ``cellview models`` lists and which model hides which.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from cellview.analysis.model_spec import sidecar_for
from cellview.base.errors import ModelError

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
