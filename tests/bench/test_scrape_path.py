"""bench/scrape_path.py, run as users run it: every case and format at two sizes, as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the benchmark as a process

REPO = Path(__file__).resolve().parents[2]


def test_scrape_path_benchmark_reports_each_case_format_and_size():
    result = subprocess.run([sys.executable, "-m", "bench.scrape_path", "--sizes", "2,20", "--scrapes", "12",
                             "--clients", "3", "--json"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {(r["case"], r["format"], r["containers"]) for r in rows} == {
        (case, fmt, n) for case in ("quiet", "events", "worst") for fmt in ("text", "openmetrics+gzip")
        for n in (2, 20)}
    for r in rows:
        assert r["scrapes"] == (12 // 3 * 3 if r["case"] == "worst" else 12)
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
    text = {(r["case"], r["containers"]): r["bytes"] for r in rows if r["format"] == "text"}
    gzipped = {(r["case"], r["containers"]): r["bytes"] for r in rows if r["format"] != "text"}
    assert all(gzipped[key] < text[key] for key in text), "the gzip'd bodies are compressed"
    assert text[("quiet", 20)] > text[("quiet", 2)] and text[("events", 20)] > text[("quiet", 20)]
    assert all(r["publishes_meanwhile"] >= 1 for r in rows if r["case"] == "worst")
