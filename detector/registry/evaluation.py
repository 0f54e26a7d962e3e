"""How a fit is judged: its recipe fitted on the start of the training window scores the held-out end.

The rates (and, where ``registry.incidents`` label the window, NAB scores) of the candidate and of the
champion on the same held-out points are what :func:`detector.registry.gate.gate` compares.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from boxwatch.log import kv
from detector.config import CalibrationConfig, RegistryConfig
from detector.models import make_model
from detector.reader import SeriesKey
from detector.scoring import score_online
from detector.store import ModelBundle

log = logging.getLogger("boxwatch.detector.registry")


@dataclass
class Validation:
    """Scores of one bundle on the held-out window: points scored and how many were anomalous."""

    points: int = 0
    anomalies: int = 0
    nab_score: float | None = None

    @property
    def anomaly_rate(self) -> float:
        return self.anomalies / self.points if self.points else math.nan

    def metrics(self, prefix: str = "validation_") -> dict[str, float]:
        result = {f"{prefix}points": float(self.points), f"{prefix}anomaly_rate": self.anomaly_rate}
        if self.nab_score is not None:
            result[f"{prefix}nab_score"] = self.nab_score
        return {k: v for k, v in result.items() if not math.isnan(v)}


def split_point(bundle: ModelBundle, step: float, settings: RegistryConfig) -> float:
    """Start of the validation window: the last part of the training window."""
    span_steps = max(int((bundle.training_end - bundle.training_start) // step), 2)
    held = max(1, min(int(span_steps * settings.validation_fraction), settings.validation_max_points))
    return bundle.training_end - held * step


def validate_models(
    models: dict[SeriesKey, Any],
    units: Mapping[SeriesKey, pd.DataFrame],
    split: float,
    direction: str,
    min_deviation: float,
    incidents: list[tuple[float, float]] | None = None,
    calibration: CalibrationConfig | None = None,
) -> Validation:
    """Score the validation part of each unit online with a copy of its model (the model is not changed).

    With ``calibration`` the scores are calibrated as the service publishes them (a fresh calibration
    per unit, started on the validation window), so rates and NAB scores are the product's."""
    result = Validation()
    cut = pd.Timestamp(split, unit="s", tz="UTC")
    nab_files = []
    for key, model in models.items():
        frame = units.get(key)
        if frame is None:
            continue
        held = frame.loc[frame.index >= cut]
        if held.empty:
            continue
        scores = score_online(copy.deepcopy(model), held, direction, min_deviation,
                              calibration.make() if calibration is not None else None)["score"].astype(float)
        scored = scores.dropna()
        result.points += len(scored)
        result.anomalies += int((scored > 1.0).sum())
        if incidents:
            nab_files.append(scores)
    if incidents:
        result.nab_score = nab_score(nab_files, incidents)
    return result


def fit_for_validation(bundle: ModelBundle, units: Mapping[SeriesKey, pd.DataFrame], split: float) -> dict:
    """The candidate's recipe fitted on the training part only, so its validation is out of sample."""
    cut = pd.Timestamp(split, unit="s", tz="UTC")
    models = {}
    for key in bundle.models:
        frame = units.get(key)
        if frame is None:
            continue
        train = frame.loc[frame.index < cut]
        if train.dropna(how="all").empty:
            continue
        try:
            models[key] = make_model(bundle.model_name, bundle.params).fit(train)
        except (ValueError, np.linalg.LinAlgError, ArithmeticError) as err:
            log.warning("validation fit failed for a series", extra=kv(
                query=bundle.query, labels=dict(key), error=err))
    return models


def nab_score(scores: list[pd.Series], incidents: list[tuple[float, float]]) -> float | None:
    """NAB standard-profile score of the validation scores against the labelled incident windows.

    boxwatch scores (0 normal, > 1 outside the band) map to NAB's ``[0, 1]`` as ``s / (1 + s)``,
    which keeps their order (NAB sweeps the threshold). Uses :mod:`detector.nabscore`;
    ``None`` when no incident overlaps the validation window.
    """
    from detector import nabscore

    results, windows = {}, {}
    for i, series in enumerate(scores):
        if series.empty:
            continue
        first, last = series.index[0].timestamp(), series.index[-1].timestamp()
        overlapping = [[_iso(s), _iso(e)] for s, e in incidents if e >= first and s <= last]
        values = series.fillna(0.0).clip(lower=0.0).to_numpy(float)
        results[f"series{i}"] = (series.index, values / (1.0 + values))
        windows[f"series{i}"] = overlapping
    if not any(windows.values()):
        return None
    return float(nabscore.score_corpus(results, windows, nabscore.STANDARD_PROFILES[:1])["standard"].normalized)


def _iso(ts: float) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").isoformat()
