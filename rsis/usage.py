"""The exact CPU time and peak memory of one ``rsis`` command, as its last log line.

Snakemake's ``benchmark:`` files sample a job's process tree (every 0.5 s for the first 15 s,
then every 30 s): a process's CPU time after its last sample is lost, so a job of a minute
can be undercounted by half. ``rsis bench rehearsal`` reads this line from a rule's log
instead, where it is present.
"""

from __future__ import annotations

import re
import resource
from pathlib import Path

PREFIX = "resources used:"
_LINE = re.compile(rf"{PREFIX} ([\d.]+) CPU s .*peak RSS ([\d.]+) MB")


def usage_line() -> str:
    """CPU seconds (user + system) of this process and its finished children, and the peak
    resident memory of the largest of them (Linux reports ``ru_maxrss`` in KiB)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    peak_mb = max(own.ru_maxrss, children.ru_maxrss) * 1024 / 1e6
    return (
        f"{PREFIX} {cpu:.2f} CPU s (this process and its finished children), "
        f"peak RSS {peak_mb:.0f} MB (largest single process)"
    )


def read_usage(log: Path) -> tuple[float, float] | None:
    """(CPU seconds, peak RSS in MB) from the last usage line of ``log``, or None."""
    if not log.is_file():
        return None
    found = _LINE.findall(log.read_text(errors="replace"))
    return (float(found[-1][0]), float(found[-1][1])) if found else None
