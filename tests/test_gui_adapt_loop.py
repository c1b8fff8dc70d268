"""The suggest → label → adapt loop in the real window (pytest-qt, offscreen, issue 26): suggested tiles outlined
and stepped through with N, one key to label, Ctrl+Z, the QuPath class mapping dialog, imports that label
nothing, the Labels menu before analysis, adapting an adapted model, and the not-better mark in the model list."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from test_gui import make_window  # noqa: E402

from cellview.analysis.results import AnalysisParams  # noqa: E402
from cellview.lab.labels import LabelRegion, write_geojson  # noqa: E402
from cellview.testing.synthetic import LAB_BLOCKS, lab_block_rect, lab_slide_rgb, write_pyramid_tiff  # noqa: E402

TIMEOUT_MS = 60000

pytestmark = pytest.mark.usefixtures("isolated_settings")


@pytest.fixture
def slide(tmp_path):
    return write_pyramid_tiff(tmp_path / "lab.tiff", lab_slide_rgb(), 1.0, levels=2)


@pytest.fixture
def window(qtbot, cam_domain_model, slide):
    w = make_window(qtbot, AnalysisParams(tissue_threshold=0.5), cam_domain_model)
    w.model.analysis.auto_analyse = True
    with qtbot.waitSignal(w.viewer.analysisFinished, timeout=TIMEOUT_MS):
        w.open_path(slide)
    yield w
    assert w.shutdown(20000)


def labels_menu(window):
    return next(m for m in window.menuBar().actions() if m.text() == "&Labels").menu()


def test_suggested_tiles_are_outlined_and_n_goes_to_each_so_one_key_labels_it(qtbot, window):
    controls, labels = window.suggest_controls, window.labels
    assert controls.suggest_btn.isEnabled() and not controls.next_btn.isEnabled()
    controls.suggest_btn.click()
    assert controls.suggest_btn.text() == "Cancel suggesting"  # it runs on the worker
    qtbot.waitUntil(lambda: controls.worker is None, timeout=TIMEOUT_MS)
    tour = controls.tour
    assert len(tour.tiles) == 12 and not window.errors
    assert controls.outline.path().elementCount() >= 12 * 4  # each suggested tile outlined on the slide
    grid = labels.grid
    # The first one is gone to at once: centred, picked, and the status says which.
    first = tour.tiles[0]
    x, y, w, h = grid.rect(first)
    (x0, x1), (y0, y1) = window.view.vb.viewRange()
    assert abs((x0 + x1) / 2 - (x + w / 2)) < w and abs((y0 + y1) / 2 - (y + h / 2)) < h
    assert labels.picked == {first} and controls.status.text().startswith("Suggested tile 1 of 12")
    window.view.setFocus()
    QTest.keyClick(window.view, Qt.Key.Key_N)
    assert labels.picked == {tour.tiles[1]}
    x, y, w, h = grid.rect(tour.tiles[1])
    (x0, x1), (y0, y1) = window.view.vb.viewRange()
    assert abs((x0 + x1) / 2 - (x + w / 2)) < w and abs((y0 + y1) / 2 - (y + h / 2)) < h
    QTest.keyClick(window.view, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    assert labels.picked == {first}
    QTest.keyClick(window.view, Qt.Key.Key_2)  # one more key labels it
    assert labels.tile_labels()[first] == "benign" and labels.counts() == {"benign": 1}
    # A picks every tissue tile: the whole image is one key.
    QTest.keyClick(window.view, Qt.Key.Key_A)
    assert len(labels.picked) == grid.n_tiles
    QTest.keyClick(window.view, Qt.Key.Key_3)
    assert labels.counts() == {"normal": grid.n_tiles}
    # Ctrl+Z takes each step back, named in the Labels menu.
    undo = window.undo_actions.act_undo
    assert undo.text() == f"Undo label {grid.n_tiles} tiles normal" and undo in labels_menu(window).actions()
    QTest.keyClick(window.view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert labels.counts() == {"benign": 1} and undo.text() == "Undo label 1 tile benign"
    QTest.keyClick(window.view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert labels.counts() == {} and not undo.isEnabled()


def test_unknown_qupath_classes_are_mapped_in_a_dialog_remembered_and_drawn_in_the_label_colour(
        qtbot, window, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QDialog, QFileDialog

    from cellview.gui.desktop import classmap

    seen = []

    def answer(dialog):
        seen.append({cls: box.currentData() for cls, box in dialog.boxes.items()})
        box = dialog.boxes["Tumor"]
        box.setCurrentIndex(box.findData("malignant"))
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(classmap.ClassMapDialog, "exec", answer)
    qupath = tmp_path / "qupath.geojson"
    write_geojson(qupath, [LabelRegion.rect("Tumor", *lab_block_rect(0))])
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(qupath), ""))
    window.labels_panel.import_btn.click()
    assert seen == [{"Tumor": None}]  # nothing remembered yet: not mapped
    labels = window.labels
    assert labels.counts() == {"malignant": 12}
    assert "labelled malignant 12 tiles" in window.labels_panel.saved_label.text()
    colours = {item.pen().color().name() for item in window.view.label_outlines}
    malignant = next(c.color for c in labels.choices if c.label == "malignant")
    assert malignant.lower() in colours and "#00e5ff" not in colours  # the label's colour, not the pick's cyan
    # Next time the dialog proposes what was chosen.
    labels.undo()
    assert labels.counts() == {}
    window.labels_panel.import_btn.click()
    assert seen[-1] == {"Tumor": "malignant"}


def test_a_cancelled_mapping_leaves_the_class_out_of_the_labels_and_adapt_still_runs(qtbot, window, tmp_path,
                                                                                    monkeypatch):
    from PySide6.QtWidgets import QDialog, QFileDialog

    from cellview.gui.desktop import classmap

    monkeypatch.setattr(classmap.ClassMapDialog, "exec", lambda d: QDialog.DialogCode.Rejected)
    labels = window.labels
    for k, cat in enumerate(LAB_BLOCKS):
        labels.pick_rect(*lab_block_rect(k))
        labels.label_picked(cat)
    before = labels.counts()
    assert set(before) == set(LAB_BLOCKS)
    qupath = tmp_path / "qupath.geojson"
    write_geojson(qupath, [LabelRegion.rect("Stroma", *lab_block_rect(0))])
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(qupath), ""))
    window.labels_panel.import_btn.click()
    assert labels.counts() == before  # Stroma did not take block 0's label away
    assert "Not labels until mapped" in window.labels_panel.saved_label.text()
    menu_texts = {a.text(): a for a in labels_menu(window).actions()}
    assert menu_texts["Map QuPath classes…"].isEnabled()
    from cellview.gui.desktop.labels import AdaptDialog

    dialog = AdaptDialog(window, labels)
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.finishedReport, timeout=TIMEOUT_MS):
        dialog.start_btn.click()
    assert dialog.report.written is not None


def test_annotations_that_miss_the_slide_say_so_in_a_box_not_silently(qtbot, window, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    far = tmp_path / "other.geojson"
    write_geojson(far, [LabelRegion.rect("malignant", 90000 + 100 * i, 90000, 90090 + 100 * i, 90090)
                        for i in range(151)])
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(far), ""))
    window.labels_panel.import_btn.click()
    box = window.import_box
    assert box.isVisible() and "no tile is labelled" in box.text() and "another slide" in box.text()
    assert "Imported 151 annotations" in window.labels_panel.saved_label.text()
    box.accept()


def test_the_labels_menu_before_analysis_says_once_that_labels_need_an_analysed_image(qtbot, cam_domain_model,
                                                                                     slide):
    w = make_window(qtbot, AnalysisParams(tissue_threshold=0.5), cam_domain_model)
    w.model.analysis.auto_analyse = False
    w.open_path(slide)
    qtbot.waitUntil(lambda: w.opened is not None, timeout=TIMEOUT_MS)
    visible = [a for a in labels_menu(w).actions() if a.isVisible() and not a.isSeparator()]
    texts = [a.text() for a in visible]
    assert not any("no label for this model" in t for t in texts)
    need = [a for a in visible if "need an analysed image" in a.text()]
    assert len(need) == 1 and not need[0].isEnabled()
    assert not w.suggest_controls.suggest_btn.isEnabled()
    assert w.shutdown(20000)


def test_adapting_an_adapted_model_offers_the_shipped_base_and_the_not_better_mark_is_listed(qtbot, window):
    from cellview.gui.desktop.labels import AdaptDialog

    labels = window.labels
    shipped = window.model.settings.model_path
    for k, cat in enumerate(LAB_BLOCKS):
        labels.pick_rect(*lab_block_rect(k))
        labels.label_picked(cat)
    dialog = AdaptDialog(window, labels)
    qtbot.addWidget(dialog)
    assert dialog.base_box.count() == 1  # a shipped model: itself
    with qtbot.waitSignal(dialog.finishedReport, timeout=TIMEOUT_MS):
        dialog.start_btn.click()
    assert "better than the base model on your labels: better by" in dialog.result_label.toPlainText()
    with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS):
        dialog.reanalyse_btn.click()
    adapted_name = window.result.model.name
    again = AdaptDialog(window, labels)
    qtbot.addWidget(again)
    assert again.base_box.count() == 2
    assert again.base_box.itemData(0) == str(shipped) or again.base_box.itemData(0).endswith("model.onnx")
    assert "(shipped)" in again.base_box.itemText(0) and adapted_name in again.base_box.itemText(1)
    assert again.name_edit.text().count("-lab-") == 1
    assert "was adapted from" in again.base_note.text()
    again.base_box.setCurrentIndex(1)
    assert again.name_edit.text().count("-lab-") == 1  # never '-lab-DATE-lab-DATE'
    assert again.name_edit.text() != adapted_name  # today's adapted model's own folder, which adapt refuses
    assert "itself adapted from" in again.base_note.text()  # says which base is used


def test_a_refused_model_is_worded_by_the_decision_and_once_written_anyway_is_marked_in_the_list(qtbot, window):
    from cellview.gui.desktop.labels import AdaptDialog
    from cellview.gui.panels.model import NOT_BETTER

    labels = window.labels
    for k in (0, 1):  # labelled as the base model already calls them: nothing to learn
        labels.pick_rect(*lab_block_rect(k))
        labels.label_picked("benign" if LAB_BLOCKS[k] == "malignant" else "malignant")
    dialog = AdaptDialog(window, labels)
    qtbot.addWidget(dialog)
    dialog.open()
    dialog.start(force=False)
    qtbot.waitUntil(lambda: dialog.pages.currentIndex() == 2 and dialog.worker is None, timeout=TIMEOUT_MS)
    text = dialog.result_label.toPlainText()
    decision = dialog.refused.decision
    assert text.startswith("Not written: " + ("your labels cannot tell it from the base model" if decision.uncertain
                                              else decision.phrase()))
    assert "--force" not in text and "cellview adapt" not in text and "Write it anyway" in text
    with qtbot.waitSignal(dialog.finishedReport, timeout=TIMEOUT_MS):
        dialog.force_btn.click()
    report = dialog.report
    assert report.written_because == ("chosen" if decision.uncertain else "forced")
    assert "not shown better" in dialog.result_label.toPlainText()
    box = window.model_panel.model_box
    i = box.findData(str(report.written.absolute()))
    assert i >= 0 and box.itemText(i).endswith(NOT_BETTER)
    assert "NOT shown better than its base" in box.itemData(i, Qt.ItemDataRole.ToolTipRole)
