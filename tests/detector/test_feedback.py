"""Feedback: Alertmanager silences and posted marks keep known events out of training and out of the
anomaly counts; false positives are counted per query and model."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import numpy as np
import pytest
import requests

from detector.config import validate
from detector.service import Detector
from tests.detector.conftest import detector_config, wave

STEP = 60
STRESS = 500.0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.slow
def test_a_silence_in_a_real_alertmanager_keeps_its_window_out_of_the_next_fit(
        history_prometheus, start_alertmanager, tmp_path):
    # Alertmanager starts a silence now at the earliest, so the history reaches past now: GPU 0 runs
    # a stress test from now+10m to now+20m, under a silence from now to now+30m; the fit is at now+1h.
    now = time.time()
    fit_at = now + 3600
    stamps = np.arange(now - 7200, fit_at + 1e-9, STEP)
    stress = (stamps >= now + 600) & (stamps <= now + 1200)
    series = {("fb_power", (("gpu", gpu),)): [(float(t), STRESS if hot and gpu == "0" else 100.0 + (i % 7))
                                              for i, (t, hot) in enumerate(zip(stamps, stress, strict=True))]
              for gpu in ("0", "1")}
    prom = history_prometheus(series)
    am = start_alertmanager({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]})
    silence = {"matchers": [{"name": "alertname", "value": "AnomalyScoreHigh", "isRegex": False, "isEqual": True},
                            {"name": "gpu", "value": "0", "isRegex": False, "isEqual": True}],
               "startsAt": _iso(now), "endsAt": _iso(now + 1800), "createdBy": "ops", "comment": "burn-in of gpu 0"}
    created = requests.post(f"{am.url}/api/v2/silences", json=silence, timeout=10)
    assert created.status_code == 200, created.text

    config = validate(detector_config(prom.url, tmp_path / "state", {"power": {
        "expr": "fb_power", "step": f"{STEP}s", "fit_window": "3h", "fit_every": "1h", "model": "robust",
        "params": {"window": 1000}}}, alertmanager={"url": am.url}))
    detector = Detector(config)
    assert detector.feedback.read_silences()
    bundle = detector.fit_query("power", now=fit_at)
    fitted = {dict(key)["gpu"]: model for key, model in bundle.models.items()}
    # GPU 0's training data lost the silenced half hour (the stress test with it); GPU 1's did not.
    assert STRESS not in fitted["0"].window_ and max(fitted["0"].window_) < 110
    excluded = detector.feedback.summary()["excluded_from_training"]["power"]
    assert 29 <= excluded["points"] <= 31  # half an hour of minutes, give or take the grid's alignment
    assert len(fitted["1"].window_) - len(fitted["0"].window_) == excluded["points"]
    [window] = excluded["windows"]
    assert window["source"] == "alertmanager" and abs(window["end"] - (now + 1800)) < 1

    # Without the silence the same fit learns the stress test.
    requests.delete(f"{am.url}/api/v2/silence/{created.json()['silenceID']}", timeout=10).raise_for_status()
    assert detector.feedback.read_silences()  # the expired silence still counts: it ended now, not at +30m
    detector.config = validate(detector_config(prom.url, tmp_path / "state", {"power": {
        "expr": "fb_power", "step": f"{STEP}s", "fit_window": "3h", "fit_every": "1h", "model": "robust",
        "params": {"window": 1000}}}))
    detector.feedback._silences = []  # noqa: SLF001 - as a detector without alertmanager.url sees it
    bundle = detector.fit_query("power", now=fit_at)
    assert STRESS in {dict(k)["gpu"]: m for k, m in bundle.models.items()}["0"].window_


@pytest.mark.slow
def test_posted_marks_are_persisted_counted_and_keep_expected_points_out_of_anomalies(
        history_prometheus, start_detector, tmp_path):
    now = time.time()
    step = 5
    spiky = [(t, v + (40.0 if t > now - 60 else 0.0)) for t, v in wave(now - 7200, now, step, seed=2)]
    prom = history_prometheus({("fb_temp", (("gpu", "0"),)): spiky, ("fb_temp", (("gpu", "1"),)): spiky})
    start, end = _iso(now - 3600), _iso(now + 3600)
    config = detector_config(prom.url, tmp_path / "state", {"temp": {
        "expr": "fb_temp", "step": f"{step}s", "fit_window": "1h", "fit_every": "1h", "infer_every": "1s",
        "direction": "above"}}, maintenance=[{"matchers": ['gpu="1"'], "start": _iso(now - 120), "end": end,
                                             "comment": "gpu 1 is being re-pasted"}])
    detector = start_detector(config)
    url = f"{detector.url}/api/v1/feedback"

    def anomalies():
        return requests.get(f"{detector.url}/api/v1/anomalies", timeout=5).json()["data"]
    detector.wait_for(lambda: anomalies(), timeout=60, what="anomalies of gpu 0")
    # gpu 1 spikes the same way, but inside its maintenance window: scored, not counted
    assert {a["labels"]["gpu"] for a in anomalies()} == {"0"}
    detector.wait_for(lambda: detector.sample("boxwatch_anomaly_score", gpu="1") > [1.0], what="gpu 1 scored")
    assert {a["labels"]["gpu"] for a in anomalies()} == {"0"}

    mark = {"matchers": ['query="temp"', 'gpu="0"'], "start": start, "end": end, "kind": "false_positive",
            "comment": "a sensor glitch"}
    response = requests.post(url, json=mark, timeout=10)
    assert response.status_code == 201, response.text
    created = response.json()["data"]
    assert created["kind"] == "false_positive" and created["source"] == "api" and created["id"]
    counted = len(anomalies())
    detector.wait_for(lambda: detector.sample("boxwatch_feedback_false_positives_total", query="temp",
                                              model="robust") != [], what="false positives counted")
    assert detector.sample("boxwatch_feedback_false_positives_total", query="temp", model="robust")[0] >= counted

    listed = requests.get(url, timeout=10).json()["data"]
    assert {(m["source"], m["kind"]) for m in listed["marks"]} == {("config", "expected"), ("api", "false_positive")}
    stored = json.loads((tmp_path / "state" / "feedback" / "marks.json").read_text())
    assert [m["id"] for m in stored["marks"]] == [created["id"]]

    for body, message in (({**mark, "kind": "maybe"}, "kind"), ({**mark, "matchers": ["gpu=0\""]}, "matchers"),
                          ({**mark, "end": mark["start"]}, "end: must be after start"),
                          ({"matchers": []}, "start: required"), ({**mark, "extra": 1}, "unknown field")):
        bad = requests.post(url, json=body, timeout=10)
        assert bad.status_code == 400 and message in bad.json()["error"], (body, bad.text)

    # The marks survive a restart
    detector.stop()
    again = start_detector(config, name="again")
    listed = requests.get(f"{again.url}/api/v1/feedback", timeout=10).json()["data"]
    assert created["id"] in {m["id"] for m in listed["marks"]}


def test_the_registry_gate_refuses_a_candidate_that_flags_more_marked_false_positives(tmp_path):
    from detector.models import make_model
    from detector.registry import Validation, gate
    from tests.detector.test_models import daily_series

    frame = daily_series(3)
    glitch = frame.index[-20]
    frame.loc[glitch, "value"] += 40.0  # a sensor glitch the operator marked false_positive
    split = frame.index[-100].timestamp()
    config = validate(detector_config("http://127.0.0.1:9", tmp_path / "state", {"q": {"expr": "x"}}, maintenance=[
        {"matchers": ['query="q"'], "start": _iso(glitch.timestamp() - 60), "end": _iso(glitch.timestamp() + 60),
         "kind": "false_positive"}]))
    key = (("gpu", "0"),)
    train = frame[frame.index.asi8 / 1e9 < split]
    touchy = {key: make_model("robust", {"window": 500, "k": 3.0}).fit(train)}
    lenient = {key: make_model("robust", {"window": 500, "k": 100.0}).fit(train)}
    from detector.feedback import false_positive_counts

    counts = false_positive_counts(config, "q", "robust", {key: frame}, split, touchy, lenient)
    assert counts == (1, 0)
    assert false_positive_counts(config, "q", "seasonal", {key: frame}, split, touchy, None) is None
    settings = config.registry
    promoted, reason = gate(Validation(100, 1), Validation(100, 1), settings, "3", False, False, counts)
    assert not promoted and "marked false_positive" in reason
    assert gate(Validation(100, 1), Validation(100, 1), settings, "3", False, False, None)[0]
    assert gate(Validation(100, 1), Validation(100, 1), settings, "3", False, False, (0, 2))[0]
