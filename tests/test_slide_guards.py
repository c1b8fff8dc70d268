"""TIFF headers a real slide cannot have are refused before OpenSlide or a decoder trusts them.

pyramid-header-abort.tiff (tile width 553,648,384) made OpenSlide ask GLib for 566 GB and abort
the process; pyramid-header-huge-height.tiff (5,376,919 rows) ended in an OpenCV traceback. Both
are rebuilt here from a small generated pyramid, so the tests run without ../shared/data too.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cellview.base.errors import SlideError
from cellview.slides.guards import check_tiff_geometry
from cellview.slides.opening import open_slide
from cellview.testing.fuzzing import _tiff_entries
from cellview.testing.synthetic import synthetic_slide_rgb, write_pyramid_tiff

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def pyramid(tmp_path) -> Path:
    return write_pyramid_tiff(tmp_path / "p.tiff", synthetic_slide_rgb()[:512, :768], 0.5, levels=3, tile=128)


def _patch_first(path: Path, tag: int, value: int) -> Path:
    """Set the value of the first IFD entry with ``tag`` (as the damaged shared files have)."""
    data = bytearray(path.read_bytes())
    entry = next(e for e in _tiff_entries(bytes(data)) if e[1] == tag)
    offset, _, typ, _, fmt = entry
    order = fmt[0]
    if typ == 3 and value <= 0xFFFF:
        struct.pack_into(order + "H", data, offset + 8, value)
    else:
        struct.pack_into(order + "HI", data, offset + 2, 4, 1)  # LONG, count 1
        struct.pack_into(order + "I", data, offset + 8, value)
    out = path.with_name(f"{path.stem}-{tag}-{value}.tiff")
    out.write_bytes(bytes(data))
    return out


def test_a_plausible_pyramid_passes(pyramid):
    check_tiff_geometry(pyramid)
    with open_slide(pyramid) as slide:
        assert slide.dimensions == (768, 512)


@pytest.mark.parametrize("tag, value, message", [
    (322, 553_648_384, "pixel tiles"),  # TileWidth, as in pyramid-header-abort.tiff
    (257, 5_376_919, "claims 768 × 5376919 pixels"),  # ImageLength, as in pyramid-header-huge-height.tiff
    (257, 600_000, "needs"),  # a plausible height that the file's tiles do not cover
    (256, 0, "claims 0 ×"),  # ImageWidth 0
    (323, 100, "pixel tiles"),  # TileLength not a multiple of 16
    (277, 200, "samples per pixel"),
])
def test_implausible_geometry_is_a_slide_error(pyramid, tag, value, message):
    bad = _patch_first(pyramid, tag, value)
    with pytest.raises(SlideError, match="damaged header") as info:
        check_tiff_geometry(bad)  # on its own: OpenSlide refuses some of these itself, not all
    assert message in str(info.value)
    with pytest.raises(SlideError, match="damaged"):
        open_slide(bad)


def test_blocks_past_the_end_of_the_file_are_refused(pyramid, tmp_path):
    data = pyramid.read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(data[: len(data) - 2000])  # the IFDs are at the start; the last tiles are gone
    with pytest.raises(SlideError):
        open_slide(cut)


def test_the_abort_no_longer_kills_the_process(pyramid, toy_model, tmp_path):
    """Before the check, OpenSlide aborted the interpreter (SIGABRT) reading such a file's level 0."""
    bad = _patch_first(pyramid, 322, 553_648_384)
    argv = ["analyze", str(bad), "--model", str(toy_model), "--out", str(tmp_path / "out"), "-q", "--no-cache"]
    code = f"import sys\nfrom cellview.cli import main\nsys.exit(main({argv!r}))\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "damaged header" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["pyramid-header-abort.tiff", "pyramid-header-huge-height.tiff"])
def test_shared_bad_slides_fail_cleanly(name, data_dir):
    path = data_dir / "slides" / "bad" / name
    if not path.exists():
        pytest.skip(f"{path} is absent")
    with pytest.raises(SlideError, match="damaged header"):
        open_slide(path)


def test_plain_image_that_declares_too_many_pixels_is_refused_before_decoding(tmp_path):
    import zlib

    import cv2

    ok, buf = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(buf.tobytes())
    struct.pack_into(">II", data, 16, 30000, 20000)  # IHDR width, height
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    path = tmp_path / "bomb.png"
    path.write_bytes(bytes(data))
    with pytest.raises(SlideError, match="too large"):
        open_slide(path)


def _dicom(frames: list[bytes], offsets: list[int] | None = None) -> bytes:
    """A minimal encapsulated DICOM file: file meta, then pixel data as an offset table and fragments."""
    def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0"
        return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value

    def item(data: bytes) -> bytes:
        return struct.pack("<HHI", 0xFFFE, 0xE000, len(data)) + data

    meta = element(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.4.50")
    body = element(0x0028, 0x0010, b"US", struct.pack("<H", 16)) + element(0x0028, 0x0011, b"US", struct.pack("<H", 16))
    if offsets is None:
        offsets, pos = [], 0
        for f in frames:
            offsets.append(pos)
            pos += 8 + len(f) + len(f) % 2
    table = item(b"".join(struct.pack("<I", o) for o in offsets))
    pixels = (struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0" + struct.pack("<I", 0xFFFF_FFFF) + table
              + b"".join(item(f + b"\0" * (len(f) % 2)) for f in frames) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return b"\0" * 128 + b"DICM" + meta + body + pixels


@pytest.mark.parametrize("case, message", [
    ("valid", None),
    ("valid-no-table", None),
    ("offset-past-file", "out of order or points past the file"),  # as fuzz mutant 3428 (seed 20264558)
    ("offset-mid-frame", "middle of a frame"),
    ("fragment-past-file", "runs past the end of the file"),
    ("truncated", "past the end"),
])
def test_dicom_structure_check(case, message, tmp_path):
    from cellview.slides.guards import check_dicom_structure

    frames = [b"\xff\xd8" + bytes(range(200)) + b"\xff\xd9", b"\xff\xd8" + bytes(150) + b"\xff\xd9"]
    data = {
        "valid": _dicom(frames),
        "valid-no-table": _dicom(frames, offsets=[]),
        "offset-past-file": _dicom(frames, offsets=[0, 0x2000_0000 + 212]),
        "offset-mid-frame": _dicom(frames, offsets=[0, 100]),
        "fragment-past-file": _dicom(frames, offsets=[])[:-40],
        "truncated": _dicom(frames)[:200],
    }[case]
    if case == "fragment-past-file":
        data = bytearray(_dicom(frames, offsets=[]))
        first = data.index(struct.pack("<HHI", 0xFFFE, 0xE000, 0)) + 8  # the empty offset table, then fragment 1
        struct.pack_into("<I", data, first + 4, 1 << 30)
        data = bytes(data)
    path = tmp_path / f"{case}.dcm"
    path.write_bytes(data)
    if message is None:
        check_dicom_structure(path)
    else:
        with pytest.raises(SlideError, match=message):
            check_dicom_structure(path)


def test_shared_dicom_slide_passes_the_structure_check(data_dir):
    from cellview.slides.guards import check_dicom_structure

    files = sorted((data_dir / "slides" / "derived" / "CMU-1-Small-Region-dicom").glob("*.dcm"))
    if not files:
        pytest.skip("the shared DICOM slide is absent")
    for f in files + sorted((data_dir / "slides" / "fixtures").glob("*.dcm")):
        check_dicom_structure(f)


class _Levels:
    def __init__(self, dims):
        self.path = Path("levels.tiff")
        self.level_dimensions = tuple(dims)

    @property
    def dimensions(self):
        return self.level_dimensions[0]


@pytest.mark.parametrize("dims, ok", [
    ([(2220, 2967), (1110, 1484), (555, 742), (278, 371), (139, 186)], True),  # the shared DICOM slide
    ([(300, 250), (150, 125), (75, 62), (37, 31)], True),
    ([(22000, 16000), (5500, 4000), (1375, 1000)], True),
    ([(65535, 186), (2220, 2967), (1110, 1484)], False),  # fuzz finding: a level claiming 65,535 columns
    ([(768, 512), (300, 256)], False),
    ([(768, 512), (0, 256)], False),
])
def test_pyramid_levels_must_be_one_image(dims, ok):
    from cellview.slides.guards import check_level_geometry

    if ok:
        check_level_geometry(_Levels(dims))
    else:
        with pytest.raises(SlideError, match="damaged header"):
            check_level_geometry(_Levels(dims))
