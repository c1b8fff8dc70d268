"""Start-up of the worker processes of the local clusters CellView starts (a Dask ``preload``).

Ctrl-C in a terminal reaches every process of the foreground group. Only the client should act
on it: it cancels the run, writes the cohort tables and closes the cluster. Workers ignore it, so
they neither print KeyboardInterrupt tracebacks nor die before the client has shut them down.
"""

from __future__ import annotations

import signal
from typing import Any


def dask_setup(worker: Any) -> None:  # noqa: ARG001 - the hook's signature
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread of the process: leave it
        pass
