"""Opening slides and images: levels, mpp and its source, RGB reads, and clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cellview.base.errors import MppError, SlideError
from cellview.slides.opening import open_slide
from cellview.slides.slide import composite_on_white, mpp_from_properties

REAL = {
    # relative path: (dimensions, level count, mpp, vendor)
    "CMU-1-Small-Region.svs": ((2220, 2967), 1, 0.499, "aperio"),
    "derived/CMU-1-Small-Region-pyramid.tiff": ((2220, 2967), 4, 0.499, "generic-tiff"),
    "derived/CMU-1-Small-Region-dicom": ((2220, 2967), 5, 0.499, "dicom"),
}


@pytest.mark.parametrize("rel", sorted(REAL))
def test_real_slides_open_with_right_geometry(data_dir, rel):
    dims, levels, mpp, vendor = REAL[rel]
    with open_slide(data_dir / "slides" / rel) as slide:
        assert slide.dimensions == dims
        assert slide.level_count == levels
        assert slide.vendor == vendor
        assert slide.mpp is not None and slide.mpp.um == pytest.approx(mpp, abs=1e-4)
        assert slide.mpp.source == "openslide" and not slide.mpp.approximate
        region = slide.read_region((1000, 1000), 0, (64, 48))
        assert region.shape == (48, 64, 3) and region.dtype == np.uint8
        thumb = slide.thumbnail(256)
        assert max(thumb.shape[:2]) == 256
        assert 120 < thumb.mean() < 250  # tissue on a light background, not black or blank


def test_same_pixels_in_all_three_copies(data_dir):
    """SVS, pyramid TIFF and DICOM hold the same slide: their level-0 reads agree (JPEG noise aside)."""
    reads = []
    for rel in REAL:
        with open_slide(data_dir / "slides" / rel) as slide:
            reads.append(slide.read_region((800, 1200), 0, (128, 128)).astype(np.int16))
    for other in reads[1:]:
        assert np.abs(reads[0] - other).mean() < 8


def test_dicom_with_unreadable_coarse_level_still_gives_a_thumbnail(data_dir):
    # This DICOM conversion has malformed edge tiles on its coarser levels; the thumbnail falls back.
    with open_slide(data_dir / "slides" / "derived" / "CMU-1-Small-Region-dicom") as slide:
        thumb = slide.thumbnail(300)
        assert thumb.shape[0] == 300
        assert slide.read_region((0, 0), 0, (16, 16)).shape == (16, 16, 3)


def test_region_outside_slide_is_white(synthetic_slide):
    with open_slide(synthetic_slide) as slide:
        w, h = slide.dimensions
        region = slide.read_region((w - 10, h - 10), 0, (20, 20))
        assert (region[12:, 12:] == 255).all()


def test_composite_on_white():
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)
    rgba[0, 1] = (0, 0, 0, 0)
    rgba[0, 2] = (0, 0, 0, 128)
    rgb = composite_on_white(rgba)
    assert rgb[0, 0].tolist() == [255, 0, 0]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert rgb[0, 2].tolist() == [127, 127, 127]


def test_mpp_sources_in_order():
    assert mpp_from_properties({"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.25"}).source == "openslide"
    tiff = mpp_from_properties({"tiff.XResolution": "40000", "tiff.YResolution": "40000", "tiff.ResolutionUnit": "centimeter"})
    assert tiff.source == "tiff-resolution" and tiff.um == pytest.approx(0.25)
    # 72 dpi is a screen default, not a microscope: ignored, not trusted
    assert mpp_from_properties({"tiff.XResolution": "72", "tiff.YResolution": "72", "tiff.ResolutionUnit": "inch"}) is None
    power = mpp_from_properties({"openslide.objective-power": "40"})
    assert power.source == "objective-power" and power.approximate and power.um == pytest.approx(0.25)
    assert mpp_from_properties({}) is None


def test_plain_images(tmp_path):
    rgb = np.zeros((50, 80, 3), np.uint8)
    rgb[..., 0] = 200
    for suffix in (".png", ".jpg", ".bmp", ".tif"):
        path = tmp_path / f"cells{suffix}"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        with open_slide(path) as slide:
            assert slide.dimensions == (80, 50)
            assert slide.vendor == "image"
            assert slide.mpp is None
            assert abs(int(slide.read_region((0, 0), 0, (10, 10))[0, 0, 0]) - 200) < 4


def test_plain_tiff_with_microscope_resolution(tmp_path):
    import tifffile

    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, np.full((40, 40, 3), 100, np.uint8), photometric="rgb",
                     resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    with open_slide(path) as slide:
        assert slide.mpp is not None and slide.mpp.um == pytest.approx(0.25) and slide.mpp.source == "tiff-resolution"


def test_user_mpp_wins_and_is_recorded(synthetic_slide):
    with open_slide(synthetic_slide, mpp_um=0.3) as slide:
        assert slide.mpp.um == 0.3 and slide.mpp.source == "user"


def test_missing_mpp_says_what_is_missing_and_each_front_end_says_how_to_give_it(tmp_path):
    # issue 19: the core's message carries no command-line advice (the kiosk showed "pass --mpp")
    path = tmp_path / "cells.png"
    cv2.imwrite(str(path), np.zeros((10, 10, 3), np.uint8))
    with open_slide(path) as slide, pytest.raises(MppError, match="does not say how many µm a pixel is") as caught:
        slide.require_mpp()
    assert "--" not in caught.value.message
    assert caught.value.advise("Pass it with --mpp.").message.endswith("model's scale. Pass it with --mpp.")


def test_implausible_user_mpp_rejected(synthetic_slide):
    with pytest.raises(MppError):
        open_slide(synthetic_slide, mpp_um=500)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.svs", b"", "empty"),
        ("random.svs", bytes(range(256)) * 20, "not a slide format"),
        ("notes.tiff", b"this is a text file\n" * 10, "not a readable slide or image"),
        ("cut.svs", b"II*\x00" + b"\x08\x00\x00\x00" + b"\x00" * 100, "truncated"),
    ],
)
def test_bad_files_give_specific_errors(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SlideError, match=match):
        open_slide(path)


def test_missing_file_and_plain_folder(tmp_path):
    with pytest.raises(SlideError, match="does not exist"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(SlideError, match="is a folder"):
        open_slide(tmp_path)


def test_truncated_real_svs(real_slide, tmp_path):
    data = real_slide.read_bytes()
    for frac in (0.05, 0.5, 0.95):
        path = tmp_path / f"cut{frac}.svs"
        path.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(SlideError, match="truncated"):
            open_slide(path)


@pytest.mark.parametrize(
    ("name", "dims", "vendor", "has_mpp"),
    [("small.svs", (16, 16), "aperio", True), ("boxes.tiff", (300, 250), "generic-tiff", False),
     ("boxes_0.dcm", (16, 16), "dicom", True)],
)
def test_openslide_fixtures(data_dir, name, dims, vendor, has_mpp):
    with open_slide(data_dir / "slides" / "fixtures" / name) as slide:
        assert slide.dimensions == dims and slide.vendor == vendor
        assert (slide.mpp is not None) == has_mpp
        assert slide.thumbnail(64).ndim == 3


def test_training_and_inference_decode_plain_images_alike(tmp_path):
    """One decoder: alpha on white, 16-bit stretched, grey expanded — for the viewer and for training."""
    pytest.importorskip("torch", reason="training extra not installed")
    from cellview.slides.image_slide import read_image_rgb
    from cellview.slides.opening import open_slide
    from cellview.train.data import read_rgb

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half transparent
    cv2.imwrite(str(tmp_path / "alpha.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    for name in ("alpha.png", "deep.png"):
        path = tmp_path / name
        train = read_rgb(str(path))
        assert train.dtype == np.uint8 and train.shape == (8, 8, 3)
        assert np.array_equal(train, read_image_rgb(path))
        with open_slide(path) as slide:
            assert np.array_equal(slide.read_region((0, 0), 0, (8, 8)), train)
    alpha = read_rgb(str(tmp_path / "alpha.png"))
    assert (alpha[:4] == (200, 0, 0)).all() and (alpha[4:] == 255).all()
    deep_rgb = read_rgb(str(tmp_path / "deep.png"))
    assert deep_rgb.min() == 0 and deep_rgb.max() == 255


# ----------------------------------------------------------------------------- untrusted bytes


def test_header_claiming_a_huge_image_is_a_slide_error(tmp_path):
    from cellview.slides.image_slide import read_image_rgb
    from cellview.testing.synthetic import tiff_claiming_size

    sound = tmp_path / "sound.tiff"
    sound.write_bytes(tiff_claiming_size(8, 8))
    assert read_image_rgb(sound).shape == (8, 8, 3)
    bad = tmp_path / "huge.tiff"
    bad.write_bytes(tiff_claiming_size(8, 3_000_000))
    with pytest.raises(SlideError, match="cannot be decoded as an image") as err:
        read_image_rgb(bad)
    assert "validateInputImageSize" in err.value.details  # OpenCV's assertion, as a detail only
    # open_slide refuses it from its tags (check_tiff_geometry) before the decoder is tried.
    with pytest.raises(SlideError, match="huge.tiff is a TIFF file with a damaged header"):
        open_slide(bad)


def test_real_mutated_pyramid_header_is_a_slide_error(data_dir):
    with pytest.raises(SlideError, match="pyramid-header-huge-height.tiff"):
        open_slide(data_dir / "slides" / "bad" / "pyramid-header-huge-height.tiff")


# ----------------------------------------------------------------------------- direct JPEG-tile reads


def _reads_agree_with_openslide(slide, rng: np.random.Generator, n_per_level: int = 12) -> int:
    """Random regions (inside, across edges, outside) read directly and by OpenSlide; returns reads compared."""
    assert slide._direct_reader() is not None
    w0, h0 = slide.dimensions
    compared = 0
    for level in range(slide.level_count):
        ds = int(slide.level_downsamples[level])
        for _ in range(n_per_level):
            x = int(rng.integers(-300, w0)) // ds * ds
            y = int(rng.integers(-300, h0)) // ds * ds
            size = (int(rng.integers(1, 500)), int(rng.integers(1, 500)))
            direct = slide.read_region((x, y), level, size)
            reader, slide._direct = slide._direct, None
            try:
                via_openslide = slide.read_region((x, y), level, size)
            finally:
                slide._direct = reader
            assert np.array_equal(direct, via_openslide), (level, x, y, size)
            compared += 1
    return compared


def test_direct_jpeg_tile_reads_equal_openslide_reads(tmp_path):
    """Tiled JPEG TIFF (the YCbCr pyramids scanners and converters write): every level read without OpenSlide,
    pixel for pixel what OpenSlide gives, white outside the slide."""
    from cellview.testing.synthetic import synthetic_he, synthetic_he_amounts, write_pyramid_tiff

    rgb = synthetic_he(synthetic_he_amounts(1000), np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]]))[:, :900]
    path = write_pyramid_tiff(tmp_path / "jpeg.tiff", rgb, 0.5, levels=3, compression="jpeg")
    with open_slide(path) as slide:
        assert _reads_agree_with_openslide(slide, np.random.default_rng(0)) == 36
        assert sorted(slide._direct.pages) == [0, 1, 2]
        assert (slide.read_region((-50, -50), 0, (40, 40)) == 255).all()


def test_direct_reads_of_the_real_svs_equal_openslide_reads(data_dir):
    with open_slide(data_dir / "slides" / "CMU-1-Small-Region.svs") as slide:  # Aperio, JPEG tiles with tables
        assert _reads_agree_with_openslide(slide, np.random.default_rng(1), 20) > 0


def test_slides_without_jpeg_tiles_are_read_by_openslide(synthetic_slide):
    with open_slide(synthetic_slide) as slide:  # zlib-compressed tiles
        assert slide._direct_reader() is None
        assert slide.read_region((0, 0), 0, (8, 8)).shape == (8, 8, 3)
