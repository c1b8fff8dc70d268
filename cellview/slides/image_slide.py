"""The plain-image fallback: a PNG, JPEG, BMP or non-pyramidal TIFF held in memory as a one-level slide.

Also the one decoder for plain images (read_image_rgb), shared by the viewer, the pipeline and
training, and the checks that keep a lying header from making a decoder allocate gigabytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from cellview.base.errors import SlideError
from cellview.slides.slide import Mpp, Slide, composite_on_white, mpp_from_properties

# Plain images are held in memory whole; beyond this they must be pyramidal slides.
_MAX_PLAIN_PIXELS = 400_000_000


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


def load_plain_image(path: Path) -> ImageSlide:
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
