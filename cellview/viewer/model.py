"""The viewer's state, Qt-free, composed of small parts in the spirit of napari's ``components``.

napari's ``ViewerModel`` is a ``LayerList``, a ``Camera``, ``Dims``… each small with its own events; ours is
the parts a slide viewer needs, each in its own module with its own ``EmitterGroup``:

- ``slide`` (``SlideState``): the open slide, opening it, its scale, recent slides, dialog folders;
- ``settings`` (``AnalysisSettings``): the selected model, what it offers, the analysis settings;
- ``analysis`` (``AnalysisRun``): the run (start, cancel, resume), its progress and result, ``stale``;
- ``overlay`` (``OverlayState``): the overlay's settings and filters, "show calls anyway", the domain notice;
- ``selection`` (``Selection``): the selected tile and the one under the pointer;
- ``regions`` (``Regions``): the malignant regions and the sentence beside them;
- ``call`` (``CallState``): the slide's call (``analysis.call.slide_call``), in the files' words;
- ``cells`` (``CellsState``): a smear model's stained cells behind the call, outlined, and what it assumed;
- ``tissue`` (``TissueState``): the tissue preview;
- ``explain`` (``Explanations``): the selected tile's class activation map and the patch's stain;
- ``exports`` (``Exports``): the files, as the screen shows the result;
- ``labels`` (``LabelsModel``, with ``labelling=True``): the open slide's tile labels and *Adapt model…*.

Views reach a part (``model.overlay.set(style="fill")``, ``model.selection.select(i)``,
``model.analysis.events.result.connect(callback)``). ``ViewerModel`` composes them and wires what one
part's change means for the others (a new slide clears the selection, the regions and the per-slide overlay
settings; another model clears the result; a finished run re-shows the selected tile); it keeps the few
actions that span parts (``open``, ``close_slide``, ``set_model``, ``clear_result``) and one event group of
its own, ``events`` (``status``, ``error``: whichever part says them).

Slow work is a ``Job`` handed to a ``runner`` (``viewer.jobs``): the GUI's runs it on a worker thread,
``run_now`` in the calling thread, so tests and scripts drive the whole viewer without Qt.
"""

from __future__ import annotations

import os
from typing import Any

from cellview.analysis.model_spec import ModelSpec
from cellview.analysis.results import AnalysisParams, AnalysisResult
from cellview.viewer.analysis import AnalysisRun, AnalysisSource, model_file_analysis
from cellview.viewer.analysis_settings import AnalysisSettings
from cellview.viewer.call import CallState
from cellview.viewer.cells import CellsState
from cellview.viewer.events import Messages
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


class ViewerModel:
    """The viewer's parts and the reactions between them (module docstring). All methods run on one (the UI)
    thread. Events (``events``): ``status`` (a line for the status bar) and ``error`` (``(title, CellviewError)``)."""

    PARTS = ("slide", "settings", "analysis", "overlay", "selection", "regions", "call", "cells", "tissue",
             "explain", "exports", "labels")

    def __init__(self, runner: Runner = run_now, defaults: AnalysisParams | None = None,
                 store: SettingsStore | None = None, analysis_source: AnalysisSource = model_file_analysis,
                 labelling: bool = False) -> None:
        self.messages = Messages()
        self.events = self.messages.events
        self.runner = runner
        self.store: SettingsStore = store if store is not None else MemoryStore()
        defaults = defaults or AnalysisParams()
        self.slide = SlideState(runner, self.store, self.messages, defaults)
        self.settings = AnalysisSettings(self.slide, self.messages, defaults)
        self.analysis = AnalysisRun(self.slide, self.settings, runner, self.messages, analysis_source)
        self.overlay = OverlayState(self.analysis)
        self.selection = Selection(self.analysis)
        self.regions = Regions(self.analysis, self.overlay, runner, self.messages)
        self.call = CallState(self.analysis, runner, self.messages)
        self.cells = CellsState(self.analysis, self.settings, runner, self.messages)
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
        self.analysis.on_tissue = self._on_run_mask
        self.analysis.on_batch = self._on_batch
        self.analysis.on_shown = self._result_shown
        self.overlay.on_regions_settings = self.regions.update
        self.selection.on_selected = self.explain.request

    def _on_run_mask(self, mask: Any) -> None:
        """A run started with its mask: the tissue preview shows it, and a smear model's cells are outlined."""
        self.tissue.show(mask)
        self.cells.show_mask(mask)

    def parts(self) -> dict[str, Any]:
        """The parts by name (``PARTS``; without ``labels`` when there is no labelling): a recorder, a log."""
        return {name: part for name in self.PARTS if (part := getattr(self, name)) is not None}

    # ------------------------------------------------------------------------------ the model

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
            self.messages.status("The model changed: the previous result was cleared (Analyse to run the new model).")

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
        self.call.cancel()
        self.cells.cancel()
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
        self.call.clear(emit)
        self.cells.clear(emit)
        self.selection.clear(emit, hover=True)
        self.overlay.for_new_slide()
        self.overlay.update_domain()

    # ------------------------------------------------------------------------------ analysis

    def _on_batch(self) -> None:
        """A batch of a streaming run arrived: the domain notice and the call so far follow it."""
        self.overlay.update_domain()
        self.call.update(streaming=True)

    def _result_shown(self, finished: bool) -> None:
        """A result arrived (or went): the domain notice, the regions and the call follow it; a finished run's
        result shows the tile still selected (and its explanation)."""
        self.overlay.update_domain()
        self.regions.update()
        self.call.update()
        self.cells.update()
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
        self.call.clear(emit=emit and had)
        self.cells.clear(emit=emit and had)
        if emit:
            self.overlay.update_domain()
