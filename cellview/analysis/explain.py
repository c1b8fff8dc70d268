"""What the model looked at: class activation maps for one tile, and the picture ``cellview explain`` writes.

For a GAP + linear head the class activation map is exact (Zhou et al., CVPR 2016): the logit
of class k is the spatial mean of ``W_k · F(x, y) + b_k`` over the last feature map F, so that
map, upsampled to the patch, shows where the evidence for class k lies. The ONNX model computes
it itself (its ``cam`` output, see cellview.analysis.onnx_graph); nothing here approximates it. Qt-free:
the viewer and kiosk draw ``TileExplanation`` with their own widgets.
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cellview.analysis.classifier import OnnxClassifier, probabilities
from cellview.analysis.model_spec import hex_to_rgb
from cellview.analysis.results import AnalysisParams, category_calls
from cellview.analysis.stain import TileStainTransform
from cellview.analysis.tiling import TileGrid, build_grid, read_tile
from cellview.base.errors import AnalysisError, ModelError
from cellview.slides.opening import open_slide
from cellview.slides.slide import Slide, slide_display_name


@dataclass(frozen=True, eq=False)
class TileExplanation:
    """One tile as the model saw it, with its class activation maps, probabilities and domain score."""

    patch: np.ndarray  # (P, P, 3) uint8, the exact input of the model
    cam: np.ndarray  # (K, h, w) float32 class activation maps at feature-map resolution (logit units)
    logits: np.ndarray  # (K,) float32
    probs: np.ndarray  # (K,) float32, calibrated
    class_names: tuple[str, ...]
    class_categories: tuple[str, ...]
    class_colors: tuple[str, ...]
    pred_class: int  # the most probable class within the predicted category (as in results)
    explained_class: int  # the class whose map is shown
    domain_score: float | None  # None: the model has no domain statistics
    in_domain: bool | None
    training_data: str
    rect_l0: tuple[int, int, int, int]  # (x, y, width, height) of the tile in level-0 pixels
    tissue_fraction: float
    analysed: bool  # the tile has enough tissue to be part of an analysis
    patch_mpp_um: float | None  # µm per patch pixel (the model's spacing) when the slide's scale is known
    slide_name: str = ""
    model_name: str = ""

    def cam_upsampled(self, class_index: int | None = None) -> np.ndarray:
        """(P, P) float32 map of one class (default: the explained one), bilinear to the patch size."""
        k = self.explained_class if class_index is None else int(class_index)
        p = self.patch.shape[0]
        return cv2.resize(self.cam[k], (p, p), interpolation=cv2.INTER_LINEAR)

    def heat(self, class_index: int | None = None) -> np.ndarray:
        """(P, P) float32 in 0..1: the map scaled from its minimum to its maximum (flat map → zeros)."""
        m = self.cam_upsampled(class_index)
        lo, hi = float(m.min()), float(m.max())
        return np.zeros_like(m) if hi - lo < 1e-9 else (m - lo) / (hi - lo)

    def peak_px(self, class_index: int | None = None) -> tuple[int, int]:
        """(x, y) patch pixel where the map is highest."""
        m = self.cam_upsampled(class_index)
        y, x = np.unravel_index(int(np.argmax(m)), m.shape)
        return int(x), int(y)


def resolve_class(name_or_index: str | int | None, class_names: tuple[str, ...]) -> int | None:
    """A class given by name (case-insensitive) or index; None stays None (the predicted class)."""
    if name_or_index is None or name_or_index == "":
        return None
    if isinstance(name_or_index, int) or str(name_or_index).isdigit():
        k = int(name_or_index)
        if not 0 <= k < len(class_names):
            raise ModelError(f"Class index {k} is out of range; the model has {len(class_names)} classes.")
        return k
    lowered = [c.lower() for c in class_names]
    if str(name_or_index).lower() not in lowered:
        raise ModelError(f"No class named {name_or_index!r}; the model's classes are: {', '.join(class_names)}.")
    return lowered.index(str(name_or_index).lower())


def explain_tile(slide: Slide, grid: TileGrid, index: int, classifier: OnnxClassifier,
                 class_index: int | None = None, analysed: bool = True,
                 stain: TileStainTransform | None = None) -> TileExplanation:
    """Read one grid tile and explain the model's call on it (for the viewer's inspector and the CLI).

    ``stain``: the slide's stain transform when the analysis normalised stains, so the patch, the map and
    the domain score are those of the tile the model classified (pixel checks read the tile as scanned,
    as in the pipeline).
    """
    spec = classifier.spec
    if not classifier.has_cam:
        raise ModelError(
            f"{spec.onnx_path.name} exposes no class activation maps; add them with "
            "`cellview domain upgrade` (GAP + linear models only).",
        )
    scanned = read_tile(slide, grid, index)
    patch = scanned if stain is None else stain.apply(scanned)
    names = [classifier.output_name, "cam"] + (["features"] if classifier.has_domain else [])
    outs = classifier.run(patch[None], names)
    logits, cam = outs[0][0].astype(np.float32), outs[1][0].astype(np.float32)
    probs = probabilities(logits[None], spec.activation, spec.temperature)[0]
    pred = int(category_calls(probs[None], spec.class_categories, spec.activation)[2][0])
    score = in_domain = None
    training = ""
    if classifier.has_domain:
        assert spec.domain is not None
        s = spec.domain.score(outs[2], tiles=scanned[None])
        score, in_domain = float(s[0]), bool(spec.domain.in_domain(s)[0])
        training = spec.domain.training_data
    mpp = slide.mpp.um if slide.mpp is not None else None
    patch_mpp = spec.spacing_um_px if mpp is not None and not grid.whole_image else None
    return TileExplanation(
        patch=patch, cam=cam, logits=logits, probs=probs, class_names=spec.class_names,
        class_categories=spec.class_categories, class_colors=spec.class_colors, pred_class=pred,
        explained_class=pred if class_index is None else int(class_index), domain_score=score, in_domain=in_domain,
        training_data=training, rect_l0=grid.rect(index), tissue_fraction=float(grid.tissue_fraction[index]),
        analysed=analysed, patch_mpp_um=patch_mpp, slide_name=slide_display_name(slide.path),
        model_name=f"{spec.name} {spec.version}".strip(),
    )


def explain_at(slide_path: str | Path, classifier: OnnxClassifier, l0_x: float, l0_y: float,
               params: AnalysisParams | None = None, class_index: int | None = None) -> TileExplanation:
    """Explain the tile of the analysis grid that contains a level-0 point.

    The grid is the one ``cellview analyze`` uses with ``params``; a point on a tile with too
    little tissue to be analysed is still explained (``analysed`` is False).
    """
    from cellview.analysis.pipeline import apply_reading, plan_tiles, slide_stain_transform

    params = params or AnalysisParams()
    with open_slide(slide_path, mpp_um=params.mpp_um) as slide:
        w0, h0 = slide.dimensions
        if not (0 <= l0_x < w0 and 0 <= l0_y < h0):
            raise AnalysisError(f"The point ({l0_x:g}, {l0_y:g}) is outside the slide ({w0} × {h0} level-0 pixels).")
        params, _ = apply_reading(slide, classifier.spec, params)  # as analyze reads an image without a pixel size
        if not params.whole_image:
            slide.require_mpp()
        tissue, grid = plan_tiles(slide, classifier.spec, params)
        stain = slide_stain_transform(slide, grid, classifier.spec, params.stain_normalize)  # as analyze fits it
        index = grid.tile_at(l0_x, l0_y)
        analysed = index >= 0
        if not analysed:  # the same grid with every cell kept
            grid = build_grid(slide, classifier.spec.patch_size_pixels, classifier.spec.spacing_um_px, tissue,
                              tissue_threshold=0.0, overlap=params.overlap, whole_image=params.whole_image)
            index = grid.tile_at(l0_x, l0_y)
        if index < 0:
            raise AnalysisError(f"No tile of the analysis grid contains ({l0_x:g}, {l0_y:g}).")
        return explain_tile(slide, grid, index, classifier, class_index, analysed=analysed, stain=stain)


# ----------------------------------------------------------------------------- the picture


def colormap(heat: np.ndarray) -> np.ndarray:
    """(H, W) 0..1 → (H, W, 3) uint8 RGB with OpenCV's perceptually ordered 'turbo' colour map."""
    u8 = np.clip(np.round(heat * 255), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)


def overlay(patch: np.ndarray, heat: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """The map blended over the patch, stronger where the evidence is higher."""
    colour = colormap(heat).astype(np.float32)
    alpha = opacity * (0.35 + 0.65 * heat[..., None])
    return np.clip(patch.astype(np.float32) * (1 - alpha) + colour * alpha + 0.5, 0, 255).astype(np.uint8)


def explanation_png(ex: TileExplanation, scale: int = 2) -> bytes:
    """One picture: the patch, the class activation map over it, the probabilities and the domain score."""
    from PIL import Image, ImageDraw

    from cellview.base.fonts import font

    p = ex.patch.shape[0] * scale
    big = cv2.resize(ex.patch, (p, p), interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    heat = cv2.resize(ex.heat(), (p, p), interpolation=cv2.INTER_LINEAR)
    pad, head_h, panel_w = 16, 92, 380
    width = pad * 4 + 2 * p + panel_w
    height = head_h + p + pad * 2 + 64
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    title, body, small = font(22, bold=True), font(15), font(12)
    ink, grey, red, green = (20, 20, 20), (95, 95, 95), (180, 0, 0), (0, 120, 40)

    draw.text((pad, 10), "CellView — what the model looked at", fill=ink, font=title)
    x, y, w, h = ex.rect_l0
    where = f"Slide: {ex.slide_name}   tile at level-0 ({x}, {y}), {w} × {h} px"
    if ex.patch_mpp_um:
        where += f" = {ex.patch.shape[0] * ex.patch_mpp_um:.0f} µm square"
    draw.text((pad, 42), where[:120], fill=grey, font=small)
    draw.text((pad, 60), f"Model: {ex.model_name}" + ("" if ex.analysed else
                                                       "   (this tile has too little tissue to be analysed)"),
              fill=grey, font=small)

    top = head_h
    canvas.paste(Image.fromarray(big), (pad, top))
    canvas.paste(Image.fromarray(overlay(big, heat)), (pad * 2 + p, top))
    cls = ex.class_names[ex.explained_class]
    draw.text((pad, top + p + 6), "The patch the model saw", fill=ink, font=body)
    draw.text((pad * 2 + p, top + p + 6), f"Class activation map: {cls}"[:48], fill=ink, font=body)
    bar = colormap(np.tile(np.linspace(0, 1, p, dtype=np.float32), (10, 1)))
    canvas.paste(Image.fromarray(bar), (pad * 2 + p, top + p + 30))
    draw.text((pad * 2 + p, top + p + 42), "less evidence", fill=grey, font=small)
    draw.text((pad * 2 + 2 * p - 90, top + p + 42), "more evidence", fill=grey, font=small)

    px = pad * 3 + 2 * p
    py = top
    draw.text((px, py), "Class probabilities", fill=ink, font=body)
    py += 26
    bar_w = panel_w - 20
    for k, name in enumerate(ex.class_names):
        prob = float(ex.probs[k])
        mark = " (predicted)" if k == ex.pred_class else ""
        draw.text((px, py), f"{name}{mark}"[:44], fill=ink, font=small)
        py += 16
        draw.rectangle([px, py, px + bar_w, py + 12], outline=(180, 180, 180), fill=(245, 245, 245))
        draw.rectangle([px, py, px + int(round(bar_w * prob)), py + 12], fill=hex_to_rgb(ex.class_colors[k]))
        draw.text((px + bar_w - 40, py - 15), f"{prob:.0%}", fill=ink, font=small)
        py += 22
    py += 10
    draw.text((px, py), "Domain", fill=ink, font=body)
    py += 24
    if ex.domain_score is None:
        draw.text((px, py), "domain score: not available for this model", fill=grey, font=small)
    else:
        verdict = "in domain" if ex.in_domain else "OUT OF DOMAIN: the call is unreliable"
        for line in textwrap.wrap(f"domain score {ex.domain_score:.3f} — {verdict}", 50):
            draw.text((px, py), line, fill=green if ex.in_domain else red, font=small)
            py += 16
        for line in textwrap.wrap(f"(0–1; 1 = like {ex.training_data})", 54):
            draw.text((px, py), line, fill=grey, font=small)
            py += 16
    draw.text((pad, height - 22), "Research use only. Not for clinical diagnosis.", fill=grey, font=small)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
