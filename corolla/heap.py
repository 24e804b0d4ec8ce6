"""Freed memory kept for reuse in the `corolla` command's process, instead of handed back to the kernel.

glibc's malloc serves every block above its mmap threshold (128 KiB at first, 32 MiB at most) with
a fresh mmap and unmaps it when it is freed, and hands the free top of its heap back to the
kernel. A network evaluation allocates and frees activations of tens of megabytes (64 images of
64x64 at 96 channels in bfloat16: 50 MB), so each evaluation gets them back as new pages, which the
kernel zeroes on their first touch: on the 2-core EPYC, 64 images x 20 DDIM steps in bf16 took
9.2 s in a fresh process and 8.0 s once freed memory was reused, and training ran 10 % (bf16) to
30 % (float32) faster (benchmarks/README.md, "Freed memory kept"). With mmap and trimming off,
freed blocks stay in the heap and the next evaluation reuses them. The price: the process keeps
up to TRIM_BYTES of freed memory until it exits, as jemalloc and tcmalloc (which PyTorch's CPU
performance guide recommends for this reason) keep theirs; free_bytes_held() tells how much, so
that the checks of free memory (corolla.limits) count it as free.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameters (glibc's malloc.h)
TRIM_BYTES = 2 ** 31 - 1  # free memory at the top of the heap beyond this goes back to the kernel


def _c_function(name: str, argtypes: list, restype):
    """The C library's function `name` with its types set, None where there is none (not Linux,
    or a C library without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, restype
    return function


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to reuse freed memory (module docstring). True if it took; False where
    the C library is not glibc (macOS, Windows, musl's mallopt does nothing)."""
    mallopt = _c_function("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)
    return mallopt is not None and mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_BYTES) == 1


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (glibc 2.33 on): every field a size_t; fordblks is the free bytes."""
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def free_bytes_held() -> int:
    """Bytes this process's malloc holds freed and will hand out again before asking the kernel
    (glibc's mallinfo2().fordblks); 0 where that is unknown (not glibc, or glibc before 2.33)."""
    mallinfo2 = _c_function("mallinfo2", [], _MallInfo2)
    return 0 if mallinfo2 is None else mallinfo2().fordblks
