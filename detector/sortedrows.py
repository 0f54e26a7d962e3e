"""Rows of a matrix kept sorted, updated in place for many rows at once.

A row holds ``length`` valid values in ascending order, then padding (``inf``). Searching and
replacing one value per row are a few array operations over all rows: a binary search as
array steps, and one move of the values between the old and the new place (element-wise across
rows where few move, a slice copy per row where many do, as when a trend puts the oldest and the
newest value at opposite ends of the row). Used for the robust
model's windows and the score calibration's tail (the same values ``np.sort`` would give), and the
look-up of the bank (the set of such rows) a list of models or calibrations lives in.
"""

from __future__ import annotations

from operator import attrgetter

import numpy as np

_bank_of, _row_of = attrgetter("_bank"), attrgetter("_row")
# A row moving more values than this moves them with one slice copy (about 1 us, whatever the count)
# rather than element by element in the all-rows gather and scatter (about 13 ns a value).
SLICE_FROM = 64


def common_bank(members) -> object | None:
    """The bank (``_bank``) every one of ``members`` is attached to, or ``None`` when they are not all in
    one (a member without a bank included). One C-level pass: a serve cycle asks it of every unit."""
    try:
        banks = set(map(_bank_of, members))
    except AttributeError:
        return None
    return banks.pop() if len(banks) == 1 else None


def rows_in_bank(members) -> np.ndarray:
    """Each member's row (``_row``) in its bank."""
    return np.fromiter(map(_row_of, members), dtype=np.intp, count=len(members))


def search_rows(flat: np.ndarray, base: np.ndarray, length: np.ndarray, values: np.ndarray,
                side: str = "left") -> np.ndarray:
    """Per row, ``np.searchsorted(row[:length], value, side)`` of sorted rows starting at ``flat[base]``."""
    found = np.zeros(len(base), dtype=np.intp)
    longest = int(length.max(initial=0))
    step = 1 << (longest.bit_length() - 1) if longest > 0 else 0
    while step:
        ahead = found + step
        probe = flat[base + np.minimum(ahead, length) - 1]
        before = probe < values if side == "left" else probe <= values
        found += step * ((ahead <= length) & before)
        step >>= 1
    return found


def replace_in_rows(flat: np.ndarray, base: np.ndarray, length: np.ndarray, drop: np.ndarray,
                    values: np.ndarray) -> None:
    """In each sorted row, remove the value at ``drop`` and insert ``values[i]`` where it sorts among the
    first ``length`` values. ``drop == length`` removes the padding just after them (the row grows
    by one); ``values[i] = inf`` with ``drop < length`` removes a value (the row shrinks by one)."""
    if not len(base):
        return
    place = search_rows(flat, base, length, values)
    place = np.where(place > drop, place - 1, place)
    rightwards = place < drop
    # the values between the two places move one step towards the freed one
    count = np.abs(drop - place)
    first = base + np.where(rightwards, place + 1, drop)  # where the first of them goes
    source = np.where(rightwards, -1, 1)  # where it comes from, relative to that
    long = count > SLICE_FROM
    if long.any():  # a trend puts the oldest and the newest value far apart: one slice copy a row
        for to, n, by in zip(first[long].tolist(), count[long].tolist(), source[long].tolist(), strict=True):
            flat[to:to + n] = flat[to + by:to + by + n]
        count = np.where(long, 0, count)
    total = int(count.sum())
    if total:  # the short moves: all rows' values in one gather and one scatter
        target = np.repeat(first - np.cumsum(count) + count, count) + np.arange(total)
        flat[target] = flat[target + np.repeat(source, count)]
    flat[base + place] = values
