"""Per-series online calibration: the raw band distance -> a score where ``> 1`` is alert-worthy.

A model's raw score is the distance from its band (``> 1`` outside it). How often a series
leaves its band depends on the series (its noise, its scale, how well the model fits it), so
one alert rule on the raw score floods on some series and stays silent on others. Each unit
therefore gets a :class:`Calibration` that learns, online, how its raw scores are distributed
and publishes

``score = log(1 + raw) / level``

``level`` (in ``log(1 + raw)`` units) is the largest of three, re-estimated after every
``refit_every`` learned points from the ``window`` most recent ones:

* the tail estimate of the value exceeded at the rate ``target_rate``: above the
  ``tail_quantile`` quantile ``u``, the excesses ``x - u`` are taken as exponential with mean
  ``m`` (peaks over threshold), so ``P(x > u + t) = p_u exp(-t / m)`` and the level is
  ``u + m log(p_u / target_rate)``;
* the largest value of the window: a point alerts only when it is further from its band than
  any point of the recent past (a record, as in NAB's best detectors' "surprise" scores), so a
  series whose band is often crossed by its normal behaviour (a daily peak the model does not
  know) does not alert on each crossing;
* ``log(1 + min_raw)``: a point inside the band (raw <= ``min_raw`` = 1) never alerts.

The same score on a quiet series and on a noisy one then means the same rarity. Until
``min_points`` points have been learned the level is the band's (``log 2``): the score is above
1 exactly when the raw score is.

Points scoring above ``learn_below`` are not learned (default: every point is, so an
incident's peak raises the bar for the next incident instead of firing again). After a
crossing the score is held: while the points stay outside the band (raw > ``min_raw``) and score
above ``sustain`` (0.5: still far out for this series, not a noisy series' usual excursion), and for
``hold`` points after the last of them, the published score stays at least just above 1
(``1 + 1e-6``), so an incident is one incident (one rising edge of ``score > 1``) however long it
lasts and even when it dips back for a few points, and the rule's ``for:`` sees it as one.

The state is small (the recent ``log(1 + raw)`` values, the level, the hold) and is pickled
with the query's models, so a restart keeps it; a refit keeps the learned values and
re-estimates the level.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import numpy as np

from detector.sortedrows import (
    common_bank,
    middle,
    recentre,
    replace_in_rows,
    rows_in_bank,
    search_rows,
    wider,
)

HELD = 1.0 + 1e-6  # a held score: just above the alert level
MIN_LEVEL = 1e-6  # log(1 + raw) a score is measured against at least
MARGIN = 64  # values kept sorted beyond the tail a level fit reads, on each side of a rebuild
STATE = ("values_", "level_", "hold_left_", "unfitted_")


class Calibration:
    """Online raw-score -> calibrated-score map of one unit.

    Parameters
    ----------
    target_rate : float
        Rate of normal points whose calibrated score exceeds 1.
    window : int
        How many recent normal points the tail is fitted on.
    min_points : int
        Normal points needed before the fitted level is used.
    tail_quantile : float
        Quantile of ``log(1 + raw)`` above which the tail is taken as exponential.
    min_raw : float
        Raw score a point must exceed to alert at all (1: outside the band).
    hold : int
        Points after an incident (a score above 1, then points outside the band) during which the
        score stays above 1.
    refit_every : int
        Learned points between two fits of the tail.
    learn_below : float
        Points scoring above this are not learned (``inf``: every point is).
    sustain : float
        While held, a point outside the band that scores above this continues the incident.

    Attributes
    ----------
    values_ : numpy.ndarray
        ``log(1 + raw)`` of the recent normal points, oldest first.
    level_ : float
        The current alert level in ``log(1 + raw)`` units.
    hold_left_ : int
        Points the score is still held above 1.
    unfitted_ : int
        Points learned since the level was last fitted.

    The state lives in a :class:`CalibrationBank` while the calibration is used (one per set of
    units calibrated together); a calibration pickles, copies and reads as its own values.
    """

    def __init__(self, target_rate: float = 0.1, window: int = 4000, min_points: int = 200,
                 tail_quantile: float = 0.9, min_raw: float = 1.0, hold: int = 10, refit_every: int = 1,
                 learn_below: float = math.inf, sustain: float = 0.5):
        self.target_rate = target_rate
        self.window = window
        self.min_points = min_points
        self.tail_quantile = tail_quantile
        self.min_raw = min_raw
        self.hold = hold
        self.refit_every = refit_every
        self.learn_below = learn_below
        self.sustain = sustain
        self.values_ = np.empty(0)
        self.level_ = max(math.log1p(min_raw), MIN_LEVEL)
        self.hold_left_ = 0
        self.unfitted_ = 0

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_bank", "_row")}
        if "_bank" in self.__dict__:
            state.update((name, getattr(self, name)) for name in STATE)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state.get("values_"), deque):  # pickled before the values were an array
            state["values_"] = np.fromiter(state["values_"], dtype=float)
        self.__dict__.update(state)

    def _detach(self) -> None:
        """Take the state back from the bank (the bank's row is left to the others)."""
        if "_bank" in self.__dict__:
            state = {name: getattr(self, name) for name in STATE}
            del self.__dict__["_bank"]
            self.__dict__.update(state)

    def fit_level(self) -> float:
        """Re-estimate ``level_`` from the learned values (done on refit and every ``refit_every``)."""
        bank = CalibrationBank.of([self])
        row = np.array([self._row])
        bank.fit_levels(row)
        return float(bank.level[self._row])

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated scores of consecutive raw scores, learning from each after it is scored.

        NaN stays NaN (not enough history) and neither learns nor advances the hold.
        """
        raw = np.asarray(raw, dtype=float)
        return calibrate_many([self], raw.reshape(1, -1)).reshape(raw.shape)


def _state_property(name: str, kind: type):
    def get(self):
        bank = self.__dict__.get("_bank")
        if bank is None:
            try:
                return self.__dict__[name]
            except KeyError:
                raise AttributeError(name) from None
        if name == "values_":
            return bank.values(self._row)
        return kind(getattr(bank, name[:-1])[self._row])

    def set(self, value):
        bank = self.__dict__.get("_bank")
        if bank is None or name == "values_":
            self._detach()
            self.__dict__[name] = value
        else:
            getattr(bank, name[:-1])[self._row] = value
            bank.stale[self._row] = True  # a level set from outside is re-fitted at the next fit

    return property(get, set, doc=f"See the class' Attributes ({name}).")


Calibration.values_ = _state_property("values_", np.ndarray)
Calibration.level_ = _state_property("level_", float)
Calibration.hold_left_ = _state_property("hold_left_", int)
Calibration.unfitted_ = _state_property("unfitted_", int)


def tail_need(length: np.ndarray, quantile: np.ndarray) -> np.ndarray:
    """How many of the largest of ``length`` values a level fit reads: from the quantile's lower neighbour up."""
    lower = np.floor((length - 1) * quantile)
    return np.where(length > 0, length - np.minimum(np.maximum(lower, 0), np.maximum(length - 1, 0)), 0).astype(np.intp)


class CalibrationBank:
    """The state of many :class:`Calibration` as arrays: row ``r`` is one calibration.

    ``ring[r]`` holds its learned values in arrival order (the oldest at ``head[r]`` once full).
    The level fit reads only the largest ones: the tail quantile's two neighbours, the values
    above it and the maximum. Those are kept sorted in ``tail[r, start[r]:start[r] + size[r]]`` (the
    largest ``size`` values; every other value is no larger than the first), in a row a quarter wider
    on each side (:func:`~detector.sortedrows.replace_in_rows`: values that enter at the top, as in an
    incident, move the row rather than its values), so learning a point moves one value in a short
    sorted row, and the fit is an index, a search and a masked sum, for all units at
    once. When too few are left (the oldest large values aged out), the row is rebuilt from the
    ring with ``MARGIN`` values to spare.
    """

    def __init__(self, calibrations):
        count = len(calibrations)
        states = [{name: getattr(c, name) for name in STATE} for c in calibrations]

        def column(name: str, dtype=float) -> np.ndarray:
            return np.fromiter((getattr(c, name) for c in calibrations), dtype=dtype, count=count)

        self.target_rate, self.min_points = column("target_rate"), column("min_points", np.intp)
        self.tail_quantile, self.min_raw = column("tail_quantile"), column("min_raw")
        self.hold, self.refit_every = column("hold", np.intp), column("refit_every", np.intp)
        self.learn_below, self.sustain = column("learn_below"), column("sustain")
        self.capacity = np.maximum(column("window", np.intp), 0)
        self.floor = np.array([max(math.log1p(m), MIN_LEVEL) for m in self.min_raw.tolist()])
        self.level = np.fromiter((s["level_"] for s in states), dtype=float, count=count)
        self.hold_left = np.fromiter((s["hold_left_"] for s in states), dtype=np.intp, count=count)
        self.unfitted = np.fromiter((s["unfitted_"] for s in states), dtype=np.intp, count=count)
        width = int(self.capacity.max(initial=0))
        self.width = max(width, 1)
        self.ring = np.zeros((count, self.width))
        self.length = np.zeros(count, dtype=np.intp)
        self.head = np.zeros(count, dtype=np.intp)
        for r, state in enumerate(states):
            values = np.asarray(state["values_"], dtype=float)
            values = values[len(values) - min(len(values), int(self.capacity[r])):]
            self.ring[r, : len(values)] = values
            self.length[r] = len(values)
        # the tail rows are as wide as a full window needs (each unit the same wherever it is
        # calibrated: a row's sum then adds the same values in the same order)
        self.tail_width = np.minimum(tail_need(self.capacity, self.tail_quantile) + 2 * MARGIN, self.capacity)
        self.tail_width = np.maximum(self.tail_width, 1)
        self.span = wider(int(self.tail_width.max(initial=1)))
        self.tail = np.full((count + 1, self.span), np.inf)  # a spare row: every row's end is an index
        self.size = np.zeros(count, dtype=np.intp)
        self.start = np.zeros(count, dtype=np.intp)
        self.stale = np.ones(count, dtype=bool)  # the tail or the count changed since the level was fitted
        for r in range(count):
            self._rebuild(r)
        for r, calibration in enumerate(calibrations):
            for name in STATE:
                calibration.__dict__.pop(name, None)
            calibration._bank, calibration._row = self, r

    @classmethod
    def of(cls, calibrations) -> CalibrationBank:
        """The bank all of ``calibrations`` are in, or a new one for them."""
        return common_bank(calibrations) or cls(calibrations)

    def values(self, row: int) -> np.ndarray:
        """Row ``row``'s learned values, oldest first."""
        length, head = int(self.length[row]), int(self.head[row])
        if length < self.capacity[row]:
            return self.ring[row, :length].copy()
        return np.concatenate((self.ring[row, head:length], self.ring[row, :head]))

    def _rebuild(self, row: int) -> None:
        """Row ``row``'s tail from its ring: the largest values a fit reads, with ``MARGIN`` to spare."""
        length = int(self.length[row])
        keep = min(length, int(tail_need(np.array([length]), self.tail_quantile[row:row + 1])[0]) + MARGIN,
                   int(self.tail_width[row]))
        self.tail[row] = np.inf
        start = self.start[row] = middle(self.span, keep)
        if keep:
            self.tail[row, start:start + keep] = np.sort(self.ring[row, :length])[length - keep:]
        self.size[row] = keep

    def learn(self, rows: np.ndarray, x: np.ndarray) -> None:
        """Append ``x[i]`` to row ``rows[i]``, dropping its oldest value once ``window`` are kept."""
        keep = self.capacity[rows] > 0
        rows, x = rows[keep], x[keep]
        if not len(rows):
            return
        capacity, length, head = self.capacity[rows], self.length[rows], self.head[rows]
        full = length >= capacity
        oldest = self.ring[rows, head]
        self.ring[rows, np.where(full, head, head + length)] = x
        self.head[rows] = np.where(full, (head + 1) % capacity, head)
        self.length[rows] = np.minimum(length + 1, capacity)
        self.stale[rows[~full]] = True
        flat = self.tail.reshape(-1)
        # the oldest value leaves the tail if it was in it, else the values below it
        size, base = self.size[rows], self._base(rows)
        out = full & (size > 0) & (oldest >= flat[base])  # flat[base]: the smallest, where size > 0
        leave = rows[out]
        base, size = base[out], size[out]
        self._replace(leave, base, search_rows(flat, base, size, oldest[out]), np.full(len(leave), np.inf))
        self.size[leave] -= 1
        self.stale[leave] = True
        # the new value joins the tail if it is not below it (the tail's smallest value leaves a full row)
        size, base = self.size[rows], self._base(rows)
        join = (size > 0) & (x >= flat[base])
        enter = rows[join]
        size = size[join]
        crowded = size >= self.tail_width[enter]
        self._replace(enter, base[join], np.where(crowded, 0, size), x[join])
        self.size[enter] = size + ~crowded
        self.stale[enter] = True
        recentre(self.tail, rows, self.start, self.size)
        short = rows[self.size[rows] < tail_need(self.length[rows], self.tail_quantile[rows])]
        for row in short.tolist():
            self._rebuild(row)

    def _base(self, rows: np.ndarray) -> np.ndarray:
        """Where the tail of each of ``rows`` starts in ``tail`` flattened."""
        return rows * self.span + self.start[rows]

    def _replace(self, rows: np.ndarray, base: np.ndarray, drop: np.ndarray, values: np.ndarray) -> None:
        """:func:`~detector.sortedrows.replace_in_rows` in the tails of ``rows`` (starting at ``base``)."""
        start, size = self.start[rows], self.size[rows]
        self.start[rows] = start + replace_in_rows(self.tail.reshape(-1), base, size, drop, values,
                                                   (start, self.span - start - size))

    def fit_levels(self, rows: np.ndarray) -> None:
        """Re-estimate the level of ``rows`` (the band's below ``min_points`` values) and restart their count.

        The level is a function of the values (their number and the largest ones) only: a row whose
        tail and count did not change since its last fit keeps its level, which a fit would repeat.
        """
        self.unfitted[rows] = 0
        length = self.length[rows]
        fitted = length >= np.maximum(self.min_points[rows], 1)
        self.level[rows[~fitted]] = self.floor[rows[~fitted]]
        self.stale[rows[~fitted]] = True
        rows = rows[fitted & self.stale[rows]]
        if len(rows):
            self.level[rows] = self._levels(rows)
            self.stale[rows] = False

    def _levels(self, rows: np.ndarray) -> np.ndarray:
        """``max(tail level, largest value, floor)``: the peaks-over-threshold level of the module's docstring.

        The quantile is numpy's (linear, the same value to the last digit); the mean excess is the
        (pairwise) sum of the sorted values above it divided by their number, less the quantile (the
        same as ``np.mean`` in arrival order but for the last digits, and the same wherever the unit
        is calibrated).
        """
        quantile, target, length = self.tail_quantile[rows], self.target_rate[rows], self.length[rows]
        size = self.size[rows]
        flat, base = self.tail.reshape(-1), self._base(rows)
        start = base + size - length  # where the value of overall rank 0 would be
        virtual = (length - 1) * quantile
        lower = np.floor(virtual)
        at_end = virtual >= length - 1
        gamma = virtual - np.where(at_end, -1, lower)
        a = flat[start + np.where(at_end, length - 1, lower).astype(np.intp)]
        b = flat[start + np.where(at_end, length - 1, lower + 1).astype(np.intp)]
        diff = b - a
        u = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
        above = size - search_rows(flat, base, size, u, side="right")
        largest = flat[base + size - 1]
        p_u = above / length
        # the sum of each row's values above u, all rows in one reduceat over (start, end) pairs, the
        # rows from the last in memory to the first: a segment between two pairs then runs backwards,
        # which reduceat answers with one element instead of summing the rest of the row's buffer
        order = np.argsort(base)[::-1]
        bounds = np.empty(2 * len(rows), dtype=np.intp)
        bounds[0::2], bounds[1::2] = (base + size - above)[order], (base + size)[order]
        total = np.empty(len(rows))
        total[order] = np.add.reduceat(flat, bounds)[0::2] if len(rows) else np.zeros(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_excess = np.where(above > 0, total, 0.0) / above - u
            tail = np.where((above > 0) & (p_u > target), u + mean_excess * np.log(p_u / target), largest)
        return np.maximum(np.maximum(tail, largest), self.floor[rows])


def calibrate_many(calibrations: Sequence[Calibration], raw: np.ndarray) -> np.ndarray:
    """:meth:`Calibration.calibrate` of each row of ``raw`` (units x points) with ``calibrations[i]``.

    Point by point, the scores, the learning, the holds and the level fits of all units are arrays
    (see :class:`CalibrationBank`). ``Calibration.calibrate`` is this with one unit, so the results
    and the state left behind are the same as each unit's ``calibrate`` of its row.
    """
    raw = np.asarray(raw, dtype=float)
    out = np.full(raw.shape, np.nan)
    count = len(calibrations)
    if not count:
        return out
    bank = CalibrationBank.of(calibrations)
    units = rows_in_bank(calibrations)
    level, hold_left, unfitted = bank.level, bank.hold_left, bank.unfitted
    for j in range(raw.shape[1]):
        value = raw[:, j]
        present = np.flatnonzero(~np.isnan(value))
        if not len(present):
            continue
        rows, value = units[present], value[present]
        # math's log1p, as before (numpy's may differ in the last digit where it is vectorised)
        x = np.fromiter(map(math.log1p, np.maximum(value, 0.0).tolist()), dtype=float, count=len(value))
        score = x / level[rows]
        learned = score <= bank.learn_below[rows]
        bank.learn(rows[learned], x[learned])
        unfitted[rows[learned]] += 1
        left = hold_left[rows]
        incident = (score > 1.0) | (left > 0) & (value > bank.min_raw[rows]) & (score > bank.sustain[rows])
        after = ~incident & (left > 0)
        score = np.where(incident, np.maximum(score, HELD), np.where(after, HELD, score))
        hold_left[rows] = np.where(incident, bank.hold[rows], np.where(after, left - 1, left))
        out[present, j] = score
        due = rows[unfitted[rows] >= bank.refit_every[rows]]
        if len(due):
            bank.fit_levels(due)
    return out


def tail_level(values: np.ndarray, quantile: float, target_rate: float) -> float:
    """``x`` such that ``P(value > x) = target_rate`` under an exponential tail above ``quantile``
    (of values in any order; the calibration computes the same from its sorted tail)."""
    u = float(np.quantile(values, quantile))
    above = values[values > u]
    p_u = len(above) / len(values)
    if not len(above) or p_u <= target_rate:
        return float(values.max())
    mean_excess = float(np.mean(above - u))
    return u + mean_excess * math.log(p_u / target_rate)
