"""The detector's HTTP API in-process: ``create_app`` over an in-process ``Detector``, called through
Flask's test client.

The quick tier's view of tests/detector/test_api.py, which runs the same routes on a detector process
fed by a real Prometheus. History comes from the in-process ``query_range`` server of
test_service_unit.py; the test moves the service's clock itself.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from detector.api import create_app
from detector.config import load_config
from detector.metrics import build_registry
from detector.service import Detector
from tests.detector.conftest import detector_config, wave
from tests.detector.test_service_unit import GPU0, GPU1, NOW, STEP, RangeServer, append

AFTER = NOW - 37 + STEP  # the first grid point after NOW


@pytest.fixture
def service(tmp_path):
    """A detector over two GPUs (GPU 1 spikes at ``AFTER``), its app and its config file."""
    source = RangeServer({("unit_test_temp", GPU0): wave(NOW - 7200, NOW, STEP, seed=1),
                          ("unit_test_temp", GPU1): wave(NOW - 7200, NOW, STEP, seed=2)})
    queries = {"temp": {"expr": "unit_test_temp", "step": f"{STEP}s", "fit_window": "1h", "fit_every": "1h",
                        "infer_every": f"{STEP}s", "direction": "above"}}
    raw = detector_config(source.url, tmp_path / "state", queries, server={"listen_address": "127.0.0.1:9875"})
    path = tmp_path / "detector.yml"
    path.write_text(yaml.safe_dump(raw))
    detector = Detector(load_config(str(path)), config_path=str(path), clock=lambda: NOW)
    app = create_app(detector, build_registry(detector))
    yield detector, app.test_client(), source, path
    source.stop()


def fit_and_spike(detector: Detector, source: RangeServer) -> None:
    detector.run_cycle(NOW)
    detector.fit_query("temp", NOW)
    append(source, ("unit_test_temp", GPU0), AFTER, AFTER, lambda t: 50.0)
    append(source, ("unit_test_temp", GPU1), AFTER, AFTER, lambda t: 95.0)
    detector.run_cycle(NOW + STEP)


def test_health_readiness_and_the_models_list(service):
    detector, client, source, _ = service
    assert client.get("/healthz").get_json() == {"status": "ok"}
    waiting = client.get("/readyz")
    assert waiting.status_code == 503 and waiting.get_json() == {"status": "not ready", "waiting_for": ["temp"]}
    fit_and_spike(detector, source)
    assert client.get("/readyz").get_json() == {"status": "ready"}
    [entry] = client.get("/api/v1/models").get_json()["data"]
    assert entry["query"] == "temp" and entry["model"] == "robust" and entry["series"] == 2
    assert entry["training_end"] - entry["training_start"] == 3600
    assert entry["version"] is None and entry["ready"] is True


def test_anomalies_report_the_spike_and_filter_by_time(service):
    detector, client, source, _ = service
    assert client.get("/api/v1/anomalies").get_json()["data"] == []
    fit_and_spike(detector, source)
    [anomaly] = client.get("/api/v1/anomalies").get_json()["data"]
    assert anomaly["labels"] == {"gpu": "1"} and anomaly["query"] == "temp"
    assert anomaly["score"] > 1 and anomaly["value"] == 95.0 > anomaly["upper"]
    at = datetime.fromtimestamp(anomaly["timestamp"], UTC).isoformat().replace("+00:00", "Z")
    assert client.get("/api/v1/anomalies", query_string={"since": at}).get_json()["data"] == [anomaly]
    later = str(anomaly["timestamp"] + 1)
    assert client.get("/api/v1/anomalies", query_string={"since": later}).get_json()["data"] == []


@pytest.mark.parametrize("since", ["yesterday", "2026-01-01T00:00:00", "nan"])
def test_bad_since_is_a_400_naming_the_parameter(service, since):
    response = service[1].get("/api/v1/anomalies", query_string={"since": since})
    assert response.status_code == 400
    assert response.get_json()["status"] == "error" and response.get_json()["error"].startswith("since:")


def test_metrics_serve_the_scores_of_the_last_cycle(service):
    detector, client, source, _ = service
    fit_and_spike(detector, source)
    response = client.get("/metrics")
    assert response.status_code == 200
    scores = {s.labels["gpu"]: s.value for f in text_string_to_metric_families(response.get_data(as_text=True))
              for s in f.samples if s.name == "boxwatch_anomaly_score"}
    assert scores["1"] > 1 > scores["0"]


def test_score_endpoint_fits_on_history_and_scores_points(service):
    client = service[1]
    stamps = list(range(0, 6000, 60))
    values = [10.0 + 0.1 * np.sin(i) for i in range(100)]
    body = {"model": "robust", "params": {"window": 50},
            "history": {"timestamps": stamps, "values": values},
            "points": {"timestamps": [6000, 6060, 6120], "values": [10.0, 30.0, None]}}
    response = client.post("/api/v1/score", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    data = response.get_json()["data"]
    assert data["params"]["window"] == 50
    normal, spike, gap = data["scores"]
    assert normal["score"] < 1 < spike["score"]
    assert normal["lower"] < 10 < normal["upper"]
    assert gap["score"] is None and gap["value"] is None
    below = {**body, "direction": "above", "points": {"timestamps": [6000], "values": [-50.0]}}
    assert client.post("/api/v1/score", json=below).get_json()["data"]["scores"][0]["score"] == 0


GOOD = {"history": {"timestamps": [1, 2, 3], "values": [1, 2, 3]}, "points": {"timestamps": [4], "values": [4]}}


@pytest.mark.parametrize("body, message", [
    ([1, 2], "body: expected a JSON object"),
    ({**GOOD, "model": "prophet"}, "model: unknown model 'prophet'"),
    ({**GOOD, "direction": "up"}, "direction:"),
    ({**GOOD, "extra": 1}, "unknown field(s): extra"),
    ({**GOOD, "history": {"timestamps": [2, 1], "values": [1, 2]}}, "history.timestamps: must be strictly"),
    ({**GOOD, "points": {"timestamps": [4], "values": {"a": [1]}}}, "points: must have the same features"),
])
def test_malformed_score_requests_get_a_400_naming_the_problem(service, body, message):
    response = service[1].post("/api/v1/score", json=body)
    assert response.status_code == 400
    assert response.get_json()["status"] == "error" and message in response.get_json()["error"]


def test_unknown_routes_and_foreign_hosts_get_json_errors(service):
    client = service[1]
    missing = client.get("/api/v1/nothing")
    assert missing.status_code == 404 and missing.get_json()["error"] == "no route /api/v1/nothing"
    wrong = client.delete("/healthz")
    assert wrong.status_code == 405 and "GET" in wrong.headers["Allow"]
    for host in ("evil.example", "evil.example:9875", "127.0.0.1.evil.example"):
        refused = client.get("/api/v1/models", headers={"Host": host})
        assert refused.status_code == 403 and "api.allowed_hosts" in refused.get_json()["error"]
    for host in ("127.0.0.1:9875", "localhost", "[::1]:9"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200


def test_reload_applies_a_good_config_keeps_a_bad_one_and_can_switch_mutations_off(service):
    detector, client, _, path = service
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "queries": {"temp": {"expr": "unit_test_temp", "step": "-5m"}}}))
    refused = client.post("/-/reload")
    assert refused.status_code == 400 and "the last good one is kept" in refused.get_json()["error"]
    assert any("step" in problem for problem in refused.get_json()["problems"])
    assert detector.config.queries["temp"].step == STEP
    path.write_text(yaml.safe_dump({**raw, "api": {"mutations": False}}))
    assert client.post("/-/reload").get_json() == {"status": "success"}
    switched_off = client.post("/-/reload")
    assert switched_off.status_code == 403 and "api.mutations" in switched_off.get_json()["error"]
    assert client.post("/api/v1/score", json=GOOD).status_code == 200  # scoring changes nothing: still served


def test_attached_routes_are_served_and_documented_on_their_app_only(service, tmp_path):
    """What ``serve`` attaches (the registry's and drift's routes) is in that app's OpenAPI document and
    url map, and in no other app's: the document is the app's, not a module global."""
    from detector import drift, registry
    from detector.api import add_routes
    from detector.store import LocalStore

    detector = service[0]
    config = detector.config
    store = LocalStore(config.state_dir, config.model_key_file)
    monitor = drift.DriftMonitor(config)
    app = create_app(detector, build_registry(detector))
    add_routes(app, registry.blueprint(registry.ChampionWatcher(registry.Registry(config), store,
                                                                registry.RegistryHealth())), registry.OPENAPI_PATHS)
    add_routes(app, drift.blueprint(monitor), drift.OPENAPI_PATHS)
    plain = create_app(detector, build_registry(detector)).test_client().get("/api/v1/openapi.json").get_json()
    document = app.test_client().get("/api/v1/openapi.json").get_json()

    def routes(flask_app) -> set[str]:
        return {rule.rule.replace("<", "{").replace(">", "}") for rule in flask_app.url_map.iter_rules()
                if rule.endpoint not in ("static", "index")}

    attached = {"/api/v1/models/reload", "/reports/drift/{query}/{model}", "/api/v1/drift", "/api/v1/drift/check"}
    assert set(document["paths"]) == routes(app) == set(plain["paths"]) | attached
    assert not attached & set(plain["paths"])
    assert app.test_client().post("/api/v1/drift/check").status_code == 503  # the monitor is not started
    assert app.test_client().post("/api/v1/models/reload").get_json()["error"] == "not started"


def test_the_registry_and_drift_families_on_metrics_follow_the_state_behind_them(service):
    from detector import drift, registry

    detector = service[0]
    health, monitor = registry.RegistryHealth(), drift.DriftMonitor(detector.config)
    client = create_app(detector, build_registry(detector, [lambda: registry.registry_families(health),
                                                            lambda: drift.drift_families(monitor)])).test_client()

    def samples() -> dict[tuple[str, frozenset], float]:
        text = client.get("/metrics").get_data(as_text=True)
        return {(s.name, frozenset(s.labels.items())): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    before = samples()
    assert before[("boxwatch_detector_registry_up", frozenset())] == 0.0
    assert before[("boxwatch_detector_registry_errors_total", frozenset())] == 0.0
    assert not [name for name, _ in before if name.startswith("boxwatch_drift_")]
    health.failed("register fit", OSError("connection refused"))
    assert samples()[("boxwatch_detector_registry_errors_total", frozenset())] == 1.0
    health.ok()
    monitor.results["temp"] = drift.DriftResult("temp", "robust", {"value": 0.001, "delta": 0.4},
                                                {"value": True, "delta": False}, None, NOW)
    after = samples()
    labels = {"query": "temp", "model": "robust"}
    assert after[("boxwatch_detector_registry_up", frozenset())] == 1.0
    assert after[("boxwatch_drift_detected", frozenset(labels.items()))] == 1.0
    assert after[("boxwatch_drift_score", frozenset({**labels, "feature": "value"}.items()))] == 0.001
    assert after[("boxwatch_drift_last_check_timestamp_seconds", frozenset(labels.items()))] == NOW
