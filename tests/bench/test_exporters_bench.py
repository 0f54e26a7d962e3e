"""bench/exporters.py, run as users run it: a small GPU benchmark over the fake NVML."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import require_binary

pytestmark = pytest.mark.slow  # the benchmark starts exporter processes

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "exporters.py"


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300, cwd=REPO)


def test_gpu_benchmark_reports_latency_and_memory_for_2_and_8_gpus():
    require_binary("gcc", "/usr/bin/gcc")
    result = run_bench("--exporter", "gpu", "--scrapes", "5", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(row["exporter"], row["size"], row["status"]) for row in rows] == [("gpu", 2, "ok"), ("gpu", 8, "ok")]
    for row in rows:
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["rss_mib"] > 5 and row["scrapes"] == 5
        assert "fake libnvidia-ml" in row["note"]
    assert rows[1]["samples"] > rows[0]["samples"]  # 8 GPUs export more series than 2

    table = run_bench("--exporter", "gpu", "--scrapes", "3")
    assert table.returncode == 0, table.stderr
    assert "p50 ms" in table.stdout and "8 GPUs" in table.stdout and "no GPU here" in table.stdout


def test_concurrent_mode_reports_latency_refusals_and_threads():
    require_binary("gcc", "/usr/bin/gcc")
    result = run_bench("--exporter", "gpu", "--sizes", "2", "--concurrency", "4", "--duration", "2",
                       "--idle", "50", "--json")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert (row["size"], row["status"], row["clients"]) == (2, "ok", 4)
    assert row["scrapes"] > 20 and row["refused"] == 0 and row["failed"] == 0
    assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert row["threads"] < 20, "50 idle connections must not cost a thread each"
    assert run_bench("--concurrency", "500").returncode != 0


def test_as_prometheus_scrapes_openmetrics_gzipped_and_counts_the_same_samples():
    require_binary("gcc", "/usr/bin/gcc")
    rows = {}
    for mode in ((), ("--as-prometheus",)):
        result = run_bench("--exporter", "gpu", "--sizes", "2", "--scrapes", "3", *mode, "--json")
        assert result.returncode == 0, result.stderr
        [rows[mode]] = json.loads(result.stdout)
    assert rows[()]["status"] == rows[("--as-prometheus",)]["status"] == "ok"
    assert rows[("--as-prometheus",)]["samples"] == rows[()]["samples"] > 50
