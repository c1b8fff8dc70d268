"""What a legend says and how long a scale bar is: one description for the screen and every export (Qt-free).

``describe_legend`` turns a result and the display state (``overlay.OverlaySettings``) into a
``Legend``: the slide's call (``analysis.call``), header lines, the counted-tiles line, one count row per category and one for the
out-of-domain tiles, the domain notes, the class rows and the closing lines. The side panel, the
viewer's "as shown" PNG (Qt) and the annotated PNG of the command line, the viewer and the kiosk
(PIL) all draw that one description, so their counts and sentences cannot drift apart; every
count follows one rule (``AnalysisResult.confident``: counted tiles the confidence filter keeps).

``scale_bar`` is the one rule for a scale bar's length: the longest 1-2-5 length that fits the
room given, drawn exactly ``length_um / µm per pixel`` long, so the bar and its label agree at
every zoom and font size (the bar's box follows the bar, never the other way round).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellview.analysis.call import SlideCall, slide_call
from cellview.analysis.model_spec import CATEGORY_COLORS
from cellview.analysis.results import AnalysisParams, AnalysisResult
from cellview.outputs.overlay import (
    OverlaySettings,
    count_lines,
    counted_text,
    describe_colours,
    describe_filter,
    domain_notes,
)

STAIN_LABELS = {"none": "None", "macenko": "Macenko", "reinhard": "Reinhard"}
"""How the viewer and the kiosk name each ``AnalysisParams.stain_normalize`` choice."""

TTA_VIEWS = {"none": 1, "flips": 4, "d4": 8}
"""Model runs per tile for each ``AnalysisParams.tta`` choice (``model.tta_views``): the inference cost."""

TTA_LABELS = {"none": "None", "flips": "Flips ×4", "d4": "D4 ×8"}
"""How the viewer and the kiosk name each ``AnalysisParams.tta`` choice, with the number of views."""

OUT_OF_DOMAIN_SWATCH = "hatch"
"""``CountRow.swatch`` of the out-of-domain row: the grey hatching, as the slide shows those tiles."""


# ----------------------------------------------------------------------------- scale bar


def nice_length_um(max_um: float) -> float:
    """The longest 1-2-5 length (… 50 µm, 100 µm, 200 µm, 500 µm, 1 mm …) not longer than ``max_um`` (0 if none)."""
    if not math.isfinite(max_um) or max_um <= 0:
        return 0.0
    exp = math.floor(math.log10(max_um))
    for m in (5, 2, 1, 0.5):  # 0.5: log10 rounding can put a power of ten one decade high
        length = m * 10.0**exp
        if length <= max_um * (1 + 1e-9):
            return float(f"{length:.6g}")
    return 0.0


def format_um(length_um: float) -> str:
    """'50 µm', '1 mm', '0.5 µm'."""
    return f"{length_um / 1000:g} mm" if length_um >= 1000 else f"{length_um:g} µm"


@dataclass(frozen=True)
class ScaleBarSpec:
    """A scale bar: its length in µm, the same length in the picture's pixels, and its label."""

    length_um: float
    length_px: float
    label: str

    @property
    def drawn_px(self) -> int:
        """Whole pixels to draw (renderers fill exactly this many: within half a pixel of ``length_px``)."""
        return max(1, int(round(self.length_px)))


def scale_bar(um_per_px: float | None, max_px: float) -> ScaleBarSpec | None:
    """The longest 1-2-5 bar that fits ``max_px`` picture pixels at ``um_per_px`` (None: scale unknown).

    The bar is between ``max_px / 2.5`` and ``max_px`` long; its box is sized from it.
    """
    if um_per_px is None or not math.isfinite(um_per_px) or um_per_px <= 0 or max_px < 1:
        return None
    length = nice_length_um(max_px * um_per_px)
    if length <= 0:
        return None
    return ScaleBarSpec(length, length / um_per_px, format_um(length))


# ----------------------------------------------------------------------------- run options


def describe_run_options(params: AnalysisParams, stain: dict[str, Any] | None = None) -> str:
    """The run's stain normalisation and test-time augmentation as a phrase; "" when it used neither.

    ``stain`` is the result's record (``AnalysisResult.stain``): it says when normalisation was
    asked for but skipped (no tissue to estimate the slide's stain from).
    """
    parts = []
    method = params.stain_normalize
    if method != "none":
        if stain and stain.get("applied") == "none":
            parts.append(str(stain.get("note") or f"{STAIN_LABELS[method]} stain normalisation skipped"))
        else:
            parts.append(f"{STAIN_LABELS[method]} stain normalisation (to the model's training stain)")
    if params.tta != "none":
        parts.append(f"test-time augmentation {TTA_LABELS[params.tta]} "
                     f"(probabilities averaged over {TTA_VIEWS[params.tta]} views of each tile)")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:]


# ----------------------------------------------------------------------------- legend


@dataclass(frozen=True)
class LegendLine:
    """One sentence; ``kind``: "info" (ink), "hint" (grey), "warning" (red) or "region" (dark red)."""

    text: str
    kind: str = "info"
    wrap: bool = True


@dataclass(frozen=True)
class CountRow:
    """A row of counts: a swatch (hex colour, or ``OUT_OF_DOMAIN_SWATCH``), a label, tiles and a whole %."""

    key: str
    label: str
    count: int
    percent: int
    swatch: str
    hidden: bool = False

    @property
    def text(self) -> str:
        return f"{self.count:,}  {self.percent}%"


NO_CALL_COLOUR = "#555555"
"""The colour of a call that is no finding (out of domain, too little tissue, not analysed)."""


def call_colour(call: SlideCall) -> str:
    """The call's headline colour: its category's, grey when no call could be made."""
    return CATEGORY_COLORS.get(call.category, NO_CALL_COLOUR)


@dataclass(frozen=True)
class Legend:
    """Everything a legend shows, in order (see the module docstring).

    ``call`` (``analysis.call.slide_call``) is drawn first, under the title: its headline in
    ``call_colour``, then its evidence. It does not follow the display filters: it is the slide's call.
    """

    header: tuple[LegendLine, ...]
    counted: str
    categories: tuple[CountRow, ...]
    out_of_domain: CountRow | None
    notes: tuple[LegendLine, ...]
    classes: tuple[CountRow, ...]
    footer: tuple[LegendLine, ...]
    call: SlideCall | None = None

    @property
    def rows(self) -> tuple[CountRow, ...]:
        """The category rows, then the out-of-domain row when the model scores the domain."""
        return self.categories + ((self.out_of_domain,) if self.out_of_domain is not None else ())

    def lines(self) -> list[str]:
        """The whole legend as plain text, in drawing order (tests, logs)."""
        out = [f"Call: {self.call.text}"] if self.call is not None else []
        out += [line.text for line in self.header] + [self.counted]
        out += [f"{r.label}{' (hidden)' if r.hidden else ''}: {r.text}" for r in self.rows]
        out += [line.text for line in self.notes]
        if self.classes:
            out.append("Classes (tiles)")
            out += [f"{r.label}: {r.count:,}" for r in self.classes]
        return out + [line.text for line in self.footer]


def out_of_domain_row(result: AnalysisResult, settings: OverlaySettings) -> CountRow | None:
    """Out-of-domain tiles the confidence filter keeps, and their share of all the tiles it keeps
    (in domain or not); None when the model has no domain statistics."""
    if not result.has_domain:
        return None
    kept = result.confident(settings.min_confidence, include_out_of_domain=True)
    n_out = int((kept & result.out_of_domain).sum())
    n_kept = int(kept.sum())
    label = "out of domain" + (" (counted)" if settings.show_out_of_domain and n_out else "")
    return CountRow("out_of_domain", label, n_out, round(100 * n_out / n_kept) if n_kept else 0, OUT_OF_DOMAIN_SWATCH)


def category_rows(result: AnalysisResult, settings: OverlaySettings) -> tuple[CountRow, ...]:
    return tuple(CountRow(c, c, n, pct, CATEGORY_COLORS[c], c not in settings.categories)
                 for c, n, pct in count_lines(result, settings))


def class_rows(result: AnalysisResult, settings: OverlaySettings) -> tuple[CountRow, ...]:
    """Tiles per class, counted as the category rows are (the same tiles: ``result.confident``);
    empty when the classes are the categories."""
    m = result.model
    if list(m.class_names) == list(m.class_categories):
        return ()
    counts = result.class_counts(settings.show_out_of_domain, min_confidence=settings.min_confidence)
    total = sum(counts.values())
    return tuple(CountRow(name, name, counts[name], round(100 * counts[name] / total) if total else 0, color,
                          cat not in settings.categories)
                 for name, color, cat in zip(m.class_names, m.class_colors, m.class_categories))


def describe_legend(result: AnalysisResult, settings: OverlaySettings, *, source: str = "",
                    regions: list | None = None, region_confidence: float = 0.5,
                    extra_header: tuple[str, ...] = ()) -> Legend:
    """The legend of ``result`` drawn with ``settings``; ``source`` ("the viewer", "the kiosk") names where
    an export was made; ``regions``: the malignant regions drawn (None: not drawn); ``extra_header``:
    lines about the picture itself (the view's position and field of view)."""
    from cellview.slides.levels import describe_skipped

    header = [LegendLine(f"Slide: {result.slide.name}", wrap=False),
              LegendLine(f"Model: {result.model.name} {result.model.version}".rstrip(), wrap=False),
              LegendLine(f"Run on: {result.provider}")]
    mpp = result.slide.mpp
    header.append(LegendLine("Scale: unknown (classified as one image)" if mpp is None
                             else f"Pixel size: {mpp.describe()}"))
    if result.slide.skipped_levels:
        header.append(LegendLine(describe_skipped(result.slide.skipped_levels, reasons=False) + " (wrong colours)",
                                 "hint"))
    options = describe_run_options(result.params, result.stain)
    if options:
        header.append(LegendLine(options, "hint"))
    header += [LegendLine(text, "hint") for text in extra_header]
    failed = f", {result.n_failed} failed" if result.n_failed else ""
    notes = tuple(LegendLine(text, "warning" if warning else "hint") for text, warning in domain_notes(result, settings))
    footer = [LegendLine(describe_colours(settings, result.model.class_names), "hint")]
    shown = describe_filter(settings)
    if shown:
        footer.append(LegendLine(shown, "info"))
    if not settings.visible:
        footer.append(LegendLine("Heatmap hidden (as on screen).", "hint"))
    if regions is not None:
        footer.append(LegendLine(f"Malignant regions (≥ {region_confidence:.0%}): {len(regions)}", "region"))
    nuc = result.nuclei
    if nuc is not None and nuc.measured.any():
        m = nuc.measured
        unit = "µm²" if nuc.area_unit == "um2" else "px²"
        footer.append(LegendLine(f"Nuclei: {int(np.nansum(nuc.count[m])):,}, median area "
                                 f"{np.nanmedian(nuc.median_area[m]):.0f} {unit}", "hint"))
    if source:
        footer.append(LegendLine(f"Exported from {source}: as shown on screen.", "hint"))
    if result.status != "complete":
        footer.append(LegendLine(f"Run {result.status}: partial result.", "warning"))
    return Legend(tuple(header), counted_text(result, settings) + failed, category_rows(result, settings),
                  out_of_domain_row(result, settings), notes, class_rows(result, settings), tuple(footer),
                  slide_call(result))

