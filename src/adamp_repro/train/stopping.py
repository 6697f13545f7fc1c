"""SIGTERM and SIGHUP end a run cleanly: the record says ``interrupted`` and names the signal.

SIGTERM is what ``kill``, SLURM preemption and most time limits send; SIGHUP comes when a terminal closes. The
first such signal asks the trainer to stop at the end of the current step (every step in one process; at the
next agreed point, a logging interval or the epoch's end, in a distributed job, so all ranks stop together); a
second one stops at once. After the record is written the default handler is restored and the signal raised
again, so the process ends with the conventional status (128 + signal number).

A handler someone else installed is left alone: submitit binds SIGTERM (to ignore it) and SIGUSR2 (to
checkpoint and requeue on a time limit), and its requeue must keep working. SIGINT keeps Python's own handler
(``KeyboardInterrupt``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

log = logging.getLogger("adamp_repro")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class RunInterrupted(BaseException):
    """A stop signal ended the run (a BaseException, like KeyboardInterrupt: ``except Exception`` lets it by)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Turns SIGTERM/SIGHUP into a stop request for as long as it is installed (main thread only)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        for signum in HANDLED_SIGNALS:
            if signal.getsignal(signum) is signal.SIG_DFL:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            log.warning("%s received again: stopping now", name)
            raise RunInterrupted(signum)
        self.received = signum
        log.warning("%s received: stopping after the current step and recording the run as interrupted", name)

    def check(self) -> None:
        """Raise ``RunInterrupted`` if a stop signal has arrived."""
        if self.received is not None:
            raise RunInterrupted(self.received)


def exit_by_signal(signum: int) -> None:
    """End this process the way ``signum`` would have ended it (status 128 + signum), output flushed first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
