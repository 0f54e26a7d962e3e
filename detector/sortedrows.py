"""Rows of a matrix kept sorted, updated in place for many rows at once.

A row holds ``length`` valid values in ascending order, then padding (``inf``). Searching and
replacing one value per row are a few array operations over all rows: a binary search as
array steps, and one move of the values between the old and the new place (element-wise across
rows where few move, a slice copy per row where many do). A row kept inside a wider buffer may
instead move the values outside the two places, and with them its start, where that moves fewer:
a trend, which puts the oldest and the newest value at opposite ends of the row, then moves almost
none. A few rows (up to ``ROW_BY_ROW``) are searched and updated one by one instead, with the same
results: array steps cost numpy's overhead per call whatever the number of rows. Used for the robust
model's windows and the score calibration's tail (the same values ``np.sort`` would give), and the
look-up of the bank (the set of such rows) a list of models or calibrations lives in.
"""

from __future__ import annotations

from operator import attrgetter

import numpy as np

_bank_of, _row_of = attrgetter("_bank"), attrgetter("_row")
# A run of more values than this moves with one slice copy (about 1 us, whatever its length) rather
# than element by element in the all-rows gather and scatter (about 13 ns a value).
SLICE_FROM = 64
# Up to this many rows are searched and updated one by one (a searchsorted and a few slice copies,
# about 1 us a row for a search and 2.5 us for a replacement) rather than in array steps over all of
# them (about 35 us for a search and 110 us for a replacement, whatever the number of rows, most of
# it numpy's cost per call). A calibration's tail changes in about a tenth of the rows a point, so at
# 50 series in a handful.
ROW_BY_ROW = 32


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
    """Per row, ``np.searchsorted(row[:length], value, side)`` of sorted rows starting at ``flat[base]``.

    A binary search in array steps, five array operations a step: a probe past a row's end reads
    its last value (the row as if padded with it, still sorted), and the count is capped at
    ``length`` at the end. A NaN value counts none. Up to ``ROW_BY_ROW`` rows, one searchsorted a row.
    """
    if len(base) <= ROW_BY_ROW:
        return _search_each(flat, base, length, values, side)
    longest = int(length.max(initial=0))
    step = 1 << (longest.bit_length() - 1) if longest > 0 else 0
    last = base + length - 1
    at = base - 1  # where the values counted so far end
    counted = np.less if side == "left" else np.less_equal
    while step:
        np.add(at, step, out=at, where=counted(flat[np.minimum(at + step, last)], values))
        step >>= 1
    return np.minimum(at - base + 1, length)


def _search_each(flat: np.ndarray, base: np.ndarray, length: np.ndarray, values: np.ndarray,
                 side: str) -> np.ndarray:
    """:func:`search_rows` row by row (a NaN value counts no value, as the array steps do)."""
    found = np.zeros(len(base), dtype=np.intp)
    for i, (b, n, value) in enumerate(zip(base.tolist(), length.tolist(), values.tolist(), strict=True)):
        if value == value:
            found[i] = flat[b:b + n].searchsorted(value, side)
    return found


def replace_in_rows(flat: np.ndarray, base: np.ndarray, length: np.ndarray, drop: np.ndarray,
                    values: np.ndarray, room: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """In each sorted row, remove the value at ``drop`` and insert ``values[i]`` where it sorts among the
    first ``length`` values; return how far each row's first value moved (-1, 0 or 1). ``drop ==
    length`` removes the padding just after them (the row grows by one); ``values[i] = inf`` with
    ``drop < length`` removes a value (the row shrinks by one).

    The values between the two places step towards the freed one. Given ``room``, the free slots
    before and after each row (a row kept inside a wider buffer), the values outside the two places
    may step instead, the row starting one slot earlier or later, where that moves fewer values: a
    trend (the oldest value at one end of the row, the newest at the other) then moves almost none.
    Without ``room``, a row that grows needs a free slot after it.
    """
    shift = np.zeros(len(base), dtype=np.intp)
    if not len(base):
        return shift
    if len(base) <= ROW_BY_ROW:
        return _replace_each(flat, base, length, drop, values, room)
    place = search_rows(flat, base, length, values)
    place = np.where(place > drop, place - 1, place)
    rightwards = place < drop
    # each row moves one or two runs of values one step: where the first of a run goes, how many,
    # and where each comes from relative to where it goes
    first = [base + np.where(rightwards, place + 1, drop)]
    count = [np.abs(drop - place)]
    source = [np.where(rightwards, -1, 1)]
    if room is not None:
        before, after = room
        # leftwards: the values after the freed place and those before the new one step left; a row
        # that grows with no free slot after it does so whatever the cost
        cramped = (drop >= length) & (after <= 0)
        left = (before > 0) & (cramped | rightwards & (np.maximum(length - 1 - drop, 0) + place < count[0]))
        # rightwards: the values before the freed place and those after the new one step right
        right = ~rightwards & (drop < length) & (after > 0) & (drop + length - 1 - place < count[0])
        first[0] = np.where(left, base + drop, np.where(right, base + 1, first[0]))
        count[0] = np.where(left, np.maximum(length - 1 - drop, 0), np.where(right, drop, count[0]))
        source[0] = np.where(left, 1, np.where(right, -1, source[0]))
        first.append(np.where(left, base - 1, base + place + 2))
        count.append(np.where(left, place, np.where(right, length - 1 - place, 0)))
        source.append(np.where(left, 1, -1))
        shift = np.where(left, -1, np.where(right, 1, 0))
    first, count, source = np.concatenate(first), np.concatenate(count), np.concatenate(source)
    long = count > SLICE_FROM  # the runs of a row read none of the places its other run writes
    if long.any():  # one slice copy a run
        for to, n, by in zip(first[long].tolist(), count[long].tolist(), source[long].tolist(), strict=True):
            flat[to:to + n] = flat[to + by:to + by + n]
        count = np.where(long, 0, count)
    total = int(count.sum())
    if total:  # the short runs: all their values in one gather and one scatter
        target = np.repeat(first - np.cumsum(count) + count, count) + np.arange(total)
        flat[target] = flat[target + np.repeat(source, count)]
    flat[base + place + shift] = values
    return shift


def _replace_each(flat: np.ndarray, base: np.ndarray, length: np.ndarray, drop: np.ndarray, values: np.ndarray,
                  room: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """:func:`replace_in_rows` row by row: the same runs moved (slice copies), the same shifts."""
    shift = np.zeros(len(base), dtype=np.intp)
    places = _search_each(flat, base, length, values, "left")
    before, after = (room[0].tolist(), room[1].tolist()) if room is not None else (None, None)
    for i, (b, n, d, value, place) in enumerate(zip(base.tolist(), length.tolist(), drop.tolist(), values.tolist(),
                                                    places.tolist(), strict=True)):
        if place > d:
            place -= 1
        rightwards = place < d
        moved = abs(d - place)
        # (first slot written, how many, where each reads from relative to it): the values between the two places
        runs = [(b + place + 1, moved, -1) if rightwards else (b + d, moved, 1)]
        by = 0
        if room is not None:
            # the values after the freed place and those before the new one step left (a row that grows with
            # no free slot after it does so whatever the cost), or those before the freed place and after the
            # new one step right, where that moves fewer; the row's start moves with them
            if before[i] > 0 and ((d >= n and after[i] <= 0) or rightwards and max(n - 1 - d, 0) + place < moved):
                runs, by = [(b + d, max(n - 1 - d, 0), 1), (b - 1, place, 1)], -1
            elif not rightwards and d < n and after[i] > 0 and d + n - 1 - place < moved:
                runs, by = [(b + 1, d, -1), (b + place + 2, n - 1 - place, -1)], 1
        for to, count, source in runs:  # a run reads none of the places the other writes
            if count > 0:
                flat[to:to + count] = flat[to + source:to + source + count]
        flat[b + place + by] = value
        shift[i] = by
    return shift


def wider(width: int) -> int:
    """The buffer of a row of up to ``width`` sorted values: a quarter of it free on each side, for the
    row to move by (see :func:`replace_in_rows`)."""
    return width + 2 * (width // 4 + 1)


def middle(span: int, length: np.ndarray) -> np.ndarray:
    """Where ``length`` values start in the middle of a buffer of ``span``."""
    return (span - np.asarray(length)) // 2


def recentre(table: np.ndarray, rows: np.ndarray, start: np.ndarray, length: np.ndarray) -> None:
    """Move each of ``rows`` of ``table`` whose values (``length[row]`` from ``start[row]``) touch an end
    of the row back to its middle, updating ``start``: the row can then move either way again."""
    span = table.shape[1]
    first, count = start[rows], length[rows]
    edge = np.flatnonzero((first == 0) | (first + count >= span))
    for row, at, n in zip(rows[edge].tolist(), first[edge].tolist(), count[edge].tolist(), strict=True):
        to = (span - n) // 2
        table[row, to:to + n] = table[row, at:at + n].copy()
        start[row] = to
