"""bench/nab.py end to end: hand-made NAB-layout files in, result files and NAB scores out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.nab import SHIPPED, read_nab_file, recalibrate, replay, rising_edges, to_anomaly_score
from detector.calibration import HELD

REPO = Path(__file__).resolve().parents[2]
REAL_NAB = Path(os.environ.get("BOXWATCH_NAB_DIR", REPO.parent / "shared" / "bench" / "nab"))


def write_corpus(root: Path) -> tuple[Path, Path]:
    """Two five-minute files in two categories: a level jump at row 700, and one without anomalies."""
    rng = np.random.default_rng(0)
    ts = pd.date_range("2026-01-01", periods=1000, freq="5min")
    stamp = ts.strftime("%Y-%m-%d %H:%M:%S")
    jump = 20 + rng.normal(0, 1, 1000)
    jump[700:] += 15
    (root / "data" / "synthetic").mkdir(parents=True)
    (root / "data" / "other").mkdir(parents=True)
    pd.DataFrame({"timestamp": stamp, "value": jump}).to_csv(
        root / "data" / "synthetic" / "jump.csv", index=False
    )
    pd.DataFrame({"timestamp": stamp, "value": 20 + rng.normal(0, 1, 1000)}).to_csv(
        root / "data" / "other" / "quiet.csv", index=False
    )
    windows = {
        "synthetic/jump.csv": [[f"{ts[650]}.000000", f"{ts[749]}.000000"]],
        "other/quiet.csv": [],
    }
    (root / "windows.json").write_text(json.dumps(windows))
    return root / "data", root / "windows.json"


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.nab", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_bench_runs_end_to_end_on_a_hand_made_corpus(tmp_path):
    data, windows = write_corpus(tmp_path)
    results = tmp_path / "results"
    report = tmp_path / "report.json"
    done = run_bench(
        "--data", str(data), "--windows", str(windows), "--results", str(results),
        "--models", "shipped,robust", "--profiles", str(tmp_path / "absent.json"), "--json", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 files, 1 windows" in done.stdout
    for spec in ("shipped", "robust"):
        frame = pd.read_csv(results / spec / "synthetic" / "jump.csv")
        assert list(frame.columns[:4]) == ["timestamp", "value", "anomaly_score", "score"]
        assert len(frame) == 1000
        assert frame.anomaly_score.between(0, 1).all()
        assert frame.score.iloc[:10].isna().all()  # the stand-in has too little history
    scores = json.loads(report.read_text())
    # the jump at row 700 is caught at once by the rule operators get (score > 1)
    rule = scores["shipped"]["shipped_rule"]["standard"]
    assert rule["tp"] == 1 and rule["fp"] <= 8 and rule["threshold"] == 1.0 and rule["normalized"] > 40
    assert scores["shipped"]["swept"]["standard"]["normalized"] > 40
    assert set(scores["robust"]["swept"]) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    assert set(scores["shipped"]["categories"]) == {"synthetic", "other"}
    # the shipped model publishes its own score: no calibration to choose per fold (bench.nab_loco)
    assert "no calibration is chosen" in scores["shipped"]["leave_one_category_out"]["note"]
    assert "shipped" in done.stdout and "shipped per category" in done.stdout


@pytest.mark.slow
def test_bench_reports_a_missing_data_folder(tmp_path):
    done = run_bench("--data", str(tmp_path / "nope"), "--windows", str(tmp_path / "w.json"))
    assert done.returncode == 2
    assert "does not exist" in done.stderr


def test_published_scores_do_not_depend_on_future_rows(tmp_path):
    data, _ = write_corpus(tmp_path)
    frame = read_nab_file(data / "synthetic" / "jump.csv")
    full, full_raw, _ = replay("shipped", frame)
    cut, cut_raw, _ = replay("shipped", frame.iloc[:720])
    np.testing.assert_array_equal(full[:720], cut)
    np.testing.assert_array_equal(full_raw[:720], cut_raw)
    assert np.isnan(full[:10]).all() and not np.isnan(full[60:]).any()
    assert full[700] > 1 and (full[701:711] == HELD).all()  # caught at once, held (the alert's `for`)
    assert rising_edges(full[690:]).sum() == 1 and (full[851:] <= 1).all()  # once: the shift is learned
    assert rising_edges(full[400:690]).sum() <= 2  # new extremes of the noise, at most


def test_a_row_off_the_grid_gets_its_own_score(tmp_path):
    """Rows two minutes past the five-minute grid (most real NAB files): each row's score is the one
    published at the next grid point, the first whose value it is, not the previous row's; a row
    followed by another before that grid point never reads it."""
    data, _ = write_corpus(tmp_path)
    frame = read_nab_file(data / "synthetic" / "jump.csv")
    frame.index = frame.index + pd.Timedelta("2min")
    spike = frame.index[400] + pd.Timedelta("1min")  # a spike one minute after row 400, before the grid point
    frame = pd.concat([frame, pd.DataFrame({"value": [60.0]}, index=[spike])]).sort_index()
    full, _, _ = replay("shipped", frame)
    cut, _, _ = replay("shipped", frame.iloc[:721])
    np.testing.assert_array_equal(full[:721], cut)
    assert full[400] <= 1 and full[401] > 1  # row 400 is published before the spike is read
    assert full[701] > 1 and full[700] <= 1  # the jump (now row 701) is reported at its own row
    assert (full[702:712] == HELD).all()


def test_a_refit_in_the_middle_of_an_incident_does_not_report_it_again(tmp_path):
    """The service installs a refit's models while the jump's score is held: the hold and the rest
    period go on with the new models (one rising edge, held for the alert's ``for``)."""
    from bench.nab import ALIAS, file_detector, published

    data, _ = write_corpus(tmp_path)
    frame = read_nab_file(data / "synthetic" / "jump.csv")[:780]
    detector, clock = file_detector("shipped", frame, str(tmp_path / "state"))
    times = frame.index.asi8 / 1e9
    scores = []
    for i, now in enumerate(times.tolist()):
        if i in (300, 703):  # the second refit sees three rows of the jump
            clock["now"] = times[i - 1]
            assert detector.fit_query(ALIAS, clock["now"]) is not None
        clock["now"] = now
        detector.run_cycle(now)
        scores.append(published(detector, now)[0])
    scores = np.array(scores)
    assert scores[700] > 1 and (scores[701:711] == HELD).all()
    assert rising_edges(scores[690:]).sum() == 1


def test_recalibrating_raw_scores_gives_the_published_scores(tmp_path):
    data, _ = write_corpus(tmp_path)
    frame = read_nab_file(data / "synthetic" / "jump.csv")
    score, raw, fits = replay("ensemble", frame)
    assert fits[:3] == [50, 100, 200]
    np.testing.assert_array_equal(recalibrate(raw, fits, {}), score)


def test_the_shipped_model_publishes_its_own_score(tmp_path):
    data, _ = write_corpus(tmp_path)
    score, raw, _ = replay("shipped", read_nab_file(data / "synthetic" / "jump.csv")[:300])
    assert SHIPPED["model"] == "context"
    np.testing.assert_array_equal(score[60:], raw[60:])  # after the first fit: no calibration


def test_rising_edges_and_the_nab_map():
    score = np.array([np.nan, 0.5, 1.5, 3.0, 0.2, 1.0, 2.0, 2.0])
    assert rising_edges(score).tolist() == [0, 0, 1, 0, 0, 0, 1, 0]
    mapped = to_anomaly_score(score)
    assert mapped[0] == 0 and (np.diff(mapped[1:4]) > 0).all() and (mapped < 1).all()


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_NAB / "data").is_dir(), reason="NAB data (../shared/bench/nab) not present")
def test_bench_on_real_nab_files(tmp_path):
    done = run_bench(
        "--data", str(REAL_NAB / "data"), "--windows", str(REAL_NAB / "labels" / "combined_windows.json"),
        "--profiles", str(REAL_NAB / "profiles.json"), "--results", str(tmp_path),
        "--files", "art_daily_jumpsup,ec2_cpu_utilization_825cc2", "--models", "shipped",
        "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "r.json").read_text())["shipped"]
    for way in ("swept", "shipped_rule"):
        assert scores[way]["standard"]["tp"] + scores[way]["standard"]["fn"] == 2
        assert 0 <= scores[way]["standard"]["normalized"] <= 100
