"""Allocator settings of the long-running agent: memory it frees goes back to the system.

Why (issue 17, measured in BENCHMARKS.md "Memory"): each closed window builds and frees
a few MiB of Arrow buffers. Arrow's default pool (mimalloc in pyarrow's wheels, else
jemalloc) keeps freed pages for reuse, and glibc gives each thread that allocates an
arena of its own (up to 8 per core) and keeps freed heap too; all of it shows as resident
memory the agent does not use: 114 MiB at 1,000 Modbus tags without these settings, 106
MiB with them.

So ``run`` puts Arrow on the system allocator (``ARROW_DEFAULT_MEMORY_POOL=system`` unless
the environment says otherwise, read when pyarrow makes its first pool) and tells glibc
to use at most two arenas and to give large blocks (a batch's columns) mappings of their
own, unmapped when freed; the closer calls :func:`trim` once a second for the smaller
blocks freed in the middle of the heap. Where the C library is not glibc (musl), the
glibc part is skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

ARENAS = 2  # the event loop's thread, and one for the rest (executor, Arrow)
LARGE = 256 * 1024  # blocks from this size get a mapping of their own
POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


_trimmed: ctypes.CDLL | None = None  # glibc, once return_freed_memory has set it up


def return_freed_memory() -> None:
    """Call once at start, before any thread is made (an arena is per thread)."""
    global _trimmed
    os.environ.setdefault(POOL_ENV, "system")
    if "pyarrow" in sys.modules and os.environ[POOL_ENV] == "system":
        import pyarrow as pa  # already loaded: its pool may exist, so switch explicitly

        pa.set_memory_pool(pa.system_memory_pool())
    libc = _glibc()
    if libc is None:
        return
    _trimmed = libc
    libc.mallopt(_M_ARENA_MAX, ARENAS)
    # a fixed threshold also stops glibc raising it after each large free (it climbs to
    # 32 MiB by default, after which a batch's freed columns stay in the heap)
    libc.mallopt(_M_MMAP_THRESHOLD, LARGE)
    libc.mallopt(_M_TRIM_THRESHOLD, LARGE)


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def trim() -> None:
    """Hand the free pages inside glibc's heap back to the system (``malloc_trim``): the
    closer calls it once a second, after windows were closed and encoded. A no-op unless
    :func:`return_freed_memory` ran (``edge-agent run``), and without glibc."""
    if _trimmed is not None:
        _trimmed.malloc_trim(0)
