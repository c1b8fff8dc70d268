"""The one worker abstraction of the GUI: a QThread that iterates a generator and emits its items.

Long work is a generator (the core's ``analyze`` or a small one in ``tasks``); the worker emits
each item as a signal on the main thread, so widgets are only touched there. Cancelling only
sets a token the generator checks; the worker keeps relaying what it yields until it returns
(the analysis yields its partial result after a cancel), so late items are ignored by the
receiver, which compares the sender with the worker it currently holds.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from cellview.analysis.pipeline import CancelToken
from cellview.base.errors import CellviewError


class _Runner(QObject):
    """Lives in the worker thread; its signals are relayed to the main thread by ``Worker``."""

    item = Signal(object)
    failed = Signal(object)
    done = Signal()

    def __init__(self, make_items: Callable[[CancelToken], Iterator[Any]], token: CancelToken) -> None:
        super().__init__()
        self._make_items = make_items
        self._token = token

    @Slot()
    def run(self) -> None:
        _yield_cpu_to_ui()
        try:
            for value in self._make_items(self._token):
                self.item.emit(value)
        except CellviewError as exc:
            self.failed.emit(exc)
        except Exception as exc:  # noqa: BLE001 - a bug in a worker becomes a dialog, never a dead app
            self.failed.emit(CellviewError(f"Unexpected error: {exc}", traceback.format_exc()))
        finally:
            self.done.emit()
            self.thread().quit()


def _yield_cpu_to_ui() -> None:
    """Lower this thread's CPU priority (inherited by the threads it starts: tile readers, ONNX Runtime).

    On a 2-core machine analysis would otherwise compete with the UI thread as an equal; Linux
    ignores QThread priorities, but a per-thread nice value works without privileges.
    """
    if hasattr(os, "setpriority") and sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except OSError:
            pass


class Worker(QObject):
    """Runs ``make_items(cancel_token)`` in its own thread; ``item`` per yield, then ``failed`` or ``done``.

    The public signals are emitted on the main thread (relayed through queued connections), so any
    slot, lambdas included, may touch widgets. ``raw_item`` is the worker-thread signal.
    """

    item = Signal(object)
    failed = Signal(object)  # a CellviewError (unexpected exceptions are wrapped into one)
    done = Signal()

    def __init__(self, make_items: Callable[[CancelToken], Iterator[Any]], name: str = "worker") -> None:
        super().__init__()
        self.name = name
        self.cancel_token = CancelToken()
        self._thread = QThread()
        self._thread.setObjectName(f"cellview-{name}")
        self._runner = _Runner(make_items, self.cancel_token)
        self._runner.moveToThread(self._thread)
        self._thread.started.connect(self._runner.run)
        queued = Qt.ConnectionType.QueuedConnection
        self._runner.item.connect(self._relay_item, queued)
        self._runner.failed.connect(self._relay_failed, queued)
        self._runner.done.connect(self._relay_done, queued)
        self.raw_item = self._runner.item

    @Slot(object)
    def _relay_item(self, value: object) -> None:
        self.item.emit(value)

    @Slot(object)
    def _relay_failed(self, exc: object) -> None:
        self.failed.emit(exc)

    @Slot()
    def _relay_done(self) -> None:
        self._thread.wait(2000)
        self.done.emit()

    def start(self) -> None:
        self._thread.start(QThread.Priority.LowPriority)

    def cancel(self) -> None:
        self.cancel_token.cancel()

    def is_running(self) -> bool:
        return self._thread.isRunning()

    def wait(self, timeout_ms: int = 15000) -> bool:
        """Cancel and join the thread (closing the window); True once it has stopped."""
        self.cancel()
        return bool(self._thread.wait(timeout_ms)) if self._thread.isRunning() else True


class QtRunner(QObject):
    """Runs the viewer model's jobs (``cellview.viewer.jobs.Job``) on Workers; callbacks arrive on the main thread.

    Keeps every Worker until it is done, so ``shutdown`` can stop them all when the window closes.
    ``started`` fires with the job's name and its Worker before the thread starts (tests and
    benchmarks hook into the analysis there).
    """

    started = Signal(str, object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.workers: set[Worker] = set()

    def __call__(self, job: Any) -> Worker:
        worker = Worker(job.run, job.name)
        worker.item.connect(job.on_item)
        worker.failed.connect(job.on_failed)
        worker.done.connect(job.on_done)
        self.start(worker, job.name)
        return worker

    def start(self, worker: Worker, name: str = "") -> Worker:
        """Track and start a worker (also the display's own, such as tile loaders)."""
        self.workers.add(worker)
        worker.done.connect(lambda w=worker: self.workers.discard(w))
        self.started.emit(name or worker.name, worker)
        worker.start()
        return worker

    def shutdown(self, timeout_ms: int = 15000) -> bool:
        """Cancel every worker and wait for their threads; True if all stopped."""
        workers = list(self.workers)
        for w in workers:
            w.cancel()
        return all(w.wait(timeout_ms) for w in workers)
