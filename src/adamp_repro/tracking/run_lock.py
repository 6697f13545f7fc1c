"""One writer per run folder: an OS lock on ``<run_dir>/.lock`` that dies with the process holding it.

Two processes of the same config (a sweep launched twice, a SLURM requeue beside a manual rerun) would otherwise
write one folder at once and leave a record that contradicts its checkpoint. ``fcntl.flock`` is used directly
(stdlib) rather than a library such as ``filelock`` because the refusal must name the holder: the holder writes
its pid and host into the lock file, and a process that finds the lock taken reads them back. The kernel drops
the lock when the holder dies (even by SIGKILL), so a stale ``.lock`` file is simply taken over.

Where the file system cannot lock (some network mounts answer ENOLCK or EOPNOTSUPP), the run goes on but says so
in a warning and in its summary (``run_lock``), instead of running unprotected in silence.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from pathlib import Path

from adamp_repro.errors import UsageError

log = logging.getLogger("adamp_repro")

LOCK_FILE = ".lock"
_HELD = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)


class RunFolderBusy(UsageError):
    """Another live process holds the run folder's lock."""


class RunLock:
    """Exclusive lock of one run folder. ``acquire`` refuses at once if a live process holds it.

    ``status`` is ``held`` once taken, ``unavailable: <reason>`` where the file system cannot lock.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.status = "not taken"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno in _HELD:
                    raise RunFolderBusy(
                        f"run folder {self.run_dir} is in use by {holder}; wait for that run to end or stop it "
                        "(a rerun then resumes from its checkpoint)"
                    ) from None
                self.status = f"unavailable: {os.strerror(exc.errno or 0)} (errno {exc.errno})"
                log.warning(
                    "WARNING: cannot lock %s (%s): this run is NOT protected against a second process of the "
                    "same config writing the same folder",
                    self.path,
                    self.status,
                )
                return
            # A releasing holder unlinks the file before unlocking: a lock taken on an unlinked file is no lock.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        self._fd = fd
        self.status = "held"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # nothing left behind in a committed record folder
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
            self.status = "released"

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process (pid not yet written)"


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
