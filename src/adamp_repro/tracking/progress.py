"""Progress of a batch of runs (a table of ``make reproduce-table``) read from their run folders alone.

``RunWatcher`` polls each run folder's ``summary.json`` in a background thread while the runs train in other
processes, and reports each run once, when it reaches a final status (completed, failed, diverged,
interrupted). A run complete before the watch began counts as done from the start (``resume: auto`` returns it
at once); any other summary present then (an earlier attempt's ``failed``, say) counts only once it is written
again. ``TableProgress`` shows it: runs done of total, time elapsed, an estimate of the rest, and one line per
finished run with its headline numbers; a tqdm bar on a terminal, plain lines otherwise (logs, CI).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from adamp_repro.tracking.records import SUMMARY_FILE, read_summary

FINAL_STATUSES = ("completed", "failed", "diverged", "interrupted")


def _stamp(run_dir: Path) -> int | None:
    try:
        return (run_dir / SUMMARY_FILE).stat().st_mtime_ns
    except OSError:
        return None


def _final_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        summary = read_summary(run_dir)
    except (OSError, ValueError):
        return None  # not written yet, or caught between writes
    return summary if summary.get("status") in FINAL_STATUSES else None


class RunWatcher:
    """Reports, through ``on_finish(name, summary)``, each watched run once when it finishes.

    Args:
        runs: run name (shown) -> run folder.
        on_finish: called with the run's name and its summary (``tracking.records.read_summary``), from the
            watcher's thread while it runs, from ``stop`` for the last poll.
        done_at_start: count a run complete before the watch began as finished (False when the runs are
            trained again, ``--fresh``).
        interval_s: seconds between polls.
    """

    def __init__(
        self,
        runs: Mapping[str, Path],
        on_finish: Callable[[str, dict[str, Any]], None],
        *,
        done_at_start: bool = True,
        interval_s: float = 2.0,
    ) -> None:
        self.runs = dict(runs)
        self.on_finish = on_finish
        self.interval_s = interval_s
        self.already_done: list[str] = []
        self._pending: dict[str, int | None] = {}  # name -> summary stamp when the watch began
        for name, run_dir in self.runs.items():
            summary = _final_summary(run_dir)
            if done_at_start and summary is not None and summary["status"] == "completed":
                self.already_done.append(name)
            else:
                self._pending[name] = _stamp(run_dir)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="run-watcher", daemon=True)
        self._lock = threading.Lock()

    def poll(self) -> None:
        """Report every pending run whose summary has reached a final status since the watch began."""
        with self._lock:
            for name, stamp in list(self._pending.items()):
                run_dir = self.runs[name]
                if _stamp(run_dir) == stamp:
                    continue
                summary = _final_summary(run_dir)
                if summary is not None:
                    del self._pending[name]
                    self.on_finish(name, summary)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def __enter__(self) -> RunWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """End the thread, then poll once more so that a run that finished just before is not missed."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.poll()


def headline(summary: Mapping[str, Any]) -> str:
    """A finished run in a few words: its status, final top-1 (percent) and wall time; the error's first line
    for a run that did not complete."""
    parts = [str(summary.get("status"))]
    top1 = summary.get("final_eval_top1")
    if isinstance(top1, (int, float)):
        parts.append(f"final top-1 {top1:.2f}")
    wall = summary.get("wall_time_s")
    if isinstance(wall, (int, float)):
        parts.append(f"{_duration(wall)}")
    error = summary.get("error")
    if summary.get("status") != "completed" and error:
        parts.append(str(error).strip().splitlines()[0][:160])
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class TableProgress:
    """Runs done of ``total``, elapsed, an estimate of the rest (from the runs finished since the start), and
    one line per finished run on ``stream`` (default stdout, beside the other lines of the command), prefixed
    with ``prefix``. With ``bar`` (default: when stderr is a terminal) a tqdm bar on stderr as well; without,
    the plain lines alone, so that logs and CI stay readable."""

    def __init__(
        self,
        total: int,
        done: Sequence[str] = (),
        *,
        stream: TextIO | None = None,
        bar: bool | None = None,
        prefix: str = "[reproduce-table]",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.done, self.fresh_done = total, len(done), 0
        self.stream = stream or sys.stdout
        self.prefix, self.clock = prefix, clock
        self.started = clock()
        self.bar = None
        if bar if bar is not None else sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=self.done, unit="run", file=sys.stderr, dynamic_ncols=True)
        if done:
            self._write(f"{len(done)} of {total} run(s) already complete")

    def finished(self, name: str, summary: Mapping[str, Any]) -> None:
        self.done += 1
        self.fresh_done += 1
        if self.bar is not None:
            self.bar.update(1)
        self._write(f"{name} {headline(summary)} ({self.status()})")

    def status(self) -> str:
        """``runs d/N, elapsed ..., about ... left`` (no estimate before the first fresh run finishes)."""
        elapsed = self.clock() - self.started
        text = f"{self.done}/{self.total} runs, {_duration(elapsed)} elapsed"
        left = self.total - self.done
        if left > 0 and self.fresh_done:
            text += f", about {_duration(elapsed / self.fresh_done * left)} left"
        return text

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(f"{self.prefix} {line}", file=self.stream)  # clears the bar, writes, redraws it
        else:
            print(f"{self.prefix} {line}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def watching(runs: Mapping[str, Path], *, fresh: bool = False, interval_s: float = 2.0) -> Iterator[None]:
    """Show the progress of ``runs`` (name -> folder) while the body trains them elsewhere: a ``TableProgress``
    fed by a ``RunWatcher``; ``fresh``: the runs are trained again, so none counts as done at the start."""
    if not runs:
        yield
        return
    progress: TableProgress | None = None
    watcher = RunWatcher(
        runs, lambda name, s: progress.finished(name, s), done_at_start=not fresh, interval_s=interval_s
    )
    progress = TableProgress(len(runs), watcher.already_done)
    try:
        with watcher:
            yield
    finally:
        progress.close()
