"""The running service against a real Prometheus: scores, new and vanished series, outages, restarts,
reloads and shards. Every check goes through the detector's HTTP endpoints or its logs."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests
import yaml

from detector.scoring import shard_of
from tests.detector.conftest import detector_config, wave
from tests.harness import Process, wait_http

pytestmark = pytest.mark.slow  # a detector process (and Prometheus) per module or test

STEP = 5  # seconds: a fast grid so the service moves on within a test


def live_history(labels: list[tuple[tuple[str, str], ...]], metric: str = "svc_test_value", hours: float = 2,
                 end: float | None = None) -> dict:
    end = end or time.time()
    start = end - hours * 3600
    return {(metric, lab): wave(start, end, STEP, seed=i) for i, lab in enumerate(labels)}


def query(expr: str = "svc_test_value", **extra) -> dict:
    return {"expr": expr, "step": f"{STEP}s", "fit_window": "1h", "fit_every": "1h", "infer_every": "1s",
            **extra}


def scored_labels(detector, query_alias: str | None = None) -> set[tuple]:
    result = set()
    for sample in detector.samples("boxwatch_anomaly_score"):
        if query_alias is None or sample.labels.get("query") == query_alias:
            result.add(tuple(sorted(sample.labels.items())))
    return result


def gpus(detector) -> set[str]:
    return {s.labels["gpu"] for s in detector.samples("boxwatch_anomaly_score")}


def test_every_series_is_scored_with_its_labels_and_vanished_series_disappear(
        history_prometheus, start_detector, tmp_path):
    prom = history_prometheus(live_history([(("gpu", "0"),), (("gpu", "1"),), (("gpu", "2"),)]))
    detector = start_detector(detector_config(prom.url, tmp_path / "state", {"temp": query()}))
    detector.wait_for(lambda: gpus(detector) == {"0", "1", "2"}, what="three scored series")
    sample = detector.samples("boxwatch_anomaly_score")[0]
    assert set(sample.labels) == {"gpu", "query", "model"}
    assert sample.labels["query"] == "temp" and sample.labels["model"] == "robust"
    for name in ("boxwatch_anomaly_expected", "boxwatch_anomaly_expected_lower",
                 "boxwatch_anomaly_expected_upper"):
        assert {s.labels["gpu"] for s in detector.samples(name)} == {"0", "1", "2"}
    lower = detector.sample("boxwatch_anomaly_expected_lower", gpu="0")[0]
    upper = detector.sample("boxwatch_anomaly_expected_upper", gpu="0")[0]
    assert lower < 50 < upper  # the band sits around the series' level
    detector.wait_for(lambda: requests.get(f"{detector.url}/readyz", timeout=5).status_code == 200,
                      what="ready")
    assert detector.sample("boxwatch_detector_models_ready") == [1.0]
    assert detector.sample("boxwatch_detector_series_scored", query="temp", model="robust") == [3.0]
    assert detector.sample("boxwatch_detector_prometheus_up") == [1.0]
    assert detector.sample("boxwatch_detector_model_fit_duration_seconds", query="temp", model="robust")[0] > 0

    requests.post(f"{prom.url}/api/v1/admin/tsdb/delete_series",
                  params={"match[]": 'svc_test_value{gpu="1"}'}, timeout=10).raise_for_status()
    detector.wait_for(lambda: gpus(detector) == {"0", "2"}, what="the deleted series to disappear")
    assert detector.sample("boxwatch_detector_series_scored", query="temp", model="robust") == [2.0]


def test_prometheus_outage_shows_in_metrics_and_logs_and_the_service_recovers(
        history_prometheus, start_detector, tmp_path):
    prom = history_prometheus(live_history([(("gpu", "0"),)]))
    detector = start_detector(detector_config(prom.url, tmp_path / "state", {"temp": query()}))
    detector.wait_for(lambda: detector.sample("boxwatch_detector_prometheus_up") == [1.0], what="prometheus up")
    argv, log_path = prom.argv, prom.log_path
    prom.stop()
    detector.wait_for(lambda: detector.sample("boxwatch_detector_prometheus_up") == [0.0], what="prometheus down")
    detector.wait_for(lambda: detector.sample("boxwatch_detector_query_errors_total", query="temp")[0] >= 3,
                      what="errors counted")
    assert requests.get(f"{detector.url}/healthz", timeout=5).status_code == 200
    assert detector.output().count("prometheus is unreachable") == 1  # one line per state change
    outage_began = time.time()
    time.sleep(2 * STEP)

    restarted = Process(argv, log_path)
    try:
        wait_http(f"{prom.url}/-/ready", 30, restarted.proc)
        detector.wait_for(lambda: detector.sample("boxwatch_detector_prometheus_up") == [1.0],
                          what="prometheus back up")
        detector.wait_for(lambda: detector.sample("boxwatch_detector_last_success_timestamp_seconds")[0]
                          > outage_began, what="a successful cycle after the outage")
        assert "prometheus is reachable" in detector.output()
        caught_up = [json.loads(line.split("points=")[1].split()[0]) for line in detector.output().splitlines()
                     if "catching up" in line]
        assert caught_up and max(caught_up) >= 2  # the missed grid points were scored, not skipped
        assert gpus(detector) == {"0"}
    finally:
        restarted.stop()


def push(prom_url: str, series: dict) -> None:
    """Remote-write source samples into Prometheus: ``{labels: [(ts, value), ...]}``."""
    import cramjam

    from detector.writer import encode_write_request

    body = bytes(cramjam.snappy.compress_raw(encode_write_request(series.items())))
    response = requests.post(f"{prom_url}/api/v1/write", data=body, timeout=10, headers={
        "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
        "X-Prometheus-Remote-Write-Version": "0.1.0"})
    assert response.status_code < 300, response.text


def test_series_that_appears_after_the_fit_is_scored_at_once_by_the_robust_model(
        history_prometheus, start_detector, tmp_path):
    prom = history_prometheus(live_history([(("gpu", "0"),)]), extra_args=["--web.enable-remote-write-receiver"],
                              config={"global": {"scrape_interval": "15s"},
                                      "storage": {"tsdb": {"out_of_order_time_window": "1h"}}})
    detector = start_detector(detector_config(prom.url, tmp_path / "state", {"temp": query()}))
    detector.wait_for(lambda: requests.get(f"{detector.url}/readyz", timeout=5).status_code == 200, what="ready")
    before = requests.get(f"{detector.url}/api/v1/models", timeout=5).json()["data"][0]
    assert before["series"] == 1 and before["fallback_series"] == 0

    now = time.time()
    push(prom.url, {(("__name__", "svc_test_value"), ("gpu", "7")): wave(now - 900, now, STEP, seed=3)})
    detector.wait_for(lambda: "7" in gpus(detector), timeout=15, what="the new series scored")
    after = requests.get(f"{detector.url}/api/v1/models", timeout=5).json()["data"][0]
    assert after["fitted_at"] == before["fitted_at"]  # scored without waiting for a refit
    assert after["fallback_series"] == 1
    score = detector.sample("boxwatch_anomaly_score", gpu="7", model="robust")
    assert len(score) == 1 and score[0] < 1  # the robust model started from the series' own history


def test_restart_loads_persisted_models_and_scores_within_seconds(history_prometheus, start_detector, tmp_path):
    prom = history_prometheus(live_history([(("gpu", "0"),), (("gpu", "1"),)]))
    config = detector_config(prom.url, tmp_path / "state", {"temp": query()})
    first = start_detector(config, name="first")
    first.wait_for(lambda: requests.get(f"{first.url}/readyz", timeout=5).status_code == 200, what="ready")
    fitted = requests.get(f"{first.url}/api/v1/models", timeout=5).json()["data"][0]
    first.stop()
    index = json.loads((tmp_path / "state" / "models" / "index.json").read_text())
    assert index["temp"]["series"] == 2 and index["temp"]["fitted_at"] == fitted["fitted_at"]

    began = time.monotonic()
    second = start_detector(config, name="second")
    assert requests.get(f"{second.url}/readyz", timeout=5).status_code == 200  # ready as soon as it listens
    second.wait_for(lambda: gpus(second) == {"0", "1"}, timeout=10, what="scores after restart")
    assert time.monotonic() - began < 10
    assert "loaded persisted models" in second.output()
    assert "fitted models" not in second.output()  # nothing was refitted
    models = requests.get(f"{second.url}/api/v1/models", timeout=5).json()["data"][0]
    assert models["fitted_at"] == fitted["fitted_at"]

    # A changed model configuration makes the persisted bundle stale: it is refitted, not served.
    config["queries"]["temp"]["params"] = {"k": 7}
    second.stop()
    third = start_detector(config, name="third")
    third.wait_for(lambda: "fitted models" in third.output(), what="a refit for the new parameters")
    assert "loaded persisted models" not in third.output()


def test_two_shards_cover_every_series_exactly_once(history_prometheus, start_detector, tmp_path):
    labels = [(("gpu", str(i)),) for i in range(8)]
    prom = history_prometheus(live_history(labels, hours=1.5))
    config = detector_config(prom.url, tmp_path / "state", {"temp": query()})
    shards = [start_detector({**config, "state_dir": str(tmp_path / f"state-{i}")}, "--shard", f"{i}/2",
                             name=f"shard-{i}") for i in range(2)]
    expected = [{lab[0][1] for lab in labels if shard_of(lab, 2) == i} for i in range(2)]
    assert expected[0] and expected[1]  # the hash does split these eight series
    for shard, want in zip(shards, expected, strict=True):
        shard.wait_for(lambda s=shard, w=want: gpus(s) == w, what=f"shard scoring {want}")
        assert shard.sample("boxwatch_detector_shard", total="2") == [float(shards.index(shard))]
    assert gpus(shards[0]) | gpus(shards[1]) == {str(i) for i in range(8)}
    assert not gpus(shards[0]) & gpus(shards[1])


def test_reload_keeps_the_last_good_config_and_applies_a_good_one(history_prometheus, start_detector, tmp_path):
    prom = history_prometheus(live_history([(("gpu", "0"),)]))
    config = detector_config(prom.url, tmp_path / "state", {"temp": query()})
    detector = start_detector(config)
    detector.wait_for(lambda: gpus(detector) == {"0"}, what="scores")

    detector.config_path.write_text("schema_version: 1\nqueries:\n  temp: {expr: up, step: never}\n")
    detector.signal(signal.SIGHUP)
    detector.wait_for(lambda: detector.sample("boxwatch_detector_config_last_reload_successful") == [0.0],
                      what="failed reload reported")
    assert "configuration reload failed; keeping the last good configuration" in detector.output()
    assert "queries.temp.step" in detector.output()
    response = requests.post(f"{detector.url}/-/reload", timeout=10)
    assert response.status_code == 400
    assert any("queries.temp.step" in p for p in response.json()["problems"])
    detector.config_path.write_text("schema_version: 1\nqueries:\n  temp: {expr: up}\n"
                                    "  temp: {expr: up, fit_window: 100y, params: {k: -3}}\n")
    response = requests.post(f"{detector.url}/-/reload", timeout=10)
    assert response.status_code == 400
    problems = response.json()["problems"]
    for key in ("queries.temp: duplicate key", "queries.temp.fit_window: must be at most",
                "queries.temp.params.k: Input should be greater than 0"):
        assert any(key in p for p in problems), problems
    assert detector.sample("boxwatch_detector_config_last_reload_successful") == [0.0]
    served = {s.labels["query"] for s in detector.samples("boxwatch_anomaly_score")}
    assert served == {"temp"}  # still scoring with the last good configuration
    errors = detector.sample("boxwatch_detector_query_errors_total", query="temp")

    config["queries"]["temp_copy"] = query("svc_test_value * 2")
    detector.config_path.write_text(yaml.safe_dump(config))
    before = time.time()
    response = requests.post(f"{detector.url}/-/reload", timeout=10)
    assert response.status_code == 200, response.text
    assert detector.sample("boxwatch_detector_config_last_reload_successful") == [1.0]
    # what the reload loaded is kept out of later garbage collections
    assert detector.sample("boxwatch_detector_memory_settled_timestamp_seconds")[0] >= before
    assert detector.sample("boxwatch_detector_gc_frozen_objects")[0] > 10_000
    detector.wait_for(lambda: {s.labels["query"] for s in detector.samples("boxwatch_anomaly_score")}
                      == {"temp", "temp_copy"}, what="the added query scored")
    assert detector.sample("boxwatch_detector_query_errors_total", query="temp") == errors


def test_multivariate_query_scores_each_entity_and_names_the_features(history_prometheus, start_detector,
                                                                      tmp_path):
    now = time.time()
    series = {}
    for gpu in ("0", "1"):
        temp = wave(now - 7200, now, STEP, base=60, seed=int(gpu))
        if gpu == "1":
            temp = [(t, v + (30.0 if t > now - 60 else 0.0)) for t, v in temp]
        series[("mv_temp", (("gpu", gpu),))] = temp
        series[("mv_power", (("gpu", gpu),))] = wave(now - 7200, now, STEP, base=200, amplitude=20, noise=5,
                                                     seed=10 + int(gpu))
    prom = history_prometheus(series)
    config = detector_config(prom.url, tmp_path / "state", {"gpu": query(
        '{__name__=~"mv_temp|mv_power"}', model="iforest", group_by=["gpu"])})
    detector = start_detector(config)
    detector.wait_for(lambda: {(s.labels["gpu"], s.labels["model"]) for s in
                               detector.samples("boxwatch_anomaly_score")} == {("0", "iforest"), ("1", "iforest")},
                      timeout=60, what="both GPUs scored by the fitted forest")
    sample = detector.samples("boxwatch_anomaly_score")[0]
    assert set(sample.labels) == {"gpu", "query", "model"}  # the entity's labels, not each feature's
    assert detector.samples("boxwatch_anomaly_expected") == []  # a forest has no per-series band
    assert detector.sample("boxwatch_anomaly_score", gpu="1")[0] > 1 > detector.sample(
        "boxwatch_anomaly_score", gpu="0")[0]
    anomalies = requests.get(f"{detector.url}/api/v1/anomalies", timeout=5).json()["data"]
    forest = [a for a in anomalies if a["model"] == "iforest"]
    assert forest and {a["labels"]["gpu"] for a in forest} == {"1"}
    assert forest[-1]["top_features"][0] == "mv_temp"
    # ... and as ranked series, for dashboards and the alert's description
    def tops() -> dict[str, str]:
        return {s.labels["rank"]: s.labels["feature"] for s in detector.samples("boxwatch_anomaly_top_feature")
                if s.labels["gpu"] == "1"}
    detector.wait_for(lambda: "1" in tops(), what="GPU 1's top feature exported")
    assert tops()["1"] == "mv_temp" and set(tops()) <= {"1", "2", "3"}
    sample = next(s for s in detector.samples("boxwatch_anomaly_top_feature") if s.labels["gpu"] == "1")
    assert set(sample.labels) == {"gpu", "query", "model", "rank", "feature"} and sample.value == 1.0

    # A feature series of GPU 1 vanishes: its forest cannot score it any more. That is counted and
    # logged, and GPU 0 goes on being scored.
    requests.post(f"{prom.url}/api/v1/admin/tsdb/delete_series", params={"match[]": 'mv_power{gpu="1"}'},
                  timeout=10).raise_for_status()
    detector.wait_for(lambda: detector.sample("boxwatch_detector_scoring_errors_total", query="gpu")[0] >= 2,
                      what="scoring errors counted")
    assert gpus(detector) == {"0"}
    assert "scoring failed for a series" in detector.output()
    assert detector.proc.poll() is None


def test_raw_counter_query_is_scored_as_a_rate_across_a_reset(history_prometheus, start_detector, tmp_path):
    now = time.time()
    stamps = [now - 7200 + i * STEP for i in range(int(7200 / STEP) + 1)]
    reset = len(stamps) - 10  # the counter restarts 50 s ago, inside the range scored at start-up
    values = [0.5 * (t - stamps[0]) if i < reset else 0.5 * (t - stamps[reset - 1]) for i, t in enumerate(stamps)]
    prom = history_prometheus({("svc_bytes_total", (("gpu", "0"),)): list(zip(stamps, values, strict=True))},
                              types={"svc_bytes_total": "counter"})
    detector = start_detector(detector_config(prom.url, tmp_path / "state",
                                              {"bytes": query("svc_bytes_total", counter=True)}))
    detector.wait_for(lambda: detector.sample("boxwatch_anomaly_expected", gpu="0") != [], what="a scored rate")
    assert "catching up" in detector.output()
    assert abs(detector.sample("boxwatch_anomaly_expected", gpu="0")[0] - 0.5) < 1e-6
    assert detector.sample("boxwatch_anomaly_score", gpu="0") == [0.0]
    # Read as a plain value, the reset would be a drop of thousands: an anomaly. As a rate it is nothing.
    assert requests.get(f"{detector.url}/api/v1/anomalies", timeout=5).json()["data"] == []


def test_serving_without_the_registry_or_drift_does_not_load_pyarrow(history_prometheus, start_detector, tmp_path):
    """pandas would load pyarrow (about 60 MiB resident) though nothing on the serve path uses it."""
    pytest.importorskip("pyarrow")  # installed (MLflow needs it): the check below can fail
    prom = history_prometheus(live_history([(("gpu", "0"),)]))
    detector = start_detector(detector_config(prom.url, tmp_path / "state", {"temp": query()}))
    detector.wait_for(lambda: gpus(detector) == {"0"}, what="a scored series")
    maps = Path(f"/proc/{detector.proc.pid}/maps").read_text()
    assert "pandas" in maps and "libarrow" not in maps


def _fit_children(pid: int) -> list[int]:
    """The detector's fit processes now running."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == pid and b"boxwatch.child" in cmdline:
            found.append(int(stat.parent.name))
    return found


def mv_history(now: float) -> dict:
    return {(metric, (("gpu", gpu),)): wave(now - 7200, now, STEP, base=base, seed=seed + int(gpu))
            for gpu in ("0", "1") for metric, base, seed in (("mv_temp", 60, 0), ("mv_power", 200, 10))}


def test_seasonal_and_forest_fits_run_in_a_child_so_serving_never_loads_scipy_or_scikit_learn(
        history_prometheus, start_detector, tmp_path):
    """The fits import statsmodels and scikit-learn (about 95 MiB resident); the serving process scores
    their models with numpy only. The fit process' peak memory is exported."""
    now = time.time()
    prom = history_prometheus({**live_history([(("gpu", "0"),)], end=now), **mv_history(now)})
    detector = start_detector(detector_config(prom.url, tmp_path / "state", {
        "temp": query(model="seasonal"),
        "gpu": query('{__name__=~"mv_temp|mv_power"}', model="iforest", group_by=["gpu"])}))
    detector.wait_for(lambda: {s.labels["model"] for s in detector.samples("boxwatch_anomaly_score")}
                      == {"seasonal", "iforest"}, timeout=90, what="both queries scored by their fitted models")
    for query_alias, model in (("temp", "seasonal"), ("gpu", "iforest")):
        peak = detector.sample("boxwatch_detector_fit_process_peak_memory_bytes", query=query_alias, model=model)
        assert peak and peak[0] > 50 * 2**20
    maps = Path(f"/proc/{detector.proc.pid}/maps").read_text()
    assert "numpy" in maps
    assert not {"sklearn", "scipy", "statsmodels"} & {part for line in maps.splitlines() for part in line.split("/")}
    assert _fit_children(detector.proc.pid) == []


def test_a_killed_fit_process_is_a_reported_fit_failure_and_the_robust_model_scores_on(
        history_prometheus, start_detector, tmp_path):
    now = time.time()
    prom = history_prometheus(mv_history(now))
    detector = start_detector(detector_config(prom.url, tmp_path / "state", {
        "gpu": query('{__name__=~"mv_temp|mv_power"}', model="iforest", group_by=["gpu"])}))
    deadline = time.monotonic() + 60
    while not (children := _fit_children(detector.proc.pid)):
        assert time.monotonic() < deadline, "no fit process started"
        time.sleep(0.02)
    os.kill(children[0], signal.SIGKILL)

    def fit_error() -> str | None:
        return requests.get(f"{detector.url}/api/v1/models", timeout=5).json()["data"][0]["fit_error"]

    detector.wait_for(lambda: fit_error() is not None, what="the fit failure reported")
    assert "SIGKILL" in fit_error()
    assert "fit failed; retrying later" in detector.output()
    assert detector.sample("boxwatch_detector_models_ready") == [0.0]
    assert gpus(detector) == {"0", "1"}  # the stand-in still scores every entity
    assert not Path(f"/proc/{children[0]}").exists()  # reaped: not even a zombie
    assert detector.proc.poll() is None
