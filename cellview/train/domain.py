"""``cellview domain``: give a model an out-of-domain score, and measure how well it separates.

- ``upgrade``: add the ``features`` / ``feature_map`` / ``cam`` outputs to a GAP + linear ONNX
  model by graph surgery (cellview.analysis.onnx_graph), checking that its logits stay bit-identical.
- ``fit``: run the model on the training split's tiles (means + covariance) and the validation
  split's tiles (calibration), write ``domain.npz`` next to it and record its sha256 in the
  sidecar(s). The split comes from a training run folder (``samples.json``) or is rebuilt from a
  recipe exactly as ``cellview train`` builds it (same grouping, fractions and seed).
- ``evaluate``: tile-level AUROC of the score, in-domain held-out (test split) tiles against
  other organs, the CMU-1 skin slide and generated glass / blur / ink / fold tiles; writes JSON
  and a Markdown section for the model card.

Only ONNX Runtime and NumPy are needed, except for rebuilding a recipe split whose near-duplicate
groups come from CNN embeddings (torch, the ``train`` extra), and for ``upgrade`` (``onnx``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.domain import (
    QUALITY_CHECKS,
    DomainStats,
    auroc,
    fit_domain,
    tile_quality,
)
from cellview.analysis.domain_store import write_domain
from cellview.analysis.foreground import Reading
from cellview.analysis.model_spec import ModelSpec, sha256_file, sidecar_for
from cellview.base.errors import CellviewError, ModelError
from cellview.base.files import atomic_write_bytes, atomic_write_text
from cellview.train import data as D
from cellview.train.splits import SPLITS, group_split, groups_straddling


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- splits


def split_from_run(run_dir: Path) -> tuple[D.Recipe, list[D.Sample], np.ndarray]:
    """The recipe, samples and grouped split a ``cellview train`` run used (its JSON files)."""
    run_dir = Path(run_dir)
    try:
        recipe = D.recipe_from_dict(json.loads((run_dir / "recipe.json").read_text(encoding="utf-8")), Path("/"))
        rows = json.loads((run_dir / "samples.json").read_text(encoding="utf-8"))
        samples = [D.Sample(**{k: r[k] for k in D.Sample.__dataclass_fields__}) for r in rows]
        split = np.array([SPLITS.index(r["split"]) for r in rows])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CellviewError(f"{run_dir} is not a readable training run (recipe.json, samples.json).", str(exc)) from exc
    if not (split == SPLITS.index("test")).any():
        cfg = json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("config", {}) \
            if (run_dir / "summary.json").exists() else {}
        split = held_out_split(samples, split, tuple(cfg.get("fractions", (0.7, 0.15, 0.15))), int(cfg.get("seed", 0)))
    return recipe, samples, split


def held_out_split(samples: Sequence[D.Sample], split: np.ndarray, fractions: Sequence[float],
                   seed: int) -> np.ndarray:
    """The run's split, or for a run trained on every image a grouped fit / calibrate / test split.

    With a frozen backbone the pooled features the statistics use do not depend on training, so the
    held-out groups are unseen in the sense that matters; with fine-tuned blocks they were seen.
    ``cellview export`` and ``cellview domain --run`` use the same split, so their figures agree.
    """
    if (split == SPLITS.index("test")).any():
        return split
    return group_split([s.label for s in samples], [s.group for s in samples], tuple(fractions), seed)


def split_from_recipe(recipe: D.Recipe, seed: int = 0, fractions: Sequence[float] = (0.7, 0.15, 0.15),
                      limit_per_class: int = 0, cache_dir: Path | None = None,
                      threads: int = 2) -> tuple[list[D.Sample], np.ndarray, dict[str, Any]]:
    """Rebuild the split ``cellview train`` makes for this recipe (its defaults: seed 0, 70/15/15).

    Mirrors train.run_training step by step: samples in recipe order, the same per-class limit,
    near-duplicate groups from the frozen ImageNet network when the recipe asks (torch), then
    the greedy stratified group split. ``info`` lets the caller compare with the model card.
    """
    samples = D.read_samples(recipe)
    if limit_per_class:
        rng = np.random.default_rng(seed)
        keep: list[D.Sample] = []
        for c in range(len(recipe.classes)):
            idx = [i for i, s in enumerate(samples) if s.label == c]
            keep += [samples[i] for i in sorted(rng.permutation(idx)[:limit_per_class])]
        samples = keep
    info: dict[str, Any] = {}
    if recipe.group_near_duplicates or any(src.group_by != "column" for src in recipe.sources):
        from cellview.train.backbone import FeatureRunner, build_backbone
        from cellview.train.grouping import assign_groups
        from cellview.train.train import dup_embeddings

        work = Path(cache_dir) if cache_dir else Path.cwd() / ".cellview-domain-cache"
        bb = build_backbone("efficientnet-lite0", recipe.patch_size, 0, pretrained=True)
        runner = FeatureRunner(bb, recipe.patch_size, work, "cpu", threads)
        samples, grouping, _ = assign_groups(samples, recipe,
                                             lambda part: dup_embeddings(part, recipe.patch_size, runner, work),
                                             say=lambda _: None)
        info["groups"] = grouping["groups"]
    labels = np.array([s.label for s in samples])
    split = group_split(labels, [s.group for s in samples], fractions, seed)
    if groups_straddling(split, [s.group for s in samples]):
        raise RuntimeError("the rebuilt split puts one group on two sides")
    info["split_counts"] = {SPLITS[k]: {recipe.class_names[c]: int(((split == k) & (labels == c)).sum())
                                        for c in sorted(set(labels.tolist()))} for k in range(3)}
    info["data_sha256"] = D.data_checksum(samples, Path(os.path.commonpath([s.path for s in samples])).parent)
    return samples, split, info


# ----------------------------------------------------------------------------- features


@dataclass
class TileSet:
    """Model outputs for a set of tiles: features, pixel statistics, logits, and which image each came from."""

    features: np.ndarray
    quality: np.ndarray
    logits: np.ndarray
    image: np.ndarray

    def __len__(self) -> int:
        return len(self.features)

    def subset(self, keep: np.ndarray) -> TileSet:
        return TileSet(self.features[keep], self.quality[keep], self.logits[keep], self.image[keep])

    @classmethod
    def concat(cls, parts: Sequence[TileSet]) -> TileSet:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("features", "quality", "logits", "image")))


@dataclass(frozen=True)
class KnownFeatures:
    """A linear-head run's cached evaluation-tile outputs (frozen features, pixel checks), standing in for running
    the exported FP32 graph ``sha256`` over the same tiles again: its pooled ``features`` output is that frozen
    network's (``cellview export`` checks the two agree before using them)."""

    sha256: str
    rows: dict[str, np.ndarray]  # image path → its rows
    features: np.ndarray
    quality: np.ndarray
    weight: np.ndarray  # the linear head, for the logits
    bias: np.ndarray

    def tileset(self, samples: Sequence[D.Sample]) -> TileSet | None:
        """The tiles of ``samples`` (image index = position in ``samples``), or None when one is not cached."""
        if any(s.path not in self.rows for s in samples):
            return None
        rows = [self.rows[s.path] for s in samples]
        idx = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        feats = np.asarray(self.features[idx], np.float32)
        return TileSet(feats, np.asarray(self.quality[idx], np.float32),
                       (feats @ self.weight.T + self.bias).astype(np.float32),
                       np.concatenate([np.full(len(r), k) for k, r in enumerate(rows)]) if rows else idx)


def run_tiles(clf: OnnxClassifier, tiles: np.ndarray, image: np.ndarray | None = None, batch: int = 32) -> TileSet:
    if not len(tiles):
        return TileSet(np.zeros((0, 0), np.float32), np.zeros((0, len(QUALITY_CHECKS)), np.float32),
                       np.zeros((0, clf.spec.num_classes), np.float32), np.zeros(0, np.int64))
    feats, logits = [], []
    for i in range(0, len(tiles), batch):
        lg, ft = clf.run(tiles[i:i + batch], (clf.output_name, "features"))
        feats.append(ft)
        logits.append(lg)
    return TileSet(np.concatenate(feats).astype(np.float32), tile_quality(tiles),
                   np.concatenate(logits).astype(np.float32),
                   np.zeros(len(tiles), np.int64) if image is None else np.asarray(image, np.int64))


def sample_tiles(samples: Sequence[D.Sample], spacing_um: float, patch: int, max_per_image: int = 0,
                 seed: int = 0, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 spacing_override: float | None = None,
                 reading: Reading | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The tiles `cellview analyze` classifies for each image at the model spacing (as training evaluates), and
    their image index (``reading``: the model's foreground rule and rule for images without a pixel size)."""
    rng = np.random.default_rng(seed)
    tiles, index = [], []
    for i, s in enumerate(samples):
        img = D.read_rgb(s.path)
        if transform is not None:
            img = transform(img)
        t = D.analysis_tiles(img, spacing_override or s.spacing_um_px, spacing_um, patch, reading=reading)
        if max_per_image and len(t) > max_per_image:
            t = t[np.sort(rng.choice(len(t), max_per_image, replace=False))]
        tiles.append(t)
        index.append(np.full(len(t), i))
    return np.concatenate(tiles), np.concatenate(index)


_CACHE_VERSION = 3  # bump when tile_quality or the evaluation tiles change (3: the core's analysis tiles)


def sample_features(clf: OnnxClassifier, samples: Sequence[D.Sample], desc: str, cache: Path | None = None,
                    max_per_image: int = 0, spacing_override: float | None = None, chunk: int = 64,
                    known: KnownFeatures | None = None) -> TileSet:
    """Features of every evaluation tile of ``samples``, cached on disk by model + images + options (``known``: a
    run's cached outputs of this very model, used when they hold every image)."""
    spec = clf.spec
    if known is not None and known.sha256 == spec.onnx_sha256 and not max_per_image and spacing_override is None:
        got = known.tileset(samples)
        if got is not None:
            _say(f"  {desc}: {len(got)} tiles of {len(samples)} images from the run's cache")
            return got
    key_parts = [_CACHE_VERSION, spec.onnx_sha256, [s.path for s in samples], max_per_image, spacing_override,
                 spec.spacing_um_px, spec.patch_size_pixels, list(QUALITY_CHECKS)]
    if not spec.reading.is_default:  # H&E models keep their cached features' keys
        key_parts.append(spec.reading.sidecar_entries())
    key = hashlib.sha256(json.dumps(key_parts).encode())
    path = Path(cache) / f"{desc}_{key.hexdigest()[:16]}.npz" if cache else None
    if path is not None and path.exists():
        with np.load(path) as z:
            return TileSet(z["features"], z["quality"], z["logits"], z["image"])
    t0 = time.time()
    parts = []
    for start in range(0, len(samples), chunk):
        part = samples[start:start + chunk]
        tiles, index = sample_tiles(part, spec.spacing_um_px, spec.patch_size_pixels, max_per_image, seed=start,
                                    spacing_override=spacing_override, reading=spec.reading)
        parts.append(run_tiles(clf, tiles, index + start))
        _say(f"  {desc}: {min(start + chunk, len(samples))}/{len(samples)} images")
    out = TileSet.concat(parts)
    _say(f"  {desc}: {len(out)} tiles in {time.time() - t0:.0f} s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_tileset(path, out)
    return out


def _save_tileset(path: Path, ts: TileSet) -> None:
    buf = io.BytesIO()
    np.savez(buf, features=ts.features, quality=ts.quality, logits=ts.logits, image=ts.image)
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------- fitting


def domain_phrase(recipe: D.Recipe) -> str:
    """A short description of the training data for the banner: the recipe's, else its description's head."""
    phrase = recipe.notes.get("domain") if isinstance(recipe.notes, dict) else None
    if phrase:
        return str(phrase)
    head = recipe.description.split(":")[0].strip()
    head = head[:-len(" tiles")] if head.lower().endswith(" tiles") else head
    if len(head) > 1 and head[0].isupper() and head[1].islower():
        head = head[0].lower() + head[1:]
    sources = ", ".join(sorted({s.name for s in recipe.sources if s.name}))
    return f"{head} ({sources})" if head and sources else head or sources or recipe.name


def fit_model_domain(model_path: Path, samples: Sequence[D.Sample], split: np.ndarray, training_data: str,
                     cache: Path | None = None, components: int | None = None, threshold: float = 0.05,
                     command: str = "", known: KnownFeatures | None = None) -> tuple[DomainStats, dict[str, Any]]:
    """Fit on the training split, calibrate on the validation split, write ``domain.npz`` + sidecar entries."""
    spec = ModelSpec.load(model_path)
    spec = _without_domain(spec)
    clf = OnnxClassifier(spec, device="cpu", intra_op_threads=2)
    if "features" not in clf.output_names:
        raise ModelError(f"{spec.onnx_path.name} has no 'features' output; run `cellview domain upgrade` first.")
    train = [s for s, k in zip(samples, split, strict=True) if k == 0]
    val = [s for s, k in zip(samples, split, strict=True) if k == 1]
    if not train or not val:
        raise CellviewError("The split has no training or no validation images to fit domain statistics on.")
    tr = sample_features(clf, train, "train", cache, known=known)
    va = sample_features(clf, val, "val", cache, known=known)
    tr_labels = np.array([s.label for s in train])[tr.image]
    va_labels = np.array([s.label for s in val])[va.image]
    info = {"training_data": training_data, "n_fit_images": len(train), "n_validation_images": len(val),
            "split": "fitted on the training split's tiles; calibrated on the validation split's tiles and the "
                     "training tiles out of fold", "command": command}
    stats = fit_domain(tr.features, tr_labels, va.features, va_labels, va.quality, components=components,
                       threshold=threshold, info=info, train_sources=np.array([s.source for s in train])[tr.image],
                       train_groups=np.array([s.group for s in train])[tr.image], train_quality=tr.quality)
    write_domain(spec.onnx_path, stats)
    return stats, {"train_tiles": len(tr), "val_tiles": len(va)}


def _without_domain(spec: ModelSpec) -> ModelSpec:
    from dataclasses import replace

    return replace(spec, domain=None, domain_path=None, domain_sha256="")



# ----------------------------------------------------------------------------- upgrade


def upgrade_model(model_path: Path, check_tiles: np.ndarray | None = None) -> dict[str, Any]:
    """Add the explain outputs to a model (and its sibling FP16 copy); logits must stay bit-identical."""
    from cellview.analysis.onnx_graph import EXPLAIN_OUTPUTS, upgrade_onnx_file

    spec = ModelSpec.load(model_path)
    report: dict[str, Any] = {}
    onnxes = [spec.onnx_path] + [p for p in sorted(spec.onnx_path.parent.glob("*.onnx"))
                                 if p != spec.onnx_path and sidecar_for(p).exists()]
    for onnx in onnxes:
        side = sidecar_for(onnx)
        raw = json.loads(side.read_text(encoding="utf-8"))
        before_spec = ModelSpec.from_dict({**raw, "domain": None}, onnx, verify_sha256=True)
        p = before_spec.patch_size_pixels
        tiles = check_tiles if check_tiles is not None else \
            np.random.default_rng(0).integers(0, 256, (8, p, p, 3), dtype=np.uint8)
        before = OnnxClassifier(before_spec, device="cpu", intra_op_threads=2).logits(tiles)
        tmp = onnx.with_name(f".{onnx.name}.upgrade")
        upgrade_onnx_file(onnx, tmp)
        raw_new = {**raw, "onnx_sha256": sha256_file(tmp), "outputs": ["logits", *EXPLAIN_OUTPUTS]}
        after_spec = ModelSpec.from_dict({**raw_new, "domain": None}, tmp, verify_sha256=True)
        clf = OnnxClassifier(after_spec, device="cpu", intra_op_threads=2)
        after, cam = clf.run(tiles, (clf.output_name, "cam"))
        same = bool(np.array_equal(before, after))
        cam_gap = float(np.abs(cam.mean(axis=(2, 3)) - after).max())
        if not same:
            tmp.unlink(missing_ok=True)
            raise ModelError(f"Adding outputs to {onnx.name} changed its logits (max |Δ| "
                             f"{float(np.abs(before - after).max()):.3g}); the file is left as it was.")
        tmp.replace(onnx)
        raw_new["domain"] = raw.get("domain")
        if raw_new["domain"] is None:
            raw_new.pop("domain")
        atomic_write_text(side, json.dumps(raw_new, indent=2) + "\n")
        report[onnx.name] = {"logits_bit_identical": same, "cam_mean_vs_logits_max_abs": cam_gap,
                             "sha256": raw_new["onnx_sha256"], "tiles_checked": len(tiles)}
        _say(f"{onnx.name}: outputs {', '.join(clf.output_names)}; logits bit-identical on {len(tiles)} tiles; "
             f"max |mean(CAM) − logit| = {cam_gap:.1e}")
    return report


# ----------------------------------------------------------------------------- artefacts


INK_COLOURS = {"blue": (40, 70, 190), "green": (40, 150, 70), "black": (45, 45, 50)}
"""Marker pen colours (what the ink transmits, as RGB)."""


def ink_strokes(tile: np.ndarray, colour: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """2–4 marker strokes, 20–40 px wide and 70–90 % opaque, over a tile (ink absorbs: multiplicative)."""
    h, w = tile.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        pts = np.cumsum(rng.normal(0, w / 5, (5, 2)), axis=0) + rng.uniform(0, w, 2)
        cv2.polylines(mask, [pts.astype(np.int32)], False, 255, max(2, int(rng.integers(20, 41)) * w // 224))
    alpha = (mask.astype(np.float32) / 255.0 * rng.uniform(0.7, 0.9))[..., None]
    ink = np.asarray(colour, np.float32) / 255.0
    return np.clip(tile.astype(np.float32) * (1 - alpha + alpha * ink), 0, 255).astype(np.uint8)


def make_artefacts(tiles: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """Generated non-tissue or damaged tiles from in-domain tiles (deterministic for a seed).

    - glass: blank slide background (bright, faintly tinted, sensor noise, a few dust specks);
    - blur: the tile out of focus (Gaussian, σ 3–6 px at the model's scale);
    - ink: 2–4 marker strokes (blue, green or black; 20–40 px wide, 70–90 % opaque) over the tile;
    - fold: a band where the section lies folded over itself (optical density doubled).
    """
    rng = np.random.default_rng(seed)
    n, h, w, _ = tiles.shape
    out = np.empty_like(tiles)
    for i in range(n):
        t = tiles[i]
        if kind == "glass":
            base = rng.uniform(228, 248) + rng.normal(0, 3, 3)
            img = np.clip(base + rng.normal(0, 2.5, (h, w, 3)), 0, 255)
            for _ in range(int(rng.integers(0, 4))):
                cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 4)),
                           (120.0, 110.0, 120.0), -1)
            out[i] = img.astype(np.uint8)
        elif kind == "blur":
            out[i] = cv2.GaussianBlur(t, (0, 0), float(rng.uniform(3, 6)))
        elif kind == "ink":
            out[i] = ink_strokes(t, list(INK_COLOURS.values())[int(rng.integers(0, len(INK_COLOURS)))], rng)
        elif kind == "fold":
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            angle = rng.uniform(0, np.pi)
            d = (xx - w / 2) * np.cos(angle) + (yy - h / 2) * np.sin(angle) + rng.uniform(-w / 4, w / 4)
            half = rng.uniform(0.2, 0.3) * w
            band = cv2.GaussianBlur((np.abs(d) < half).astype(np.float32), (0, 0), 3)[..., None]
            od = -np.log(np.maximum(t.astype(np.float32), 1.0) / 255.0)
            folded = 255.0 * np.exp(-od * (1 + band))
            out[i] = np.clip(folded, 0, 255).astype(np.uint8)
        else:
            raise ValueError(f"unknown artefact kind {kind!r}")
    return out


ARTEFACTS = ("glass", "blur", "ink", "fold")


def slide_tiles(slide_path: Path, spec: ModelSpec, background: bool = False) -> np.ndarray:
    """The tissue tiles ``cellview analyze`` classifies on a slide (or its tissue-free tiles)."""
    from cellview.analysis.pipeline import plan_tiles
    from cellview.analysis.results import AnalysisParams
    from cellview.analysis.tiling import build_grid, read_tile
    from cellview.slides.opening import open_slide

    with open_slide(slide_path) as slide:
        tissue, grid = plan_tiles(slide, spec, AnalysisParams())
        if background:
            full = build_grid(slide, spec.patch_size_pixels, spec.spacing_um_px, tissue, tissue_threshold=0.0)
            keep = np.flatnonzero(full.tissue_fraction == 0)
            grid = full
        else:
            keep = np.arange(grid.n_tiles)
        return np.stack([read_tile(slide, grid, int(i)) for i in keep]) if len(keep) else \
            np.zeros((0, spec.patch_size_pixels, spec.patch_size_pixels, 3), np.uint8)


# ----------------------------------------------------------------------------- evaluation


def _set_figures(stats: DomainStats, ref: TileSet, other: TileSet) -> dict[str, Any]:
    if not len(other):
        return {"tiles": 0, "auroc": None, "auroc_features_only": None, "flagged_out_of_domain": None}
    s_in = stats.score(ref.features, quality=ref.quality)
    s_out = stats.score(other.features, quality=other.quality)
    d_in, d_out = stats.distance(ref.features), stats.distance(other.features)
    return {
        "tiles": len(other),
        "auroc": round(auroc(s_in, s_out), 4),
        "auroc_features_only": round(auroc(-d_in, -d_out), 4),
        "flagged_out_of_domain": round(float((~stats.in_domain(s_out)).mean()), 4),
    }


def evaluate_model_domain(model_path: Path, samples: Sequence[D.Sample], split: np.ndarray,
                          others: dict[str, Callable[[OnnxClassifier], TileSet]], cache: Path | None = None,
                          artefact_tiles: int = 300, known: KnownFeatures | None = None) -> dict[str, Any]:
    """AUROC of domain_score: the test split's tiles against each other set and generated artefacts."""
    spec = ModelSpec.load(model_path)
    stats = spec.domain
    if stats is None:
        raise ModelError(f"{spec.onnx_path.name} has no domain statistics; run `cellview domain fit` first.")
    clf = OnnxClassifier(spec, device="cpu", intra_op_threads=2)
    test = [s for s, k in zip(samples, split, strict=True) if k == 2]
    ref = sample_features(clf, test, "test", cache, known=known)
    s_ref = stats.score(ref.features, quality=ref.quality)
    sources = np.array([test[i].source for i in ref.image])
    report: dict[str, Any] = {
        "model": spec.name, "model_sha256": spec.onnx_sha256, "domain_sha256": spec.domain_sha256,
        "method": stats.info.get("method"), "components": stats.components, "threshold": stats.threshold,
        "fit_command": stats.info.get("command", ""),
        "in_domain_test": {
            "tiles": len(ref), "images": len(test),
            "in_domain_fraction": round(float(stats.in_domain(s_ref).mean()), 4),
            "per_source": {src: round(float(stats.in_domain(s_ref[sources == src]).mean()), 4)
                           for src in sorted(set(sources.tolist()))},
        },
        "sets": {},
    }
    for name, make in others.items():
        _say(f"domain evaluation: {name}")
        report["sets"][name] = _set_figures(stats, ref, make(clf))
    rng = np.random.default_rng(0)
    pick = [test[i] for i in sorted(rng.choice(len(test), min(len(test), artefact_tiles), replace=False))]
    base, _ = sample_tiles(pick, spec.spacing_um_px, spec.patch_size_pixels, max_per_image=1, seed=1,
                           reading=spec.reading)
    for k, kind in enumerate(ARTEFACTS):
        report["sets"][f"generated {kind}"] = _set_figures(stats, ref, run_tiles(clf, make_artefacts(base, kind, k)))
    return report


def report_markdown(report: dict[str, Any], command: str) -> str:
    """The model card's 'Out-of-domain detection' section."""
    ind = report["in_domain_test"]
    lines = [
        "## Out-of-domain detection",
        "",
        f"Every tile gets a `domain_score` (0–1, higher = more like the training data) and `in_domain` "
        f"(score ≥ {report['threshold']}). Method: {report['method']}; {report['components']} principal "
        "directions. Statistics: `domain.npz` (sha256 in `model.json`), fitted on the training split's tiles, "
        "calibrated on the validation split's tiles and the training tiles scored out of fold. Evaluated on the "
        "grouped **test** split (patients / near-duplicate groups never seen in fitting or calibration):",
        "",
        f"- In-domain test tiles kept in domain: **{ind['in_domain_fraction']:.1%}** of {ind['tiles']} tiles "
        f"({ind['images']} images)"
        + ("; per source " + ", ".join(f"{k} {v:.1%}" for k, v in ind["per_source"].items())
           if len(ind["per_source"]) > 1 else "") + ".",
        "",
        "| other material | tiles | AUROC (domain_score) | AUROC (features only) | flagged out of domain |",
        "|---|---|---|---|---|",
    ]
    for name, f in report["sets"].items():
        if not f["tiles"]:
            lines.append(f"| {name} | 0 | – | – | – |")
            continue
        lines.append(f"| {name} | {f['tiles']} | {f['auroc']:.3f} | {f['auroc_features_only']:.3f} | "
                     f"{f['flagged_out_of_domain']:.1%} |")
    lines += [
        "",
        "AUROC: probability that an in-domain test tile scores higher than a tile of the other set. "
        "'Features only' is the Mahalanobis distance without the tissue / sharpness / ink checks. Generated "
        "tiles are made from test tiles (glass; Gaussian blur σ 3–6 px; blue / green / black marker strokes; "
        "a band with doubled optical density for a fold). Limits of the method: docs/domain.md.",
        *([f"Statistics fitted with: `{report['fit_command']}`"]
          if report.get("fit_command") and report["fit_command"] != command else []),
        f"Reproduce: `{command}`",
    ]
    return "\n".join(lines) + "\n"


def update_card(card: Path, section: str, after: str = "") -> None:
    """Replace the card's section that ``section`` heads (its first line, e.g. '## Out-of-domain detection'); a
    new one goes after the section that starts with ``after`` when the card has it, else at the end."""
    text = card.read_text(encoding="utf-8") if card.exists() else ""
    head = section.splitlines()[0]
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        text = text[:start] + section + ("" if nxt < 0 else "\n" + text[nxt + 1:])
    elif after and after in text and (nxt := text.find("\n## ", text.index(after) + len(after))) >= 0:
        text = text[:nxt + 1] + section + "\n" + text[nxt + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(card, text)


# ----------------------------------------------------------------------------- command line


def _recipe(name_or_path: str, data_root: Path | None) -> D.Recipe:
    from cellview.train import RECIPES as recipes
    from cellview.train import default_data_dir
    path = Path(name_or_path)
    if not path.exists() and (recipes / f"{name_or_path}.json").exists():
        path = recipes / f"{name_or_path}.json"
    return D.load_recipe(path, data_root or default_data_dir())


def _split(args: Any) -> tuple[D.Recipe, list[D.Sample], np.ndarray]:
    if args.run:
        recipe, samples, split = split_from_run(args.run)
        if args.data_root:  # the run was made on another machine: re-root its image paths
            raise CellviewError("--data-root applies to --recipe only; a run folder records its image paths.")
        return recipe, samples, split
    if not args.recipe:
        raise CellviewError("Give the training run folder (--run RUN) or the recipe it was trained from (--recipe).")
    recipe = _recipe(args.recipe, args.data_root)
    samples, split, info = split_from_recipe(recipe, seed=args.seed, limit_per_class=args.limit_per_class,
                                             cache_dir=args.cache)
    groups = f"; {info['groups']} near-duplicate groups" if "groups" in info else ""
    _say(f"rebuilt the grouped split of {recipe.name}: {info['split_counts']}{groups}; "
         f"data sha256 {info['data_sha256'][:16]}…")
    return recipe, samples, split


def _others(args: Any, cache: Path | None) -> dict[str, Callable[[OnnxClassifier], TileSet]]:
    others: dict[str, Callable[[OnnxClassifier], TileSet]] = {}
    for item in args.other or []:
        name, _, mpp = item.partition("@")
        recipe = _recipe(name, args.data_root)
        samples = D.read_samples(recipe)
        override = float(mpp) if mpp else None
        label = ", ".join(sorted({s.source for s in samples}))
        label += f" read as {override:g} µm/px" if override else f" at {', '.join(sorted({f'{s.spacing_um_px:g}' for s in samples}))} µm/px"

        def make(clf: OnnxClassifier, samples: list[D.Sample] = samples, override: float | None = override,
                 tag: str = name.replace("/", "_")) -> TileSet:
            return sample_features(clf, samples, f"other_{tag}", cache, max_per_image=args.max_per_image,
                                   spacing_override=override)

        others[label] = make
    for slide in args.slide or []:
        path = Path(slide)
        others[f"{path.name} tissue tiles"] = lambda clf, path=path: run_tiles(clf, slide_tiles(path, clf.spec))
        others[f"{path.name} glass (tiles with no tissue)"] = \
            lambda clf, path=path: run_tiles(clf, slide_tiles(path, clf.spec, background=True))
    return others


def cmd_domain(args: Any) -> int:
    """``cellview domain upgrade|fit|evaluate`` (see the module docstring)."""
    from cellview.analysis.model_lookup import resolve_model

    try:
        model = resolve_model(args.model)
        if args.action == "upgrade":
            try:
                import onnx  # noqa: F401
            except ImportError:
                print("cellview: `cellview domain upgrade` needs the onnx package: pip install 'cellview[train]'",
                      file=sys.stderr)
                return 2
            upgrade_model(model)
            return 0
        recipe, samples, split = _split(args)
        cache = Path(args.cache) if args.cache else None
        if args.action == "fit":
            stats, n = fit_model_domain(model, samples, split, args.describe or domain_phrase(recipe), cache,
                                        args.components, command=_command_line())
            _say(f"domain statistics: {stats.components} principal directions of {stats.feature_dim} features, "
                 f"fitted on {n['train_tiles']} training tiles, calibrated on {stats.info['n_calibration_tiles']} "
                 f"held-out tiles ({stats.info['calibration']}); wrote {ModelSpec.load(model).domain_path}")
            if not (args.other or args.slide or args.card or args.out):
                return 0
        report = evaluate_model_domain(model, samples, split, _others(args, cache), cache)
        print(json.dumps(report, indent=2))
        if args.out:
            atomic_write_text(Path(args.out), json.dumps(report, indent=2) + "\n")
        if args.card:
            spec = ModelSpec.load(model)
            update_card(spec.onnx_path.parent / "MODEL_CARD.md", report_markdown(report, _command_line()))
    except (CellviewError, D.DataError) as exc:
        print(f"cellview: {exc}", file=sys.stderr)
        return 2
    return 0


def _command_line() -> str:
    """The command as typed, without the options that only name scratch files (--out, --cache)."""
    import shlex

    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a in ("--out", "--cache"):
            skip = True
            continue
        if a.startswith(("--out=", "--cache=")):
            continue
        args.append(a)
    return " ".join(shlex.quote(a) for a in ["cellview", *args])
