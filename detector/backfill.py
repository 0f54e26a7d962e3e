"""Score a past range as the service would have: fit before it, score forward, refit on schedule.

For each query the range ``[from, to]`` is cut at every ``fit_every``; at each cut the
models are fitted on the ``fit_window`` that ends just before it, and the next segment is
scored point by point (a point's score uses only earlier points). A unit absent from the
training window gets the robust stand-in, warming up from its first points.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import pandas as pd

from boxwatch.log import kv
from detector.config import DetectorConfig
from detector.reader import PrometheusReader, align
from detector.scoring import build_units, fallback_model, fit_bundle, is_multivariate, score_online
from detector.writer import ScoredPoint, scored_points

log = logging.getLogger("boxwatch.detector.backfill")


def backfill_query(
    config: DetectorConfig,
    alias: str,
    reader: PrometheusReader,
    start: float,
    end: float,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[ScoredPoint]:
    """Scored points of query ``alias`` over ``[start, end]``, segment by segment."""
    query = config.queries[alias]
    multivariate = is_multivariate(config, alias)
    lead = query.step if query.counter else 0.0
    calibrations: dict = {}  # per unit, carried across segments as the service carries it across refits
    cut = align(start, query.step)
    if cut < start:
        cut += query.step
    while cut <= end:
        segment_end = min(cut + query.fit_every - query.step, end)
        history = build_units(query, multivariate, reader.query_range(
            query.expr, cut - query.fit_window - lead, cut - query.step, query.step), shard, alias)
        bundle = fit_bundle(config, alias, history, cut - query.fit_window, cut - query.step)
        segment = build_units(query, multivariate, reader.query_range(
            query.expr, cut - lead, segment_end, query.step), shard, alias)
        log.info("backfilling segment", extra=kv(
            query=alias, start=_iso(cut), end=_iso(segment_end), series=len(segment),
            fitted=len(bundle.models)))
        for key, frame in segment.items():
            frame = frame.loc[frame.index >= pd.Timestamp(cut, unit="s", tz="UTC")]
            model = bundle.models.get(key)
            name = bundle.model_name
            if model is None:
                model, name = fallback_model(multivariate, frame.iloc[:0]), "robust"
            if key not in calibrations:
                calibrations[key] = config.anomalies.calibration.make()
            result = score_online(model, frame, query.direction, query.min_deviation, calibrations[key])
            labels = tuple(sorted({**dict(key), "query": alias, "model": name}.items()))
            yield from scored_points(labels, frame, result)
        cut = segment_end + query.step


def backfill(config: DetectorConfig, reader: PrometheusReader, start: float, end: float,
             queries: Iterable[str] | None = None, shard: tuple[int, int] = (0, 1)) -> Iterator[ScoredPoint]:
    for alias in queries or config.queries:
        yield from backfill_query(config, alias, reader, start, end, shard)


def _iso(ts: float) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").isoformat()
