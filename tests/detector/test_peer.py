"""The peer-group model: one GPU against its sibling at the same step ("one fan dies"), on synthetic
data and through the running service against a real Prometheus."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import requests

from detector.models import make_model
from detector.scoring import score_online
from tests.detector.conftest import detector_config

STEP = "5min"
PER_DAY = 288
TEMP = "boxwatch_gpu_temperature_celsius"
UTIL = "boxwatch_gpu_utilization_ratio"


def two_gpus(days: int = 4, hot_hours: float = 6.0, offset: float = 10.0, sibling_load: float = 1.0,
             seed: int = 0) -> tuple[pd.DataFrame, pd.Timestamp]:
    """Two GPUs of one box sharing a bursty daily load; temperature follows utilisation
    (31 °C + 44 °C per unit of load). In the last ``hot_hours`` GPU 0's fan is dead: it runs
    ``offset`` °C hotter than the same load explains. ``sibling_load`` scales GPU 1's load."""
    # ends at 18:00: the fan dies at noon, in the busy hours
    idx = pd.date_range("2026-01-05", periods=days * PER_DAY - 72, freq=STEP, tz="UTC")
    hours = idx.hour + idx.minute / 60
    rng = np.random.default_rng(seed)
    daily = 0.15 + 0.6 * np.exp(-(((hours - 14) / 4) ** 2))
    load = np.clip(daily + rng.normal(0, 0.2, len(idx)), 0.0, 1.0)  # minute-to-minute bursts
    fan_dies = idx[-1] - pd.Timedelta(hours=hot_hours)
    columns = {}
    for gpu, scale in (("0", 1.0), ("1", sibling_load)):
        util = np.clip(load * scale, 0.0, 1.0)
        temp = 31 + 44 * util + rng.normal(0, 0.7, len(idx))
        if gpu == "0":
            temp = temp + np.where(idx > fan_dies, offset, 0.0)
        columns[f"{TEMP}{{gpu={gpu}}}"] = temp
        columns[f"{UTIL}{{gpu={gpu}}}"] = util
    return pd.DataFrame(columns, index=idx), fan_dies


def member_scores(model, frame: pd.DataFrame) -> dict[str, pd.Series]:
    return {member: result["score"] for member, result in model.score_members(frame).items()}


def test_a_gpu_10_degrees_hotter_than_its_sibling_is_a_peer_outlier_but_in_its_own_seasonal_band():
    frame, fan_dies = two_gpus()
    history, recent = frame[frame.index <= fan_dies], frame[frame.index > fan_dies]

    # Its own history: the seasonal model of the example config (above only, 5 °C minimum) sees
    # 10 °C more as within the swing a bursty load gives the temperature of this card: in band.
    own = history[[f"{TEMP}{{gpu=0}}"]].rename(columns=lambda _: "value")
    seasonal = make_model("seasonal", {"k": 5.0}).fit(own)
    seasonal_scores = score_online(seasonal, recent[[f"{TEMP}{{gpu=0}}"]].rename(columns=lambda _: "value"),
                                   "above", 5.0)["score"]
    outside = (seasonal_scores > 1.0).to_numpy()
    assert outside.mean() < 0.1  # a burst now and then pokes out, as bursts did before the fan died ...
    assert not (outside[1:] & outside[:-1]).any()  # ... but never long enough for AnomalyScoreHigh's 3m

    # Its sibling at the same load: 10 °C apart is far outside a 4 °C tolerance.
    peer = make_model("peer", {"target": TEMP, "tolerance": 4.0}).fit(history)
    scores = member_scores(peer, recent)
    above = {m: score_online_direction(peer, recent, m, "above") for m in scores}
    assert above["gpu=0"].min() > 1.0
    assert above["gpu=1"].max() == 0.0  # the cooler sibling is below the group, not above it
    before = member_scores(peer, history)
    assert before["gpu=0"].max() <= 1.0 and before["gpu=1"].max() <= 1.0
    group = peer.score(recent.iloc[-3:])
    assert (group["score"] > 1).all()  # group level, both directions: two members are each other's outlier
    assert sorted(group["top_features"].iloc[-1]) == ["gpu=0", "gpu=1"]


def score_online_direction(model, frame: pd.DataFrame, member: str, direction: str) -> pd.Series:
    from detector.peers import member_points

    points = member_points(model, (("instance", "box"),), frame, "q", "peer", direction, 0.0)
    return pd.Series({p.timestamp: p.score for p in points if dict(p.labels)["gpu"] == member.split("=")[1]})


def test_utilisation_as_covariate_compares_temperatures_at_the_same_load():
    # GPU 1 carries 40 % of GPU 0's load: it is cooler because it works less, not because it is healthy.
    frame, fan_dies = two_gpus(sibling_load=0.4, offset=10.0)
    history, recent = frame[frame.index <= fan_dies], frame[frame.index > fan_dies]
    plain = make_model("peer", {"target": TEMP, "tolerance": 4.0}).fit(history)
    assert (member_scores(plain, history)["gpu=0"] > 1).mean() > 0.3  # busier GPU "hotter than its peers"

    adjusted = make_model("peer", {"target": TEMP, "covariate": UTIL, "tolerance": 4.0}).fit(history)
    assert adjusted.slope_ == pytest.approx(44.0, rel=0.05)
    quiet = member_scores(adjusted, history)
    assert (quiet["gpu=0"] > 1).mean() < 0.01 and (quiet["gpu=1"] > 1).mean() < 0.01
    hot = member_scores(adjusted, recent)
    assert (hot["gpu=0"] > 1).mean() > 0.95
    expected = adjusted.score_members(recent)["gpu=0"]["expected"]
    assert (recent[f"{TEMP}{{gpu=0}}"] - expected).median() == pytest.approx(10.0, abs=1.5)


def test_peer_needs_peers_and_a_named_target():
    frame, _ = two_gpus(days=1)
    alone = make_model("peer", {"target": TEMP}).fit(frame[[f"{TEMP}{{gpu=0}}"]])
    assert member_scores(alone, frame[[f"{TEMP}{{gpu=0}}"]])["gpu=0"].isna().all()
    with pytest.raises(ValueError, match="target"):
        make_model("peer").fit(frame)
    with pytest.raises(ValueError, match="min_members"):
        make_model("peer", {"min_members": 1})
    gap = frame.copy()
    gap.iloc[5, gap.columns.get_loc(f"{TEMP}{{gpu=1}}")] = np.nan
    scores = member_scores(make_model("peer", {"target": TEMP}).fit(gap), gap)
    assert np.isnan(scores["gpu=0"].iloc[5]) and not np.isnan(scores["gpu=0"].iloc[6])


@pytest.mark.slow
def test_service_publishes_one_score_per_member_with_the_group_and_member_labels(
        history_prometheus, start_detector, tmp_path):
    now = time.time()
    step = 5
    stamps = np.arange(now - 3600, now + 1e-9, step)
    rng = np.random.default_rng(1)
    load = np.clip(0.5 + 0.2 * np.sin(stamps / 600) + rng.normal(0, 0.1, len(stamps)), 0, 1)
    series = {}
    for gpu in ("0", "1", "2"):
        hot = 12.0 if gpu == "2" else 0.0
        temp = 31 + 44 * load + rng.normal(0, 0.5, len(stamps)) + np.where(stamps > now - 300, hot, 0.0)
        labels = (("instance", "box"), ("gpu", gpu))
        series[("peer_temp", labels)] = list(zip(stamps.tolist(), np.round(temp, 2).tolist(), strict=True))
        series[("peer_util", labels)] = list(zip(stamps.tolist(), np.round(load, 3).tolist(), strict=True))
    prom = history_prometheus(series)
    config = detector_config(prom.url, tmp_path / "state", {"gpu_peers": {
        "expr": '{__name__=~"peer_temp|peer_util"}', "step": f"{step}s", "fit_window": "1h", "fit_every": "1h",
        "infer_every": "1s", "model": "peer", "group_by": ["instance"], "direction": "above",
        "params": {"target": "peer_temp", "covariate": "peer_util", "tolerance": 4.0}}})
    detector = start_detector(config)

    def members():
        return {s.labels["gpu"]: s for s in detector.samples("boxwatch_anomaly_score")}
    detector.wait_for(lambda: set(members()) == {"0", "1", "2"}, timeout=60, what="three members scored")
    sample = members()["2"]
    assert set(sample.labels) == {"instance", "gpu", "query", "model"}
    assert sample.labels["model"] == "peer" and sample.value > 1
    assert members()["0"].value <= 1 and members()["1"].value <= 1
    expected = detector.sample("boxwatch_anomaly_expected", gpu="2")[0]
    upper = detector.sample("boxwatch_anomaly_expected_upper", gpu="2")[0]
    assert upper - expected == pytest.approx(4.0)  # three members agree closely: the tolerance is the band
    assert detector.sample("boxwatch_detector_series_scored", query="gpu_peers", model="peer") == [3.0]
    anomalies = requests.get(f"{detector.url}/api/v1/anomalies", timeout=5).json()["data"]
    assert anomalies and {a["labels"]["gpu"] for a in anomalies} == {"2"}
    assert anomalies[-1]["labels"] == {"instance": "box", "gpu": "2"}
