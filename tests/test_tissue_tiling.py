"""Tissue mask and tile grid geometry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellview.analysis.tiling import SLIVER_FRACTION, axis_positions, build_grid, read_tile
from cellview.analysis.tissue import TissueParams, detect_tissue, tissue_mask_from_rgb
from cellview.base.errors import AnalysisError, MppError
from cellview.slides.image_slide import ImageSlide
from cellview.slides.opening import open_slide
from cellview.slides.slide import Mpp
from cellview.testing.synthetic import SYNTH_BLOCKS, SYNTH_TILE, expected_synthetic_tiles


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


def test_edge_tiles_lie_inside_the_slide():
    """The last column and row are shifted inward: no white padding, no coordinate past the slide."""
    img = np.full((250, 330, 3), (200, 50, 60), np.uint8)
    img[:, 300:] = (20, 200, 40)  # a strip at the right edge that must be covered
    slide = _image_slide(img)
    grid = build_grid(slide, tile_px=100, model_mpp_um=0.5, tissue=None)
    assert (grid.n_cols, grid.n_rows) == (4, 3)
    assert sorted(set(grid.l0_x.tolist())) == [0, 100, 200, 230]  # min(k·100, 330 − 100)
    assert sorted(set(grid.l0_y.tolist())) == [0, 100, 150]
    for i in range(grid.n_tiles):
        x, y, w, h = grid.rect(i)
        assert 0 <= x and 0 <= y and x + w <= 330 and y + h <= 250 and (w, h) == (100, 100)
        tile = read_tile(slide, grid, i)
        assert tile.shape == (100, 100, 3) and not (tile == 255).all(axis=2).any()  # never padding
    last = read_tile(slide, grid, grid.n_tiles - 1)
    assert (last[:, 70:] == (20, 200, 40)).all()  # the right-edge strip is in the last column


def test_every_slide_pixel_lies_in_the_tile_of_its_cell():
    slide = _image_slide(np.full((522, 775, 3), (200, 50, 60), np.uint8), mpp=0.62)  # a GlaS image
    grid = build_grid(slide, tile_px=224, model_mpp_um=1.0, tissue=None)  # colon-he: 361 px tiles
    assert grid.tile_l0_w == 361 and grid.n_tiles == 6
    assert sorted(set(grid.l0_x.tolist())) == [0, 361, 414] and sorted(set(grid.l0_y.tolist())) == [0, 161]
    ys, xs = np.mgrid[0:522:7, 0:775:7]
    for x, y in zip(xs.ravel(), ys.ravel()):
        i = grid.tile_at(x, y)
        tx, ty, tw, th = grid.rect(i)
        assert tx <= x < tx + tw and ty <= y < ty + th
    assert grid.tile_at(775, 10) == -1 and grid.tile_at(10, 522) == -1  # past the slide: no tile


def test_slide_smaller_than_a_tile_reports_its_rect_inside_the_slide():
    slide = _image_slide(np.full((60, 80, 3), (200, 50, 60), np.uint8))
    grid = build_grid(slide, tile_px=100, model_mpp_um=0.5, tissue=None)
    assert grid.n_tiles == 1 and grid.rect(0) == (0, 0, 80, 60)
    tile = read_tile(slide, grid, 0)
    assert (tile[70:, :] == 255).all()  # the only case with padding: nothing else to read


@settings(max_examples=300, deadline=None)
@given(extent=st.integers(1, 5000), tile=st.integers(1, 600), overlap=st.sampled_from([0.0, 0.25, 0.5]))
def test_axis_rule_covers_the_axis_from_inside(extent, tile, overlap):
    stride = max(1, int(round(tile * (1 - overlap))))
    xs = axis_positions(extent, tile, stride)
    assert xs[0] == 0 and (np.diff(xs) > 0).all()
    if extent >= tile:
        # the last tile reaches the slide's edge, or stops short of it by less than a sliver (issue 19)
        margin = extent - (xs[-1] + tile)
        assert (xs + tile <= extent).all() and 0 <= margin < SLIVER_FRACTION * stride
    else:
        assert len(xs) == 1
    # every point belongs to one cell min(floor(x / stride), n − 1) and lies in its tile, except the
    # points of a sliver past the last tile, which belong to the last cell; every cell owns a point
    points = np.arange(extent)
    cell = np.minimum(points // stride, len(xs) - 1)
    assert ((xs[cell] <= points) & (points < xs[cell] + tile) | (points >= xs[-1] + tile)).all()
    assert (len(xs) - 1) * stride < extent
    if len(xs) > 1:  # no sliver cell: the last one is at least SLIVER_FRACTION of a stride wide
        assert extent - (len(xs) - 1) * stride >= SLIVER_FRACTION * stride


def test_a_sliver_past_the_last_column_is_no_column_of_its_own():
    # 451 px at 224-px tiles: the old rule made a third column whose cell was 3 px wide yet counted as a tile
    slide = _image_slide(np.full((224, 451, 3), (200, 50, 60), np.uint8))
    grid = build_grid(slide, tile_px=224, model_mpp_um=0.5, tissue=None)
    assert grid.n_cols == 2 and grid.n_tiles == 2 and sorted(grid.l0_x.tolist()) == [0, 224]
    assert all(grid.tile_at(x, 100) == 1 for x in (224, 447, 448, 450))  # the sliver belongs to the last cell
    assert grid.cell_edges_l0(np.array([1, 2]), "x").tolist() == [224, 451]
    assert grid.tile_at(451, 100) == -1


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
    with pytest.raises(MppError, match="does not say how many µm a pixel is"):
        build_grid(slide, tile_px=64, model_mpp_um=0.5, tissue=None)


def test_read_order_visits_every_tile_once_in_stripes_top_to_bottom(synthetic_slide):
    from cellview.analysis.tiling import read_order

    with open_slide(synthetic_slide) as slide:
        grid = build_grid(slide, 64, 1.0, None)
    order = read_order(grid, stripe_px=3 * grid.read_w)  # stripes of 3 tile columns
    assert sorted(order.tolist()) == list(range(grid.n_tiles))
    stripe = grid.grid_col[order] // 3
    assert (np.diff(stripe) >= 0).all()  # one stripe after the other
    for s in np.unique(stripe):
        rows = grid.grid_row[order][stripe == s]
        assert (np.diff(rows) >= 0).all()  # each stripe read top to bottom
    assert np.array_equal(read_order(grid, stripe_px=10**9), np.arange(grid.n_tiles))  # one stripe: grid order


def _chroma_420(level, img):
    """What a JPEG pyramid stores for a reduced level: colour (Cr, Cb) at half its resolution."""
    import cv2

    if level == 0:
        return img
    ycc = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb)
    h, w = img.shape[:2]
    for c in (1, 2):
        small = cv2.resize(ycc[..., c], (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
        ycc[..., c] = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)


def test_one_slide_gives_one_grid_whatever_its_pyramid(tmp_path):
    """The SVS of CMU-1 (one level) gave 28 tiles, its pyramid-TIFF copy 27: the mask came from the copy's 8×
    level, whose colour is stored at half resolution, so pale tissue edges lose saturation. Here pale blocks end
    18–39 % into a tile column; the one-level file and the pyramid must keep the same tiles."""
    from cellview.analysis.pipeline import plan_grid
    from cellview.analysis.results import AnalysisParams
    from cellview.testing.synthetic import TOY_COLORS, write_pyramid_tiff

    tile = 128
    rgb = np.full((16 * tile, 40 * tile, 3), 245, np.uint8)
    rgb[2 * tile:6 * tile, 2 * tile:8 * tile] = TOY_COLORS["normal"]
    for k, frac in enumerate(np.arange(0.18, 0.40, 0.03)):
        c0 = (1 + 5 * k) * tile
        rgb[8 * tile:14 * tile, c0:c0 + 2 * tile + int(frac * tile)] = (232, 190, 214)  # pale pink tissue
    flat = write_pyramid_tiff(tmp_path / "flat.tiff", rgb, 0.5, levels=1)
    pyramid = write_pyramid_tiff(tmp_path / "pyramid.tiff", rgb, 0.5, levels=5, damage=_chroma_420)
    grids = {}
    for path in (flat, pyramid):
        with open_slide(path) as slide:
            _, grids[path.stem] = plan_grid(slide, 64, 1.0, AnalysisParams())
    a, b = grids["flat"], grids["pyramid"]
    assert a.n_tiles == 124
    assert (a.n_cols, a.n_rows, a.n_tiles) == (b.n_cols, b.n_rows, b.n_tiles)
    assert set(zip(a.grid_row.tolist(), a.grid_col.tolist())) == set(zip(b.grid_row.tolist(), b.grid_col.tolist()))
    np.testing.assert_allclose(a.tissue_fraction, b.tissue_fraction, atol=0.02)


def test_the_svs_the_pyramid_tiff_and_the_dicom_copy_of_cmu1_give_one_grid(data_dir):
    from cellview.analysis.pipeline import plan_grid
    from cellview.analysis.results import AnalysisParams

    slides = data_dir / "slides"
    copies = [slides / "CMU-1-Small-Region.svs", slides / "derived" / "CMU-1-Small-Region-pyramid.tiff",
              slides / "derived" / "CMU-1-Small-Region-dicom"]
    cells = []
    for path in copies:
        with open_slide(path) as slide:
            _, grid = plan_grid(slide, 224, 0.8, AnalysisParams())
            cells.append(sorted(zip(grid.grid_row.tolist(), grid.grid_col.tolist(), grid.l0_x.tolist(),
                                    grid.l0_y.tolist())))
    assert len(cells[0]) == 28
    assert cells[0] == cells[1] == cells[2]
