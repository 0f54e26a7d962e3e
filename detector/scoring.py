"""From raw series to scored points: shared by the service, backfill and the ad-hoc API.

A *unit* is what one model instance sees: one series for a univariate model, one entity
(series sharing the query's ``group_by`` labels, one column per feature) for a
multivariate one. Units are keyed by their output labels, sorted.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from boxwatch.child import run_in_child
from boxwatch.log import kv
from detector.calibration import Calibration, calibrate_many
from detector.config import RESERVED_OUTPUT_LABELS, DetectorConfig, QueryConfig
from detector.models import make_model, model_class
from detector.models.base import Model, band_score, empty_scores
from detector.models.robust import RobustModel
from detector.reader import SeriesKey, counter_rate, counter_rates
from detector.store import ModelBundle

log = logging.getLogger("boxwatch.detector.scoring")

FALLBACK_WINDOW = 360  # points of history the robust stand-in model starts from


def shard_of(key: SeriesKey, shards: int) -> int:
    """Which of ``shards`` replicas owns the unit ``key``: a stable hash of its sorted labels."""
    if shards <= 1:
        return 0
    text = "\x00".join(f"{name}\x01{value}" for name, value in sorted(key))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % shards


def output_labels(raw: Mapping[str, str]) -> dict[str, str]:
    """Source labels as exported: ``__name__`` dropped, ``query``/``model`` renamed ``exported_*``."""
    labels = {}
    for name, value in raw.items():
        if name == "__name__":
            continue
        labels[f"exported_{name}" if name in RESERVED_OUTPUT_LABELS else name] = value
    return labels


def feature_name(raw: Mapping[str, str], group_by: Iterable[str]) -> str:
    """A multivariate feature's name: the metric name plus the labels outside ``group_by``."""
    rest = {k: v for k, v in raw.items() if k not in set(group_by) and k != "__name__"}
    name = raw.get("__name__", "")
    if rest:
        inner = ",".join(f"{k}={v}" for k, v in sorted(rest.items()))
        name = f"{name}{{{inner}}}" if name else inner
    return name or "value"


def build_units(
    query: QueryConfig,
    multivariate: bool,
    raw: Mapping[SeriesKey, pd.Series],
    shard: tuple[int, int] = (0, 1),
    alias: str = "",
) -> dict[SeriesKey, pd.DataFrame]:
    """Frames per unit from a range query's series, keeping only this replica's shard."""
    index, total = shard
    units: dict[SeriesKey, pd.DataFrame] = {}
    if not multivariate:
        for unit, key in univariate_keys(raw, shard, alias).items():
            series = raw[key]
            units[unit] = (counter_rate(series, query.step) if query.counter else series).to_frame("value")
        return units
    columns: dict[SeriesKey, dict[str, pd.Series]] = {}
    for (entity, feature), series in zip(entity_features(query, raw, shard), raw.values(), strict=True):
        if entity is not None:
            columns.setdefault(entity, {})[feature] = counter_rate(series, query.step) if query.counter else series
    for entity, features in columns.items():
        units[entity] = pd.DataFrame(dict(sorted(features.items())))
    return units


def entity_features(query: QueryConfig, keys: Iterable[SeriesKey],
                    shard: tuple[int, int] = (0, 1)) -> list[tuple[SeriesKey | None, str]]:
    """Each series' entity (its ``group_by`` labels; ``None`` where another replica's) and feature name."""
    index, total = shard
    out: list[tuple[SeriesKey | None, str]] = []
    for key in keys:
        labels = dict(key)
        entity = tuple(sorted(output_labels({k: labels.get(k, "") for k in query.group_by}).items()))
        out.append((entity if shard_of(entity, total) == index else None, feature_name(labels, query.group_by)))
    return out


def entity_units(query: QueryConfig, index: pd.DatetimeIndex, keys: Sequence[SeriesKey], values: np.ndarray,
                 shard: tuple[int, int] = (0, 1)) -> dict[SeriesKey, pd.DataFrame]:
    """:func:`build_units` of a multivariate query from its answer as arrays
    (:meth:`~detector.reader.PrometheusReader.query_range_arrays`): no pandas Series per series, each
    entity's frame made from its rows on the shared grid."""
    if query.counter:
        values = counter_rates(values, query.step)
    columns: dict[SeriesKey, dict[str, np.ndarray]] = {}
    for (entity, feature), row in zip(entity_features(query, keys, shard), values, strict=True):
        if entity is not None:
            columns.setdefault(entity, {})[feature] = row
    units = {}
    for entity, features in columns.items():  # one 2-D block a frame: a third of the cost of a dict of columns
        names = sorted(features)
        units[entity] = pd.DataFrame(np.column_stack([features[name] for name in names]), index=index, columns=names)
    return units


@functools.lru_cache(maxsize=200_000)  # the same series come back every cycle
def unit_key(key: SeriesKey) -> SeriesKey:
    """A univariate unit's key: its source series' output labels, sorted (remembered: a serve cycle asks
    for every series of a query at every cycle)."""
    return tuple(sorted(output_labels(dict(key)).items()))


@functools.lru_cache(maxsize=200_000)
def point_labels(key: SeriesKey, alias: str, model_name: str) -> tuple[tuple[str, str], ...]:
    """A scored point's labels: the unit's plus ``query`` and ``model``, sorted."""
    return tuple(sorted({**dict(key), "query": alias, "model": model_name}.items()))


def univariate_keys(raw: Iterable[SeriesKey], shard: tuple[int, int], alias: str) -> dict[SeriesKey, SeriesKey]:
    """Unit key (output labels) -> source key of this replica's univariate units, in query order."""
    index, total = shard
    units: dict[SeriesKey, SeriesKey] = {}
    for key in raw:
        unit = unit_key(key)
        if unit in units:
            log.warning("two series with the same labels once __name__ is dropped; keeping the first",
                        extra=kv(query=alias, labels=dict(unit)))
            continue
        if shard_of(unit, total) == index:
            units[unit] = key
    return units


class UnitLayout(NamedTuple):
    """Which rows of a range query's answer are this replica's units, and under which unit keys."""

    source: tuple[SeriesKey, ...]  # the answer's series keys it was worked out from
    units: list[SeriesKey]
    rows: dict[SeriesKey, int]  # unit key -> row of the units' array
    take: np.ndarray | None  # the answer's row of each unit; None: every row, in order

    @classmethod
    def of(cls, keys: Sequence[SeriesKey], shard: tuple[int, int], alias: str) -> UnitLayout:
        """The layout of ``keys``; the last one made for ``alias`` and ``shard`` when ``keys`` is the same
        object (the reader hands back the same keys while a query's series stay the same)."""
        known = _LAYOUTS.get((alias, shard))
        if known is not None and known.source is keys:
            return known
        position = {key: row for row, key in enumerate(keys)}
        units = list(univariate_keys(keys, shard, alias).items())
        take = np.fromiter([position[key] for _, key in units], dtype=np.intp, count=len(units))
        layout = cls(keys if isinstance(keys, tuple) else tuple(keys), [unit for unit, _ in units],
                     {unit: row for row, (unit, _) in enumerate(units)},
                     None if np.array_equal(take, np.arange(len(keys))) else take)
        if len(_LAYOUTS) >= 256:
            _LAYOUTS.clear()
        _LAYOUTS[(alias, shard)] = layout
        return layout


_LAYOUTS: dict[tuple[str, tuple[int, int]], UnitLayout] = {}


class UnitRows(Mapping[SeriesKey, pd.DataFrame]):
    """A univariate query's units as one array (units x grid points), each unit's frame made on demand.

    What :func:`build_units` gives for a univariate query, without a pandas object per series:
    the serve cycle scores the rows in batches and asks for a frame only for a unit scored alone.
    ``layout`` is the same object from cycle to cycle while the query's units stay the same.
    """

    def __init__(self, index: pd.DatetimeIndex, keys: Sequence[SeriesKey], values: np.ndarray,
                 layout: UnitLayout | None = None):
        self.index = index
        self.values = values
        self.layout = layout
        self._rows = layout.rows if layout is not None else {key: row for row, key in enumerate(keys)}

    @classmethod
    def from_query(cls, query: QueryConfig, index: pd.DatetimeIndex, keys: Sequence[SeriesKey], values: np.ndarray,
                   shard: tuple[int, int] = (0, 1), alias: str = "") -> UnitRows:
        """The units of a range query's answer (:meth:`~detector.reader.PrometheusReader.query_range_arrays`)."""
        layout = UnitLayout.of(keys, shard, alias)
        rows = values if layout.take is None else values[layout.take]
        return cls(index, layout.units, counter_rates(rows, query.step) if query.counter else rows, layout)

    def after_first(self) -> UnitRows:
        """Every unit without its first point."""
        return UnitRows(self.index[1:], list(self._rows), self.values[:, 1:], self.layout)

    def row(self, key: SeriesKey) -> np.ndarray:
        return self.values[self._rows[key]]

    def positions(self, keys: Sequence[SeriesKey]) -> np.ndarray | None:
        """The rows of ``keys``, in that order; ``None`` when that is every row in order (``values`` itself)."""
        positions = np.fromiter([self._rows[key] for key in keys], dtype=np.intp, count=len(keys))
        return None if np.array_equal(positions, np.arange(len(self.values))) else positions

    def __getitem__(self, key: SeriesKey) -> pd.DataFrame:
        return pd.DataFrame({"value": self.row(key)}, index=self.index)

    def __iter__(self):
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


class FeaturewiseRobust(Model):
    """Stand-in for a multivariate model: a robust model per feature, the score their maximum.

    Used for an entity that appeared after the last fit, so it is scored at once.
    """

    name = "robust"
    multivariate = True

    def __init__(self, window: int = FALLBACK_WINDOW):
        self.window = window

    def fit(self, history: pd.DataFrame) -> FeaturewiseRobust:
        self.models_ = {
            column: RobustModel(window=self.window).fit(history[[column]].rename(columns={column: "value"}))
            for column in history.columns
        }
        return self

    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()
        out = empty_scores(frame.index, ["expected", "lower", "upper", "score", "top_features"])
        per_feature = {}
        for column, model in self.models_.items():
            if column in frame:
                per_feature[column] = model.score(frame[[column]].rename(columns={column: "value"}))["score"]
        if not per_feature:
            return out
        table = pd.DataFrame(per_feature)
        out["score"] = table.max(axis=1, skipna=True)
        out["top_features"] = [
            [name for name, value in row.sort_values(ascending=False).items() if value == value][:3]
            for _, row in table.iterrows()
        ]
        return out

    def learn(self, frame: pd.DataFrame) -> None:
        for column, model in self.models_.items():
            if column in frame:
                model.learn(frame[[column]].rename(columns={column: "value"}))


def fallback_model(multivariate: bool, history: pd.DataFrame) -> Model:
    """The robust stand-in for a unit that has no fitted model yet, started from ``history``."""
    if multivariate:
        return FeaturewiseRobust().fit(history)
    return RobustModel(window=FALLBACK_WINDOW).fit(history)


def is_multivariate(config: DetectorConfig, alias: str) -> bool:
    return bool(model_class(config.model_for(alias)[0]).multivariate)


def fit_models(name: str, params: Mapping[str, Any], units: Mapping[SeriesKey, pd.DataFrame]
               ) -> tuple[dict[SeriesKey, Model], list[tuple[SeriesKey, str]]]:
    """A model ``name`` fitted per unit, and the units whose fit failed with the error (left to the
    robust stand-in). Units without a value are skipped."""
    models: dict[SeriesKey, Model] = {}
    failures: list[tuple[SeriesKey, str]] = []
    for key, frame in units.items():
        if frame.dropna(how="all").empty:
            continue
        try:
            models[key] = make_model(name, dict(params)).fit(frame)
        except (ValueError, np.linalg.LinAlgError, ArithmeticError) as err:
            failures.append((key, f"{type(err).__name__}: {err}"))
    return models, failures


def fit_bundle(
    config: DetectorConfig,
    alias: str,
    units: Mapping[SeriesKey, pd.DataFrame],
    training_start: float,
    training_end: float,
    isolate: bool = False,
    cancel: threading.Event | None = None,
) -> ModelBundle:
    """Fit a model per unit; a unit whose fit fails is logged and left to the robust stand-in.

    With ``isolate``, a model whose fit imports heavy packages (``Model.fit_imports``) is fitted in
    a child process (``config.fitting.timeout`` and ``cancel`` end it early), so this process does
    not import them; :class:`~boxwatch.child.ChildFailed` when the child fails as a whole. The
    bundle's ``fit_peak_rss_bytes`` is then the child's peak resident memory (else ``None``).
    """
    name, params = config.model_for(alias)
    began = time.perf_counter()
    peak = None
    if isolate and model_class(name).fit_imports:
        done = run_in_child(fit_models, name, params, units, timeout=config.fitting.timeout, cancel=cancel,
                            name=f"fit process of {alias}")
        (models, failures), peak = done.value, done.peak_rss_bytes
    else:
        models, failures = fit_models(name, params, units)
    for key, error in failures:
        log.warning("fit failed for a series; the robust model scores it",
                    extra=kv(query=alias, model=name, labels=dict(key), error=error))
    return ModelBundle(
        query=alias, model_name=name, models=models, params=params, config_hash=config.query_hash(alias),
        training_start=training_start, training_end=training_end, fitted_at=time.time(),
        fit_seconds=time.perf_counter() - began, fit_peak_rss_bytes=peak,
    )


def score_online(
    model: Model,
    frame: pd.DataFrame,
    direction: str = "both",
    min_deviation: float = 0.0,
    calibration: Calibration | None = None,
) -> pd.DataFrame:
    """Score ``frame`` point by point, learning each point after it is scored (never ahead).

    Returns the model's columns with ``score`` recomputed from the band for ``direction``
    and ``min_deviation`` (see :func:`band_score`) where the model has a band, and
    ``raw_score``, that band distance. With a ``calibration`` (the unit's, see
    :mod:`detector.calibration`) ``score`` is the calibrated score, learned online;
    without one it is the raw score. Rows whose values are all NaN are skipped (NaN score)
    and not learned.
    """
    if type(model).calibrated:  # its score already means the same on every series
        calibration = None
    valid = ~np.isnan(frame.to_numpy(dtype=float)).all(axis=1)
    if len(frame) == 1:  # the usual serve cycle: one new point
        if not valid[0]:
            return with_raw(empty_scores(frame.index))
        result = model.score(frame)
        model.learn(frame)
        return calibrate(apply_band(result, frame, direction, min_deviation, type(model).calibrated), calibration)
    rows = []
    for position in range(len(frame)):
        point = frame.iloc[position:position + 1]
        if not valid[position]:
            rows.append(empty_scores(point.index))
            continue
        rows.append(model.score(point))
        model.learn(point)
    if not rows:
        return with_raw(empty_scores(frame.index))
    return calibrate(apply_band(pd.concat(rows), frame, direction, min_deviation, type(model).calibrated),
                     calibration)


def with_raw(result: pd.DataFrame) -> pd.DataFrame:
    result["raw_score"] = result["score"].to_numpy(dtype=float)
    return result


def calibrate(result: pd.DataFrame, calibration: Calibration | None) -> pd.DataFrame:
    """Keep the band distance as ``raw_score``; ``score`` becomes the calibrated score."""
    result = with_raw(result)
    if calibration is not None:
        result["score"] = calibration.calibrate(result["raw_score"].to_numpy(dtype=float))
    return result


def apply_band(result: pd.DataFrame, frame: pd.DataFrame, direction: str, min_deviation: float,
               gate: bool = False) -> pd.DataFrame:
    """Recompute ``score`` and the band with the query's direction and minimum deviation.

    With the defaults (``both``, 0) the model's own score already is the band score. With
    ``gate`` (a model whose score is not its band distance) the score is kept, but 0 where the
    band score for ``direction`` and ``min_deviation`` is 0.
    """
    if "value" not in frame.columns or (direction == "both" and min_deviation == 0):
        return result
    score, lower, upper = band_arrays(frame["value"].to_numpy(dtype=float), result["expected"].to_numpy(dtype=float),
                                      result["lower"].to_numpy(dtype=float), result["upper"].to_numpy(dtype=float),
                                      result["score"].to_numpy(dtype=float), direction, min_deviation, gate)
    result["score"], result["lower"], result["upper"] = score, lower, upper
    return result


def band_arrays(values: np.ndarray, expected: np.ndarray, lower: np.ndarray, upper: np.ndarray, score: np.ndarray,
                direction: str, min_deviation: float, gate: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`apply_band` on arrays (any shape): the score and band for ``direction`` and ``min_deviation``."""
    if direction == "both" and min_deviation == 0:
        return score, lower, upper
    has_band = ~(np.isnan(expected) | np.isnan(lower) | np.isnan(upper))
    if not has_band.any():
        return score, lower, upper
    banded = band_score(values, expected, lower, upper, direction, min_deviation)
    score = np.where(has_band, np.where(banded == 0, 0.0, score) if gate else banded, score)
    # The exported band is the one the score uses: at least min_deviation on each side.
    lower = np.where(has_band, np.minimum(lower, expected - min_deviation), lower)
    upper = np.where(has_band, np.maximum(upper, expected + min_deviation), upper)
    return score, lower, upper


def score_online_many(
    models: Sequence[Model],
    seconds: np.ndarray,
    values: np.ndarray,
    direction: str = "both",
    min_deviation: float = 0.0,
    calibrations: Sequence[Calibration | None] | None = None,
) -> dict[str, np.ndarray]:
    """:func:`score_online` of many units of one model class (one whose ``batches()`` is true) at once.

    ``values[i, j]`` is unit ``i``'s value at ``seconds[j]`` (Unix time, the units share the
    grid), for a multivariate model a row in the order of the model's ``columns_``;
    ``models[i]`` and ``calibrations[i]`` are its model and calibration. Point by point, every
    unit's point is scored and learned with one
    :meth:`~detector.models.base.Model.score_learn_many` call. Returns ``expected``, ``lower``,
    ``upper``, ``score`` and ``raw_score`` arrays (units x points), and for a multivariate model
    ``top_features`` (lists): the same results :func:`score_online` gives unit by unit.
    """
    values = np.asarray(values, dtype=float)
    kind = type(models[0]) if len(models) else Model
    if len(set(map(type, models))) > 1:
        raise ValueError("score_online_many scores the units of one model class at a time")
    multivariate = values.ndim == 3
    shape = values.shape[:2]
    out = {column: np.full(shape, np.nan) for column in ("expected", "lower", "upper", "score")}
    tops = np.empty(shape, dtype=object) if multivariate else None
    for j, second in enumerate(seconds):
        point = values[:, j]
        rows = np.flatnonzero(~np.isnan(point).all(axis=1) if multivariate else ~np.isnan(point))
        if not len(rows):
            continue
        chosen = models if len(rows) == len(models) else [models[i] for i in rows]
        result = kind.score_learn_many(chosen, float(second), point[rows])
        for column, array in out.items():
            array[rows, j] = result[column]
        if tops is not None:
            for i, top in zip(rows, result["top_features"], strict=True):
                tops[i, j] = top
    if not multivariate:  # a band per series: the query's direction and minimum deviation apply
        out["score"], out["lower"], out["upper"] = band_arrays(values, out["expected"], out["lower"], out["upper"],
                                                               out["score"], direction, min_deviation, kind.calibrated)
    out["raw_score"] = out["score"].copy()
    if kind.calibrated:  # its score already means the same on every series
        calibrations = None
    calibrated = [i for i, calibration in enumerate(calibrations or ()) if calibration is not None]
    if calibrated:  # every unit's calibration at once, point by point
        out["score"][calibrated] = calibrate_many([calibrations[i] for i in calibrated], out["raw_score"][calibrated])
    if tops is not None:
        out["top_features"] = tops
    return out


def grid_seconds(index: pd.Index) -> np.ndarray:
    """Unix seconds of a unit frame's ``DatetimeIndex``, as the models compute them."""
    if not isinstance(index, pd.DatetimeIndex):  # a serve cycle's is one already: not made again
        index = pd.DatetimeIndex(index)
    return (index if index.unit == "ns" else index.as_unit("ns")).asi8 / 1e9


def top_features(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return []
