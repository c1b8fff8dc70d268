"""``cellview train``: cached frozen features → linear head → optional fine-tuning of the last blocks.

A run folder holds everything needed to resume, evaluate and export: the resolved recipe, the
samples with their groups and split, cached features, checkpoints and the final ``model.pt``.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shlex
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cellview.base.errors import CellviewError
from cellview.base.files import atomic_write, atomic_write_text
from cellview.train import data as D
from cellview.train.backbone import (
    Backbone,
    FeatureRunner,
    TileClassifier,
    build_backbone,
    pick_device,
    pooled_features_cpu,
)
from cellview.train.grouping import assign_groups
from cellview.train.metrics import balanced_accuracy, fit_temperature, image_probs
from cellview.train.splits import SPLITS, cross_split_near_copies, group_split, groups_straddling, random_split


@dataclass
class TrainConfig:
    arch: str = "efficientnet-lite0"
    views: int = 8
    max_views_per_image: int = 32
    head_epochs: int = 40
    head_lr: float = 2e-3
    weight_decay: float = 1e-3
    finetune_blocks: int = 0
    finetune_epochs: int = 4
    finetune_lr: float = 3e-4
    batch_size: int = 128
    balance: str = "category_source"
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    device: str = "auto"
    threads: int = 2
    limit_per_class: int = 0
    pretrained: bool = True
    cache_blocks: int = -1  # the cache holds activations entering the last N blocks; -1: finetune_blocks
    holdout: str = "split"  # "split": grouped train/val/test; "none": every image trains (fixed epochs)
    label_smoothing: float = 0.0
    group: str | None = None  # one grouping rule for every source (grouping.GROUP_RULES); None: each source's own

    @property
    def cache_depth(self) -> int:
        """Blocks between the cached activations and the pooled features (≥ the fine-tuned blocks)."""
        return self.finetune_blocks if self.cache_blocks < 0 else self.cache_blocks

    def check(self) -> None:
        if self.cache_depth < self.finetune_blocks:
            raise ValueError(f"cache_blocks ({self.cache_blocks}) must be at least finetune_blocks "
                             f"({self.finetune_blocks}): fine-tuned blocks must run after the cache")
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"balance must be one of {', '.join(BALANCE_MODES)}")
        if self.holdout not in ("split", "none"):
            raise ValueError("holdout must be 'split' or 'none'")


BALANCE_MODES = ("class", "class_source", "category_source", "category_source_sqrt", "source_category")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- run-state files


class RunError(CellviewError):
    """A run folder's saved state (JSON, checkpoint, model) is damaged or does not fit this run."""


# What np.load / torch.load raise on a truncated or garbled file (torch: RuntimeError from its zip
# reader, OSError, EOFError or UnpicklingError depending on where the file ends).
_UNREADABLE = (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError)


def save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda fh: np.save(fh, array))


def save_torch(path: Path, obj: Any) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def load_npy(path: Path, mmap: bool = False) -> np.ndarray | None:
    """A cached array, or None (with a note on stderr) when it is damaged: a cache is recomputed, not trusted."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except _UNREADABLE as exc:
        _say(f"cache {path.name} is damaged ({exc}); computing it again")
        return None


def load_torch(path: Path, what: str, **kwargs: Any) -> Any:
    """``torch.load`` with a damaged file reported as a RunError saying what to do (``what``)."""
    try:
        return torch.load(path, weights_only=False, **kwargs)
    except _UNREADABLE as exc:
        raise RunError(f"Cannot read {path}: it is damaged (an interrupted write?). {what}", str(exc)) from exc


@dataclass
class PhaseCheckpoint:
    """Resumable state of one training phase (linear head or fine-tuning), saved after every epoch.

    ``parts`` maps checkpoint keys to objects with ``state_dict`` / ``load_state_dict`` (model or
    head, optimiser, scheduler); ``rng`` is the phase's shuffling generator. ``path`` None: no checkpoint.
    """

    path: Path | None
    parts: dict[str, Any]
    rng: torch.Generator
    desc: str
    signature: str = ""  # the settings and data of this phase: a checkpoint of other ones is not resumed

    def resume(self) -> tuple[int, float, dict[str, torch.Tensor] | None]:
        """Restore the parts; (epochs done, best validation score, best weights), from scratch when absent."""
        if self.path is None or not self.path.exists():
            return 0, -1.0, None
        hint = "Delete it to restart this step."
        state = load_torch(self.path, hint)
        if isinstance(state, dict) and state.get("signature", "") != self.signature:
            _say(f"{self.desc}: the checkpoint was written with other settings or data; training from the start")
            return 0, -1.0, None
        try:
            for key, part in self.parts.items():
                part.load_state_dict(state[key])
            self.rng.set_state(state["rng"])
            start, best, best_state = state["epoch"], state["best"], state["best_state"]
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise RunError(f"Cannot resume from {self.path}: it was written with other settings. {hint}",
                           str(exc)) from exc
        _say(f"{self.desc}: resuming after epoch {start}")
        return start, best, best_state

    def save(self, epoch: int, best: float, best_state: dict[str, torch.Tensor] | None) -> None:
        if self.path is not None:
            save_torch(self.path, {**{key: part.state_dict() for key, part in self.parts.items()},
                                   "rng": self.rng.get_state(), "epoch": epoch, "best": best, "best_state": best_state,
                                   "signature": self.signature})


def _signature(cfg: Any, y: np.ndarray, w: np.ndarray, shape: tuple[int, ...]) -> str:
    """Settings (all but device and threads), labels, loss weights and data shape of one training phase."""
    import hashlib

    settings = {k: v for k, v in asdict(cfg).items() if k not in ("device", "threads", "group")}  # groups: in the data
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for arr in (np.asarray(y, np.int64), np.asarray(w, np.float32), np.asarray(shape, np.int64)):
        digest.update(arr.tobytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- feature caching


def _views_for(s: D.Sample, recipe: D.Recipe, cfg: TrainConfig, rng_seed: int) -> np.ndarray:
    img, src = D.as_stated(D.read_rgb(s.path), s.spacing_um_px, recipe.spacing_um_px, recipe.patch_size,
                           recipe.reading)
    factor = src / recipe.spacing_um_px
    area = img.shape[0] * img.shape[1] * factor * factor / recipe.patch_size**2
    n = int(min(cfg.views * max(1, round(area)), cfg.max_views_per_image))
    return D.train_views(img, src, recipe.spacing_um_px, recipe.patch_size, n,
                         np.random.default_rng(rng_seed), D.Augment())


def _tiles_for(s: D.Sample, recipe: D.Recipe, transform: Callable[[np.ndarray], np.ndarray] | None = None,
               stain: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """The tiles ``cellview analyze`` classifies for this image (``transform``: applied to the image first)."""
    img = D.read_rgb(s.path)
    if transform is not None:
        img = transform(img)
    return D.analysis_tiles(img, s.spacing_um_px, recipe.spacing_um_px, recipe.patch_size, stain, recipe.reading)


def extract(samples: list[D.Sample], make: Callable[[int, D.Sample], np.ndarray], runner: Callable[[np.ndarray], np.ndarray],
            desc: str, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Run ``make`` (tiles of one sample) for every sample, then the frozen network; (features, sample index)."""
    feats: list[np.ndarray] = []
    index: list[np.ndarray] = []
    buf: list[np.ndarray] = []
    buf_idx: list[int] = []

    def flush() -> None:
        if buf:
            feats.append(runner(np.concatenate(buf)).astype(np.float16))
            index.append(np.concatenate([np.full(len(b), i) for b, i in zip(buf, buf_idx, strict=True)]))
            buf.clear()
            buf_idx.clear()

    with ThreadPoolExecutor(max_workers=2) as pool:
        for i, tiles in enumerate(tqdm(_bounded_map(pool, make, samples), total=len(samples),
                                       desc=desc, leave=False, file=sys.stderr)):
            buf.append(tiles)
            buf_idx.append(i)
            if sum(len(b) for b in buf) >= batch:
                flush()
        flush()
    return np.concatenate(feats), np.concatenate(index).astype(np.int64)


def _bounded_map(pool: ThreadPoolExecutor, make: Callable[[int, D.Sample], np.ndarray], samples: list[D.Sample],
                 ahead: int = 8) -> Iterator[np.ndarray]:
    """``pool.map`` in order with at most ``ahead`` samples' tiles waiting: memory stays bounded when the
    network is slower than the readers (``Executor.map`` would queue every result)."""
    pending: deque[Future[np.ndarray]] = deque()
    for i, s in enumerate(samples):
        pending.append(pool.submit(make, i, s))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# ----------------------------------------------------------------------------- groups & splits


def dup_embeddings(samples: list[D.Sample], patch: int, runner: Callable[[np.ndarray], np.ndarray],
                   cache: Path | None = None) -> np.ndarray:
    """Each image's frozen-network embedding averaged over its 8 flips / 90° rotations (near-duplicate groups),
    cached in the run (``cache``) for the same images."""
    import hashlib

    def make(_: int, s: D.Sample) -> np.ndarray:
        img = cv2.resize(D.read_rgb(s.path), (patch, patch), interpolation=cv2.INTER_AREA)
        return np.stack([D.dihedral(img, k) for k in range(8)])

    key = hashlib.sha256("\n".join(s.path for s in samples).encode()).hexdigest()[:12]
    cached = cache / f"dup_embeddings_{key}.npy" if cache else None
    emb = load_npy(cached) if cached is not None and cached.exists() else None
    if emb is None or len(emb) != len(samples):
        feats, index = extract(samples, make, runner, "embeddings for near-duplicate groups", batch=64)
        feats = feats.astype(np.float32)
        if feats.ndim > 2:
            feats = feats.mean(axis=(2, 3))
        emb = np.zeros((len(samples), feats.shape[1]), np.float32)
        np.add.at(emb, index, feats)
        np.divide(emb, np.maximum(np.bincount(index, minlength=len(samples)), 1)[:, None], out=emb)
        if cached is not None:
            save_npy(cached, emb)
    return emb


# ----------------------------------------------------------------------------- heads


def sample_weights(labels: np.ndarray, sources: np.ndarray, mode: str,
                   class_categories: list[str] | None = None) -> np.ndarray:
    """Per-item loss weights (mean 1), so no class and no source drowns another.

    ``class``: every class the same total. ``class_source``: that, and within a class sources ∝ √size.
    ``category_source``: every category (malignant / benign / normal) the same total, within a category
    classes ∝ √size, within a class every source the same share. ``category_source_sqrt``: the same with
    sources ∝ √size. ``source_category``: every source the same total, within a source every category it
    has, within that classes ∝ √size — no source can teach a category prior of its own. Weighting
    categories first matters: with 3 benign classes, 2 malignant and 1 normal, equal classes give normal
    only a sixth of the loss.
    """
    labels = np.asarray(labels)
    sources = np.asarray(sources)
    w = np.zeros(len(labels), np.float64)
    if not len(w):
        return w.astype(np.float32)
    if mode == "source_category":
        if class_categories is None:
            raise ValueError(f"balance {mode!r} needs the classes' categories")
        cats = np.array([class_categories[int(c)] for c in labels])
        srcs = sorted(set(sources.tolist()))
        for src in srcs:
            in_s = sources == src
            present = sorted(set(cats[in_s].tolist()))
            for cat in present:
                in_sc = in_s & (cats == cat)
                cls, counts = np.unique(labels[in_sc], return_counts=True)
                share = np.sqrt(counts) / np.sqrt(counts).sum()
                for c, n, sh in zip(cls, counts, share, strict=True):
                    w[in_sc & (labels == c)] = sh / n / len(present) / len(srcs)
        return (w / w.mean()).astype(np.float32)
    if mode in ("class", "class_source"):
        groups = {int(c): 1.0 for c in np.unique(labels)}
        class_share = {c: 1.0 / len(groups) for c in groups}
    else:
        if class_categories is None:
            raise ValueError(f"balance {mode!r} needs the classes' categories")
        cats = np.array([class_categories[int(c)] for c in labels])
        present = sorted(set(cats.tolist()))
        class_share = {}
        for cat in present:
            cls, counts = np.unique(labels[cats == cat], return_counts=True)
            share = np.sqrt(counts) / np.sqrt(counts).sum() / len(present)
            class_share.update({int(c): float(sh) for c, sh in zip(cls, share, strict=True)})
    src_power = {"class": None, "class_source": 0.5, "category_source": 0.0, "category_source_sqrt": 0.5}[mode]
    for c, c_share in class_share.items():
        in_c = labels == c
        if src_power is None:
            w[in_c] = c_share / in_c.sum()
            continue
        srcs, counts = np.unique(sources[in_c], return_counts=True)
        share = counts.astype(np.float64) ** src_power
        share /= share.sum()
        for src, n, sh in zip(srcs, counts, share, strict=True):
            w[in_c & (sources == src)] = c_share * sh / n
    return (w / w.mean()).astype(np.float32)


def train_linear(x: np.ndarray, y: np.ndarray, w: np.ndarray, num_classes: int, cfg: TrainConfig,
                 val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, ckpt: Path | None = None,
                 desc: str = "linear head") -> nn.Linear:
    """Weighted-softmax linear head on cached features; keeps the epoch with best val balanced accuracy.

    Runs on one thread: the matrices are small and extra OpenMP threads only spin against other work.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_linear(x, y, w, num_classes, cfg, val, ckpt, desc)
    finally:
        torch.set_num_threads(threads)


def _train_linear(x: np.ndarray, y: np.ndarray, w: np.ndarray, num_classes: int, cfg: TrainConfig,
                  val: tuple[np.ndarray, np.ndarray, np.ndarray] | None, ckpt: Path | None, desc: str) -> nn.Linear:
    g = torch.Generator().manual_seed(cfg.seed)
    head = nn.Linear(x.shape[1], num_classes)
    smooth = float(getattr(cfg, "label_smoothing", 0.0))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.head_epochs)
    xt, yt, wt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y), torch.from_numpy(w)
    checkpoint = PhaseCheckpoint(ckpt, {"head": head, "opt": opt, "sched": sched}, g, desc,
                                 _signature(cfg, y, w, x.shape))
    start, best, best_state = checkpoint.resume()
    for epoch in range(start, cfg.head_epochs):
        perm = torch.randperm(len(xt), generator=g)
        total = 0.0
        bar = tqdm(range(0, len(perm), cfg.batch_size * 2), desc=f"{desc} epoch {epoch + 1}/{cfg.head_epochs}",
                   leave=False, file=sys.stderr, disable=desc != "linear head")
        for i in bar:
            b = perm[i:i + cfg.batch_size * 2]
            loss = (nn.functional.cross_entropy(head(xt[b]), yt[b], reduction="none", label_smoothing=smooth)
                    * wt[b]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        sched.step()
        score = -total
        if val is not None:
            score = _val_balanced_accuracy(head, *val)
        if score >= best:
            best, best_state = score, {k: v.clone() for k, v in head.state_dict().items()}
        checkpoint.save(epoch + 1, best, best_state)
    if best_state is not None:
        head.load_state_dict(best_state)
    return head


def _val_balanced_accuracy(head: nn.Module, feats: np.ndarray, tile_sample: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        logits = head(torch.from_numpy(feats.astype(np.float32))).numpy()
    probs, ids = image_probs(logits, tile_sample, 1.0)
    return balanced_accuracy(labels[ids], probs.argmax(1))


# ----------------------------------------------------------------------------- the run


class Run:
    """A training run folder (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.cache = self.path / "cache"

    def save_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(obj, indent=2, default=_json_default) + "\n")

    def load_json(self, name: str) -> Any:
        path = self.path / name
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunError(f"Cannot read {path}: it is missing or damaged.", str(exc)) from exc

    def recipe(self) -> D.Recipe:
        raw = self.load_json("recipe.json")
        return D.recipe_from_dict(raw, Path("/"))

    def samples(self) -> tuple[list[D.Sample], np.ndarray]:
        rows = self.load_json("samples.json")
        samples = [D.Sample(**{k: r[k] for k in D.Sample.__dataclass_fields__}) for r in rows]
        return samples, np.array([SPLITS.index(r["split"]) for r in rows])

    def config(self) -> TrainConfig:
        raw = self.load_json("summary.json")["config"]
        raw["fractions"] = tuple(raw["fractions"])
        return TrainConfig(**raw)

    def cached(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Cached features and their sample index; None when missing or damaged (so they are recomputed)."""
        f, i = self.cache / f"{name}.npy", self.cache / f"{name}_index.npy"
        if not (f.exists() and i.exists()):
            return None
        feats, index = load_npy(f, mmap=True), load_npy(i)
        if feats is None or index is None:
            return None
        if len(feats) != len(index):
            _say(f"cached {name} features and index disagree ({len(feats)} vs {len(index)} rows); computing them again")
            return None
        return feats, index

    def features(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Cached features that must be there (after ``cache_features``)."""
        got = self.cached(name)
        if got is None:
            raise RunError(f"The cached {name} features of {self.path} are missing or damaged; run cellview train "
                           "again with the same options and this --out to recompute them.")
        return got

    def store(self, name: str, feats: np.ndarray, index: np.ndarray) -> None:
        save_npy(self.cache / f"{name}.npy", feats)
        save_npy(self.cache / f"{name}_index.npy", index)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def build_model(recipe: D.Recipe, cfg: TrainConfig, pretrained: bool | None = None) -> tuple[Backbone, TileClassifier]:
    """The network, split at the cache point (``cfg.cache_depth`` blocks in the tail)."""
    bb = build_backbone(cfg.arch, recipe.patch_size, cfg.cache_depth,
                        pretrained=cfg.pretrained if pretrained is None else pretrained)
    return bb, TileClassifier(bb, len(recipe.classes))


def pooled(tail: nn.Module, feats: np.ndarray, cache_depth: int, device: str, batch: int = 256) -> np.ndarray:
    """Pooled features from cached frozen outputs (runs ``tail`` when the cache holds trunk activations)."""
    if cache_depth == 0:
        return np.asarray(feats, dtype=np.float32)
    out = []
    tail.eval()
    with torch.inference_mode():
        for i in range(0, len(feats), batch):
            x = torch.from_numpy(np.asarray(feats[i:i + batch], dtype=np.float32)).to(device)
            out.append(tail(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def pretrained_pooled(run: Run, name: str, recipe: D.Recipe, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of cached tiles/views through the pretrained (unchanged) tail, cached once per run.

    Every linear head, in training and in each evaluation fold, starts from these.
    """
    feats, index = run.features(name)
    if cfg.cache_depth == 0:
        return feats, index
    got = run.cached(f"{name}_pooled")
    if got is not None and len(got[1]) == len(index):
        return got
    t = time.time()
    tail = build_backbone(cfg.arch, recipe.patch_size, cfg.cache_depth, pretrained=cfg.pretrained).tail
    if pick_device(cfg.device) == "cpu":
        out = pooled_features_cpu(tail, feats, run.cache, f"{cfg.arch}_ft{cfg.cache_depth}", cfg.threads)
    else:
        out = pooled(tail, feats, cfg.cache_depth, pick_device(cfg.device))
    out = out.astype(np.float16)
    run.store(f"{name}_pooled", out, index)
    _say(f"pooled {len(out)} cached {name} activations through the pretrained tail in {time.time() - t:.0f} s")
    return run.features(f"{name}_pooled")


def train_set(cfg: TrainConfig) -> str:
    """The cached tiles the head trains on: augmented views, or with ``views == 0`` the analysis tiles.

    For a linear head on frozen features, training on exactly the tiles ``cellview analyze`` classifies
    scored higher than stain / scale-jittered views in both leave-one-source-out and grouped CV (colon-he).
    """
    return "eval" if cfg.views == 0 else "train"


def cache_features(run: Run, recipe: D.Recipe, samples: list[D.Sample], cfg: TrainConfig, runner: FeatureRunner) -> None:
    """The frozen network's outputs for every evaluation tile (and the augmented views when they train the head),
    with the evaluation tiles' pixel checks (``domain.tile_quality``): ``cellview export`` fits the domain
    statistics of a linear-head run from them instead of running every tile again."""
    from cellview.analysis.domain import tile_quality

    if run.cached("eval") is None or load_npy(run.cache / "eval_quality.npy") is None:
        t = time.time()
        quality: dict[int, np.ndarray] = {}

        def make(k: int, s: D.Sample) -> np.ndarray:
            tiles = _tiles_for(s, recipe)
            quality[k] = tile_quality(tiles) if len(tiles) else np.zeros((0, 3), np.float32)
            return tiles

        f, i = extract(samples, make, runner, "features: evaluation tiles")
        run.store("eval", f, i)
        save_npy(run.cache / "eval_quality.npy", np.concatenate([quality[k] for k in range(len(samples))]))
        _say(f"cached {len(f)} evaluation tiles in {time.time() - t:.0f} s")
    if train_set(cfg) == "train" and run.cached("train") is None:
        t = time.time()
        f, i = extract(samples, lambda k, s: _views_for(s, recipe, cfg, cfg.seed * 1_000_003 + k), runner,
                       "features: augmented training views")
        run.store("train", f, i)
        _say(f"cached {len(f)} augmented views in {time.time() - t:.0f} s")


def tile_logits(model: TileClassifier, feats: np.ndarray, cache_depth: int) -> np.ndarray:
    """Logits of cached tiles (trunk activations or pooled features) under ``model``'s tail and head."""
    x = pooled(model.tail, feats, cache_depth, "cpu")
    with torch.inference_mode():
        return model.fc(torch.from_numpy(x)).numpy()


def tile_logits_from_cache(run: Run, model: TileClassifier, cache_depth: int, split_id: int | None,
                           split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the cached evaluation tiles of one split (all when split_id is None)."""
    ef, ei = run.features("eval")
    keep = np.ones(len(ei), bool) if split_id is None else split[ei] == split_id
    return tile_logits(model, ef[keep], cache_depth), ei[keep]


@dataclass
class FitData:
    """What one fit needs from a run: cached views/tiles, their pooled features, labels and sources."""

    train_feats: np.ndarray  # cache-level activations of the augmented views
    train_index: np.ndarray
    train_pooled: np.ndarray
    eval_feats: np.ndarray  # cache-level activations of the evaluation tiles
    eval_index: np.ndarray
    eval_pooled: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    class_categories: list[str]

    @classmethod
    def from_run(cls, run: Run, recipe: D.Recipe, samples: list[D.Sample], cfg: TrainConfig) -> FitData:
        tf, ti = run.features(train_set(cfg))
        ef, ei = run.features("eval")
        tp, _ = pretrained_pooled(run, train_set(cfg), recipe, cfg)
        ep, _ = pretrained_pooled(run, "eval", recipe, cfg)
        return cls(tf, ti, tp, ef, ei, ep, np.array([s.label for s in samples]), np.array([s.source for s in samples]),
                   [c.category for c in recipe.classes])


def fit_model(model: TileClassifier, data: FitData, train_samples: np.ndarray, cfg: TrainConfig, device: str,
              val_samples: np.ndarray | None = None, ckpt_dir: Path | None = None, desc: str = "") -> TileClassifier:
    """The recipe's training on the samples marked in ``train_samples`` (bool per sample).

    Linear head on the pretrained pooled features, then (``cfg.finetune_blocks``) the last blocks and
    the head fine-tuned. With ``val_samples`` the best epoch by validation balanced accuracy is kept;
    without, the last (the epochs are fixed by the recipe). One function for the shipped model and
    every evaluation fold, so the figures describe the recipe that made the weights.
    """
    tr = train_samples[data.train_index]
    y = data.labels[data.train_index[tr]]
    w = sample_weights(y, data.sources[data.train_index[tr]], cfg.balance, data.class_categories)
    val = None
    if val_samples is not None and val_samples.any():
        va = val_samples[data.eval_index]
        val = (np.asarray(data.eval_pooled[va], np.float32), data.eval_index[va], data.labels)
    head_ckpt = ckpt_dir / "head.ckpt" if ckpt_dir else None
    model.fc = train_linear(np.asarray(data.train_pooled[tr], np.float32), y, w, model.fc.out_features, cfg, val,
                            head_ckpt, f"linear head{desc}")
    if cfg.finetune_blocks:
        finetune(model, data, train_samples, cfg, device, val_samples, ckpt_dir / "finetune.ckpt" if ckpt_dir else None,
                 desc)
    return model.eval()


def _frozen_tail_blocks(model: TileClassifier, cfg: TrainConfig) -> list[nn.Module]:
    """Tail blocks between the cache point and the fine-tuned blocks: run, never trained."""
    n = cfg.cache_depth - cfg.finetune_blocks
    return list(model.tail.blocks[:n]) if n else []


def finetune(model: TileClassifier, data: FitData, train_samples: np.ndarray, cfg: TrainConfig, device: str,
             val_samples: np.ndarray | None = None, ckpt: Path | None = None, desc: str = "") -> None:
    """Train the last blocks + head on cached trunk activations (BN statistics stay frozen)."""
    labels = data.labels
    tf, ti, ef, ei = data.train_feats, data.train_index, data.eval_feats, data.eval_index
    tr = np.nonzero(train_samples[ti])[0]
    w = torch.from_numpy(sample_weights(labels[ti[tr]], data.sources[ti[tr]], cfg.balance, data.class_categories))
    va = val_samples[ei] if val_samples is not None and val_samples.any() else None
    frozen = _frozen_tail_blocks(model, cfg)
    for block in frozen:
        block.requires_grad_(False)
    trainable = [p for p in model.tail.parameters() if p.requires_grad]
    params = [{"params": trainable, "lr": cfg.finetune_lr},
              {"params": model.fc.parameters(), "lr": cfg.finetune_lr * 3}]
    opt = torch.optim.AdamW(params, weight_decay=1e-4)
    steps = cfg.finetune_epochs * int(np.ceil(len(tr) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[cfg.finetune_lr, cfg.finetune_lr * 3],
                                                total_steps=max(steps, 1), pct_start=0.15)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    checkpoint = PhaseCheckpoint(ckpt, {"model": model, "opt": opt, "sched": sched}, g, f"fine-tuning{desc}",
                                 _signature(cfg, labels[ti[tr]], w.numpy(), tf.shape))
    model.to(device)  # before resuming: the optimiser's loaded state goes to its parameters' current device
    start, best, best_state = checkpoint.resume()
    for epoch in range(start, cfg.finetune_epochs):
        model.train()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        for block in frozen:
            block.eval()  # no drop-connect in blocks that are not trained
        perm = tr[torch.randperm(len(tr), generator=g).numpy()]
        bar = tqdm(range(0, len(perm), cfg.batch_size), desc=f"fine-tune{desc} epoch {epoch + 1}/{cfg.finetune_epochs}",
                   file=sys.stderr, leave=False)
        for i in bar:
            b = np.sort(perm[i:i + cfg.batch_size])
            x = torch.from_numpy(np.asarray(tf[b], dtype=np.float32)).to(device)
            y = torch.from_numpy(labels[ti[b]]).to(device)
            wb = w[np.searchsorted(tr, b)].to(device)
            logits = model.fc(model.dropout(model.tail(x)))
            loss = (nn.functional.cross_entropy(logits, y, reduction="none", label_smoothing=cfg.label_smoothing)
                    * wb).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        model.eval()
        if va is not None:
            model.cpu()
            score = _val_balanced_accuracy(model.fc, pooled(model.tail, ef[va], cfg.cache_depth, "cpu"), ei[va], labels)
            model.to(device)
            _say(f"fine-tune{desc} epoch {epoch + 1}: val balanced accuracy {score:.3f}")
        else:
            score = float(epoch)  # no validation: the last epoch is kept
        if score >= best:
            best = score
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        checkpoint.save(epoch + 1, best, best_state)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.cpu().eval()


def run_training(recipe: D.Recipe, out: Path, cfg: TrainConfig, command: str | None = None) -> Path:
    """The whole ``cellview train`` flow; returns the run folder (``model.pt`` inside)."""
    t0 = time.time()
    cfg.check()
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    run = Run(out)
    run.path.mkdir(parents=True, exist_ok=True)
    run.save_json("recipe.json", recipe.to_json())
    samples = D.read_samples(recipe)
    if cfg.limit_per_class:
        rng = np.random.default_rng(cfg.seed)
        keep: list[D.Sample] = []
        for c in range(len(recipe.classes)):
            idx = [i for i, s in enumerate(samples) if s.label == c]
            keep += [samples[i] for i in sorted(rng.permutation(idx)[: cfg.limit_per_class])]
        samples = keep
    labels = np.array([s.label for s in samples])
    present = sorted(set(labels.tolist()))
    if len(present) < 2:
        raise D.DataError("The training data holds fewer than two of the model's classes.")
    _say(f"{len(samples)} images, {len(recipe.classes)} classes, device {device}")
    bb, model = build_model(recipe, cfg)
    runner = FeatureRunner(bb, recipe.patch_size, run.cache, device, cfg.threads)

    summary: dict[str, Any] = {"config": asdict(cfg), "command": command, "device": device, "run_dir": str(out)}
    previous = run.load_json("summary.json") if (run.path / "summary.json").exists() else {}
    summary["invocations"] = previous.get("invocations", [])
    if (run.path / "samples.json").exists():
        samples, split = run.samples()
        summary.update({k: v for k, v in previous.items() if k in ("grouping", "data_sha256")})
    else:
        samples, grouping, emb = assign_groups(
            samples, recipe, lambda part: dup_embeddings(part, recipe.patch_size, runner, run.cache), cfg.group, _say)
        if any(r != "near-duplicates" for r in grouping["rules"].values()):
            emb = None  # the leak gauge below compares every image's embedding
        if cfg.holdout == "none":
            split = np.zeros(len(samples), np.int64)
        else:
            split = group_split(labels, [s.group for s in samples], cfg.fractions, cfg.seed)
        bad = groups_straddling(split, [s.group for s in samples])
        if bad:
            raise RuntimeError(f"grouped split leaks groups {bad[:5]}")
        leaky = random_split(labels, cfg.fractions, cfg.seed)
        grouping["leaky_random_split_groups_straddling"] = len(groups_straddling(leaky, [s.group for s in samples]))
        if emb is not None and cfg.holdout != "none":
            grouping["test_images_with_train_copy_sim_0.95"] = {
                "grouped": round(cross_split_near_copies(emb, split), 4),
                "leaky_random": round(cross_split_near_copies(emb, leaky), 4)}
        summary["grouping"] = grouping
        t = time.time()
        summary["data_sha256"] = D.data_checksum(samples, _common_root(samples))
        _say(f"data checksum {summary['data_sha256'][:16]}… ({time.time() - t:.0f} s)")
        rows = [{**asdict(s), "split": SPLITS[k], "leaky_split": SPLITS[j]}
                for s, k, j in zip(samples, split, leaky, strict=True)]
        run.save_json("samples.json", rows)
    summary["split_counts"] = {
        SPLITS[k]: {recipe.class_names[c]: int(((split == k) & (labels == c)).sum()) for c in present}
        for k in range(3)
    }
    summary["split_groups"] = {SPLITS[k]: len({s.group for s, sp in zip(samples, split, strict=True) if sp == k})
                               for k in range(3)}
    run.save_json("summary.json", summary)

    cache_features(run, recipe, samples, cfg, runner)
    t = time.time()
    data = FitData.from_run(run, recipe, samples, cfg)
    fit_model(model, data, split == 0, cfg, device, split == 1, run.path)
    _say(f"model trained in {time.time() - t:.0f} s")

    temperature = 1.0
    summary.pop("val_image_accuracy", None)
    if (split == 1).any():
        logits, tile_sample = tile_logits_from_cache(run, model, cfg.cache_depth, split_id=1, split=split)
        temperature = fit_temperature(logits, labels[tile_sample], tile_sample) if len(logits) else 1.0
        probs, ids = image_probs(logits, tile_sample, temperature)
        summary["val_image_accuracy"] = float((probs.argmax(1) == labels[ids]).mean()) if len(ids) else None
    summary["temperature"] = temperature
    summary["train_seconds"] = round(time.time() - t0, 1)
    summary["invocations"] = [*summary["invocations"], {"command": command, "seconds": summary["train_seconds"]}]
    summary["train_seconds_total"] = round(sum(i["seconds"] for i in summary["invocations"]), 1)
    save_torch(run.path / "model.pt", {"state_dict": model.state_dict(), "arch": cfg.arch, "patch": recipe.patch_size,
                                       "finetune_blocks": cfg.finetune_blocks, "cache_blocks": cfg.cache_depth,
                                       "class_names": recipe.class_names,
                                       "temperature": temperature, "mean": bb.mean, "std": bb.std})
    run.save_json("summary.json", summary)
    _say(f"done in {summary['train_seconds']:.0f} s: temperature {temperature:.3f}; run folder {run.path}")
    return run.path


def _common_root(samples: list[D.Sample]) -> Path:
    return Path(os.path.commonpath([s.path for s in samples])).parent


def load_model(run: Run) -> tuple[D.Recipe, TrainConfig, TileClassifier, dict[str, Any]]:
    recipe, cfg = run.recipe(), run.config()
    state = load_torch(run.path / "model.pt", "Train again with this --out to rewrite it.", map_location="cpu")
    _, model = build_model(recipe, cfg, pretrained=False)
    model.load_state_dict(state["state_dict"])
    return recipe, cfg, model.eval(), state


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["cellview", *sys.argv[1:]])
