"""The promotion gate: whether a fresh fit replaces the champion, and the decision as a value.

:func:`gate` is the policy (``registry.promotion``); :func:`register_fit` applies it to one fit:
validate the candidate and the champion on the held-out window, log the run and the version, move
``champion`` when the candidate passes, and return the :class:`Decision` and the bundle to serve.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from boxwatch.log import kv
from detector.config import RegistryConfig
from detector.feedback import false_positive_counts
from detector.registry.evaluation import Validation, fit_for_validation, split_point, validate_models
from detector.registry.mlflow_store import (
    TAG_DECISION,
    TAG_MANUAL,
    TAG_REASON,
    Registry,
    RejectedModel,
    registered_name,
)
from detector.store import FitResult, ModelBundle

log = logging.getLogger("boxwatch.detector.registry")


@dataclass
class Decision:
    """What the gate decided for one fit."""

    query: str
    name: str
    version: str | None
    promoted: bool
    reason: str
    champion_version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"query": self.query, "name": self.name, "version": self.version, "promoted": self.promoted,
                "reason": self.reason, "champion_version": self.champion_version, "metrics": self.metrics,
                "run_id": self.run_id}


def gate(candidate: Validation, champion: Validation | None, settings: RegistryConfig,
         champion_version: str | None, champion_manual: bool, champion_stale: bool,
         false_positives: tuple[int, int] | None = None, target_rate: float = 0.1) -> tuple[bool, str]:
    """Whether a candidate replaces the champion, and why (the reason is logged as a tag).

    ``auto`` (the default metric) compares NAB scores where labelled incidents overlap the
    validation window, else how close each alert rate is to the calibration's ``target_rate``:
    ``anomaly_rate`` alone promotes whichever model flags less, i.e. misses more.

    ``false_positives`` is operator feedback (docs/feedback.md): ``(candidate, champion)`` anomalies on
    the validation window inside ``false_positive`` marks, ``None`` where there are no marks."""
    rule = settings.promotion
    if champion is None or champion_version is None:
        return True, "first version: no champion yet"
    if champion_manual and rule.respect_manual:
        return False, (f"champion v{champion_version} was chosen by hand; promote by hand "
                       f"(or set registry.promotion.respect_manual: false)")
    if champion_stale:
        return True, f"champion v{champion_version} was fitted for another configuration"
    if false_positives is not None and false_positives[0] > false_positives[1]:
        return False, (f"flags {false_positives[0]} validation points marked false_positive, champion "
                       f"v{champion_version} {false_positives[1]}")
    use_nab = rule.metric in ("nab_score", "auto")
    if use_nab and candidate.nab_score is not None and champion.nab_score is not None:
        if candidate.nab_score >= champion.nab_score - rule.tolerance:
            return True, (f"NAB score {candidate.nab_score:.2f} is no worse than champion v{champion_version}'s "
                          f"{champion.nab_score:.2f} (tolerance {rule.tolerance:g})")
        return False, (f"NAB score {candidate.nab_score:.2f} is lower than champion v{champion_version}'s "
                       f"{champion.nab_score:.2f} by more than the tolerance {rule.tolerance:g}")
    cand, champ = candidate.anomaly_rate, champion.anomaly_rate
    if math.isnan(cand):
        return False, "no validation points could be scored"
    if rule.metric == "auto":
        # Calibrated scores alert at about target_rate on normal data: a model whose alert rate is far
        # from it (flooding, or never firing) calibrates badly; fewer alerts alone is not better.
        cand_off, champ_off = abs(cand - target_rate), abs(champ - target_rate)
        if math.isnan(champ) or cand_off <= champ_off + rule.tolerance:
            return True, (f"alert rate {cand:.4f} on the validation window is as close to the calibration "
                          f"target {target_rate:g} as champion v{champion_version}'s {champ:.4f} "
                          f"(tolerance {rule.tolerance:g})")
        return False, (f"alert rate {cand:.4f} on the validation window is further from the calibration "
                       f"target {target_rate:g} than champion v{champion_version}'s {champ:.4f} by more than "
                       f"the tolerance {rule.tolerance:g}")
    if math.isnan(champ) or cand <= champ + rule.tolerance:
        return True, (f"anomaly rate {cand:.4f} on the validation window is no worse than champion "
                      f"v{champion_version}'s {champ:.4f} (tolerance {rule.tolerance:g})")
    return False, (f"anomaly rate {cand:.4f} on the validation window is higher than champion "
                   f"v{champion_version}'s {champ:.4f} by more than the tolerance {rule.tolerance:g}")


def register_fit(registry: Registry, result: FitResult) -> tuple[Decision, ModelBundle]:
    """Validate, log and register the fit, promote it if it passes; return the decision and what serves
    (the fit, now versioned, or the champion it did not replace)."""
    bundle, units = result.bundle, result.units
    query = registry.config.queries[bundle.query]
    name = registered_name(bundle.query, bundle.model_name, bundle.shard)
    registry.ensure_model(name)
    champion_mv = registry.champion_version(name)
    champion, refused = None, None
    if champion_mv is not None:
        try:
            champion = registry.load_version(name, champion_mv.version, bundle.shard)
        except RejectedModel as err:  # not ours: the fit replaces it, whatever its validation
            refused = f"champion v{champion_mv.version} was refused: {err}"
    candidate_val, champion_val, false_positives = Validation(), None, None
    incidents = incidents_of(registry.settings, bundle.query)
    if units:
        split = split_point(bundle, query.step, registry.settings)
        validation_models = fit_for_validation(bundle, units, split)
        # auto judges the published (calibrated) score; the older metrics keep the raw band score
        calibration = registry.config.anomalies.calibration if registry.settings.promotion.metric == "auto" else None
        candidate_val = validate_models(validation_models, units, split, query.direction,
                                        query.min_deviation, incidents, calibration)
        if champion is not None:
            champion_val = validate_models(champion.models, units, split, query.direction,
                                           query.min_deviation, incidents, calibration)
        false_positives = false_positive_counts(registry.config, bundle.query, bundle.model_name, units, split,
                                                validation_models, champion.models if champion else None)
    manual = champion is not None and champion_mv.tags.get(TAG_MANUAL) == "true"
    stale = champion is not None and champion.config_hash != bundle.config_hash
    promoted, reason = gate(candidate_val, champion_val if champion is not None else None, registry.settings,
                            champion_mv.version if champion_mv else None, manual, stale, false_positives,
                            registry.config.anomalies.calibration.target_rate)
    if refused is not None:
        promoted, reason = True, refused
    metrics = {"fit_seconds": bundle.fit_seconds, "series": float(len(bundle.models)),
               **candidate_val.metrics()}
    if champion_val is not None:
        metrics.update(champion_val.metrics("champion_validation_"))
    if false_positives is not None:
        metrics["validation_false_positives"], metrics["champion_validation_false_positives"] = false_positives
    tags = {TAG_DECISION: "champion" if promoted else "challenger", TAG_REASON: reason}
    began = time.perf_counter()
    run_id, version = registry.log_fit(bundle, metrics, tags)
    if promoted:
        registry.set_champion(name, version, manual=False, reason=reason)
    log.info("registered a fit", extra=kv(
        name=name, version=version, promoted=promoted, reason=reason,
        seconds=round(time.perf_counter() - began, 3)))
    decision = Decision(bundle.query, name, version, promoted, reason,
                        champion_mv.version if champion_mv else None, metrics, run_id)
    if promoted or champion is None or stale:
        return decision, dataclasses.replace(bundle, version=version)
    return decision, champion


def incidents_of(settings: RegistryConfig, alias: str) -> list[tuple[float, float]] | None:
    """The labelled incident windows of query ``alias`` (``registry.incidents``) as unix seconds."""
    windows = settings.incidents.get(alias)
    if not windows:
        return None
    return [(pd.Timestamp(s).timestamp(), pd.Timestamp(e).timestamp()) for s, e in windows]
