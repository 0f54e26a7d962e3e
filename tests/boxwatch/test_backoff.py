"""boxwatch.backoff: the one retry schedule of the exporters, the reader and the supervisor."""

from __future__ import annotations

import pytest

from boxwatch.backoff import Backoff


def test_doubles_up_to_the_maximum_and_resets():
    backoff = Backoff(maximum=5.0, initial=0.5)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_initial_above_the_maximum_is_capped():
    assert Backoff(maximum=0.2, initial=1.0).next_delay() == 0.2


@pytest.mark.parametrize(("maximum", "initial"), [(0, 1), (1, 0), (-1, 1)])
def test_refuses_delays_that_would_spin(maximum, initial):
    with pytest.raises(ValueError):
        Backoff(maximum, initial)
