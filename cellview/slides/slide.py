"""Open whole slides (OpenSlide) and plain images (OpenCV) behind one small interface.

Every read returns RGB uint8 with transparent areas composited on white, so the rest of the
code never sees alpha. Pixel size (µm per pixel) is looked up in a documented order and its
source recorded; it is never guessed silently.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cellview.base.errors import MppError, SlideError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
SLIDE_SUFFIXES = {
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide",
    ".bif", ".dcm", ".czi",
}
SUPPORTED_SUFFIXES = IMAGE_SUFFIXES | SLIDE_SUFFIXES

# A pixel size outside this range is a metadata artefact (72 dpi defaults, zeros), not a microscope.
_MPP_PLAUSIBLE_UM = (0.02, 50.0)

# Plain images are held in memory whole; beyond this they must be pyramidal slides.
_MAX_PLAIN_PIXELS = 400_000_000


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
                return self._read_level_scaled(level, (out_w, out_h))
            except SlideError as exc:
                error = exc
        assert error is not None
        raise error

    def _read_level_scaled(self, level: int, out_size: tuple[int, int], chunk_px: int = 4096) -> np.ndarray:
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
        """A new handle on the same file (for another thread, or after a read error).

        The file was checked when this handle opened it: the new one skips the structure checks and the
        level colour check (a DICOM folder's every frame, 0.1–0.2 s) and takes over their verdicts.
        """
        other = open_slide(self.path, check_levels=False, validate=False)
        other.mpp, other.skipped_levels = self.mpp, self.skipped_levels
        return other

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


class ImageSlide(Slide):
    """A plain image (png/jpg/bmp/tif) held in memory as a one-level slide."""

    def __init__(self, path: Path, rgb: np.ndarray, properties: dict[str, str], mpp: Mpp | None) -> None:
        self.path = path
        self._rgb = rgb
        self.properties = properties
        self.vendor = "image"
        h, w = rgb.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.mpp = mpp

    def read_region(self, l0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        if level != 0:
            raise SlideError(f"{self.path.name} has one level; level {level} was asked for.")
        x, y = int(l0_xy[0]), int(l0_xy[1])
        w, h = int(size[0]), int(size[1])
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        ih, iw = self._rgb.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, iw), min(y + h, ih)
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._rgb[y0:y1, x0:x1]
        return out

    def reopen(self) -> Slide:
        # The pixels are immutable in memory: sharing them across threads is safe and saves a decode.
        return self


def _quiet_imdecode(data: np.ndarray) -> np.ndarray | None:
    """cv2.imdecode without libtiff's warnings on stderr (a damaged header says so in the error)."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_ERROR)
    try:
        return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    finally:
        logging.setLogLevel(level)


def read_image_rgb(path: str | os.PathLike[str]) -> np.ndarray | None:
    """A plain image file as RGB uint8, or None when it cannot be decoded.

    The one decoder for plain images, used by the viewer and the pipeline and by training, so a
    model sees its training images and a user's images alike: transparency composited on white,
    16-bit images stretched to 8 bits, grey expanded to RGB, EXIF orientation not applied.
    """
    data = np.fromfile(str(path), dtype=np.uint8)
    if not _png_chunks_plausible(data):  # before OpenCV allocates a chunk's declared length
        return None
    try:
        img = _quiet_imdecode(data) if data.size else None
        if img is None:
            return None
        if img.dtype != np.uint8:
            # 16-bit microscopy images: scale to 8 bits for display and the model.
            img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        if img.ndim == 2:
            return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        if img.shape[2] == 4:
            return composite_on_white(cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA))
        if img.shape[2] < 3:
            return cv2.cvtColor(img[..., 0], cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)
    except (cv2.error, MemoryError, ValueError) as exc:
        # Untrusted bytes: a header claiming absurd sizes makes OpenCV assert instead of failing softly.
        raise SlideError(f"{Path(path).name} cannot be decoded as an image (damaged, or its header is invalid).",
                         f"{type(exc).__name__}: {str(exc).strip()}") from None


def _png_chunks_plausible(data: np.ndarray) -> bool:
    """False for a PNG with a chunk longer than the rest of the file.

    OpenCV's PNG reader allocates a chunk's declared length up front: a 600 KB file claiming a
    4 GiB IDAT chunk costs 4 GiB of memory before it fails. Other formats pass unchecked.
    """
    raw = data.tobytes()
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        return True
    pos = 8
    while pos + 8 <= len(raw):
        length = int.from_bytes(raw[pos:pos + 4], "big")
        if length > len(raw) - pos - 12:
            return False
        if raw[pos + 4:pos + 8] == b"IEND":
            break
        pos += 12 + length
    return True


def _declared_pixels(path: Path) -> int | None:
    """Width × height from the image header (Pillow reads it without decoding), None if unknown."""
    import re
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we apply our own limit
            with Image.open(path) as im:
                return int(im.size[0]) * int(im.size[1])
    except Image.DecompressionBombError as exc:  # over twice Pillow's limit; its message has the size
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return int(found.group(1)) if found else _MAX_PLAIN_PIXELS + 1
    except Exception:  # noqa: BLE001 - Pillow may not know the format; the decoder decides
        return None


def _load_plain_image(path: Path) -> ImageSlide:
    declared = _declared_pixels(path)
    if declared is not None and declared > _MAX_PLAIN_PIXELS:  # before a decoder allocates it
        raise SlideError(f"{path.name} is too large to open as a plain image ({declared:,} pixels); "
                         "save it as a pyramidal TIFF.")
    rgb = read_image_rgb(path)
    if rgb is None:
        raise SlideError(
            f"{path.name} is not a readable slide or image (unknown or corrupt format).",
            "neither OpenSlide nor the image decoder recognised it",
        )
    if rgb.shape[0] * rgb.shape[1] > _MAX_PLAIN_PIXELS:
        raise SlideError(f"{path.name} is too large to open as a plain image; save it as a pyramidal TIFF.")
    props, mpp = _plain_image_metadata(path)
    return ImageSlide(path, np.ascontiguousarray(rgb), props, mpp)


def _plain_image_metadata(path: Path) -> tuple[dict[str, str], Mpp | None]:
    """Resolution tags of TIFF/PNG/JPEG files; only plausible microscope values count."""
    props: dict[str, str] = {}
    try:
        from PIL import Image

        with Image.open(path) as im:
            dpi = im.info.get("dpi")
            res = im.info.get("resolution")
            unit = None
            if hasattr(im, "tag_v2"):
                tags = im.tag_v2
                if 282 in tags and 283 in tags:
                    res = (float(tags[282]), float(tags[283]))
                    unit = {1: "none", 2: "inch", 3: "centimeter"}.get(int(tags.get(296, 2)), "none")
            if res and unit:
                props["tiff.XResolution"], props["tiff.YResolution"] = str(res[0]), str(res[1])
                props["tiff.ResolutionUnit"] = unit
            elif dpi:
                props["tiff.XResolution"], props["tiff.YResolution"] = str(float(dpi[0])), str(float(dpi[1]))
                props["tiff.ResolutionUnit"] = "inch"
    except Exception:  # noqa: BLE001 - metadata is optional; pixels were already decoded
        pass
    return props, mpp_from_properties(props)


# ----------------------------------------------------------------------------- pyramid level check

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


def _container_kind(path: Path) -> str:
    """'tiff' or 'dicom' from the file's magic bytes, else ''; tells 'damaged' from 'unknown'."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return ""
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[128:132] == b"DICM":
        return "dicom"
    return ""


# TIFF geometry a real slide can have. Beyond these, OpenSlide/libtiff may try to allocate
# absurd buffers (and GLib aborts the process when that fails), so such files are refused.
_TIFF_MAX_SIDE_PX = 1 << 20          # 1,048,576 px: about 26 cm at 0.25 µm/px
_TIFF_MAX_TILE_PX = 16384            # tiles are 240–2048 px in practice; the spec wants multiples of 16
_TIFF_MAX_STRIP_BYTES = 1 << 30      # one strip (label, macro, thumbnail images) at most 1 GiB decoded
_TIFF_MAX_SAMPLES = 8


def check_tiff_geometry(path: str | os.PathLike[str]) -> None:
    """Refuse a TIFF whose tile or strip geometry no real slide has, before OpenSlide decodes it.

    Reads only the tags (tifffile, no pixel decoding): image and tile sizes, samples, the number
    of tile/strip offsets against the grid they must cover, and that every block lies inside the
    file. OpenSlide trusts these values and a damaged header can make it allocate hundreds of GB,
    which aborts the whole process; a SlideError here keeps the damage to this one slide.
    """
    import logging

    import tifffile

    path = Path(path)
    name = path.name
    damaged = f"{name} is a TIFF file with a damaged header"
    tf_log = logging.getLogger("tifffile")
    level = tf_log.level
    tf_log.setLevel(logging.CRITICAL)  # it logs every odd tag; the SlideError says what matters
    try:
        file_size = path.stat().st_size
        with tifffile.TiffFile(path) as tif:
            for n, page in enumerate(tif.pages):
                _check_tiff_page(page, n, file_size, damaged)
    except SlideError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types on damaged files
        raise SlideError(f"{damaged}: its image directory cannot be parsed.", f"tifffile: {exc}") from exc
    finally:
        tf_log.setLevel(level)


def _check_tiff_page(page: Any, n: int, file_size: int, damaged: str) -> None:
    where = f"image {n}"
    if not hasattr(page, "imagewidth"):  # a frame of another page (tifffile's TiffFrame)
        return
    w, h = int(page.imagewidth), int(page.imagelength)
    depth = int(getattr(page, "imagedepth", 1) or 1)
    spp = int(page.samplesperpixel)
    if not (0 < w <= _TIFF_MAX_SIDE_PX and 0 < h <= _TIFF_MAX_SIDE_PX):
        raise SlideError(f"{damaged}: {where} claims {w} × {h} pixels.", "implausible ImageWidth/ImageLength")
    if depth != 1:
        raise SlideError(f"{damaged}: {where} claims a depth of {depth} (a slide level is 2-D).", "ImageDepth")
    if not 1 <= spp <= _TIFF_MAX_SAMPLES:
        raise SlideError(f"{damaged}: {where} claims {spp} samples per pixel.", "SamplesPerPixel")
    planes = spp if int(page.planarconfig) == 2 else 1
    bytes_px = max(1, spp * max(int(b) for b in np.atleast_1d(page.bitspersample)) // 8) // planes
    if page.is_tiled:
        tw, th = int(page.tilewidth), int(page.tilelength)
        if not (16 <= tw <= _TIFF_MAX_TILE_PX and 16 <= th <= _TIFF_MAX_TILE_PX and tw % 16 == 0 and th % 16 == 0):
            raise SlideError(f"{damaged}: {where} claims {tw} × {th} pixel tiles.", "TileWidth/TileLength")
        expected = -(-w // tw) * -(-h // th) * planes
    else:
        rows = int(page.rowsperstrip or h)
        rows = min(rows, h) if rows > 0 else h
        if w * rows * bytes_px > _TIFF_MAX_STRIP_BYTES:
            raise SlideError(f"{damaged}: {where} has {w} × {rows} pixel strips.", "RowsPerStrip")
        expected = -(-h // rows) * planes
    offsets = np.asarray(page.dataoffsets, dtype=np.int64)
    counts = np.asarray(page.databytecounts, dtype=np.int64)
    if len(offsets) != expected or len(counts) != expected:
        raise SlideError(
            f"{damaged}: {where} has {len(offsets)} {'tiles' if page.is_tiled else 'strips'} where its size "
            f"needs {expected}.", "TileOffsets/StripOffsets count does not match the image geometry",
        )
    present = counts > 0  # sparse pyramids (Philips, some converters) leave empty tiles at 0
    if (counts < 0).any() or (offsets[present] < 0).any() or (offsets[present] + counts[present] > file_size).any():
        raise SlideError(f"{damaged}: {where} points past the end of the file (truncated?).",
                         "TileOffsets/StripOffsets + byte counts beyond the file size")


_DICOM_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFF_FFFF
_IMPLICIT_VR_LE = "1.2.840.10008.1.2"
_DICOM_MAX_ELEMENTS = 1_000_000


class _DicomWalker:
    """Just enough of DICOM's encoding (Part 5) to find and check the encapsulated pixel data."""

    def __init__(self, fh: Any, size: int, damaged: str) -> None:
        self.fh, self.size, self.damaged = fh, size, damaged
        self.count = 0

    def read(self, pos: int, n: int) -> bytes:
        if pos < 0 or pos + n > self.size:
            raise SlideError(f"{self.damaged}: an element runs past the end of the file (truncated?).",
                             f"offset {pos} + {n} > {self.size}")
        self.fh.seek(pos)
        return self.fh.read(n)

    def header(self, pos: int, explicit: bool) -> tuple[int, int, bytes, int, int]:
        """(group, element, VR, value length, header size) of the element at ``pos``."""
        self.count += 1
        if self.count > _DICOM_MAX_ELEMENTS:
            raise SlideError(f"{self.damaged}: it has more than {_DICOM_MAX_ELEMENTS:,} elements.")
        head = self.read(pos, 8)
        group, elem = int.from_bytes(head[0:2], "little"), int.from_bytes(head[2:4], "little")
        if group == 0xFFFE or not explicit:  # items and delimiters never have a VR
            return group, elem, b"", int.from_bytes(head[4:8], "little"), 8
        vr = head[4:6]
        if vr in _DICOM_LONG_VRS:
            return group, elem, vr, int.from_bytes(self.read(pos + 8, 4), "little"), 12
        return group, elem, vr, int.from_bytes(head[6:8], "little"), 8

    def skip_sequence(self, pos: int, explicit: bool) -> int:
        """Position after a sequence of undefined length that starts at ``pos``."""
        while True:
            group, elem, _, length, hsize = self.header(pos, explicit)
            pos += hsize
            if (group, elem) == (0xFFFE, 0xE0DD):
                return pos
            if (group, elem) != (0xFFFE, 0xE000):
                raise SlideError(f"{self.damaged}: a sequence holds something that is not an item.",
                                 f"({group:04X},{elem:04X}) at {pos - hsize}")
            if length != _UNDEFINED:
                pos += length
                continue
            while True:  # an item of undefined length: its elements, up to the item delimiter
                group, elem, _, length, hsize = self.header(pos, explicit)
                if (group, elem) == (0xFFFE, 0xE00D):
                    pos += hsize
                    break
                pos = self.skip_element(pos, explicit)

    def skip_element(self, pos: int, explicit: bool) -> int:
        group, elem, vr, length, hsize = self.header(pos, explicit)
        if length == _UNDEFINED:
            return self.skip_sequence(pos + hsize, explicit)
        if pos + hsize + length > self.size:
            raise SlideError(f"{self.damaged}: element ({group:04X},{elem:04X}) runs past the end of the file.",
                             f"length {length} at {pos}")
        return pos + hsize + length


def check_dicom_structure(path: str | os.PathLike[str]) -> None:
    """Refuse a DICOM file whose elements or pixel-data fragments point outside the file.

    Walks the elements (headers only), then the encapsulated pixel data: the basic offset table
    must point at the frames' items, and every item must lie inside the file. OpenSlide's DICOM
    reader trusts these offsets; damaged ones crashed it (segfault) in the fuzzing run.
    """
    path = Path(path)
    damaged = f"{path.name} is a DICOM file with a damaged structure"
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            walker = _DicomWalker(fh, size, damaged)
            pos, implicit_dataset = 132, False
            while pos + 8 <= size:
                # The file meta group (0002) is always explicit VR; the data set follows its transfer syntax.
                explicit = int.from_bytes(walker.read(pos, 2), "little") == 0x0002 or not implicit_dataset
                group, elem, _, length, hsize = walker.header(pos, explicit)
                if (group, elem) == (0x0002, 0x0010) and length != _UNDEFINED:
                    syntax = walker.read(pos + hsize, min(length, 64)).rstrip(b"\0 ").decode("ascii", "replace")
                    implicit_dataset = syntax == _IMPLICIT_VR_LE
                if (group, elem) == (0x7FE0, 0x0010):
                    if length == _UNDEFINED:
                        _check_fragments(walker, pos + hsize)
                    elif pos + hsize + length > size:
                        raise SlideError(f"{damaged}: its pixel data runs past the end of the file (truncated?).")
                    return
                pos = walker.skip_element(pos, explicit)
    except OSError as exc:
        raise SlideError(f"Cannot read {path.name}.", str(exc)) from exc


def _check_fragments(walker: _DicomWalker, pos: int) -> None:
    """Encapsulated pixel data at ``pos``: the offset table, then every fragment item."""
    damaged = walker.damaged
    group, elem, _, bot_len, hsize = walker.header(pos, False)
    if (group, elem) != (0xFFFE, 0xE000) or bot_len == _UNDEFINED or bot_len % 4:
        raise SlideError(f"{damaged}: its pixel data does not start with an offset table.")
    bot = np.frombuffer(walker.read(pos + hsize, bot_len), dtype="<u4").astype(np.int64)
    first = pos + hsize + bot_len  # offsets count from the first fragment's item tag
    if len(bot):
        if bot[0] != 0 or (np.diff(bot) <= 0).any() or first + bot[-1] + 8 > walker.size:
            raise SlideError(f"{damaged}: its frame offset table is out of order or points past the file.")
        for off in bot:
            g, e, _, length, _ = walker.header(int(first + off), False)
            if (g, e) != (0xFFFE, 0xE000) or first + off + 8 + length > walker.size:
                raise SlideError(f"{damaged}: its frame offset table points into the middle of a frame.",
                                 f"offset {int(off)}")
        return
    pos = first
    while True:  # no offset table: the fragments must chain up to the sequence delimiter
        g, e, _, length, hsize = walker.header(pos, False)
        if (g, e) == (0xFFFE, 0xE0DD):
            return
        if (g, e) != (0xFFFE, 0xE000) or length == _UNDEFINED or pos + hsize + length > walker.size:
            raise SlideError(f"{damaged}: a pixel-data fragment is damaged or runs past the end of the file.")
        pos += hsize + length


def check_level_geometry(slide: Slide) -> None:
    """Refuse a pyramid whose levels are not one image at several scales.

    Every level must have level 0's aspect ratio (a few pixels of rounding aside). A damaged
    header can make a small level claim 65,535 columns; OpenSlide then takes it for level 0 and a
    run cuts tens of thousands of tiles out of pixels that do not exist (found by fuzzing).
    """
    w0, h0 = slide.dimensions
    if w0 <= 0 or h0 <= 0:
        raise SlideError(f"{slide.path.name} has a damaged header: level 0 is {w0} × {h0} pixels.")
    for level, (w, h) in enumerate(slide.level_dimensions[1:], start=1):
        if w <= 0 or h <= 0:
            raise SlideError(f"{slide.path.name} has a damaged header: level {level} is {w} × {h} pixels.")
        ds_x, ds_y = w0 / w, h0 / h
        # Expected size of this level at the other axis's downsample; levels round to whole pixels.
        if abs(w - w0 / ds_y) > 2 + 0.05 * w or abs(h - h0 / ds_x) > 2 + 0.05 * h:
            raise SlideError(
                f"{slide.path.name} has a damaged header: level {level} is {w} × {h} pixels, which is not "
                f"level 0 ({w0} × {h0}) at a smaller scale.",
                f"downsample x {ds_x:.4g}, y {ds_y:.4g}",
            )


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
        kind = _container_kind(path)
        damaged = SlideError(
            f"{path.name} is a {kind.upper()} file but its contents cannot be read: it is probably "
            "truncated (an incomplete copy or download) or damaged.",
            f"OpenSlide: {osr_error}" if osr_error else "",
        )
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if kind == "tiff":  # the image decoder trusts the header as much as OpenSlide does
                check_tiff_geometry(path)
            try:
                slide = _load_plain_image(path)
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
            kind = _container_kind(path)
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
