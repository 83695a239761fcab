"""Subnormal floats flushed to zero on every compute thread (rsis.cpu.flush_subnormals)."""

import platform
import subprocess
import sys

import pytest

# In a child process (the setting is per thread and inherited by threads created later):
# optionally run a parallel operation first (torch's thread pool starts), then the command's
# set-up, then count the nonzero results of 1e-30 * 1e-10 (= 1e-40, subnormal) computed on
# two threads.
_CHILD = """
import sys, torch
torch.set_num_threads(2)
if sys.argv[1] == "pool first":
    (torch.ones(1 << 22) * 2).sum()
if sys.argv[1] != "torch alone":
    from rsis.cpu import use_threads
    use_threads(2)
product = torch.full((1 << 22,), 1e-30) * 1e-10
print(int((product != 0).sum()))
"""


def _nonzero_subnormals(mode: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout), result.stderr


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86's FTZ/DAZ")
def test_use_threads_flushes_subnormals_on_every_thread_and_warns_when_too_late():
    assert _nonzero_subnormals("torch alone")[0] == 1 << 22  # torch keeps subnormals
    assert _nonzero_subnormals("set-up first")[0] == 0
    # the pool's threads started before the set-up keep subnormals: only part is flushed
    nonzero, stderr = _nonzero_subnormals("pool first")
    assert 0 < nonzero < 1 << 22
    assert "flushed on this thread only" in stderr
