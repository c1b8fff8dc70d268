"""Training, evaluation and export of CellView's tile classifiers (``cellview train|evaluate|export``).

Everything that needs torch lives in this package and is imported only by those commands, so
``cellview analyze`` starts without it. Install with the ``train`` extra. Datasets and recipes, the
frozen-feature and fine-tuned heads, leave-one-source-out and grouped evaluation, export to a model
folder (ONNX, FP16 and validated INT8 copies, domain statistics, an honest card) and the adaptation
curve. Imports the engine, the outputs and the lab's tools; nothing at runtime imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

RECIPES = Path(__file__).resolve().parent / "recipes"
"""The bundled recipes (``cellview train --recipe NAME``)."""


def default_data_dir() -> Path:
    """The shared labelled data: $CELLVIEW_DATA_DIR, else ``../shared/data`` next to the repository."""
    env = os.environ.get("CELLVIEW_DATA_DIR")
    if env:
        return Path(env)
    return (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
