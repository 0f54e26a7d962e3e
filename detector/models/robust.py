"""Rolling median / MAD: the model for short histories and for series seen for the first time."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import pandas as pd

from detector.models.base import MAD_TO_SIGMA, Model, band_score, empty_scores


class RobustModel(Model):
    """Expected value is the median of the last ``window`` points; the band is ``k`` robust sigmas.

    Parameters
    ----------
    window : int
        How many recent points the median and MAD are taken over.
    k : float
        Band half-width in robust standard deviations (``1.4826 * MAD``).
    min_points : int
        Fewer points than this and the model scores NaN.
    min_scale : float
        Floor of the robust sigma, relative to ``|median|``, so a flat series does not turn
        every tiny wiggle into an anomaly.

    Attributes
    ----------
    window_ : numpy.ndarray
        The recent points the next score is based on (normal points only), oldest first.

    Examples
    --------
    >>> idx = pd.date_range("2026-01-01", periods=100, freq="min", tz="UTC")
    >>> model = RobustModel(window=60).fit(pd.DataFrame({"value": np.ones(100)}, index=idx))
    >>> bool(model.score(pd.DataFrame({"value": [50.0]}, index=idx[-1:] )).score.iloc[0] > 1)
    True
    """

    name = "robust"

    def __init__(self, window: int = 360, k: float = 5.0, min_points: int = 10, min_scale: float = 0.01):
        self.window = window
        self.k = k
        self.min_points = min_points
        self.min_scale = min_scale

    def fit(self, history: pd.DataFrame) -> RobustModel:
        """Keep the last ``window`` values that are not missing: the band's median and MAD come from them."""
        values = history["value"].dropna().to_numpy(dtype=float)
        self.window_ = values[-self.window :].copy() if self.window > 0 else values[:0]
        return self

    def __setstate__(self, state: dict) -> None:
        if isinstance(state.get("window_"), deque):  # pickled before the window was an array
            state["window_"] = np.fromiter(state["window_"], dtype=float)
        self.__dict__.update(state)

    def _push(self, value: float) -> None:
        """Append ``value``, dropping the oldest point once the window is full."""
        if self.window <= 0:
            return
        if len(self.window_) < self.window:
            self.window_ = np.append(self.window_, value)
        else:
            self.window_[:-1] = self.window_[1:]
            self.window_[-1] = value

    def _band(self) -> tuple[float, float, float]:
        if len(self.window_) < self.min_points:
            return np.nan, np.nan, np.nan
        values = self.window_
        median = float(np.median(values))
        sigma = MAD_TO_SIGMA * float(np.median(np.abs(values - median)))
        sigma = max(sigma, self.min_scale * abs(median), 1e-9)
        return median, median - self.k * sigma, median + self.k * sigma

    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()
        if frame.empty:
            return empty_scores(frame.index)
        expected, lower, upper = (np.full(len(frame), v) for v in self._band())
        score = band_score(frame["value"].to_numpy(dtype=float), expected, lower, upper)
        return pd.DataFrame({"expected": expected, "lower": lower, "upper": upper, "score": score}, index=frame.index)

    def learn(self, frame: pd.DataFrame) -> None:
        """Append the points that score inside the band (or that come before any band exists)."""
        self._check_fitted()
        for value in frame["value"].to_numpy(dtype=float):
            if np.isnan(value):
                continue
            expected, lower, upper = self._band()
            if np.isnan(expected) or lower <= value <= upper:
                self._push(value)

    @classmethod
    def score_learn_many(cls, models: Sequence[RobustModel], seconds: float, values: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`score` then :meth:`learn` of one point per model: medians of all windows at once."""
        values = np.asarray(values, dtype=float)
        expected, lower, upper = (np.full(len(models), np.nan) for _ in range(3))
        try:
            windows = [m.window_ for m in models]
        except AttributeError:
            for model in models:
                model._check_fitted()
            raise
        lengths = np.fromiter(map(len, windows), dtype=int, count=len(models))
        min_points = np.fromiter((m.min_points for m in models), dtype=float, count=len(models))
        ready = lengths >= min_points
        for length in np.unique(lengths[ready]):
            rows = np.flatnonzero((lengths == length) & ready)
            table = np.stack([windows[i] for i in rows]) if length else np.empty((len(rows), 0))
            median = row_medians(table)
            sigma = MAD_TO_SIGMA * row_medians(np.abs(table - median[:, None]))
            min_scale = np.array([models[i].min_scale for i in rows], dtype=float)
            k = np.array([models[i].k for i in rows], dtype=float)
            sigma = np.maximum(np.maximum(sigma, min_scale * np.abs(median)), 1e-9)
            expected[rows], lower[rows], upper[rows] = median, median - k * sigma, median + k * sigma
        score = band_score(values, expected, lower, upper)
        with np.errstate(invalid="ignore"):
            learned = ~np.isnan(values) & (np.isnan(expected) | (lower <= values) & (values <= upper))
        for i in np.flatnonzero(learned):
            models[i]._push(values[i])
        return {"expected": expected, "lower": lower, "upper": upper, "score": score}


def row_medians(table: np.ndarray) -> np.ndarray:
    """``np.median(table, axis=1)``, the same values at about half the cost for a window of even length.

    ``np.median`` partitions around both middle positions; one partition around the upper one
    leaves the lower middle value as the largest of the left part, a cheaper pass. A table with a
    NaN (never a model's window) is left to ``np.median``, which propagates it.
    """
    width = table.shape[1]
    if width < 2 or np.isnan(table).any():
        return np.median(table, axis=1)
    middle = width // 2
    part = np.partition(table, middle, axis=1)
    if width % 2:
        return part[:, middle].copy()
    return (part[:, :middle].max(axis=1) + part[:, middle]) / 2
