"""The pyramid level check (cellview.slides.levels): levels whose colours disagree with level 0 are never read."""

from __future__ import annotations

import numpy as np
import pytest

from cellview.slides.opening import open_slide


@pytest.fixture(scope="module")
def false_colour_slide(tmp_path_factory):
    """The synthetic slide with its reduced levels stored as YCbCr labelled RGB (like the DICOM copy)."""
    from cellview.testing.synthetic import synthetic_slide_rgb, write_pyramid_tiff, ycbcr_as_rgb

    return write_pyramid_tiff(tmp_path_factory.mktemp("falsecol") / "false.tiff", synthetic_slide_rgb(), 0.5,
                              damage=ycbcr_as_rgb)


def test_wrong_colour_levels_are_skipped_and_never_read(false_colour_slide, synthetic_slide):
    from cellview.slides.opening import describe

    with open_slide(false_colour_slide) as slide, open_slide(synthetic_slide) as sound:
        assert [s.level for s in slide.skipped_levels] == [1, 2, 3] and sound.skipped_levels == ()
        assert all("colours differ from level 0" in s.reason for s in slide.skipped_levels)
        assert slide.best_level_for_downsample(2.0) == 0 and sound.best_level_for_downsample(2.0) == 1
        # a read at a skipped level comes from level 0: the right colours, at the asked size
        region = slide.read_region((256, 256), 1, (64, 64))
        want = sound.read_region((256, 256), 1, (64, 64))
        assert region.shape == (64, 64, 3) and np.abs(region.astype(int) - want).mean() < 3
        assert np.abs(slide.thumbnail(256).astype(int) - sound.thumbnail(256)).mean() < 3
        assert slide.info().skipped_levels == slide.skipped_levels
        text = describe(slide)
        assert "level 1: 1024 × 768  downsample 2  SKIPPED: colours differ" in text
        assert "levels 1–3 skipped, never read" in text


def test_check_of_a_slide_with_false_colour_levels_is_cheap_and_shared(false_colour_slide):
    from cellview.slides.levels import checked_levels

    with open_slide(false_colour_slide) as a:
        b = a.reopen()
        assert b.skipped_levels == a.skipped_levels and checked_levels(b) is checked_levels(a)  # checked once
        b.close()
    with open_slide(false_colour_slide, check_levels=False) as raw:
        assert raw.skipped_levels == () and raw.best_level_for_downsample(2.0) == 1


def test_reopen_for_a_reader_thread_does_not_walk_the_file_again(false_colour_slide, monkeypatch):
    import cellview.slides.opening as opening_module

    walks = []
    walk = opening_module.check_tiff_geometry
    monkeypatch.setattr(opening_module, "check_tiff_geometry", lambda path: walks.append(path) or walk(path))
    with open_slide(false_colour_slide) as a:
        assert len(walks) == 1
        b = a.reopen()
        assert len(walks) == 1  # checked when first opened; the verdicts travel with the handle
        assert b.skipped_levels == a.skipped_levels and b.mpp == a.mpp
        assert np.array_equal(b.read_region((256, 256), 1, (64, 64)), a.read_region((256, 256), 1, (64, 64)))
        b.close()


def test_real_dicom_levels_in_false_colour_are_skipped(data_dir):
    with open_slide(data_dir / "slides" / "derived" / "CMU-1-Small-Region-dicom") as dicom:
        assert [s.level for s in dicom.skipped_levels] == [1, 2, 3, 4]
    with open_slide(data_dir / "slides" / "derived" / "CMU-1-Small-Region-pyramid.tiff") as tiff:
        assert tiff.skipped_levels == ()


def test_skipped_levels_give_their_reason_once():
    """Issue 19: four levels whose ΔE differed by one repeated the whole sentence."""
    from cellview.slides.levels import describe_skipped
    from cellview.slides.slide import SkippedLevel

    why = "colours differ from level 0 (ΔE {}; e.g. YCbCr frames labelled RGB)"
    skipped = tuple(SkippedLevel(level, why.format(de)) for level, de in ((1, 38), (2, 38), (3, 37), (4, 37)))
    text = describe_skipped(skipped)
    assert text == "levels 1–4 skipped: colours differ from level 0 (ΔE 37–38; e.g. YCbCr frames labelled RGB)"
    assert text.count("colours differ") == 1
    mixed = (SkippedLevel(1, why.format(40)), SkippedLevel(3, "its pixels cannot be read"))
    assert describe_skipped(mixed) == ("levels 1, 3 skipped: colours differ from level 0 (ΔE 40; e.g. YCbCr frames "
                                       "labelled RGB); its pixels cannot be read")
