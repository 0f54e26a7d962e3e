"""Scoring glue for cross-sectional models (``cross_sectional = True``, e.g. :mod:`detector.models.peer`).

Such a model is fitted and served like a multivariate one -- one unit per group, the
query's ``group_by`` labels, one column per member and metric -- but its scores are published
per member: each member of the group becomes its own ``boxwatch_anomaly_*`` series, with the
group's labels plus the member's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd

from detector.config import DetectorConfig
from detector.models import make_model, model_class
from detector.models.base import Model
from detector.models.peer import member_labels
from detector.reader import SeriesKey
from detector.scoring import apply_band, fallback_model, output_labels
from detector.writer import ScoredPoint, scored_points


def is_cross_sectional(model: Model) -> bool:
    return bool(getattr(model, "cross_sectional", False))


def stand_in(config: DetectorConfig, alias: str, multivariate: bool, history: pd.DataFrame) -> Model:
    """The model for a unit that has none yet: a cross-sectional model needs no history, so the
    query's own model serves at once; any other model gets the robust stand-in."""
    name, params = config.model_for(alias)
    if getattr(model_class(name), "cross_sectional", False):
        return make_model(name, params).fit(history)
    return fallback_model(multivariate, history)


def member_points(model: Model, group: SeriesKey, frame: pd.DataFrame, alias: str, model_name: str,
                  direction: str, min_deviation: float) -> Iterator[ScoredPoint]:
    """Scored points of every member of ``group``: group labels + member labels + query + model."""
    for member, result in model.score_members(frame).items():
        labels = {**dict(group), **output_labels(member_labels(member)), "query": alias, "model": model_name}
        values = result[["value"]]
        banded = apply_band(result[["expected", "lower", "upper", "score"]].copy(), values, direction, min_deviation)
        yield from scored_points(tuple(sorted(labels.items())), values, banded)
