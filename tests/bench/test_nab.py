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

from bench.nab import OnlineConfig, alert_once, read_nab_file, record_score, run_online, to_nab

REPO = Path(__file__).resolve().parents[2]
REAL_NAB = Path(os.environ.get("BOXWATCH_NAB_DIR", REPO.parent / "shared" / "bench" / "nab"))


def write_corpus(root: Path) -> tuple[Path, Path]:
    """Two five-minute files: one with a level jump at row 700, one without anomalies."""
    rng = np.random.default_rng(0)
    ts = pd.date_range("2026-01-01", periods=1000, freq="5min")
    stamp = ts.strftime("%Y-%m-%d %H:%M:%S")
    jump = 20 + rng.normal(0, 1, 1000)
    jump[700:] += 15
    (root / "data" / "synthetic").mkdir(parents=True)
    pd.DataFrame({"timestamp": stamp, "value": jump}).to_csv(
        root / "data" / "synthetic" / "jump.csv", index=False
    )
    pd.DataFrame({"timestamp": stamp, "value": 20 + rng.normal(0, 1, 1000)}).to_csv(
        root / "data" / "synthetic" / "quiet.csv", index=False
    )
    windows = {
        "synthetic/jump.csv": [[f"{ts[650]}.000000", f"{ts[749]}.000000"]],
        "synthetic/quiet.csv": [],
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
        "--models", "robust,iforest,robust+iforest", "--profiles", str(tmp_path / "absent.json"),
        "--json", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 files, 1 windows" in done.stdout
    for spec in ("robust", "iforest", "robust+iforest"):
        frame = pd.read_csv(results / spec / "synthetic" / "jump.csv")
        assert list(frame.columns[:3]) == ["timestamp", "value", "anomaly_score"]
        assert len(frame) == 1000
        assert frame.anomaly_score.between(0, 1).all()
        assert frame.anomaly_score.iloc[:50].eq(0).all()  # before the first fit
    scores = json.loads(report.read_text())
    # the jump at row 700 is caught right away (credit ~0.86 of 1) and the quiet file stays quiet
    assert scores["robust"]["standard"]["normalized"] > 85
    assert scores["robust"]["standard"]["fp"] == 0
    assert set(scores["robust"]) >= {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}


@pytest.mark.slow
def test_bench_reports_a_missing_data_folder(tmp_path):
    done = run_bench("--data", str(tmp_path / "nope"), "--windows", str(tmp_path / "w.json"))
    assert done.returncode == 2
    assert "does not exist" in done.stderr


def test_online_scores_do_not_depend_on_future_rows(tmp_path):
    data, _ = write_corpus(tmp_path)
    frame = read_nab_file(data / "synthetic" / "jump.csv")
    config = OnlineConfig()
    for model in ("robust", "seasonal"):
        full = run_online(model, frame, config)
        cut = run_online(model, frame.iloc[:720], config)
        np.testing.assert_array_equal(full[:720], cut)
        assert np.isnan(full[:50]).all() and not np.isnan(full[60:]).any()


def test_adapter_keeps_first_crossing_and_normalises_streams():
    scores = np.array([0.0, 0.5, 3.0, 4.0, 3.5, 0.2, 0.1, 0.1])
    assert alert_once(scores, 3).tolist() == [0.0, 0.5, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]
    # a record over the recent maximum, in log units; ties and lower values are not records
    record = record_score(np.array([1.0, 1.0, 3.0, 2.0]), window=10)
    np.testing.assert_allclose(record, [np.log(2), 0.0, np.log(4) - np.log(2), np.log(3) - np.log(4)])
    nab = to_nab(
        [np.array([0.0, 9.0, 0.0]), np.array([0.0, 0.0, 99.0])],
        OnlineConfig(suppress_rows=0, record_window=5),
    )
    assert nab[0] == 0 and 0 < nab[1] < nab[2] < 1


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_NAB / "data").is_dir(), reason="NAB data (../shared/bench/nab) not present")
def test_bench_on_real_nab_files(tmp_path):
    done = run_bench(
        "--data", str(REAL_NAB / "data"), "--windows", str(REAL_NAB / "labels" / "combined_windows.json"),
        "--profiles", str(REAL_NAB / "profiles.json"), "--results", str(tmp_path),
        "--files", "art_daily_jumpsup,ec2_cpu_utilization_825cc2", "--models", "robust",
        "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "r.json").read_text())["robust"]
    assert scores["standard"]["tp"] + scores["standard"]["fn"] == 2
    assert 0 <= scores["standard"]["normalized"] <= 100
