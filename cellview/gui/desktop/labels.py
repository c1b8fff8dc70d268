"""Labelling in the desktop viewer: the Labels card, the Labels menu (keys 1–9) and the *Adapt model…* dialog.

A thin view of ``cellview.viewer.labelling.LabelsModel``: Shift+click and Shift+drag on the slide pick tiles,
a key or a button labels them, outlines show what is labelled, and *Adapt model…* runs
``cellview adapt`` on every slide labelled so far on the background worker, then shows before vs after
and offers the new model. The kiosk does not install any of this.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from cellview.analysis.model_spec import CATEGORIES
from cellview.analysis.results import plural
from cellview.base.errors import CellviewError
from cellview.gui.desktop.classmap import map_classes
from cellview.gui.desktop.suggest import SuggestControls, UndoActions
from cellview.gui.widgets.cards import section, show_model_card, text_label
from cellview.viewer.labelling import LABEL_KEYS, LabelsModel

PICK_HINT = ("Shift+click tiles, or Shift+drag a rectangle, to pick them; then press 1–9 or a button below "
             "(0 or Delete takes the label away; Ctrl+Z undoes). Without a pick, a key labels the selected tile. "
             "Labelled tiles are outlined with dashes in the label's colour (the analysis' outlines are solid).")


class LabelsPanel(QWidget):
    """The Labels card's content; ``adaptRequested`` / ``importRequested`` go to the window."""

    adaptRequested = Signal()
    importRequested = Signal()

    def __init__(self, labels: LabelsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.labels = labels
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(5)
        lay.addWidget(text_label(PICK_HINT, "hint"))
        self.buttons_box = QWidget()
        self.buttons = QHBoxLayout(self.buttons_box)  # the categories, one button each
        self.buttons.setContentsMargins(0, 0, 0, 0)
        self.buttons.setSpacing(4)
        lay.addWidget(self.buttons_box)
        row = QHBoxLayout()
        self.class_box = QComboBox()  # the classes (keys 4–9), too many and too long for buttons
        self.class_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.class_box.setMinimumContentsLength(12)
        row.addWidget(self.class_box, 1)
        self.class_btn = QPushButton("Label as class")
        self.class_btn.clicked.connect(lambda: self.labels.label_picked(self.class_box.currentData()))
        row.addWidget(self.class_btn)
        self.class_row = QWidget()
        self.class_row.setLayout(row)
        row.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.class_row)
        row = QHBoxLayout()
        self.picked_label = QLabel("")
        row.addWidget(self.picked_label, 1)
        self.remove_btn = QPushButton("0  Remove label")
        self.remove_btn.clicked.connect(lambda: self.labels.label_picked(None))
        row.addWidget(self.remove_btn)
        self.clear_btn = QPushButton("Clear pick")
        self.clear_btn.clicked.connect(self.labels.clear_picked)
        row.addWidget(self.clear_btn)
        lay.addLayout(row)
        self.counts_label = QLabel("")
        self.counts_label.setWordWrap(True)
        lay.addWidget(self.counts_label)
        self.saved_label = text_label("", "hint")
        lay.addWidget(self.saved_label)
        row = QHBoxLayout()
        self.import_btn = QPushButton("Import QuPath annotations…")
        self.import_btn.setToolTip("GeoJSON exported from QuPath for this slide: each annotation's class is its label")
        self.import_btn.clicked.connect(self.importRequested.emit)
        row.addWidget(self.import_btn)
        self.adapt_btn = QPushButton("Adapt model…")
        self.adapt_btn.setObjectName("primary")
        self.adapt_btn.setToolTip("Refit the selected model's head on the labels of every slide labelled so far, "
                                  "with a cross-validated before / after")
        self.adapt_btn.clicked.connect(self.adaptRequested.emit)
        row.addWidget(self.adapt_btn)
        lay.addLayout(row)
        self._choices: list[Any] = []
        labels.events.labels.connect(lambda e: self.refresh())
        labels.events.picked.connect(lambda e: self.refresh())
        self.refresh()

    def refresh(self) -> None:
        choices = self.labels.choices
        if [c.label for c in choices] != [c.label for c in self._choices]:
            self._choices = choices
            while self.buttons.count():
                self.buttons.takeAt(0).widget().deleteLater()
            self.class_box.clear()
            for choice in choices:
                if choice.label in CATEGORIES:
                    btn = QPushButton(f"{choice.key}  {choice.label}")
                    btn.setStyleSheet(f"QPushButton {{ border-left: 6px solid {choice.color}; }}")
                    btn.setToolTip(f"Label the picked tiles {choice.label} (key {choice.key})")
                    btn.clicked.connect(lambda _c=False, lab=choice.label: self.labels.label_picked(lab))
                    self.buttons.addWidget(btn, 1)
                else:
                    self.class_box.addItem(f"{choice.key}  {choice.text}", choice.label)
                    self.class_box.setItemData(self.class_box.count() - 1, choice.text, Qt.ItemDataRole.ToolTipRole)
        self.class_row.setVisible(self.class_box.count() > 0)
        grid = self.labels.grid
        n = len(self.labels.targets())
        has_grid = grid is not None and self.labels.slide is not None
        for i in range(self.buttons.count()):
            self.buttons.itemAt(i).widget().setEnabled(has_grid and n > 0)
        self.class_btn.setEnabled(has_grid and n > 0)
        self.remove_btn.setEnabled(has_grid and n > 0)
        self.clear_btn.setEnabled(bool(self.labels.picked))
        if not has_grid:
            self.picked_label.setText("Analyse the slide to label its tiles.")
        elif self.labels.picked:
            self.picked_label.setText(f"{len(self.labels.picked)} tile{'s' if len(self.labels.picked) != 1 else ''} "
                                      "picked")
        else:
            self.picked_label.setText("Selected tile" if n else "No tile picked")
        counts = self.labels.counts()
        slides = self.labels.labelled_slides()
        here = ", ".join(f"{name} {k}" for name, k in sorted(counts.items())) or "none"
        self.counts_label.setText(f"Labelled tiles on this slide: {here}. Slides labelled in all: {len(slides)}.")
        self.saved_label.setText(self.labels.note)
        self.import_btn.setEnabled(self.labels.slide is not None)
        self.adapt_btn.setEnabled(bool(slides))


def install_labels(window: Any, layout: QVBoxLayout, at: int) -> tuple[LabelsModel, LabelsPanel]:
    """Add labelling to the desktop window (passed in: it imports this module): its model's labelling part, the
    card at ``layout`` position ``at`` of its side panel, the Labels menu, the view hooks."""
    labels = window.model.labels
    assert labels is not None, "the window's model was made without labelling"
    card, c = section("Labels (teach the model your lab)")
    panel = LabelsPanel(labels)
    c.addWidget(panel)
    layout.insertWidget(at, card)
    view = window.view
    view.shiftClicked.connect(lambda x, y: labels.pick_at(x, y, extend=True))
    view.vb.rectPicked.connect(lambda x0, y0, x1, y1: labels.pick_rect(x0, y0, x1, y1, extend=False))
    view.clicked.connect(lambda x, y: labels.clear_picked())

    def redraw(*_args: Any) -> None:
        view.set_label_outlines(labels.outlines())
        grid = labels.grid
        view.set_picked([] if grid is None else [grid.rect(i) for i in sorted(labels.picked)])

    labels.events.labels.connect(redraw)
    labels.events.picked.connect(redraw)
    window.model.analysis.events.result.connect(lambda e: panel.refresh())
    window.model.selection.events.selection.connect(lambda e: panel.refresh())

    menu = QMenu("&Labels", window)
    window.menuBar().insertMenu(window.menuBar().actions()[-1], menu)  # before Help
    window.menus.return_focus_after(menu)
    key_actions: list[QAction] = []
    for key in LABEL_KEYS:
        act = QAction(f"Label picked tiles ({key})", window, shortcut=QKeySequence(key))
        act.triggered.connect(lambda _c=False, k=key: labels.label_key(k))
        menu.addAction(act)
        key_actions.append(act)
    remove = QAction("Remove the picked tiles' label", window)
    remove.setShortcuts([QKeySequence("0"), QKeySequence(Qt.Key.Key_Delete), QKeySequence(Qt.Key.Key_Backspace)])
    remove.triggered.connect(lambda: labels.label_picked(None))
    menu.addAction(remove)
    menu.addSeparator()
    menu.addAction("Import QuPath annotations…", lambda: import_annotations(window, labels))
    map_action = menu.addAction("Map QuPath classes…", lambda: map_classes(window, labels))
    adapt_action = menu.addAction("Adapt model…", lambda: AdaptDialog(window, labels).open())
    panel.importRequested.connect(lambda: import_annotations(window, labels))
    panel.adaptRequested.connect(lambda: AdaptDialog(window, labels).open())

    def name_keys(*_args: Any) -> None:
        choices = {c.key: c for c in labels.choices}
        analysed = labels.grid is not None
        for i, (key, act) in enumerate(zip(LABEL_KEYS, key_actions)):
            choice = choices.get(key)
            if not analysed:  # said once, the keys off (no '(k: no label for this model)' nine times)
                act.setText("Labels need an analysed image: analyse it first (keys 1–9 are off)"
                            if labels.analysis.shown_result() is None else
                            "Labels need tiles: this image was read as one tile (keys 1–9 are off)")
                act.setVisible(i == 0)
                act.setEnabled(False)
                continue
            act.setText(f"Label picked tiles: {choice.text}" if choice else f"({key}: no label for this model)")
            act.setVisible(choice is not None)
            act.setEnabled(choice is not None)
        remove.setEnabled(analysed)
        map_action.setEnabled(bool(labels.foreign_classes()) and analysed)
        adapt_action.setEnabled(bool(labels.labelled_slides()))

    labels.events.labels.connect(name_keys)
    window.model.analysis.events.result.connect(name_keys)
    name_keys()
    window.suggest_controls = SuggestControls(window, labels, menu, panel)
    window.undo_actions = UndoActions(window, labels, menu)
    return labels, panel


def import_annotations(window: Any, labels: LabelsModel) -> None:
    start = str(Path(labels.slide).parent) if labels.slide else str(Path.home())
    name, _ = QFileDialog.getOpenFileName(window, "Import QuPath annotations", start, "GeoJSON (*.geojson *.json)")
    window.take_focus()
    if not name:
        return
    try:
        labels.import_geojson(name)
    except CellviewError as exc:
        window.show_error(exc, "Annotations not imported")
        return
    foreign = labels.foreign_classes(labels.last_import[0])
    if foreign:
        map_classes(window, labels, foreign)  # proposes what each class was mapped to before
    text = labels.note = labels.import_text()
    labels.events.labels(labels)
    window.statusBar().showMessage(text, 15000)
    if labels.grid is not None and "no tile is labelled" in text:  # not a silent "Imported 151 annotations"
        box = QMessageBox(QMessageBox.Icon.Information, "No tile labelled", text, QMessageBox.StandardButton.Ok,
                          window)
        box.finished.connect(lambda _r: window.take_focus())
        box.open()
        window.import_box = box


def figures_table(report: Any) -> str:
    """Before → after as an HTML table (images / regions, then tiles; recall per category)."""
    b, a = report.before, report.after
    rows = [("Labelled images / regions", b.items_balanced_accuracy, a.items_balanced_accuracy, b.items_recall,
             a.items_recall),
            ("Their tiles", b.tiles_balanced_accuracy, a.tiles_balanced_accuracy, b.tiles_recall, a.tiles_recall)]

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f}"

    head = "".join(f"<th>recall {c}</th>" for c in CATEGORIES)
    body = "".join(
        f"<tr><td>{title}</td><td><b>{vb:.2f} → {va:.2f}</b></td>"
        + "".join(f"<td>{pct(rb[c])} → {pct(ra[c])}</td>" for c in CATEGORIES) + "</tr>"
        for title, vb, va, rb, ra in rows)
    return (f"<table cellspacing='0' cellpadding='4' border='1'><tr><th></th><th>balanced accuracy</th>{head}</tr>"
            f"{body}</table>")


class AdaptDialog(QDialog):
    """Set up, run (progress, Cancel) and review an adaptation; offers the new model when it is written."""

    finishedReport = Signal(object)  # AdaptReport

    def __init__(self, window: Any, labels: LabelsModel) -> None:
        super().__init__(window)
        self.window_, self.labels = window, labels
        self.setWindowTitle("Adapt the model to your labels")
        self.setMinimumWidth(620)
        self.worker: Any = None
        self.report: Any = None
        self.refused: Any = None  # the report of an adaptation the check did not write
        lay = QVBoxLayout(self)
        self.pages = QStackedWidget()
        lay.addWidget(self.pages)
        self.pages.addWidget(self._setup_page())
        self.pages.addWidget(self._run_page())
        self.pages.addWidget(self._result_page())
        self.finished.connect(lambda _r: window.take_focus())

    # -- pages -----------------------------------------------------------------------------------

    def _setup_page(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        model_path = self.window_.model.settings.model_path
        self.bases = adapt_bases(model_path)
        slides = self.labels.labelled_slides()
        items = []
        for s in slides:
            names = sorted({r.label for r in s.regions if not r.is_ignore})
            items.append(f"<li>{escape(s.path.name)}: {escape(', '.join(names))}</li>")
        text = (f"<p>The head of the base model below is refitted on the labels of every slide labelled so far "
                f"({len(slides)}):</p><ul>{''.join(items)}</ul><p>Tiles are cut as <i>Analyse</i> cuts them. Before "
                "vs after is cross-validated by slide (by labelled region when one slide is labelled), and the model "
                "is written to your models folder only when it is better (or when you choose to keep it). The base "
                "model is not changed.</p>")
        info = QLabel(text)
        info.setWordWrap(True)
        info.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(info)
        row = QHBoxLayout()
        row.addWidget(QLabel("Base model"))
        self.base_box = QComboBox()
        for path, words, note in self.bases:
            self.base_box.addItem(words, path)
            self.base_box.setItemData(self.base_box.count() - 1, note, Qt.ItemDataRole.ToolTipRole)
        if not self.bases:
            self.base_box.addItem("(no model selected)", None)
        row.addWidget(self.base_box, 1)
        lay.addLayout(row)
        self.base_note = text_label("", "hint")
        lay.addWidget(self.base_note)
        row = QHBoxLayout()
        row.addWidget(QLabel("Name of the new model"))
        self.name_edit = QLineEdit()
        row.addWidget(self.name_edit, 1)
        lay.addLayout(row)
        self.base_box.currentIndexChanged.connect(self._base_changed)
        self._base_changed()
        buttons = QDialogButtonBox()
        self.start_btn = buttons.addButton("Adapt", QDialogButtonBox.ButtonRole.AcceptRole)
        self.start_btn.setObjectName("primary")
        self.start_btn.setEnabled(bool(slides) and bool(model_path))
        buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(lambda: self.start(force=False))
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        return page

    def _base_changed(self, *_args: Any) -> None:
        """The proposed name follows the base (never '-lab-DATE-lab-DATE'); the note says which base it is."""
        i = self.base_box.currentIndex()
        path = self.base_box.currentData()
        self.name_edit.setText(self.labels.default_name(_model_name(path) if path else "model"))
        note = self.bases[i][2] if 0 <= i < len(self.bases) else ""
        self.base_note.setText(note)
        self.base_note.setVisible(bool(note))

    def _run_page(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        self.stage_label = QLabel("Reading the labelled tiles…")
        lay.addWidget(self.stage_label)
        self.progress = QProgressBar()
        lay.addWidget(self.progress)
        buttons = QDialogButtonBox()
        self.cancel_btn = buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.cancel_btn.clicked.connect(self.cancel)
        lay.addWidget(buttons)
        return page

    def _result_page(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        self.result_label = QTextBrowser()  # scrolls when warnings make it long; text can be copied
        lay.addWidget(self.result_label)
        buttons = QDialogButtonBox()
        self.reanalyse_btn = buttons.addButton("Use it and re-analyse", QDialogButtonBox.ButtonRole.AcceptRole)
        self.reanalyse_btn.setObjectName("primary")
        self.reanalyse_btn.clicked.connect(self.use_model)
        self.card_btn = buttons.addButton("Model card…", QDialogButtonBox.ButtonRole.ActionRole)
        self.card_btn.clicked.connect(lambda: show_model_card(self, self.report.written))
        self.force_btn = buttons.addButton("Write it anyway", QDialogButtonBox.ButtonRole.ActionRole)
        self.force_btn.clicked.connect(self.write_anyway)
        close = buttons.addButton(QDialogButtonBox.StandardButton.Close)
        close.clicked.connect(self.accept)
        lay.addWidget(buttons)
        return page

    # -- running ---------------------------------------------------------------------------------

    def start(self, force: bool, writes: str = "better") -> None:
        """Run it: ``writes="not distinguishable"`` keeps a model the labels cannot tell from its base (the person's
        choice), ``force`` a worse one."""
        from cellview.lab.adapt import AdaptProgress, AdaptReport

        name = self.name_edit.text().strip() or self.labels.default_name("model")
        self.pages.setCurrentIndex(1)
        self.progress.setRange(0, 0)

        def on_item(item: Any) -> None:
            if isinstance(item, AdaptProgress):
                self.progress.setRange(0, max(1, item.total))
                self.progress.setValue(item.done)
                self.stage_label.setText(item.message or item.stage)
            elif isinstance(item, AdaptReport):
                self.report = item

        def on_failed(exc: CellviewError) -> None:
            self.show_result(None, exc)

        def on_done() -> None:
            self.worker = None
            if self.report is not None:
                self.show_result(self.report, None)

        self.report = None
        self.worker = self.window_.viewer.runner(self.labels.adapt_job(
            name, force, on_item, on_failed, on_done, base_path=self.base_box.currentData(), writes=writes))

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            self.stage_label.setText("Cancelling…")
        else:
            self.reject()

    def write_anyway(self) -> None:
        """*Write it anyway*: not distinguishable → the person's choice; worse → forced (the model list marks both)."""
        decision = getattr(self.refused, "decision", None)
        if decision is not None and decision.uncertain:
            self.start(force=False, writes="not distinguishable")
        else:
            self.start(force=True)

    def show_result(self, report: Any, error: CellviewError | None) -> None:
        from cellview.lab.adapt import AdaptNotWritten

        self.result_label.setMinimumHeight(330 if report is not None else 120)
        self.pages.setCurrentIndex(2)
        written = report is not None and report.written is not None
        self.reanalyse_btn.setVisible(written)
        self.card_btn.setVisible(written)
        refused = error.report if isinstance(error, AdaptNotWritten) else None
        self.refused = refused
        self.force_btn.setVisible(refused is not None)
        if error is not None and refused is not None:
            text = refused_html(refused, error.message) + figures_table(refused)
        elif error is not None:
            text = f"<p><b>Adaptation stopped.</b> {escape(error.message)}</p>"
        elif report is None:
            text = "<p>Cancelled.</p>"
        else:
            text = (f"<p>The adapted model <b>{escape(report.sidecar.get('name', ''))}</b> is {verdict_html(report)}. "
                    f"Cross-validated, {escape(report.cv_how)}: every slide or region was scored by a head fitted "
                    "without it.</p>" + figures_table(report)
                    + f"<p>{plural(len(report.lab.items), 'labelled region')}, {plural(len(report.lab.features), 'tile')}, "
                      f"{plural(len(report.lab.files), 'slide')}, {report.seconds:.0f} s. Saved to "
                      f"{escape(str(report.written.parent))} and added to the model list.</p>"
                    + "".join(f"<p>⚠ {escape(w)}</p>" for w in report.warnings)
                    + "".join(f"<p>Could not use {escape(Path(f).name)}: {escape(why)}</p>" for f, why in report.lab.unreadable)
                    + "<p><i>These figures say how well each model reproduces your labels on slides it did not see; "
                      "they are not a clinical validation.</i></p>")
            self.window_.model_panel.refresh_models()  # the user's models folder is in the lookup; the selection stays
            self.finishedReport.emit(report)
        self.result_label.setHtml(text)

    def use_model(self) -> None:
        """Select the adapted model and analyse the open slide with it."""
        window = self.window_
        window.model_panel.refresh_models(select=str(Path(self.report.written).absolute()))
        analysis = window.model.analysis
        if not analysis.running and analysis.can_analyse and not analysis.auto_analyse:
            window.start_analysis()
        self.accept()


def verdict_html(report: Any) -> str:
    """'better than the base model on your labels: better by 0.12 (0.03–0.20)', or why a model not shown better
    was written."""
    d = report.decision
    phrase = escape(d.phrase()) if d is not None else ""
    if report.improved:
        return f"better than the base model on your labels: {phrase}" if phrase else "better than the base model"
    how = "you chose to keep it" if report.written_because == "chosen" else "you asked to write it anyway"
    return (f"<b>not shown better</b> than the base model ({phrase}); written because {how}, and marked so in the "
            "model list")


def refused_html(report: Any, message: str) -> str:
    """The 'not written' words, by the decision; the button beside them writes it (no command-line advice)."""
    d = report.decision
    if d is not None and d.uncertain:
        head = "Not written: your labels cannot tell it from the base model"
        keep = ("<i>Write it anyway</i> keeps it, marked in the model list as not shown better; or label more images "
                "or regions, especially where the model is wrong.")
    else:
        head = f"Not written: {escape(d.phrase()) if d is not None else 'not better'}"
        keep = ("<i>Write it anyway</i> keeps it all the same, marked in the model list as not shown better; labelling "
                "more where the model is wrong is the better way.")
    return f"<p><b>{head}.</b> {escape(message)}</p><p>{keep}</p>"


def adapt_bases(model_path: str | None) -> list[tuple[str, str, str]]:
    """(path, name, words) of the bases the Adapt dialog offers: the selected model, and, when it is itself adapted
    and its shipped base is still there unchanged, that one first (``lab.modelfolder.shipped_base``)."""
    if not model_path:
        return []
    from cellview.analysis.model_spec import ModelSpec
    from cellview.lab.modelfolder import describe_base, shipped_base

    try:
        spec = ModelSpec.load(model_path)
    except CellviewError:
        return [(model_path, _model_name(model_path), "")]
    adapted = isinstance(spec.raw.get("adaptation"), dict)
    own = (model_path, f"{spec.name} {spec.version}".strip(), f"Base: {describe_base(spec)}." if adapted else "")
    shipped = shipped_base(spec)
    if shipped is None:
        return [own]
    return [(str(shipped), f"{_model_name(str(shipped))} (shipped)",
             f"The shipped model {spec.name} was adapted from, refitted on all your labels without the earlier "
             "head (the labelled slides are the same list)."), own]


def _model_name(model_path: str) -> str:
    """The model's name from its sidecar (cheap: no weights read), else its folder's."""
    import json

    try:
        return str(json.loads(Path(model_path).with_suffix(".json").read_text(encoding="utf-8"))["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return Path(model_path).parent.name
