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

HELD = 1.0 + 1e-6  # a held score: just above the alert level
MIN_LEVEL = 1e-6  # log(1 + raw) a score is measured against at least


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

    def __setstate__(self, state: dict) -> None:
        if isinstance(state.get("values_"), deque):  # pickled before the values were an array
            state["values_"] = np.fromiter(state["values_"], dtype=float)
        self.__dict__.update(state)

    def _push(self, x: float) -> None:
        """Append ``x``, dropping the oldest value once ``window`` are kept (an array: a level fit reads
        it without a copy, where a deque of 4,000 floats cost more to convert than the fit itself)."""
        if len(self.values_) < self.window:
            self.values_ = np.append(self.values_, x)
        else:
            self.values_[:-1] = self.values_[1:]
            self.values_[-1] = x

    def fit_level(self) -> float:
        """Re-estimate ``level_`` from the learned values (done on refit and every ``refit_every``)."""
        floor = max(math.log1p(self.min_raw), MIN_LEVEL)
        self.unfitted_ = 0
        if len(self.values_) < self.min_points:
            self.level_ = floor
            return self.level_
        values = self.values_
        self.level_ = max(tail_level(values, self.tail_quantile, self.target_rate), float(values.max()), floor)
        return self.level_

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated scores of consecutive raw scores, learning from each after it is scored.

        NaN stays NaN (not enough history) and neither learns nor advances the hold.
        """
        raw = np.asarray(raw, dtype=float)
        out = np.full(raw.shape, np.nan)
        for i, value in enumerate(raw):
            if math.isnan(value):
                continue
            x = math.log1p(max(value, 0.0))
            score = x / self.level_
            if score <= self.learn_below:
                self._push(x)
                self.unfitted_ += 1
            if score > 1.0 or self.hold_left_ > 0 and value > self.min_raw and score > self.sustain:
                self.hold_left_ = self.hold  # an incident lasts while its points are outside the band
                score = max(score, HELD)
            elif self.hold_left_ > 0:
                self.hold_left_ -= 1
                score = HELD
            out[i] = score
            if self.unfitted_ >= self.refit_every:
                self.fit_level()
        return out


def calibrate_many(calibrations: Sequence[Calibration], raw: np.ndarray) -> np.ndarray:
    """:meth:`Calibration.calibrate` of each row of ``raw`` (units x points) with ``calibrations[i]``.

    Point by point, the scores, the learning and the holds of all units are arrays; a unit's level
    is re-fitted on its own only once it has ``min_points`` values (before that it is the band's).
    The results and the state left behind are the same as each unit's ``calibrate`` of its row.
    """
    raw = np.asarray(raw, dtype=float)
    out = np.full(raw.shape, np.nan)
    count = len(calibrations)
    if not count:
        return out

    def column(name: str, dtype=float) -> np.ndarray:
        return np.fromiter((getattr(c, name) for c in calibrations), dtype=dtype, count=count)

    level, hold_left, unfitted = column("level_"), column("hold_left_", int), column("unfitted_", int)
    hold, min_raw, sustain, learn_below = column("hold", int), column("min_raw"), column("sustain"), column("learn_below")
    refit_every, min_points, window = column("refit_every", int), column("min_points", int), column("window", int)
    floor = np.maximum([math.log1p(m) for m in min_raw.tolist()], MIN_LEVEL)
    lengths = np.fromiter((len(c.values_) for c in calibrations), dtype=int, count=count)
    for j in range(raw.shape[1]):
        value = raw[:, j]
        rows = np.flatnonzero(~np.isnan(value))
        if not len(rows):
            continue
        value = value[rows]
        x = np.array([math.log1p(v) for v in np.maximum(value, 0.0).tolist()])  # math's log1p, as calibrate
        score = x / level[rows]
        learned = score <= learn_below[rows]
        for i, push in zip(rows[learned].tolist(), x[learned].tolist(), strict=True):
            calibrations[i]._push(push)
        grown = rows[learned]
        lengths[grown] = np.minimum(lengths[grown] + 1, window[grown])
        unfitted[grown] += 1
        left = hold_left[rows]
        incident = (score > 1.0) | (left > 0) & (value > min_raw[rows]) & (score > sustain[rows])
        after = ~incident & (left > 0)
        score = np.where(incident, np.maximum(score, HELD), np.where(after, HELD, score))
        hold_left[rows] = np.where(incident, hold[rows], np.where(after, left - 1, left))
        out[rows, j] = score
        due = rows[unfitted[rows] >= refit_every[rows]]
        short = due[lengths[due] < min_points[due]]
        level[short], unfitted[short] = floor[short], 0
        for i in due[lengths[due] >= min_points[due]].tolist():
            calibrations[i].unfitted_ = 0
            level[i], unfitted[i] = calibrations[i].fit_level(), 0
    for calibration, lvl, held, waiting in zip(calibrations, level.tolist(), hold_left.tolist(), unfitted.tolist(),
                                               strict=True):
        calibration.level_, calibration.hold_left_, calibration.unfitted_ = lvl, held, waiting
    return out


def tail_level(values: np.ndarray, quantile: float, target_rate: float) -> float:
    """``x`` such that ``P(value > x) = target_rate`` under an exponential tail above ``quantile``."""
    u = float(np.quantile(values, quantile))
    above = values[values > u]
    p_u = len(above) / len(values)
    if not len(above) or p_u <= target_rate:
        return float(values.max())
    mean_excess = float(np.mean(above - u))
    return u + mean_excess * math.log(p_u / target_rate)
