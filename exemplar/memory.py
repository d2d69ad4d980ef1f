"""Giving memory back: after a large transient allocation (a large candidate pool's pairwise
matrices, a swapped-out index) the objects are freed, but glibc's allocator keeps the pages in
its arenas, so the process's RSS stays at its high-water mark. `release_memory` collects
cycles and asks the allocator to return free pages to the OS (`malloc_trim`); elsewhere than
glibc it only collects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from typing import Any


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_memory(*, collect: bool = True) -> None:
    """Return the allocator's free pages to the OS, after collecting reference cycles when `collect`
    (a full collection holds the interpreter for as long as it walks every object: leave it out on
    paths that run beside latency-sensitive threads; reference counting frees the rest anyway)."""
    if collect:
        gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
