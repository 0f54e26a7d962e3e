"""Background loops: one daemon thread that repeats a step until it is stopped.

``Loop(name, step)`` calls ``step()`` and waits the number of seconds it returns before the next
call. A step that raises is logged (``error_message`` and the exception) and retried after
``error_delay``: a bug in one pass never ends the thread. ``wake()`` ends a wait at once (new work
arrived); ``stop()`` ends the loop, waking it, and joins the thread. :class:`Background` is the
start/stop of an object that does its work on such a loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Self

from boxwatch.log import kv

log = logging.getLogger("boxwatch.loop")


class Loop:
    def __init__(self, name: str, step: Callable[[], float], error_message: str = "background step failed",
                 error_delay: float = 1.0):
        self.name = name
        self._step = step
        self._error_message = error_message
        self._error_delay = error_delay
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Loop:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """End the loop after the current step, without waiting for it (then interrupt a blocking step)."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """End the loop and wait up to ``timeout`` seconds for its thread."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was called: a long step checks it between units of work."""
        return self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self._step()
            except Exception:  # a bug in one pass must not end the thread: log it, go on
                log.exception(self._error_message, extra=kv(loop=self.name))
                delay = self._error_delay
            self._wake.wait(delay)
            self._wake.clear()


class Background:
    """An object that does its work on a :class:`Loop` (``self._loop``, made in its constructor).

    ``start()`` starts the loop and returns the object; ``stop()`` ends the loop, then ``close()``
    releases what the loop used (an HTTP session, a client).
    """

    _loop: Loop

    def start(self) -> Self:
        self._loop.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._loop.stop(timeout)
        self.close()

    def close(self) -> None:
        """Release what the loop used; called once the loop has ended."""
