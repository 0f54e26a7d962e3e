"""The HTTP API of a running detector: health, models, anomalies, ad-hoc scoring, OpenAPI, /metrics lint."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime

import numpy as np
import pytest
import requests

from tests.detector.conftest import detector_config, wave
from tests.harness import require_binary

pytestmark = pytest.mark.slow  # a detector process (and Prometheus) per module or test

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
    config = detector_config(prom.url, workdir / "state", queries, reader={"url": prom.url, "catch_up_max": "5m"})
    config["api"] = {"max_body_bytes": 4 * 1024 * 1024}
    detector = DetectorProcess(workdir / "detector", config)
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



def test_an_ad_hoc_forest_is_fitted_in_a_child_and_serving_still_does_not_load_scikit_learn(running):
    from pathlib import Path

    rng = np.random.default_rng(3)
    stamps = list(range(0, 30000, 60))
    history = {"temp": list(60 + rng.normal(0, 1, 500)), "power": list(200 + rng.normal(0, 5, 500))}
    body = {"model": "iforest", "history": {"timestamps": stamps, "values": history},
            "points": {"timestamps": [30000, 30060], "values": {"temp": [60.0, 95.0], "power": [200.0, 201.0]}}}
    response = requests.post(f"{running.url}/api/v1/score", json=body, timeout=60)
    assert response.status_code == 200, response.text
    normal, hot = response.json()["data"]["scores"]
    assert normal["score"] < 1 < hot["score"] and hot["top_features"][0] == "temp"
    maps = Path(f"/proc/{running.proc.pid}/maps").read_text()
    assert not {"sklearn", "scipy", "statsmodels"} & {part for line in maps.splitlines() for part in line.split("/")}
    short = {**body, "history": {"timestamps": stamps[:3], "values": {k: v[:3] for k, v in history.items()}}}
    answer = requests.post(f"{running.url}/api/v1/score", json=short, timeout=60)
    assert answer.status_code == 200 and answer.json()["data"]["scores"][0]["score"] is None  # too short: NaN

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
    score_body = document["components"]["schemas"]["ScoreRequest"]
    assert score_body["additionalProperties"] is False and set(score_body["required"]) == {"history", "points"}
    assert document["components"]["schemas"]["SeasonalParams"]["properties"]["phase_bins"]["maximum"] == 1440
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


# --------------------------------------------------------------------------- hardening (issue 11 0b, 6)


def strict_json(response: requests.Response):
    """The body parsed as strict JSON: a bare NaN or Infinity fails."""
    import json

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant} in {response.request.method} "
                             f"{response.request.url}")

    return json.loads(response.text, parse_constant=refuse)


def test_fuzzing_every_operation_from_the_openapi_document_gives_no_5xx_and_json_errors(running):
    """Schema-valid and schema-violating requests generated from the served OpenAPI document."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(f"{running.url}/api/v1/openapi.json")
    failures, calls = [], [0]
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/-/reload":
            continue  # covered by the reload tests; reloading while fuzzing would only repeat them
        for mode in schemathesis.GenerationMode:
            examples = 150 if operation.path == "/api/v1/score" else 15

            @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), print_blob=False)
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case):
                response = case.call(base_url=running.url, timeout=60)
                calls[0] += 1
                kind = response.headers.get("content-type") or response.headers.get("Content-Type") or [""]
                kind = kind[0] if isinstance(kind, list) else kind
                if response.status_code >= 500 and response.status_code != 503:
                    failures.append(f"{response.status_code} {case.method} {case.path} {case.body!r:.300}")
                if response.status_code >= 400 and kind.startswith("application/json"):
                    body = strict_json(response)
                    if body.get("status") != "error" or not body.get("error"):
                        failures.append(f"not a JSON error: {case.method} {case.path}: {response.text:.200}")
                elif response.status_code >= 400:
                    failures.append(f"{response.status_code} without JSON: {case.method} {case.path}: "
                                    f"{case.as_curl_command()} -> {response.text:.200}")
                elif "json" in kind:
                    strict_json(response)

            try:
                check()
            except Unsatisfiable:
                assert mode is schemathesis.GenerationMode.NEGATIVE  # nothing to break in a parameterless GET
    assert calls[0] > 300
    assert not failures, "\n".join(failures[:20])


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_parsed(running):
    huge = b"[" + b"1," * (3 * 1024 * 1024) + b"1]"
    response = requests.post(f"{running.url}/api/v1/score", data=huge, timeout=30,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "api.max_body_bytes" in response.json()["error"]

    def chunks():  # no Content-Length: refused before anything is read (411), never parsed
        for _ in range(5):
            yield b" " * (1024 * 1024)

    response = requests.post(f"{running.url}/api/v1/score", data=chunks(), timeout=30,
                             headers={"Content-Type": "application/json"})
    assert response.status_code in (411, 413) and response.json()["status"] == "error"


@pytest.mark.parametrize("body, message", [
    ({**GOOD, "model": ["robust"]}, "model: unknown model ['robust']"),
    ({**GOOD, "model": "seasonal", "params": {"phase_bins": 1e9}}, "params.phase_bins: Input should be a valid integer"),
    ({**GOOD, "model": "seasonal", "params": {"phase_bins": 1000}}, "params.phase_bins: at most 288"),
    ({**GOOD, "params": {"k": -3, "window": "abc"}}, "params.window: Input should be a valid integer"),
    ({**GOOD, "history": {"timestamps": list(range(10_001)), "values": [1.0] * 10_001}},
     "history.timestamps: at most 10000 points"),
    ({**GOOD, "points": {"timestamps": list(range(4, 105)), "values": [1.0] * 101}},
     "points.timestamps: at most 100 points"),
    ({**GOOD, "history": {"timestamps": [1, 2, 3, 1e9], "values": [1, 2, 3, 4]}}, "history.timestamps: too sparse"),
    ({**GOOD, "points": {"timestamps": [1e300], "values": [1]}}, "points.timestamps: Input should be less than"),
    ({**GOOD, "history": {"timestamps": [1, 2, 3], "values": [1e300, 1, 2]}}, "history.values: expected numbers"),
    ({**GOOD, "min_deviation": {"a": 1}}, "min_deviation:"),
])
def test_oversized_unhashable_and_overflowing_inputs_get_a_400(running, body, message):
    response = requests.post(f"{running.url}/api/v1/score", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_non_finite_numbers_in_and_out(running):
    text = '{"history": {"timestamps": [1, 2, 3], "values": [1, NaN, Infinity]}, ' \
           '"points": {"timestamps": [4], "values": [4]}}'
    response = requests.post(f"{running.url}/api/v1/score", data=text, timeout=10,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "history.values" in strict_json(response)["error"]
    huge = {"history": {"timestamps": list(range(0, 600, 60)), "values": [1e100, -1e100] * 5},
            "points": {"timestamps": [600, 660], "values": [1e100, -1e100]}, "params": {"min_points": 2}}
    response = requests.post(f"{running.url}/api/v1/score", json=huge, timeout=10)
    assert response.status_code == 200, response.text
    strict_json(response)  # overflowing arithmetic comes out as null, not Infinity


def test_host_header_outside_the_allowed_hosts_is_refused(running):
    """DNS rebinding: a page on evil.example that resolves to 127.0.0.1 must not read the API."""
    for host in ("evil.example", f"evil.example:{running.port}", "127.0.0.1.evil.example"):
        response = requests.get(f"{running.url}/api/v1/models", headers={"Host": host}, timeout=10)
        assert response.status_code == 403 and "api.allowed_hosts" in response.json()["error"]
    for host in (f"127.0.0.1:{running.port}", f"localhost:{running.port}", "localhost", "[::1]:9"):
        assert requests.get(f"{running.url}/healthz", headers={"Host": host}, timeout=10).status_code == 200


def test_excess_scoring_requests_get_429_while_metrics_stays_fast(running):
    from concurrent.futures import ThreadPoolExecutor

    stamps = list(range(0, 600_000, 60))
    heavy = {"model": "seasonal", "params": {"phase_bins": 288, "max_points_per_day": 1440},
             "history": {"timestamps": stamps, "values": [float(i % 1440) for i in range(len(stamps))]},
             "points": {"timestamps": [600_000 + 60 * i for i in range(100)], "values": [1.0] * 100}}
    with ThreadPoolExecutor(4) as pool:
        posts = [pool.submit(requests.post, f"{running.url}/api/v1/score", json=heavy, timeout=120)
                 for _ in range(3)]
        time.sleep(1.0)
        began = time.monotonic()
        assert get(running, "/metrics").status_code == 200
        assert get(running, "/healthz").status_code == 200
        served = time.monotonic() - began
        codes = sorted(f.result().status_code for f in posts)
    assert codes == [200, 200, 429], codes
    rejected = [f.result() for f in posts if f.result().status_code == 429][0]
    assert rejected.headers["Retry-After"] == "1" and "api.max_concurrent_scores" in rejected.json()["error"]
    assert served < 2.0, f"/metrics and /healthz took {served:.2f} s while two fits ran"


def test_mutations_can_be_switched_off_and_reload_applies_api_settings(running):
    import yaml

    original = running.config_path.read_text()
    config = yaml.safe_load(original)
    config["api"]["mutations"] = False
    running.config_path.write_text(yaml.safe_dump(config))
    try:
        assert requests.post(f"{running.url}/-/reload", timeout=10).status_code == 200
        response = requests.post(f"{running.url}/-/reload", timeout=10)
        assert response.status_code == 403 and "api.mutations" in response.json()["error"]
        score = requests.post(f"{running.url}/api/v1/score", json=GOOD, timeout=10)
        assert score.status_code == 200  # scoring changes nothing: still served
    finally:
        running.config_path.write_text(original)
        running.signal(signal.SIGHUP)
    running.wait_for(lambda: requests.post(f"{running.url}/-/reload", timeout=10).status_code == 200,
                     what="mutations allowed again after SIGHUP")
