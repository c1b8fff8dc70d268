"""The cells behind a smear's call, outlined over the image, and how the model read the image (``model.cells``).

A model whose foreground rule is ``stained-cells`` (a blood smear model: ``analysis.foreground``) reads the tiles
that hold a nucleus-stained cell; the run's mask says where those cells are. The outlines are that mask's cells
(``foreground.cell_outlines``) and their nuclei (``foreground.nucleus_outlines``, what the stain rule keys on),
in level-0 coordinates, worked out as a job (the nuclei read the image). Other models have no outlines.

``reading_note`` is what the run assumed about the image (no pixel size stated: the model's rule), in the
words of ``cellview analyze`` and the metadata JSON (``AnalysisResult.reading``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from cellview.analysis.foreground import Foreground, cell_outlines, choose_scale, nucleus_outlines
from cellview.analysis.model_spec import ModelSpec
from cellview.analysis.results import AnalysisResult, plural
from cellview.analysis.tissue import TissueMask
from cellview.slides.opening import open_slide
from cellview.viewer.analysis import AnalysisRun
from cellview.viewer.analysis_settings import AnalysisSettings
from cellview.viewer.events import EmitterGroup, Messages
from cellview.viewer.jobs import LatestJob, Runner


@dataclass(frozen=True)
class CellOutlines:
    """The stained cells of one run's mask: ``cells`` and ``nuclei`` as (N, 2) level-0 (x, y) polygons."""

    cells: tuple[np.ndarray, ...] = ()
    nuclei: tuple[np.ndarray, ...] = ()
    method: str = ""  # the mask's method: "stained-cells", or "stained-cells, none found: whole field read"
    errors: tuple[str, ...] = field(default_factory=tuple)  # the nuclei could not be read: why

    @property
    def note(self) -> str:
        """'5 stained cells outlined (their nuclei inside)', or why none is ('' for a model without the rule)."""
        if not self.method:
            return ""
        if not self.cells:
            return "No stained cell found: the whole field was read."
        inner = " (their nuclei inside)" if self.nuclei else ""
        return f"{plural(len(self.cells), 'stained cell')} outlined{inner}: the cells the model read."


def reads_stained_cells(mask: TissueMask | None) -> bool:
    return mask is not None and mask.method.startswith("stained-cells")


def cells_task(mask: TissueMask, path: str, mpp_um: float | None, fg: Foreground) -> Iterator[CellOutlines]:
    """The outlines off the main thread: the cells from the mask at once, then the nuclei read from the image."""
    cells = tuple(cell_outlines(mask))
    yield CellOutlines(cells, (), mask.method)
    if not cells:
        return
    slide = open_slide(path, mpp_um=mpp_um)  # this thread's own handle
    try:
        nuclei = tuple(nucleus_outlines(slide, fg, mpp_um))
    finally:
        slide.close()
    yield CellOutlines(cells, nuclei, mask.method)


def assumed_mpp(spec: ModelSpec | None, result: AnalysisResult | None) -> float | None:
    """The pixel size a run of ``spec`` reads the result's image at when the image states none (the model's rule,
    as the pipeline applies it: ``foreground.choose_scale``); None when the image states one or the model asks."""
    if spec is None or result is None or result.slide.mpp is not None or result.params.mpp_um is not None:
        return None
    choice = choose_scale(spec.reading, None, result.params.whole_image, spec.name, spec.patch_size_pixels,
                          result.slide.dimensions)
    return choice.mpp.um if choice.mpp is not None else None


def reading_note(result: AnalysisResult | None, spec: ModelSpec | None = None) -> str:
    """What the run assumed to read the image, in the words of ``cellview analyze`` and the metadata JSON ('' when
    nothing: the image stated its pixel size, or an H&E model). A run still streaming has no record yet: the
    model's rule says what it assumes (``spec``: the running model)."""
    if result is None:
        return ""
    if result.reading or result.status != "running" or spec is None or result.slide.mpp is not None:
        return result.reading.get("pixel_size", "")
    try:
        return choose_scale(spec.reading, None, result.params.whole_image, spec.name,
                            spec.patch_size_pixels, result.slide.dimensions).note
    except ValueError:
        return ""


def reading_short(result: AnalysisResult | None, spec: ModelSpec | None = None) -> str:
    """``reading_note`` in one line, for a small screen (the kiosk): 'Pixel size assumed: 0.446 µm/px, by the
    model's rule (the image states none).' ('' when nothing was assumed)."""
    if not reading_note(result, spec):
        return ""
    assert result is not None
    mpp = result.slide.mpp.um if result.slide.mpp is not None else assumed_mpp(spec, result)
    if mpp is None:
        return "No pixel size stated: the image is read as one field, by the model's rule."
    return f"Pixel size assumed: {mpp:.3g} µm/px, by the model's rule (the image states none)."


class CellsState:
    """``shown``: the outlines over the shown result (``CellOutlines()`` when none); ``visible``: the user's switch
    (View → Outline stained cells; on by default, so a smear model's cells show on their own). Event: ``cells``
    (the new ``CellOutlines``, empty when they went or are hidden)."""

    EVENTS = ("cells",)

    def __init__(self, analysis: AnalysisRun, settings: AnalysisSettings, runner: Runner, messages: Messages) -> None:
        self.events = EmitterGroup(*self.EVENTS)
        self.analysis, self.settings, self.runner, self.messages = analysis, settings, runner, messages
        self.visible = True
        self.shown = CellOutlines()
        self._mask: TissueMask | None = None  # the mask ``shown`` (or the job running) is of
        self._latest = LatestJob(runner)

    @property
    def busy(self) -> bool:
        return self._latest.busy

    def set_visible(self, on: bool) -> None:
        if bool(on) != self.visible:
            self.visible = bool(on)
            self.events.cells(self.shown if self.visible else CellOutlines())

    def drawn(self) -> CellOutlines:
        """What the canvas draws now (nothing while hidden)."""
        return self.shown if self.visible else CellOutlines()

    def show_mask(self, mask: TissueMask | None) -> None:
        """The run's mask (as soon as it starts) or the shown result's: its cells, as a job; none for other rules."""
        if not reads_stained_cells(mask):
            if self._mask is not None or self.shown.method:
                self.clear()
            return
        assert mask is not None
        if mask is self._mask:
            return
        self._latest.cancel()
        self.clear()  # another mask's outlines go now (an image that fails to open must not keep them)
        self._mask = mask
        opened = self.analysis.slide.opened
        result = self.analysis.shown_result()
        if opened is None:
            return
        spec = self.analysis.spec
        mpp = (result.slide.mpp.um if result is not None and result.slide.mpp
               else assumed_mpp(spec, result) or self.analysis.slide.mpp_um())
        fg = spec.reading.foreground if spec is not None else self.settings.options.reading.foreground

        def on_item(outlines: CellOutlines) -> None:
            self.shown = outlines
            if self.visible:
                self.events.cells(outlines)

        path = opened.path
        self._latest.start("cells", lambda cancel: cells_task(mask, path, mpp, fg), on_item,
                           lambda exc: self.messages.status(f"Cell outlines failed: {exc.message}"))

    def update(self) -> None:
        """The shown result arrived or went: its mask's cells."""
        result = self.analysis.shown_result()
        if result is None:
            if not self.analysis.running:
                self.clear()
            return
        self.show_mask(result.tissue)

    def clear(self, emit: bool = True) -> None:
        """No outlines (``events.cells`` when ``emit`` and some were there); a job still running is ignored."""
        had = bool(self.shown.method)
        self._latest.forget()
        self._mask, self.shown = None, CellOutlines()
        if emit and had:
            self.events.cells(self.shown)

    def cancel(self) -> None:
        """Stop the job (its slide closed) and forget the outlines, silently."""
        self._latest.cancel()
        self.clear(emit=False)
