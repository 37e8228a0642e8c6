"""Host-process malloc settings that XLA:CPU's speed depends on.

XLA:CPU allocates each execution's temporary buffer (the activations a train step keeps for
its backward pass: 0.8 GiB for b0 at batch 8, 224 px) with `posix_memalign` from one of
its worker threads. glibc serves a request that size from that thread's arena with a fresh
`mmap`, and unmaps it again on `free`, so every step page-faults the whole buffer back in,
zero-filled by the kernel. Measured on 2 cores, when that buffer was 974 MiB: 249,000 page
faults and 0.3 s of system time in a 1.0 s b0 train step. PyTorch's CPU allocator goes
through the same `posix_memalign`.

`keep_freed_memory()` stops that. The same settings for a process started from a shell:
    GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:\
glibc.malloc.trim_threshold=1099511627776 python ...
"""

from __future__ import annotations

import ctypes
import sys

# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed memory instead of handing it back to the kernel.

    One arena (so every thread's large blocks come from the one heap), no `mmap` for large
    blocks, and no trimming of the heap's top: a step's buffers are faulted in once and then
    reused by every later step. The cost is that the process holds its peak heap until it
    exits, which a training or inference process does anyway.

    It changes this process only, and must run before JAX's first computation, which starts
    the thread pools (a thread keeps the arena it first allocated from). Returns False, and
    changes nothing, where the C library is not glibc (macOS, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    # mallopt takes an int; glibc stores the trim threshold as size_t, so -1 means "never".
    return all(
        libc.mallopt(param, value) == 1
        for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    )
