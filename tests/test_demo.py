"""The demo scenario (stack/demo/): seeded, labelled as demo data, loadable by promtool, with the
incident at the end where both the raw-signal alerts and a model trained on the week see it; its
collector and history writer (stack/demo/metrics.py) carry every series, label and value of it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from boxwatch.exposition import label_text
from detector.models import make_model
from stack.demo import DemoCollector, Scenario, generate, incident, serve, write_openmetrics
from tests.harness import backfill, free_port, python_module, require_binary, wait_http

END = 1_767_225_600.0  # 2026-01-01 00:00 UTC, a fixed end keeps these tests reproducible
HOUR = 3600.0
GOLDEN = Path(__file__).parent / "golden" / "demo.prom"
UPDATE_GOLDEN = os.environ.get("BOXWATCH_UPDATE_GOLDEN") == "1"


def _series(scenario: Scenario, metric_name: str, until: float | None = None, **labels) -> tuple[np.ndarray, np.ndarray]:
    t = scenario.times(until)
    for metric, _, series_labels, values in scenario.series(t):
        found = dict(series_labels)
        if metric == metric_name and all(found.get(k) == v for k, v in labels.items()):
            return t, values
    raise AssertionError(f"no {metric_name} {labels}")


def _scrape(scenario: Scenario, now: float) -> str:
    """The text exposition of a registry holding the scenario's collector, its clock at ``now``."""
    registry = CollectorRegistry()
    registry.register(DemoCollector(scenario, clock=lambda: now))
    return generate_latest(registry).decode()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


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
        count = write_openmetrics(scenario, out)
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
    live = _samples(_scrape(scenario, scenario.end))
    checked = 0
    for (name, labels), value in history.items():
        if np.isnan(value):
            continue
        assert live[(name, tuple(sorted(labels)))] == pytest.approx(value), name
        checked += 1
    assert checked == len(live) > 150
    later = _samples(_scrape(scenario, scenario.end + 30 * 60))
    assert any(name == "boxwatch_gpu_throttle_active" and dict(labels)["gpu"] == "0" for name, labels in later)


def test_promtool_accepts_the_live_exposition(tmp_path):
    promtool = require_binary("promtool", "/usr/bin/promtool")
    text = _scrape(Scenario(END, days=0.1, step=60), END + 60)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_serve_answers_metrics_over_http():
    scenario = Scenario(time.time(), days=0.05, step=60)
    server = serve(scenario, "127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{server.port}"
        body = requests.get(f"{url}/metrics", timeout=10).text
        assert "boxwatch_gpu_temperature_celsius{" in body and 'job="boxwatch-gpu"' in body
        assert requests.get(f"{url}/nope", timeout=10).status_code == 404
        assert requests.get(f"{url}/healthz", timeout=10).text == "ok\n"
        # Prometheus asks for OpenMetrics: the same samples in that format
        answer = requests.get(f"{url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"},
                              timeout=10)
        assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
        assert answer.text.endswith("# EOF\n")
        families = {family.name for family in openmetrics_families(answer.text)}
        assert {"boxwatch_gpu_temperature_celsius", "boxwatch_container_restarts"} <= families
    finally:
        server.stop()


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
        write_openmetrics(scenario, out)
    backfill(tmp_path / "data", path.read_text(), max_block_duration="2h")
    server = serve(scenario, "127.0.0.1:0")
    try:
        prom = start_prometheus(config={
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "boxwatch-demo", "honor_labels": True,
                                "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}]}],
        }, data_dir=tmp_path / "data")
        prom.wait_for('up{job="boxwatch-demo"} == 1', timeout=30)
        prom.wait_for(f'timestamp(boxwatch_gpu_temperature_celsius{{gpu="0"}}) > {scenario.end + 1}', timeout=30)
        series = prom.query('count by (gpu) (boxwatch_gpu_temperature_celsius)')
        assert sorted(float(s["value"][1]) for s in series) == [1.0, 1.0]
        span = prom.query('count_over_time(boxwatch_gpu_temperature_celsius{gpu="0"}[7h])')
        assert float(span[0]["value"][1]) > scenario.times().size  # backfilled points plus live ones
        assert prom.query('boxwatch_gpu_throttle_active{gpu="0",reason="hw_thermal_slowdown"} == 1')
    finally:
        server.stop()


@pytest.mark.slow
def test_cli_serve(tmp_path):
    port = free_port()
    proc = subprocess.Popen(python_module("stack.demo", "serve", "--listen", f"127.0.0.1:{port}", "--days", "0.05"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30, proc=proc)
        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        xids = [dict(labels) for name, labels in _samples(body) if name == "boxwatch_gpu_xid_errors_total"]
        assert any(x["pci_bus_id"] == "00000000:01:00.0" and x["xid"] == "79" for x in xids)
    finally:
        proc.terminate()
        assert proc.wait(10) == 0  # SIGTERM stops the server cleanly


# ----------------------------------------------------------------------------- collector and history


def _characterize(text: str) -> str:
    """Every sample as one line, labels sorted, value as a float: independent of family order and format."""
    lines = {f"{name}{{{label_text(labels)}}} {float(value)!r}\n" for (name, labels), value in _samples(text).items()}
    return "".join(sorted(lines))


def test_live_exposition_matches_golden_file():
    """Half an hour into the incident, with the stack's own series: every series, label and value as
    recorded (the golden file was recorded before the collector replaced hand-written exposition)."""
    got = _characterize(_scrape(Scenario(END, days=1, step=60, runtime=True), END + 30 * 60 + 17))
    if UPDATE_GOLDEN:
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text(), "demo exposition changed; rerun with BOXWATCH_UPDATE_GOLDEN=1 if intended"


def test_collector_follows_its_clock():
    scenario = Scenario(END, days=0.5, step=60)
    inc = scenario.incident
    now = [inc.xid - 120]
    registry = CollectorRegistry()
    registry.register(DemoCollector(scenario, clock=lambda: now[0]))
    t = scenario.times(inc.xid + 60)
    xid = next(dict(labels) for name, _, labels, _ in scenario.series(t)
               if name == "boxwatch_gpu_xid_errors_total" and dict(labels)["xid"] == "79")
    temp = next(dict(labels) for name, _, labels, _ in scenario.series(t)
                if name == "boxwatch_gpu_temperature_celsius" and dict(labels)["gpu"] == "0")
    assert registry.get_sample_value("boxwatch_gpu_xid_errors_total", xid) is None  # no Xid yet: no series
    assert registry.get_sample_value("boxwatch_gpu_temperature_celsius", temp) == _series(
        scenario, "boxwatch_gpu_temperature_celsius", until=inc.xid - 120, gpu="0")[1][-1]
    now[0] = inc.xid + 60
    assert registry.get_sample_value("boxwatch_gpu_xid_errors_total", xid) == 1.0
    assert registry.get_sample_value("boxwatch_gpu_temperature_celsius", temp) >= 86


def test_history_holds_every_value_with_its_timestamp():
    """Read back with prometheus_client's OpenMetrics parser: each family once, typed as the scenario
    says, and exactly the scenario's non-NaN values at its times."""
    scenario = Scenario(END, days=0.02, step=60)
    buffer = io.StringIO()
    count = write_openmetrics(scenario, buffer)
    t = scenario.times()
    expected, kinds = {}, {}
    for name, kind, labels, values in scenario.series(t):
        kinds[name] = kind
        for stamp, value in zip(t, values, strict=True):
            if not np.isnan(value):
                expected[(name, tuple(sorted(labels)), float(stamp))] = float(value)
    families = list(openmetrics_families(buffer.getvalue()))
    assert len({family.name for family in families}) == len(families)
    read = {}
    for family in families:
        for sample in family.samples:
            assert kinds[sample.name] == family.type, sample.name
            stamp = sample.timestamp.sec + sample.timestamp.nsec / 1e9
            read[(sample.name, tuple(sorted(sample.labels.items())), stamp)] = sample.value
    assert read == expected and count == len(expected) > 5000
    # the last step is what a scrape at the scenario's end serves
    last = {(name, labels): value for (name, labels, stamp), value in read.items() if stamp == scenario.end}
    assert last == _samples(_scrape(scenario, scenario.end))
