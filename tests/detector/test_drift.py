"""Drift checks with Evidently: a shifted series drifts, a stationary one does not; the report is served."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import requests

from detector.drift import compare, features
from tests.detector.conftest import DetectorProcess, detector_config
from tests.harness import Prometheus, backfill, openmetrics

STEP = 60
pytestmark = pytest.mark.timeout(300)


def series(end: float, seed: int, shift: float = 0.0, hours: float = 12.0, shifted_last: float = 3600.0):
    rng = np.random.default_rng(seed)
    stamps = np.arange(end - hours * 3600, end + 1, STEP, dtype=float)
    values = 50.0 + rng.normal(0, 1, len(stamps)) + np.where(stamps > end - shifted_last, shift, 0.0)
    return [(float(t), round(float(v), 3)) for t, v in zip(stamps, values, strict=True)]


@pytest.mark.slow
def test_compare_flags_a_shift_and_not_noise_of_the_same_distribution():
    rng = np.random.default_rng(7)
    reference = pd.DataFrame({"value": rng.normal(50, 1, 3000)})
    same = pd.DataFrame({"value": rng.normal(50, 1, 120)})
    shifted = pd.DataFrame({"value": rng.normal(53, 1, 120)})
    scores, drifted, _ = compare(reference, same, "ks", 0.01)
    assert not drifted["value"] and scores["value"] > 0.01
    scores, drifted, snapshot = compare(reference, shifted, "ks", 0.01)
    assert drifted["value"] and scores["value"] < 1e-6
    # A distance method reads the other way round: bigger means more drift.
    scores, drifted, _ = compare(reference, shifted, "wasserstein", 0.1)
    assert drifted["value"] and scores["value"] > 0.1


def test_univariate_features_add_the_step_change():
    idx = pd.date_range("2026-01-01", periods=4, freq="min", tz="UTC")
    frame = features({(("instance", "a"),): pd.DataFrame({"value": [1.0, 3.0, 6.0, 10.0]}, index=idx)}, False)
    assert list(frame.columns) == ["value", "delta"]
    assert frame["delta"].tolist()[1:] == [2.0, 3.0, 4.0]


@pytest.fixture(scope="module")
def drift_service(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    end = float(int(time.time()) // STEP * STEP)
    data = {
        ("bw_stable", (("instance", "a"),)): series(end, 1),
        ("bw_stable", (("instance", "b"),)): series(end, 2),
        ("bw_shifted", (("instance", "a"),)): series(end, 3, shift=8.0),
    }
    backfill(root / "data", openmetrics(data))
    prometheus = Prometheus(root / "prometheus", data_dir=root / "data")
    query = {"step": "60s", "fit_window": "12h", "fit_every": "1d", "params": {"window": 120}}
    config = detector_config(prometheus.url, root / "state", {
        "stable": {"expr": "bw_stable", **query},
        "shifted": {"expr": "bw_shifted", **query},
    }, drift={"enabled": True, "interval": "1h", "window": "1h", "method": "ks", "threshold": 0.01,
              "retrain_on_drift": True},
       registry={"enabled": True})
    detector = DetectorProcess(root / "detector", config)
    try:
        detector.wait_for(lambda: requests.get(f"{detector.url}/readyz", timeout=5).status_code == 200, 60,
                          "models fitted")
        yield detector
    finally:
        detector.stop()
        prometheus.stop()


@pytest.mark.slow
def test_drift_detected_on_the_shifted_series_only(drift_service):
    detector = drift_service
    before = {m["query"]: m["fitted_at"] for m in requests.get(f"{detector.url}/api/v1/models", timeout=5).json()["data"]}
    response = requests.post(f"{detector.url}/api/v1/drift/check", timeout=120)
    assert response.status_code == 200, response.text
    results = {r["query"]: r for r in response.json()["results"]}
    assert results["shifted"]["detected"] and not results["stable"]["detected"], results
    assert detector.sample("boxwatch_drift_detected", query="shifted", model="robust") == [1.0]
    assert detector.sample("boxwatch_drift_detected", query="stable", model="robust") == [0.0]
    assert detector.sample("boxwatch_drift_score", query="shifted", model="robust", feature="value")[0] < 0.01
    assert detector.sample("boxwatch_drift_score", query="stable", model="robust", feature="value")[0] > 0.01
    assert {s.labels["feature"] for s in detector.samples("boxwatch_drift_score")} == {"value", "delta"}
    # retrain_on_drift: the drifted query is refitted through the registry's gate; the other is not.
    detector.wait_for(lambda: "2" in _versions(detector, "boxwatch.shifted.robust"), 90, "refit after drift")
    refit = _versions(detector, "boxwatch.shifted.robust")["2"]
    assert refit["decision"] in ("champion", "challenger") and refit["reason"]
    assert list(_versions(detector, "boxwatch.stable.robust")) == ["1"]
    assert _fitted_at(detector)["stable"] == before["stable"]


def _versions(detector: DetectorProcess, name: str) -> dict[str, dict]:
    from detector.config import load_config
    from detector.registry import Registry

    return {r["version"]: r for r in Registry(load_config(detector.config_path)).versions([name])}


@pytest.mark.slow
def test_serve_registers_its_own_fits(drift_service):
    """The fits ``serve`` makes at start are MLflow runs and versions, and what serves says so."""
    info = {s.labels["query"]: s.labels["version"] for s in drift_service.samples("boxwatch_model_info")}
    assert info == {"stable": "1", "shifted": info["shifted"]} and info["shifted"] in ("1", "2")
    assert drift_service.sample("boxwatch_detector_registry_up") == [1.0]
    assert _versions(drift_service, "boxwatch.stable.robust")["1"]["aliases"] == ["champion"]


def _fitted_at(detector: DetectorProcess) -> dict[str, float]:
    return {m["query"]: m["fitted_at"] for m in requests.get(f"{detector.url}/api/v1/models", timeout=5).json()["data"]}


@pytest.mark.slow
def test_the_report_is_served_as_html(drift_service):
    detector = drift_service
    if not detector.samples("boxwatch_drift_detected"):
        requests.post(f"{detector.url}/api/v1/drift/check", timeout=120).raise_for_status()
    response = requests.get(f"{detector.url}/reports/drift/shifted/robust", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    assert "<html" in response.text.lower() and "value" in response.text
    missing = requests.get(f"{detector.url}/reports/drift/nosuch/robust", timeout=10)
    assert missing.status_code == 404 and "no drift report" in missing.json()["error"]


@pytest.mark.slow
def test_exposition_with_drift_metrics_passes_promtool(drift_service):
    import subprocess

    from tests.harness import require_binary

    if not drift_service.samples("boxwatch_drift_detected"):
        requests.post(f"{drift_service.url}/api/v1/drift/check", timeout=120).raise_for_status()
    promtool = require_binary("promtool", "/usr/bin/promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=drift_service.metrics(), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_reference_is_kept_for_the_fit_that_serves_and_not_for_a_champion_kept_instead(tmp_path):
    """Drift keeps a sample of a fit's training frames when that fit serves (a registry may have versioned it
    since), and not when the sink serves another bundle (a champion the fit did not replace)."""
    import dataclasses

    from detector.config import validate
    from detector.drift import DriftMonitor, reference_path
    from detector.scoring import fit_bundle
    from detector.store import FitResult, ModelKey

    config = validate({"schema_version": 1, "state_dir": str(tmp_path), "drift": {"enabled": True},
                       "queries": {"q": {"expr": "up", "step": "60s"}}})
    index = pd.date_range("2026-01-01", periods=60, freq="min", tz="UTC")
    units = {(("instance", "a"),): pd.DataFrame({"value": np.linspace(0.0, 1.0, 60)}, index=index)}
    fit = FitResult(fit_bundle(config, "q", units, index[0].timestamp(), index[-1].timestamp()), units)
    champion = dataclasses.replace(fit.bundle, fitted_at=fit.bundle.fitted_at - 86400, version="1")
    monitor = DriftMonitor(config)
    path = reference_path(tmp_path, "q")

    assert monitor.wrap_sink(lambda result: champion)(fit) is champion
    assert not path.exists()
    served = monitor.wrap_sink(lambda result: dataclasses.replace(result.bundle, version="2"))(fit)
    payload = ModelKey.for_config(tmp_path).load(path)
    assert (payload["version"], payload["config_hash"]) == ("2", served.config_hash)
    assert list(payload["frame"].columns) == ["value", "delta"] and len(payload["frame"]) == 60
