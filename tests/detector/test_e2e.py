"""End to end: a week of history with an incident in progress, the detector, and Prometheus scraping it.

Prometheus holds a week of 1-minute history (written by promtool) of two GPUs' temperature;
GPU 1 has been 20 °C too hot for the last 25 minutes. The detector starts cold: it scores
the recent window at once (robust stand-ins started from the history before it), pushes
those scores with remote write, serves the latest on /metrics for Prometheus to scrape,
and fits its models. Everything is asserted through PromQL.
"""

from __future__ import annotations

import time

import pytest

from tests.detector.conftest import detector_config, wave
from tests.harness import free_port

pytestmark = pytest.mark.slow

STEP = 60


@pytest.fixture
def incident_prometheus(history_prometheus):
    now = int(time.time()) // STEP * STEP
    start = now - 7 * 86400
    incident_start = now - 25 * STEP
    calm = wave(start, now, STEP, seed=21)
    hot = [(t, v + (20.0 if t >= incident_start else 0.0)) for t, v in wave(start, now, STEP, seed=22)]
    detector_port = free_port()
    prom = history_prometheus(
        {("boxwatch_gpu_temperature_celsius", (("gpu", "0"), ("name", "Test GPU"), ("uuid", "GPU-0"))): calm,
         ("boxwatch_gpu_temperature_celsius", (("gpu", "1"), ("name", "Test GPU"), ("uuid", "GPU-1"))): hot},
        extra_args=["--web.enable-remote-write-receiver"],
        config={
            "global": {"scrape_interval": "1s"},
            "storage": {"tsdb": {"out_of_order_time_window": "1d"}},
            "scrape_configs": [{"job_name": "boxwatch-detector", "honor_labels": True,
                                "static_configs": [{"targets": [f"127.0.0.1:{detector_port}"]}]}],
        })
    return prom, detector_port, incident_start


@pytest.mark.parametrize("model", ["robust", "seasonal"])
def test_scores_above_one_during_the_incident_and_not_before(incident_prometheus, start_detector, tmp_path, model):
    prom, port, incident_start = incident_prometheus
    config = detector_config(prom.url, tmp_path / "state", {
        "gpu_temperature": {"expr": "boxwatch_gpu_temperature_celsius", "step": "1m", "fit_window": "7d",
                            "fit_every": "1h", "direction": "above", "min_deviation": 5, "model": model}},
        writer={"remote_write": {"url": f"{prom.url}/api/v1/write"}})
    config["reader"]["catch_up_max"] = "3h"
    detector = start_detector(config, port=port)

    # Scraped: the latest score of the hot GPU, with the source labels plus query and model.
    scraped = prom.wait_for(f'boxwatch_anomaly_score{{job="boxwatch-detector", gpu="1", model="{model}"}} > 1',
                            timeout=90)
    assert scraped[0]["metric"]["query"] == "gpu_temperature" and scraped[0]["metric"]["uuid"] == "GPU-1"
    prom.wait_for(f'boxwatch_anomaly_score{{job="boxwatch-detector", gpu="0", model="{model}"}} <= 1', timeout=10)
    assert prom.query('boxwatch_detector_models_ready{job="boxwatch-detector"}')

    # Remote-written: the start-up scores of the last three hours, on the data's own timestamps.
    now = int(time.time()) // STEP * STEP
    history = prom.query_range('boxwatch_anomaly_score{job="", gpu="1"}', now - 3 * 3600 + STEP, now, STEP)
    assert history, "the start-up scores did not arrive by remote write"
    values = {float(ts): float(v) for ts, v in history[0]["values"]}
    during = [v for ts, v in values.items() if ts >= incident_start]
    before = [v for ts, v in values.items() if ts < incident_start]
    assert len(before) > 60 and len(during) >= 20
    assert min(during) > 1, during
    assert max(before) <= 1, before
    calm = prom.query_range('boxwatch_anomaly_score{job="", gpu="0"}', now - 3 * 3600 + STEP, now, STEP)
    assert max(float(v) for _, v in calm[0]["values"]) <= 1

    # The same conclusion as an alert expression over the scraped series.
    firing = prom.query(f'max by (gpu) (boxwatch_anomaly_score{{job="boxwatch-detector", model="{model}"}}) > 1')
    assert [r["metric"]["gpu"] for r in firing] == ["1"]
    assert detector.sample("boxwatch_detector_remote_write_errors_total") == [0.0]


def test_the_shipped_example_config_scores_exporter_metrics(history_prometheus, start_detector, tmp_path):
    """The example configuration, as boxwatch-stack runs it, against exporter-shaped history."""
    from tests.harness import REPO

    now = int(time.time()) // STEP * STEP
    start = now - 86400
    gpu = (("gpu", "0"), ("name", "Test GPU"), ("uuid", "GPU-0"))
    container = (("compose_service", "web"), ("image", "web:1"), ("name", "web-1"))
    counter = [(t, 1000.0 + 0.5 * (t - start) + v) for t, v in wave(start, now, STEP, base=0, amplitude=1,
                                                                       noise=0.1, seed=5)]
    series = {
        ("boxwatch_gpu_temperature_celsius", gpu): wave(start, now, STEP, base=60, seed=1),
        ("boxwatch_gpu_power_watts", gpu): wave(start, now, STEP, base=200, amplitude=40, noise=5, seed=2),
        ("boxwatch_gpu_utilization_ratio", gpu): [(t, min(1.0, max(0.0, v))) for t, v in
                                                  wave(start, now, STEP, base=0.5, amplitude=0.3, noise=0.05,
                                                       seed=3)],
        ("boxwatch_gpu_sm_clock_hertz", gpu): wave(start, now, STEP, base=1.5e9, amplitude=2e8, noise=1e7, seed=4),
        ("boxwatch_gpu_memory_used_bytes", gpu): wave(start, now, STEP, base=8e9, amplitude=1e9, noise=1e8, seed=6),
        ("boxwatch_container_cpu_seconds_total", container): counter,
        ("boxwatch_container_memory_usage_bytes", container): wave(start, now, STEP, base=3e8, amplitude=5e7,
                                                                   noise=1e6, seed=7),
        ("boxwatch_journal_entries_total", (("priority", "err"), ("unit", "docker.service"))):
            [(t, 10.0 + 0.01 * (t - start)) for t, _ in counter],
    }
    prom = history_prometheus(series, types={"boxwatch_container_cpu_seconds_total": "counter",
                                             "boxwatch_journal_entries_total": "counter"})
    example = (REPO / "detector" / "boxwatch-detector.example.yml").read_text()
    config = __import__("yaml").safe_load(example)
    config["reader"]["url"] = prom.url
    config["state_dir"] = str(tmp_path / "state")
    detector = start_detector(config)
    expected = {"gpu_temperature", "gpu_health", "gpu_power", "gpu_memory_used", "container_cpu",
                "container_memory", "journal_errors"}
    detector.wait_for(lambda: expected <= {s.labels["query"] for s in detector.samples("boxwatch_anomaly_score")},
                      timeout=60, what="scores for every query with data")
    detector.wait_for(lambda: detector.sample("boxwatch_detector_models_ready") == [1.0], timeout=120,
                      what="every query fitted")
    models = {s.labels["query"]: s.labels["model"] for s in detector.samples("boxwatch_model_info")}
    assert models["gpu_temperature"] == "seasonal" and models["gpu_health"] == "iforest"
    health = [s for s in detector.samples("boxwatch_anomaly_score") if s.labels["query"] == "gpu_health"]
    assert {k: v for k, v in health[0].labels.items() if k not in ("query", "model")} == dict(gpu)
