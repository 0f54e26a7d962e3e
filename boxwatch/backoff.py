"""Exponential backoff for everything that retries: a source that is down, a child that exited."""

from __future__ import annotations


class Backoff:
    """Delays ``initial``, ``2 * initial``, ``4 * initial``, ... up to ``maximum``; ``reset()`` after a success.

    >>> b = Backoff(maximum=3.0, initial=1.0)
    >>> [b.next_delay() for _ in range(4)]
    [1.0, 2.0, 3.0, 3.0]
    """

    def __init__(self, maximum: float, initial: float = 0.5):
        if initial <= 0 or maximum <= 0:
            raise ValueError(f"backoff delays must be positive, got initial={initial!r} maximum={maximum!r}")
        self._initial = min(initial, maximum)
        self._maximum = maximum
        self._next = self._initial

    def next_delay(self) -> float:
        """The delay to wait now; the one after it is twice as long (at most ``maximum``)."""
        delay = self._next
        self._next = min(self._next * 2, self._maximum)
        return delay

    def reset(self) -> None:
        """Start again from ``initial``: the retried operation succeeded."""
        self._next = self._initial
