"""Calibrated scores: one meaning of ``> 1`` on quiet and noisy series, once per incident, kept on restart."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd

from detector.calibration import Calibration, calibrate_many
from detector.config import CalibrationConfig
from detector.models.robust import RobustModel
from detector.scoring import score_online
from detector.store import LocalStore, ModelBundle


def rising_edges(scores: np.ndarray) -> int:
    above = np.nan_to_num(scores) > 1
    return int((above & ~np.concatenate([[False], above[:-1]])).sum())


def test_quiet_and_noisy_series_alert_at_the_same_rare_rate():
    rng = np.random.default_rng(1)
    quiet = np.abs(rng.normal(0, 0.3, 12_000))  # rarely leaves its band
    noisy = np.abs(rng.standard_t(2, 12_000)) * 1.5  # leaves it on one point in ten
    assert (noisy > 1).mean() > 0.1
    for raw in (quiet, noisy):
        scores = Calibration(target_rate=1e-3, hold=0, window=2000).calibrate(raw)
        rate = (scores[3000:] > 1).mean()
        assert rate < 4e-3, rate
    # a point far outside what the noisy series does is still alert-worthy
    calibration = Calibration(target_rate=1e-3, hold=0, window=2000)
    calibration.calibrate(noisy)
    assert calibration.calibrate(np.array([1e4]))[0] > 1


def test_a_point_inside_the_band_never_alerts_and_warm_up_follows_the_band():
    calibration = Calibration(min_points=100)
    assert calibration.calibrate(np.array([0.5, 1.5]))[1] > 1  # too few points: outside the band alerts
    steady = Calibration(hold=0)
    scores = steady.calibrate(np.full(1000, 0.01))
    assert (scores <= 1).all()
    assert steady.calibrate(np.array([0.99]))[0] <= 1  # rare for the series, but inside the band


def test_an_incident_that_dips_back_fires_once_and_is_not_learned():
    calibration = Calibration(hold=5, min_points=10_000, learn_below=2.0)
    raw = np.array([0.1, 5.0, 0.2, 0.3, 9.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 6.0])
    scores = calibration.calibrate(raw)
    assert rising_edges(scores) == 2  # the dip at rows 2-3 is held; row 12 comes after the hold
    assert (scores[1:10] > 1).all() and scores[11] <= 1
    assert len(calibration.values_) == len(raw) - 3  # all but the incident's peaks (score > learn_below)


def test_score_online_publishes_raw_and_calibrated_scores():
    idx = pd.date_range("2026-01-01", periods=600, freq="min", tz="UTC")
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"value": 10 + rng.normal(0, 1, 600)}, index=idx)
    model = RobustModel(window=200).fit(frame.iloc[:300])
    result = score_online(model, frame.iloc[300:], calibration=Calibration())
    np.testing.assert_allclose(result["raw_score"], np.abs(frame["value"].iloc[300:] - result["expected"])
                               / (result["upper"] - result["expected"]))
    assert (result["score"] <= result["raw_score"] / np.log(2) + 1e-9).all()  # never above the band's map
    plain = score_online(RobustModel(window=200).fit(frame.iloc[:300]), frame.iloc[300:])
    np.testing.assert_allclose(plain["score"], plain["raw_score"])


def test_calibration_is_saved_with_the_models(tmp_path):
    calibration = CalibrationConfig().make()
    calibration.calibrate(np.abs(np.random.default_rng(3).normal(0, 2, 3000)))
    key = (("gpu", "0"),)
    bundle = ModelBundle(query="q", model_name="robust", models={}, params={}, config_hash="h",
                         training_start=0, training_end=1, fitted_at=1, calibration={key: calibration})
    store = LocalStore(tmp_path)
    store.save(bundle)
    loaded = store.load("q").calibration[key]
    assert loaded.level_ == calibration.level_ > np.log(2)
    assert list(loaded.values_) == list(calibration.values_)
    probe = np.array([0.5, 30.0, 0.1])
    np.testing.assert_array_equal(loaded.calibrate(probe), calibration.calibrate(probe))


def test_a_calibration_pickled_with_a_deque_loads_and_scores_the_same():
    """State saved before the recent values were an array (a deque then) still loads, same scores."""
    import pickle
    from collections import deque

    calibration = CalibrationConfig().make()
    calibration.calibrate(np.abs(np.random.default_rng(4).normal(0, 2, 500)))
    old = copy.deepcopy(calibration)
    old.__dict__["values_"] = deque(old.values_.tolist(), maxlen=old.window)
    loaded = pickle.loads(pickle.dumps(old))
    assert isinstance(loaded.values_, np.ndarray) and list(loaded.values_) == list(calibration.values_)
    probe = np.array([0.5, 30.0, 0.1, 2.0])
    np.testing.assert_array_equal(loaded.calibrate(probe), calibration.calibrate(probe))


def test_many_units_calibrated_together_score_and_learn_as_each_alone():
    """A serve cycle calibrates all units of a query at once: same scores, same state after, for every
    setting that changes the path (warm-up, a full window, holds, learning limits, refit spacing)."""
    rng = np.random.default_rng(3)
    units, points = 120, 300
    raw = np.abs(rng.standard_t(2, (units, points))) * rng.uniform(0.2, 3, (units, 1))
    raw[rng.random((units, points)) < 0.05] = np.nan
    alone = [Calibration(min_points=(1, 5, 50)[i % 3], window=(10, 60, 4000)[i % 3], refit_every=(1, 3)[i % 2],
                         hold=(0, 4)[i % 2], learn_below=(np.inf, 2.0)[i % 2]) for i in range(units)]
    together = copy.deepcopy(alone)
    expected = np.array([calibration.calibrate(row) for calibration, row in zip(alone, raw, strict=True)])
    scored = np.hstack([calibrate_many(together, raw[:, first:first + 7]) for first in range(0, points, 7)])
    np.testing.assert_array_equal(scored, expected)
    assert (np.nan_to_num(expected) > 1).any() and (expected == 1 + 1e-6).any()  # alerts and holds were exercised
    for one, other in zip(alone, together, strict=True):
        np.testing.assert_array_equal(one.values_, other.values_)
        assert (one.level_, one.hold_left_, one.unfitted_) == (other.level_, other.hold_left_, other.unfitted_)


def test_the_level_from_the_sorted_tail_is_the_peaks_over_threshold_level_of_the_values():
    """The kept-sorted tail (rebuilt when old large values age out) gives, after every point, the level
    np.quantile and np.mean give over the values in arrival order, to 1e-12 relative (the mean's sum
    runs in another order), through the filling of the window and long after it is full."""
    from detector.calibration import tail_level

    rng = np.random.default_rng(8)
    raw = np.abs(rng.standard_t(3, 6000)) * np.repeat(rng.uniform(0.2, 2, 12), 500)  # the scale drifts
    raw[rng.random(6000) < 0.02] = 0.0  # ties at the band's centre
    calibration = Calibration(window=300, min_points=20, hold=0)
    floor = np.log(2)
    for value in raw:
        calibration.calibrate(np.array([value]))
        values = calibration.values_
        if len(values) >= 20:
            expected = max(tail_level(values, 0.9, 0.1), values.max(), floor)
            assert abs(calibration.level_ - expected) <= 1e-12 * expected
    assert len(calibration.values_) == 300
