"""The viewer's state in one Qt-free object, in the spirit of napari's ``ViewerModel``.

``ViewerModel`` holds the open slide, the selected model, the analysis settings, the result
(streaming, finished or cleared) and whether it is still current, the selected tile, the
overlay settings, the malignant regions and the export settings. It changes only through its
methods and says so through plain events (``model.events.result.connect(callback)``; a
callback gets an ``Event`` with ``type`` and ``value``). The desktop window and the kiosk are
thin views: they turn widget input into method calls and events into widget updates, so two
widgets can no longer disagree about the state.

It also decides what the views say about the model's domain (``domain_notice``: a banner when
most of the tissue is unlike the training data, a quieter note when some tiles are, or that the
model has no domain statistics) and explains the selected tile (``set_explain``: the class
activation map on the exact patch the model saw, computed as a job).

Slow work (opening a slide, an analysis, regions, a tissue preview, a tile's explanation) is a ``Job``: a generator
plus callbacks, handed to a ``runner``. The GUI's runner runs it on a worker thread and calls
back on the main thread; ``run_now`` runs it in the calling thread, so tests and scripts drive
the whole viewer without Qt.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from cellview.analysis.model import ModelSpec
from cellview.analysis.results import (
    AnalysisParams,
    AnalysisResult,
)
from cellview.base.errors import CellviewError
from cellview.outputs.legend import STAIN_LABELS, TTA_LABELS, TTA_VIEWS, describe_run_options  # noqa: F401 - re-exported
from cellview.viewer.analysis import AnalysisRun, AnalysisSource, model_file_analysis
from cellview.viewer.analysis_settings import AnalysisSettings
from cellview.viewer.events import EmitterGroup, Messages
from cellview.viewer.explain import Explanations
from cellview.viewer.exports import Exports
from cellview.viewer.jobs import Runner, run_now
from cellview.viewer.labelling import LabelsModel
from cellview.viewer.overlay import OverlayState
from cellview.viewer.regions import Regions
from cellview.viewer.selection import Selection
from cellview.viewer.settings import MemoryStore, SettingsStore
from cellview.viewer.slide import Opened, SlideState
from cellview.viewer.tissue import TissueState

log = logging.getLogger(__name__)


class ViewerModel:
    """The one viewer state; see the module docstring. All methods run on one (the UI) thread."""

    EVENTS = ("status", "error")

    def __init__(self, runner: Runner = run_now, defaults: AnalysisParams | None = None,
                 store: SettingsStore | None = None, analysis_source: AnalysisSource = model_file_analysis,
                 labelling: bool = False) -> None:
        self.events = EmitterGroup(*self.EVENTS)
        self.messages = Messages()
        self.messages.events = self.events
        self.runner = runner
        self.store: SettingsStore = store if store is not None else MemoryStore()
        defaults = defaults or AnalysisParams()
        self.slide = SlideState(runner, self.store, self.messages, defaults)
        self.settings = AnalysisSettings(self.slide, self.messages, defaults)
        self.analysis = AnalysisRun(self.slide, self.settings, runner, self.messages, analysis_source)
        self.overlay = OverlayState(self.analysis)
        self.selection = Selection(self.analysis)
        self.regions = Regions(self.analysis, self.overlay, runner, self.messages)
        self.tissue = TissueState(self.slide, self.settings, runner, self.messages)
        self.explain = Explanations(self.slide, self.settings, self.analysis, self.selection, runner, self.messages)
        self.exports = Exports(self.slide, self.analysis, self.overlay, self.regions, self.store)
        self.labels = LabelsModel(self.slide, self.analysis, self.selection, self.settings) if labelling else None
        self._after_open: dict[str, Any] = {}
        self._wire()

    def _wire(self) -> None:
        """The reactions between the parts (the parts call these hooks where their change ripples)."""
        self.settings.on_run_options = self._rerun
        self.analysis.before_start = self.clear_result
        self.analysis.on_tissue = self.tissue.show
        self.analysis.on_batch = self.overlay.update_domain
        self.analysis.on_shown = self._result_shown
        self.overlay.on_regions_settings = self.regions.update
        self.selection.on_selected = self.explain.request

    # ------------------------------------------------------------------------------ settings

    def _rerun(self) -> None:
        """A run option changed: with auto-analyse on, the open slide is run again as with a new model."""
        if self.analysis.auto_analyse and self.slide.opened is not None and self.settings.model_path:
            self.analysis.abandon()
            self.analysis.start()

    def set_model(self, model_path: str | None) -> None:
        """Select a model. A result always belongs to one model: another model's result is cleared,
        and with auto-analyse on the open slide is analysed again with the new one."""
        if model_path == self.settings.model_path:
            return
        self.analysis.model_ready = None  # the provider and classes of the new model are known once it loads
        self.explain.model_changed()
        self.settings.select_model(model_path)
        had_result = self.analysis.result is not None or self.analysis.running
        if had_result:
            self.analysis.abandon()
            self.clear_result()
        if self.analysis.auto_analyse and self.slide.opened is not None and model_path:
            self.analysis.start()
        elif had_result:
            self.status("The model changed: the previous result was cleared (Analyse to run the new model).")

    def status(self, message: str) -> None:
        self.messages.status(message)

    def error(self, exc: CellviewError, title: str) -> None:
        self.messages.error(exc, title)

    # ------------------------------------------------------------------------------ opening

    def open(self, path: str | os.PathLike[str], mpp_um: float | None = None, analyse: bool | None = None,
             source: AnalysisSource | None = None, spec: ModelSpec | None = None,
             show: AnalysisResult | None = None, params: AnalysisParams | None = None) -> None:
        """Open off the UI thread; the current slide stays until the new one opened (a bad file loses nothing).

        Then: ``show`` a known result, or analyse (``analyse``, default ``auto_analyse``) with
        ``source``/``spec`` (default: the selected model file).
        """
        self._after_open = {"analyse": self.analysis.auto_analyse if analyse is None else analyse, "source": source,
                            "spec": spec, "show": show, "params": params}
        self.slide.open(path, mpp_um, self._on_opened)

    def _on_opened(self, item: Opened) -> None:
        """The new slide has opened: everything of the last one goes, then the new one is shown (and analysed)."""
        self.close_slide(keep_opening=True)
        self.slide.show(item)
        after, self._after_open = self._after_open, {}
        if after.get("show") is not None:
            self.analysis.set_result(after["show"])
        elif after.get("analyse"):
            self.analysis.start(source=after.get("source"), spec=after.get("spec"), params=after.get("params"))

    def close_slide(self, keep_opening: bool = False) -> None:
        """Stop everything that belongs to the current slide; late items of its jobs are ignored."""
        self.analysis.abandon()
        if not keep_opening:
            self.slide.cancel_open()
        self.tissue.close()
        self.regions.cancel()
        had = self.slide.close()
        self.analysis.forget(emit=had)
        self._reset_view_state(emit=had)

    def _reset_view_state(self, emit: bool = True) -> None:
        """The view state that belongs to one slide, in one place: selection, hover, regions, explanation,
        and the display settings of ``overlay.PER_SLIDE`` (the domain override and the filters). Called
        whenever a slide closes, so a newly opened slide starts safe."""
        self.explain.forget_stain()
        self.explain.forget()
        self.regions.clear(emit)
        self.selection.clear(emit, hover=True)
        self.overlay.for_new_slide()
        self.overlay.update_domain()

    # ------------------------------------------------------------------------------ analysis

    def _result_shown(self, finished: bool) -> None:
        """A result arrived (or went): the domain notice and the regions follow it; a finished run's result
        shows the tile still selected (and its explanation)."""
        self.overlay.update_domain()
        self.regions.update()
        if finished:
            self.selection.reselect()

    def clear_result(self, emit: bool = True) -> None:
        """Forget the result (and what hangs on it: selection, regions); the slide stays."""
        had = (self.analysis.result is not None or self.analysis.running or self.selection.index >= 0
               or bool(self.regions.shown))
        self.explain.forget()
        self.analysis.forget(emit=emit and had)
        self.selection.clear(emit=emit and had)
        self.regions.clear(emit=emit and had)
        if emit:
            self.overlay.update_domain()
