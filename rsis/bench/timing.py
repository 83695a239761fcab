"""What every benchmark times with: the wait for queued GPU work, and the matmul peak."""

from __future__ import annotations

import time

import torch

from rsis.device import CPU


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has run the work queued on it (CUDA runs it asynchronously), so
    that a clock read next counts it; nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(
    size: int,
    repeats: int = 3,
    dtype: torch.dtype = torch.float32,
    device: torch.device = CPU,
) -> float:
    """Best GFLOP/s of ``torch.matmul`` on two ``size`` x ``size`` matrices of ``dtype``, at
    the current thread count, after one untimed product."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
