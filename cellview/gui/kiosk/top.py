"""What sits above the kiosk's pages: the header line (title, what the station is doing, the model's provider)
and the cards that never need an answer: the watch folder's problem, news (a backlog at start), an error that
goes after ``ERROR_CARD_S``, and the settings file's problems, which stay until the kiosk is restarted."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QTimer
from PySide6.QtWidgets import QFrame, QHBoxLayout, QPushButton, QVBoxLayout

from cellview.analysis.classifier import OnnxClassifier
from cellview.base.errors import CellviewError
from cellview.gui.kiosk.widgets import ElidedLabel, TextScroll, card
from cellview.gui.widgets.cards import text_label

ERROR_CARD_S = 12.0
"""How long an error stays on screen before the kiosk is back to its plain waiting view."""

MAX_SETTINGS_PROBLEMS_SHOWN = 5
"""More problems than this are counted on screen, not listed (they are all in the journal)."""


class Header:
    """``layout``: "CellView", ``state_label`` (one line: "Analysing CMU-1-Small-Re…") and ``provider_badge``
    ("colon-he 2.0.0 on CPU …", never pushing the title off)."""

    def __init__(self) -> None:
        self.layout = QHBoxLayout()
        self.layout.addWidget(text_label("CellView", "kioskTitle", wrap=False))
        self.state_label = ElidedLabel("", "kioskHint")
        self.layout.addWidget(self.state_label, 1)
        self.provider_badge = ElidedLabel("", "kioskProvider")
        self.provider_badge.setAlignment(Qt.AlignmentFlag.AlignRight)
        self.layout.addWidget(self.provider_badge, 1)

    def show_provider(self, classifier: OnnxClassifier) -> None:
        self.provider_badge.setText(classifier.describe())
        self.provider_badge.setProperty("warn", "true" if classifier.needs_attention else "false")
        self.provider_badge.setStyle(self.provider_badge.style())


class MessageCards(QObject):
    """``banner`` (the watch folder cannot be read), ``info_card``, ``error_card`` and ``settings_card``, each
    with its label, in the order they are added to a layout (``add_to``)."""

    def __init__(self, parent: QObject) -> None:
        super().__init__(parent)
        self.banner, self.banner_label = card("kioskBanner")
        self.info_card, self.info_label = card("kioskInfo")  # news that is not an error (a backlog at start)
        ok = QPushButton("OK")
        ok.clicked.connect(self.info_card.hide)
        self.info_card.layout().addWidget(ok, 0, Qt.AlignmentFlag.AlignTop)
        self.error_card, self.error_label = card("kioskError")
        self.error_label.setTextFormat(Qt.TextFormat.PlainText)
        el = self.error_card.layout()
        el.setContentsMargins(20, 12, 12, 12)
        dismiss = QPushButton("OK")
        dismiss.clicked.connect(self.hide_error)
        el.addWidget(dismiss, 0, Qt.AlignmentFlag.AlignTop)
        self.settings_card = self._settings_card()
        self.error_timer = QTimer(self, singleShot=True, interval=int(ERROR_CARD_S * 1000))
        self.error_timer.timeout.connect(self.hide_error)

    def add_to(self, layout: QVBoxLayout) -> None:
        for frame in (self.banner, self.info_card, self.error_card, self.settings_card):
            layout.addWidget(frame)

    def _settings_card(self) -> QFrame:
        """The settings loader's problems, shown until the file is fixed and the kiosk restarted.

        Unlike the error card it has no timer and no dismiss button: whoever next looks at the
        screen must learn that the kiosk runs on partly default settings (or cannot be left).
        What to do comes first; the text scrolls where the screen has no room for all of it.
        """
        frame = QFrame()
        frame.setObjectName("kioskSettings")
        lay = QVBoxLayout(frame)
        lay.setContentsMargins(20, 8, 20, 8)
        lay.setSpacing(2)
        lay.addWidget(text_label("⚠ Settings problem", "kioskSettingsTitle", wrap=False))
        self.settings_label = text_label("")
        self.settings_label.setTextFormat(Qt.TextFormat.PlainText)
        lay.addWidget(TextScroll(self.settings_label))
        frame.hide()
        return frame

    def show_settings_problems(self, file: Path | None, problems: Sequence[CellviewError], exit_locked: bool) -> None:
        what_to_do = (f"Fix {file if file is not None else 'the kiosk settings file'}, then restart the kiosk "
                      "service. Until then the kiosk runs with the settings that were valid")
        what_to_do += ", and cannot be left: its PIN is unusable." if exit_locked else "."
        prefix = f"{file}: " if file is not None else None
        lines = [what_to_do]
        lines += [f"• {p.message.removeprefix(prefix) if prefix else p.message}"
                  for p in problems[:MAX_SETTINGS_PROBLEMS_SHOWN]]
        if len(problems) > MAX_SETTINGS_PROBLEMS_SHOWN:
            lines.append(f"• and {len(problems) - MAX_SETTINGS_PROBLEMS_SHOWN} more (see the kiosk's log)")
        self.settings_label.setText("\n".join(lines))

    def show_message(self, message: str) -> None:
        """An error card that stays a few seconds; it never blocks and never needs an answer."""
        self.error_label.setText(message)
        self.error_card.show()
        self.error_timer.start()

    def hide_error(self) -> None:
        self.error_card.hide()

    def show_info(self, message: str) -> None:
        """A blue card for news that is not an error; it stays until tapped or a minute has passed."""
        self.info_label.setText(message)
        self.info_card.show()
        QTimer.singleShot(60_000, self.info_card.hide)

    def show_watch_problem(self, problem: str | None) -> None:
        self.banner_label.setText(problem or "")
        self.banner.setVisible(bool(problem))
