"""The selected tile and the tile under the pointer: what the inspector shows and the status bar says.

Both are indices into the shown result's grid, so they only make sense while that result is shown; the
viewer clears them when the result or the slide goes (``ViewerModel.clear_result``, ``close_slide``).
"""

from __future__ import annotations

from collections.abc import Callable

from cellview.viewer.analysis import AnalysisRun
from cellview.viewer.events import EmitterGroup
from cellview.viewer.jobs import nothing


class Selection:
    """The selected tile as ``model.selection``: ``index`` (-1: none) and ``hover`` (the pointer's tile as text).

    Events: ``selection`` (the index; -1 when none) and ``hover`` (the text; "" over no tile). The viewer
    explains a newly selected tile through ``on_selected``.
    """

    EVENTS = ("selection", "hover")

    def __init__(self, analysis: AnalysisRun) -> None:
        self.events = EmitterGroup(*self.EVENTS)
        self.analysis = analysis
        self.index = -1
        self.hover = ""
        """What the tile under the pointer is (``hover_at``; "" over none): the status bar's text."""
        self.on_selected: Callable[[], None] = nothing

    def select(self, index: int) -> None:
        result = self.analysis.shown_result()
        if result is None or not 0 <= index < result.n_tiles:
            return
        self.index = int(index)
        self.events.selection(self.index)
        self.on_selected()

    def select_at(self, l0_x: float, l0_y: float) -> int:
        result = self.analysis.shown_result()
        index = result.grid.tile_at(l0_x, l0_y) if result is not None else -1
        if index >= 0:
            self.select(index)
        return index

    def step(self, d_row: int, d_col: int) -> int:
        """Move to the nearest tile in that direction along the row or column; the new index (or -1)."""
        result = self.analysis.shown_result()
        if result is None:
            return -1
        g = result.grid
        if self.index < 0:
            if g.n_tiles:
                self.select(0)
                return 0
            return -1
        ig = g.index_grid()
        r, c = int(g.grid_row[self.index]), int(g.grid_col[self.index])
        while True:
            r, c = r + d_row, c + d_col
            if not (0 <= r < g.n_rows and 0 <= c < g.n_cols):
                return -1
            if ig[r, c] >= 0:
                self.select(int(ig[r, c]))
                return int(ig[r, c])

    def reselect(self) -> None:
        """A run finished under the selection: say it again (the inspector shows the final call) and explain it."""
        result = self.analysis.result
        if result is not None and 0 <= self.index < result.n_tiles:
            self.events.selection(self.index)
            self.on_selected()

    def hover_at(self, l0_x: float, l0_y: float) -> str:
        """The pointer is at this level-0 point: what its tile is ("" over none), also as ``events.hover``."""
        result = self.analysis.shown_result()
        index = result.grid.tile_at(l0_x, l0_y) if result is not None else -1
        text = ""
        if result is not None and index >= 0 and result.done[index]:
            text = f"{result.model.class_names[int(result.pred_class[index])]} {float(result.confidence[index]):.0%}"
            if not result.in_domain[index]:  # a done tile: out of domain (never without statistics)
                text += " · out of domain"
        if text != self.hover:
            self.hover = text
            self.events.hover(text)
        return text

    def clear(self, emit: bool = True, hover: bool = False) -> None:
        """No tile selected (``events.selection(-1)`` when ``emit``); ``hover``: nor one under the pointer."""
        self.index = -1
        if emit:
            self.events.selection(-1)
        if hover:
            self.hover = ""
            if emit:
                self.events.hover("")
