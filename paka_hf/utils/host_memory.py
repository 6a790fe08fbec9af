"""Keep freed host memory in the process, so that large CPU tensors stop costing a page fault per 4 KiB.

PyTorch's CPU allocator has no cache: every tensor is a ``malloc`` and every free a ``free``. glibc serves a
request above its mmap threshold (128 KiB at start, adapting up to 32 MiB) with a fresh ``mmap`` and hands it
back with ``munmap`` when freed, and it trims the heap's free top above 128 KiB. A ViT forward at evaluation
sizes allocates hundreds of such blocks per batch (ViT-S/14 at 448 × 616, batch 16: 35 MB per token tensor, 138
MB per MLP activation), so each one comes back from the kernel as zeroed pages, one fault per page. Measured on a
2-core x86_64 CPU (glibc 2.36, ``python benchmarks/host_memory.py --shared ../shared``): extracting 32 CamVid
images at 448 × 616 took 21.2 s with 4.2 M minor page faults and 9.0 s of system time, and 15.4 s with 0.17 M
faults and 0.4 s of system time once freed memory stayed in the process (1.38× faster; bit-identical features).
A CPU training step at the CamVid recipe's sizes (224² views, batch 8) gained nothing (8.2 s against 8.6 s for 5
steps; 0.19 M faults to begin with), so only the evaluation turns it on.

:func:`keep_freed_host_memory` raises the mmap threshold and the trim threshold through ``mallopt``, so freed
blocks are reused by the next allocation of the same size. The cost: memory freed by the process is not returned
to the system while it runs (resident memory stays near its peak). ``paka-evaluate`` calls it on start-up; set ``PAKA_KEEP_FREED_HOST_MEMORY=0`` to leave glibc's defaults, and
any of glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` variables also leaves them alone. On a
system without glibc (macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

logger = logging.getLogger(__name__)

#: mallopt's parameter numbers (glibc malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Requests up to this size come from the heap and are reused there once freed (glibc accepts up to
#: HEAP_MAX_SIZE / 2 for its secondary arenas; the main arena grows with brk and takes any size).
MMAP_THRESHOLD_BYTES = 1 << 30
#: The heap's free top is returned to the system only above this size (mallopt takes a C int: at most 2 GiB - 1).
TRIM_THRESHOLD_BYTES = 2**31 - 1
#: The environment variable that turns the setting off ("0", "false", "no", "off").
OPT_OUT_VARIABLE = "PAKA_KEEP_FREED_HOST_MEMORY"
_GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_host_memory() -> bool:
    """Set glibc's mmap and trim thresholds so freed host memory is reused by the process (module docstring).

    Returns:
        True when both thresholds were set; False when the user opted out, set glibc's own variables, or the C
        library is not glibc (nothing changed then).
    """
    if os.environ.get(OPT_OUT_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if any(name in os.environ for name in _GLIBC_VARIABLES):
        return False  # the user tuned glibc directly: theirs wins
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    logger.debug("glibc mmap/trim thresholds raised to keep freed host memory: %s", done)
    return done
