"""One exception tree so callers can catch CellView failures without catching bugs."""

from __future__ import annotations


class CellviewError(Exception):
    """Base for every error CellView reports to a person.

    ``message`` is one sentence a user understands; ``details`` holds the technical cause
    (shown behind a "details" button in the GUI, after the message in the CLI).
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message if not self.details else f"{self.message} ({self.details})"


class SlideError(CellviewError):
    """A slide or image cannot be opened or read."""


class MppError(SlideError):
    """The slide's pixel size is unknown and the analysis needs it.

    The message says so in words any front end can show; each front end adds how to give the size
    there (``advise``): an option on the command line, the scale entry in the kiosk.
    """

    def advise(self, advice: str) -> MppError:
        return MppError(f"{self.message} {advice}".strip(), self.details)


class ModelError(CellviewError):
    """A model or its sidecar is missing, invalid or does not match."""


class AnalysisError(CellviewError):
    """The analysis cannot run with the given parameters."""


class ExportError(CellviewError):
    """A result file cannot be written."""


class CancelledError(CellviewError):
    """The user cancelled a run."""
