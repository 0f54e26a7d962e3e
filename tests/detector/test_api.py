"""The HTTP API of a running detector: health, models, anomalies, ad-hoc scoring, OpenAPI, /metrics lint."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime

import numpy as np
import pytest
import requests

from tests.detector.conftest import detector_config, wave
from tests.harness import require_binary

STEP = 5


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One Prometheus with a spike in the last minute of one series, and a detector scoring it."""
    from tests.detector.conftest import DetectorProcess
    from tests.harness import Prometheus, backfill, openmetrics

    workdir = tmp_path_factory.mktemp("api")
    now = time.time()
    calm = wave(now - 7200, now, STEP, seed=1)
    spiky = [(t, v + (40.0 if t > now - 60 else 0.0)) for t, v in wave(now - 7200, now, STEP, seed=2)]
    backfill(workdir / "data", openmetrics({("api_test_value", (("gpu", "0"),)): calm,
                                            ("api_test_value", (("gpu", "1"),)): spiky}))
    prom = Prometheus(workdir / "prom", data_dir=workdir / "data")
    queries = {"temp": {"expr": "api_test_value", "step": f"{STEP}s", "fit_window": "1h", "fit_every": "1h",
                        "infer_every": "1s", "direction": "above"}}
    detector = DetectorProcess(workdir / "detector", detector_config(prom.url, workdir / "state", queries,
                                                                     reader={"url": prom.url,
                                                                             "catch_up_max": "5m"}))
    try:
        detector.wait_for(lambda: requests.get(f"{detector.url}/readyz", timeout=5).status_code == 200,
                          what="ready")
        detector.wait_for(lambda: len(detector.samples("boxwatch_anomaly_score")) == 2, what="scores")
        yield detector
    finally:
        detector.stop()
        prom.stop()


def get(detector, path: str, **params) -> requests.Response:
    return requests.get(f"{detector.url}{path}", params=params, timeout=10)


def test_health_and_readiness(running):
    assert get(running, "/healthz").json() == {"status": "ok"}
    assert get(running, "/readyz").json() == {"status": "ready"}


def test_models_lists_the_fitted_bundle(running):
    models = get(running, "/api/v1/models").json()["data"]
    assert len(models) == 1
    entry = models[0]
    assert entry["query"] == "temp" and entry["model"] == "robust" and entry["series"] == 2
    assert entry["training_end"] - entry["training_start"] == 3600
    assert entry["version"] is None and entry["ready"] is True


def test_anomalies_report_the_spike_and_filter_by_time(running):
    running.wait_for(lambda: get(running, "/api/v1/anomalies").json()["data"], what="an anomaly")
    anomalies = get(running, "/api/v1/anomalies").json()["data"]
    assert {a["labels"]["gpu"] for a in anomalies} == {"1"}
    first = anomalies[0]
    assert first["score"] > 1 and first["value"] > first["upper"] and first["query"] == "temp"
    later = datetime.fromtimestamp(first["timestamp"] + 1, UTC).isoformat().replace("+00:00", "Z")
    assert all(a["timestamp"] > first["timestamp"] for a in get(running, "/api/v1/anomalies", since=later)
               .json()["data"])
    assert get(running, "/api/v1/anomalies", since=str(first["timestamp"])).json()["data"][0] == first
    assert get(running, "/api/v1/anomalies", since=str(time.time() + 3600)).json()["data"] == []


@pytest.mark.parametrize("since", ["yesterday", "2026-01-01T00:00:00", "nan"])
def test_bad_since_is_a_400_naming_the_parameter(running, since):
    response = get(running, "/api/v1/anomalies", since=since)
    assert response.status_code == 400
    assert response.json()["status"] == "error" and response.json()["error"].startswith("since:")


def test_score_endpoint_fits_on_history_and_scores_points(running):
    stamps = list(range(0, 6000, 60))
    values = [10.0 + 0.1 * np.sin(i) for i in range(100)]
    body = {"model": "robust", "params": {"window": 50},
            "history": {"timestamps": stamps, "values": values},
            "points": {"timestamps": [6000, 6060, 6120], "values": [10.0, 30.0, None]}}
    response = requests.post(f"{running.url}/api/v1/score", json=body, timeout=10)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["params"]["window"] == 50
    normal, spike, gap = data["scores"]
    assert normal["score"] < 1 < spike["score"]
    assert normal["lower"] < 10 < normal["upper"]
    assert gap["score"] is None and gap["value"] is None
    below = {**body, "direction": "above", "points": {"timestamps": [6000], "values": [-50.0]}}
    assert requests.post(f"{running.url}/api/v1/score", json=below, timeout=10).json()["data"]["scores"][0][
        "score"] == 0


GOOD = {"history": {"timestamps": [1, 2, 3], "values": [1, 2, 3]}, "points": {"timestamps": [4], "values": [4]}}


@pytest.mark.parametrize("body, message", [
    ("not json", "body: expected a JSON object"),
    ([1, 2], "body: expected a JSON object"),
    ({**GOOD, "model": "prophet"}, "model: unknown model 'prophet'"),
    ({**GOOD, "params": {"windw": 3}}, "params:"),
    ({**GOOD, "direction": "up"}, "direction:"),
    ({**GOOD, "min_deviation": -1}, "min_deviation:"),
    ({**GOOD, "extra": 1}, "unknown field(s): extra"),
    ({"points": GOOD["points"]}, "history: expected an object"),
    ({**GOOD, "history": {"timestamps": [], "values": []}}, "history.timestamps: expected a non-empty list"),
    ({**GOOD, "history": {"timestamps": [1, 2], "values": [1]}}, "history.values: expected a list as long"),
    ({**GOOD, "history": {"timestamps": [2, 1], "values": [1, 2]}}, "history.timestamps: must be strictly"),
    ({**GOOD, "history": {"timestamps": [1, 2], "values": ["a", 2]}}, "history.values: expected numbers"),
    ({**GOOD, "points": {"timestamps": ["x"], "values": [1]}}, "points.timestamps: expected numbers"),
    ({**GOOD, "points": {"timestamps": [4], "values": {"a": [1]}}}, "points: must have the same features"),
])
def test_malformed_score_requests_get_a_400_naming_the_problem(running, body, message):
    if isinstance(body, str):
        response = requests.post(f"{running.url}/api/v1/score", data=body, timeout=10,
                                 headers={"Content-Type": "application/json"})
    else:
        response = requests.post(f"{running.url}/api/v1/score", json=body, timeout=10)
    assert response.status_code == 400
    assert response.json()["status"] == "error"
    assert message in response.json()["error"]


def test_openapi_documents_every_route(running):
    from detector.api import create_app
    from detector.config import validate
    from detector.metrics import build_registry
    from detector.service import Detector

    document = get(running, "/api/v1/openapi.json").json()
    assert document["openapi"].startswith("3.")
    config = validate({"schema_version": 1, "queries": {"q": {"expr": "up"}}, "state_dir": "/nonexistent"})
    detector = Detector(config)
    app = create_app(detector, build_registry(detector))
    routes = {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint not in ("static", "index")}
    assert routes == set(document["paths"])
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert operation["responses"], f"{method} {path} documents no response"


def test_unknown_route_and_method_are_json_errors(running):
    assert get(running, "/api/v1/nothing").status_code == 404
    response = requests.delete(f"{running.url}/api/v1/models", timeout=10)
    assert response.status_code == 405 and response.json()["status"] == "error"


def test_metrics_pass_promtool_check_metrics(running):
    promtool = require_binary("promtool", "/usr/bin/promtool")
    text = get(running, "/metrics").text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("boxwatch_anomaly_score", "boxwatch_detector_cycle_duration_seconds_bucket",
                 "boxwatch_detector_build_info", "boxwatch_model_info", "process_resident_memory_bytes"):
        assert name in text


def test_min_deviation_silences_small_departures_from_a_tight_band(running):
    flat = {"timestamps": list(range(0, 6000, 60)), "values": [10.0 + 0.01 * (i % 3) for i in range(100)]}
    points = {"timestamps": [6000, 6060], "values": [10.8, 13.0]}
    plain = requests.post(f"{running.url}/api/v1/score", json={"history": flat, "points": points},
                          timeout=10).json()["data"]["scores"]
    assert plain[0]["score"] > 1 and plain[1]["score"] > 1  # both outside the very tight band
    tolerant = requests.post(f"{running.url}/api/v1/score",
                             json={"history": flat, "points": points, "min_deviation": 1.0},
                             timeout=10).json()["data"]["scores"]
    assert tolerant[0]["score"] == 0
    # 3 above expected with a band at least 1 wide: outside it, by about three band widths
    assert 2.5 < tolerant[1]["score"] < 3.5 < plain[1]["score"]
    assert tolerant[1]["upper"] >= tolerant[1]["expected"] + 1.0
