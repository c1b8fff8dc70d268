"""Nuclei per tile (synthetic discs, touching discs, the real slide) and malignant regions."""

from __future__ import annotations

import csv
import io
import json
import math

import cv2
import numpy as np
import pytest

from cellview.analysis.cache import ResultCache, cache_key, result_from_bytes, result_to_bytes
from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.model_spec import ModelSpec
from cellview.analysis.morphology import (
    HED_STAIN_MATRIX,
    NucleiParams,
    TileNuclei,
    contours_level0_for,
    draw_contours,
    haematoxylin,
    malignant_regions,
    measure_nuclei,
    measure_tile,
    patch_mpp,
    regions_from_mask,
    stain_unmixing_matrix,
    tile_to_level0,
)
from cellview.analysis.pipeline import BatchDone, analyze, run_analysis
from cellview.analysis.results import AnalysisParams
from cellview.analysis.tiling import build_grid
from cellview.analysis.tissue import TissueParams, detect_tissue
from cellview.cli import main
from cellview.outputs.export import annotated_png, csv_text, export_all, geojson_dict
from cellview.slides.opening import open_slide
from cellview.testing.synthetic import grid_result, write_pyramid_tiff

BACKGROUND = (236, 196, 222)  # eosin-pink stroma
NUCLEUS = (72, 48, 140)  # haematoxylin purple


def render_discs(centres_px, radius_px, size=(256, 256), supersample=4) -> np.ndarray:
    """Anti-aliased discs of an exact radius (supersampled), nucleus colour on pink."""
    h, w = size
    s = supersample
    yy, xx = np.mgrid[0:h * s, 0:w * s]
    yy, xx = (yy + 0.5) / s, (xx + 0.5) / s
    inside = np.zeros((h * s, w * s), bool)
    for cx, cy in centres_px:
        inside |= (xx - cx) ** 2 + (yy - cy) ** 2 <= radius_px ** 2
    cover = cv2.resize(inside.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)[..., None]
    img = np.array(BACKGROUND, np.float32) * (1 - cover) + np.array(NUCLEUS, np.float32) * cover
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def scattered_centres(n, radius_px, size, gap_px, seed=0):
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < n:
        c = rng.uniform(radius_px + 2, np.array(size[::-1]) - radius_px - 2)
        if all(np.hypot(*(c - d)) > 2 * radius_px + gap_px for d in out):
            out.append(c)
    return out


# ----------------------------------------------------------------------------- synthetic nuclei


@pytest.mark.parametrize(("n", "radius_um", "mpp"), [(20, 3.5, 0.5), (35, 2.5, 0.5), (12, 4.0, 0.25), (15, 5.0, 1.0)])
def test_discs_count_and_mean_area_within_10_percent(n, radius_um, mpp):
    r = radius_um / mpp
    centres = scattered_centres(n, r, (256, 256), gap_px=4, seed=n)
    m = measure_nuclei(render_discs(centres, r), mpp)
    assert m.area_unit == "um2" and not m.scale_unknown
    assert m.count == pytest.approx(n, rel=0.10)
    assert m.mean_area == pytest.approx(math.pi * radius_um ** 2, rel=0.10)
    assert m.median_area == pytest.approx(math.pi * radius_um ** 2, rel=0.10)
    assert m.density_per_mm2 == pytest.approx(m.count / (256 * 256 * mpp * mpp / 1e6))
    assert m.mean_circularity > 0.8 and m.mean_eccentricity < 0.4  # discs are round


def test_touching_discs_are_split_by_the_watershed():
    r = 8.0  # 4 µm at 0.5 µm/px
    pairs = [((40, 40), (40 + 1.5 * r, 40)), ((150, 60), (150, 60 + 1.6 * r)),
             ((60, 170), (60 + 1.3 * r, 170 + 1.3 * r * 0.6)), ((180, 190), (180 + 1.7 * r, 190))]
    centres = [c for pair in pairs for c in pair]
    img = render_discs(centres, r)
    m = measure_nuclei(img, 0.5, want_contours=True)
    assert m.count == 8
    one_disc = math.pi * (r * 0.5) ** 2
    assert np.all(m.areas > 0.6 * one_disc) and np.all(m.areas < 1.15 * one_disc)
    # the split lies between the two centres: each centroid is near its own disc's centre
    got = sorted(map(tuple, np.round(m.centroids)))
    for c in centres:
        assert min(math.dist(c, g) for g in got) < 0.35 * r
    # without splitting the same image would be four blobs
    assert measure_nuclei(img, 0.5, params=NucleiParams(peak_separation_um=40)).count == 4


def test_no_scale_reports_pixels_and_flags_it():
    r = 7.0
    img = render_discs(scattered_centres(10, r, (256, 256), 4), r)
    m = measure_nuclei(img, None)
    assert m.scale_unknown and m.area_unit == "px2" and math.isnan(m.density_per_mm2)
    assert m.count == 10
    assert m.mean_area == pytest.approx(math.pi * r * r, rel=0.10)
    assert "px²" in m.summary()


def test_blank_and_stroma_tiles_have_no_nuclei():
    assert measure_nuclei(np.full((224, 224, 3), 245, np.uint8), 0.5).count == 0
    assert measure_nuclei(np.full((224, 224, 3), BACKGROUND, np.uint8), 0.5).count == 0
    m = measure_nuclei(np.full((64, 64, 3), 255, np.uint8), 0.5, want_contours=True)
    assert m.contours == () and math.isnan(m.mean_area) and m.density_per_mm2 == 0


def test_contours_outline_the_discs_and_map_to_level0():
    r = 6.0
    centres = [(50.0, 60.0), (150.0, 120.0), (200.0, 40.0)]
    img = render_discs(centres, r)
    m = measure_nuclei(img, 0.5, want_contours=True)
    assert m.count == 3 and len(m.contours) == 3
    for c in m.contours:
        centre = min(centres, key=lambda p: math.dist(p, c.mean(axis=0)))
        d = np.hypot(c[:, 0] + 0.5 - centre[0], c[:, 1] + 0.5 - centre[1])
        assert np.all(np.abs(d - r) < 1.5)  # contour pixels sit on the rim
    l0 = m.contours_level0((1000, 2000), 2.0)
    assert np.allclose(l0[0], np.column_stack([1000 + (m.contours[0][:, 0] + 0.5) * 2,
                                               2000 + (m.contours[0][:, 1] + 0.5) * 2]))
    assert np.allclose(tile_to_level0(np.array([[0, 0]]), (10, 20), (2.0, 3.0)), [[11.0, 21.5]])
    drawn = draw_contours(img, m)
    assert drawn.shape == img.shape and (drawn != img).any() and drawn is not img
    with pytest.raises(ValueError):
        measure_nuclei(img, 0.5).contours_level0((0, 0), 1.0)


def test_stain_matrix_is_exposed_and_checked():
    m = stain_unmixing_matrix()
    rows = np.asarray(HED_STAIN_MATRIX) / np.linalg.norm(HED_STAIN_MATRIX, axis=1, keepdims=True)
    assert np.allclose(rows @ m, np.eye(3), atol=1e-5)  # a pure stain unmixes to itself
    h = haematoxylin(render_discs([(32, 32)], 10, (64, 64)))
    assert h[32, 32] > 1.0 and h[2, 2] < 0.3
    with pytest.raises(ValueError):
        stain_unmixing_matrix([[1, 0, 0], [0, 1, 0]])
    # a matrix whose "haematoxylin" is eosin finds the pink background, not the purple discs
    swapped = (HED_STAIN_MATRIX[1], HED_STAIN_MATRIX[0], HED_STAIN_MATRIX[2])
    img = render_discs(scattered_centres(10, 7, (256, 256), 4), 7)
    assert measure_nuclei(img, 0.5, params=NucleiParams(stain_matrix=swapped)).count != 10
    with pytest.raises(ValueError):
        measure_nuclei(img[..., 0], 0.5)


# ----------------------------------------------------------------------------- regions


CATS = [
    "MMM..NN.",
    "M.M..BM.",  # the M at (1, 6) touches (2, 7) by a corner only
    "MMM..B.M",
    "......NN",
    "MM..B...",
    "MM..B.M.",
]


def test_regions_of_a_synthetic_grid():
    result = grid_result(CATS)
    regions = malignant_regions(result, 0.5)
    assert [r.rank for r in regions] == [1, 2, 3, 4]
    ring_with_hole, square, diagonal, single = regions
    # 8 tiles around a hole: outline 300 × 300 minus the 100 × 100 hole
    assert ring_with_hole.n_tiles == 8 and len(ring_with_hole.rings) == 2
    assert ring_with_hole.bbox == (0, 0, 300, 300)
    assert ring_with_hole.area_l0_px2 == 80_000
    assert ring_with_hole.area_mm2 == pytest.approx(80_000 * 0.25 / 1e6)
    assert sorted(map(tuple, ring_with_hole.rings[1][:-1].astype(int))) == [(100, 100), (100, 200), (200, 100),
                                                                          (200, 200)]
    assert square.n_tiles == 4 and square.bbox == (0, 400, 200, 200) and square.area_l0_px2 == 40_000
    assert len(square.rings) == 1 and len(square.rings[0]) == 5  # 4 corners, closed
    # corner-touching tiles are one region (8-connectivity), two with connectivity 4
    assert diagonal.n_tiles == 2 and diagonal.bbox == (600, 100, 200, 200) and diagonal.area_l0_px2 == 20_000
    assert len(diagonal.polygons) == 2 and all(len(p) == 1 for p in diagonal.polygons)  # one square per part
    assert single.n_tiles == 1 and single.bbox == (600, 500, 100, 100)
    assert len(malignant_regions(result, 0.5, connectivity=4)) == 5
    for r in regions:
        assert np.all(r.rings[0][0] == r.rings[0][-1])
        assert set(result.pred_category[r.tile_indices]) == {0}
        assert r.mean_confidence == pytest.approx(0.9)
    assert [r.area_l0_px2 for r in regions] == sorted((r.area_l0_px2 for r in regions), reverse=True)
    assert regions[0].label() == "0.02 mm²"


def test_region_confidence_threshold_and_unknown_scale():
    conf = np.full(sum(ch != "." for line in CATS for ch in line), 0.9, np.float32)
    conf[0] = 0.55  # the top-left tile of the ring
    result = grid_result(CATS, conf)
    assert malignant_regions(result, 0.5)[0].n_tiles == 8
    low = malignant_regions(result, 0.6)
    assert low[0].n_tiles == 7 and low[0].area_l0_px2 == 70_000
    assert malignant_regions(result, 0.95) == []
    unknown = malignant_regions(grid_result(CATS, mpp=None), 0.5)
    assert math.isnan(unknown[0].area_mm2) and unknown[0].label() == "8 tiles"


def test_regions_are_clipped_to_the_slide():
    result = grid_result(["MM", "MM"], slide_wh=(150, 180))  # edge tiles stick out past the slide
    (region,) = malignant_regions(result)
    assert region.bbox == (0, 0, 150, 180) and region.area_l0_px2 == 150 * 180


def test_region_polygon_area_equals_cell_area():
    rng = np.random.default_rng(3)
    for _ in range(30):
        cells = rng.random((9, 11)) < 0.55
        found = regions_from_mask(cells, (7, 5), connectivity=8)
        assert sum(m.sum() for m, _, _ in found) == cells.sum()
        for member, _polygons, area in found:
            assert area == pytest.approx(member.sum() * 35)


PINCHES = {  # cell masks whose naive outline touches itself at a corner
    "diagonal pair": ["M.", ".M"],
    "diamond around an empty cell": [".M.", "M.M", ".M."],
    "ring closed by a corner": ["MMM.", "M.M.", "MM.M", "..MM"],
    "island in a hole, touching by a corner": ["MMMMM", "M...M", "M.M.M", "M..MM", "MMMMM"],
    "pocket open by a corner": ["MMMM", "M..M", "M.MM", "MM.."],
}


@pytest.mark.parametrize("name", PINCHES)
def test_region_geometry_is_valid_for_qupath(name):
    """JTS (QuPath) rejects self-touching outlines in boolean operations: every region must be valid."""
    shapely = pytest.importorskip("shapely", reason="shapely (test extra) checks OGC validity")
    from shapely.geometry import shape

    from cellview.outputs.export import region_geometry

    cells = np.array([[ch == "M" for ch in row] for row in PINCHES[name]])
    (found,) = regions_from_mask(cells, (100, 100), connectivity=8)
    member, polygons, area = found
    assert member.sum() == cells.sum() and area == cells.sum() * 10_000
    result = grid_result(PINCHES[name])
    (region,) = malignant_regions(result, 0.5)
    geometry = shape(region_geometry(region))
    assert shapely.is_valid(geometry), shapely.is_valid_reason(geometry)
    assert geometry.area == pytest.approx(region.area_l0_px2)
    assert geometry.geom_type == ("Polygon" if len(region.polygons) == 1 else "MultiPolygon")


def test_random_regions_are_valid_geometry():
    shapely = pytest.importorskip("shapely", reason="shapely (test extra) checks OGC validity")
    from shapely.geometry import shape

    from cellview.outputs.export import region_geometry

    rng = np.random.default_rng(5)
    for _ in range(20):
        rows = ["".join("M" if rng.random() < 0.5 else "." for _ in range(10)) for _ in range(8)]
        result = grid_result(rows)
        for region in malignant_regions(result, 0.5):
            geometry = shape(region_geometry(region))
            assert shapely.is_valid(geometry), (rows, shapely.is_valid_reason(geometry))
            assert geometry.area == pytest.approx(region.area_l0_px2)


def test_regions_in_geojson_and_png():
    result = grid_result(CATS)
    regions = malignant_regions(result, 0.5)
    geo = json.loads(json.dumps(geojson_dict(result, regions, 0.5)))
    tiles = [f for f in geo["features"] if f["properties"]["objectType"] == "tile"]
    notes = [f for f in geo["features"] if f["properties"]["objectType"] == "annotation"]
    assert len(tiles) == result.n_tiles and len(notes) == 4
    first = notes[0]
    assert first["properties"]["classification"]["name"] == "Malignant region"
    assert first["properties"]["measurements"]["area_mm2"] == pytest.approx(0.02)
    assert first["properties"]["bbox"] == [0, 0, 300, 300]
    assert len(first["geometry"]["coordinates"]) == 2  # outline and hole
    assert len(geojson_dict(result)["features"]) == result.n_tiles  # without regions: tiles only
    thumb = np.full((300, 400, 3), 230, np.uint8)
    from PIL import Image

    with_regions = np.asarray(Image.open(io.BytesIO(annotated_png(result, thumb, regions=regions))))
    plain = np.asarray(Image.open(io.BytesIO(annotated_png(result, thumb))))
    assert with_regions.shape == plain.shape
    assert (np.abs(with_regions[:300, :400].astype(int) - plain[:300, :400]).sum(axis=2) > 0).sum() > 500
    # the outline passes along the ring's top edge at y = 0 (thumbnail scale 0.5)
    assert (with_regions[0:3, 10:140] == (120, 0, 0)).all(axis=2).any()


# ----------------------------------------------------------------------------- pipeline, cache, exports


@pytest.fixture(scope="module")
def nuclei_slide(tmp_path_factory):
    """A 1024 × 768 slide at 0.5 µm/px: pink stroma with purple discs (r = 3.5 µm) on the left half."""
    rng = np.random.default_rng(7)
    r = 7.0
    centres = scattered_centres(120, r, (768, 512), gap_px=6, seed=11)
    left = render_discs(centres, r, (768, 512))
    right = np.full((768, 512, 3), BACKGROUND, np.uint8)
    img = np.concatenate([left, right], axis=1).astype(np.int16) + rng.integers(-3, 4, (768, 1024, 3))
    path = write_pyramid_tiff(tmp_path_factory.mktemp("nuc") / "nuclei.tiff", np.clip(img, 0, 255).astype(np.uint8),
                              0.5)
    return path, len(centres)


def test_pipeline_measures_nuclei_per_tile(nuclei_slide, toy_model):
    path, n_discs = nuclei_slide
    clf = OnnxClassifier(ModelSpec.load(toy_model), device="cpu")
    events = list(analyze(path, clf, AnalysisParams(nuclei=True, batch_size=5, workers=2)))
    result = events[-1].result
    assert result.params.nuclei and result.nuclei is not None and result.nuclei.area_unit == "um2"
    batches = [e for e in events if isinstance(e, BatchDone)]
    assert all(e.nuclei is not None and e.nuclei.shape == (len(e.indices), 6) for e in batches)
    nuc = result.nuclei
    assert nuc.measured[result.done].all()
    left = result.grid.l0_x < 512
    assert nuc.count[~left].sum() == 0
    # discs cut by tile borders count in both tiles: the sum is at least the number of discs
    assert n_discs <= nuc.count[left].sum() <= 1.35 * n_discs
    assert np.nanmedian(nuc.median_area[left]) == pytest.approx(math.pi * 3.5 ** 2, rel=0.10)
    assert "nuclei_thread_s" in result.timings
    # same numbers as measuring a tile directly (what the inspector will show)
    with open_slide(path) as slide:
        i = int(np.flatnonzero(left)[3])
        m, rgb = measure_tile(slide, result.grid, i)
        assert m.as_row() == pytest.approx(tuple(nuc.values[i]), nan_ok=True)
        assert patch_mpp(result.grid, 0.5) == pytest.approx(1.0) and m.mpp_um == pytest.approx(1.0)
        l0 = contours_level0_for(m, result.grid, i)
        x, y, w, h = result.grid.rect(i)
        assert all((c[:, 0] >= x).all() and (c[:, 0] < x + w).all() and (c[:, 1] >= y).all() for c in l0)
    # without nuclei: no arrays, no extra CSV columns
    plain = run_analysis(path, clf, AnalysisParams())
    assert plain.nuclei is None
    assert "nuclei_count" not in csv_text(plain).splitlines()[0]


def test_nuclei_round_trip_cache_csv_geojson(nuclei_slide, toy_model, tmp_path):
    path, _ = nuclei_slide
    spec = ModelSpec.load(toy_model)
    clf = OnnxClassifier(spec, device="cpu")
    cache = ResultCache(tmp_path / "cache")
    result = run_analysis(path, clf, AnalysisParams(nuclei=True), cache=cache)
    back = result_from_bytes(result_to_bytes(result))
    assert back.nuclei is not None and back.nuclei.area_unit == "um2"
    assert np.array_equal(back.nuclei.values, result.nuclei.values, equal_nan=True)
    again = run_analysis(path, clf, AnalysisParams(nuclei=True), cache=cache)
    assert again.from_cache and np.array_equal(again.nuclei.values, result.nuclei.values, equal_nan=True)
    # nuclei on and off are different cache entries; off keeps the key it always had
    mpp = result.slide.mpp
    fp = result.slide.fingerprint
    assert cache_key(fp, spec.onnx_sha256, AnalysisParams(nuclei=True), mpp) != cache_key(
        fp, spec.onnx_sha256, AnalysisParams(), mpp)
    assert "nuclei" not in AnalysisParams().cache_dict()
    assert run_analysis(path, clf, AnalysisParams(), cache=cache).nuclei is None

    rows = list(csv.DictReader(io.StringIO(csv_text(result))))
    cols = ["nuclei_count", "nuclei_density_per_mm2", "nuclei_mean_area_um2", "nuclei_median_area_um2",
            "nuclei_mean_circularity", "nuclei_mean_eccentricity"]
    assert list(rows[0].keys())[-6:] == cols
    for row, values in zip(rows, result.nuclei.values):
        assert int(row["nuclei_count"]) == int(values[0])
        if row["nuclei_mean_area_um2"]:
            assert float(row["nuclei_mean_area_um2"]) == pytest.approx(values[2], abs=1e-3)
        else:
            assert np.isnan(values[2])
    regions = malignant_regions(result)
    assert regions  # the toy model calls the pink slide malignant
    with open_slide(path) as slide:
        thumb = slide.thumbnail(512)
    paths = export_all(result, tmp_path / "out", "nuclei", thumb, regions=regions)
    geo = json.loads(paths["geojson"].read_text())
    tile = next(f for f in geo["features"] if f["properties"]["objectType"] == "tile"
                and f["properties"]["measurements"].get("nuclei_count", 0) > 0)
    assert {"nuclei_count", "nuclei_mean_area_um2", "nuclei_density_per_mm2"} <= set(tile["properties"]["measurements"])
    notes = [f for f in geo["features"] if f["properties"]["objectType"] == "annotation"]
    assert len(notes) == len(regions) and notes[0]["properties"]["measurements"]["area_mm2"] > 0
    meta = json.loads(paths["json"].read_text())
    assert meta["parameters"]["nuclei"] is True and len(meta["malignant_regions"]["regions"]) == len(regions)


def test_unknown_scale_flags_pixel_areas(nuclei_slide, toy_model, tmp_path):
    """--whole-image on an image without mpp: nuclei areas in px² and the columns say so."""
    path, _ = nuclei_slide
    png = tmp_path / "image.png"
    with open_slide(path) as slide:
        cv2.imwrite(str(png), cv2.cvtColor(slide.read_region((0, 0), 0, (256, 256)), cv2.COLOR_RGB2BGR))
    clf = OnnxClassifier(ModelSpec.load(toy_model), device="cpu")
    result = run_analysis(png, clf, AnalysisParams(whole_image=True, nuclei=True))
    assert result.scale_unknown and result.nuclei.area_unit == "px2"
    header = csv_text(result).splitlines()[0]
    assert "nuclei_mean_area_px2" in header and "nuclei_mean_area_um2" not in header
    back = result_from_bytes(result_to_bytes(result))
    assert back.nuclei.area_unit == "px2"
    assert np.isnan(result.nuclei.density_per_mm2[0])


def test_cli_analyze_nuclei_end_to_end(nuclei_slide, toy_model, tmp_path, capsys):
    path, _ = nuclei_slide
    out = tmp_path / "out"
    code = main(["analyze", str(path), "--model", str(toy_model), "--out", str(out), "--nuclei", "-q",
                 "--no-cache", "--region-confidence", "0.6"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "malignant regions at confidence ≥ 0.6: 1" in captured.out
    rows = list(csv.DictReader((out / "nuclei.csv").open()))
    assert "nuclei_count" in rows[0] and sum(int(r["nuclei_count"]) for r in rows) > 100
    geo = json.loads((out / "nuclei.geojson").read_text())
    assert sum(f["properties"]["objectType"] == "annotation" for f in geo["features"]) == 1
    meta = json.loads((out / "nuclei.json").read_text())
    assert meta["parameters"]["nuclei"] is True and meta["malignant_regions"]["min_confidence"] == 0.6
    # up to date with --nuclei; re-analysed when nuclei are turned off (its CSV has different columns)
    code = main(["analyze", str(path), "--model", str(toy_model), "--out", str(out), "--nuclei", "-q", "--no-cache"])
    assert code == 0 and "up to date" in capsys.readouterr().err
    code = main(["analyze", str(path), "--model", str(toy_model), "--out", str(out), "-q", "--no-cache",
                 "--no-regions"])
    assert code == 0 and "1 analysed" in capsys.readouterr().err
    assert "nuclei_count" not in (out / "nuclei.csv").read_text().splitlines()[0]
    geo = json.loads((out / "nuclei.geojson").read_text())
    assert all(f["properties"]["objectType"] == "tile" for f in geo["features"])


def test_tile_nuclei_columns():
    t = TileNuclei.empty(3, "px2")
    assert t.values.shape == (3, 6) and not t.measured.any()
    assert t.column_names()[2] == "nuclei_mean_area_px2"
    t.values[1] = (4, np.nan, 10, 9, 0.9, 0.3)
    assert t.count[1] == 4 and t.measured.tolist() == [False, True, False]
    with pytest.raises(AttributeError):
        _ = t.nope


# ----------------------------------------------------------------------------- the real slide


@pytest.fixture(scope="module")
def real_tiles(real_slide):
    slide = open_slide(real_slide)
    tissue = detect_tissue(slide, TissueParams(), slide.mpp.um)
    grid = build_grid(slide, 224, 0.5, tissue)  # the usual 224 px at 0.5 µm/px
    yield slide, grid
    slide.close()


# Interior tiles (origins in level-0 px) spread over CMU-1's tissue: the same tiles whatever the edge rule.
SAMPLE_12 = [(896, 0), (1120, 448), (448, 896), (1568, 896), (896, 1344), (896, 1568), (1120, 1792), (1120, 2016),
             (1120, 2240), (672, 2464), (448, 2688), (1568, 2688)]
SAMPLE_8 = [(896, 0), (1120, 672), (896, 1120), (672, 1568), (1344, 1792), (896, 2240), (1120, 2464), (1568, 2688)]


def _tiles_at(grid, origins):
    found = [grid.tile_at(x + 1, y + 1) for x, y in origins]
    assert all(i >= 0 and grid.rect(i)[:2] == xy for i, xy in zip(found, origins))
    return found


def test_real_slide_counts_plausible_and_stable(real_tiles):
    slide, grid = real_tiles
    idx = _tiles_at(grid, SAMPLE_12)
    first = [measure_tile(slide, grid, int(i))[0] for i in idx]
    again = [measure_tile(slide, grid, int(i))[0] for i in idx]
    for a, b in zip(first, again):
        assert a.as_row() == pytest.approx(b.as_row(), nan_ok=True)  # deterministic
        assert len(a.contours) == a.count
    counts = np.array([m.count for m in first])
    # a 112 µm tile of skin/stroma at 0.5 µm/px: tens of nuclei, never hundreds
    assert 10 <= np.median(counts) <= 150 and counts.max() < 300
    areas = np.array([m.median_area for m in first if m.count >= 5])
    assert 8 <= np.median(areas) <= 80  # µm²: lymphocyte ~ 20-40, stromal and epithelial up to ~ 80
    dens = np.array([m.density_per_mm2 for m in first])
    assert 500 <= np.median(dens) <= 12_000


def test_real_slide_contours_lie_on_dark_nuclei(real_tiles):
    slide, grid = real_tiles
    darker = []
    for i in _tiles_at(grid, SAMPLE_8):
        m, rgb = measure_tile(slide, grid, int(i))
        if m.count < 5:
            continue
        inside = np.zeros(rgb.shape[:2], np.uint8)
        cv2.drawContours(inside, [c.reshape(-1, 1, 2) for c in m.contours], -1, 1, -1)
        grey = rgb.mean(axis=2)
        h = haematoxylin(rgb)
        tissue = grey < 220
        # nuclei are darker and far more haematoxylin-stained than the rest of the tissue
        darker.append(grey[inside > 0].mean() < grey[tissue & (inside == 0)].mean() - 40)
        assert h[inside > 0].mean() > 2 * h[tissue & (inside == 0)].mean()
    assert len(darker) >= 5 and all(darker)


def test_real_slide_pipeline_with_nuclei(real_slide, toy_model_224):
    clf = OnnxClassifier(ModelSpec.load(toy_model_224), device="cpu")
    a = run_analysis(real_slide, clf, AnalysisParams(nuclei=True))
    b = run_analysis(real_slide, clf, AnalysisParams(nuclei=True, workers=1, batch_size=5))
    assert a.nuclei.measured[a.done].all()
    assert np.array_equal(a.nuclei.values, b.nuclei.values, equal_nan=True)  # stable across runs and threads
    assert 10 <= np.median(a.nuclei.count[a.done]) <= 150
