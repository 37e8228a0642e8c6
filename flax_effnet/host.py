"""Host-process settings that XLA:CPU's speed depends on: malloc, and XLA's CPU flags.

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
import os
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


def _cpu_info() -> tuple[str, frozenset[str]]:
    """(vendor_id, flags) of the first CPU in /proc/cpuinfo; ('', {}) where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines()
                          if ":" in line)
    except OSError:
        return "", frozenset()
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("vendor_id", ""), frozenset(fields.get("flags", "").split())


def recommended_xla_cpu_flags(cpu: tuple[str, frozenset[str]] | None = None) -> list[str]:
    """The XLA:CPU flags measured to make flax_effnet faster on this CPU (`cpu`: `_cpu_info()`).

    `--xla_cpu_prefer_vector_width=512` on AMD CPUs with AVX-512 (Zen 4 and later run 512-bit
    operations at full clock): b0 eval forward 1.14x in CPU time (float32, batch 8, 224 px, 2
    cores; `benchmarks/bench_xla_flags.py`), train step unchanged, outputs within float32
    round-off; on a quiet Zen 5, eval 1.09x and train 1.02x (wall clock). XLA's default,
    256, is kept elsewhere: on an Intel Xeon with AMX (Sapphire Rapids class) the same script
    gave eval 1.04x and train 1.01x on a quiet machine (1.12x and 0.95x under load), too
    little to set a flag for; older Intel cores lower their clock under heavy 512-bit code
    and were not measured. `--xla_cpu_use_onednn=true` (read from
    `XLA_FLAGS` only) gave 1.01-1.27x there in separate processes whose unflagged runs varied
    from 54 to 75 img/s, so it is not set either. oneDNN, XNNPACK graph fusion, YNNPACK fusion
    types, fast math, the FAST_RUNTIME preset and the schedulers made nothing faster here (the
    same script), so none is set.
    """
    vendor, flags = _cpu_info() if cpu is None else cpu
    if vendor == "AuthenticAMD" and "avx512f" in flags:
        return ["--xla_cpu_prefer_vector_width=512"]
    return []


def _jax_backends_started() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge  # no public API says whether XLA has read its flags

    return xla_bridge.backends_are_initialized()


def set_xla_cpu_flags() -> list[str]:
    """Put `recommended_xla_cpu_flags()` into `XLA_FLAGS`, unless the user has set `XLA_FLAGS`.

    XLA reads `XLA_FLAGS` once, when JAX creates its first backend, so this must run before
    JAX's first computation (importing jax is fine); later, when they could no longer take
    effect, it changes nothing (so nothing leaks into this process's child processes either).
    The flags concern XLA:CPU only; other backends ignore them. Returns the flags it set.
    """
    if "XLA_FLAGS" in os.environ or _jax_backends_started():
        return []
    flags = recommended_xla_cpu_flags()
    if flags:
        os.environ["XLA_FLAGS"] = " ".join(flags)
    return flags
