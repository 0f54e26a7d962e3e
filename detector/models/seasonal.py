"""Seasonal baseline: robust STL / MSTL decomposition with daily and weekly seasonality."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from detector.models.base import MAD_TO_SIGMA, Model, band_score, empty_scores
from detector.sortedrows import common_bank, rows_in_bank

DAY = 86_400.0
WEEK = 7 * DAY
STL_OUTER = 3  # robustness iterations (statsmodels' default is 15; 3 down-weights outliers as well here, NAB within 1 point of 5)
MAX_CYCLE_POINTS = 168  # resolution cap of the longer periods: a weekly cycle at one point an hour
NAMED_PERIODS = {"daily": (DAY,), "weekly": (WEEK,), "auto": (DAY, WEEK), "none": ()}


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 * median absolute deviation: the standard deviation a normal sample would have."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan
    return MAD_TO_SIGMA * float(np.median(np.abs(values - np.median(values))))


def block_medians(values: np.ndarray, factor: int) -> np.ndarray:
    """Medians of consecutive blocks of ``factor`` values, blocks aligned to the end of ``values``."""
    if factor == 1:
        return values
    usable = values[values.size % factor :]
    return np.median(usable.reshape(-1, factor), axis=1)


def upsample(blocks: np.ndarray, factor: int, size: int) -> np.ndarray:
    """Inverse of :func:`block_medians`: each block's value repeated, the leading remainder padded."""
    if factor == 1:
        return blocks
    repeated = np.repeat(blocks, factor)
    return np.concatenate([np.full(size - repeated.size, repeated[0]), repeated])


def _ns(index: pd.DatetimeIndex) -> np.ndarray:
    return pd.DatetimeIndex(index).as_unit("ns").asi8.astype(float) / 1e9


class SeasonalModel(Model):
    """Expected value = level + seasonal profile by phase; band = ``k`` robust sigmas of residuals.

    At ``fit`` the history is put on a regular grid (at most ``max_points_per_day`` points a day,
    so one-minute data is decomposed at five-minute resolution: the fit takes a fraction of a
    second), decomposed with statsmodels' robust STL (one period) or MSTL (daily and weekly),
    using every period the history covers at least ``min_cycles`` times. Robust STL down-weights
    anomalies inside the training window, and the band comes from the median absolute deviation
    of the residuals, per hour of the day when ``phase_bins`` > 1 and the daily period is used,
    so an incident in the training data neither bends the profile nor widens the band much.
    A history too short for any period falls back to a robust level (no seasonality).

    Parameters
    ----------
    seasonality : str or sequence of str
        ``"auto"`` (daily and weekly where the history allows), ``"daily"``, ``"weekly"``,
        ``"none"``, or a list of pandas offsets such as ``["1D", "7D"]``.
    k : float
        Band half-width in robust standard deviations of the residuals.
    min_points : int
        Fewer non-missing history points than this and the model scores NaN.
    min_cycles : float
        A period is used only when the history covers at least this many cycles of it.
    max_points_per_day : int
        Resolution cap of the decomposition (history is averaged down to it).
    phase_bins : int
        Number of time-of-day buckets with their own band width (1 = one band for all).
    level_alpha : float
        Weight of a new in-band point in the online level update of ``learn`` (0 = never move).
    min_scale : float
        Floor of the robust sigma relative to the series' typical absolute value.
    clip_outliers : bool
        Decompose a second time with points beyond ``k`` robust sigmas of the first fit
        replaced by the fit (winsorizing), for incidents robust STL alone lets leak through.

    Attributes
    ----------
    level_ : float
        Current deseasonalised level (trend at the end of the history, moved by ``learn``).
    periods_ : list of float
        Seasonal periods in seconds that the fit used (may be empty).
    profiles_ : list of numpy.ndarray
        Seasonal component over one cycle of each period, indexed by phase.
    step_ : float
        Grid step in seconds of the decomposition.
    sigma_ : numpy.ndarray
        Robust sigma of residuals per time-of-day bucket.

    Examples
    --------
    >>> idx = pd.date_range("2026-01-01", periods=14 * 288, freq="5min", tz="UTC")
    >>> daily = np.sin(2 * np.pi * np.arange(len(idx)) / 288)
    >>> model = SeasonalModel().fit(pd.DataFrame({"value": 10 + daily}, index=idx))
    >>> [p / 3600 for p in model.periods_]
    [24.0]
    """

    name = "seasonal"
    fit_imports = ("statsmodels",)

    def __init__(
        self,
        seasonality: str | Sequence[str] = "auto",
        k: float = 5.0,
        min_points: int = 30,
        min_cycles: float = 2.0,
        max_points_per_day: int = 288,
        phase_bins: int = 24,
        level_alpha: float = 0.05,
        min_scale: float = 0.01,
        clip_outliers: bool = True,
    ):
        self.seasonality = seasonality
        self.k = k
        self.min_points = min_points
        self.min_cycles = min_cycles
        self.max_points_per_day = max_points_per_day
        self.phase_bins = phase_bins
        self.level_alpha = level_alpha
        self.min_scale = min_scale
        self.clip_outliers = clip_outliers

    # ---------------------------------------------------------------- fit
    def _candidate_periods(self) -> tuple[float, ...]:
        if isinstance(self.seasonality, str):
            if self.seasonality not in NAMED_PERIODS:
                raise ValueError(
                    f"seasonality: unknown value {self.seasonality!r}; use one of {sorted(NAMED_PERIODS)} or a list of offsets"
                )
            return NAMED_PERIODS[self.seasonality]
        return tuple(pd.Timedelta(p).total_seconds() for p in self.seasonality)

    @property
    def level_(self) -> float:
        """The level (a :class:`SeasonalBank` holds it while the model is scored in one)."""
        bank = self.__dict__.get("_bank")
        if bank is not None:
            return float(bank.level[self._row])
        try:
            return self.__dict__["level_"]
        except KeyError:
            raise AttributeError("level_") from None

    @level_.setter
    def level_(self, value: float) -> None:
        bank = self.__dict__.get("_bank")
        if bank is not None:
            bank.level[self._row] = value
        else:
            self.__dict__["level_"] = value

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_bank", "_row")}
        if "_bank" in self.__dict__:
            state["level_"] = self.level_
        return state

    def fit(self, history: pd.DataFrame) -> SeasonalModel:
        self.__dict__.pop("_bank", None)  # a bank's copy of the old fit no longer applies
        self.__dict__.pop("_row", None)
        values = history["value"].to_numpy(dtype=float)
        seconds = _ns(history.index)
        keep = ~np.isnan(values)
        values, seconds = values[keep], seconds[keep]
        self.n_points_ = int(values.size)
        self.periods_, self.profiles_ = [], []
        if values.size < self.min_points:
            self.level_, self.step_, self.sigma_ = math.nan, math.nan, np.array([math.nan])
            return self
        raw_step = float(np.median(np.diff(seconds))) if values.size > 1 else 60.0
        raw_step = raw_step if raw_step > 0 else 60.0
        factor = max(1, math.ceil(DAY / raw_step / self.max_points_per_day))
        self.step_ = raw_step * factor
        grid = self._regular_grid(seconds, values)
        periods = sorted(
            (
                p
                for p in self._candidate_periods()
                if p / self.step_ >= 2 and grid.size * self.step_ >= self.min_cycles * p
            ),
            reverse=True,
        )
        trend, components = self._decompose(grid, periods)
        if self.clip_outliers and periods:
            # winsorize: points further than k robust sigmas from the first fit are replaced by
            # the fit, then decompose again, so incidents in the training window leave no trace
            fitted = trend + sum(c for c, _ in components)
            residual = grid - fitted
            limit = self.k * max(robust_sigma(residual), 1e-12)
            outliers = np.abs(residual) > limit
            if outliers.any():
                trend, components = self._decompose(np.where(outliers, fitted, grid), periods)
        grid_seconds = self.origin_ + self.step_ * np.arange(grid.size)
        for period, (component, factor) in zip(periods, components, strict=True):
            n_phase = max(2, round(period / (self.step_ * factor)))
            # The profile is the per-phase median over the last (up to) seven cycles of the data
            # less trend and other components: one day with an incident is one vote in seven.
            # STL's own seasonal, fitted with a local smoother across cycles, still carries
            # part of a large spike. With fewer than three cycles STL's last cycle is a vote too.
            others = sum(c for c, _ in components if c is not component)
            detrended = block_medians(grid - trend - others, factor)
            n_cycles = min(7, detrended.size // n_phase)
            votes = detrended[detrended.size - n_cycles * n_phase :].reshape(n_cycles, n_phase)
            if n_cycles < 3:
                votes = np.vstack([votes, block_medians(component, factor)[-n_phase:]])
            starts = grid_seconds[grid.size - n_phase * factor :: factor][:n_phase]
            profile = np.zeros(n_phase)
            profile[self._phase(starts, period, n_phase)] = np.median(votes, axis=0)
            profile -= profile.mean()
            self.periods_.append(period)
            self.profiles_.append(profile)
        self.level_ = float(trend[-1])
        bins = np.clip(((seconds - self.origin_) / self.step_).round().astype(int), 0, grid.size - 1)
        residuals = values - trend[bins] - self._seasonal(seconds)
        self.sigma_ = self._band_sigma(seconds, residuals, values)
        return self

    def _regular_grid(self, seconds: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Values averaged onto a regular grid of ``step_``; empty cells linearly interpolated."""
        self.origin_ = float(seconds[0])
        cells = ((seconds - seconds[0]) / self.step_).round().astype(int)
        sums = np.bincount(cells, weights=values)
        counts = np.bincount(cells)
        with np.errstate(invalid="ignore"):
            grid = sums / counts
        missing = counts == 0
        if missing.any():
            grid[missing] = np.interp(np.flatnonzero(missing), np.flatnonzero(~missing), grid[~missing])
        return grid

    def _decompose(
        self, grid: np.ndarray, periods: list[float]
    ) -> tuple[np.ndarray, list[tuple[np.ndarray, int]]]:
        """Trend and one seasonal component per period (MSTL-style backfitting, two passes).

        The shortest period is fitted by robust STL at the grid step. Longer ones (a week has
        only two or three cycles in a usual training window, too few for STL to tell an
        incident from the pattern) are the per-phase median over cycles of the detrended,
        shortest-period-adjusted series, on block medians with at most ``MAX_CYCLE_POINTS`` points
        per cycle, and with a zero cycle added when there are fewer than three: a week seen once
        with an incident and once without yields no weekly effect rather than half the incident.
        Returns the trend and ``(component on the grid, block factor)`` per period.
        """
        if not periods:
            level = float(np.median(grid[-min(grid.size, 288) :]))
            return np.full(grid.size, level), []
        from statsmodels.tsa.seasonal import STL

        shortest = min(periods)
        factors = [
            1 if p == shortest else max(1, math.ceil(p / self.step_ / MAX_CYCLE_POINTS)) for p in periods
        ]
        components = [np.zeros(grid.size) for _ in periods]
        trend = np.zeros(grid.size)
        short = periods.index(shortest)
        n_short = max(2, round(shortest / self.step_))
        jump = max(1, n_short // 20)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(2 if len(periods) > 1 else 1):
                others = sum(c for k, c in enumerate(components) if k != short)
                result = STL(
                    grid - others, period=n_short, robust=True, trend_jump=jump, low_pass_jump=jump
                ).fit(outer_iter=STL_OUTER)
                trend, components[short] = np.asarray(result.trend), np.asarray(result.seasonal)
                for k, (period, factor) in enumerate(zip(periods, factors, strict=True)):
                    if k != short:
                        # detrend with a centred one-period rolling median, not the short-period
                        # STL trend, which is supple enough to follow a weekend dip
                        rest = grid - sum(c for j, c in enumerate(components) if j != k)
                        width = max(3, round(period / self.step_))
                        # (full windows only, held constant towards the edges: a half window at the
                        # end would be mostly weekend and hide the weekend it should expose)
                        level = pd.Series(rest).rolling(width, center=True, min_periods=width).median()
                        rest = rest - level.bfill().ffill().to_numpy()
                        components[k] = self._median_cycle(
                            rest, factor, max(2, round(period / (self.step_ * factor)))
                        )
        return trend, list(zip(components, factors, strict=True))

    @staticmethod
    def _median_cycle(rest: np.ndarray, factor: int, n_phase: int) -> np.ndarray:
        """Per-phase median over the complete cycles (aligned to the end), repeated over the grid."""
        blocks = block_medians(rest, factor)
        cycles = blocks[blocks.size % n_phase :].reshape(-1, n_phase)
        if len(cycles) < 3:
            cycles = np.vstack([cycles, np.zeros(n_phase)])
        profile = np.median(cycles, axis=0)
        profile -= profile.mean()
        tiled = np.tile(profile, blocks.size // n_phase + 1)[-blocks.size :]
        return upsample(tiled, factor, rest.size)

    @staticmethod
    def _phase(seconds: np.ndarray, period: float, n_phase: int) -> np.ndarray:
        return np.floor(np.mod(seconds, period) / (period / n_phase)).astype(int) % n_phase

    def _seasonal(self, seconds: np.ndarray) -> np.ndarray:
        total = np.zeros(seconds.shape)
        for period, profile in zip(self.periods_, self.profiles_, strict=True):
            total += profile[self._phase(seconds, period, len(profile))]
        return total

    @staticmethod
    def _day_bin(seconds: np.ndarray, n_bins: int) -> np.ndarray:
        if n_bins == 1:
            return np.zeros(seconds.shape, dtype=int)
        return (np.mod(seconds, DAY) / DAY * n_bins).astype(int) % n_bins

    def _band_sigma(self, seconds: np.ndarray, residuals: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Robust sigma of residuals, per time-of-day bucket when the daily period is modelled."""
        floor = max(self.min_scale * float(np.median(np.abs(values))), 1e-9)
        overall = max(robust_sigma(residuals), floor)
        if self.phase_bins <= 1 or DAY not in self.periods_:
            return np.array([overall])
        buckets = self._day_bin(seconds, self.phase_bins)
        sigma = np.full(self.phase_bins, overall)
        for b in range(self.phase_bins):
            in_bucket = residuals[buckets == b]
            if in_bucket.size >= 10:
                # never narrower than half the overall spread: a quiet hour must not alarm on noise
                sigma[b] = max(robust_sigma(in_bucket), 0.5 * overall)
        return sigma

    # -------------------------------------------------------------- score
    def _expected(self, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        expected = self.level_ + self._seasonal(seconds)
        return expected, self.k * self.sigma_[self._day_bin(seconds, len(self.sigma_))]

    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()
        if frame.empty or math.isnan(self.level_):
            return empty_scores(frame.index)
        expected, half = self._expected(_ns(frame.index))
        lower, upper = expected - half, expected + half
        score = band_score(frame["value"].to_numpy(dtype=float), expected, lower, upper)
        return pd.DataFrame(
            {"expected": expected, "lower": lower, "upper": upper, "score": score}, index=frame.index
        )

    def learn(self, frame: pd.DataFrame) -> None:
        """Move the level toward in-band points (exponential smoothing); out-of-band points are ignored."""
        self._check_fitted()
        if math.isnan(self.level_) or self.level_alpha <= 0:
            return
        seconds = _ns(frame.index)
        seasonal = self._seasonal(seconds)
        half = self.k * self.sigma_[self._day_bin(seconds, len(self.sigma_))]
        for value, season, width in zip(frame["value"].to_numpy(dtype=float), seasonal, half, strict=True):
            if not np.isnan(value) and abs(value - season - self.level_) <= width:
                self.level_ += self.level_alpha * (value - season - self.level_)

    @classmethod
    def score_learn_many(cls, models: Sequence[SeasonalModel], seconds: float, values: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`score` then :meth:`learn` of one point per model, over all units at once (:class:`SeasonalBank`)."""
        values = np.asarray(values, dtype=float)
        bank = SeasonalBank.of(models)
        rows = rows_in_bank(models)
        level = bank.level[rows]
        seasonal, half = bank.seasonal_and_half(rows, seconds)
        expected = level + seasonal
        lower, upper = expected - half, expected + half
        score = band_score(values, expected, lower, upper)
        deviation = values - seasonal - level
        alpha = bank.alpha[rows]
        with np.errstate(invalid="ignore"):
            learned = ~np.isnan(values) & ~np.isnan(level) & (alpha > 0) & (np.abs(deviation) <= half)
        bank.level[rows[learned]] = (level + alpha * deviation)[learned]
        return {"expected": expected, "lower": lower, "upper": upper, "score": score}


class SeasonalBank:
    """The online state of many fitted :class:`SeasonalModel` as arrays.

    Each model's level (moved by every in-band point) is one entry of ``level``; its profiles and band
    widths are stacked with those of the models of the same shape (periods, profile lengths, band
    buckets), so a point's expected value and band for every unit are a few array look-ups per shape:
    the same values, in the same order of additions, as each model's :meth:`SeasonalModel.score`. A
    model in a bank reads and sets its level there (:attr:`SeasonalModel.level_`) and pickles it as
    its own; a model that is fitted again leaves it.
    """

    def __init__(self, models: Sequence[SeasonalModel]):
        count = len(models)
        for model in models:
            model._check_fitted()
        self.level = np.fromiter((m.level_ for m in models), dtype=float, count=count)
        self.k = np.fromiter((m.k for m in models), dtype=float, count=count)
        self.alpha = np.fromiter((m.level_alpha for m in models), dtype=float, count=count)
        shapes: dict[tuple, list[int]] = {}
        for r, model in enumerate(models):
            key = (tuple(model.periods_), tuple(map(len, model.profiles_)), len(model.sigma_))
            shapes.setdefault(key, []).append(r)
        self.shape_of = np.empty(count, dtype=np.intp)
        self.position = np.empty(count, dtype=np.intp)  # the row's place among its shape's rows
        self.shapes = []
        for index, ((periods, lengths, bins), rows) in enumerate(shapes.items()):
            profiles = [np.array([models[r].profiles_[j] for r in rows]) for j in range(len(periods))]
            sigma = np.array([models[r].sigma_ for r in rows])
            self.shapes.append((periods, lengths, bins, profiles, sigma))
            self.shape_of[rows] = index
            self.position[rows] = np.arange(len(rows))
        for r, model in enumerate(models):
            model.__dict__.pop("level_", None)  # the bank holds it now
            model._bank, model._row = self, r

    @classmethod
    def of(cls, models: Sequence[SeasonalModel]) -> SeasonalBank:
        """The bank all of ``models`` are in, or a new one for them."""
        return common_bank(models) or cls(models)

    def seasonal_and_half(self, rows: np.ndarray, seconds: float) -> tuple[np.ndarray, np.ndarray]:
        """The seasonal component and the band's half width of ``rows`` at ``seconds``."""
        stamp = np.array([seconds], dtype=float)
        seasonal, half = np.zeros(len(rows)), np.empty(len(rows))
        shape_of = self.shape_of[rows]
        single = len(self.shapes) == 1
        for index, (periods, lengths, bins, profiles, sigma) in enumerate(self.shapes):
            at = slice(None) if single else np.flatnonzero(shape_of == index)
            position = self.position[rows[at]]
            total = np.zeros(len(position))  # what _seasonal sums, profile by profile
            for period, length, table in zip(periods, lengths, profiles, strict=True):
                total += table[position, int(SeasonalModel._phase(stamp, period, length)[0])]
            seasonal[at] = total
            half[at] = self.k[rows[at]] * sigma[position, int(SeasonalModel._day_bin(stamp, bins)[0])]
        return seasonal, half
