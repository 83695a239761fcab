"""The fixed mapping threshold: freed large blocks no longer move later allocations to the heap."""

import subprocess
import sys

import pytest

# In a child process (the setting is process-wide): free one 16 MiB mapped block, which in
# glibc's default raises the mapping threshold to 16 MiB, then allocate 2 MiB and count the
# mapped blocks (mallinfo2's hblks) before and after.
_CHILD = """
import ctypes, sys
from rsis.allocator import map_allocations_above

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    assert map_allocations_above(1 << 20)
libc.free(libc.malloc(16 << 20))
before = libc.mallinfo2().hblks
block = libc.malloc(2 << 20)
print(libc.mallinfo2().hblks - before)
libc.free(block)
"""


def _mapped_blocks_for_2_mib(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_fixed_threshold_keeps_mapping_large_blocks_after_a_larger_one_is_freed():
    assert _mapped_blocks_for_2_mib("dynamic") == 0  # glibc raised its threshold: heap
    assert _mapped_blocks_for_2_mib("fixed") == 1  # its own mapping, unmapped when freed
