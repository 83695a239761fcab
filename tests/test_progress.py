"""Progress bars redraw sparsely in log files and live in terminals."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

# 60 steps at 20 ms, about 1.2 s: plain tqdm draws this bar 74 times (each set_postfix redraws)
LOOP = (
    "import time\n"
    "from rsis.progress import progress_bar\n"
    "bar = progress_bar(range(60), desc='work')\n"
    "for step in bar:\n"
    "    time.sleep(0.02)\n"
    "    bar.set_postfix(loss=f'{1 / (step + 1):.3f}')  # as training does, every step\n"
)


def _redraws(stderr: bytes) -> int:
    return stderr.count(b"work:")


def test_a_bar_in_a_log_file_is_drawn_at_its_start_and_end_only(tmp_path):
    log = tmp_path / "job.log"
    with log.open("wb") as out:
        subprocess.run([sys.executable, "-c", LOOP], stderr=out, check=True, timeout=60)
    text = log.read_bytes()
    assert _redraws(text) == 2, text
    assert b"60/60" in text and b"loss=0.017" in text


def test_a_bar_in_a_terminal_stays_live():
    main, child = pty.openpty()
    # 24 rows x 80 columns: a new terminal is 0 columns wide, where tqdm draws nothing
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen([sys.executable, "-c", LOOP], stderr=child)
    os.close(child)
    received = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        received += chunk
    os.close(main)
    assert process.wait(timeout=60) == 0
    assert _redraws(received) > 4, received
