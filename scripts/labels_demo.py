"""Labelling and *Adapt model…* in the real viewer, on real tissue the base model has never seen.

    python scripts/labels_demo.py --run RUN [--source ebhi_seg] [--per-category 5] [--out docs]

A "new lab" honestly: the base model is the colon recipe's leave-one-source-out fold trained without
``--source`` (the fold's head swapped into colon-he's ONNX, with out-of-domain statistics fitted on the
other sources, as ``cellview evaluate --adaptation`` does), and the slide is a mosaic of that source's
images (rows malignant / benign / normal, images from different patients, at the source's µm/px).
The first ``--per-category`` images of each row are labelled by picking their tiles (as Shift+drag
does) and pressing the category's key; then *Adapt model…* runs, its before / after dialog is shot,
and the slide is re-analysed with the adapted model.

Writes ``screenshot_labels.png`` (labels drawn, the Labels card), ``screenshot_adapt.png`` (the
before / after dialog) and ``screenshot_adapted.png`` (the re-analysed slide) to ``--out``, and the
mosaic slide and base model to ``--work``. Needs the ``train`` extra (the fold weights are torch files).
On a (virtual) X display the pictures are captures of the screen; else they are rendered offscreen.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CATS = ("malignant", "benign", "normal")


def base_model(run: Path, source: str, folder: Path) -> Path:
    """colon-he's network with the LOSO fold's head (trained without ``source``) and the fold's domain statistics."""
    import onnx
    import torch

    from cellview.analysis.domain_store import write_domain
    from cellview.analysis.model_lookup import resolve_model
    from cellview.analysis.model_spec import sha256_file
    from cellview.analysis.onnx_graph import replace_linear_head
    from cellview.train.adaptation import eval_quality, fold_domain
    from cellview.train.protocol import fold_stem, make_folds
    from cellview.train.train import Run, pretrained_pooled

    r = Run(run)
    recipe, cfg = r.recipe(), r.config()
    samples, _ = r.samples()
    fold = next(f for f in make_folds(samples, "loso") if f.name == f"without {source}")
    state = torch.load(fold_stem(run / "folds", cfg, fold).with_suffix(".pt"), map_location="cpu", weights_only=True)
    shipped = resolve_model("colon-he")
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "model.onnx"
    onnx_path.write_bytes(replace_linear_head(onnx.load(str(shipped)), state["fc.weight"].numpy(),
                                              state["fc.bias"].numpy()).SerializeToString())
    side = json.loads(shipped.with_suffix(".json").read_text())
    side.pop("domain", None)
    side.update({"name": f"colon-he-without-{source}", "onnx_sha256": sha256_file(onnx_path),
                 "description": f"colon-he's recipe trained without {source} (its leave-one-source-out fold)",
                 "training_data": "the colon sources but " + source})
    (folder / "model.json").write_text(json.dumps(side, indent=2))
    feats, index = pretrained_pooled(r, "eval", recipe, cfg)
    quality = eval_quality(r, recipe, samples)
    labels = np.array([s.label for s in samples])[index]
    sources = np.array([s.source for s in samples])
    groups = np.array([s.group for s in samples])[index]
    stats = fold_domain(np.asarray(feats, np.float32), quality, labels, sources[index], groups,
                        sources[index] != source, cfg.seed)
    from dataclasses import replace

    stats = replace(stats, info={**stats.info, "training_data": "colon / colorectal H&E (the other sources)"})
    write_domain(onnx_path, stats)
    (folder / "MODEL_CARD.md").write_text(f"# {side['name']}\n\nThe colon recipe trained without {source}: a stand-in "
                                          "for a model that has never seen a lab's slides (scripts/labels_demo.py).\n")
    return onnx_path


def mosaic(run: Path, source: str, n: int, out: Path) -> tuple[Path, dict[str, list[tuple[int, int, int, int]]]]:
    """Rows of ``2n`` images per category (distinct patients first) on glass; returns the slide and image boxes."""
    import cv2

    from cellview.testing.synthetic import write_pyramid_tiff
    from cellview.train.train import Run

    samples, _ = Run(run).samples()
    recipe = Run(run).recipe()
    cats = [c.category for c in recipe.classes]
    rng = np.random.default_rng(7)
    rows: dict[str, list] = {}
    for cat in CATS:
        pool = [s for s in samples if s.source == source and cats[s.label] == cat]
        rng.shuffle(pool)
        chosen, seen = [], set()
        for s in pool + pool:  # one image per patient first
            if len(chosen) == 2 * n:
                break
            if (s.group not in seen or len(seen) >= len({p.group for p in pool})) and s not in chosen:
                chosen.append(s)
                seen.add(s.group)
        if chosen:
            rows[cat] = chosen
    images = {cat: [cv2.cvtColor(cv2.imread(s.path), cv2.COLOR_BGR2RGB) for s in ss] for cat, ss in rows.items()}
    size = max(im.shape[0] for ims in images.values() for im in ims)
    gap = size  # two tiles of glass: each image is a labelled region of its own
    width = gap + 2 * n * (size + gap)
    height = gap + len(images) * (size + gap)
    rgb = np.full((height, width, 3), 242, np.uint8)
    boxes: dict[str, list[tuple[int, int, int, int]]] = {}
    for r, (cat, ims) in enumerate(images.items()):
        for c, im in enumerate(ims):
            x, y = gap + c * (size + gap), gap + r * (size + gap)
            rgb[y:y + im.shape[0], x:x + im.shape[1]] = im
            boxes.setdefault(cat, []).append((x, y, x + im.shape[1], y + im.shape[0]))
    spacing = next(s.spacing_um_px for s in samples if s.source == source)
    return write_pyramid_tiff(out, rgb, spacing, levels=2), boxes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="colon-he training run (cellview train; evaluate --adaptation)")
    ap.add_argument("--source", default="ebhi_seg", help="the source that plays the new lab")
    ap.add_argument("--per-category", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    ap.add_argument("--work", type=Path, default=None, help="folder for the base model and the slide (default: temp)")
    ap.add_argument("--size", default="1600x1000")
    args = ap.parse_args()
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    work = args.work or Path(tempfile.mkdtemp(prefix="cellview-labels-"))
    os.environ["CELLVIEW_SETTINGS_FILE"] = str(work / "settings.ini")
    os.environ.setdefault("CELLVIEW_CACHE_DIR", str(work / "cache"))
    os.environ["XDG_DATA_HOME"] = str(work / "user-data")  # labels index and user models stay in the work folder
    shutil.rmtree(work / "user-data", ignore_errors=True)

    model = base_model(args.run, args.source, work / "base")
    slide, boxes = mosaic(args.run, args.source, args.per_category, work / "slides" / f"{args.source}-lab.tiff")
    for stale in slide.parent.glob("*.labels.geojson"):
        stale.unlink()
    print(f"base model {model}; slide {slide}")

    from PySide6.QtWidgets import QDialogButtonBox

    from cellview.gui.app import make_app
    from cellview.gui.desktop.labels import AdaptDialog
    from cellview.gui.desktop.window import MainWindow
    from cellview.gui.headless import settle, wait_for

    app = make_app()
    window = MainWindow()
    w, h = (int(v) for v in args.size.split("x"))
    window.move(0, 0)
    window.resize(w, h)
    window.show()
    window.model.analysis.auto_analyse = True
    window.add_model(model)
    window.open_path(slide)
    if not wait_for(window.viewer.analysisFinished, 900):
        print("analysis did not finish", file=sys.stderr)
        return 1
    before = window.result
    labels = window.labels
    for key, cat in zip("123", CATS):
        for x0, y0, x1, y1 in boxes.get(cat, [])[:args.per_category]:
            labels.pick_rect(x0, y0, x1, y1, extend=True)
        labels.label_key(key)
    x0, y0, x1, y1 = boxes["benign"][args.per_category]  # an unlabelled image picked, as before a key press
    labels.pick_rect(x0, y0, x1, y1)
    window.select_tile(int(sorted(labels.picked)[0]))
    window.view.zoom(1.8)  # the labelled images and the picked one, larger
    window.view.center_on(x1, (y0 + y1) / 2)
    settle(app, 1.0)
    bar = window.side.dock.widget().verticalScrollBar()
    bar.setValue(window.labels_panel.parentWidget().y() - 20)
    settle(app, 0.5)
    args.out.mkdir(parents=True, exist_ok=True)
    capture(app, window, args.out / "screenshot_labels.png")
    labels.clear_picked()

    dialog = AdaptDialog(window, labels)
    dialog.open()
    settle(app, 0.3)
    dialog.start(force=False)
    while dialog.pages.currentIndex() != 2:
        settle(app, 0.1)
    settle(app, 0.5)
    capture(app, dialog if app.platformName() != "xcb" else window, args.out / "screenshot_adapt.png")
    report = dialog.report
    if report is None or report.written is None:
        print(dialog.result_label.text(), file=sys.stderr)
        return 1
    print(report.summary())
    dialog.reanalyse_btn.click()
    if not wait_for(window.viewer.analysisFinished, 900):
        return 1
    settle(app, 1.0)
    capture(app, window, args.out / "screenshot_adapted.png")
    after = window.result
    print(f"before: {before.summary()}\nafter:  {after.summary()}")
    for btn in dialog.findChildren(QDialogButtonBox):
        btn.close()
    window.shutdown()
    return 0


def capture(app, widget, out: Path) -> None:
    if app.platformName() == "xcb":
        app.primaryScreen().grabWindow(0).save(str(out))
    else:
        widget.grab().save(str(out))


if __name__ == "__main__":
    sys.exit(main())
