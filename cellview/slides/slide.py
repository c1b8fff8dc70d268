"""What a slide is, whatever reads it: the small abstract Slide, its pixel size (Mpp), what results record
about it (SlideInfo, SkippedLevel) and what it is called.

Every read returns RGB uint8 with transparent areas composited on white, so the rest of the
code never sees alpha. Pixel size (µm per pixel) is looked up in a documented order and its
source recorded; it is never guessed silently. The readers live beside it (opening: OpenSlide and
``open_slide``; image_slide: the plain-image fallback), as do the pyramid level checks (levels) and the
structural checks of untrusted files (guards).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cellview.base.errors import MppError, SlideError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
SLIDE_SUFFIXES = {
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide",
    ".bif", ".dcm", ".czi",
}
SUPPORTED_SUFFIXES = IMAGE_SUFFIXES | SLIDE_SUFFIXES

# A pixel size outside this range is a metadata artefact (72 dpi defaults, zeros), not a microscope.
_MPP_PLAUSIBLE_UM = (0.02, 50.0)


def slide_stem(path: Path) -> str:
    """A slide's name without suffix; a DICOM slide is a folder of UID-named files, so its folder's."""
    path = Path(path)
    return path.parent.name if path.suffix.lower() == ".dcm" else path.stem


def slide_display_name(path: Path) -> str:
    """What a person calls the slide: the file name, or the DICOM folder's name."""
    path = Path(path)
    return path.parent.name if path.suffix.lower() == ".dcm" else path.name


@dataclass(frozen=True)
class Mpp:
    """Microns per pixel at level 0 and where the value came from."""

    x_um: float
    y_um: float
    source: str  # "openslide", "tiff-resolution", "objective-power", "user"
    approximate: bool = False

    @property
    def um(self) -> float:
        return (self.x_um + self.y_um) / 2.0

    def describe(self) -> str:
        text = f"{self.um:.4g} µm/px from {self.source}"
        return text + " (approximate)" if self.approximate else text


def _plausible(mpp: float) -> bool:
    return _MPP_PLAUSIBLE_UM[0] <= mpp <= _MPP_PLAUSIBLE_UM[1]


def _resolution_to_mpp(resolution: float, unit: str) -> float | None:
    unit = unit.lower()
    per_um = {"centimeter": 1e4, "cm": 1e4, "inch": 25400.0, "in": 25400.0, "millimeter": 1e3, "micrometer": 1.0}
    if resolution <= 0 or unit not in per_um:
        return None
    value = per_um[unit] / resolution
    return value if _plausible(value) else None


def mpp_from_properties(props: dict[str, str]) -> Mpp | None:
    """OpenSlide's mpp, then TIFF resolution tags, then objective power (approximate)."""
    try:
        x, y = float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"])
        if _plausible(x) and _plausible(y):
            return Mpp(x, y, "openslide")
    except (KeyError, ValueError):
        pass
    try:
        unit = props.get("tiff.ResolutionUnit", "")
        x = _resolution_to_mpp(float(props["tiff.XResolution"]), unit)
        y = _resolution_to_mpp(float(props["tiff.YResolution"]), unit)
        if x and y:
            return Mpp(x, y, "tiff-resolution")
    except (KeyError, ValueError):
        pass
    try:
        power = float(props["openslide.objective-power"])
        if power > 0:
            # 10 µm/px at 1x is the usual scanner convention (20x ≈ 0.5 µm/px); a rule, not a measurement.
            return Mpp(10.0 / power, 10.0 / power, "objective-power", approximate=True)
    except (KeyError, ValueError):
        pass
    return None


@dataclass(frozen=True)
class SkippedLevel:
    """A pyramid level CellView never reads, and why (said by `cellview info`, the viewer, the metadata)."""

    level: int
    reason: str


@dataclass(frozen=True)
class SlideInfo:
    """What `cellview info` prints and what results record about the slide."""

    path: str
    name: str
    vendor: str
    fingerprint: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: Mpp | None
    skipped_levels: tuple[SkippedLevel, ...] = ()

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def usable_levels(self) -> tuple[int, ...]:
        skipped = {s.level for s in self.skipped_levels}
        return tuple(i for i in range(len(self.level_dimensions)) if i not in skipped)


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Straight-alpha RGBA → RGB on white (openslide-python un-premultiplies already)."""
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.uint16)
    rgb = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return rgb.astype(np.uint8)


class Slide:
    """A readable slide: pyramid levels, properties, mpp and RGB reads in level-0 coordinates.

    Not thread-safe by contract: each thread opens its own handle (``reopen()``).
    """

    path: Path
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, str]
    mpp: Mpp | None
    skipped_levels: tuple[SkippedLevel, ...] = ()  # set by open_slide's level check; never read

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def is_skipped(self, level: int) -> bool:
        return any(s.level == level for s in self.skipped_levels)

    @property
    def name(self) -> str:
        return slide_stem(self.path)

    def best_level_for_downsample(self, downsample: float) -> int:
        """Highest usable level whose downsample does not exceed ``downsample`` (1% slack for rounding).

        Skipped levels (wrong colours, unreadable) are passed over: the nearest good finer level is used.
        """
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * 1.01 and not self.is_skipped(level):
                best = level
        return best

    def read_region(self, l0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    def tile_cache(self, capacity_bytes: int) -> Any:
        """A cache of decoded tiles that other handles on this file can share (``use_tile_cache``), now used by
        this one; None when the reader has no such cache."""
        return None

    def use_tile_cache(self, cache: Any) -> None:  # noqa: B027 - optional hook
        """Decode into ``cache`` (from ``tile_cache``), shared with the handles of other threads."""

    def thumbnail(self, max_px: int) -> np.ndarray:
        """Whole slide as RGB with its longer side at most ``max_px``, from a suitable level.

        Falls back to finer levels when a coarse level is unreadable (seen on DICOM conversions
        with malformed edge tiles), reading in chunks so memory stays bounded.
        """
        w0, h0 = self.dimensions
        ds = max(1.0, max(w0, h0) / max_px)
        out_w, out_h = max(1, round(w0 / ds)), max(1, round(h0 / ds))
        first = self.best_level_for_downsample(ds)
        error: SlideError | None = None
        for level in range(first, -1, -1):
            if self.is_skipped(level):
                continue
            try:
                return self.read_level_scaled(level, (out_w, out_h))
            except SlideError as exc:
                error = exc
        assert error is not None
        raise error

    def read_level_scaled(self, level: int, out_size: tuple[int, int], chunk_px: int = 4096) -> np.ndarray:
        """A whole level shrunk to ``out_size``, read in chunks; two threads (each its own handle) share the chunks
        when there are several, so tissue detection on a large slide does not leave a core idle."""
        lw, lh = self.level_dimensions[level]
        out_w, out_h = out_size
        if (lw, lh) == (out_w, out_h):
            return self.read_region((0, 0), level, (lw, lh))
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        ds = self.level_downsamples[level]
        sx, sy = out_w / lw, out_h / lh
        chunks = []
        for cy in range(0, lh, chunk_px):
            for cx in range(0, lw, chunk_px):
                cw, ch = min(chunk_px, lw - cx), min(chunk_px, lh - cy)
                ox0, oy0 = round(cx * sx), round(cy * sy)
                ox1, oy1 = round((cx + cw) * sx), round((cy + ch) * sy)
                if ox1 > ox0 and oy1 > oy0:
                    chunks.append((cx, cy, cw, ch, ox0, oy0, ox1, oy1))
        lock = threading.Lock()

        def work(slide: Slide) -> None:
            while True:
                with lock:
                    if not chunks:
                        return
                    cx, cy, cw, ch, ox0, oy0, ox1, oy1 = chunks.pop()
                img = slide.read_region((round(cx * ds), round(cy * ds)), level, (cw, ch))
                out[oy0:oy1, ox0:ox1] = cv2.resize(img, (ox1 - ox0, oy1 - oy0), interpolation=cv2.INTER_AREA)

        if len(chunks) < 2 or (os.cpu_count() or 1) < 2:
            work(self)
            return out
        errors: list[BaseException] = []

        def helper() -> None:
            try:
                other = self.reopen()
            except Exception:  # noqa: BLE001 - no second handle: the calling thread reads every chunk
                return
            try:
                work(other)
            except BaseException as exc:  # noqa: BLE001 - raised again in the calling thread
                errors.append(exc)
            finally:
                if other is not self:
                    other.close()

        thread = threading.Thread(target=helper, name="cellview-level-reader", daemon=True)
        thread.start()
        try:
            work(self)
        finally:
            thread.join()
        if errors:
            raise errors[0]
        return out

    def with_mpp(self, mpp_um: float | None) -> None:
        """Apply a user-given mpp; it wins over the file's metadata."""
        if mpp_um is not None:
            if not _plausible(mpp_um):
                raise MppError(f"--mpp {mpp_um} is not a plausible microscope pixel size (0.02–50 µm).")
            self.mpp = Mpp(float(mpp_um), float(mpp_um), "user")

    def require_mpp(self) -> Mpp:
        if self.mpp is None:
            raise MppError(f"{self.path.name} does not say how many µm a pixel is, so tiles cannot be cut at the "
                           "model's scale.")
        return self.mpp

    def fingerprint(self) -> str:
        return file_fingerprint(self.path)

    def info(self) -> SlideInfo:
        return SlideInfo(
            path=str(self.path),
            name=self.name,
            vendor=self.vendor,
            fingerprint=self.fingerprint(),
            level_dimensions=self.level_dimensions,
            level_downsamples=self.level_downsamples,
            mpp=self.mpp,
            skipped_levels=self.skipped_levels,
        )

    def reopen(self) -> Slide:
        """A new handle on the same file (for another thread, or after a read error); each reader says how."""
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_fingerprints: dict[tuple[str, int, int], str] = {}
_fp_lock = threading.Lock()


def file_fingerprint(path: Path) -> str:
    """Content hash of size + first and last MiB (cheap on multi-GB slides, stable across copies).

    For a DICOM slide (one folder of files) every .dcm file of the folder contributes.
    """
    path = Path(path)
    files = sorted(path.parent.glob("*.dcm")) if path.suffix.lower() == ".dcm" else [path]
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = (str(path), sum(s[1] for s in stats), max(s[2] for s in stats))
    with _fp_lock:
        if key in _fingerprints:
            return _fingerprints[key]
    digest = hashlib.sha256()
    for f, size, _ in stats:
        digest.update(str(size).encode())
        with open(f, "rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                digest.update(fh.read(1 << 20))
    value = digest.hexdigest()[:32]
    with _fp_lock:
        _fingerprints[key] = value
    return value
