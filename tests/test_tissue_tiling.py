"""Tissue mask and tile grid geometry."""

from __future__ import annotations

import numpy as np
import pytest

from cellview.errors import AnalysisError, MppError
from cellview.slide import ImageSlide, Mpp, open_slide
from cellview.testing import SYNTH_BLOCKS, SYNTH_TILE, expected_synthetic_tiles
from cellview.tiling import build_grid, read_tile
from cellview.tissue import TissueParams, detect_tissue, tissue_mask_from_rgb


def _image_slide(rgb, mpp=0.5):
    from pathlib import Path

    return ImageSlide(Path("mem.png"), rgb, {}, Mpp(mpp, mpp, "user") if mpp else None)


def test_blank_slide_has_no_tissue():
    mask, _ = tissue_mask_from_rgb(np.full((200, 200, 3), 240, np.uint8), 4.0, TissueParams())
    assert not mask.any()


def test_tissue_found_and_small_specks_dropped():
    rgb = np.full((300, 300, 3), 240, np.uint8)
    rgb[50:250, 50:250] = (200, 80, 150)   # a 800 µm tissue square at 4 µm/px
    rgb[10:12, 280:282] = (200, 80, 150)   # an 8 µm speck of dust
    mask, thr = tissue_mask_from_rgb(rgb, 4.0, TissueParams())
    assert mask[60:240, 60:240].all()
    assert not mask[5:15, 275:290].any()
    assert TissueParams().min_threshold <= thr <= TissueParams().max_threshold


@pytest.mark.parametrize("method", ["saturation", "od"])
def test_methods_agree_on_synthetic(synthetic_slide, method):
    with open_slide(synthetic_slide) as slide:
        mask = detect_tissue(slide, TissueParams(method=method), mpp_um=0.5)
    r0, r1, c0, c1 = SYNTH_BLOCKS["benign"]
    ys = int((r0 + r1) / 2 * SYNTH_TILE / mask.downsample)
    xs = int((c0 + c1) / 2 * SYNTH_TILE / mask.downsample)
    assert mask.mask[ys, xs]
    assert not mask.mask[2, 2]


def test_grid_uses_model_spacing_and_best_level(synthetic_slide):
    with open_slide(synthetic_slide) as slide:
        tissue = detect_tissue(slide, mpp_um=0.5)
        grid = build_grid(slide, tile_px=64, model_mpp_um=1.0, tissue=tissue)
    assert grid.tile_l0_w == 128            # 64 px × 1.0 µm / 0.5 µm
    assert grid.read_level == 1 and grid.read_w == 64  # read at level 1, no resampling
    assert (grid.n_cols, grid.n_rows) == (16, 12)
    cells = {(int(r), int(c)) for r, c in zip(grid.grid_row, grid.grid_col)}
    assert cells == set(expected_synthetic_tiles())


def test_grid_resizes_when_no_level_matches():
    slide = _image_slide(np.full((1000, 1000, 3), (200, 50, 60), np.uint8), mpp=0.25)
    grid = build_grid(slide, tile_px=100, model_mpp_um=0.5, tissue=None)
    assert grid.tile_l0_w == 200 and grid.read_level == 0 and grid.read_w == 200
    tile = read_tile(slide, grid, 0)
    assert tile.shape == (100, 100, 3)


def test_edge_tiles_are_padded_to_full_size():
    slide = _image_slide(np.full((250, 330, 3), (200, 50, 60), np.uint8))
    grid = build_grid(slide, tile_px=100, model_mpp_um=0.5, tissue=None)
    assert (grid.n_cols, grid.n_rows) == (4, 3)
    last = grid.n_tiles - 1
    tile = read_tile(slide, grid, last)
    assert tile.shape == (100, 100, 3)
    assert (tile[60:, :] == 255).all() and (tile[:, 40:] == 255).all()  # beyond the image: white
    assert tile[0, 0].tolist() == [200, 50, 60]


def test_overlap_halves_the_stride():
    slide = _image_slide(np.full((400, 400, 3), (200, 50, 60), np.uint8))
    grid = build_grid(slide, tile_px=100, model_mpp_um=0.5, tissue=None, overlap=0.5)
    assert grid.stride_l0_x == 50 and grid.n_cols == 7
    with pytest.raises(AnalysisError):
        build_grid(slide, tile_px=100, model_mpp_um=0.5, tissue=None, overlap=0.95)


def test_tile_lookup_by_point(synthetic_slide):
    with open_slide(synthetic_slide) as slide:
        grid = build_grid(slide, tile_px=64, model_mpp_um=1.0, tissue=detect_tissue(slide, mpp_um=0.5))
    r0, _, c0, _ = SYNTH_BLOCKS["malignant"]
    i = grid.tile_at(c0 * 128 + 5, r0 * 128 + 5)
    assert (int(grid.grid_row[i]), int(grid.grid_col[i])) == (r0, c0)
    assert grid.tile_at(3, 3) == -1          # background
    assert grid.tile_at(10**6, 10) == -1     # outside


def test_whole_image_is_one_tile():
    slide = _image_slide(np.full((300, 500, 3), (200, 50, 60), np.uint8), mpp=None)
    grid = build_grid(slide, tile_px=64, model_mpp_um=None, tissue=None, whole_image=True)
    assert grid.n_tiles == 1 and grid.whole_image
    assert (grid.tile_l0_w, grid.tile_l0_h) == (500, 300)
    assert read_tile(slide, grid, 0).shape == (64, 64, 3)


def test_tiling_without_mpp_fails_clearly():
    slide = _image_slide(np.zeros((100, 100, 3), np.uint8), mpp=None)
    with pytest.raises(MppError, match="--mpp"):
        build_grid(slide, tile_px=64, model_mpp_um=0.5, tissue=None)
