"""The C library's allocator under large, short-lived tensors (CPU training of a trainable ResNet).

glibc serves an allocation from its own memory mapping, returned to the system when freed,
only above a threshold that starts at 128 KiB and rises to the size of each mapped block
freed (up to 32 MiB). After the first training step most activations therefore come from the
heap, whose freed holes the next step's differently sized tensors cannot all reuse: the
paper-setting training grew from 3.8 GB after step 1 to 4.8 GB. A fixed threshold stops the
rise (BENCHMARKS.md, "The paper's scale, rehearsed").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter, <malloc.h>


def map_allocations_above(threshold_bytes: int) -> bool:
    """Serve every allocation of at least ``threshold_bytes`` from its own mapping (and so
    return it to the system when freed); True if the C library (glibc) took the setting."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is None or not hasattr(libc, "mallopt"):
        log.info("no mallopt in the C library, the mapping threshold stays dynamic")
        return False
    accepted = libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes) == 1
    if accepted:
        log.info("allocations of %d bytes or more are mapped and unmapped", threshold_bytes)
    else:
        log.info("mallopt refused a mapping threshold of %d bytes", threshold_bytes)
    return accepted
