"""Structural checks of untrusted slide files, before any decoder trusts their headers.

OpenSlide and libtiff trust a file's offsets and sizes; damaged ones made them allocate hundreds of
GB (GLib then aborts the process) or crash outright in the fuzzing run. These checks read headers
only and turn such files into a SlideError for that one slide: TIFF tile/strip geometry, the DICOM
element walk and its pixel-data fragments, and a pyramid whose levels are not one image at several
scales.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellview.base.errors import SlideError

if TYPE_CHECKING:
    from cellview.slides.slide import Slide


def container_kind(path: Path) -> str:
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
