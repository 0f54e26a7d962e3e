"""The one interface every boxwatch model implements.

A model is fitted on a history frame and then scores new points. Frames are
``pandas.DataFrame`` objects with a UTC ``DatetimeIndex``; a univariate model reads the
single column ``value``, a multivariate one reads every column (one feature per column).

``score(frame)`` returns a frame with the same index and the columns

``expected``, ``lower``, ``upper``
    the model's expected value and band for the point (NaN where a model has none,
    e.g. a multivariate model);
``score``
    0 for normal, growing with the distance from ``expected``, and above 1 exactly
    when the point lies outside ``[lower, upper]`` (see :func:`band_score`). NaN while
    the model does not have enough history to say — never 0, which reads as "normal";
``top_features`` (multivariate models only)
    the features that drove the score, most important first.

``learn(frame)`` feeds points the model has just scored back into its online state
(river's learn_one after score_one). Models must not learn from points they flag as
anomalous, so a baseline does not absorb the incident it is meant to report.

A univariate model may also score many units at once: ``score_learn_many(models, seconds,
values)`` (a class method; ``batches()`` says whether a class has one) scores point ``values[i]`` at ``seconds`` with
``models[i]`` and then learns it, for every ``i``, with arrays over the units instead of a
frame and a call per unit; the results are the same as ``score`` then ``learn`` on each
model's one-row frame. A serve cycle scores every unit of a query this way.

Models follow scikit-learn's estimator contract: parameters are set in ``__init__`` and
stored unchanged, ``fit`` returns ``self``, learned state ends with ``_``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

Direction = Literal["both", "above", "below"]
SCORE_COLUMNS = ["expected", "lower", "upper", "score"]
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


class NotFittedError(RuntimeError):
    """``score`` was called before ``fit``."""


class Model(ABC):
    """Base class of boxwatch models. Subclasses set ``name`` and implement fit/score."""

    name: ClassVar[str]
    multivariate: ClassVar[bool] = False
    fit_imports: ClassVar[tuple[str, ...]] = ()
    """Heavy packages ``fit`` imports (``"sklearn"``, ``"statsmodels"``) that scoring a fitted model does
    not need: the service fits such a model in a child process, so the serving process never imports them."""
    calibrated: ClassVar[bool] = False
    """True when the model's own score already means the same on every series (above 1: alert-worthy),
    so the service publishes it as is instead of calibrating it per series (:mod:`detector.calibration`)."""

    @abstractmethod
    def fit(self, history: pd.DataFrame) -> Model:
        """Fit on ``history`` and return ``self``."""

    @abstractmethod
    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Score every row of ``frame``; see the module docstring for the columns."""

    def learn(self, frame: pd.DataFrame) -> None:  # noqa: B027 - optional hook, no-op by default
        """Update online state with points that were just scored. Default: nothing."""

    def carry_over(self, previous: Model) -> None:  # noqa: B027 - optional hook, no-op by default
        """Take over from ``previous`` (the model this refit replaces for the same series) the online
        state that must outlive a refit, such as an incident in progress. Default: nothing."""

    @classmethod
    def score_learn_many(cls, models: Sequence[Model], seconds: float, values: np.ndarray) -> dict[str, np.ndarray]:
        """Score ``values[i]`` (one point at ``seconds``, Unix time) with ``models[i]``, then learn it.

        Returns ``expected``, ``lower``, ``upper`` and ``score`` arrays over the units. NaN values
        score NaN and are not learned. Only for classes whose :meth:`batches` is true.
        """
        raise NotImplementedError(f"{cls.__name__} scores one unit at a time")

    @classmethod
    def batches(cls) -> bool:
        """Whether the class scores many units at once: it (or a parent) implements score_learn_many."""
        return cls.score_learn_many.__func__ is not Model.score_learn_many.__func__

    def get_params(self) -> dict[str, Any]:
        """The ``__init__`` parameters, as scikit-learn's ``get_params`` returns them."""
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    @property
    def is_fitted(self) -> bool:
        return any(k.endswith("_") and not k.startswith("_") for k in vars(self))

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit() first")


def band_score(
    value: np.ndarray,
    expected: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    direction: Direction = "both",
    min_deviation: float = 0.0,
) -> np.ndarray:
    """Anomaly score from a band: ``|value - expected|`` over the band's half-width on that side.

    Inside the band the score is in ``[0, 1]``; outside it is above 1. With ``direction``
    ``"above"`` (``"below"``) only deviations above (below) ``expected`` count. A deviation
    smaller than ``min_deviation`` (absolute, in the series' unit) scores 0, and the band is
    at least ``min_deviation`` wide on each side: a series that is flat in training (an error
    rate that is always 0) then scores ``deviation / min_deviation``, not ``deviation / eps``.
    NaN in any input gives NaN.
    """
    value, expected, lower, upper = (np.asarray(a, dtype=float) for a in (value, expected, lower, upper))
    deviation = value - expected
    tiny = np.maximum(np.finfo(float).eps * np.maximum(1.0, np.abs(expected)), min_deviation)
    half_up = np.maximum(upper - expected, tiny)
    half_down = np.maximum(expected - lower, tiny)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(deviation >= 0, deviation / half_up, -deviation / half_down)
    if direction == "above":
        score = np.where(deviation < 0, 0.0, score)
    elif direction == "below":
        score = np.where(deviation > 0, 0.0, score)
    score = np.where(np.abs(deviation) < min_deviation, 0.0, score)
    nan = np.isnan(value) | np.isnan(expected) | np.isnan(lower) | np.isnan(upper)
    return np.where(nan, np.nan, score)


def robust_standardisation(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the median, and the robust sigma (1.4826 MAD; the standard deviation where the MAD
    is 0, 1 where both are): what a feature is centred and scaled by so incidents do not set the scale."""
    center = np.median(features, axis=0)
    spread = MAD_TO_SIGMA * np.median(np.abs(features - center), axis=0)
    fallback = np.std(features, axis=0)
    return center, np.where(spread > 0, spread, np.where(fallback > 0, fallback, 1.0))


def empty_scores(index: pd.Index, columns: list[str] = SCORE_COLUMNS) -> pd.DataFrame:
    """A result frame of NaN: what a model returns for points it cannot judge yet."""
    return pd.DataFrame(np.nan, index=index, columns=columns)


def float32_at_most(values: np.ndarray) -> np.ndarray:
    """``values`` as ``float32``, each rounded down: for any ``float32`` x, ``x <= result`` exactly when
    ``x <= value``."""
    out = values.astype(np.float32)
    above = out.astype(float) > values
    out[above] = np.nextafter(out[above], np.float32(-np.inf))
    return out
