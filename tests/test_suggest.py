"""cellview suggest: the images (or slide tiles) to label next, chosen for diversity weighted by doubt, written as the
image,label CSV that cellview adapt reads (issue 26, section 2)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.model_spec import ModelSpec
from cellview.analysis.results import AnalysisParams
from cellview.cli import main
from cellview.lab.labels import read_labels
from cellview.lab.suggest import SuggestResult, rank_for_labelling, suggest, uncertainty
from cellview.testing.synthetic import LAB_COLOURS, lab_image, lab_slide_rgb, write_pyramid_tiff


def test_the_choice_covers_every_kind_of_tissue_before_piling_up_doubt():
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
    sizes = (60, 30, 6)  # a rare kind of tissue too
    x = np.concatenate([c + rng.normal(0, 0.5, (n, 3)) for c, n in zip(centres, sizes)])
    kind = np.repeat([0, 1, 2], sizes)
    probs = np.tile([0.98, 0.01, 0.01], (len(x), 1))
    probs[:60] = [0.34, 0.33, 0.33]  # the model doubts only the commonest kind
    picks = rank_for_labelling(x, probs, 3)
    assert sorted(kind[picks].tolist()) == [0, 1, 2]  # uncertainty alone would take three of kind 0
    assert kind[picks[0]] == 0  # the most tissue, the most doubt: first
    assert len(set(rank_for_labelling(x, probs, 12).tolist())) == 12
    assert rank_for_labelling(x, probs, 3, seed=1).tolist() == rank_for_labelling(x, probs, 3, seed=1).tolist()
    np.testing.assert_allclose(uncertainty(np.array([[1.0, 0, 0], [1 / 3, 1 / 3, 1 / 3]])), [0.0, 1.0], atol=1e-9)


def _lab_folder(folder: Path, per_category: int = 6) -> dict[str, str]:
    import cv2

    truth = {}
    folder.mkdir(parents=True, exist_ok=True)
    for cat, colour in LAB_COLOURS.items():
        for k in range(per_category):
            name = f"{cat}_{k}.png"
            cv2.imwrite(str(folder / name), cv2.cvtColor(lab_image(colour, seed=11 * k + len(cat)), cv2.COLOR_RGB2BGR))
            truth[name] = cat
    return truth


def test_suggest_writes_a_csv_to_fill_in_that_adapt_reads(tmp_path, cam_domain_model, capsys):
    truth = _lab_folder(tmp_path / "lab")
    out = tmp_path / "to_label.csv"
    code = main(["suggest", str(tmp_path / "lab"), "--model", str(cam_domain_model), "--mpp", "1", "-n", "6",
                 "--tissue-threshold", "0.5", "--out", str(out), "-q"])
    assert code == 0 and "6 of 18 images suggested" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5", "6"] and all(r["label"] == "" for r in rows)
    assert all((out.parent / r["image"]).is_file() for r in rows)  # relative to the CSV, as adapt reads them
    assert len({truth[Path(r["image"]).name] for r in rows}) == 3  # every kind of the lab's tissue is in it
    for r in rows:  # the person fills in the labels
        r["label"] = truth[Path(r["image"]).name]
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    code = main(["adapt", "--model", str(cam_domain_model), "--labels", str(out), "--mpp", "1",
                 "--tissue-threshold", "0.5", "--out", str(tmp_path / "m"), "-q"])
    assert code in (0, 3) and "Before → after" in capsys.readouterr().out


def test_on_a_slide_it_suggests_tiles_as_rectangles_that_label_regions(tmp_path, cam_domain_model):
    slide = write_pyramid_tiff(tmp_path / "lab.tiff", lab_slide_rgb(), 1.0, levels=2)
    spec = ModelSpec.load(cam_domain_model)
    result = None
    for item in suggest([slide], OnnxClassifier(spec, device="cpu"), AnalysisParams(tissue_threshold=0.5), 5):
        if isinstance(item, SuggestResult):
            result = item
    assert result is not None and result.candidates == 72 and len(result.suggestions) == 5
    assert all(s.rect is not None and s.rect[2] == s.rect[3] == 64 for s in result.suggestions)
    from cellview.lab.suggest import write_suggestions

    path = write_suggestions(tmp_path / "to_label.csv", result.suggestions)
    text = path.read_text().splitlines()
    assert text[0].startswith("image,label,x,y,width,height,rank")
    filled = [text[0]] + [line.replace("lab.tiff,,", "lab.tiff,normal,", 1) for line in text[1:3]] + text[3:]
    path.write_text("\n".join(filled) + "\n")
    sources, notes = read_labels([path])
    assert len(sources) == 1 and sources[0].path == slide and len(sources[0].regions) == 2
    assert {r.label for r in sources[0].regions} == {"normal"}
    assert any("3 rows without a label passed over" in n for n in notes)


def test_the_same_seed_suggests_the_same_tiles_whatever_order_the_readers_finish_in(tmp_path, cam_domain_model,
                                                                                    monkeypatch):
    """Tile batches arrive as the reader threads finish them; the viewer's two runs once suggested different tiles."""
    import queue

    import cellview.lab.suggest as core

    slide = write_pyramid_tiff(tmp_path / "lab.tiff", lab_slide_rgb(), 1.0, levels=2)
    clf = OnnxClassifier(ModelSpec.load(cam_domain_model), device="cpu")
    params = AnalysisParams(tissue_threshold=0.5, batch_size=8)

    seen = []
    rank = core.rank_for_labelling

    def recording(features, probs, n, seed=0, **kw):
        seen.append(np.array(features))  # what k-means sees, in its order (the seeding draws by index)
        return rank(features, probs, n, seed, **kw)

    monkeypatch.setattr(core, "rank_for_labelling", recording)

    def run():
        got = [i for i in suggest([slide], clf, params, 6, seed=3) if isinstance(i, SuggestResult)]
        return [(s.rect, s.call) for s in got[0].suggestions]

    first = run()
    import cellview.lab.labtiles as reading  # where the lab's tools read and classify tiles

    real = reading.TileReaders

    class Reversed:
        """The real readers, their batches handed out last first."""

        def __init__(self, *a, **k):
            self.inner = real(*a, **k)
            batches = [self.inner.queue.get() for _ in range(len(a[2]))]
            self.queue = queue.Queue()
            for b in reversed(batches):
                self.queue.put(b)

        def close(self):
            self.inner.close()

    monkeypatch.setattr(reading, "TileReaders", Reversed)
    assert run() == first
    assert np.array_equal(seen[0], seen[1])
