"""Give memory that a process freed back to the system, and keep the garbage collector off what lives long.

glibc's malloc keeps freed memory in its heaps (one arena per thread that allocated, up to eight per
core) for the next allocation; a long-running process that builds large temporaries now and then (the
detector's fit reads a whole window, builds frames and fits models, then drops them) keeps that memory
resident until ``malloc_trim`` hands the free pages of every arena back.

Python's cyclic garbage collector scans every tracked object in a full collection: the modules a
service imports (about 90,000 objects for the detector) and its models, although none of them becomes
garbage between two fits. A full collection runs whenever the objects that survived since the last
one reach a quarter of those it found, which a serve cycle's scored points do every few cycles: ~70 ms
each at 5,000 series on a 2-core machine. :func:`freeze_survivors` moves what is alive after start-up
or a fit to the collector's permanent generation (``gc.freeze``), so a full collection scans only
what came since; reference counting still frees those objects as usual.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache

M_ARENA_MAX = -8  # mallopt parameter (malloc.h)


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None  # glibc only


def limit_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas (``MALLOC_ARENA_MAX``) for threads started from now on; ``False`` where
    the C library is not glibc. Fewer arenas: less memory held free per thread, a little more lock
    contention between threads that allocate at once."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(M_ARENA_MAX, arenas))


def release_free_memory() -> bool:
    """Collect garbage, then return the free pages of every malloc arena to the system; ``True`` when
    some memory was returned (always ``False`` where the C library is not glibc)."""
    gc.collect()
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))


def freeze_survivors() -> int:
    """Collect garbage, then exempt every object still alive from later collections (``gc.freeze``);
    return how many objects that is. Call it when what is alive is what will live long (after start-up,
    after fits). What an earlier call froze is collected again first: a frozen object that became part
    of a reference cycle with no other referrer (an old bundle's models) is freed by the next call."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
