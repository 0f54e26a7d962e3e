"""The MLflow registry against a real SQLite tracking store: train, gate, promote, roll back, hot reload.

One store and one Prometheus per module (MLflow logging is slow); the tests run in order and
build on each other's registry state, as an operator's session would.

The history has a variance regime change in the last two hours (inside the validation window):
the first ``train`` has no champion and wins; a second ``train`` of the same recipe, validated
out of sample (fitted on the quiet part only), flags much of the noisy part, while the
champion — whose robust window covers the noisy part — flags little: it stays a challenger.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from detector.config import CalibrationConfig, RegistryConfig
from detector.models import make_model
from detector.registry import Validation, gate, nab_score, validate_models
from tests.detector.conftest import DetectorProcess, detector_config, mlflow_server
from tests.harness import REPO, Prometheus, backfill, free_port, openmetrics

STEP = 60
NAME = "boxwatch.load.robust"
pytestmark = pytest.mark.timeout(300)


def regime_change(end: float, seed: int) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    stamps = np.arange(end - 12 * 3600, end + 1, STEP, dtype=float)
    noise = np.where(stamps >= end - 2 * 3600, 3.0, 0.3)
    values = 50.0 + rng.normal(0, 1, len(stamps)) * noise
    return [(float(t), round(float(v), 3)) for t, v in zip(stamps, values, strict=True)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A Prometheus with 12 h of two series, a config file and an empty MLflow state dir."""
    root = tmp_path_factory.mktemp("registry")
    end = float(int(time.time()) // STEP * STEP)
    series = {("bw_load", (("instance", name),)): regime_change(end, seed)
              for seed, name in enumerate(("a", "b"))}
    backfill(root / "data", openmetrics(series))
    prometheus = Prometheus(root / "prometheus", data_dir=root / "data")
    config = detector_config(prometheus.url, root / "state", {
        "load": {"expr": "bw_load", "step": "60s", "fit_window": "12h", "fit_every": "1d",
                 "params": {"window": 120, "k": 5.0}},
    }, registry={"enabled": True, "validation_fraction": 0.2, "promotion": {"metric": "anomaly_rate", "tolerance": 0.02},
                 "incidents": {"load": [[_iso(end - 1800), _iso(end - 1200)]]}})
    path = root / "detector.yml"
    path.write_text(yaml.safe_dump(config))
    yield {"root": root, "config": config, "path": path, "prometheus": prometheus}
    prometheus.stop()


def _iso(ts: float) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").isoformat()


def cli(store, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # Run from the temp dir: MLflow's defaults would leave ./mlruns or ./mlflow.db in the working directory.
    result = subprocess.run([sys.executable, "-m", "detector", *args, "--config", str(store["path"])],
                            capture_output=True, text=True, timeout=180, cwd=store["root"],
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr[-3000:]}")
    return result


def versions(store, via_cli: bool = False) -> dict[str, dict]:
    """Versions of NAME by number: from ``models --json``, or in-process (saves a 5 s subprocess)."""
    if via_cli:
        rows = json.loads(cli(store, "models", "--json").stdout)
    else:
        from detector.config import load_config
        from detector.registry import Registry

        rows = Registry(load_config(store["path"])).versions()
    return {row["version"]: row for row in rows if row["name"] == NAME}


def client(store):
    from detector.registry import import_mlflow

    mlflow = import_mlflow()
    uri = f"sqlite:///{store['root'] / 'state' / 'mlflow' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow, mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.mark.slow
def test_train_logs_a_run_and_registers_the_first_version_as_champion(store):
    result = cli(store, "train", "--json")
    decision = json.loads(result.stdout)["decisions"][0]
    assert decision["name"] == NAME and decision["version"] == "1" and decision["promoted"]
    assert "first version" in decision["reason"]
    rows = versions(store, via_cli=True)
    assert rows["1"]["aliases"] == ["champion"]
    assert not (store["root"] / "mlruns").exists() and not (store["root"] / "mlflow.db").exists()
    assert (store["root"] / "state" / "mlflow" / "artifacts").is_dir()

    mlflow, mlc = client(store)
    run = mlc.get_run(rows["1"]["run_id"])
    assert run.data.params["query"] == "load" and run.data.params["model"] == "robust"
    assert run.data.params["fit_window_seconds"] == str(12 * 3600.0)
    assert run.data.params["model.window"] == "120" and len(run.data.params["config_hash"]) == 16
    assert run.data.metrics["fit_seconds"] > 0 and run.data.metrics["validation_points"] > 100
    assert 0 <= run.data.metrics["validation_anomaly_rate"] <= 1
    assert run.data.tags["boxwatch.decision"] == "champion"
    assert -100 <= run.data.metrics["validation_nab_score"] <= 100  # an incident is labelled in the window

    # The logged model is a pyfunc: load it by alias and score a frame.
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    frame = pd.DataFrame({"timestamp": [time.time(), time.time() + 60], "value": [50.0, 500.0]})
    scored = model.predict(frame, params={"series": {"instance": "a"}})
    assert scored["score"].iloc[0] < 1 < scored["score"].iloc[1]


@pytest.mark.slow
def test_a_worse_version_stays_challenger_with_the_reason_tagged(store):
    decision = json.loads(cli(store, "train", "--json").stdout)["decisions"][0]
    assert decision["version"] == "2" and not decision["promoted"], decision
    assert "higher than champion v1" in decision["reason"]
    assert decision["metrics"]["validation_anomaly_rate"] > decision["metrics"]["champion_validation_anomaly_rate"] + 0.02
    rows = versions(store)
    assert rows["1"]["aliases"] == ["champion"] and rows["2"]["aliases"] == []
    assert rows["2"]["decision"] == "challenger" and rows["2"]["reason"] == decision["reason"]
    _, mlc = client(store)
    run = mlc.get_run(rows["2"]["run_id"])
    assert run.data.tags["boxwatch.reason"] == decision["reason"]
    assert run.data.tags["boxwatch.decision"] == "challenger"
    table = cli(store, "models").stdout
    assert "challenger" in table and "champion" in table and NAME in table


@pytest.mark.slow
def test_manual_promote_and_rollback(store):
    out = cli(store, "promote", NAME, "2").stdout
    assert "champion is now v2 (was v1)" in out
    rows = versions(store)
    assert rows["2"]["aliases"] == ["champion"] and rows["1"]["aliases"] == ["previous_champion"]
    assert rows["2"]["manual"]
    assert cli(store, "promote", NAME, "9", check=False).returncode == 2

    out = cli(store, "rollback", NAME).stdout
    assert "from v2 to v1" in out
    rows = versions(store)
    assert rows["1"]["aliases"] == ["champion"] and rows["2"]["decision"] == "rolled back"
    failed = cli(store, "rollback", NAME, check=False)
    assert failed.returncode == 2 and "no previous champion" in failed.stderr


@pytest.mark.slow
def test_a_hand_picked_champion_is_not_replaced_by_a_refit(store):
    decision = json.loads(cli(store, "train", "--json").stdout)["decisions"][0]
    assert not decision["promoted"] and "chosen by hand" in decision["reason"]
    assert versions(store)["1"]["aliases"] == ["champion"]


def _model_info(detector: DetectorProcess) -> dict[str, str]:
    return {s.labels["query"]: s.labels["version"] for s in detector.samples("boxwatch_model_info")}


@pytest.mark.slow
def test_serve_picks_up_an_alias_change_without_a_restart(store):
    detector = DetectorProcess(store["root"] / "serve", store["config"])
    try:
        detector.wait_for(lambda: detector.sample("boxwatch_detector_registry_up") == [1.0], 60, "registry checked")
        assert _model_info(detector) == {"load": "1"}
        cli(store, "promote", NAME, "3")
        before = time.time()
        response = requests.post(f"{detector.url}/api/v1/models/reload", timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["installed"] == [{"query": "load", "version": "3"}]
        # the champion installed is kept out of later garbage collections
        assert detector.sample("boxwatch_detector_memory_settled_timestamp_seconds")[0] >= before
        assert _model_info(detector) == {"load": "3"}
        cli(store, "rollback", NAME)
        requests.post(f"{detector.url}/api/v1/models/reload", timeout=60).raise_for_status()
        assert _model_info(detector) == {"load": "1"}
        models = requests.get(f"{detector.url}/api/v1/models", timeout=10).json()
        assert "1" in json.dumps(models)
    finally:
        detector.stop()


@pytest.mark.slow
def test_unreachable_registry_keeps_serving_and_reports_it(store):
    state = store["root"] / "offline-state"
    shutil.copytree(store["root"] / "state", state)
    config = json.loads(json.dumps(store["config"]))
    config["state_dir"] = str(state)
    config["registry"]["tracking_uri"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    detector = DetectorProcess(store["root"] / "offline", config)
    try:
        detector.wait_for(lambda: detector.sample("boxwatch_detector_registry_errors_total")[0] >= 1, 60,
                          "a failed registry request")
        assert detector.sample("boxwatch_detector_registry_up") == [0.0]
        assert _model_info(detector) == {"load": "1"}  # the local cache keeps serving
        detector.wait_for(lambda: len(detector.samples("boxwatch_anomaly_score")) == 2, 30, "scores")
        errors = detector.sample("boxwatch_detector_registry_errors_total")[0]
        response = requests.post(f"{detector.url}/api/v1/models/reload", timeout=60)
        assert response.status_code == 503 and response.json()["status"] == "error"
        assert detector.sample("boxwatch_detector_registry_errors_total")[0] == errors + 1
        assert detector.output().count("model registry is unreachable") == 1  # logged once per state change
    finally:
        detector.stop()


def _scores(values, start="2026-01-01") -> pd.Series:
    return pd.Series(values, index=pd.date_range(start, periods=len(values), freq="min", tz="UTC"), dtype=float)


def test_nab_score_rewards_an_early_detection_and_ignores_unlabelled_windows():
    values = np.zeros(200)
    values[150] = 5.0  # a clear detection at the start of the labelled window
    start = pd.Timestamp("2026-01-01T00:00:00Z").timestamp()
    window = [(start + 150 * 60, start + 170 * 60)]
    assert nab_score([_scores(values)], window) == pytest.approx(100.0, abs=1.0)
    assert nab_score([_scores(np.zeros(200))], window) == pytest.approx(0.0)
    assert nab_score([_scores(values)], [(start - 7200, start - 3600)]) is None


def test_gate_rules():
    settings = RegistryConfig(promotion={"metric": "anomaly_rate", "tolerance": 0.01})
    good, bad = Validation(points=100, anomalies=1), Validation(points=100, anomalies=5)
    assert gate(good, None, settings, None, False, False)[0]
    assert gate(good, bad, settings, "1", False, False)[0]
    promoted, reason = gate(bad, good, settings, "1", False, False)
    assert not promoted and "higher than champion v1's 0.0100" in reason
    assert not gate(good, bad, settings, "1", True, False)[0]  # a hand-picked champion stays
    assert gate(bad, good, settings, "1", False, True)[0]  # a champion of another configuration cannot serve
    nab = RegistryConfig(promotion={"metric": "nab_score", "tolerance": 1.0})
    low, high = Validation(points=100, nab_score=40.0), Validation(points=100, nab_score=60.0)
    assert gate(high, low, nab, "1", False, False)[0]
    assert not gate(low, high, nab, "1", False, False)[0]


def test_auto_validation_counts_calibrated_alerts():
    """A noisy series crosses its band often; calibrated, as the service publishes it, it alerts rarely."""
    idx = pd.date_range("2026-01-01", periods=8000, freq="min", tz="UTC")
    rng = np.random.default_rng(4)
    unit = pd.DataFrame({"value": 10 + rng.standard_t(2, 8000)}, index=idx)
    key = (("instance", "a"),)
    model = make_model("robust", {"window": 200, "k": 2.0}).fit(unit.iloc[:1000])
    split = idx[1000].timestamp()
    raw = validate_models({key: model}, {key: unit}, split, "both", 0.0)
    calibrated = validate_models({key: model}, {key: unit}, split, "both", 0.0, calibration=CalibrationConfig())
    assert raw.points == calibrated.points == 7000
    assert raw.anomaly_rate > 0.05 and calibrated.anomaly_rate < raw.anomaly_rate / 2


def test_auto_gate_does_not_reward_missing_incidents():
    auto = RegistryConfig(promotion={"tolerance": 0.0})
    assert auto.promotion.metric == "auto"
    silent, calibrated = Validation(points=1000, anomalies=0), Validation(points=1000, anomalies=30)
    flooding = Validation(points=1000, anomalies=300)
    # no incidents labelled: the alert rate closest to the calibration target wins, not the lowest
    promoted, reason = gate(calibrated, silent, auto, "1", False, False, target_rate=0.03)
    assert promoted and "calibration target 0.03" in reason
    assert not gate(silent, calibrated, auto, "1", False, False, target_rate=0.03)[0]
    assert not gate(flooding, calibrated, auto, "1", False, False, target_rate=0.03)[0]
    # incidents labelled in the window: their NAB score decides, whatever the rates
    catches = Validation(points=1000, anomalies=300, nab_score=70.0)
    misses = Validation(points=1000, anomalies=30, nab_score=10.0)
    assert gate(catches, misses, auto, "1", False, False, target_rate=0.03)[0]
    assert not gate(misses, catches, auto, "1", False, False, target_rate=0.03)[0]


@pytest.mark.slow
def test_train_against_a_real_mlflow_server(store, tmp_path):
    """``registry.tracking_uri`` pointing at ``mlflow server``: runs, versions and artifacts live on the server."""
    with mlflow_server(tmp_path / "mlflow") as (url, artifacts):
        config = json.loads(json.dumps(store["config"]))
        config["state_dir"] = str(tmp_path / "state")
        config["registry"]["tracking_uri"] = url
        path = tmp_path / "detector.yml"
        path.write_text(yaml.safe_dump(config))
        remote = {**store, "path": path}
        decision = json.loads(cli(remote, "train", "--json").stdout)["decisions"][0]
        assert decision["promoted"] and decision["version"] == "1"
        rows = json.loads(cli(remote, "models", "--json").stdout)
        assert [(r["name"], r["version"], r["aliases"]) for r in rows] == [(NAME, "1", ["champion"])]
        assert list(artifacts.rglob("bundle.pkl")), "the bundle is stored by the server"
        assert not (tmp_path / "state" / "mlflow").exists()  # nothing in the embedded store


def test_config_checks_incident_windows_and_the_nab_rule():
    from detector.config import ConfigError, validate

    base = {"schema_version": 1, "queries": {"load": {"expr": "up"}}}
    with pytest.raises(ConfigError) as err:
        validate({**base, "registry": {"incidents": {"nope": [["2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"]],
                                                     "load": [["2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z"]]},
                                       "promotion": {"metric": "nab_score"}}})
    problems = {(p.key, p.reason) for p in err.value.problems}
    assert ("registry.incidents.nope", "not a query alias of queries:") in problems
    assert ("registry.incidents.load.0", "bad window: the end must be after the start") in problems
    with pytest.raises(ConfigError, match="nab_score needs labelled incidents"):
        validate({**base, "registry": {"promotion": {"metric": "nab_score"}}})
    with pytest.raises(ConfigError, match="unknown drift method 'nope'"):
        validate({**base, "drift": {"method": "nope"}})
