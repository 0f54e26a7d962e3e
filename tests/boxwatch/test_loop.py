"""boxwatch.loop: a step repeated on its own delay, woken early, surviving a failing step, stopped cleanly."""

from __future__ import annotations

import logging
import threading
import time

from boxwatch.loop import Background, Loop


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_repeats_after_the_delay_the_step_returns_and_wakes_early():
    calls: list[float] = []
    loop = Loop("test-loop", lambda: calls.append(time.monotonic()) or 60.0).start()
    try:
        _wait_for(lambda: len(calls) == 1)
        time.sleep(0.1)
        assert len(calls) == 1, "waits the 60 s the step asked for"
        loop.wake()
        _wait_for(lambda: len(calls) == 2)
    finally:
        loop.stop(timeout=5)
    assert not any(t.name == "test-loop" for t in threading.enumerate())


def test_a_failing_step_is_logged_and_retried(caplog):
    calls = []

    def step() -> float:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("boom")
        return 60.0

    with caplog.at_level(logging.ERROR, logger="boxwatch.loop"):
        loop = Loop("flaky", step, error_message="pass failed", error_delay=0.01).start()
        try:
            _wait_for(lambda: len(calls) == 3)
        finally:
            loop.stop()
    failures = [r for r in caplog.records if r.getMessage() == "pass failed"]
    assert len(failures) == 2 and failures[0].exc_info[1].args == ("boom",)


def test_stop_ends_a_long_wait_at_once_and_stopping_tells_the_step():
    seen = []
    loop = Loop("waiting", lambda: seen.append(loop.stopping) or 3600.0).start()
    _wait_for(lambda: seen)
    began = time.monotonic()
    loop.stop(timeout=5)
    assert time.monotonic() - began < 1.0
    assert seen == [False] and loop.stopping


def test_background_closes_what_its_loop_used_only_after_the_loop_ended():
    class Poller(Background):
        def __init__(self):
            self.passes, self.closed_after = 0, None
            self._loop = Loop("bg-poller", self._pass)

        def _pass(self) -> float:
            self.passes += 1
            return 3600.0

        def close(self) -> None:
            running = any(thread.name == "bg-poller" for thread in threading.enumerate())
            self.closed_after = "while running" if running else self.passes

    poller = Poller()
    assert poller.start() is poller
    _wait_for(lambda: poller.passes == 1)
    poller.stop(timeout=5)
    assert poller.closed_after == 1
