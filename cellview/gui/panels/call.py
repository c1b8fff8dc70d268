"""The slide's call on screen, in the words of the files (``analysis.call``: the console line, the metadata JSON's
``call``, cohort.csv / .html and the PNG legend): the headline in its colour, its evidence, then every share.

Both windows show it: the desktop in its Analysis card, the kiosk at the top of its touch column (big, with a
swatch). It follows ``model.call`` (worked out off the main thread), never the display's filters: a malignant
minority is named even when normal is the largest share, and a slide that could not be called says why (out
of domain, too little tissue, not analysed).

Under the call, ``reading_label`` says how the model read the image when it had to assume something (a smear
without a pixel size: "The image states no pixel size: taken as one field 100 µm wide, …", the words of
``cellview analyze`` and the metadata JSON) and which cells are outlined behind the call (``model.cells``).
"""

from __future__ import annotations

from html import escape

from PySide6.QtCore import Qt

from cellview.analysis.call import SlideCall
from cellview.analysis.results import plural
from cellview.gui.widgets.cards import NBSP, text_label, unbreakable
from cellview.outputs.legend import call_colour
from cellview.viewer.cells import reading_note, reading_short
from cellview.viewer.events import Event
from cellview.viewer.model import ViewerModel

UNIT_PER_PX = "µm\u2060/\u2060px"
"""'µm/px' that never wraps at its slash (word joiners): a narrow column broke '0.446 µm/' from 'px'."""
WARN = "<span style='color:#ffb347'>⚠</span>"
NO_CALL_ON_SCREEN = "#c3c9ce"
"""A call that is no finding, on the dark screens (``legend.NO_CALL_COLOUR`` is the white PNG legend's grey)."""


def shares_line(call: SlideCall) -> str:
    """Every share, largest first, then the tiles: 'normal 55 % · malignant 35 % · benign 10 % · 48 tiles' (each
    item kept on one line: a wrapped line breaks only between them)."""
    n_out = call.analysed_tiles - call.counted_tiles if call.out_of_domain_fraction is not None else 0
    parts = (call.shares_text or "no tile in the model's domain").split(" · ") if call.analysed_tiles else []
    if call.analysed_tiles:
        parts.append(plural(call.analysed_tiles, "tile"))
    if n_out > 0:
        parts.append(f"{n_out:,} out of domain")
    return f"{NBSP}· ".join(part.replace(" ", NBSP) for part in parts)  # the dot ends a line, never starts one


class CallPanel:
    """``call_label`` (the headline: "Malignant", "No call: out of domain"), ``evidence_label`` ("2 regions,
    largest 0.10 mm², 35 % of tiles"), ``shares_label`` (every share and the tiles) and ``reading_label`` (what
    the run assumed, the cells outlined; hidden when nothing). ``names``: the first three labels' style names (the
    reading takes the shares'); ``swatch``: a coloured ■ before the headline (the kiosk's, read from afar);
    ``short_reading``: the assumption in one line (the kiosk's narrow column), else in the words of the files."""

    def __init__(self, model: ViewerModel, names: tuple[str, str, str] = ("callHeadline", "callEvidence", "hint"),
                 swatch: bool = False, short_reading: bool = False) -> None:
        self.model = model
        self.swatch = swatch
        self.short_reading = short_reading
        self.call_label = text_label("", names[0])
        self.call_label.setTextFormat(Qt.TextFormat.RichText)
        self.evidence_label = text_label("", names[1])
        self.evidence_label.setTextFormat(Qt.TextFormat.PlainText)
        self.shares_label = text_label("", names[2])
        self.shares_label.setTextFormat(Qt.TextFormat.PlainText)
        self.reading_label = text_label("", names[2])
        self.reading_label.setTextFormat(Qt.TextFormat.PlainText)
        self.call: SlideCall | None = None
        model.cells.events.cells.connect(lambda e: self.show_reading())
        model.call.events.call.connect(self._on_call)
        model.analysis.events.running.connect(lambda e: self.show(self.model.call.current))
        model.overlay.events.domain.connect(lambda e: self.show(self.model.call.current))
        self.show(None)

    def labels(self) -> tuple:
        """The call's three labels (headline, evidence, shares)."""
        return self.call_label, self.evidence_label, self.shares_label

    def widgets(self) -> tuple:
        """Every label the panel lays out, in order: the call's, then the reading's."""
        return self.labels() + (self.reading_label,)

    def _on_call(self, event: Event) -> None:
        self.show(event.value)

    def text(self) -> str:
        """The call as shown, in one sentence (``SlideCall.text``; '' when none is shown)."""
        return self.call.text if self.call is not None else ""

    def show(self, call: SlideCall | None) -> None:
        """The call (None: "Analysing…" while a run has no call yet, else nothing)."""
        self.call = call
        running = self.model.analysis.running
        if call is None:
            self.call_label.setText("Analysing…" if running else "")
            self.evidence_label.setText("")
            self.shares_label.setText("")
        else:
            state = " (so far)" if running and call.partial else ""
            colour = call_colour(call) if call.is_finding else NO_CALL_ON_SCREEN
            warn = not call.is_finding or self.model.overlay.notice().banner
            head = f"{WARN} " if warn else ""
            if self.swatch:
                head += f"<span style='color:{colour}'>■</span> {escape(call.headline)}"
            else:
                head += f"<span style='color:{colour}'>{escape(call.headline)}</span>"
            self.call_label.setText(head + escape(state))
            self.evidence_label.setText(unbreakable(call.evidence))
            self.shares_label.setText(shares_line(call))
        self.show_reading()

    def reading(self) -> str:
        """What the run assumed to read the image, then the cells outlined ('' when neither)."""
        model = self.model
        result = model.analysis.shown_result()
        spec = model.analysis.spec if model.analysis.running else None
        note = (reading_short if self.short_reading else reading_note)(result, spec)
        parts = [note, model.cells.drawn().note if result is not None else ""]
        return "\n".join(p for p in parts if p)

    def show_reading(self) -> None:
        self.reading_label.setText(unbreakable(self.reading()).replace("µm/px", UNIT_PER_PX))
        for label in self.widgets():
            label.setVisible(bool(label.text()))
