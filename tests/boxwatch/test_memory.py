"""Freed memory goes back to the system: measured as the resident set of a fresh interpreter."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROGRAM = """
import sys
from boxwatch.memory import release_free_memory

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

chunks = [bytes(2000) + bytes([i % 256]) for i in range(100_000)]  # ~200 MiB in malloc's heap
pinned = bytes(3000)  # allocated after the chunks: the heap's top cannot shrink by itself
del chunks
freed = rss_mib()
released = release_free_memory()
print(freed, rss_mib(), released)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_memory_is_returned_after_release():
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True).stdout
    freed, after, released = out.split()
    assert released == "True"
    assert float(freed) - float(after) > 150  # MiB



FROZEN = """
import gc, weakref
from boxwatch.memory import freeze_survivors

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a

kept = cycle()
frozen = freeze_survivors()
tracked = len(gc.get_objects())  # what later collections scan
probe = weakref.ref(kept)
del kept  # garbage now, but only a collection of the frozen objects can find the cycle
gc.collect()
alive_after_collect = probe() is not None
freeze_survivors()
print(frozen, tracked, alive_after_collect, probe() is None)
"""


def test_frozen_objects_leave_the_collections_and_a_later_freeze_frees_their_garbage():
    out = subprocess.run([sys.executable, "-c", FROZEN], capture_output=True, text=True, check=True).stdout
    frozen, tracked, alive_after_collect, freed = out.split()
    assert int(frozen) > 10_000 and int(tracked) < int(frozen) / 10  # the imports' objects, off the scans
    assert alive_after_collect == "True"  # gc.collect() no longer looks at them
    assert freed == "True"  # the next freeze_survivors() does
