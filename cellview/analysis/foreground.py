"""How a model reads an image: which parts it classifies (its foreground rule) and what it does with an image
that states no pixel size. Both are declared in the model's sidecar and validated on load.

Foreground rules (sidecar ``"foreground": {"rule": ...}``):

- ``tissue`` (the default; every H&E model): the tissue mask (``tissue.detect_tissue``) and the run's
  ``--tissue-threshold``, exactly as without the entry.
- ``whole-field``: every tile of the image is read; nothing on it is background (a blood smear's pale field
  between cells is what the model was trained on).
- ``stained-cells``: tiles holding a nucleus-stained cell. A white cell's nucleus in a Romanowsky-stained smear
  (Wright, Giemsa, May-Grünwald) is saturated violet to purple; red cells are pink or grey-lilac and pale, the
  field white. The mask is those pixels (hue ``hue_deg``, saturation ≥ ``min_saturation``), opened, widened
  by ``cell_margin_um`` for the cytoplasm; a tile is read when at least ``min_fraction`` of it is covered.
  On a healthy smear's field with one white cell the tissue rule sees no tissue (pale, unsaturated).
  With ``"fallback": "whole-field"`` an image on which no tile holds a stained cell is read whole-field
  instead, so every image gets a call (the result's mask says so: method ``stained-cells, none found``).

An image without a pixel size (sidecar ``"unstated_pixel_size": {"read": ...}``):

- ``ask`` (the default): the run needs one (``--mpp``) or ``--whole-image``, as before.
- ``whole-image``: the image is read as one field resized to the model's tile, as the model's training
  images were read (e.g. the 224 × 224 px smear fields of a public set, about 100 µm across).
- ``assume``: the image is taken to have ``mpp_um`` µm per pixel.
- ``field``: the image is one microscope field ``field_um`` wide (its longer side), so its pixel size is
  ``field_um`` / that side — a smear field photographed at 100× and saved at any size keeps its scale
  (the public set's fields: about 100 µm; its healthy-blood fields are the same fields at 249–550 px).

Either way the run says what it assumed (``ScaleChoice.note``: console, metadata JSON).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from cellview.analysis.tissue import TissueMask, TissueParams, detect_tissue
from cellview.base.errors import ModelError
from cellview.slides.slide import Mpp, Slide

FOREGROUND_RULES = ("tissue", "whole-field", "stained-cells")
UNSTATED_READS = ("ask", "whole-image", "assume", "field")
FALLBACKS = ("", "whole-field")


def _number(raw: dict[str, Any], key: str, default: float, lo: float, hi: float, where: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
        raise ModelError(f"The {where}: 'foreground' {key!r} must be a number from {lo:g} to {hi:g}, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class Foreground:
    """A model's foreground rule (see the module docstring); the defaults are the H&E behaviour."""

    rule: str = "tissue"
    min_fraction: float = 0.005  # stained-cells: share of a tile covered by stained cells for it to be read
    hue_deg: tuple[float, float] = (232.0, 320.0)  # violet … purple … magenta
    min_saturation: float = 0.3
    cell_margin_um: float = 3.0  # the nucleus mask widened by this much: the cell's cytoplasm
    min_nucleus_um2: float = 8.0  # smaller specks (platelets, stain debris) are not cells
    mask_mpp_um: float = 1.0  # the mask's pixel size (cells are 7–20 µm)
    fallback: str = ""  # "whole-field": an image with no stained-cell tile is read whole-field (so it is called)

    @classmethod
    def from_sidecar(cls, raw: Any, where: str) -> Foreground:
        """The sidecar's ``foreground`` entry, validated (ModelError with the field and the allowed values)."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or raw.get("rule") not in FOREGROUND_RULES:
            got = raw.get("rule") if isinstance(raw, dict) else raw
            raise ModelError(f"The {where}: 'foreground' must be an object whose 'rule' is one of "
                             f"{', '.join(FOREGROUND_RULES)}; got {got!r}.")
        known = set(cls.__dataclass_fields__) | {"note"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelError(f"The {where}: 'foreground' has an unknown setting {unknown[0]!r}; "
                             f"known: {', '.join(sorted(known - {'rule'}))}.")
        hue = raw.get("hue_deg", cls.hue_deg)
        if (not isinstance(hue, (list, tuple)) or len(hue) != 2
                or not all(isinstance(h, (int, float)) and not isinstance(h, bool) and 0 <= h <= 360 for h in hue)
                or hue[0] >= hue[1]):
            raise ModelError(f"The {where}: 'foreground' 'hue_deg' must be [low, high] degrees with 0 ≤ low < high ≤ 360.")
        fallback = raw.get("fallback", "")
        if fallback not in FALLBACKS:
            raise ModelError(f"The {where}: 'foreground' 'fallback' must be 'whole-field' or absent; got {fallback!r}.")
        d = cls()
        return cls(rule=raw["rule"], fallback=fallback,
                   min_fraction=_number(raw, "min_fraction", d.min_fraction, 0.0, 1.0, where),
                   hue_deg=(float(hue[0]), float(hue[1])),
                   min_saturation=_number(raw, "min_saturation", d.min_saturation, 0.0, 1.0, where),
                   cell_margin_um=_number(raw, "cell_margin_um", d.cell_margin_um, 0.0, 50.0, where),
                   min_nucleus_um2=_number(raw, "min_nucleus_um2", d.min_nucleus_um2, 0.0, 1000.0, where),
                   mask_mpp_um=_number(raw, "mask_mpp_um", d.mask_mpp_um, 0.1, 16.0, where))

    def to_sidecar(self) -> dict[str, Any]:
        if self.rule != "stained-cells":
            return {"rule": self.rule}
        out = asdict(self)
        out["hue_deg"] = list(self.hue_deg)
        return out

    def describe(self) -> str:
        text = {"tissue": "tiles with tissue",
                "whole-field": "every tile of the field",
                "stained-cells": f"tiles holding a nucleus-stained cell (≥ {self.min_fraction:.1%} of the tile)"}[self.rule]
        return text + ("; every tile when none holds one" if self.fallback else "")


@dataclass(frozen=True)
class UnstatedScale:
    """What a model does with an image that states no pixel size (see the module docstring)."""

    read: str = "ask"
    mpp_um: float | None = None  # read "assume"
    field_um: float | None = None  # read "field": the field's width (its longer side)
    note: str = ""  # why, in the model's words (shown with the assumption)

    @classmethod
    def from_sidecar(cls, raw: Any, where: str) -> UnstatedScale:
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or raw.get("read") not in UNSTATED_READS:
            got = raw.get("read") if isinstance(raw, dict) else raw
            raise ModelError(f"The {where}: 'unstated_pixel_size' must be an object whose 'read' is one of "
                             f"{', '.join(UNSTATED_READS)}; got {got!r}.")
        values: dict[str, float | None] = {}
        for key, read, what, lo, hi in (("mpp_um", "assume", "a pixel size", 0.02, 50.0),
                                        ("field_um", "field", "the field's width", 1.0, 1e6)):
            value = raw.get(key)
            if raw["read"] == read:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
                    raise ModelError(f"The {where}: 'unstated_pixel_size' with read {read!r} needs {key!r}, {what} "
                                     f"from {lo:g} to {hi:g} µm; got {value!r}.")
                values[key] = float(value)
            elif value is not None:
                raise ModelError(f"The {where}: 'unstated_pixel_size' {key!r} belongs to read {read!r} only.")
        unknown = sorted(set(raw) - {"read", "mpp_um", "field_um", "note"})
        if unknown:
            raise ModelError(f"The {where}: 'unstated_pixel_size' has an unknown setting {unknown[0]!r}.")
        note = raw.get("note", "")
        if not isinstance(note, str):
            raise ModelError(f"The {where}: 'unstated_pixel_size' 'note' must be text.")
        return cls(raw["read"], values.get("mpp_um"), values.get("field_um"), note)

    def to_sidecar(self) -> dict[str, Any]:
        out: dict[str, Any] = {"read": self.read}
        if self.mpp_um is not None:
            out["mpp_um"] = self.mpp_um
        if self.field_um is not None:
            out["field_um"] = self.field_um
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class Reading:
    """A model's foreground rule and its rule for images without a pixel size."""

    foreground: Foreground = field(default_factory=Foreground)
    unstated: UnstatedScale = field(default_factory=UnstatedScale)

    @property
    def is_default(self) -> bool:
        return self == Reading()

    @classmethod
    def from_sidecar(cls, data: dict[str, Any], where: str) -> Reading:
        return cls(Foreground.from_sidecar(data.get("foreground"), where),
                   UnstatedScale.from_sidecar(data.get("unstated_pixel_size"), where))

    def sidecar_entries(self) -> dict[str, Any]:
        """The sidecar keys for this reading; none for the defaults, so H&E sidecars stay as they were."""
        out: dict[str, Any] = {}
        if self.foreground != Foreground():
            out["foreground"] = self.foreground.to_sidecar()
        if self.unstated != UnstatedScale():
            out["unstated_pixel_size"] = self.unstated.to_sidecar()
        return out


# ----------------------------------------------------------------------------- the image's scale


@dataclass(frozen=True)
class ScaleChoice:
    """How one image is read: whole image or not, the pixel size used, and what was assumed ('' = nothing)."""

    whole_image: bool
    mpp: Mpp | None
    note: str = ""


def choose_scale(reading: Reading, mpp: Mpp | None, whole_image: bool, model_name: str, patch_px: int,
                 image_px: tuple[int, int] = (0, 0)) -> ScaleChoice:
    """The image's own pixel size (or the user's ``--mpp``) wins; without one the model's declared rule applies.

    ``image_px``: the image's level-0 (width, height), for the ``field`` rule."""
    unstated = reading.unstated
    if whole_image or mpp is not None or unstated.read == "ask":
        return ScaleChoice(whole_image, mpp)
    why = f" ({unstated.note})" if unstated.note else ""
    if unstated.read == "whole-image":
        return ScaleChoice(True, None, f"The image states no pixel size: read as one field resized to {patch_px} px, "
                                       f"as the model {model_name} declares{why}.")
    if unstated.read == "field":
        side = max(image_px)
        if side <= 0:
            raise ValueError("the field rule needs the image's size")
        value = float(unstated.field_um or 0.0) / side
        return ScaleChoice(False, Mpp(value, value, "field width assumed by the model", approximate=True),
                           f"The image states no pixel size: taken as one field {unstated.field_um:g} µm wide, so "
                           f"{value:.3g} µm/px over its {side} px, as the model {model_name} declares{why}.")
    value = float(unstated.mpp_um or 0.0)
    return ScaleChoice(False, Mpp(value, value, "assumed by the model", approximate=True),
                       f"The image states no pixel size: assumed {value:g} µm/px, as the model {model_name} "
                       f"declares{why}.")


# ----------------------------------------------------------------------------- masks


def stained_pixels(rgb: np.ndarray, fg: Foreground) -> np.ndarray:
    """Bool mask of nucleus-stained pixels: hue within ``fg.hue_deg`` and saturation ≥ ``fg.min_saturation``."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV_FULL)  # hue 0..255 over 360°
    hue = hsv[..., 0].astype(np.float32) * (360.0 / 256.0)
    sat = hsv[..., 1].astype(np.float32) / 255.0
    return (sat >= fg.min_saturation) & (hue >= fg.hue_deg[0]) & (hue <= fg.hue_deg[1])


def stained_cell_mask_from_rgb(rgb: np.ndarray, mask_mpp_um: float, fg: Foreground) -> np.ndarray:
    """Cells with a stained nucleus in an RGB image whose pixels are ``mask_mpp_um`` wide (bool, same size)."""
    mask = stained_pixels(rgb, fg).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    min_px = fg.min_nucleus_um2 / (mask_mpp_um ** 2)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_px
    mask = keep[labels].astype(np.uint8)
    radius = int(round(fg.cell_margin_um / mask_mpp_um))
    if radius >= 1 and mask.any():
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.dilate(mask, kernel)
    return mask.astype(bool)


def foreground_mask(slide: Slide, fg: Foreground, tissue: TissueParams, mpp_um: float | None,
                    max_mask_px: int = 4096) -> TissueMask:
    """The mask the grid keeps tiles by: tissue (the tissue rule, unchanged), all of the field, or stained cells.

    Without a pixel size (an image read whole) the stained-cell mask takes the image's pixels as 0.5 µm wide
    (a smear field's order of size); it then only feeds the tile's share and the cell outlines shown.
    """
    if fg.rule == "tissue":
        return detect_tissue(slide, tissue, mpp_um)
    w0, h0 = slide.dimensions
    scale_um = mpp_um or 0.5
    downsample = max(1.0, fg.mask_mpp_um / scale_um, max(w0, h0) / max_mask_px)
    thumb = slide.thumbnail(max(1, int(round(max(w0, h0) / downsample))))
    downsample = w0 / thumb.shape[1]
    if fg.rule == "whole-field":
        return TissueMask(mask=np.ones(thumb.shape[:2], bool), downsample=downsample, threshold=0.0, method="whole-field")
    mask = stained_cell_mask_from_rgb(thumb, scale_um * downsample, fg)
    return TissueMask(mask=mask, downsample=downsample, threshold=fg.min_saturation, method="stained-cells")


def tile_threshold(fg: Foreground, tissue_threshold: float) -> float:
    """The share of a tile the mask must cover for the tile to be read (the run's own for the tissue rule)."""
    return {"tissue": tissue_threshold, "whole-field": 0.0, "stained-cells": fg.min_fraction}[fg.rule]



def cell_outlines(mask: TissueMask, min_points: int = 3) -> list[np.ndarray]:
    """Outlines of the cells a stained-cells mask found, as (N, 2) level-0 (x, y) polygons: what a view draws to
    show the cells behind a smear's call (empty for other masks)."""
    if not mask.method.startswith("stained-cells") or not mask.mask.any():
        return []
    contours, _ = cv2.findContours(mask.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [(c[:, 0, :].astype(np.float64) + 0.5) * mask.downsample for c in contours if len(c) >= min_points]


def nucleus_outlines(slide: Slide, fg: Foreground, mpp_um: float | None, max_px: int = 2048,
                     min_points: int = 3) -> list[np.ndarray]:
    """Outlines of the stained nuclei (the stained-cells mask before it is widened for the cytoplasm), as (N, 2)
    level-0 (x, y) polygons, read from a thumbnail of at most ``max_px`` (a smear field at full resolution).

    What a view draws inside the cell outlines: the nucleus is what the stain rule keys on (empty for other rules)."""
    if fg.rule != "stained-cells":
        return []
    w0, h0 = slide.dimensions
    thumb = slide.thumbnail(max(1, min(max_px, max(w0, h0))))
    downsample = w0 / thumb.shape[1]
    nuclei = stained_cell_mask_from_rgb(thumb, (mpp_um or 0.5) * downsample, replace(fg, cell_margin_um=0.0))
    contours, _ = cv2.findContours(nuclei.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [(c[:, 0, :].astype(np.float64) + 0.5) * downsample for c in contours if len(c) >= min_points]
