"""Keep freed memory in the process, so that large temporaries do not page-fault afresh.

glibc's ``malloc`` serves a block above its *mmap threshold* with a fresh ``mmap`` and
returns it to the system when freed; the threshold normally adapts upwards to the sizes a
program frees, but in a process that has imported torch it stays low (measured on Linux,
glibc, torch 2.15: every 4 MB tensor allocated and freed in a loop page-faults afresh,
hundreds of faults a time). An evaluation that allocates decoder outputs of megabytes per
chunk then spends a fifth of its CPU time in the kernel, zeroing pages (benchmarks/README.md).

:func:`reuse_freed_memory` fixes the threshold at glibc's largest, 32 MB, so that blocks up to
that size are taken from and returned to the process's heap, and lets up to 256 MB lie free
at the heap's top before it is given back. It changes the whole process's allocator, once,
and is a no-op where the C library has no ``mallopt`` (macOS, Windows).
"""

from __future__ import annotations

import ctypes
import functools

# glibc's malloc.h: mallopt's parameters, and the largest mmap threshold on 64 bits
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 * 2**20
_TRIM_THRESHOLD = 256 * 2**20


@functools.cache
def reuse_freed_memory() -> bool:
    """Serve blocks below 32 MB from the process's heap; True where the C library agreed."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return False
    return (mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
            and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1)
