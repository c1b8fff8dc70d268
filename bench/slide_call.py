"""The slide call's thresholds, chosen and checked without a test fold ever choosing (issue 25, section 1).

    python bench/slide_call.py [--models colon-he,lung-he] [--work /work/runs/slide-call] [--data ../shared/data]
                               [--mosaics 20] [--write]
    python bench/slide_call.py --issue-mosaic

For each bundled model:

1. Its recipe's leave-one-source-out folds (colon-he: GlaS, EBHI-Seg, LC25000 colon) or, with one source
   (lung-he: LC25000 lung), grouped 5-fold CV by its near-duplicate groups. Each fold's head is the recipe's
   (``cellview.train.protocol.run_folds`` on a ``cellview train`` run under WORK/train/MODEL, made here when
   missing), so every image's tile probabilities come from a model that never saw its source (fold).
   The tiles are the engine's: ``pipeline.plan_grid`` (tissue mask, grid at the model's spacing) on the image at
   its source's spacing, exactly what ``cellview analyze --mpp S`` classifies; probabilities at the shipped
   model's temperature. Each image becomes an ``AnalysisResult`` (no domain statistics: the shipped ones saw
   every source, so they would flatter a held-out one) and ``analysis.call.slide_call`` makes its call.
2. Mosaics: 12 real images of one source (fold) tiled 4 × 3 into one image (1, 2 or 3 malignant, none, or all
   normal), analysed with the engine's grid and the head of the fold that held that source out: the closest
   thing to a slide with a malignant minority these sets allow.
3. Nested choice: for each held-out source (fold), the thresholds are chosen on the other sources' (folds')
   images and mosaics only, then applied to the held-out one (a category is also called where it is the largest
   share, as ``slide_call`` does). Screening logic: the malignant thresholds with
   the highest MISS_WEIGHT × sensitivity + specificity (a miss counts as two false alarms; each the mean over
   the choosing units: images and mosaics of each source), then the benign thresholds with the best
   3-category balanced accuracy. Malignant ties go to the more sensitive thresholds (an area test that never fired
   on the choosing data is kept: the images are smaller than the regions it is for), benign ties to the stricter.
4. Figures per held-out source for the rule and today's headlines: the largest share (the kiosk's headline),
   the confidence-weighted vote (``results.image_calls``, the model card's image rule) and the mean of the tiles
   (``AnalysisResult.image_level``, the CLI's old ``image:`` line).
5. The shipped thresholds: chosen the same way on every source's (fold's) images and mosaics. ``--write`` puts
   them, with the figures, in models/MODEL/model.json, model.int8.json and model.fp16.json (the ``call``
   section), the model card's slide-call section and protocol.json (``slide_call``). WORK/MODEL/slide_call.json
   and .md hold the full report (bench/RESULTS.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cellview.train.slide_call_card import CARD_END, CV_GROUPS, _f, _th_words, insert_section, write_protocol_entry  # noqa: E402

CONF = (0.5, 0.6, 0.7, 0.8, 0.9)
SHARE = (None, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
AREA = (None, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
MISS_WEIGHT = 2.0
"""Screening: a missed malignant image counts as much as this many false alarms when choosing."""
CATS = ("malignant", "benign", "normal")


@dataclass(frozen=True)
class Candidate:
    conf: float
    share: float | None
    area: float | None

    def threshold(self) -> Any:
        from cellview.analysis.callrule import CategoryThreshold

        return CategoryThreshold(self.conf, self.share, self.area)

    def key(self) -> tuple[float, float, float]:
        """Higher is stricter (fewer calls)."""
        return (self.conf, self.share if self.share is not None else 2.0, self.area if self.area is not None else 1e9)

    def sensitive_key(self) -> tuple[float, float, float]:
        """Higher calls more: malignant ties go to it (screening: a test that never fired on the choosing data, such
        as a region of 1 mm² on images smaller than that, is kept rather than dropped)."""
        return tuple(-k for k in self.key())  # type: ignore[return-value]


CANDIDATES = [Candidate(c, s, a) for c in CONF for s in SHARE for a in AREA if not (s is None and a is None)]
DEFAULT_BENIGN = Candidate(0.5, 0.25, None)
"""The benign thresholds of a model without benign classes (never used: no tile is benign)."""


# ----------------------------------------------------------------------------- fold probabilities


def ensure_run(model: str, work: Path, data: Path) -> Path:
    """The ``cellview train`` run of the model's recipe (features cached) and its fold logits; made when missing."""
    import subprocess

    run_dir = work / "train" / model
    shipped = json.loads((REPO / "models" / model / "protocol.json").read_text())["config"]
    if not (run_dir / "cache" / "eval.npy").exists():
        cmd = [sys.executable, "-m", "cellview.cli", "train", "--recipe", model, "--out", str(run_dir),
               "--views", str(shipped["views"]), "--balance", shipped["balance"], "--holdout", "none",
               "--cache-blocks", str(shipped["cache_blocks"]), "--no-eval", "--device", "cpu",
               "--data-root", str(data)]
        print(" ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, cwd=REPO)
    return run_dir


def fold_logits(run_dir: Path, protocol: str) -> tuple[Any, list[Any], Any, list[Any], np.ndarray, np.ndarray, Path]:
    from cellview.train.protocol import make_folds, run_folds
    from cellview.train.train import Run

    run = Run(run_dir)
    recipe, cfg = run.recipe(), run.config()
    samples, _ = run.samples()
    folds = make_folds(samples, protocol, 5, cfg.seed)
    work = run_dir / "folds"
    logits = run_folds(run, recipe, samples, cfg, folds, work)[protocol]["plain"]
    return recipe, samples, cfg, folds, logits[0], logits[1], work


# ----------------------------------------------------------------------------- results per image


def image_scale(spacing: float | None, shape: tuple[int, ...], spec: Any) -> tuple[Any, float | None]:
    """(Mpp, --mpp) of an image as ``cellview analyze`` reads it: at its source's spacing (``--mpp S``), or, for a
    source whose images state none, by the model's rule for such images (a smear field of known width)."""
    from cellview.analysis.foreground import choose_scale
    from cellview.slides.slide import Mpp

    if spacing is not None:
        return Mpp(spacing, spacing, "user"), spacing
    choice = choose_scale(spec.reading, None, False, spec.name, spec.patch_size_pixels, (shape[1], shape[0]))
    if choice.mpp is None:
        raise ValueError(f"{spec.name} reads an image without a pixel size whole: not supported here")
    return choice.mpp, None


def image_result(rgb: np.ndarray, path: str, spacing: float | None, spec: Any, probs: np.ndarray | None,
                 grid_tissue: tuple[Any, Any] | None = None) -> Any:
    """The engine's result for one image at ``spacing`` µm/px (None: as the model reads an image without one) with
    given tile probabilities (grid order)."""
    from cellview.analysis.pipeline import plan_grid
    from cellview.analysis.results import AnalysisParams, AnalysisResult, ModelInfo, TileState
    from cellview.slides.image_slide import ImageSlide
    from cellview.slides.slide import SlideInfo

    mpp, spacing = image_scale(spacing, rgb.shape, spec)
    if grid_tissue is None:
        slide = ImageSlide(Path(path), np.ascontiguousarray(rgb), {}, mpp)
        grid_tissue = plan_grid(slide, spec.patch_size_pixels, spec.spacing_um_px, AnalysisParams(mpp_um=spacing),
                                spec.reading.foreground)
    tissue, grid = grid_tissue
    h, w = rgb.shape[:2]
    info = SlideInfo(path=path, name=Path(path).stem, vendor="image", fingerprint="", level_dimensions=((w, h),),
                     level_downsamples=(1.0,), mpp=mpp)
    model = replace(ModelInfo.from_spec(spec), domain=None)
    n = grid.n_tiles
    p = np.zeros((n, spec.num_classes), np.float32) if probs is None else probs.astype(np.float32)
    return AnalysisResult(slide=info, model=model, params=AnalysisParams(mpp_um=spacing), grid=grid, probs=p,
                          state=np.full(n, TileState.DONE, np.uint8), provider="bench", status="complete",
                          tissue=tissue)


def grids(samples: list[Any], spec: Any, cache: Path) -> list[tuple[Any, Any]]:
    """(tissue, grid) of every image, as ``cellview analyze --mpp <source spacing>`` makes them (cached)."""
    from cellview.analysis.pipeline import plan_grid
    from cellview.analysis.results import AnalysisParams
    from cellview.slides.image_slide import ImageSlide
    from cellview.train import data as D

    if cache.exists():
        got = pickle.loads(cache.read_bytes())
        if len(got) == len(samples):
            return got
    out = []
    t0 = time.time()
    for k, s in enumerate(samples):
        img = D.read_rgb(s.path)
        mpp, spacing = image_scale(s.spacing_um_px, img.shape, spec)
        slide = ImageSlide(Path(s.path), np.ascontiguousarray(img), {}, mpp)
        tissue, grid = plan_grid(slide, spec.patch_size_pixels, spec.spacing_um_px, AnalysisParams(mpp_um=spacing),
                                 spec.reading.foreground)
        out.append((replace(tissue, mask=np.zeros((1, 1), bool)), grid))  # the mask itself is not needed here
        if k % 500 == 0:
            print(f"  grids {k}/{len(samples)} ({time.time() - t0:.0f} s)", file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(out))
    return out


@dataclass
class Table:
    """Per image: what the rule needs for every confidence, and today's headlines."""

    y: np.ndarray  # true category index (CATS)
    source: np.ndarray  # source (LOSO) or fold name (CV): the unit of the nested choice
    n_tiles: np.ndarray
    share: np.ndarray  # (n, 2 categories, len(CONF))
    area: np.ndarray  # (n, 2, len(CONF)) largest region mm², NaN without a region
    vote: np.ndarray  # category index, -1 without tiles
    mean: np.ndarray
    largest: np.ndarray
    tile_malignant: np.ndarray  # share of the image's tiles predicted malignant (any confidence)


def summarise(results: list[Any], y: np.ndarray, source: np.ndarray) -> Table:
    from cellview.analysis.call import CONFIDENCE_SLACK
    from cellview.analysis.morphology import malignant_regions
    from cellview.analysis.results import image_calls

    n = len(results)
    share = np.zeros((n, 2, len(CONF)))
    area = np.full((n, 2, len(CONF)), np.nan)
    vote = np.full(n, -1)
    mean = np.full(n, -1)
    largest = np.full(n, -1)
    tile_mal = np.zeros(n)
    n_tiles = np.zeros(n, int)
    for i, r in enumerate(results):
        n_tiles[i] = r.n_done
        if not r.n_done:
            continue
        conf = r.confidence
        for ci, cat in enumerate(("malignant", "benign")):
            is_cat = r.pred_category == ci
            for k, c in enumerate(CONF):
                hit = is_cat & (conf >= c - CONFIDENCE_SLACK)
                share[i, ci, k] = hit.sum() / r.n_done
                if hit.any():
                    regions = malignant_regions(r, c - CONFIDENCE_SLACK, category=cat)
                    area[i, ci, k] = regions[0].area_mm2
        cats = r.model.class_categories
        vote[i] = image_calls(r.probs, np.zeros(r.n_done, int), 1, cats, "vote")[0][0]
        mean[i] = CATS.index(r.image_level()["pred_category"])
        counts = r.category_counts()
        largest[i] = int(np.argmax([counts[c] for c in CATS]))
        tile_mal[i] = counts["malignant"] / r.n_done
    return Table(y, source, n_tiles, share, area, vote, mean, largest, tile_mal)


def passes(t: Table, ci: int) -> np.ndarray:
    """(n, len(CANDIDATES)) bool: the category's test passes for each candidate (pixel size always known here)."""
    out = np.zeros((len(t.y), len(CANDIDATES)), bool)
    for j, cand in enumerate(CANDIDATES):
        k = CONF.index(cand.conf)
        sh, ar = t.share[:, ci, k], t.area[:, ci, k]
        ok = np.zeros(len(t.y), bool)
        if cand.share is not None:
            ok |= sh >= cand.share - 1e-12
        if cand.area is not None:
            ok |= np.nan_to_num(ar, nan=-1.0) >= cand.area - 1e-12
        out[:, j] = ok & (sh > 0)
    return out


# ----------------------------------------------------------------------------- choosing


def metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """pred: category index, -1 no call (no tile). Sensitivity / specificity for malignant, 3-category bal. acc."""
    out: dict[str, Any] = {"images": int(len(y))}
    mal, non = y == 0, y != 0
    out["sensitivity"] = float((pred[mal] == 0).mean()) if mal.any() else None
    out["specificity"] = float((pred[non] != 0).mean()) if non.any() else None
    norm, ben = y == 2, y == 1
    out["normal_called_malignant"] = float((pred[norm] == 0).mean()) if norm.any() else None
    out["benign_called_malignant"] = float((pred[ben] == 0).mean()) if ben.any() else None
    present = [c for c in range(3) if (y == c).any()]
    out["balanced_accuracy"] = float(np.mean([(pred[y == c] == c).mean() for c in present])) if present else None
    out["recall"] = {CATS[c]: (float((pred[y == c] == c).mean()) if (y == c).any() else None) for c in range(3)}
    out["no_call"] = int((pred < 0).sum())
    return out


def rule_predictions(mal_pass: np.ndarray, ben_pass: np.ndarray, n_tiles: np.ndarray) -> np.ndarray:
    pred = np.where(mal_pass, 0, np.where(ben_pass, 1, 2))
    return np.where(n_tiles > 0, pred, -1)


@dataclass
class Part:
    """Images or mosaics of the units (sources / folds), with each candidate's pass flags."""

    name: str
    t: Table
    mal: np.ndarray
    ben: np.ndarray

    @classmethod
    def of(cls, name: str, t: Table) -> Part:
        """A category is called when its test passes or it is the largest share (``call.Finding.called``)."""
        return cls(name, t, passes(t, 0) | (t.largest == 0)[:, None], passes(t, 1) | (t.largest == 1)[:, None])


def choose(parts: list[Part], exclude: str | None, has_benign: bool) -> tuple[int, int, dict]:
    """Indices of the malignant and benign candidates chosen on every unit but ``exclude``.

    Malignant first: the highest MISS_WEIGHT × sensitivity + specificity, each the mean over the choosing units
    (images and mosaics of each source / fold count as separate units); then the benign candidate with the best
    mean 3-category balanced accuracy. Malignant ties go to the more sensitive candidate, benign ties to the
    stricter one.
    """
    units: list[tuple[Part, np.ndarray]] = []
    for part in parts:
        for src in sorted(set(part.t.source.tolist()) - {exclude}):
            units.append((part, part.t.source == src))
    sens, spec = [], []
    for part, m in units:
        y, called = part.t.y, part.mal & (part.t.n_tiles > 0)[:, None]
        if (m & (y == 0)).any():
            sens.append(called[m & (y == 0)].mean(0))
        if (m & (y != 0)).any():
            spec.append(1 - called[m & (y != 0)].mean(0))
    s, p = np.mean(sens, axis=0), np.mean(spec, axis=0)
    score = MISS_WEIGHT * s + p
    i_mal = max(range(len(CANDIDATES)), key=lambda j: (round(float(score[j]), 9), CANDIDATES[j].sensitive_key()))
    i_ben = CANDIDATES.index(DEFAULT_BENIGN)
    acc = None
    if has_benign:
        best_key = None
        for j in range(len(CANDIDATES)):
            accs = []
            for part, m in units:
                pred = rule_predictions(part.mal[m, i_mal], part.ben[m, j], part.t.n_tiles[m])
                y = part.t.y[m]
                present = [c for c in range(3) if (y == c).any()]
                accs.append(np.mean([(pred[y == c] == c).mean() for c in present]))
            key = (round(float(np.mean(accs)), 9), CANDIDATES[j].key())
            if best_key is None or key > best_key:
                best_key, i_ben, acc = key, j, float(np.mean(accs))
    return i_mal, i_ben, {"choosing_units": [f"{part.name}:{src}" for part, m in units
                                             for src in sorted(set(part.t.source[m].tolist()))],
                          "sensitivity": round(float(s[i_mal]), 4), "specificity": round(float(p[i_mal]), 4),
                          "balanced_accuracy": None if acc is None else round(acc, 4)}


def thresholds_of(i_mal: int, i_ben: int, chosen_by: str = "", validation: dict | None = None) -> Any:
    from cellview.analysis.callrule import CallThresholds

    return CallThresholds(CANDIDATES[i_mal].threshold(), CANDIDATES[i_ben].threshold(), 1, chosen_by,
                          validation=validation or {})


# ----------------------------------------------------------------------------- mosaics

MOSAIC_KINDS = {"1 malignant of 12": 1, "2 malignant of 12": 2, "3 malignant of 12": 3,
                "none malignant (benign + normal)": 0, "all normal": -1}
"""Mosaics of 12 real images (4 × 3 crops): how many are malignant (-1: all normal ones)."""


def mosaic_results(samples: list[Any], t: Table, spec: Any, run_dir: Path, folds: list[Any], n_per_kind: int,
                   cache: Path, seed: int = 0) -> tuple[list[Any], np.ndarray, np.ndarray, list[str]]:
    """Mosaics of each unit's own images (a common square crop, no resampling), analysed with the engine's grid
    (``pipeline.plan_grid`` at the source's spacing) and the head of the fold that held the unit out.

    Returns (results, true category, unit, kind) per mosaic; cached.
    """
    if cache.exists():
        got = pickle.loads(cache.read_bytes())
        if got[-1] == n_per_kind:
            return got[:-1]
    import onnxruntime as ort
    import torch

    from cellview.analysis.classifier import probabilities
    from cellview.analysis.tiling import read_tile
    from cellview.slides.image_slide import ImageSlide
    from cellview.slides.slide import Mpp
    from cellview.train import data as D

    sess = ort.InferenceSession(str(next((run_dir / "cache").glob("frozen_*.onnx"))),
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    results, truths, units, kinds = [], [], [], []
    t0 = time.time()
    for fold in folds:
        unit = fold.name.removeprefix("without ")
        weights = next((run_dir / "folds").glob(f"{fold.protocol}-{fold.name.replace(' ', '_')}-*.pt"))
        sd = torch.load(weights, map_location="cpu", weights_only=True)
        w_fc, b_fc = sd["fc.weight"].numpy(), sd["fc.bias"].numpy()
        idx = np.flatnonzero(fold.test & (t.n_tiles > 0))
        crop = int(min(min(D.read_rgb(samples[i].path).shape[:2]) for i in idx))  # every image holds the crop
        by_cat = {c: [int(i) for i in idx if t.y[i] == c] for c in range(3)}
        for kind, n_mal in MOSAIC_KINDS.items():
            if (n_mal > 0 and len(by_cat[0]) < 3) or (n_mal == -1 and len(by_cat[2]) < 12):
                continue
            if n_mal == 0 and not by_cat[1]:
                continue  # no benign images: "none malignant" would be "all normal" again
            for _ in range(n_per_kind):
                if n_mal == -1:
                    pick = [int(i) for i in rng.choice(by_cat[2], 12, replace=False)]
                else:
                    pick = [int(i) for i in rng.choice(by_cat[0], n_mal, replace=False)] if n_mal else []
                    pick += [int(i) for i in rng.choice(by_cat[1] + by_cat[2], 12 - n_mal, replace=False)]
                rng.shuffle(pick)
                crops = []
                for i in pick:
                    img = D.read_rgb(samples[i].path)
                    y0, x0 = (img.shape[0] - crop) // 2, (img.shape[1] - crop) // 2
                    crops.append(img[y0:y0 + crop, x0:x0 + crop])
                mosaic = np.vstack([np.hstack(crops[r * 4:(r + 1) * 4]) for r in range(3)])
                spacing = samples[pick[0]].spacing_um_px
                if spacing is None:  # fields without a pixel size: the mosaic at the first field's scale
                    spacing = image_scale(None, D.read_rgb(samples[pick[0]].path).shape, spec)[0].um
                result = image_result(mosaic, f"mosaic-{unit}-{len(results)}.png", spacing, spec, None)
                if result.n_tiles:
                    slide = ImageSlide(Path("mosaic.png"), mosaic, {}, Mpp(spacing, spacing, "user"))
                    batch = np.stack([read_tile(slide, result.grid, k) for k in range(result.n_tiles)])
                    feats = np.concatenate([sess.run(None, {"tiles": batch[k:k + 64]})[0]
                                            for k in range(0, len(batch), 64)])
                    logits = feats.astype(np.float32) @ w_fc.T + b_fc
                    result = replace(result, probs=probabilities(logits, "softmax", spec.temperature))
                truth = 0 if n_mal > 0 else (1 if any(t.y[i] == 1 for i in pick) else 2)
                results.append(result)
                truths.append(truth)
                units.append(unit)
                kinds.append(kind)
        print(f"  mosaics of {unit}: {sum(u == unit for u in units)} ({time.time() - t0:.0f} s)", file=sys.stderr)
    out = (results, np.array(truths), np.array(units, object), kinds)
    cache.write_bytes(pickle.dumps((*out, n_per_kind)))
    return out


def mosaic_summary(t: Table, kinds: list[str], rule: np.ndarray, m: np.ndarray) -> dict[str, Any]:
    out = {}
    kinds_arr = np.array(kinds, object)
    for kind in MOSAIC_KINDS:
        sel = m & (kinds_arr == kind)
        if not sel.any():
            continue
        truth = int(t.y[sel][0])
        entry = {"mosaics": int(sel.sum()), "truth": CATS[truth], "tiles": round(float(t.n_tiles[sel].mean()), 1),
                 "malignant_tile_share": round(float(t.tile_malignant[sel].mean()), 3)}
        for name, pred in (("rule", rule), ("largest_share", t.largest), ("vote", t.vote)):
            entry[f"{name}_malignant"] = round(float((pred[sel] == 0).mean()), 3)
            entry[f"{name}_right"] = round(float((pred[sel] == truth).mean()), 3)
        out[kind] = entry
    return out


# ----------------------------------------------------------------------------- per model


def evaluate_model(model: str, work: Path, data: Path, n_mosaics: int) -> dict[str, Any]:
    from cellview.analysis.call import slide_call
    from cellview.analysis.classifier import probabilities
    from cellview.analysis.model_spec import CATEGORIES, ModelSpec

    t0 = time.time()
    spec = ModelSpec.load(REPO / "models" / model / "model.onnx")
    run_dir = ensure_run(model, work, data)
    recipe = json.loads((run_dir / "recipe.json").read_text())
    shipped = json.loads((REPO / "models" / model / "protocol.json").read_text()).get("protocols", ["loso", "cv"])
    protocol = "loso" if len(recipe["sources"]) > 1 and "loso" in shipped else "cv"  # blood-all: CV only
    _, samples, _, folds, logits, index, _ = fold_logits(run_dir, protocol)
    gt = grids(samples, spec, work / model / "grids.pkl")
    probs = probabilities(logits, "softmax", spec.temperature)
    cat_of_class = np.array([CATEGORIES.index(c) for c in spec.class_categories])
    y = cat_of_class[np.array([s.label for s in samples])]
    fold_of = np.full(len(samples), "", object)
    for f in folds:
        fold_of[f.test] = f.name.removeprefix("without ")
    order = np.argsort(index, kind="stable")
    index, probs = index[order], probs[order]
    starts = np.searchsorted(index, np.arange(len(samples)))
    ends = np.searchsorted(index, np.arange(len(samples)), side="right")
    table_path = work / model / f"table-{protocol}.pkl"
    if table_path.exists():
        fields, results = pickle.loads(table_path.read_bytes())
        table = Table(**fields)
    else:
        results = []
        for k, s in enumerate(samples):
            tissue, grid = gt[k]
            p = probs[starts[k]:ends[k]]
            if len(p) != grid.n_tiles:
                raise RuntimeError(f"{s.path}: {len(p)} cached tiles, the engine's grid has {grid.n_tiles}")
            img_shape = (grid.slide_h_l0, grid.slide_w_l0, 3)
            results.append(image_result(np.zeros(img_shape, np.uint8), s.path, s.spacing_um_px, spec, p, (tissue, grid)))
        table = summarise(results, y, fold_of)
        table_path.write_bytes(pickle.dumps((dict(table.__dict__), results)))
    print(f"{model}: {len(samples)} images, {int(table.n_tiles.sum())} tiles, {protocol} ({time.time() - t0:.0f} s)",
          file=sys.stderr)
    parts = [Part.of("images", table)]
    mos_results: list[Any] = []
    kinds: list[str] = []
    if n_mosaics:
        mos_results, mos_y, mos_unit, kinds = mosaic_results(samples, table, spec, run_dir, folds, n_mosaics,
                                                             work / model / f"mosaics-{protocol}.pkl")
        parts.append(Part.of("mosaics", summarise(mos_results, mos_y, mos_unit)))
    has_benign = "benign" in spec.class_categories
    units = sorted(set(fold_of.tolist()))
    report: dict[str, Any] = {"model": model, "protocol": protocol, "temperature": spec.temperature,
                              "images": len(samples), "tiles": int(table.n_tiles.sum()),
                              "mosaics": len(mos_results), "miss_weight": MISS_WEIGHT, "held_out": {}}
    for unit in units:
        i_mal, i_ben, info = choose(parts, unit, has_benign)
        th = thresholds_of(i_mal, i_ben, "bench")
        entry: dict[str, Any] = {"thresholds": {"malignant": th.malignant.to_dict(), "benign": th.benign.to_dict()},
                                 "choice": info}
        for part, res in zip(parts, (results, mos_results)):
            t = part.t
            test = t.source == unit
            rule = rule_predictions(part.mal[:, i_mal], part.ben[:, i_ben], t.n_tiles)
            for k in np.flatnonzero(test):  # the engine's rule must agree with the table it was chosen on
                call = slide_call(res[k], th)
                got = CATS.index(call.category) if call.category in CATS else -1
                if got != rule[k]:
                    raise AssertionError(f"{res[k].slide.path}: slide_call says {call.category}, the table {rule[k]}")
            entry[part.name] = {m: metrics(pred[test], t.y[test]) for m, pred in
                                (("rule", rule), ("largest_share", t.largest), ("vote", t.vote), ("mean", t.mean))}
            normal = test & (t.y == 2)
            entry[part.name]["normal_tile_malignant_share"] = (round(float(t.tile_malignant[normal].mean()), 4)
                                                               if normal.any() else None)
            if part.name == "mosaics":
                entry["mosaic_kinds"] = mosaic_summary(t, kinds, rule, test)
                entry["mosaic_examples"] = [slide_call(mos_results[k], th).text
                                            for k in np.flatnonzero(test & (t.y == 0))[:3]]
        report["held_out"][unit] = entry
    for part in parts:
        for m in ("rule", "largest_share", "vote", "mean"):
            vals = [v[part.name][m] for v in report["held_out"].values()]
            report[f"mean_{part.name}_{m}"] = {
                k: round(float(np.mean([v[k] for v in vals if v[k] is not None])), 4)
                for k in ("sensitivity", "specificity", "balanced_accuracy")}
    i_mal, i_ben, info = choose(parts, None, has_benign)
    report["shipped"] = {"malignant": CANDIDATES[i_mal].threshold().to_dict(),
                         "benign": CANDIDATES[i_ben].threshold().to_dict(), "choice": info}
    report["shipped_indices"] = [int(i_mal), int(i_ben)]
    report["seconds"] = round(time.time() - t0, 1)
    return report


# ----------------------------------------------------------------------------- words


def markdown(report: dict[str, Any]) -> str:
    unit = "held-out source" if report["protocol"] == "loso" else "held-out fold"
    names = {"rule": "**slide call**", "largest_share": "largest share", "vote": "vote", "mean": "mean of tiles"}
    lines = [f"#### {report['model']}: slide call vs today's headlines ({report['protocol'].upper()}; "
             f"{report['images']} images, {report['tiles']} tiles; {report['mosaics']} mosaics)", "",
             f"| {unit} | what | n | call | malignant sensitivity | specificity | normal → malignant | "
             "benign → malignant | 3-category bal. acc. |", "|---|---|---|---|---|---|---|---|---|"]
    for src, v in report["held_out"].items():
        for part in ("images", "mosaics"):
            if part not in v:
                continue
            for m in ("rule", "largest_share", "vote", "mean"):
                r = v[part][m]
                lines.append(f"| {src} | {part} | {r['images']} | {names[m]} | {_f(r['sensitivity'])} | "
                             f"{_f(r['specificity'])} | {_f(r['normal_called_malignant'])} | "
                             f"{_f(r['benign_called_malignant'])} | {_f(r['balanced_accuracy'])} |")
    lines += ["", f"Thresholds chosen without the {unit} (tile confidence; share of tiles / largest region):", ""]
    for src, v in report["held_out"].items():
        lines.append(f"- {src}: {_th_words(v['thresholds'])}")
    lines.append("")
    for part in ("images", "mosaics"):
        for m in ("rule", "largest_share", "vote", "mean"):
            r = report.get(f"mean_{part}_{m}")
            if r:
                lines.append(f"- {part}, mean over {unit}s, {names[m]}: sensitivity {r['sensitivity']:.3f}, "
                             f"specificity {r['specificity']:.3f}, balanced accuracy {r['balanced_accuracy']:.3f}")
    tm = {s: v["images"]["normal_tile_malignant_share"] for s, v in report["held_out"].items()}
    lines.append(f"- tiles called malignant on the normal images of each {unit}: "
                 + ", ".join(f"{s} {v:.1%}" for s, v in tm.items() if v is not None))
    sh = report["shipped"]
    lines.append(f"- shipped, chosen on every {unit.split()[-1]}: {_th_words(sh)} (choosing figures: sensitivity "
                 f"{sh['choice']['sensitivity']:.3f}, specificity {sh['choice']['specificity']:.3f})")
    if report["mosaics"]:
        lines += ["", f"Mosaics of the {unit}'s real images, by kind (share of mosaics called malignant / called right):",
                  "", f"| {unit} | mosaic | n | tiles | malignant tiles | slide call | largest share | vote |",
                  "|---|---|---|---|---|---|---|---|"]
        for src, v in report["held_out"].items():
            for kind, e in v.get("mosaic_kinds", {}).items():
                lines.append(f"| {src} | {kind} | {e['mosaics']} | {e['tiles']:.0f} | {e['malignant_tile_share']:.0%} | "
                             f"{e['rule_malignant']:.2f} / {e['rule_right']:.2f} | "
                             f"{e['largest_share_malignant']:.2f} / {e['largest_share_right']:.2f} | "
                             f"{e['vote_malignant']:.2f} / {e['vote_right']:.2f} |")
        lines += ["", "Examples (malignant mosaics): " + "; ".join(
            f"`{t}`" for v in report["held_out"].values() for t in v.get("mosaic_examples", [])[:1])]
    return "\n".join(lines) + "\n"


def write_sidecars(model: str, report: dict[str, Any]) -> None:
    """The shipped thresholds, with their figures, into every copy's sidecar (validated by loading them back)."""
    from cellview.analysis.callrule import CallThresholds
    from cellview.analysis.model_spec import ModelSpec

    protocol = report["protocol"]
    chosen_by = ("leave-one-source-out on GlaS, EBHI-Seg and LC25000 colon images and mosaics of them "
                 "(bench/slide_call.py): chosen on every source's out-of-source tiles; the figures hold each source "
                 "out with thresholds chosen on the others" if protocol == "loso" else
                 f"grouped 5-fold cross-validation by {CV_GROUPS.get(model, 'the recipe groups')}"
                 + (" and mosaics of them" if report["mosaics"] else " (single images, no mosaics)")
                 + " (bench/slide_call.py): chosen on every fold's out-of-fold tiles; the figures hold each fold out "
                 "with thresholds chosen on the others")
    validation: dict[str, Any] = {"protocol": protocol, "miss_weight": MISS_WEIGHT, "held_out": {}}
    for src, v in report["held_out"].items():
        validation["held_out"][src] = {
            part: {m: {k: (None if v[part][m][k] is None else round(v[part][m][k], 4))
                       for k in ("sensitivity", "specificity", "normal_called_malignant", "balanced_accuracy")}
                   for m in ("rule", "largest_share", "vote")}
            for part in ("images", "mosaics") if part in v}
    i_mal, i_ben = report["shipped_indices"]
    section = thresholds_of(i_mal, i_ben, chosen_by, validation).to_dict()
    for name in ("model.json", "model.int8.json", "model.fp16.json"):
        path = REPO / "models" / model / name
        if not path.exists():  # a model that ships no INT8 copy
            continue
        side = json.loads(path.read_text())
        side["call"] = section
        path.write_text(json.dumps(side, indent=2) + "\n")
    spec = ModelSpec.load(REPO / "models" / model / "model.onnx")
    assert spec.call == CallThresholds.from_sidecar(section)


def issue_mosaic(data: Path, work: Path, seed: int = 0) -> str:
    """The issue's check, end to end with the shipped model: 12 GlaS images (2 adenocarcinoma, 5 adenoma, 5 normal)
    as one 4 × 3 image at 0.62 µm/px, through ``cellview analyze``. The shipped model was trained on GlaS, so
    this shows the words on a mixed image, not a held-out figure (those are the mosaics above)."""
    import csv
    import subprocess

    import cv2

    rows = list(csv.DictReader((data / "glas" / "labels.csv").open()))
    rng = np.random.default_rng(seed)
    pick = []
    for cls, n in (("malignant", 2), ("benign", 5), ("normal", 5)):
        names = sorted(r["image"] for r in rows if r["class3"] == cls)
        pick += [str(x) for x in rng.choice(names, n, replace=False)]
    rng.shuffle(pick)
    images = [cv2.imread(str(data / "glas" / name)) for name in pick]
    h = min(i.shape[0] for i in images)
    w = min(i.shape[1] for i in images)
    crops = [i[(i.shape[0] - h) // 2:(i.shape[0] - h) // 2 + h, (i.shape[1] - w) // 2:(i.shape[1] - w) // 2 + w]
             for i in images]
    mosaic = np.vstack([np.hstack(crops[r * 4:(r + 1) * 4]) for r in range(3)])
    path = work / "issue-mosaic" / "glas-mosaic-2-5-5.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), mosaic)
    out = subprocess.run([sys.executable, "-m", "cellview.cli", "analyze", str(path), "--mpp", "0.62", "--out",
                          str(path.parent / "out"), "-q", "--force", "--device", "cpu"],
                         capture_output=True, text=True, cwd=REPO, check=True)
    return f"{', '.join(pick)}\n{out.stdout}"


def write_card(model: str, report: dict[str, Any], intro: str = "") -> None:
    """Replace (or insert before 'Adapting' / 'What was tried') the card's slide-call section; protocol.json gets
    the report under ``slide_call`` (``cellview export`` keeps both for a re-export of the same training)."""
    path = REPO / "models" / model / "MODEL_CARD.md"
    card = insert_section(path.read_text(), report)
    if intro:
        card = card.replace(CARD_END + "\n", CARD_END + "\n" + intro + "\n", 1)
    path.write_text(card)
    write_protocol_entry(REPO / "models" / model, {k: v for k, v in report.items() if k != "shipped_indices"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="colon-he,lung-he")
    ap.add_argument("--work", type=Path, default=Path("/work/runs/slide-call"))
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--mosaics", type=int, default=20, help="mosaics per kind and source / fold (0: none)")
    ap.add_argument("--write", action="store_true", help="write the shipped thresholds into the models' sidecars")
    ap.add_argument("--issue-mosaic", action="store_true",
                    help="only the issue's GlaS mosaic (2 malignant, 5 benign, 5 normal) through cellview analyze")
    args = ap.parse_args()
    if args.issue_mosaic:
        print(issue_mosaic(args.data, args.work))
        return 0
    for model in args.models.split(","):
        report = evaluate_model(model, args.work, args.data, args.mosaics)
        (args.work / model).mkdir(parents=True, exist_ok=True)
        (args.work / model / "slide_call.json").write_text(json.dumps(report, indent=2) + "\n")
        md = markdown(report)
        (args.work / model / "slide_call.md").write_text(md)
        print(md)
        if args.write:
            write_sidecars(model, report)
            write_card(model, report)
            written = [n for n in ("model.json", "model.int8.json", "model.fp16.json")
                       if (REPO / "models" / model / n).exists()]
            print(f"wrote the 'call' section of models/{model}/{', '.join(written)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
