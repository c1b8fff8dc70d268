"""The pyramid level check: reduced levels whose colours disagree with level 0 are never read.

Some converters (a DICOM copy of CMU-1 among them) write YCbCr frames labelled RGB in the reduced
levels only; reading them would give a model false colours. This module finds such levels once per
file, says why in one line, and reads a skipped level's regions from the nearest good finer level.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import cv2
import numpy as np

from cellview.base.errors import SlideError
from cellview.slides.slide import SkippedLevel, Slide

LEVEL_MAX_DELTA_E = 10.0
"""Largest mean CIELAB difference (ΔE) between a reduced level and level 0 that is trusted.

Measured: the sound levels of CMU-1's pyramid TIFF differ by ΔE ≤ 0.7 and those of OpenSlide's
tiny boxes.tiff fixture by ≤ 4 (JPEG noise, resampling); the DICOM copy's YCbCr-labelled-RGB
levels by ΔE ≥ 28. A level above this is never read.
"""

LEVEL_CHECK_SAMPLES = ((0.5, 0.5), (0.3, 0.3), (0.7, 0.7), (0.3, 0.7), (0.7, 0.3))
"""Where the compared regions lie, as fractions of the level's extent (spread over the slide)."""

LEVEL_CHECK_REF_PX = 512
"""Side of each compared region in level-0 pixels (bounded, so the check costs the same on any slide).

A level coarser than 256× (under 2 px per region) is not checked: no reader picks it for tiles."""

_level_checks: dict[tuple[str, int, int], tuple[SkippedLevel, ...]] = {}
_level_lock = threading.Lock()


def _block_lab(rgb: np.ndarray, blocks: int = 4) -> np.ndarray:
    """(blocks, blocks, 3) CIELAB means of an RGB image: colour statistics that ignore fine detail."""
    small = cv2.resize(rgb, (blocks, blocks), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def colour_difference(rgb: np.ndarray, reference: np.ndarray) -> float:
    """Mean ΔE (CIELAB) between 4 × 4 block means of two RGB views of the same area."""
    return float(np.linalg.norm(_block_lab(rgb) - _block_lab(reference), axis=2).mean())


def check_levels(slide: Slide) -> tuple[SkippedLevel, ...]:
    """Compare every reduced level with level 0 on a few sampled regions; return those not to read.

    Cheap and bounded on any slide: ``len(LEVEL_CHECK_SAMPLES)`` level-0 reads of
    ``LEVEL_CHECK_REF_PX``² pixels, shared by all levels, plus one small read per level and sample.
    A level is skipped when its colours disagree with level 0 (median ΔE over the samples above
    ``LEVEL_MAX_DELTA_E``), or when none of its sampled regions can be read.
    """
    if slide.level_count < 2:
        return ()
    w0, h0 = slide.dimensions
    ref_px = int(min(LEVEL_CHECK_REF_PX, w0, h0))
    references: list[tuple[tuple[int, int], np.ndarray]] = []
    for fx, fy in LEVEL_CHECK_SAMPLES:
        l0_xy = (int((w0 - ref_px) * fx), int((h0 - ref_px) * fy))
        try:
            references.append((l0_xy, slide.read_region(l0_xy, 0, (ref_px, ref_px))))
        except SlideError:
            continue  # level 0 unreadable here: no evidence either way
    skipped: list[SkippedLevel] = []
    for level in range(1, slide.level_count):
        side = max(1, round(ref_px / slide.level_downsamples[level]))
        if side < 2:
            continue
        deltas: list[float] = []
        unreadable = 0
        for l0_xy, reference in references:
            try:
                low = slide.read_region(l0_xy, level, (side, side))
            except SlideError:
                unreadable += 1
                continue
            deltas.append(colour_difference(low, cv2.resize(reference, (side, side), interpolation=cv2.INTER_AREA)))
        if deltas and float(np.median(deltas)) > LEVEL_MAX_DELTA_E:
            skipped.append(SkippedLevel(level, f"colours differ from level 0 (ΔE {float(np.median(deltas)):.0f}; "
                                               "e.g. YCbCr frames labelled RGB)"))
        elif not deltas and unreadable:
            skipped.append(SkippedLevel(level, "its pixels cannot be read"))
    return tuple(skipped)


def _file_key(path: Path) -> tuple[str, int, int]:
    files = sorted(path.parent.glob("*.dcm")) if path.suffix.lower() == ".dcm" else [path]
    stats = [f.stat() for f in files]
    return str(path), sum(st.st_size for st in stats), max(st.st_mtime_ns for st in stats)


def checked_levels(slide: Slide) -> tuple[SkippedLevel, ...]:
    """``check_levels`` once per file version (every thread's handle and every reopen share the answer)."""
    try:
        key = _file_key(slide.path)
    except OSError:
        return check_levels(slide)
    with _level_lock:
        if key in _level_checks:
            return _level_checks[key]
    found = check_levels(slide)
    with _level_lock:
        _level_checks[key] = found
    return found


def describe_skipped(skipped: tuple[SkippedLevel, ...], reasons: bool = True) -> str:
    """'levels 1–4 skipped: colours differ…' in one line ('' when nothing is skipped)."""
    if not skipped:
        return ""
    levels = [s.level for s in skipped]
    if len(levels) > 2 and levels == list(range(levels[0], levels[-1] + 1)):
        which = f"levels {levels[0]}–{levels[-1]}"
    else:
        which = ("level " if len(levels) == 1 else "levels ") + ", ".join(map(str, levels))
    if not reasons:
        return f"{which} skipped"
    # one reason per kind: "colours differ from level 0 (ΔE 37–38; …)", not the sentence once per level
    kinds: dict[str, list[float]] = {}
    for s in skipped:
        kinds.setdefault(_DELTA_E.sub("ΔE #", s.reason), []).extend(float(v) for v in _DELTA_E.findall(s.reason))
    parts = []
    for kind, values in kinds.items():
        lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
        parts.append(kind.replace("ΔE #", f"ΔE {lo:g}" if lo == hi else f"ΔE {lo:g}–{hi:g}") if values else kind)
    return f"{which} skipped: {'; '.join(parts)}"


_DELTA_E = re.compile(r"ΔE (\d+(?:\.\d+)?)")


_FINER_BAND_PX = 16_000_000
"""Pixels of the finer level read at once when a skipped level is read through it (bounds memory)."""


def read_from_finer_level(slide: Slide, l0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
    """A region of a skipped level, made from the nearest usable finer level (read in bands)."""
    finer = max(i for i in range(level) if not slide.is_skipped(i) or i == 0)
    w, h = int(size[0]), int(size[1])
    ds_f = slide.level_downsamples[finer]
    k = slide.level_downsamples[level] / ds_f
    fw = max(1, round(w * k))
    out = np.empty((h, w, 3), np.uint8)
    band = max(1, int(_FINER_BAND_PX // max(1.0, fw * k)))
    for r0 in range(0, h, band):
        r1 = min(h, r0 + band)
        fy0 = round(r0 * k)
        fy1 = max(fy0 + 1, round(r1 * k))
        region = slide.read_region((int(l0_xy[0]), int(l0_xy[1]) + round(fy0 * ds_f)), finer, (fw, fy1 - fy0))
        out[r0:r1] = cv2.resize(region, (w, r1 - r0), interpolation=cv2.INTER_AREA)
    return out
