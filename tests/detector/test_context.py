"""The context-novelty model: new contexts score above 1, known ones do not, its score is published as is."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from detector.models import make_model
from detector.models.base import NotFittedError
from detector.models.context import ContextModel
from detector.models.params import check_params


def cycle(n: int, start: str = "2026-01-05", period: int = 12) -> pd.DataFrame:
    """A repeating ramp with a little noise: every context of it is seen many times."""
    idx = pd.date_range(start, periods=n, freq="5min", tz="UTC")
    rng = np.random.default_rng(0)
    return pd.DataFrame({"value": 10 + (np.arange(n) % period) + rng.normal(0, 0.05, n)}, index=idx)


def after(frame: pd.DataFrame, values: list[float]) -> pd.DataFrame:
    idx = pd.date_range(frame.index[-1] + pd.Timedelta("5min"), periods=len(values), freq="5min", tz="UTC")
    return pd.DataFrame({"value": values}, index=idx)


def score_one_by_one(model: ContextModel, history: pd.DataFrame, values: list[float]) -> list[float]:
    """Each of ``values`` after ``history``, scored then learned, as a serve cycle does."""
    scores = []
    for value in values:
        point = after(history, [value])
        scores.append(model.score(point)["score"].iloc[0])
        model.learn(point)
        history = pd.concat([history, point])
    return scores


def test_known_contexts_score_below_one_and_a_new_one_above():
    history = cycle(600)
    model = make_model("context", {"rest": 0}).fit(history)
    known = after(history, [10 + (600 + i) % 12 for i in range(24)])
    scores = model.score(known.iloc[:1])["score"].to_numpy()
    assert scores[0] < 1
    model.learn(known)
    # a jump straight from the bottom of the ramp to its top never happened before
    jump = after(known, [10.0, 21.0])
    model.learn(jump.iloc[:1])
    novel = model.score(jump.iloc[1:])
    assert novel["score"].iloc[0] > 1
    assert novel["lower"].iloc[0] < novel["expected"].iloc[0] < novel["upper"].iloc[0]


def test_a_value_beyond_the_fitted_range_is_new_and_ranks_by_its_distance():
    history = cycle(600)
    model = ContextModel(rest=0).fit(history)
    near, far = (model.score(after(history, [v]))["score"].iloc[0] for v in (22.5, 200.0))
    assert 1 < near < far <= 2 * model.novelty(200.0) / model.threshold


def test_after_a_new_context_the_rest_period_scores_zero_then_scoring_resumes():
    history = cycle(600)
    model = ContextModel(rest=5, hold=0).fit(history)
    scores = score_one_by_one(model, history, [200.0, 10.0, 11.0, 12.0, 13.0, 14.0, 300.0])
    assert scores[0] > 1 and scores[1:6] == [0.0] * 5 and scores[6] > 1


def test_an_incident_is_held_just_above_1_while_it_lasts_so_the_alert_waits_its_for_and_fires_once():
    """The first ``hold`` points after a new context are held, then the points outside the band; the first
    one back inside ends the hold (0 until the rest period is over): one rising edge of ``score > 1``."""
    from detector.calibration import HELD

    history = cycle(600)
    model = ContextModel(rest=20, hold=3).fit(history)
    values = [200.0, 10.0, 11.0, 12.0, 250.0, 250.0, 13.0, 300.0] + [10.0 + i % 12 for i in range(14)]
    scores = score_one_by_one(model, history, values)
    assert scores[0] > 1 and scores[1:6] == [HELD] * 5 and scores[6:21] == [0.0] * 15
    above = np.array(scores) > 1
    assert np.count_nonzero(above[1:] & ~above[:-1]) == 0 and above[0]


def test_in_the_rest_period_a_new_excursion_after_the_incident_ended_is_reported():
    """The rest period keeps one incident to one report; it does not hide the next one: once the value
    is back inside the band, a point outside it whose context is new starts a new incident."""
    from detector.calibration import HELD

    history = cycle(600)
    model = ContextModel(rest=50, hold=2).fit(history)
    values = [200.0] + [10.0 + i % 12 for i in range(10)] + [-150.0, 10.0, 11.0]
    scores = score_one_by_one(model, history, values)
    assert scores[0] > 1 and scores[1:3] == [HELD] * 2 and scores[3:11] == [0.0] * 8
    assert scores[11] > HELD and scores[12:14] == [HELD] * 2  # reported, then held as the first
    assert model.rest_left_ == 50 - 2


def test_too_short_a_history_scores_nan_and_unfitted_raises():
    history = cycle(10)
    assert np.isnan(ContextModel(min_points=20).fit(history).score(after(history, [5.0]))["score"].iloc[0])
    with pytest.raises(NotFittedError):
        ContextModel().score(history)


def test_pickled_state_scores_the_same_after_a_restart():
    history = cycle(400)
    model = ContextModel(rest=3).fit(history)
    model.learn(after(history, [200.0, 10.0]))
    restored = pickle.loads(pickle.dumps(model))
    future = after(history, [11.0, 300.0, 12.0, 13.0, 400.0])
    for i in range(len(future)):
        point = future.iloc[i:i + 1]
        pd.testing.assert_frame_equal(model.score(point), restored.score(point))
        model.learn(point)
        restored.learn(point)
    assert restored.table_ == model.table_ and restored.rest_left_ == model.rest_left_


def test_the_service_publishes_its_score_uncalibrated_and_direction_gates_it():
    from detector.calibration import Calibration
    from detector.scoring import score_online

    history = cycle(600)
    frame = after(history, [10.0, 11.0, 2.0, 12.0, 13.0, 200.0])
    both = score_online(ContextModel(rest=0).fit(history), frame, calibration=Calibration(min_points=1))
    np.testing.assert_array_equal(both["score"].to_numpy(), both["raw_score"].to_numpy())
    assert both["score"].iloc[2] > 1 and both["score"].iloc[5] > 1
    above = score_online(ContextModel(rest=0).fit(history), frame, direction="above")
    assert above["score"].iloc[2] == 0 and above["score"].iloc[5] == both["score"].iloc[5]


@pytest.mark.parametrize("params, key", [
    ({"levels": 0}, "levels"), ({"orders": 9}, "orders"), ({"threshold": 1.5}, "threshold"),
    ({"rest": -1}, "rest"), ({"band_cap": 0}, "band_cap"), ({"levels": 6.5}, "levels"),
])
def test_parameters_are_typed_and_bounded(params, key):
    assert [k for k, _ in check_params("context", params)] == [key]
    assert check_params("context", {"levels": 8, "orders": 3, "threshold": 0.8, "rest": 50}) == []
