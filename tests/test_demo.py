"""The demo scenario (stack/demo.py): seeded, labelled as demo data, loadable by promtool, with the
incident at the end where both the raw-signal alerts and a model trained on the week see it."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import numpy as np
import pandas as pd
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from detector.models import make_model
from stack.demo import Scenario, generate, incident, serve
from tests.harness import backfill, free_port, python_module, require_binary, wait_http

END = 1_767_225_600.0  # 2026-01-01 00:00 UTC, a fixed end keeps these tests reproducible
HOUR = 3600.0


def _series(scenario: Scenario, metric_name: str, until: float | None = None, **labels) -> tuple[np.ndarray, np.ndarray]:
    t = scenario.times(until)
    for metric, _, series_labels, values in scenario.series(t):
        found = dict(series_labels)
        if metric == metric_name and all(found.get(k) == v for k, v in labels.items()):
            return t, values
    raise AssertionError(f"no {metric_name} {labels}")


def test_same_seed_same_data_other_seed_other_data():
    start = END - 2 * HOUR
    first = generate(start, END, step=60, seed=3)
    assert first == generate(start, END, step=60, seed=3)
    assert first != generate(start, END, step=60, seed=4)


def test_every_series_is_labelled_as_demo_data():
    text = generate(END - HOUR, END, step=60)
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples and all('boxwatch_demo="1"' in line and 'instance="demo-box"' in line for line in samples)
    assert "DEMO DATA" in text


@pytest.mark.slow
def test_promtool_backfills_a_week(tmp_path, start_prometheus):
    scenario = Scenario(END, days=7, step=300)
    path = tmp_path / "week.om"
    with path.open("w") as out:
        count = scenario.write_openmetrics(out)
    assert count > 100_000
    backfill(tmp_path / "data", path.read_text())
    prom = start_prometheus(data_dir=tmp_path / "data")
    gpus = prom.query("count by (name) (boxwatch_gpu_up)", time=END)
    assert {g["metric"]["name"] for g in gpus} == {"NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 3060"}
    services = prom.query("count by (compose_service) (boxwatch_container_info)", time=END)
    assert {s["metric"]["compose_service"] for s in services} == {"ollama", "open-webui", "searxng"}
    # a week of history, counters monotonic (no resets): rate() over the week equals increase/duration
    resets = prom.query("sum(resets(boxwatch_journal_entries_total[7d]))", time=END)
    assert float(resets[0]["value"][1]) == 0
    first = prom.query("count(boxwatch_gpu_up)", time=END - 7 * 86400 + 600)
    assert float(first[0]["value"][1]) == 2


def test_daily_load_pattern_peaks_in_the_afternoon():
    scenario = Scenario(END, days=7, step=300)
    t, util = _series(scenario, "boxwatch_gpu_utilization_ratio", until=scenario.incident.start - 600, gpu="0")
    hours = pd.Series(util, index=pd.to_datetime(t, unit="s", utc=True)).groupby(lambda ts: ts.hour).mean()
    assert hours.idxmax() in range(12, 17) and hours.loc[3] < 0.2 < hours.loc[14]


def test_the_incident_is_at_the_end_and_only_there():
    scenario = Scenario(END, days=7, step=60)
    inc = scenario.incident
    assert inc == incident(scenario.end) and scenario.end - 3 * HOUR < inc.start < inc.xid < scenario.end < inc.end
    t, temp = _series(scenario, "boxwatch_gpu_temperature_celsius", gpu="0")
    before, during = temp[t < inc.start], temp[(t >= inc.throttle) & (t <= scenario.end)]
    assert before.max() < 82 and during.min() >= 86
    for reason in ("sw_thermal_slowdown", "hw_thermal_slowdown"):
        t, active = _series(scenario, "boxwatch_gpu_throttle_active", gpu="0", reason=reason)
        assert active[t < inc.start].max() == 0 and active[-1] == 1
    t, xid = _series(scenario, "boxwatch_gpu_xid_errors_total", xid="79")
    assert np.isnan(xid[t < inc.xid]).all() and xid[-1] == 1
    t, restarts = _series(scenario, "boxwatch_container_restarts_total", name="ollama")
    assert restarts[t < inc.xid].max() == 0 and restarts[-1] >= 4


def test_a_model_fitted_on_the_week_flags_the_incident():
    """The example detector config's journal_errors query (robust model, window 360, k 5,
    min_deviation 0.05/s) on the kernel's error rate: quiet all week, far outside its band in the burst."""
    scenario = Scenario(END, days=7, step=60)
    inc = scenario.incident
    t, count = _series(scenario, "boxwatch_journal_entries_total", unit="kernel", priority="err")
    frame = pd.DataFrame({"value": np.gradient(count, 60.0)}, index=pd.to_datetime(t, unit="s", utc=True))
    rate = frame.rolling(5, min_periods=1).mean()  # ~ rate(...[5m])
    history = rate[t < inc.start - HOUR]
    recent = rate[t >= inc.start - HOUR]
    model = make_model("robust", {"window": 360, "k": 5.0}).fit(history)
    scores = []
    for index in range(len(recent)):
        point = recent.iloc[index:index + 1]
        scored = model.score(point)
        deviation = float(point["value"].iloc[0] - scored["expected"].iloc[0])
        scores.append(float(scored["score"].iloc[0]) if deviation > 0.05 else 0.0)
        model.learn(point)
    scores = pd.Series(scores, index=recent.index)
    assert scores[scores.index < pd.Timestamp(inc.xid, unit="s", tz="UTC")].max() <= 1
    assert scores[scores.index >= pd.Timestamp(inc.xid + 300, unit="s", tz="UTC")].min() > 1


def test_live_scrape_continues_the_history():
    scenario = Scenario(END, days=1, step=60)
    history = {(name, labels): values[-1] for name, _, labels, values in scenario.series(scenario.times())}
    families = text_string_to_metric_families(scenario.exposition_at(scenario.end))
    live = {}
    for family in families:
        for sample in family.samples:
            live[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    checked = 0
    for (name, labels), value in history.items():
        if np.isnan(value):
            continue
        assert live[(name, tuple(sorted(labels)))] == pytest.approx(value), name
        checked += 1
    assert checked == len(live) > 150
    later = scenario.exposition_at(scenario.end + 30 * 60)
    assert 'boxwatch_gpu_throttle_active{gpu="0"' in later


def test_promtool_accepts_the_live_exposition(tmp_path):
    promtool = require_binary("promtool", "/usr/bin/promtool")
    text = Scenario(END, days=0.1, step=60).exposition_at(END + 60)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_serve_answers_metrics_over_http():
    scenario = Scenario(time.time(), days=0.05, step=60)
    server = serve(scenario, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        body = requests.get(f"{url}/metrics", timeout=10).text
        assert "boxwatch_gpu_temperature_celsius{" in body and 'job="boxwatch-gpu"' in body
        assert requests.get(f"{url}/nope", timeout=10).status_code == 404
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_cli_generate_and_incident(tmp_path):
    out = tmp_path / "demo.om"
    result = subprocess.run(python_module("stack.demo", "--out", str(out), "--days", "0.1", "--end", str(END)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.read_text().endswith("# EOF\n")
    assert json.loads(result.stderr.strip().splitlines()[-1])["samples"] > 1000
    result = subprocess.run(python_module("stack.demo", "incident", "--end", str(END)),
                            capture_output=True, text=True, timeout=120)
    times = json.loads(result.stdout)
    assert times["xid"] == END - 20 * 60 and times["xid_code"] == "79" and times["scenario_end"] == END
    bad = subprocess.run(python_module("stack.demo", "--out", str(out), "--end", "yesterday"),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--end 'yesterday'" in bad.stderr


@pytest.mark.slow
def test_backfill_then_live_scrape_is_one_continuous_series(tmp_path, start_prometheus):
    """What `boxwatch-stack up --demo` does: backfill the history, then scrape the live continuation
    with honor_labels. The live samples land on the backfilled series (same labels), not beside them."""
    scenario = Scenario(time.time(), days=0.25, step=60)
    path = tmp_path / "demo.om"
    with path.open("w") as out:
        scenario.write_openmetrics(out)
    backfill(tmp_path / "data", path.read_text(), max_block_duration="2h")
    server = serve(scenario, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        prom = start_prometheus(config={
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "boxwatch-demo", "honor_labels": True,
                                "static_configs": [{"targets": [f"127.0.0.1:{server.server_address[1]}"]}]}],
        }, data_dir=tmp_path / "data")
        prom.wait_for('up{job="boxwatch-demo"} == 1', timeout=30)
        prom.wait_for(f'timestamp(boxwatch_gpu_temperature_celsius{{gpu="0"}}) > {scenario.end + 1}', timeout=30)
        series = prom.query('count by (gpu) (boxwatch_gpu_temperature_celsius)')
        assert sorted(float(s["value"][1]) for s in series) == [1.0, 1.0]
        span = prom.query('count_over_time(boxwatch_gpu_temperature_celsius{gpu="0"}[7h])')
        assert float(span[0]["value"][1]) > scenario.times().size  # backfilled points plus live ones
        assert prom.query('boxwatch_gpu_throttle_active{gpu="0",reason="hw_thermal_slowdown"} == 1')
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_cli_serve(tmp_path):
    port = free_port()
    proc = subprocess.Popen(python_module("stack.demo", "serve", "--listen", f"127.0.0.1:{port}", "--days", "0.05"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30, proc=proc)
        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'boxwatch_gpu_xid_errors_total{pci_bus_id="00000000:01:00.0",xid="79"' in body
    finally:
        proc.terminate()
        proc.wait(10)
