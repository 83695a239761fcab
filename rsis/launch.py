"""How ``rsis`` starts several training processes on one node: ``torchrun``'s arguments."""

from __future__ import annotations

import os


def torchrun_arguments(processes: int) -> list[str]:
    """Arguments after ``torchrun`` (or ``python -m torch.distributed.run``) that start
    ``processes`` ranks of ``rsis`` on this node.

    ``--log-dir`` is the null device: torchrun would otherwise create a ``torchelastic_*``
    folder in the temporary directory for every job and never remove it; the ranks' output
    still goes to the job's own stderr.
    """
    return [
        "--standalone", f"--nproc-per-node={processes}", "--log-dir", os.devnull, "-m", "rsis.cli"
    ]  # fmt: skip
