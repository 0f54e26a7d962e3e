"""``boxwatch-detector backfill``: scores of a past range, loaded by promtool or remote-written,
queried back through PromQL."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
import yaml

from tests.detector.conftest import detector_config, wave
from tests.harness import REPO, backfill, python_module, require_binary

pytestmark = pytest.mark.slow  # promtool, Prometheus and the detector CLI as processes

STEP = 60
END = (int(time.time()) // 3600 - 1) * 3600
INCIDENT = (END - 6 * 3600, END - 6 * 3600 + 1800)  # 30 minutes, six hours before the end


def history() -> dict:
    start = END - 2 * 86400
    calm = wave(start, END, STEP, seed=11)
    hot = [(t, v + (25.0 if INCIDENT[0] <= t < INCIDENT[1] else 0.0)) for t, v in wave(start, END, STEP, seed=12)]
    return {("bf_test_value", (("gpu", "0"),)): calm, ("bf_test_value", (("gpu", "1"),)): hot}


def run_backfill(config_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(python_module("detector", "backfill", "--config", str(config_path), *args),
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def scores(prom, gpu: str, start: float, end: float, extra: str = "") -> dict[float, float]:
    result = prom.query_range(f'boxwatch_anomaly_score{{query="bf",gpu="{gpu}"{extra}}}', start, end, STEP)
    assert len(result) == 1, result
    return {float(ts): float(v) for ts, v in result[0]["values"]}


def test_backfill_to_openmetrics_and_remote_write_is_queryable(history_prometheus, start_prometheus, tmp_path):
    source = history_prometheus(
        history(), extra_args=["--web.enable-remote-write-receiver"],
        config={"global": {"scrape_interval": "15s"}, "storage": {"tsdb": {"out_of_order_time_window": "7d"}}})
    config = detector_config(source.url, tmp_path / "state", {
        "bf": {"expr": "bf_test_value", "step": "1m", "fit_window": "12h", "fit_every": "6h",
               "direction": "above", "min_deviation": 3}})
    config_path = tmp_path / "detector.yml"
    config_path.write_text(yaml.safe_dump(config))
    output = tmp_path / "scores.om"
    start = END - 86400
    result = run_backfill(config_path, "--from", str(start), "--to", str(END), "--output", str(output),
                          "--remote-write-url", f"{source.url}/api/v1/write")
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert text.endswith("# EOF\n")
    assert "# TYPE boxwatch_anomaly_score gauge" in text

    data = tmp_path / "scores-data"
    backfill(data, text)
    loaded = start_prometheus(data_dir=data)
    for prom in (loaded, source):
        hot = scores(prom, "1", start, END)
        calm = scores(prom, "0", start, END)
        assert len(hot) == len(calm) == 1441  # every minute of the range, both series
        during = [v for t, v in hot.items() if INCIDENT[0] <= t < INCIDENT[1]]
        before = [v for t, v in hot.items() if t < INCIDENT[0]]
        assert min(during) > 1, during  # the whole incident stands out (the baseline does not learn it)
        assert max(before) <= 1 and max(calm.values()) <= 1
    labels = loaded.query(f'boxwatch_anomaly_expected_upper{{gpu="1"}} @ {END}')[0]["metric"]
    assert labels == {"__name__": "boxwatch_anomaly_expected_upper", "gpu": "1", "query": "bf", "model": "robust"}
    np.testing.assert_allclose(list(scores(loaded, "1", start, END).values()),
                               list(scores(source, "1", start, END).values()))


def test_backfill_needs_an_output_and_a_valid_range(tmp_path):
    config_path = tmp_path / "detector.yml"
    config_path.write_text(yaml.safe_dump(detector_config("http://127.0.0.1:9", tmp_path, {"q": {"expr": "up"}})))
    assert "give --output" in run_backfill(config_path, "--from", "now-1h").stderr
    bad = run_backfill(config_path, "--from", "yesterday", "--output", "x")
    assert bad.returncode == 2 and "--from" in bad.stderr
    reversed_range = run_backfill(config_path, "--from", "now-1h", "--to", "now-2h", "--output", "x")
    assert "--to must be after --from" in reversed_range.stderr
    unreachable = run_backfill(config_path, "--from", "now-1h", "--output", str(tmp_path / "o.om"))
    assert unreachable.returncode == 1 and "unreachable" in unreachable.stderr


def test_promtool_accepts_the_output_of_a_multi_query_backfill(history_prometheus, tmp_path):
    promtool = require_binary("promtool", "/usr/bin/promtool")
    source = history_prometheus(history())
    queries = {"bf": {"expr": "bf_test_value", "step": "1m", "fit_window": "6h", "fit_every": "6h"},
               "bf_sum": {"expr": "sum(bf_test_value)", "step": "5m", "fit_window": "12h", "fit_every": "12h"}}
    config_path = tmp_path / "detector.yml"
    config_path.write_text(yaml.safe_dump(detector_config(source.url, tmp_path, queries)))
    output = tmp_path / "scores.om"
    assert run_backfill(config_path, "--from", str(END - 6 * 3600), "--to", str(END),
                        "--output", str(output)).returncode == 0
    result = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(output),
                             str(tmp_path / "blocks")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'query="bf_sum"' in output.read_text()
