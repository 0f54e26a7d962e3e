"""A function run in a child process: its result comes back, and a child that raises, is killed, runs
too long or is cancelled is a ChildFailed here, with the child waited for (no zombie left)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from boxwatch.child import ChildFailed, run_in_child


def _children() -> set[int]:
    """Processes whose parent is this one (zombies included: they are still listed until reaped)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            found.add(int(stat.parent.name))
    return found


def _imports_and_big_result(n: int) -> tuple[int, bool, bytes]:
    import json  # noqa: F401 - imported here, in the child only

    return os.getpid(), "tests.boxwatch.test_child" in sys.modules, b"x" * n


def _raise(message: str) -> None:
    raise ValueError(message)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_result_comes_back_from_another_process_with_its_peak_memory():
    before = _children()
    big = 5 * 2**20  # more than a pipe holds: the result is read while the child writes it
    done = run_in_child(_imports_and_big_result, big)
    pid, imported_here, data = done.value
    assert pid != os.getpid() and imported_here and data == b"x" * big
    assert done.peak_rss_bytes > big and done.seconds > 0
    assert _children() == before


def test_an_argument_larger_than_a_pipe_reaches_the_child():
    assert run_in_child(len, b"y" * (3 * 2**20)).value == 3 * 2**20


def test_an_exception_in_the_child_is_a_failure_naming_it():
    with pytest.raises(ChildFailed, match="ValueError: no good"):
        run_in_child(_raise, "no good")


def test_a_killed_child_is_a_failure_and_is_reaped():
    before = _children()
    with pytest.raises(ChildFailed, match="exited with signal SIGKILL without a result"):
        run_in_child(_kill_self)
    assert _children() == before


def test_a_child_past_its_deadline_is_killed():
    before = _children()
    began = time.monotonic()
    with pytest.raises(ChildFailed, match="deadline of 1 s"):
        run_in_child(time.sleep, 60, timeout=1)
    assert time.monotonic() - began < 10
    assert _children() == before


def test_a_cancelled_child_is_killed():
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    began = time.monotonic()
    with pytest.raises(ChildFailed, match="cancelled"):
        run_in_child(time.sleep, 60, cancel=cancel)
    assert time.monotonic() - began < 10
