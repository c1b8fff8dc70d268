"""What the heatmap shows, computed once for the screen and the exported PNG alike (Qt-free).

``OverlaySettings`` is the display state (style, opacity, colouring mode, confidence filter,
categories shown, region outlines). From it and a result come the fill layer (one RGBA pixel
per grid cell), the category contours (line segments in level-0 pixels), the counts the panel
shows and the sentences a legend needs, so the viewer, the kiosk and every export agree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from cellview.analysis.domain import NOT_AVAILABLE, OUT_OF_DOMAIN_RGBA
from cellview.analysis.model_spec import CATEGORIES, CATEGORY_COLORS, hex_to_rgb
from cellview.analysis.results import AnalysisResult, plural
from cellview.analysis.tiling import TileGrid

STYLES = ("outline", "fill", "fill+outline")
"""``outline``: category contours only, the stain stays as scanned (default: red over eosin pink
reads as more staining); ``fill``: colour × confidence; ``fill+outline``: both."""

CATEGORY_MODE = -1
"""``OverlaySettings.mode`` for colouring by category; ``k ≥ 0`` colours by the probability of class k."""

OUTLINE_ORDER = ("normal", "benign", "malignant")
"""Contours are drawn in this order: where two categories meet, the more severe one's line is on top."""

CASING_RGB = (20, 20, 20)
"""A dark line under each contour keeps it legible over pale and dark stain alike."""

HATCH_SPACING_PX = 12
"""Out-of-domain tiles are hatched: diagonal lines this many screen (or picture) pixels apart,
whatever the zoom, so the hatching reads the same on screen and in the exported PNG. Thin and
sparse enough that the stain stays readable underneath (checked on CMU-1, fitted and at 20×)."""
HATCH_WIDTH_PX = 1
HATCH_RGB = (245, 245, 245)
"""A light line on a dark casing (``CASING_RGB``, one pixel each side): legible over pale glass and
dark nuclei alike."""
HATCH_ALPHA = (150, 230)
"""Opacity of the casing and of the light line (0–255)."""


def probability_lut(n: int = 256) -> np.ndarray:
    """Perceptually ordered dark-blue → yellow map (viridis) as an (n, 3) uint8 RGB table."""
    ramp = np.round(np.linspace(0, 255, n)).astype(np.uint8).reshape(-1, 1)
    return np.ascontiguousarray(cv2.applyColorMap(ramp, cv2.COLORMAP_VIRIDIS)[:, 0, ::-1])


@dataclass(frozen=True)
class OverlaySettings:
    """How the result is drawn over the slide; validated on creation. New options get defaults."""

    visible: bool = True
    style: str = "outline"
    opacity: float = 0.45  # of the fill; contours are opaque
    mode: int = CATEGORY_MODE
    min_confidence: float = 0.0  # tiles less sure than this are not drawn (nor counted)
    categories: tuple[str, ...] = CATEGORIES  # categories drawn
    show_regions: bool = False  # malignant-region outlines at ``min_confidence``
    show_out_of_domain: bool = False  # draw and count out-of-domain tiles like the others (else: grey, not counted)

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"overlay style {self.style!r}: use one of {', '.join(STYLES)}")
        if not 0.0 <= self.opacity <= 1.0 or not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError("overlay opacity and minimum confidence must lie between 0 and 1")
        unknown = set(self.categories) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)}")
        object.__setattr__(self, "categories", tuple(c for c in CATEGORIES if c in self.categories))

    @property
    def by_category(self) -> bool:
        return self.mode < 0

    @property
    def draws_fill(self) -> bool:
        """Probability mode is always a fill: a contour cannot show a gradient."""
        return not self.by_category or self.style != "outline"

    @property
    def draws_outline(self) -> bool:
        return self.by_category and self.style != "fill"

    def for_new_slide(self) -> OverlaySettings:
        """These settings for a newly opened slide: the look stays, what belongs to one slide (``PER_SLIDE``:
        the override of the domain warning, the confidence filter, hidden categories) starts safe."""
        return replace(self, **PER_SLIDE)

    def to_dict(self) -> dict:
        out = {"visible": self.visible, "style": self.style, "opacity": self.opacity, "mode": self.mode,
               "min_confidence": self.min_confidence, "categories": list(self.categories),
               "show_regions": self.show_regions}
        if self.show_out_of_domain:  # only when on, so exports made before it existed stay up to date
            out["show_out_of_domain"] = True
        return out


PER_SLIDE = {"show_out_of_domain": False, "min_confidence": 0.0, "categories": CATEGORIES}
"""Display settings that belong to one slide, and the values a newly opened slide starts with: "Show calls
anyway" overrides the domain warning for the slide it was chosen on, and a filter set for one slide
must not silently hide tiles (or calls) of the next."""


def shown_tiles(result: AnalysisResult, settings: OverlaySettings) -> np.ndarray:
    """Tiles drawn: finished, in the model's domain (unless shown anyway), sure enough, and of a
    category that is switched on (in every colouring mode: a probability map hides them too)."""
    show = result.confident(settings.min_confidence, settings.show_out_of_domain).copy()
    if settings.categories != CATEGORIES:
        show &= np.isin(result.pred_category, [CATEGORIES.index(c) for c in settings.categories])
    return show


def hatches_out_of_domain(result: AnalysisResult, settings: OverlaySettings) -> bool:
    """Out-of-domain tiles are drawn grey and hatched (not in a category colour) under these settings."""
    return (settings.visible and not settings.show_out_of_domain and not result.grid.whole_image
            and result.has_domain and bool(result.out_of_domain.any()))


def out_of_domain_runs(result: AnalysisResult, settings: OverlaySettings) -> np.ndarray:
    """(N, 4) float64 level-0 rectangles x, y, width, height covering the out-of-domain cells that are
    hatched: one per horizontal run of such cells in a grid row (few items for a view to draw)."""
    if not hatches_out_of_domain(result, settings):
        return np.zeros((0, 4), np.float64)
    g = result.grid
    padded = np.pad(result.out_of_domain_grid(), ((0, 0), (1, 1)))
    step = np.diff(padded.astype(np.int8), axis=1)
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)  # row-major order: the n-th end closes the n-th start
    x0, x1 = g.cell_edges_l0(starts, "x"), g.cell_edges_l0(ends, "x")
    y0, y1 = g.cell_edges_l0(rows, "y"), g.cell_edges_l0(rows + 1, "y")
    return np.column_stack([x0, y0, x1 - x0, y1 - y0])


def hatch_mask(height: int, width: int, spacing_px: int = HATCH_SPACING_PX,
               width_px: int = HATCH_WIDTH_PX) -> tuple[np.ndarray, np.ndarray]:
    """(line, casing) boolean masks of the diagonal hatching over a picture: lines x + y ≡ 0 (mod
    spacing), the casing one pixel wider on each side (the picture's version of the screen's)."""
    d = (np.arange(width)[None, :] + np.arange(height)[:, None]) % spacing_px
    line = d < width_px
    casing = (d < width_px + 1) | (d == spacing_px - 1)
    return line, casing & ~line


def fill_rgba(result: AnalysisResult, settings: OverlaySettings,
              lut: np.ndarray | None = None) -> np.ndarray:
    """(n_rows, n_cols, 4) uint8, one pixel per grid cell, exactly as painted (before ``opacity``).

    By category: the category colour with alpha = confidence. By probability of class k: the
    viridis colour of P(k), opaque. Out-of-domain tiles are grey in every style (outline too)
    unless ``show_out_of_domain``. Transparent where nothing is drawn.
    """
    g = result.grid
    out = np.zeros((*g.shape, 4), dtype=np.uint8)
    if not settings.show_out_of_domain:
        ood = result.out_of_domain
        out[g.grid_row[ood], g.grid_col[ood]] = OUT_OF_DOMAIN_RGBA
    if not settings.draws_fill:
        return out
    show = shown_tiles(result, settings)
    rows, cols = g.grid_row[show], g.grid_col[show]
    if settings.by_category:
        palette = np.array([hex_to_rgb(CATEGORY_COLORS[c]) for c in CATEGORIES], dtype=np.uint8)
        out[rows, cols, :3] = palette[result.pred_category[show]]
        out[rows, cols, 3] = np.clip(np.round(result.confidence[show] * 255), 0, 255).astype(np.uint8)
    else:
        lut = probability_lut() if lut is None else lut
        p = np.nan_to_num(result.probs[show, settings.mode])
        out[rows, cols, :3] = lut[np.clip(np.round(p * (len(lut) - 1)), 0, len(lut) - 1).astype(np.int64)]
        out[rows, cols, 3] = 255
    return out


@dataclass(frozen=True, eq=False)
class Contour:
    """The border of one category's drawn cells: (N, 4) float64 segments x0, y0, x1, y1 in level-0 px."""

    category: str
    color: str
    segments: np.ndarray


def category_contours(result: AnalysisResult, settings: OverlaySettings) -> list[Contour]:
    """Cell edges where a drawn category meets anything else, per category, within the slide.

    Vectorised over the grid (no tracing), so it is cheap enough to redo on every repaint of a
    streaming run. Empty when the style draws no outline.
    """
    if not settings.draws_outline:
        return []
    g = result.grid
    show = shown_tiles(result, settings)
    cat = np.full(g.shape, -1, np.int64)
    cat[g.grid_row[show], g.grid_col[show]] = result.pred_category[show]
    out = []
    for name in OUTLINE_ORDER:
        if name not in settings.categories:
            continue
        seg = cell_outline(g, cat == CATEGORIES.index(name))
        if len(seg):
            out.append(Contour(name, CATEGORY_COLORS[name], seg))
    return out


def cell_outline(grid: TileGrid, cells: np.ndarray) -> np.ndarray:
    """(N, 4) level-0 segments x0, y0, x1, y1 along the border of the marked (n_rows, n_cols) grid cells."""
    mine = np.pad(np.asarray(cells, bool), 1, constant_values=False)
    parts = []
    # vertical edges between padded columns c and c + 1: cell edge c (edge n is the slide's edge)
    r, c = np.nonzero(mine[1:-1, 1:] != mine[1:-1, :-1])
    if r.size:
        x = grid.cell_edges_l0(c, "x")
        parts.append(np.column_stack([x, grid.cell_edges_l0(r, "y"), x, grid.cell_edges_l0(r + 1, "y")]))
    r, c = np.nonzero(mine[1:, 1:-1] != mine[:-1, 1:-1])
    if r.size:
        y = grid.cell_edges_l0(r, "y")
        parts.append(np.column_stack([grid.cell_edges_l0(c, "x"), y, grid.cell_edges_l0(c + 1, "x"), y]))
    if not parts:
        return np.zeros((0, 4))
    seg = np.vstack(parts)
    return seg[(seg[:, 0] != seg[:, 2]) | (seg[:, 1] != seg[:, 3])]


def describe_colours(settings: OverlaySettings, class_names: tuple[str, ...] = ()) -> str:
    """One sentence saying what colour means under these settings (panel hint and legends)."""
    if not settings.by_category:
        name = class_names[settings.mode] if settings.mode < len(class_names) else f"class {settings.mode}"
        return f"Colour = probability of {name} (dark blue 0% → yellow 100%)."
    if settings.style == "outline":
        return "Lines outline each category's tiles."
    if settings.style == "fill":
        return "Colour = category, intensity = confidence."
    return "Colour = category, intensity = confidence; lines outline each category."


def describe_filter(settings: OverlaySettings) -> str:
    """What the display leaves out, or '' when it shows every finished tile."""
    parts = []
    if settings.min_confidence > 0:
        parts.append(f"only tiles ≥ {settings.min_confidence:.0%} confident")
    hidden = [c for c in CATEGORIES if c not in settings.categories]
    if hidden:
        parts.append(f"{' and '.join(hidden)} hidden")
    return ("Shown: " + "; ".join(parts) + ".") if parts else ""


def describe_overrides(settings: OverlaySettings) -> str:
    """What this slide's display hides or overrides, for the panel's notice ('' when it shows the slide as
    analysed): the filters (``describe_filter``) and "Show calls anyway"."""
    parts = [describe_filter(settings)]
    if settings.show_out_of_domain:
        parts.append("Out-of-domain tiles are shown in category colours and counted anyway.")
    return " ".join(p for p in parts if p)


def describe_domain(result: AnalysisResult, settings: OverlaySettings) -> str:
    """The legends' sentence on out-of-domain tiles: how they are drawn and whether they are counted."""
    if not result.has_domain:
        return NOT_AVAILABLE[0].upper() + NOT_AVAILABLE[1:] + "."
    n_out, n_done = int(result.out_of_domain.sum()), result.n_done
    if n_out == 0:
        return f"Every classified tile is in the model's domain ({plural(n_done, 'tile')})."
    share = f"{plural(n_out, 'tile')} of {n_done:,} ({n_out / max(n_done, 1):.0%})"
    if settings.show_out_of_domain:
        return f"Out of the model's domain: {share}, shown in category colours and counted anyway."
    return f"Out of the model's domain: {share}, hatched grey and left out of the counts."


def domain_notes(result: AnalysisResult, settings: OverlaySettings) -> list[tuple[str, bool]]:
    """The legends' out-of-domain lines below the counts, (text, is_warning): what the shares count,
    how out-of-domain tiles are drawn, and the banner's warning when it shows (the PNG exports of the
    command line and of the viewer say the same)."""
    from cellview.analysis.results import domain_banner

    if not result.has_domain:
        return [(describe_domain(result, settings), False)]
    notes = []
    if result.out_of_domain.any():
        notes.append(("Shares: all classified tiles (out-of-domain ones shown anyway); out of domain: share of all "
                      "tiles." if settings.show_out_of_domain else
                      "Shares: in-domain tiles only; out of domain: share of all tiles.", False))
    notes.append((describe_domain(result, settings), False))
    banner = domain_banner(result)
    if banner.show:
        assert banner.in_domain_fraction is not None
        notes.append((banner.headline, True))
        notes.append((f"{1 - banner.in_domain_fraction:.0%} of the tissue tiles are out of the model's domain "
                      "(the banner's rule).", False))
    return notes


def count_lines(result: AnalysisResult, settings: OverlaySettings) -> list[tuple[str, int, int]]:
    """(category, tiles, whole %) per category under the confidence filter; the % add up to 100."""
    counts = result.category_counts(settings.show_out_of_domain, min_confidence=settings.min_confidence)
    pct = result.category_percentages(settings.show_out_of_domain, min_confidence=settings.min_confidence)
    return [(c, counts[c], pct[c]) for c in CATEGORIES]


def counted_text(result: AnalysisResult, settings: OverlaySettings) -> str:
    """'130 tiles classified', '96 of 130 tiles ≥ 60% confident' or '… classified, 120 in domain':
    what the counts are of."""
    domain = result.has_domain and not settings.show_out_of_domain
    if settings.min_confidence <= 0:
        text = f"{plural(result.n_done, 'tile')} classified"
        return text + (f", {int(result.in_domain.sum()):,} in domain" if domain else "")
    kept = int(result.confident(settings.min_confidence, settings.show_out_of_domain).sum())
    where = " in domain" if domain else ""
    return f"{kept:,} of {plural(result.n_done, 'tile')}{where} ≥ {settings.min_confidence:.0%} confident"
