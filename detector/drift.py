"""Drift: Evidently compares the data a model was trained on with the most recent window.

Per query and model, the *features* are the model's inputs pooled over the query's series:
for a univariate model ``value`` and ``delta`` (the step-to-step change, which catches a
series that became noisier or smoother at the same level); for a multivariate model each
feature column. The reference is a sample of the training window, saved when a fit is
served (``<state_dir>/drift/<query>/reference.pkl``) or, when the serving models are another
version (a champion installed from the registry), read back from Prometheus for their
training window.

Each check runs an Evidently ``Report`` of one ``ValueDrift`` per feature, saves its HTML as
``<state_dir>/drift/<query>/<model>.html`` (served at ``/reports/drift/<query>/<model>``),
and exports ``boxwatch_drift_score{query, model, feature}`` (the test's statistic: a p-value
for ks and the other tests, a distance for wasserstein, psi, ...) and
``boxwatch_drift_detected{query, model}`` (1 when any feature drifted by Evidently's rule
for the method and threshold). With ``drift.retrain_on_drift`` a drift asks the service for a
refit, which goes through the registry's promotion gate like any fit.

``evidently`` (~6 s to import) loads only on the first check, on the drift thread.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from boxwatch.files import atomic_path
from boxwatch.log import kv
from detector.config import DetectorConfig, DriftConfig
from detector.reader import ReaderError, SeriesKey
from detector.store import STATS, FitResult, FitSink, ModelBundle, ModelKey, UntrustedModel, write_state_file

if TYPE_CHECKING:
    from detector.service import Detector

log = logging.getLogger("boxwatch.detector.drift")
_SAFE = str.maketrans({c: "_" for c in "/\\\x00"})


def features(units: Mapping[SeriesKey, pd.DataFrame], multivariate: bool) -> pd.DataFrame:
    """The model inputs pooled over units; univariate units add ``delta`` (first difference)."""
    parts = []
    for frame in units.values():
        if multivariate:
            parts.append(frame.reset_index(drop=True))
        else:
            values = frame["value"].astype(float)
            parts.append(pd.DataFrame({"value": values.to_numpy(), "delta": values.diff().to_numpy()}))
    if not parts:
        return pd.DataFrame()
    pooled = pd.concat(parts, ignore_index=True)
    return pooled.dropna(how="all")


def sample(frame: pd.DataFrame, limit: int, seed: int = 0) -> pd.DataFrame:
    return frame if len(frame) <= limit else frame.sample(n=limit, random_state=seed).reset_index(drop=True)


@dataclass
class DriftResult:
    """One check of one query: per-feature statistic and verdict, the report's path."""

    query: str
    model: str
    scores: dict[str, float] = field(default_factory=dict)
    drifted: dict[str, bool] = field(default_factory=dict)
    report: Path | None = None
    checked_at: float = 0.0
    reference_rows: int = 0
    current_rows: int = 0

    @property
    def detected(self) -> bool:
        return any(self.drifted.values())

    def as_dict(self) -> dict[str, Any]:
        return {"query": self.query, "model": self.model, "detected": self.detected,
                "scores": {k: (None if math.isnan(v) else v) for k, v in self.scores.items()},
                "drifted": self.drifted, "checked_at": self.checked_at,
                "reference_rows": self.reference_rows, "current_rows": self.current_rows,
                "report": f"/reports/drift/{self.query}/{self.model}" if self.report else None}


def compare(reference: pd.DataFrame, current: pd.DataFrame, method: str = "ks",
            threshold: float | None = None) -> tuple[dict[str, float], dict[str, bool], Any]:
    """Evidently's drift test per common numeric column: ``(scores, drifted, snapshot)``.

    The verdict per column is Evidently's own (its stat test's rule for ``method`` and
    ``threshold``); the snapshot renders the HTML report (``snapshot.save_html``).
    """
    from evidently import Report
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType
    from evidently.metrics import ValueDrift

    columns = [c for c in reference.columns if c in current.columns
               and reference[c].notna().sum() >= 2 and current[c].notna().sum() >= 2]
    if not columns:
        raise ValueError("no feature has enough points in both the reference and the current window")
    ref, cur = reference[columns].astype(float), current[columns].astype(float)
    report = Report([ValueDrift(column=c, method=method, threshold=threshold) for c in columns])
    snapshot = report.run(current_data=cur, reference_data=ref)
    values = [m.get("value") for m in snapshot.dict()["metrics"]]
    scores, drifted = {}, {}
    for column, value in zip(columns, values, strict=True):
        test = get_stattest(ref[column].dropna(), cur[column].dropna(), ColumnType.Numerical, method)
        verdict = test(ref[column].dropna(), cur[column].dropna(), ColumnType.Numerical, threshold)
        scores[column] = float(value) if value is not None else float(verdict.drift_score)
        drifted[column] = bool(verdict.drifted)
    return scores, drifted, snapshot


def report_path(state_dir: str | os.PathLike, query: str, model: str) -> Path:
    return Path(state_dir) / "drift" / query.translate(_SAFE) / f"{model.translate(_SAFE)}.html"


def reference_path(state_dir: str | os.PathLike, query: str) -> Path:
    return Path(state_dir) / "drift" / query.translate(_SAFE) / "reference.pkl"


class DriftMonitor:
    """Scheduled checks in a thread of their own; results for the collector and the HTTP layer."""

    def __init__(self, config: DetectorConfig):
        self.config = config
        self.detector: Detector | None = None
        self.results: dict[str, DriftResult] = {}
        self._lock = threading.Lock()
        self._check_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state: dict[str, bool] = {}

    @property
    def settings(self) -> DriftConfig:
        return (self.detector.config if self.detector else self.config).drift

    # ------------------------------------------------------------------ references

    def wrap_sink(self, inner: FitSink) -> FitSink:
        """Keep a sample of the training data of every fit that goes on to serve."""

        def sink(result: FitResult) -> ModelBundle:
            served = inner(result)
            if result.units and result.same_fit(served):
                self.save_reference(served, result.units)
            return served

        return sink

    def save_reference(self, bundle: ModelBundle, units: Mapping[SeriesKey, pd.DataFrame]) -> None:
        from detector.models import model_class

        frame = sample(features(units, bool(model_class(bundle.model_name).multivariate)),
                       self.settings.reference_max_points)
        path = reference_path(self.config.state_dir, bundle.query)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"config_hash": bundle.config_hash, "version": bundle.version, "frame": frame}
        key = ModelKey.for_config(self.config.state_dir, self.config.model_key_file)
        write_state_file(path, key.sign(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)))

    def _reference(self, alias: str, bundle: dict[str, Any]) -> pd.DataFrame | None:
        path = reference_path(self.config.state_dir, alias)
        payload = None
        if path.exists():
            try:
                payload = ModelKey.for_config(self.config.state_dir, self.config.model_key_file).load(path)
            except UntrustedModel as err:  # pickles run code: only the detector's own signed files are read
                STATS.reject("store")
                log.error("refusing a drift reference that this detector did not write; reading the window again",
                          extra=kv(query=alias, path=str(path), reason=str(err)))
        if payload is not None and (payload.get("config_hash"), payload.get("version")) == (
                bundle.get("config_hash"), bundle.get("version")):
            return payload["frame"]
        start, end = bundle.get("training_start"), bundle.get("training_end")
        if start is None or end is None:
            return None
        frame = self._read(alias, start, end)
        return None if frame is None else sample(frame, self.settings.reference_max_points)

    def _read(self, alias: str, start: float, end: float) -> pd.DataFrame:
        """The features of ``alias`` from ``start`` to ``end``, read as the service reads its units."""
        from detector.scoring import is_multivariate

        detector = self.detector
        return features(detector.read_units(alias, start, end), is_multivariate(detector.config, alias))

    # ------------------------------------------------------------------ checks

    def check(self, alias: str) -> DriftResult | None:
        """Compare ``alias``'s training data with its recent window; ``None`` when it cannot be checked yet."""
        detector = self.detector
        served = {b["query"]: b for b in detector.bundles() if b.get("ready")}
        bundle = served.get(alias)
        if bundle is None:
            return None
        settings = self.settings
        now = time.time()
        reference = self._reference(alias, bundle)
        current = self._read(alias, now - settings.window, now)
        if reference is None or current is None or len(current) < settings.min_points or len(reference) < 2:
            log.debug("not enough data for a drift check", extra=kv(query=alias))
            return None
        scores, drifted, snapshot = compare(reference, current, settings.method, settings.threshold)
        path = report_path(self.config.state_dir, alias, bundle["model"])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, suffix=".html.tmp") as tmp:
                snapshot.save_html(str(tmp))
        except OSError:
            STATS.persist_failed()  # the state dir is full or read-only: boxwatch_detector_persist_errors_total
            raise
        result = DriftResult(alias, bundle["model"], scores, drifted, path, now, len(reference), len(current))
        with self._lock:
            self.results[alias] = result
        self._log_change(result)
        if result.detected and settings.retrain_on_drift:
            log.info("drift detected: refitting", extra=kv(query=alias))
            detector.request_fit(alias)
        return result

    def check_all(self) -> list[DriftResult]:
        with self._check_lock:
            results = []
            for alias in list(self.detector.config.queries):
                try:
                    result = self.check(alias)
                except (ReaderError, ValueError) as err:
                    log.warning("drift check failed", extra=kv(query=alias, error=err))
                    continue
                if result is not None:
                    results.append(result)
            return results

    def _log_change(self, result: DriftResult) -> None:
        if self._state.get(result.query) != result.detected:
            self._state[result.query] = result.detected
            message = "drift detected" if result.detected else "no drift"
            log.info(message, extra=kv(query=result.query, model=result.model, **{
                f"score_{k}": round(v, 6) for k, v in result.scores.items()}))

    # ------------------------------------------------------------------ lifecycle

    def start(self, detector: Detector) -> None:
        self.detector = detector
        self._thread = threading.Thread(target=self._loop, name="drift", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.interval):
            self.check_all()

    def snapshot(self) -> list[DriftResult]:
        with self._lock:
            return list(self.results.values())


def drift_families(monitor: DriftMonitor):
    """``boxwatch_drift_score``, ``boxwatch_drift_detected`` and the last check's time, for ``/metrics``."""
    from prometheus_client.core import GaugeMetricFamily

    results = monitor.snapshot()
    score = GaugeMetricFamily("boxwatch_drift_score",
                              "Drift statistic of a model input, training window vs recent window "
                              "(a p-value for ks, a distance for wasserstein/psi/...).",
                              labels=["query", "model", "feature"])
    detected = GaugeMetricFamily("boxwatch_drift_detected", "1 if any input of the model drifted at the last check.",
                                 labels=["query", "model"])
    checked = GaugeMetricFamily("boxwatch_drift_last_check_timestamp_seconds",
                                "Unix time of the last drift check.", labels=["query", "model"])
    for result in sorted(results, key=lambda r: r.query):
        for feature, value in sorted(result.scores.items()):
            if not math.isnan(value):
                score.add_metric([result.query, result.model, feature], value)
        detected.add_metric([result.query, result.model], float(result.detected))
        checked.add_metric([result.query, result.model], result.checked_at)
    yield score
    yield detected
    yield checked


OPENAPI_PATHS: dict[str, Any] = {
    "/reports/drift/{query}/{model}": {"get": {
        "summary": "The last Evidently drift report of a query and model (HTML).",
        "parameters": [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                       for n in ("query", "model")],
        "responses": {"200": {"description": "HTML report.", "content": {"text/html": {}}},
                      "404": {"description": "No report yet (JSON error)."}}}},
    "/api/v1/drift": {"get": {
        "summary": "Results of the last drift check per query: scores per feature, verdicts, report link.",
        "responses": {"200": {"description": "Drift results."}}}},
    "/api/v1/drift/check": {"post": {
        "summary": "Run the drift checks now (as the schedule would) and return their results.",
        "responses": {"200": {"description": "Drift results."}, "503": {"description": "Not started."}}}},
}
"""The routes of :func:`blueprint`, for the app's OpenAPI document."""


def blueprint(monitor: DriftMonitor):
    """``/reports/drift/<query>/<model>``, ``GET /api/v1/drift`` and ``POST /api/v1/drift/check``."""
    from flask import Blueprint, jsonify, send_file

    routes = Blueprint("drift", __name__)

    @routes.get("/reports/drift/<query>/<model>")
    def drift_report(query: str, model: str):
        path = report_path(monitor.config.state_dir, query, model)
        if not path.exists():
            return jsonify({"status": "error", "error": f"no drift report for query {query!r} and model {model!r} yet"}), 404
        return send_file(path.resolve(), mimetype="text/html", max_age=0)

    @routes.get("/api/v1/drift")
    def drift_results():
        return jsonify({"status": "success", "results": [r.as_dict() for r in monitor.snapshot()]})

    @routes.post("/api/v1/drift/check")
    def drift_check():
        if monitor.detector is None:
            return jsonify({"status": "error", "error": "not started"}), 503
        return jsonify({"status": "success", "results": [r.as_dict() for r in monitor.check_all()]})

    return routes
