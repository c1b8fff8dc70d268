"""CellView: tile-level malignant / benign / normal classification of slides and images."""

from cellview.base.errors import (
    AnalysisError,
    CancelledError,
    CellviewError,
    ExportError,
    ModelError,
    MppError,
    SlideError,
)

__version__ = "0.1.0"

__all__ = [
    "AnalysisError",
    "CancelledError",
    "CellviewError",
    "ExportError",
    "ModelError",
    "MppError",
    "SlideError",
    "__version__",
]
