"""The analysis run: one at a time, streamed batch by batch into a result that views draw as it grows.

A run is a job over an ``AnalysisSource`` (the model file by default, the kiosk's loaded classifier
otherwise); its progress, result and whether that result is still current (``stale``) live here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from cellview.analysis.cache import ResultCache
from cellview.analysis.model import ModelSpec, OnnxClassifier, user_models_dir
from cellview.analysis.pipeline import CancelToken, Started, analyze
from cellview.analysis.results import (
    AnalysisParams,
    AnalysisResult,
    TileNuclei,
)
from cellview.base.errors import CellviewError, ModelError


@dataclass(frozen=True)
class ModelReady:
    """The classifier is loaded: views can say which model runs on what."""

    spec: ModelSpec
    description: str
    fallback_message: str | None
    warn: bool  # CPU only, or a GPU asked for and not used


@dataclass(frozen=True)
class AnalysisRequest:
    """One run as the model set it up: the views and sources never build it themselves."""

    path: str
    params: AnalysisParams
    model_path: str | None
    use_cache: bool
    resume: AnalysisResult | None = None  # a cancelled run of this slide, model and settings: go on from its tiles


AnalysisSource = Callable[[AnalysisRequest, CancelToken], Iterator[object]]
"""Yields pipeline events (``Started``, ``BatchDone``, ``Finished``), optionally a ``ModelReady``
first, and any other item the source's view wants (``events.job_item``)."""


def model_file_analysis(request: AnalysisRequest, cancel: CancelToken) -> Iterator[object]:
    """The desktop's source: load the model file (seconds with TensorRT), then stream the pipeline."""
    if not request.model_path:
        raise ModelError("No model is selected.", f"Put a model into {user_models_dir() / '<name>'} or open one.")
    spec = ModelSpec.load(request.model_path)
    threads = max(1, (os.cpu_count() or 2) - 1)  # leave one core to the UI thread on small machines
    classifier = OnnxClassifier(spec, device=request.params.device, intra_op_threads=threads,
                                precision=request.params.precision)
    yield ModelReady(spec, classifier.describe(), classifier.fallback_message, classifier.needs_attention)
    yield from analyze(request.path, classifier, request.params, cancel,
                       ResultCache() if request.use_cache else None, resume=request.resume)


@dataclass(frozen=True)
class Progress:
    """Where the run is, for a progress bar and a rate line."""

    phase: str  # "preparing", "running", "done", "cancelled", "failed"
    done: int = 0
    total: int = 0
    tiles_per_s: float = 0.0
    eta_s: float | None = None
    elapsed_s: float = 0.0
    from_cache: bool = False


@dataclass
class _Run:
    """The live arrays of a streaming run (written only on the thread that owns the model)."""

    request: AnalysisRequest
    spec: ModelSpec | None = None
    started: Started | None = None
    probs: np.ndarray | None = None
    state: np.ndarray | None = None
    nuclei: TileNuclei | None = None
    domain_score: np.ndarray | None = None  # when the model has domain statistics
    partial: AnalysisResult | None = None


class AnalysisSourceError(CellviewError):
    """An analysis source broke its contract (a programming error, reported like any other)."""
