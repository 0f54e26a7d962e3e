"""Rolling median / MAD: the model for short histories and for series seen for the first time."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import pandas as pd

from detector import sortedrows
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

    @property
    def window_(self) -> np.ndarray:
        """The recent points, oldest first (a copy where a :class:`RobustBank` holds them)."""
        bank = self.__dict__.get("_bank")
        if bank is not None:
            return bank.window(self._row)
        try:
            return self.__dict__["window_"]
        except KeyError:
            raise AttributeError("window_") from None

    @window_.setter
    def window_(self, values: np.ndarray) -> None:
        self.__dict__.pop("_bank", None)
        self.__dict__["window_"] = values

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_bank", "_row")}
        if "window_" in state:
            state["window_"] = self.window_
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state.get("window_"), deque):  # pickled before the window was an array
            state["window_"] = np.fromiter(state["window_"], dtype=float)
        self.__dict__.update(state)

    def _push(self, value: float) -> None:
        """Append ``value``, dropping the oldest point once the window is full."""
        if self.window <= 0:
            return
        if "_bank" in self.__dict__:  # learning on its own: the model takes its window back from the bank
            self.window_ = self.window_
        window = self.window_
        if len(window) < self.window:
            self.window_ = np.append(window, value)
        else:
            window[:-1] = window[1:]
            window[-1] = value

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
        """:meth:`score` then :meth:`learn` of one point per model: the windows of all models at once.

        The windows live in a :class:`RobustBank` (made on the first call for these models, kept
        while they are scored together), so a cycle neither copies nor re-sorts them.
        """
        values = np.asarray(values, dtype=float)
        if not len(models):
            return {name: np.empty(0) for name in ("expected", "lower", "upper", "score")}
        bank = RobustBank.of(models)
        if bank is None:
            return cls._score_learn_stacked(models, values)
        rows = sortedrows.rows_in_bank(models)
        expected, lower, upper = bank.bands(rows)
        score = band_score(values, expected, lower, upper)
        with np.errstate(invalid="ignore"):
            learned = ~np.isnan(values) & (np.isnan(expected) | (lower <= values) & (values <= upper))
        bank.push(rows[learned], values[learned])
        return {"expected": expected, "lower": lower, "upper": upper, "score": score}

    @classmethod
    def _score_learn_stacked(cls, models: Sequence[RobustModel], values: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`score_learn_many` for models a bank does not take (different window sizes, no window)."""
        expected, lower, upper = (np.full(len(models), np.nan) for _ in range(3))
        windows = [m.window_ for m in models]  # every model was checked for a fit by RobustBank.of
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


class RobustBank:
    """The windows of many :class:`RobustModel` of one window size, as two matrices.

    Row ``r`` holds one model's window twice: in arrival order in a ring (``ring[r]``, the oldest
    at ``head[r]`` once full) and sorted (``sorted[r, start[r]:start[r] + length[r]]``, in a row a
    quarter of the window wider on each side, so that a trend moves the row rather than its values;
    see :func:`~detector.sortedrows.replace_in_rows`). The median is then one element (or the mean
    of two), the MAD the k-th smallest distance from it, found by a binary search over the two
    sorted runs of distances below and above the median, and learning a point moves one value out
    of and one into each sorted row. These are the values ``np.median`` gives, bit for bit, at a
    cost that grows with the number of models, not with models times window. A model attached to a
    bank reads its window from it (:attr:`RobustModel.window_`) and pickles it as its own; a model
    that learns on its own takes its window back.
    """

    def __init__(self, models: Sequence[RobustModel]):
        width = models[0].window
        windows = [m.window_ for m in models]
        count = len(models)
        self.width = width
        self.length = np.fromiter(map(len, windows), dtype=np.intp, count=count)
        self.head = np.zeros(count, dtype=np.intp)
        self.ring = np.zeros((count, width))
        self.span = sortedrows.wider(width)
        self.sorted = np.full((count, self.span), np.inf)
        self.start = sortedrows.middle(self.span, self.length)
        for r, window in enumerate(windows):
            self.ring[r, : len(window)] = window
            self.sorted[r, self.start[r]:self.start[r] + len(window)] = np.sort(window)
        self.k = np.fromiter((m.k for m in models), dtype=float, count=count)
        self.min_scale = np.fromiter((m.min_scale for m in models), dtype=float, count=count)
        self.min_points = np.fromiter((m.min_points for m in models), dtype=float, count=count)
        for r, model in enumerate(models):
            model.__dict__["window_"] = None  # the bank holds it now
            model._bank, model._row = self, r

    @classmethod
    def of(cls, models: Sequence[RobustModel]) -> RobustBank | None:
        """The bank all of ``models`` are in, a new one for them, or ``None`` where they differ in window size."""
        bank = sortedrows.common_bank(models)
        if bank is not None:
            return bank
        for model in models:
            model._check_fitted()
        width = models[0].window
        if width <= 0 or any(m.window != width for m in models):
            return None
        return cls(models)

    def window(self, row: int) -> np.ndarray:
        """Row ``row``'s window, oldest first."""
        length, head = int(self.length[row]), int(self.head[row])
        if length < self.width:
            return self.ring[row, :length].copy()
        return np.concatenate((self.ring[row, head:], self.ring[row, :head]))

    def bands(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``expected``, ``lower`` and ``upper`` of ``rows`` (NaN where a window has fewer than ``min_points``)."""
        expected, lower, upper = (np.full(len(rows), np.nan) for _ in range(3))
        length = self.length[rows]
        ready = (length >= self.min_points[rows]) & (length > 0)
        if not ready.any():
            return expected, lower, upper
        at = np.flatnonzero(ready)
        rows, length = rows[at], length[at]
        flat = self.sorted.reshape(-1)
        base = rows * self.span + self.start[rows]
        finite = np.isfinite(flat[base]) & np.isfinite(flat[base + length - 1])
        half = length // 2
        even = length % 2 == 0
        median = np.where(even, (flat[base + half - np.where(even, 1, 0)] + flat[base + half]) / 2, flat[base + half])
        mad = kth_distance_median(flat, base, length, median, half)
        for i in np.flatnonzero(~finite):  # an infinite value: left to np.median, as a single model does
            window = flat[base[i]:base[i] + length[i]]
            median[i] = np.median(window)
            mad[i] = np.median(np.abs(window - median[i]))
        sigma = MAD_TO_SIGMA * mad
        sigma = np.maximum(np.maximum(sigma, self.min_scale[rows] * np.abs(median)), 1e-9)
        k = self.k[rows]
        expected[at], lower[at], upper[at] = median, median - k * sigma, median + k * sigma
        return expected, lower, upper

    def push(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Append ``values[i]`` to row ``rows[i]``'s window, dropping its oldest value once full."""
        if not len(rows):
            return
        width = self.width
        length, head = self.length[rows], self.head[rows]
        full = length >= width
        oldest = self.ring[rows, head]
        self.ring[rows, np.where(full, head, head + length)] = values
        self.head[rows] = np.where(full, (head + 1) % width, head)
        self.length[rows] = np.minimum(length + 1, width)
        # the sorted rows lose the oldest value (a padding inf while not full) and gain the new one
        flat, start, span = self.sorted.reshape(-1), self.start[rows], self.span
        base = rows * span + start
        drop = np.where(full, sortedrows.search_rows(flat, base, length, oldest), length)
        room = (start, span - start - length)
        self.start[rows] = start + sortedrows.replace_in_rows(flat, base, length, drop, values, room)
        sortedrows.recentre(self.sorted, rows, self.start, self.length)


def kth_distance_median(flat: np.ndarray, base: np.ndarray, length: np.ndarray, median: np.ndarray,
                        half: np.ndarray) -> np.ndarray:
    """Per sorted row ``flat[base:base+length]``, ``np.median(np.abs(row - median))``.

    The distances of the values below the median (``median - row[half-1::-1]``) and above it
    (``row[half:] - median``) are two ascending runs; the middle one(s) of their merge is found by
    a binary search on how many come from the first run.
    """
    lower_count, upper_count = half, length - half
    take = np.where(length % 2 == 0, half, half + 1)  # distances up to the (lower) middle one

    def below(i):  # the i-th smallest distance of the run below the median
        return median - flat[base + half - 1 - i]

    def above(j):
        return flat[base + half + j] - median

    lo = np.maximum(0, take - upper_count)
    hi = np.minimum(take, lower_count)
    last_upper, last_lower = np.maximum(upper_count - 1, 0), np.maximum(lower_count - 1, 0)
    # i = the smallest i in lo..hi with above(take - 1 - i) <= below(i) (hi if none): lo plus how many of
    # lo..hi-1 fail that, counted in steps of halving size (as search_rows); a probe past hi - 1 reads
    # hi - 1, which can only carry the count past hi where every one failed (capped below)
    widest = int((hi - lo).max(initial=0))
    step = 1 << (widest.bit_length() - 1) if widest > 0 else 0
    at = lo - 1  # the failing ones counted so far end here
    top = np.maximum(hi - 1, lo)
    upper_from, lower_from = base + half + take - 1, base + half - 1
    while step:
        probe = np.minimum(at + step, top)
        fails = flat[upper_from - probe] - median > median - flat[lower_from - probe]
        np.add(at, step, out=at, where=fails)
        step >>= 1
    i = np.minimum(at + 1, hi)
    j = take - i
    inf = np.inf
    last_a = np.where(i > 0, below(np.maximum(i - 1, 0)), -inf)
    last_b = np.where(j > 0, above(np.maximum(j - 1, 0)), -inf)
    kth = np.maximum(last_a, last_b)
    next_a = np.where(i < lower_count, below(np.minimum(i, last_lower)), inf)
    next_b = np.where(j < upper_count, above(np.minimum(j, last_upper)), inf)
    following = np.minimum(next_a, next_b)
    return np.where(length % 2 == 0, (kth + following) / 2, kth)


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
