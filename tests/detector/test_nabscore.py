"""The NAB scorer on hand-made files whose scores are worked out by hand below."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from detector.nabscore import (
    STANDARD_PROFILES,
    Profile,
    load_profiles,
    probation_length,
    scaled_sigmoid,
    score_corpus,
)

STANDARD, LOW_FP, LOW_FN = STANDARD_PROFILES
NAB = Path(
    os.environ.get("BOXWATCH_NAB_DIR", Path(__file__).resolve().parents[3] / "shared" / "bench" / "nab")
)


def s(y: float) -> float:
    """The scaled sigmoid written out again, so the tests do not trust the module's own."""
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def make_file(n: int, window: tuple[int, int] | None, hits: dict[int, float]):
    """A file of ``n`` five-minute rows, one window over rows ``window``, scores ``hits`` else 0."""
    ts = pd.date_range("2026-01-01", periods=n, freq="5min")
    scores = np.zeros(n)
    for row, value in hits.items():
        scores[row] = value
    windows = [] if window is None else [[str(ts[window[0]]), str(ts[window[1]])]]
    return (ts, scores), windows


def score_one(n, window, hits, profiles=STANDARD_PROFILES):
    data, windows = make_file(n, window, hits)
    return score_corpus({"f.csv": data}, {"f.csv": windows}, profiles)


def test_scaled_sigmoid_values_and_cutoff():
    assert scaled_sigmoid(0.0) == pytest.approx(0.0)
    assert scaled_sigmoid(-1.0) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert scaled_sigmoid(3.0) == pytest.approx(s(3.0))
    assert scaled_sigmoid(3.0001) == -1.0


def test_probation_length():
    assert probation_length(20) == 3  # floor(0.15 * 20)
    assert probation_length(4032) == 604
    assert probation_length(15903) == 750  # capped at 0.15 * 5000


def test_perfect_detector_scores_100_on_every_profile():
    # N=20, window rows 10..14 (w=5); a detection at its first row earns s(-5/5)/s(-1) = A_TP.
    result = score_one(20, (10, 14), {10: 1.0})
    for profile in STANDARD_PROFILES:
        assert result[profile.name].normalized == pytest.approx(100.0)
        assert result[profile.name].raw == pytest.approx(1.0)
        assert (result[profile.name].tp, result[profile.name].fp, result[profile.name].fn) == (1, 0, 0)


def test_null_detector_scores_0_because_firing_everywhere_is_worse():
    # All scores 0: threshold 0 fires on rows 30..199; 120 rows before the window cost 0.11 each,
    # far more than the -1 of the missed window, so the sweep keeps "never fire": raw -1, score 0.
    result = score_one(200, (150, 159), {})
    assert result["standard"].raw == pytest.approx(-1.0)
    assert result["standard"].normalized == pytest.approx(0.0)
    assert result["standard"].threshold == math.inf
    assert result["reward_low_FN_rate"].raw == pytest.approx(-2.0)


def test_single_early_true_positive():
    # Detection at row 11 of window 10..14: s(-(14 - 11 + 1) / 5) / s(-1) = s(-0.8) / s(-1).
    credit = s(-0.8) / s(-1.0)
    assert credit == pytest.approx(0.97711, abs=1e-5)
    result = score_one(20, (10, 14), {11: 0.7})
    assert result["standard"].raw == pytest.approx(credit)
    assert result["standard"].normalized == pytest.approx(100 * (credit + 1) / 2)
    assert result["standard"].threshold == 0.7


def test_late_detection_earns_little():
    # Last row of the window: s(-1/5) / s(-1) = 0.4684...
    result = score_one(20, (10, 14), {14: 1.0})
    assert result["standard"].raw == pytest.approx(s(-0.2) / s(-1.0))
    assert result["standard"].raw == pytest.approx(0.46839, abs=1e-4)


def test_window_counts_only_its_earliest_detection():
    # Rows 10, 12 and 13 all detected: one window, credit of row 10 only, and no false positives.
    result = score_one(20, (10, 14), {10: 0.5, 12: 0.9, 13: 0.9})
    assert result["standard"].raw == pytest.approx(1.0)
    assert (result["standard"].tp, result["standard"].fp) == (1, 0)


def test_false_positive_just_after_a_window_costs_little():
    # Row 15 (one after r=14, w=5): 0.11 * s(|15 - 14| / (5 - 1)) = 0.11 * s(0.25) = -0.0610.
    # Row 15 scores higher than the TP at row 10, so no threshold keeps the TP without the FP.
    cost = 0.11 * s(0.25)
    assert cost == pytest.approx(-0.06101, abs=1e-5)
    result = score_one(20, (10, 14), {15: 0.9, 10: 0.8})
    assert result["standard"].raw == pytest.approx(1.0 + cost)
    assert result["standard"].threshold == 0.8
    assert result["reward_low_FP_rate"].raw == pytest.approx(1.0 + 2 * cost)
    assert result["standard"].fp == 1


def test_false_positive_before_any_window_costs_full_weight():
    result = score_one(20, (10, 14), {5: 0.9, 10: 0.8})
    assert result["standard"].raw == pytest.approx(1.0 - 0.11)
    assert result["reward_low_FP_rate"].raw == pytest.approx(1.0 - 0.22)


def test_false_positive_far_after_a_window_costs_full_weight():
    # |i - r| / (w - 1) = 13 / 4 > 3: s forced to -1.
    result = score_one(40, (10, 14), {27: 0.9, 10: 0.8})
    assert result["standard"].raw == pytest.approx(1.0 - 0.11)
    # At 12 rows after (12/4 = 3, not above the cut-off) the sigmoid applies.
    result = score_one(40, (10, 14), {26: 0.9, 10: 0.8})
    assert result["standard"].raw == pytest.approx(1.0 + 0.11 * s(3.0))


def test_probation_rows_are_ignored():
    # N=20: rows 0..2 are probation; detections there are neither false positives nor counted.
    result = score_one(20, (10, 14), {0: 1.0, 1: 1.0, 2: 1.0, 10: 1.0})
    assert result["standard"].normalized == pytest.approx(100.0)
    assert result["standard"].fp == 0
    # Row 3 is the first scored row: a detection there is a full false positive.
    result = score_one(20, (10, 14), {3: 1.0, 10: 1.0})
    assert result["standard"].raw == pytest.approx(1.0 - 0.11)


def test_one_threshold_for_the_whole_corpus():
    # File a: TP at row 10 (0.6). File b: FP before its window at 0.9 and TP at row 10 at 0.5.
    # Thresholds: 0.9 -> -0.11 - 2 = -2.11; 0.6 -> 1 - 0.11 - 1 = -0.11; 0.5 -> 2 - 0.11 = 1.89.
    a, wa = make_file(20, (10, 14), {10: 0.6})
    b, wb = make_file(20, (10, 14), {4: 0.9, 10: 0.5})
    result = score_corpus({"x/a.csv": a, "x/b.csv": b}, {"x/a.csv": wa, "x/b.csv": wb})
    assert result["standard"].raw == pytest.approx(1.89)
    assert result["standard"].threshold == 0.5
    assert result["standard"].normalized == pytest.approx(100 * (1.89 + 2) / 4)
    # With A_FP = 0.22 the best is still 0.5: 2 - 0.22 = 1.78.
    assert result["reward_low_FP_rate"].raw == pytest.approx(1.78)


def test_file_without_windows_only_has_false_positives():
    a, wa = make_file(20, (10, 14), {10: 0.8})
    b, wb = make_file(20, None, {6: 0.9, 7: 0.8})
    result = score_corpus({"a.csv": a, "b.csv": b}, {"a.csv": wa, "b.csv": wb})
    # 0.9: -1 - 0.11; 0.8: 1 - 0.22 = 0.78 (better than null -1)
    assert result["standard"].raw == pytest.approx(0.78)


def test_custom_profile_and_normalisation_with_two_windows():
    profile = Profile("custom", tp=2.0, fn=0.5, fp=0.3)
    ts = pd.date_range("2026-01-01", periods=40, freq="h")
    scores = np.zeros(40)
    scores[10] = 1.0  # first row of window 1 (rows 10..14)
    windows = [[str(ts[10]), str(ts[14])], [str(ts[30]), str(ts[33])]]
    result = score_corpus({"f.csv": (ts, scores)}, {"f.csv": windows}, [profile])["custom"]
    # raw = 2 (TP) - 0.5 (missed window 2); perfect 4, null -1 -> 100 * 2.5 / 5 = 50
    assert result.raw == pytest.approx(1.5)
    assert result.normalized == pytest.approx(50.0)


def test_nan_scores_and_missing_windows_are_errors():
    (ts, scores), windows = make_file(20, (10, 14), {})
    scores[5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        score_corpus({"f.csv": (ts, scores)}, {"f.csv": windows})
    with pytest.raises(KeyError, match="g.csv"):
        score_corpus({"g.csv": (ts, np.zeros(20))}, {"f.csv": windows})


def test_load_profiles_reads_nab_json(tmp_path):
    path = tmp_path / "profiles.json"
    path.write_text(
        '{"p": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 2.0, "fpWeight": 0.5, "tnWeight": 1}}}'
    )
    assert load_profiles(path) == [Profile("p", 1.0, 2.0, 0.5)]
    path.write_text('{"p": {"CostMatrix": {"tpWeight": 1.0}}}')
    with pytest.raises(ValueError, match="profile 'p'"):
        load_profiles(path)


@pytest.mark.skipif(not (NAB / "profiles.json").exists(), reason="NAB data not present")
def test_shipped_profiles_match_the_readme():
    assert load_profiles(NAB / "profiles.json") == list(STANDARD_PROFILES)
