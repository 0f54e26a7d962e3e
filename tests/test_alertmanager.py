"""Alertmanager routing: amtool accepts the config, routes by severity, and, end to end, real
Prometheus + real Alertmanager deliver the rules' alerts to the webhook sink with inhibitions applied."""

from __future__ import annotations

import copy
import subprocess
import time

import pytest
import yaml

from stack.demo import Scenario, write_openmetrics
from tests.harness import REPO, backfill, require_binary

CONFIG_PATH = REPO / "alertmanager" / "alertmanager.yml"
CONFIG = yaml.safe_load(CONFIG_PATH.read_text())


def _amtool(*args: str) -> subprocess.CompletedProcess:
    amtool = require_binary("amtool", "/usr/bin/amtool")
    return subprocess.run([amtool, *args], capture_output=True, text=True, timeout=60)


def test_amtool_check_config_passes():
    result = _amtool("check-config", str(CONFIG_PATH))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("labels", "receiver"), [
    (["alertname=GpuXidErrors", "severity=critical"], "critical"),
    (["alertname=GpuTemperatureHigh", "severity=warning"], "default"),
    (["alertname=Unknown"], "default"),
])
def test_routes_by_severity(labels, receiver):
    result = _amtool("config", "routes", "test", f"--config.file={CONFIG_PATH}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_every_receiver_defaults_to_the_webhook_sink():
    """The native stack and compose rewrite/resolve this one URL; a new receiver must keep it."""
    for receiver in CONFIG["receivers"]:
        urls = [hook["url"] for hook in receiver.get("webhook_configs", [])]
        assert urls == ["http://webhook:9876/alert"], receiver["name"]


# ----------------------------------------------------------------------------- end to end


# Inhibition sources fire first, then the other criticals, then the warnings, as their real `for:`
# durations order them on a real incident (a GPU is lost before its temperature alert's 5 minutes
# are up). Alertmanager inhibits what arrives after its source; this order makes the test say that,
# not which rule group Prometheus happened to evaluate first.
INHIBITION_SOURCES = {"GpuLost", "GpuNvmlUnavailable", "BoxwatchDetectorDown", "BoxwatchDetectorPrometheusUnreachable"}


def _rules_with_short_for(tmp_path):
    """The shipped rule files with `for:` shortened to seconds (sources 0 s, other criticals 6 s,
    warnings 12 s). promtool tests cover the real `for:`; this test covers Prometheus -> Alertmanager ->
    webhook and inhibition without waiting minutes."""
    out = []
    for path in sorted((REPO / "prometheus" / "rules").glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                rule.pop("for", None)
                if rule["alert"] not in INHIBITION_SOURCES:
                    rule["for"] = "6s" if rule["labels"]["severity"] == "critical" else "12s"
        target = tmp_path / "rules" / path.name
        target.parent.mkdir(exist_ok=True)
        target.write_text(yaml.safe_dump(doc))
        out.append(target)
    return out


def _alertmanager_config(webhook_url: str) -> dict:
    """The shipped config with the webhook aimed at the test sink (as `boxwatch-stack up` does) and
    shorter group waits (same order: critical groups flush before warning ones)."""
    config = copy.deepcopy(CONFIG)
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook_url
    for route in [config["route"], *config["route"].get("routes", [])]:
        if "group_wait" in route:
            route["group_wait"] = "4s" if route is config["route"] else "2s"
    return config


def _extra_history(now: float) -> str:
    """Besides the demo box: a second box whose GPU is lost (and hot), and a detector that is down
    while an anomaly score is high. Both hot GPU and high score must be inhibited."""
    lost = 'instance="lost-box",job="boxwatch-gpu",gpu="0",uuid="GPU-lost",name="NVIDIA GeForce RTX 3060"'
    score = ('instance="scored-box",job="boxwatch-gpu",gpu="0",uuid="GPU-s",name="NVIDIA GeForce RTX 3060",'
             'query="gpu_power",model="robust"')
    rows = {
        "boxwatch_gpu_up": [(lost, 0)],
        "boxwatch_gpu_temperature_celsius": [(lost, 95)],
        "up": [('instance="detector:9875",job="boxwatch-detector"', 0)],
        "boxwatch_anomaly_score": [(score, 3.5)],
    }
    lines = []
    for name, members in rows.items():
        lines.append(f"# TYPE {name} gauge")
        for labels, value in members:
            lines.extend(f"{name}{{{labels}}} {value} {now - age:.0f}" for age in range(600, -1, -15))
    return "\n".join(lines) + "\n"


def _labels_of(alerts: list[dict], **match) -> list[dict]:
    return [a["labels"] for a in alerts
            if a.get("status") == "firing" and all(a["labels"].get(k) == v for k, v in match.items())]


@pytest.mark.slow
def test_alerts_reach_the_webhook_with_inhibitions(tmp_path, start_prometheus, start_alertmanager, webhook):
    now = time.time()
    scenario = Scenario(now, days=0.25, step=60)
    history = tmp_path / "history.om"
    with history.open("w") as out:
        write_openmetrics(scenario, out)
    data_dir = tmp_path / "data"
    backfill(data_dir, history.read_text(), max_block_duration="2h")
    backfill(data_dir, _extra_history(now) + "# EOF\n", max_block_duration="2h")  # overlapping blocks merge

    alertmanager = start_alertmanager(_alertmanager_config(webhook.url))
    prometheus = start_prometheus(
        config={
            "global": {"scrape_interval": "15s", "evaluation_interval": "1s"},
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager.port}"]}]}]},
        },
        data_dir=data_dir,
        extra_args=["--rules.alert.resend-delay=1s"],
    )
    # Prometheus drops what fires before its notifier has discovered Alertmanager (up to ~5 s after
    # start) and resends only after the resend delay: load the rules once it has.
    prometheus.wait_for("vector(1)", lambda _: bool(prometheus.api("alertmanagers")["activeAlertmanagers"]),
                        timeout=30)
    config = yaml.safe_load(prometheus.config_path.read_text())
    config["rule_files"] = [str(path) for path in _rules_with_short_for(tmp_path)]
    prometheus.config_path.write_text(yaml.safe_dump(config))
    prometheus.reload()
    expected_firing = {("GpuTemperatureHigh", "demo-box", "warning"), ("GpuTemperatureHigh", "demo-box", "critical"),
                       ("GpuTemperatureHigh", "lost-box", "critical"), ("GpuLost", "lost-box", "critical"),
                       ("AnomalyScoreHigh", "scored-box", "warning"), ("BoxwatchDetectorDown", "detector:9875", "critical"),
                       ("GpuXidErrors", "demo-box", "critical")}

    def firing_set(result):
        return {(r["metric"]["alertname"], r["metric"].get("instance"), r["metric"]["severity"]) for r in result}

    # Prometheus fires every one of them, the inhibited ones included
    prometheus.wait_for('ALERTS{alertstate="firing"}', lambda r: expected_firing <= firing_set(r), timeout=60)

    def arrived(alerts):
        return all(_labels_of(alerts, **m) for m in (
            {"alertname": "GpuXidErrors", "severity": "critical", "xid": "79", "instance": "demo-box"},
            {"alertname": "GpuTemperatureHigh", "severity": "critical", "instance": "demo-box", "gpu": "0"},
            {"alertname": "GpuLost", "instance": "lost-box"},
            {"alertname": "BoxwatchDetectorDown"},
        ))

    assert webhook.wait_for(arrived, timeout=60), [a["labels"] for a in webhook.alerts()]
    time.sleep(6)  # longer than the warning group wait (4 s): what is inhibited stays away
    alerts = webhook.alerts()

    xid = _labels_of(alerts, alertname="GpuXidErrors", xid="79")[0]
    assert xid["pci_bus_id"] == scenario.incident.pci_bus_id and xid["boxwatch_demo"] == "1"
    delivered = [a for a in alerts if a["labels"]["alertname"] == "GpuXidErrors"][0]
    assert delivered["annotations"]["runbook_url"].endswith("/docs/runbooks/GpuXidErrors.md")
    # The raw-signal path of the demo incident is there: throttling and the journal burst.
    assert _labels_of(alerts, alertname="GpuThermalThrottling", instance="demo-box", severity="critical")
    assert _labels_of(alerts, alertname="JournalErrorBurst", unit="kernel")
    assert _labels_of(alerts, alertname="ContainerRestartLoop", name="ollama")
    # Inhibitions: critical over warning of the same alert; GPU lost over that GPU's other alerts;
    # detector down over anomaly alerts. Prometheus fired all of them (checked in ALERTS above).
    assert not _labels_of(alerts, alertname="GpuTemperatureHigh", instance="demo-box", severity="warning")
    assert not _labels_of(alerts, alertname="GpuTemperatureHigh", instance="lost-box")
    assert not _labels_of(alerts, alertname="AnomalyScoreHigh")
    silenced = [a for a in alertmanager.alerts() if a["status"]["inhibitedBy"]]
    assert {a["labels"]["alertname"] for a in silenced} >= {"GpuTemperatureHigh", "AnomalyScoreHigh"}
