"""Cause hints, through the running detector against a real Prometheus (top features as series: test_service)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests

from detector.causes import CauseFinder, checks
from detector.config import CausesConfig, ReaderConfig
from detector.writer import ScoredPoint
from tests.detector.conftest import detector_config, wave
from tests.harness import free_port

STEP = 5
GPU = (("gpu", "0"), ("uuid", "GPU-aaaa"), ("name", "Test GPU"))
OTHER_GPU = (("gpu", "1"), ("uuid", "GPU-bbbb"), ("name", "Test GPU"))


def _flat(start: float, end: float, value: float) -> list[tuple[float, float]]:
    return [(float(t), value) for t in np.arange(start, end + 1e-9, STEP)]


def incident_history(now: float) -> dict:
    """GPU 0 overheats in the last two minutes, after an Xid 79 on its bus ten minutes ago and with
    thermal throttling on; GPU 1 had an Xid 13 and an idle throttle, neither related to GPU 0."""
    start = now - 7200
    temp = [(t, v + (35.0 if t > now - 120 else 0.0)) for t, v in wave(start, now, STEP, base=60, seed=1)]
    series = {
        ("cause_temp", GPU): temp,
        ("cause_temp", OTHER_GPU): wave(start, now, STEP, base=55, seed=2),
        ("boxwatch_gpu_info", (*GPU, ("pci_bus_id", "00000000:01:00.0"))): _flat(start, now, 1.0),
        ("boxwatch_gpu_info", (*OTHER_GPU, ("pci_bus_id", "00000000:02:00.0"))): _flat(start, now, 1.0),
        # the journald exporter creates an Xid counter at its first event, with value 1
        ("boxwatch_gpu_xid_errors_total", (("pci_bus_id", "00000000:01:00.0"), ("xid", "79"))):
            _flat(now - 600, now, 1.0),
        ("boxwatch_gpu_xid_errors_total", (("pci_bus_id", "00000000:02:00.0"), ("xid", "13"))):
            _flat(now - 900, now, 1.0),
        ("boxwatch_gpu_throttle_active", (*GPU, ("reason", "hw_thermal_slowdown"))):
            [(t, 1.0 if t > now - 150 else 0.0) for t, _ in _flat(start, now, 0)],
        ("boxwatch_gpu_throttle_active", (*GPU, ("reason", "gpu_idle"))): _flat(start, now, 1.0),
        ("boxwatch_gpu_throttle_active", (*OTHER_GPU, ("reason", "sw_power_cap"))): _flat(start, now, 1.0),
    }
    return series


@pytest.mark.slow
def test_an_overheating_gpu_is_published_with_its_xid_and_throttle_as_causes(
        history_prometheus, start_detector, tmp_path):
    now = time.time()
    prom = history_prometheus(incident_history(now), types={"boxwatch_gpu_xid_errors_total": "counter"})
    query = {"expr": "cause_temp", "step": f"{STEP}s", "fit_window": "1h", "fit_every": "1h", "infer_every": "1s",
             "model": "robust", "direction": "above"}
    detector = start_detector(detector_config(prom.url, tmp_path / "state", {"gpu_temperature": query}))

    def causes(gpu: str) -> dict[str, str]:
        return {s.labels["rank"]: s.labels["cause"] for s in detector.samples("boxwatch_anomaly_cause")
                if s.labels["gpu"] == gpu}
    detector.wait_for(lambda: len(causes("0")) >= 2, timeout=60, what="causes of GPU 0 published")
    assert causes("0") == {"1": "Xid 79 gpu_fallen_off_bus", "2": "throttle hw_thermal_slowdown"}
    sample = next(s for s in detector.samples("boxwatch_anomaly_cause") if s.labels["rank"] == "1")
    assert sample.value == 1.0
    assert set(sample.labels) == {"gpu", "uuid", "name", "query", "model", "rank", "cause"}
    assert causes("1") == {}  # not anomalous: nothing looked up, nothing exported
    assert detector.sample("boxwatch_detector_cause_query_errors_total") == [0.0]
    assert detector.sample("boxwatch_detector_cause_lookups_total")[0] >= 1

    anomalies = requests.get(f"{detector.url}/api/v1/anomalies", timeout=5).json()["data"]
    hot = [a for a in anomalies if a["labels"]["gpu"] == "0" and a["causes"]]
    assert hot, anomalies
    xid = hot[-1]["causes"][0]
    assert xid["kind"] == "xid" and "fallen off the bus" in xid["detail"] and "00000000:01:00.0" in xid["detail"]
    assert all(not a["causes"] for a in anomalies if a["labels"]["gpu"] == "1")


def test_a_failing_cause_query_is_counted_and_never_raises():
    dead = f"http://127.0.0.1:{free_port()}"
    settings = (CausesConfig(refresh=0.001, timeout=1.0), ReaderConfig(url=dead, timeout=1.0), 1.0)
    finder = CauseFinder(lambda: settings)
    labels = (("gpu", "0"), ("model", "robust"), ("query", "t"))
    finder.observe([ScoredPoint(labels, time.time(), 90.0, 60.0, 55.0, 65.0, 6.0)])
    assert finder.refresh() == 1
    assert finder.current() == [] and finder.query_errors == len(checks({"gpu": "0"}, "600s"))
    finder.observe([ScoredPoint(labels, time.time() + 5, 60.0, 60.0, 55.0, 65.0, 0.0)])
    assert finder.refresh() == 0  # the run ended: nothing left to look up


def test_a_run_ends_at_its_series_first_normal_point_whichever_model_scores_it():
    """A refit can swap the model (another ``model`` label, another labels tuple) in the middle of a run: the
    next normal point of the series still ends it, and other series' normal points leave it open."""
    dead = f"http://127.0.0.1:{free_port()}"
    settings = (CausesConfig(refresh=0.001, timeout=0.2), ReaderConfig(url=dead, timeout=0.2), 1.0)
    finder = CauseFinder(lambda: settings)
    now = time.time()
    stand_in = (("gpu", "0"), ("model", "robust"), ("query", "t"))
    fitted = tuple(sorted({**dict(stand_in), "model": "seasonal"}.items()))
    calm = [ScoredPoint((("gpu", str(i)), ("model", "seasonal"), ("query", "t")), now, 60.0, 60.0, 55.0, 65.0, 0.1)
            for i in range(1, 50)]
    finder.observe([*calm, ScoredPoint(stand_in, now, 90.0, 60.0, 55.0, 65.0, 6.0)])
    finder.observe(calm)  # another cycle: the run's series has no normal point yet
    assert finder.refresh() == 1
    finder.observe([*calm, ScoredPoint(fitted, now + 60, 61.0, 60.0, 55.0, 65.0, 0.2)])
    assert finder.refresh() == 0  # ended by the fitted model's normal point
    finder.observe([ScoredPoint(fitted, now + 120, 95.0, 60.0, 55.0, 65.0, 4.0)])
    assert finder.refresh() == 1  # the next incident is a new run
    finder.observe([ScoredPoint(fitted, now + 180, 60.0, 60.0, 55.0, 65.0, 0.0), *calm])
    assert finder.refresh() == 0


def test_the_run_of_a_series_that_vanished_is_closed_after_the_longest_lookback():
    """A series gone in the middle of a run (a removed container) never scores a normal point: once no point of it
    has been above the threshold for ``max_lookback``, its run ends and its causes are no longer looked up."""
    dead = f"http://127.0.0.1:{free_port()}"
    settings = (CausesConfig(refresh=0.001, timeout=0.2, max_lookback=600),
                ReaderConfig(url=dead, timeout=0.2), 1.0)
    now = [1_767_225_600.0]
    finder = CauseFinder(lambda: settings, clock=lambda: now[0])
    gone = (("container", "llm"), ("model", "robust"), ("query", "t"))
    calm = [ScoredPoint((("container", "db"), ("model", "robust"), ("query", "t")), now[0], 1.0, 1.0, 0.0, 2.0, 0.1)]
    finder.observe([ScoredPoint(gone, now[0], 90.0, 10.0, 5.0, 15.0, 6.0), *calm])
    now[0] += 540
    finder.observe(calm)
    assert finder.refresh() == 1  # within the lookback: still an open incident
    now[0] += 120
    finder.observe(calm)
    assert finder.refresh() == 0
