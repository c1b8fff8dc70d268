"""Start-up of the worker processes of the local clusters CellView starts (a Dask ``preload``).

Ctrl-C in a terminal reaches every process of the foreground group. Only the client should act
on it: it cancels the run, writes the cohort tables and closes the cluster. Workers ignore it, so
they neither print KeyboardInterrupt tracebacks nor die before the client has shut them down. Their
logs are silenced too: a heartbeat that finds the scheduler gone while the client shuts the cluster down
printed a traceback after a clean Ctrl-C, and a slide's real failure reaches the run through its task.
"""

from __future__ import annotations

import logging
import signal
from typing import Any


def dask_setup(worker: Any) -> None:  # noqa: ARG001 - the hook's signature
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread of the process: leave it
        pass
