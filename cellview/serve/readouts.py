"""What the page and the API say, as JSON, from the descriptions the desktop and the files use.

The call (``slide_call``: the one rule), the legend (``outputs.legend.describe_legend``), the domain banner
(``viewer.model.domain_notice``), the overlay as painted (``outputs.overlay.fill_rgba``, the hatching rule and
the category contours) and a tile's scores. Names come from the job's safe display name, never from a path.
"""

from __future__ import annotations

import base64
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cellview.analysis.domain import OUT_OF_DOMAIN_RGBA
from cellview.analysis.model_spec import CATEGORIES, CATEGORY_COLORS
from cellview.analysis.results import AnalysisResult, plural
from cellview.outputs import overlay as ov
from cellview.outputs.legend import describe_legend
from cellview.serve.jobs import Job, JobStore

# ----------------------------------------------------------------------------- the call


def slide_call(result: AnalysisResult) -> dict[str, Any]:
    """The slide's call as the API and the page give it: the engine's one rule (``analysis.call.slide_call``),
    as the metadata JSON records it (``category``, ``headline``, ``evidence``, ``text``, the findings and the
    thresholds), with ``words`` (the one sentence every surface prints), the headline's ``color`` and ``reading``
    (the pixel size a model's rule assumed for an image that states none, as the CLI and the viewer say it)."""
    from cellview.analysis.call import slide_call as the_call
    from cellview.outputs.legend import call_colour

    call = the_call(result)
    reading = (result.reading or {}).get("pixel_size", "")  # a smear model's assumed pixel size, said as on screen
    return {**call.to_dict(), "words": call.text, "color": call_colour(call), "reading": reading}


def shares(result: AnalysisResult) -> dict[str, Any]:
    """Per category: share (0–1) and whole percent of the counted tiles (in domain unless the model has no
    domain score), and the tile counts: the numbers of the legend and the metadata."""
    counts = result.category_counts()
    pct = result.category_percentages()
    share = result.category_shares()
    return {c: {"share": share[c], "percent": pct[c], "tiles": counts[c]} for c in CATEGORIES}


def shown(result: AnalysisResult, job: Job) -> AnalysisResult:
    """The result naming the slide by the job's display name (the legend's "Slide:" line), as the files do."""
    from cellview.slides.slide import slide_stem

    return replace(result, slide=replace(result.slide, path=job.name, name=slide_stem(Path(job.name))))


# ----------------------------------------------------------------------------- progress and status


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def progress_text(job: Job, position: int) -> str:
    p = job.progress
    if job.state == "receiving":
        return "Receiving the upload…"
    if job.state == "queued":
        return "Waiting for the analysis worker" + (f" (number {position} in the queue)." if position > 1 else ".")
    if job.state == "exporting":
        return f"{p.done:,} of {plural(p.total, 'tile')} classified; writing the files…"
    if job.state == "running":
        if not p.total:
            return "Finding the tissue and planning the tiles…"
        text = f"{p.done:,} of {plural(p.total, 'tile')} classified"
        if p.tiles_per_s > 0 and p.done:
            text += f" · {p.tiles_per_s:.1f} tiles/s"
        if p.eta_s is not None and math.isfinite(p.eta_s) and p.done < p.total:
            text += f" · about {duration(p.eta_s)} left"
        return text
    if job.state == "failed":
        return "Failed."
    text = f"{p.done:,} of {plural(p.total, 'tile')} classified"
    if p.from_cache:
        text += " (from the cache)"
    elif p.tiles_per_s > 0:
        text += f" at {p.tiles_per_s:.1f} tiles/s"
    if job.state == "cancelled":
        text += "; cancelled: the finished tiles are kept"
    return text + "."


OUTPUT_KINDS = {"csv": "CSV (per tile)", "geojson": "GeoJSON (QuPath)", "png": "Annotated PNG", "json": "Metadata JSON"}


def job_urls(job: Job) -> dict[str, str]:
    base = f"/api/jobs/{job.id}"
    return {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel", "dzi": f"{base}/slide.dzi",
            "overlay": f"{base}/overlay", "tile": f"{base}/tile", "page": f"/#job={job.id}"}


def status_dict(job: Job, store: JobStore) -> dict[str, Any]:
    """A job as the API and the page see it: state, progress, and once finished the call and the files."""
    position = store.queue_position(job)
    p = job.progress
    out: dict[str, Any] = {
        "id": job.id, "name": job.name, "state": job.state, "version": job.version, "model": job.model,
        "provider": job.provider, "error": job.error, "details": job.details, "queue_position": position,
        "progress": {"done": p.done, "total": p.total, "tiles_per_s": p.tiles_per_s, "eta_s": p.eta_s,
                     "from_cache": p.from_cache, "text": progress_text(job, position)},
        "urls": job_urls(job), "created_unix": job.created_unix,
    }
    if job.fallback:
        out["note"] = f"Model {job.fallback}; it ran on the CPU."
    result = job.result
    if result is not None:
        out["call"] = slide_call(result)
        out["shares"] = shares(result)
        out["summary"] = result.summary()
        out["in_domain_fraction"] = result.in_domain_fraction
        out["status"] = result.status
    if job.outputs:
        out["outputs"] = {kind: {"url": f"/api/jobs/{job.id}/files/{kind}", "label": OUTPUT_KINDS[kind]}
                          for kind in OUTPUT_KINDS if kind in job.outputs}
    return out


# ----------------------------------------------------------------------------- the overlay


def png_data_url(rgba: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgba), cv2.COLOR_RGBA2BGRA))
    if not ok:
        raise ValueError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def overlay_settings(style: str | None, show_anyway: bool, min_confidence: float = 0.0) -> ov.OverlaySettings:
    base = ov.OverlaySettings()
    style = style if style in ov.STYLES else base.style
    return replace(base, style=style, show_out_of_domain=show_anyway, min_confidence=min_confidence)


def legend_dict(result: AnalysisResult, settings: ov.OverlaySettings) -> dict[str, Any]:
    legend = describe_legend(result, settings, region_confidence=0.5)

    def rows(items: Any) -> list[dict[str, Any]]:
        return [{"key": r.key, "label": r.label, "count": r.count, "percent": r.percent, "swatch": r.swatch,
                 "hidden": r.hidden, "text": r.text} for r in items]

    def lines(items: Any) -> list[dict[str, str]]:
        return [{"text": line.text, "kind": line.kind} for line in items]

    return {"header": lines(legend.header), "counted": legend.counted, "rows": rows(legend.rows),
            "notes": lines(legend.notes), "classes": rows(legend.classes), "footer": lines(legend.footer)}


def domain_dict(result: AnalysisResult, show_anyway: bool) -> dict[str, Any]:
    from cellview.viewer.overlay import domain_notice

    notice = domain_notice(result, show_anyway)
    return {"kind": notice.kind, "banner": notice.banner, "headline": notice.headline, "detail": notice.detail}


def overlay_dict(job: Job, result: AnalysisResult, settings: ov.OverlaySettings) -> dict[str, Any]:
    """Everything the page draws over the slide and beside it for one state of the run.

    ``fill``: one pixel per display cell, exactly as painted before the opacity (category colour × confidence,
    grey for out-of-domain tiles); ``hatch``: the cells hatched as out of domain; ``contours``: level-0
    segments per category. Cells are ``stride`` level-0 pixels, drawn from the slide's origin and clipped to it.
    """
    g = result.grid
    named = shown(result, job)
    fill = g.to_display(ov.fill_rgba(result, settings))
    out: dict[str, Any] = {
        "version": job.version, "state": job.state,
        "grid": {"rows": int(fill.shape[0]), "cols": int(fill.shape[1]), "stride_l0": [g.stride_l0_x, g.stride_l0_y],
                 "slide_l0": [g.slide_w_l0, g.slide_h_l0], "whole_image": g.whole_image, "n_tiles": g.n_tiles},
        "fill": png_data_url(fill) if result.n_done or result.out_of_domain.any() else None,
        "hatch": None,
        "contours": [{"category": c.category, "color": c.color,
                      "segments": np.round(c.segments).astype(np.int64).ravel().tolist()}
                     for c in ov.category_contours(result, settings)],
        "style": settings.style, "show_anyway": settings.show_out_of_domain,
        "legend": legend_dict(named, settings), "domain": domain_dict(result, settings.show_out_of_domain),
        "call": slide_call(result), "counted": ov.counted_text(result, settings),
    }
    if ov.hatches_out_of_domain(result, settings):
        mask = g.to_display(result.out_of_domain_grid())
        rgba = np.zeros((*mask.shape, 4), np.uint8)
        rgba[mask] = (255, 255, 255, 255)
        out["hatch"] = png_data_url(rgba)
    return out


# ----------------------------------------------------------------------------- one tile


def pct(p: float) -> str:
    """One way to print a probability, as the desktop's inspector does."""
    return f"{p:.1%}" if np.isfinite(p) else "–"


def domain_line(result: AnalysisResult, index: int) -> str:
    """The inspector's domain row: the score and the verdict, or that the model has none."""
    from cellview.analysis.domain import NOT_AVAILABLE

    if not result.has_domain or result.domain_score is None or result.model.domain is None:
        return "domain    " + NOT_AVAILABLE.removeprefix("domain score: ")
    score = float(result.domain_score[index])
    if not bool(result.done[index]) or not np.isfinite(score):
        return "domain    –"
    verdict = "in domain" if bool(result.in_domain[index]) else "OUT of domain"
    return f"domain    {score:.3f}  {verdict} (≥ {result.model.domain.threshold:g} is in)"


def tile_dict(job: Job, result: AnalysisResult, index: int) -> dict[str, Any]:
    """One tile as the desktop's inspector shows it: the call, the bars, where it is, and its patch's URL."""
    g, m = result.grid, result.model
    x, y, w, h = g.rect(index)
    done = bool(result.done[index])
    mpp = result.slide.mpp.um if result.slide.mpp is not None else None
    out: dict[str, Any] = {
        "index": index, "row": int(g.grid_row[index]), "col": int(g.grid_col[index]), "done": done,
        "rect_l0": [x, y, w, h], "patch_url": f"/api/jobs/{job.id}/tiles/{index}/patch.png",
        "classes": [{"name": n, "color": c, "p": float(p) if np.isfinite(p) else None, "text": pct(float(p))}
                    for n, c, p in zip(m.class_names, m.class_colors, result.probs[index])],
    }
    if done:
        cls, k = int(result.pred_class[index]), int(result.pred_category[index])
        conf = float(result.confidence[index])
        out.update({"class": m.class_names[cls], "class_color": m.class_colors[cls], "category": CATEGORIES[k],
                    "category_color": CATEGORY_COLORS[CATEGORIES[k]], "confidence": conf, "confidence_text": pct(conf),
                    "out_of_domain": bool(result.has_domain and result.out_of_domain[index])})
        if tuple(m.class_names) != tuple(m.class_categories):
            out["categories"] = [{"name": c, "color": CATEGORY_COLORS[c], "p": float(p), "text": pct(float(p))}
                                 for c, p in zip(CATEGORIES, result.category_probs[index])]
    else:
        failed = int(result.state[index]) == 2
        out["state_text"] = "Tile failed to read" if failed else "Tile not analysed yet"
        out["error"] = result.tile_errors.get(index, "") if failed else ""
    size = f"{w * mpp:.0f} × {h * mpp:.0f} µm" if mpp else "scale unknown"
    out["lines"] = [
        f"tile      #{index}  (row {int(g.grid_row[index])}, col {int(g.grid_col[index])})",
        f"level 0   x {x:,}  y {y:,}",
        f"extent    {w:,} × {h:,} px = {size}",
        f"model in  {g.tile_px} px from level {g.read_level}",
        f"tissue    {float(g.tissue_fraction[index]):.0%}",
        domain_line(result, index),
    ]
    return out


# ----------------------------------------------------------------------------- the page's constants


def page_info(models: list[str], default_model: str, max_upload_bytes: int, version: str,
              token_required: bool) -> dict[str, Any]:
    """What the page needs before any slide: the models, the limits, and how the overlay is drawn (the
    desktop's colours and hatching, from the same constants)."""
    base = ov.OverlaySettings()
    return {
        "version": version, "models": models, "default_model": default_model,
        "max_upload_bytes": max_upload_bytes, "token_required": token_required,
        "categories": [{"name": c, "color": CATEGORY_COLORS[c]} for c in CATEGORIES],
        "out_of_domain_rgba": list(OUT_OF_DOMAIN_RGBA),
        "hatch": {"spacing_px": ov.HATCH_SPACING_PX, "width_px": ov.HATCH_WIDTH_PX, "rgb": list(ov.HATCH_RGB),
                  "alpha": list(ov.HATCH_ALPHA), "casing_rgb": list(ov.CASING_RGB)},
        "styles": list(ov.STYLES), "style": base.style, "opacity": base.opacity,
        "outline_order": list(ov.OUTLINE_ORDER), "casing_rgb": list(ov.CASING_RGB),
    }
