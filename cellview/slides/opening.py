"""Opening a path as a Slide: OpenSlide first, the plain-image fallback second (as openslide-python's
``open_slide``), with the structural and level checks in between; and the summary ``cellview info`` prints.

OpenSlideSlide lives here, not beside the abstract Slide, because reopening one (a handle per
thread) is opening the file again: keeping the reader and ``open_slide`` together keeps the
slides package free of import cycles.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cellview.base.errors import SlideError
from cellview.slides.guards import check_dicom_structure, check_level_geometry, check_tiff_geometry, container_kind
from cellview.slides.image_slide import load_plain_image
from cellview.slides.levels import checked_levels, describe_skipped, read_from_finer_level
from cellview.slides.slide import IMAGE_SUFFIXES, Slide, composite_on_white, mpp_from_properties

log = logging.getLogger(__name__)


class OpenSlideSlide(Slide):
    def __init__(self, path: Path, osr: Any) -> None:
        self.path = path
        self._osr = osr
        self.properties = dict(osr.properties)
        self.vendor = self.properties.get("openslide.vendor", "unknown")
        self.level_dimensions = tuple((int(w), int(h)) for w, h in osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in osr.level_downsamples)
        self.mpp = mpp_from_properties(self.properties)

    def tile_cache(self, capacity_bytes: int) -> Any:
        import openslide

        make = getattr(openslide, "OpenSlideCache", None)  # openslide-python ≥ 1.3 with OpenSlide ≥ 4.0
        if make is None:
            return None
        try:
            cache = make(int(capacity_bytes))
        except openslide.OpenSlideError:
            return None
        self.use_tile_cache(cache)
        return cache

    def use_tile_cache(self, cache: Any) -> None:
        if cache is None:
            return
        self._cache = cache
        try:
            self._osr.set_cache(cache)
        except Exception:  # noqa: BLE001 - the handle keeps its own cache
            pass

    def read_region(self, l0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        import openslide

        if self.skipped_levels and self.is_skipped(level):
            return read_from_finer_level(self, l0_xy, level, size)
        x, y, w, h = int(l0_xy[0]), int(l0_xy[1]), int(size[0]), int(size[1])
        if w > 0 and h > 0:
            direct = self._direct_reader()
            ds = self.level_downsamples[level] if 0 <= level < len(self.level_downsamples) else 0.0
            if direct is not None and ds > 0 and (x / ds).is_integer() and (y / ds).is_integer():
                try:
                    got = direct.read(int(level), int(x / ds), int(y / ds), w, h)
                except Exception as exc:  # noqa: BLE001 - OpenSlide reads it (or says why it cannot)
                    log.debug("direct read of %s failed (%s); reading with OpenSlide", self.path.name, exc)
                    got = None
                if got is not None:
                    return got
        try:
            if _fast_read is not None and w > 0 and h > 0:
                return _fast_read(self._osr, x, y, int(level), w, h)
            img = self._osr.read_region((x, y), int(level), (w, h))
        except openslide.OpenSlideError as exc:
            # OpenSlide handles are unusable after an error: discard this one, keep the object usable.
            self._replace_handle()
            raise SlideError(f"Reading {self.path.name} failed at {l0_xy} (level {level}).", str(exc)) from exc
        return composite_on_white(np.asarray(img))

    def _replace_handle(self) -> None:
        import openslide

        try:
            self._osr.close()
        except Exception:  # noqa: BLE001 - the handle is being thrown away
            pass
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except Exception:  # noqa: BLE001 - the next read raises a SlideError of its own
            return
        self.use_tile_cache(getattr(self, "_cache", None))

    def associated_image(self, name: str) -> np.ndarray | None:
        """A label, macro or thumbnail image stored with the slide; None when absent or undecodable."""
        try:
            img = self._osr.associated_images.get(name)
            return None if img is None else composite_on_white(np.asarray(img.convert("RGBA")))
        except Exception:  # noqa: BLE001 - untrusted bytes: a broken extra image only costs that image
            return None

    def _direct_reader(self) -> Any:
        """The direct JPEG-tile reader for this file (cellview.slides.direct_tiff), made on first use; None if none."""
        direct = getattr(self, "_direct", False)
        if direct is False:
            from cellview.slides.direct_tiff import DirectTiff

            direct = self._direct = DirectTiff.open(self.path, self.vendor, self.level_dimensions)
        return direct

    def reopen(self) -> Slide:
        """A new handle on the same file (for another thread, or after a read error).

        The file was checked when this handle opened it: the new one skips the structure checks and the
        level colour check (a DICOM folder's every frame, 0.1–0.2 s) and takes over their verdicts.
        """
        other = open_slide(self.path, check_levels=False, validate=False)
        other.mpp, other.skipped_levels = self.mpp, self.skipped_levels
        return other

    def close(self) -> None:
        direct = getattr(self, "_direct", None)
        if direct:
            direct.close()

        self._osr.close()


def _make_fast_read() -> Any:
    """Read straight into a NumPy buffer, skipping PIL's copy and un-premultiply (~20% of a read).

    OpenSlide writes premultiplied ARGB; on white that is simply ``c + (255 - a)``. Falls back
    to the public API if openslide-python's low-level names ever change.
    """
    import ctypes
    import sys

    try:
        from openslide import lowlevel
    except ImportError:
        return None
    raw = getattr(lowlevel, "_read_region", None)
    if raw is None or sys.byteorder != "little":
        return None
    pointer = ctypes.POINTER(ctypes.c_uint32)

    def read(osr: Any, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        buf = np.empty((h, w, 4), dtype=np.uint8)  # B, G, R, A in memory (little-endian ARGB)
        raw(osr._osr, buf.ctypes.data_as(pointer), x, y, level, w, h)
        alpha = buf[..., 3]
        if alpha.min() == 255:
            return cv2.cvtColor(buf, cv2.COLOR_BGRA2RGB)  # SIMD: 25× faster than a strided NumPy copy
        return buf[..., 2::-1] + (255 - alpha)[..., None]

    return read


_fast_read = _make_fast_read()


def open_slide(path: str | os.PathLike[str], mpp_um: float | None = None, check_levels: bool = True,
               validate: bool = True) -> Slide:
    """Open a slide or plain image; every failure becomes a SlideError with a plain message.

    Reduced pyramid levels are checked against level 0 (``check_levels``); those that disagree
    are recorded in ``slide.skipped_levels`` and never read. ``validate`` (off only for ``reopen`` of a
    file already opened) walks the container's structure and test-reads the pixels before any decoder
    trusts the header.
    """
    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path} does not exist.")
    if path.is_dir():
        dcm = sorted(path.glob("*.dcm"))
        if not dcm:
            raise SlideError(f"{path} is a folder, not a slide (a DICOM slide folder must hold .dcm files).")
        path = dcm[0]
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SlideError(f"Cannot read {path}.", str(exc)) from exc
    if size == 0:
        raise SlideError(f"{path.name} is empty (0 bytes).")
    if not os.access(path, os.R_OK):
        raise SlideError(f"{path.name} cannot be read (permission denied).")

    import openslide

    slide: Slide | None = None
    osr_error = ""
    try:
        osr = openslide.OpenSlide(str(path))
        slide = OpenSlideSlide(path, osr)
    except openslide.OpenSlideUnsupportedFormatError as exc:
        osr_error = str(exc) or "unsupported format"
    except openslide.OpenSlideError as exc:
        # Recognised by OpenSlide but broken (truncated, bad tiles): do not try to decode it otherwise.
        raise SlideError(f"{path.name} looks like a slide but is damaged or truncated.", str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - OpenSlide raises plain exceptions on some inputs
        osr_error = str(exc)
    if slide is None:
        kind = container_kind(path)
        damaged = SlideError(
            f"{path.name} is a {kind.upper()} file but its contents cannot be read: it is probably "
            "truncated (an incomplete copy or download) or damaged.",
            f"OpenSlide: {osr_error}" if osr_error else "",
        )
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if kind == "tiff":  # the image decoder trusts the header as much as OpenSlide does
                check_tiff_geometry(path)
            try:
                slide = load_plain_image(path)
            except SlideError:
                if kind:
                    raise damaged from None
                raise
        elif kind:
            raise damaged
        else:
            raise SlideError(
                f"{path.name} is not a slide format CellView can read.",
                f"OpenSlide: {osr_error}" if osr_error else "",
            )
    elif validate:
        try:
            kind = container_kind(path)
            if kind == "tiff":
                check_tiff_geometry(path)
            elif kind == "dicom":  # OpenSlide reads every file of the slide's folder
                for f in sorted(path.parent.glob("*.dcm")):
                    check_dicom_structure(f)
            check_level_geometry(slide)
        except SlideError:
            slide.close()
            raise
        try:  # Truncated files often open but fail on the first real read: find out now.
            lw, lh = slide.level_dimensions[-1]
            slide.read_region((0, 0), slide.level_count - 1, (min(lw, 64), min(lh, 64)))
        except SlideError as exc:
            slide.close()
            raise SlideError(f"{path.name} opens but its pixels cannot be read (damaged or truncated).",
                             exc.details) from exc
    if check_levels and slide.level_count > 1 and isinstance(slide, OpenSlideSlide):
        slide.skipped_levels = checked_levels(slide)
    slide.with_mpp(mpp_um)
    return slide


def describe(slide: Slide) -> str:
    """Human-readable summary for `cellview info`."""
    lines = [
        f"file:      {slide.path}",
        f"vendor:    {slide.vendor}",
        f"size:      {slide.dimensions[0]} × {slide.dimensions[1]} px (level 0)",
        f"mpp:       {slide.mpp.describe() if slide.mpp else 'unknown (cellview analyze --mpp UM gives it)'}",
        f"levels:    {slide.level_count}",
    ]
    skipped = {s.level: s.reason for s in slide.skipped_levels}
    for i, ((w, h), ds) in enumerate(zip(slide.level_dimensions, slide.level_downsamples)):
        note = f"  SKIPPED: {skipped[i]}" if i in skipped else ""
        lines.append(f"  level {i}: {w} × {h}  downsample {ds:.4g}{note}")
    if skipped:
        lines.append(f"skipped:   {describe_skipped(slide.skipped_levels, reasons=False)}, never read: "
                     "reads use the nearest good finer level")
    if slide.mpp:
        w_mm = slide.dimensions[0] * slide.mpp.x_um / 1000
        h_mm = slide.dimensions[1] * slide.mpp.y_um / 1000
        lines.append(f"extent:    {w_mm:.2f} × {h_mm:.2f} mm")
    lines.append(f"fingerprint: {slide.fingerprint()}")
    return "\n".join(lines)
