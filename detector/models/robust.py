"""Rolling median / MAD: the model for short histories and for series seen for the first time."""

from __future__ import annotations

from collections import deque

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
    window_ : collections.deque
        The recent points the next score is based on (normal points only).

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
        values = history["value"].to_numpy(dtype=float)
        values = values[~np.isnan(values)]
        self.window_ = deque(values[-self.window :].tolist(), maxlen=self.window)
        return self

    def _band(self) -> tuple[float, float, float]:
        if len(self.window_) < self.min_points:
            return np.nan, np.nan, np.nan
        values = np.fromiter(self.window_, dtype=float)
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
                self.window_.append(value)
