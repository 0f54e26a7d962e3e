"""mixin/: the committed rule files, thresholds list and dashboards are what the generator writes, and
a number changed in mixin/config.py reaches every place that shows it."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from boxwatch.jobs import JOBS
from mixin import dashboards, generate, rules
from mixin.config import CONFIG
from tests.harness import REPO, require_binary


def rule(cfg, name: str, severity: str) -> dict:
    [found] = [r for f in rules.rule_files(cfg) for g in f.groups for r in g["rules"]
               if r.get("alert") == name and r["labels"]["severity"] == severity]
    return found


def panel(cfg, dashboard: str, title: str) -> dict:
    [found] = [p for p in json.loads(dashboards.render(cfg)[dashboard])["panels"] if p["title"] == title]
    return found


def threshold_lines(panel_: dict) -> list[float]:
    return [step["value"] for step in panel_["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]


def test_committed_files_are_current():
    assert generate.main(["--check"]) == 0, "run python -m mixin.generate"
    assert generate.stale() == {}


def test_check_reports_a_stale_file(capsys):
    changed = CONFIG.with_threshold("ContainerUnhealthy", "warning", for_="7m")
    stale = generate.stale(changed)
    assert set(stale) == {generate.RULES_DIR / "containers.yml", generate.THRESHOLDS, generate.ALERTS_DOC}
    assert "+        for: 7m" in stale[generate.RULES_DIR / "containers.yml"]
    assert "| warning | `max without (image, status)" in stale[generate.ALERTS_DOC]


def test_a_threshold_change_reaches_every_file_that_shows_it():
    changed = CONFIG.with_threshold("JournalErrorBurst", "warning", threshold=0.5)
    assert set(generate.stale(changed)) == {
        generate.RULES_DIR / "journal.yml", generate.THRESHOLDS, generate.ALERTS_DOC,
        generate.DASHBOARDS_DIR / "journal.json", generate.DASHBOARDS_DOC}
    assert "(0.5/s and 1/s)" in generate.stale(changed)[generate.DASHBOARDS_DOC]


def test_the_alerts_doc_needs_its_markers(tmp_path):
    document = generate.ALERTS_DOC.read_text()
    assert generate.splice(document, "x\n", tmp_path / "a.md").count("x\n") >= 1
    with pytest.raises(ValueError, match="marker"):
        generate.splice(document.replace(generate.END, ""), "x\n", tmp_path / "a.md")


def test_check_reports_a_file_it_does_not_generate(tmp_path, monkeypatch):
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for path, text in generate.generated().items():
        if path.parent == generate.RULES_DIR:
            (rules_dir / path.name).write_text(text)
    (rules_dir / "extra.yml").write_text("groups: []\n")
    monkeypatch.setattr(generate, "RULES_DIR", rules_dir)
    assert list(generate.stale()) == [rules_dir / "extra.yml"]


def test_output_is_byte_stable():
    assert generate.generated() == generate.generated()


@pytest.mark.parametrize(("alert", "severity", "value", "dashboard", "title", "line"), [
    ("AnomalyScoreHigh", "critical", 3, "anomaly-overview.json", "Anomaly scores", 3),
    ("AnomalyScoreHigh", "warning", 1.5, "anomaly-overview.json", "Highest anomaly score", 1.5),
    ("GpuTemperatureHigh", "warning", 80, "gpus.json", "Hottest GPU", 80),
    ("HostCpuTemperatureHigh", "critical", 98, "gpus.json", "CPU temperature", 98),
    ("JournalErrorBurst", "warning", 0.5, "journal.json", "Errors by unit", 30),  # drawn per minute
    ("BoxwatchDetectorNotScoring", "warning", 900, "detector-health.json", "Last successful cycle", 900),
])
def test_a_threshold_changes_the_rule_and_the_dashboard_line(alert, severity, value, dashboard, title, line):
    changed = CONFIG.with_threshold(alert, severity, threshold=value)
    before, after = rule(CONFIG, alert, severity)["expr"], rule(changed, alert, severity)["expr"]
    assert before != after and rules.num(value) in after
    assert line not in threshold_lines(panel(CONFIG, dashboard, title))
    assert line in threshold_lines(panel(changed, dashboard, title))
    entry = yaml.safe_load(generate.render_thresholds(changed))["alerts"][alert][severity]
    assert entry["threshold"] == value


def test_a_margin_changes_the_rule_and_the_panel_description():
    changed = CONFIG.with_threshold("GpuTemperatureHigh", "critical", margin=5)
    assert "boxwatch_gpu_slowdown_temperature_celsius - 5)" in rule(changed, "GpuTemperatureHigh", "critical")["expr"]
    assert "within 5 °C" in rule(changed, "GpuTemperatureHigh", "critical")["annotations"]["description"]
    title = "Temperature and the card's slowdown temperature"
    assert "3 °C (critical)" in panel(CONFIG, "gpus.json", title)["description"]
    assert "5 °C (critical)" in panel(changed, "gpus.json", title)["description"]


def test_a_for_duration_changes_the_rule_and_its_annotations():
    changed = CONFIG.with_threshold("AnomalyScoreHigh", "critical", for_="30m")
    changed_rule = rule(changed, "AnomalyScoreHigh", "critical")
    assert changed_rule["for"] == "30m"
    assert changed_rule["annotations"]["summary"].endswith("for 30 minutes.")
    assert "for more than 30 minutes." in changed_rule["annotations"]["description"]
    # a `for` of 0 is left out, as Prometheus' own default
    assert "for" not in rule(CONFIG.with_threshold("GpuLost", "critical", for_="0s"), "GpuLost", "critical")


def test_job_names_come_from_the_jobs_table():
    assert CONFIG.jobs == JOBS
    renamed = type(CONFIG)(jobs={**JOBS, "detector": "anomaly-detector"})
    assert rule(renamed, "BoxwatchDetectorDown", "critical")["expr"] == 'up{job="anomaly-detector"} == 0'
    assert 'up{job="anomaly-detector"}' in panel(renamed, "detector-health.json", "Detector up")["targets"][0]["expr"]
    exporters = rule(CONFIG, "BoxwatchExporterDown", "warning")["expr"]
    assert all(JOBS[c] in exporters for c in ("gpu", "containers", "journald"))


def test_prometheus_scrapes_the_jobs_of_the_table():
    """prometheus/prometheus.yml is written by hand (compose targets); its job names are the table's."""
    config = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == set(JOBS.values()) - {JOBS["demo"]}


def test_rules_built_from_a_changed_config_pass_promtool(tmp_path):
    promtool = require_binary("promtool", "/usr/bin/promtool")
    changed = CONFIG.with_threshold("JournalErrorBurst", "critical", threshold=2.5, for_="1h")
    paths = []
    for rule_file in rules.rule_files(changed):
        path = tmp_path / f"{rule_file.name}.yml"
        path.write_text(generate.render_rule_file(rule_file))
        paths.append(str(path))
    result = subprocess.run([promtool, "check", "rules", *paths], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("duration", "text"), [("1m", "1 minute"), ("5m", "5 minutes"), ("90m", "90 minutes"),
                                                ("1h", "1 hour"), ("120m", "2 hours"), (600, "10 minutes")])
def test_durations_in_words(duration, text):
    assert rules.words(duration) == text
