"""Explaining the selected tile: its class activation map on the exact patch the model saw.

One explanation job at a time (the latest selection next); the run's stain transform is fitted once per
result, so the inspector shows the patch stain-normalised as the model was fed it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cellview.analysis.explain import TileExplanation, explain_tile
from cellview.analysis.model import ModelSpec, OnnxClassifier, copy_with_sha
from cellview.analysis.pipeline import slide_stain_transform
from cellview.analysis.stain import TileStainTransform
from cellview.base.errors import ModelError
from cellview.slides.slide import open_slide


@dataclass(frozen=True)
class ExplainerReady:
    """The classifier an explanation job loaded (kept for the next tile)."""

    classifier: OnnxClassifier
    model_path: str


@dataclass(frozen=True)
class ExplainState:
    """The inspector's class-activation-map state.

    ``state``: "off", "idle" (on, no tile selected), "busy", "ready" (``explanation`` holds the
    tile, its maps and the class shown) or "failed" (``message`` says why, e.g. a model without maps).
    """

    state: str
    explanation: TileExplanation | None = None
    message: str = ""
    index: int = -1


@dataclass(frozen=True)
class ExplainStain:
    """The slide's stain transform an explanation job fitted (kept for the result's next tiles)."""

    key: tuple
    transform: TileStainTransform


def explain_task(path: str, mpp_um: float | None, grid: Any, index: int, classifier: OnnxClassifier | None,
                 model_path: str | None, model_sha256: str, stain_method: str = "none",
                 stain: ExplainStain | None = None, stain_key: tuple = ()
                 ) -> Iterator[ExplainerReady | ExplainStain | TileExplanation]:
    """Explain one tile off the main thread: load the classifier the first time (CPU: one patch is
    cheap, and the GPU stays with the analysis), then read the exact patch and run it — stain-normalised
    as the analysis did, with the slide's transform fitted once per result (``stain_key``) as analyze fits it."""
    if classifier is None:
        if not model_path:
            raise ModelError("No model is loaded to explain the tile with.")
        spec = ModelSpec.load(model_path)
        spec = copy_with_sha(spec, model_sha256) or spec  # the copy of the weights (FP32, INT8…) that made it
        classifier = OnnxClassifier(spec, device="cpu", intra_op_threads=1, precision=spec.precision)
        yield ExplainerReady(classifier, model_path)
    if classifier.spec.onnx_sha256 != model_sha256:
        raise ModelError("The result on screen was made by another model than the one loaded; analyse again "
                         "to explain its tiles.")
    slide = open_slide(path, mpp_um=mpp_um)
    try:
        if stain_method != "none" and (stain is None or stain.key != stain_key):
            stain = ExplainStain(stain_key, slide_stain_transform(slide, grid, classifier.spec, stain_method))
            yield stain
        yield explain_tile(slide, grid, index, classifier,
                           stain=stain.transform if stain_method != "none" and stain is not None else None)
    finally:
        slide.close()


def stain_task(path: str, mpp_um: float | None, grid: Any, spec: ModelSpec, method: str) -> Iterator[TileStainTransform]:
    """The slide's stain transform for a result's grid, fitted off the main thread as analyze fits it."""
    slide = open_slide(path, mpp_um=mpp_um)
    try:
        yield slide_stain_transform(slide, grid, spec, method)
    finally:
        slide.close()
