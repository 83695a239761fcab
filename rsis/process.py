"""Process hygiene of long jobs: die with the parent, and one writer per run folder."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from rsis.errors import UserError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def exit_with_parent() -> None:
    """Ask Linux to send SIGTERM to this process when its parent dies (no-op elsewhere).

    Snakemake runs each job as ``bash -c '...'``; stopping Snakemake (SIGTERM, or a cluster
    cancelling the job) ends that shell, and without this ``rsis train`` would keep running as
    an orphan, still writing into the run folder that the rerun trains in.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def exclusive_folder(folder: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``folder/.lock``) for the duration of the block.

    A second process that wants the same folder (an orphan of a killed Snakemake still
    running, or the same run started twice) is refused at once, naming the holder's pid. The
    lock is the kernel's (``flock``): it vanishes with its process, so a crash never leaves a
    stale lock behind.

    Args:
        what: the job, for the message (e.g. ``rsis train``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise UserError(
                f"{folder} is in use by another {what} (pid {holder}): wait for it, or stop it "
                f"(kill {holder}) and rerun"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
