"""Context novelty: a point is anomalous when no context of the series' past predicts it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from detector.calibration import HELD
from detector.models.base import Model, empty_scores
from detector.models.robust import RobustModel


class ContextModel(Model):
    """Novelty of the current context (the last few values, coarsened to a few levels), ranked by a band.

    In the spirit of the Contextual Anomaly Detector (CAD OSE, NAB): values are put into
    ``levels`` equal bins over the range of the history the model was fitted on, plus one level
    each side for values beyond it (the range is what was seen, never the future). For each
    order ``k`` in ``1..orders`` the model remembers which level followed each sequence of ``k``
    levels. A new point's *novelty* is the share of the contexts that predict (sequences seen
    before, each weighted by how often: a context seen once predicts little) that never saw
    its level follow. Novelty over ``threshold`` is a new context: the score is above 1, and
    grows with the point's distance from a robust median/MAD band (the same band as
    :class:`~detector.models.robust.RobustModel`, which also gives ``expected``, ``lower`` and
    ``upper``) up to twice the novelty at ``band_cap``, so that among new contexts the ones far
    from the recent level rank first. Otherwise the score is ``novelty / threshold`` (<= 1).
    After a new context the next ``rest`` points are not scored: one incident, one report (CAD's
    rest period). Of those, the first ``hold`` points, and every point after them while the value
    stays outside the band, score just above 1 (:data:`~detector.calibration.HELD`); the rest
    score 0. So the published score stays above 1 while the incident lasts (the shipped
    ``AnomalyScoreHigh`` waits 3 minutes before it fires) without a second rising edge, as the
    calibrated models' scores do; the hold never outlasts the rest period. Once the value is back
    inside the band, a later point outside it whose context is new is the next incident: it is
    scored, and starts a rest period of its own (the rest keeps one incident to one report, it
    does not hide the next). A refit takes over the rest period (:meth:`carry_over`).

    The score means the same on every series (a share of the series' own contexts, and the
    band distance only ranks points that are novel already), so the service publishes it as
    is: ``calibrated`` is true and no per-series calibration is applied.

    The context table learns every point, anomalous or not: novelty is by nature seen once, and
    a new regime stops being novel once its contexts are known. The band learns only the
    points inside it.

    Parameters
    ----------
    levels : int
        Bins of the fitted range.
    orders : int
        Longest context, in points. The table has at most ``(levels + 2) ** orders`` contexts.
    threshold : float
        Novelty (share of predicting contexts that did not predict the point) that scores 1.
    rest : int
        Points not scored after a new context (held, then 0).
    hold : int
        Points of the rest period held just above 1 whatever the value (more while it stays
        outside the band).
    min_points : int
        Points learned before the model scores (NaN before).
    window, k, min_scale :
        The band's (:class:`~detector.models.robust.RobustModel`).
    band_cap : float
        Band distance at which a new context's score is twice its novelty score.

    Attributes
    ----------
    low_, high_ : float
        The fitted range.
    table_ : dict
        ``context -> {next level: count}`` for every context seen (tuples of levels).
    recent_ : tuple
        The last ``orders`` levels, oldest first.
    seen_ : int
        Points learned.
    rest_left_ : int
        Points still in the rest period.
    hold_left_ : int
        Points still held whatever the value.
    held_ : bool
        Whether the rest period's points are still held.
    band_ : RobustModel

    Examples
    --------
    >>> idx = pd.date_range("2026-01-01", periods=400, freq="min", tz="UTC")
    >>> model = ContextModel().fit(pd.DataFrame({"value": np.arange(400) % 10.0}, index=idx))
    >>> after = idx[-1] + pd.Timedelta("1min")
    >>> float(model.score(pd.DataFrame({"value": [0.0]}, index=[after])).score.iloc[0]) < 1
    True
    >>> float(model.score(pd.DataFrame({"value": [50.0]}, index=[after])).score.iloc[0]) > 1
    True
    """

    name = "context"
    calibrated = True
    # Models saved before the hold existed load without it.
    hold, hold_left_, held_ = 0, 0, False

    def __init__(self, levels: int = 6, orders: int = 2, threshold: float = 0.9, rest: int = 150,
                 min_points: int = 20, window: int = 360, k: float = 5.0, min_scale: float = 0.01,
                 band_cap: float = 5.0, hold: int = 10):
        self.levels = levels
        self.orders = orders
        self.threshold = threshold
        self.rest = rest
        self.hold = hold
        self.min_points = min_points
        self.window = window
        self.k = k
        self.min_scale = min_scale
        self.band_cap = band_cap

    def fit(self, history: pd.DataFrame) -> ContextModel:
        """Learn the range, then every context of ``history`` in order; the band keeps its last values."""
        values = history["value"].to_numpy(dtype=float)
        values = values[~np.isnan(values)]
        self.low_ = float(values.min()) if len(values) else math.nan
        self.high_ = float(values.max()) if len(values) else math.nan
        self.table_: dict[tuple[int, ...], dict[int, int]] = {}
        self.recent_: tuple[int, ...] = ()
        self.seen_ = 0
        self.rest_left_ = self.hold_left_ = 0
        self.held_ = False
        for value in values.tolist():
            self._learn_level(self._level(value))
        self.band_ = RobustModel(self.window, self.k, min(self.min_points, self.window), self.min_scale)
        self.band_.fit(history[["value"]])
        return self

    def carry_over(self, previous: Model) -> None:
        """An incident's rest period (and its hold) goes on across a refit: the refit must not
        report the same incident again, nor drop its held score before the alert rule fires."""
        if isinstance(previous, ContextModel) and previous.rest_left_ > 0:
            self.rest_left_ = min(previous.rest_left_, self.rest)
            self.hold_left_ = min(previous.hold_left_, self.hold)
            self.held_ = previous.held_ and self.rest_left_ > 0

    def _level(self, value: float) -> int:
        """The value's bin: ``0..levels-1`` inside the fitted range, ``-1`` below it, ``levels`` above."""
        if math.isnan(self.low_):
            return 0
        if value < self.low_:
            return -1
        if value > self.high_:
            return self.levels
        span = self.high_ - self.low_
        if span <= 0:
            return 0
        return min(int((value - self.low_) / span * self.levels), self.levels - 1)

    def novelty(self, value: float) -> float:
        """Weighted share of the predicting contexts that never saw ``value``'s level follow (1: none did)."""
        level, recent = self._level(value), self.recent_
        weight = novel = 0.0
        for k in range(1, min(self.orders, len(recent)) + 1):
            follows = self.table_.get(recent[-k:])
            if not follows:
                continue
            support = sum(follows.values())
            w = support / (1.0 + support)
            weight += w
            if level not in follows:
                novel += w
        return novel / weight if weight else 1.0

    def _learn_level(self, level: int) -> None:
        recent = self.recent_
        for k in range(1, min(self.orders, len(recent)) + 1):
            follows = self.table_.setdefault(recent[-k:], {})
            follows[level] = follows.get(level, 0) + 1
        self.recent_ = (*recent, level)[-self.orders:] if self.orders else ()
        self.seen_ += 1

    def _score(self, value: float, band: float) -> float:
        """The point's score, from its novelty and its band distance ``band`` (NaN: no band yet)."""
        if math.isnan(value) or self.seen_ < self.min_points:
            return math.nan
        resting = self.rest_left_ > 0
        if resting:
            if self.held_ and (self.hold_left_ > 0 or band > 1.0):
                return HELD
            if not band > 1.0:  # inside the band: nothing to report in the rest period
                return 0.0
        score = self.novelty(value) / self.threshold
        if score > 1.0:
            return score * (1.0 + min(0.0 if math.isnan(band) else band, self.band_cap) / self.band_cap)
        return 0.0 if resting else score

    def _learn(self, value: float, score: float) -> None:
        if math.isnan(value):
            return
        if score > 1.0 and (self.rest_left_ == 0 or score != HELD):  # a new incident
            self.rest_left_, self.hold_left_, self.held_ = self.rest, self.hold, self.rest > 0
        elif self.rest_left_ > 0:
            self.rest_left_ -= 1
            self.hold_left_ = max(self.hold_left_ - 1, 0)
            self.held_ = self.held_ and score > 1.0 and self.rest_left_ > 0
        self._learn_level(self._level(value))

    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Score every row against the current state (nothing is learned: see :meth:`learn`)."""
        self._check_fitted()
        if frame.empty:
            return empty_scores(frame.index)
        out = self.band_.score(frame[["value"]])
        band = out["score"].to_numpy(dtype=float)
        values = frame["value"].to_numpy(dtype=float)
        out["score"] = [self._score(v, b) for v, b in zip(values.tolist(), band.tolist(), strict=True)]
        return out

    def learn(self, frame: pd.DataFrame) -> None:
        """Learn the rows in order, each as :meth:`score_learn_many` learns it."""
        self._check_fitted()
        for value in frame["value"].to_numpy(dtype=float).tolist():
            type(self).score_learn_many([self], 0.0, np.array([value]))

    @classmethod
    def score_learn_many(cls, models: Sequence[ContextModel], seconds: float, values: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`score` then :meth:`learn` of one point per model; the bands all at once."""
        values = np.asarray(values, dtype=float)
        for model in models:
            model._check_fitted()
        out = RobustModel.score_learn_many([m.band_ for m in models], seconds, values)
        score = np.array([model._score(value, band) for model, value, band
                          in zip(models, values.tolist(), out["score"].tolist(), strict=True)], dtype=float)
        for model, value, s in zip(models, values.tolist(), score.tolist(), strict=True):
            model._learn(value, s)
        return {**out, "score": score}
