"""Behaviour of the seasonal and Isolation Forest models on synthetic series with injected incidents."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

from detector.models import MODELS, make_model, model_class
from detector.models.base import NotFittedError

STEP = "5min"
PER_DAY = 288


def daily_series(days: int, seed: int = 0, start: str = "2026-01-05") -> pd.DataFrame:
    """Five-minute data with a strong daily cycle (busy afternoons), a weekend dip and noise."""
    idx = pd.date_range(start, periods=days * PER_DAY, freq=STEP, tz="UTC")
    hours = idx.hour + idx.minute / 60
    rng = np.random.default_rng(seed)
    daily = 20 * np.exp(-(((hours - 15) / 3) ** 2))
    weekend = np.where(idx.dayofweek >= 5, -5.0, 0.0)
    return pd.DataFrame({"value": 50 + daily + weekend + rng.normal(0, 1.0, len(idx))}, index=idx)


def split(frame: pd.DataFrame, test_days: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    cut = len(frame) - test_days * PER_DAY
    return frame.iloc[:cut], frame.iloc[cut:].copy()


@pytest.fixture(scope="module")
def fitted_seasonal():
    history, future = split(daily_series(15))
    return make_model("seasonal").fit(history), future


def flagged(scores: pd.DataFrame) -> np.ndarray:
    return scores["score"].to_numpy() > 1


# --------------------------------------------------------------------------- seasonal


def test_seasonal_uses_daily_and_weekly_periods_and_stays_quiet_on_normal_days(fitted_seasonal):
    model, future = fitted_seasonal
    assert model.periods_ == [7 * 86400.0, 86400.0]
    out = model.score(future)
    assert list(out.columns) == ["expected", "lower", "upper", "score"]
    assert flagged(out).sum() == 0
    # the expected value follows the daily cycle: afternoon peak ~20 above the night
    afternoon = out.expected[future.index.hour == 15].mean()
    night = out.expected[future.index.hour == 3].mean()
    assert afternoon - night == pytest.approx(20, abs=2)


def test_seasonal_flags_a_spike_and_a_level_shift(fitted_seasonal):
    model, future = fitted_seasonal
    spiked = future.copy()
    spiked.iloc[100, 0] += 15
    assert flagged(model.score(spiked)).tolist() == [i == 100 for i in range(len(spiked))]
    shifted = future.copy()
    shifted.iloc[150:, 0] += 12
    hits = flagged(model.score(shifted))
    assert hits[150:].mean() > 0.95 and not hits[:150].any()


def test_seasonal_flags_a_missing_daily_peak_that_a_rolling_model_accepts(fitted_seasonal):
    model, future = fitted_seasonal
    broken = future.copy()
    afternoon = (future.index.hour >= 13) & (future.index.hour < 17)
    broken.loc[afternoon, "value"] = 52.0  # the afternoon peak does not come: a level seen every night
    hits = flagged(model.score(broken))
    assert hits[afternoon].mean() > 0.5 and not hits[~afternoon].any()
    robust = make_model("robust", {"window": 4 * PER_DAY}).fit(split(daily_series(15))[0])
    assert flagged(robust.score(broken))[afternoon].mean() < 0.1


def test_seasonal_band_is_sane_when_training_contains_incidents(fitted_seasonal):
    clean_model, future = fitted_seasonal
    history, _ = split(daily_series(15))
    dirty = history.copy()
    rng = np.random.default_rng(1)
    dirty.iloc[rng.choice(len(dirty), 40, replace=False), 0] += 80  # spikes
    dirty.iloc[2000:2100, 0] += 40  # an eight-hour incident
    dirty_model = make_model("seasonal").fit(dirty)
    clean, polluted = clean_model.score(future), dirty_model.score(future)
    width = (polluted.upper - polluted.lower).mean() / (clean.upper - clean.lower).mean()
    assert 0.8 < width < 1.3
    assert np.abs(polluted.expected - clean.expected).max() < 3
    assert flagged(polluted).sum() == 0


def test_seasonal_short_history_falls_back_and_too_short_is_nan():
    one_day, future = split(daily_series(2))
    model = make_model("seasonal").fit(one_day)
    assert model.periods_ == []
    out = model.score(future)
    assert out.score.notna().all()
    tiny = make_model("seasonal").fit(one_day.iloc[:10])
    assert tiny.score(future.iloc[:5]).score.isna().all()


def test_seasonal_learn_follows_normal_drift_but_not_an_incident(fitted_seasonal):
    model, future = fitted_seasonal
    before = model.level_
    incident = future.iloc[:12].copy()
    incident["value"] += 100
    model.learn(incident)
    assert model.level_ == before
    drift = future.iloc[:50].copy()
    drift["value"] += 2
    model.learn(drift)
    assert before + 0.5 < model.level_ < before + 2.5
    model.level_ = before  # the fixture is shared


def test_seasonal_handles_gaps_and_one_minute_data_quickly():
    idx = pd.date_range("2026-01-05", periods=14 * 1440, freq="min", tz="UTC")
    rng = np.random.default_rng(2)
    values = 10 + 5 * np.sin(2 * np.pi * np.arange(len(idx)) / 1440) + rng.normal(0, 0.5, len(idx))
    frame = pd.DataFrame({"value": values}, index=idx).drop(idx[5000:7000])  # a gap of 33 hours
    model = make_model("seasonal").fit(frame.iloc[:-60])
    out = model.score(frame.iloc[-60:])
    assert not flagged(out).any()
    assert 86400.0 in model.periods_


# --------------------------------------------------------------------------- iforest


def gpu_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """Correlated GPU metrics: utilisation drives power, power drives temperature, clocks steady."""
    idx = pd.date_range("2026-01-05", periods=n, freq="min", tz="UTC")
    rng = np.random.default_rng(seed)
    util = np.clip(0.5 + 0.4 * np.sin(np.arange(n) / 90) + rng.normal(0, 0.05, n), 0, 1)
    power = 80 + 220 * util + rng.normal(0, 6, n)
    temp = 35 + 0.12 * power + rng.normal(0, 1, n)
    clock = 1800 + rng.normal(0, 15, n)
    return pd.DataFrame(
        {"utilization": util, "power": power, "temperature": temp, "sm_clock": clock}, index=idx
    )


@pytest.fixture(scope="module")
def fitted_iforest():
    frame = gpu_frame(3000)
    return make_model("iforest").fit(frame.iloc[:2500]), frame.iloc[2500:].copy()


def test_iforest_quiet_on_normal_data(fitted_iforest):
    model, future = fitted_iforest
    out = model.score(future)
    assert list(out.columns) == ["expected", "lower", "upper", "score", "top_features"]
    assert out[["expected", "lower", "upper"]].isna().all().all()
    assert out.score.notna().all() and (out.score >= 0).all()
    assert flagged(out).mean() < 0.01


@pytest.mark.parametrize("column, change", [("temperature", +25.0), ("sm_clock", -600.0), ("power", +180.0)])
def test_iforest_flags_and_names_the_perturbed_feature(fitted_iforest, column, change):
    model, future = fitted_iforest
    broken = future.copy()
    broken.iloc[200:230, broken.columns.get_loc(column)] += change
    out = model.score(broken)
    assert flagged(out)[200:230].mean() > 0.9
    assert all(top[0] == column for top in out.top_features.iloc[200:230])
    assert not flagged(out)[:199].any()


def test_iforest_nan_before_enough_history():
    frame = gpu_frame(100)
    model = make_model("iforest", {"min_points": 50}).fit(frame.iloc[:30])
    out = model.score(frame.iloc[30:40])
    assert out.score.isna().all()
    assert all(top == [] for top in out.top_features)


def test_iforest_threshold_survives_incidents_in_training():
    frame = gpu_frame(3000, seed=3)
    dirty = frame.iloc[:2500].copy()
    dirty.iloc[1000:1020, dirty.columns.get_loc("temperature")] += 30
    model = make_model("iforest").fit(dirty)
    assert flagged(model.score(frame.iloc[2500:])).mean() < 0.01
    hot = frame.iloc[2500:2510].copy()
    hot["temperature"] += 30
    assert flagged(model.score(hot)).all()


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", sorted(MODELS))
def test_estimator_contract(name):
    cls = model_class(name)
    params = {p: v.default for p, v in inspect.signature(cls.__init__).parameters.items() if p != "self"}
    model = make_model(name)
    assert model.get_params() == params
    assert type(model)(**model.get_params()).get_params() == params
    assert not model.is_fitted
    frame = gpu_frame(300) if cls.multivariate else daily_series(2)
    with pytest.raises(NotFittedError):
        model.score(frame)
    assert model.fit(frame) is model
    learned = [k for k in vars(model) if k.endswith("_") and not k.startswith("_")]
    assert learned, "fit sets learned attributes ending in _"
    assert model.get_params() == params  # fit does not touch the parameters
    out = model.score(frame.iloc[-5:])
    assert out.index.equals(frame.index[-5:])


def test_unknown_seasonality_is_a_clear_error():
    with pytest.raises(ValueError, match="seasonality"):
        make_model("seasonal", {"seasonality": "hourly"}).fit(daily_series(2))


def test_band_score_convention_direction_and_min_deviation():
    from detector.models.base import band_score

    # inside the band < 1, on its edge 1, outside > 1, NaN stays NaN
    scores = band_score([10, 12, 14, np.nan], [10] * 4, [6] * 4, [12] * 4)
    assert scores[0] == 0 and scores[1] == 1 and scores[2] == 2 and np.isnan(scores[3])
    # below-only and above-only
    assert band_score([14], [10], [6], [12], direction="below")[0] == 0
    assert band_score([2], [10], [6], [12], direction="above")[0] == 0
    assert band_score([2], [10], [6], [12], direction="below")[0] == 2
    # deviations under min_deviation never count
    assert band_score([14], [10], [6], [12], min_deviation=5)[0] == 0


def test_min_deviation_also_floors_a_degenerate_band():
    """A series that was flat in training (an error rate of 0) has a zero-width band: one error
    must read as a few times min_deviation, not as 1e8."""
    from detector.models.base import band_score

    assert band_score([0.2], [0.0], [0.0], [0.0], direction="above", min_deviation=0.05)[0] == pytest.approx(4.0)


def unit_histories() -> list[pd.DataFrame]:
    """Five units: a daily cycle, a shifted one, a flat series, a short history and one too short to judge."""
    long = daily_series(4, seed=3)
    return [long, daily_series(4, seed=4) * 2 - 30, long * 0 + 7.0, long.iloc[-40:], long.iloc[-5:]]


@pytest.mark.parametrize("name, params", [("robust", {"window": 100}), ("seasonal", {}),
                                          ("context", {"rest": 0})])
@pytest.mark.parametrize("direction, min_deviation", [("both", 0.0), ("above", 0.5)])
def test_batch_scoring_gives_the_per_unit_results(name, params, direction, min_deviation):
    """score_online_many over units == score_online unit by unit: scores, bands, calibration, what is learned."""
    import copy

    from detector.calibration import Calibration
    from detector.scoring import grid_seconds, score_online, score_online_many

    histories = unit_histories()
    models = [make_model(name, params).fit(h) for h in histories]
    twins = copy.deepcopy(models)
    calibrations = [Calibration(min_points=20, window=50) for _ in models]
    twin_calibrations = copy.deepcopy(calibrations)
    rng = np.random.default_rng(5)
    for cycle in range(12):  # one point per cycle, then a catch-up of three
        index = pd.date_range(histories[0].index[-1] + pd.Timedelta(STEP) * (1 + 4 * cycle),
                              periods=1 if cycle < 11 else 3, freq=STEP, tz="UTC")
        values = 50 + rng.normal(0, 2, (len(models), len(index)))
        values[0, -1] += 40 * (cycle in (3, 4))  # an incident the models must not learn
        values[1, 0] = np.nan if cycle == 6 else values[1, 0]
        batch = score_online_many(models, grid_seconds(index), values, direction, min_deviation, calibrations)
        if cycle == 3:
            assert batch["raw_score"][0, -1] > 1  # the incident is out of the band
        for i, model in enumerate(twins):
            frame = pd.DataFrame({"value": values[i]}, index=index)
            single = score_online(model, frame, direction, min_deviation, twin_calibrations[i])
            for column in ("expected", "lower", "upper", "score", "raw_score"):
                np.testing.assert_array_equal(batch[column][i], single[column].to_numpy(dtype=float),
                                              err_msg=f"{name} unit {i} {column} cycle {cycle}")
    for model, twin in zip(models, twins, strict=True):  # the state each model saves
        assert learned_state(model) == learned_state(twin)


def learned_state(model) -> dict[str, str]:
    """The state a model saves, as text; those parts that are models themselves (a band inside) by theirs."""
    return {k: str(learned_state(v) if hasattr(v, "fit") else v) for k, v in model.__getstate__().items()}


def test_batch_iforest_scores_and_explains_as_each_forest_does():
    """Entities scored together (one walk of every forest) == each model's own score, top_features included."""
    import copy

    from detector.scoring import grid_seconds, score_online, score_online_many

    histories = [gpu_frame(400, seed) for seed in (1, 2, 3)] + [gpu_frame(30, 4)]
    models = [make_model("iforest", {"n_estimators": 40}).fit(h) for h in histories]
    twins = copy.deepcopy(models)
    columns = models[0].columns_
    rng = np.random.default_rng(6)
    explained = 0
    for cycle in range(6):
        index = pd.date_range(histories[0].index[-1] + pd.Timedelta("1min") * (1 + 3 * cycle),
                              periods=1 if cycle < 5 else 2, freq="1min", tz="UTC")
        rows = np.stack([h[columns].to_numpy()[-len(index):] for h in histories[:3]]
                        + [histories[0][columns].to_numpy()[:len(index)]])
        values = rows + rng.normal(0, 0.5, rows.shape)
        values[1, -1, 0] += 40 * (cycle in (2, 3))  # one entity hot: explained
        values[2, 0, 1] = np.nan if cycle == 1 else values[2, 0, 1]
        batch = score_online_many(models, grid_seconds(index), values)
        for i, model in enumerate(twins):
            single = score_online(model, pd.DataFrame(values[i], index=index, columns=columns))
            np.testing.assert_array_equal(batch["score"][i], single["score"].to_numpy(dtype=float))
            for j in range(len(index)):
                if not np.isnan(batch["score"][i, j]):
                    assert batch["top_features"][i, j] == single["top_features"].iloc[j]
                    explained += bool(batch["top_features"][i, j])
    assert explained and np.isnan(batch["score"][3]).all()


def test_a_robust_model_pickled_with_a_deque_window_loads_and_scores_the_same():
    """Models saved before the window was an array (a deque then) still load and score alike."""
    import copy
    import pickle
    from collections import deque

    history, future = split(daily_series(2))
    model = make_model("robust", {"window": 100}).fit(history)
    old = copy.deepcopy(model)
    old.__dict__["window_"] = deque(old.window_.tolist(), maxlen=100)
    loaded = pickle.loads(pickle.dumps(old))
    assert isinstance(loaded.window_, np.ndarray) and list(loaded.window_) == list(model.window_)
    for model_ in (model, loaded):
        model_.learn(future.iloc[:30])
    pd.testing.assert_frame_equal(loaded.score(future.iloc[30:40]), model.score(future.iloc[30:40]))


@pytest.mark.parametrize("width", [1, 2, 3, 10, 11, 360, 361])
def test_row_medians_are_numpys_medians(width):
    """The robust model's batch band uses its own median of the windows: the same values as np.median,
    on noisy, tied (rounded) and constant windows."""
    from detector.models.robust import row_medians

    rng = np.random.default_rng(width)
    noisy = rng.normal(50, 3, (400, width))
    tied = np.round(noisy, 0)
    flat = np.full((5, width), 7.25)
    for table in (noisy, tied, flat, np.abs(tied - np.median(tied, axis=1)[:, None])):
        np.testing.assert_array_equal(row_medians(table), np.median(table, axis=1))


def test_robust_windows_kept_sorted_give_np_median_bands_to_the_last_digit():
    """The bank's incremental medians and MADs == each model's np.median, through filling, ties, full windows,
    units left out of a point and a model that learns on its own in between; the saved window is the same."""
    import copy
    import pickle

    from detector.models.robust import RobustModel

    rng = np.random.default_rng(11)
    index = pd.date_range("2026-01-01", periods=30, freq="min", tz="UTC")
    histories = [pd.DataFrame({"value": np.round(rng.normal(0, 1, n), 1 if n % 2 else 6)}, index=index[:n])
                 for n in rng.integers(0, 30, 40)]
    models = [RobustModel(window=25, min_points=4).fit(h) for h in histories]
    twins = copy.deepcopy(models)
    for step in range(80):
        values = np.round(rng.normal(0, 1, len(models)) * np.where(rng.random(len(models)) < 0.05, 8, 1), 1)
        values[rng.random(len(models)) < 0.05] = np.nan
        rows = np.flatnonzero(rng.random(len(models)) < 0.9)
        batch = RobustModel.score_learn_many([models[i] for i in rows], 0.0, values[rows])
        for position, i in enumerate(rows):
            frame = pd.DataFrame({"value": [values[i]]}, index=index[:1])
            single = twins[i].score(frame)
            twins[i].learn(frame)
            for column in ("expected", "lower", "upper", "score"):
                np.testing.assert_array_equal(batch[column][position], single[column].to_numpy()[0])
        if step == 40:  # one model learns on its own: it takes its window back, the others stay batched
            frame = pd.DataFrame({"value": [0.5]}, index=index[:1])
            models[3].learn(frame)
            twins[3].learn(frame)
    for model, twin in zip(models, twins, strict=True):
        np.testing.assert_array_equal(model.window_, twin.window_)
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).window_, twin.window_)


def test_a_fitted_forest_keeps_nothing_of_scikit_learn_and_scores_as_its_forest_bit_for_bit():
    """The flat float32 / small-int node arrays give scikit-learn's score_samples exactly, also for
    values that sit on a threshold, and a fitted model pickles without a scikit-learn object."""
    import pickle

    from sklearn.ensemble import IsolationForest

    from detector.models.iforest import ForestBank

    rng = np.random.default_rng(4)
    train = rng.normal(0, 1, (600, 5))
    forest = IsolationForest(n_estimators=30, random_state=0).fit(train)
    bank = ForestBank.from_sklearn(forest)
    on_thresholds = rng.choice(bank.threshold[np.isfinite(bank.threshold)], (200, 5))
    rows = np.vstack([train, rng.normal(0, 3, (500, 5)), on_thresholds, np.nextafter(on_thresholds, np.inf)])
    np.testing.assert_array_equal(bank.score_samples(rows), forest.score_samples(rows))
    assert bank.threshold.dtype == np.float32 and bank.left.dtype.itemsize <= 2 and bank.feature.dtype == np.uint8

    model = make_model("iforest").fit(gpu_frame(600))
    ensemble = make_model("ensemble").fit(daily_series(2))
    for fitted in (model, ensemble):
        assert b"sklearn" not in pickle.dumps(fitted)


def test_an_iforest_pickled_with_scikit_learns_forest_loads_and_scores_the_same():
    """Models saved while ``forest_`` was the scikit-learn estimator still load and score alike."""
    import copy
    import pickle

    from sklearn.ensemble import IsolationForest

    frame = gpu_frame(700)
    model = make_model("iforest", {"n_estimators": 40}).fit(frame.iloc[:600])
    old = copy.deepcopy(model)
    standard = (model._feature_rows(frame.to_numpy()[1:600], frame.to_numpy()[:599]) - model.center_) / model.scale_
    old.__dict__["forest_"] = IsolationForest(n_estimators=40, max_samples=256, random_state=0).fit(standard)
    loaded = pickle.loads(pickle.dumps(old))
    assert type(loaded.forest_).__name__ == "ForestBank"
    pd.testing.assert_frame_equal(loaded.score(frame.iloc[600:]), model.score(frame.iloc[600:]))


@pytest.mark.slow  # a Python child process each
@pytest.mark.parametrize("name, history", [("seasonal", lambda: daily_series(3)), ("iforest", lambda: gpu_frame(500)),
                                           ("ensemble", lambda: daily_series(2))])
def test_a_fit_in_a_child_process_scores_as_one_in_process(name, history):
    """What the service does with isolate on: the models come back pickled and score alike."""
    from boxwatch.child import run_in_child
    from detector.scoring import fit_models

    frame = history()
    units = {(("unit", "a"),): frame.iloc[:-50], (("unit", "b"),): frame.iloc[:-50] * 1.5 + 3}
    done = run_in_child(fit_models, name, {}, units)
    here, failures = fit_models(name, {}, units)
    assert failures == [] and done.value[1] == [] and done.peak_rss_bytes > 0
    for key in units:
        future = frame.iloc[-50:] * (1.5 if key[0][1] == "b" else 1.0)
        pd.testing.assert_frame_equal(done.value[0][key].score(future), here[key].score(future))


@pytest.mark.parametrize("slack", [0, 3, 40])
def test_sorted_rows_stay_np_sort_of_their_values_through_short_and_long_moves(slack):
    """Replacing one value per row keeps every row equal to np.sort of its values: rows of random values
    (short moves), of trending values (the oldest and the newest at opposite ends: long moves), rows that
    grow, and rows that shrink by an inf; rows with free slots beside them in a wider buffer (``slack``
    on each side) move either way, and neither touch a slot outside their buffer nor leave it."""
    from detector.sortedrows import SLICE_FROM, recentre, replace_in_rows, search_rows

    rng = np.random.default_rng(5)
    count, width = 60, 4 * SLICE_FROM
    span = width + 1 + 2 * slack
    windows = [list(rng.normal(0, 1, rng.integers(0, width))) for _ in range(count)]
    table = np.full((count, span + 2), np.nan)  # a NaN guard column each side of every row's buffer
    buffers = table[:, 1:-1]
    start = np.full(count, slack)
    for row, window in enumerate(windows):
        buffers[row] = np.inf
        buffers[row, slack:slack + len(window)] = np.sort(window)
    flat = table.reshape(-1)
    moved_far, shifted = False, 0
    for step in range(3 * width):
        length = np.array([len(window) for window in windows])
        trend = np.arange(count) % 3 == 0  # these rows' values only rise
        values = np.where(trend, step + rng.random(count), rng.normal(0, 1, count))
        shrink = (rng.random(count) < 0.05) & (length > 0)
        values[shrink] = np.inf
        full = (length >= width) | shrink
        oldest = np.array([window[0] if window else np.inf for window in windows])
        base = np.arange(count) * (span + 2) + 1 + start
        drop = np.where(full, search_rows(flat, base, length, oldest), length)
        moved_far |= bool((np.abs(drop - search_rows(flat, base, length, values)) > SLICE_FROM).any())
        room = (start, span - start - length) if slack else None
        shift = replace_in_rows(flat, base, length, drop, values, room)
        start += shift
        shifted += int(np.abs(shift).sum())
        assert np.isnan(table[:, [0, -1]]).all()
        for row, window in enumerate(windows):
            if full[row]:
                window.pop(0)
            if not shrink[row]:
                window.append(values[row])
            np.testing.assert_array_equal(buffers[row, start[row]:start[row] + len(window)], np.sort(window))
            assert 0 <= start[row] <= span - len(window)
        if slack > 3:  # rows at an edge back to the middle, as a bank does (with 3, rows stay at the edges)
            recentre(buffers, np.arange(count), start, np.array([len(window) for window in windows]))
    assert moved_far
    assert (shifted > 0) == (slack > 0)


def test_searching_sorted_rows_gives_np_searchsorted_of_each_row():
    """Rows of every length up to 70 (empty ones too) in one buffer, values below, inside, between, on
    and above each row's values, ties and infinities (never NaN: those are not learned), both sides."""
    from detector.sortedrows import search_rows

    rng = np.random.default_rng(9)
    lengths = np.concatenate([np.arange(71), rng.integers(0, 71, 200)])
    rows = [np.sort(np.round(rng.normal(0, 3, n))) for n in lengths]
    rows[5][-2:] = np.inf
    flat = np.concatenate([np.concatenate([row, rng.normal(0, 9, 3)]) for row in rows])  # stale slots between
    base = np.concatenate([[0], np.cumsum(lengths + 3)[:-1]])
    for side in ("left", "right"):
        for values in (np.round(rng.normal(0, 4, len(rows))), np.full(len(rows), np.inf), np.full(len(rows), -50.0),
                       np.array([row[len(row) // 2] if len(row) else 0.0 for row in rows])):
            found = search_rows(flat, base, lengths, values, side)
            expected = [np.searchsorted(row, value, side) for row, value in zip(rows, values, strict=True)]
            np.testing.assert_array_equal(found, expected)


@pytest.mark.parametrize("slack", [0, 3, 40])
def test_sorted_rows_change_the_same_whether_updated_together_or_one_by_one(slack):
    """A few rows are searched and updated one by one, many in array steps: the same places, the same
    values after each replacement and the same shifts, for every kind of move (the rows of the test
    above: random and trending values, rows that grow and shrink, ties, NaN searched)."""
    from detector.sortedrows import ROW_BY_ROW, SLICE_FROM, replace_in_rows, search_rows

    rng = np.random.default_rng(11)
    count, width = 3 * ROW_BY_ROW, 3 * SLICE_FROM + 1  # odd: a full row has a middle, where moves tie
    span = width + 1 + 2 * slack
    windows = [list(np.round(rng.normal(0, 2, rng.integers(0, width)))) for _ in range(count)]
    together = np.full((count, span), np.inf)
    start = np.full(count, slack)
    for row, window in enumerate(windows):
        together[row, slack:slack + len(window)] = np.sort(window)
    alone = together.copy()
    rows = np.arange(count)
    for step in range(2 * width):
        length = np.array([len(window) for window in windows])
        trend = rows % 3 == 0
        values = np.where(trend, step + rng.random(count), np.round(rng.normal(0, 2, count)))
        shrink = (rng.random(count) < 0.05) & (length > 0)
        values[shrink] = np.inf
        full = (length >= width) | shrink
        oldest = np.array([window[0] if window else np.inf for window in windows])
        base = rows * span + start
        probe = np.where(rng.random(count) < 0.1, np.nan, values)
        for side in ("left", "right"):
            found = search_rows(together.reshape(-1), base, length, probe, side)
            each = np.concatenate([search_rows(together.reshape(-1), base[i:i + 1], length[i:i + 1], probe[i:i + 1],
                                               side) for i in range(count)])
            np.testing.assert_array_equal(found, each)
        drop = np.where(full, search_rows(together.reshape(-1), base, length, oldest), length)
        room = (start, span - start - length) if slack else None
        shift = replace_in_rows(together.reshape(-1), base, length, drop, values, room)
        for i in range(0, count, ROW_BY_ROW):  # groups small enough to go row by row
            part = slice(i, i + ROW_BY_ROW)
            part_room = (room[0][part], room[1][part]) if room is not None else None
            np.testing.assert_array_equal(
                replace_in_rows(alone.reshape(-1), base[part], length[part], drop[part], values[part], part_room),
                shift[part])
        np.testing.assert_array_equal(alone, together)
        start += shift
        for row, window in enumerate(windows):
            if full[row]:
                window.pop(0)
            if not shrink[row]:
                window.append(values[row])


def test_scoring_many_with_a_model_never_fitted_says_so():
    """score_learn_many names the problem (NotFittedError), whichever model of the batch was never fitted."""
    from detector.models.robust import RobustModel
    from detector.models.seasonal import SeasonalModel

    for cls in (SeasonalModel, RobustModel):
        models = [make_model(cls.name).fit(daily_series(2)), cls()]
        with pytest.raises(NotFittedError):
            cls.score_learn_many(models, 1.7e9, np.array([50.0, 50.0]))


def test_seasonal_models_scored_in_a_bank_keep_their_level_through_a_refit_and_a_lone_point():
    """Models of several shapes (daily, daily and weekly, none) scored together score and learn as each
    alone; one learning on its own moves its level in the bank, one fitted again leaves it, and the saved
    state is each model's."""
    import copy
    import pickle

    from detector.models.seasonal import SeasonalModel

    histories = [daily_series(days, seed=days) for days in (3, 3, 15)] + [daily_series(1)]
    models = [SeasonalModel(level_alpha=0.2).fit(h) for h in histories]
    assert len({(tuple(m.periods_), len(m.sigma_)) for m in models}) == 3
    twins = copy.deepcopy(models)
    rng = np.random.default_rng(2)
    start = histories[2].index[-1]
    for step in range(40):
        stamp = start + pd.Timedelta(minutes=step + 1)
        values = 50 + rng.normal(0, 3, len(models))
        batch = SeasonalModel.score_learn_many(models, stamp.timestamp(), values)
        for i, twin in enumerate(twins):
            frame = pd.DataFrame({"value": [values[i]]}, index=pd.DatetimeIndex([stamp]))
            single = twin.score(frame)
            twin.learn(frame)
            for column in ("expected", "lower", "upper", "score"):
                np.testing.assert_array_equal(batch[column][i], single[column].to_numpy()[0])
        if step == 10:  # alone, through the model's own learn
            frame = pd.DataFrame({"value": [51.0]}, index=pd.DatetimeIndex([stamp]))
            models[0].learn(frame)
            twins[0].learn(frame)
        if step == 20:  # fitted again: out of the bank, scored in a new one with the others
            models[1].fit(histories[2])
            twins[1].fit(histories[2])
    for model, twin in zip(models, twins, strict=True):
        assert model.level_ == twin.level_
        assert pickle.loads(pickle.dumps(model)).level_ == twin.level_
        assert "_bank" not in pickle.loads(pickle.dumps(model)).__dict__
