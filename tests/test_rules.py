"""Prometheus rules: promtool accepts and tests them, and they keep the mixin conventions.

Conventions checked here (see docs/alerts.md): recording rules are named level:metric:operations;
every alert has a warning/critical ``severity``, a one-line ``summary``, a ``description`` that
uses ``$labels`` and ``$value``, and a ``runbook_url`` at docs/runbooks/<AlertName>.md; every
threshold and ``for:`` agrees with prometheus/thresholds.yml; every alert is tested both firing and
not firing in tests/rules/*.test.yml.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.harness import REPO, require_binary

RULES_DIR = REPO / "prometheus" / "rules"
RULE_TESTS_DIR = REPO / "tests" / "rules"
RUNBOOKS = REPO / "docs" / "runbooks"
THRESHOLDS = yaml.safe_load((REPO / "prometheus" / "thresholds.yml").read_text())
RECORD_NAME = re.compile(r"^[a-z_]+:[a-z][a-z0-9_]*:[a-z0-9_]+$")
ALERT_NAME = re.compile(r"^[A-Z][A-Za-z0-9]+$")
DURATION = re.compile(r"^(\d+)([smhd])$")
# Alerts on 0/1 gauges: their value says nothing, so their description need not show it.
VALUE_IS_A_FLAG = {"BoxwatchDetectorDown", "BoxwatchExporterDown", "GpuThermalThrottling", "ContainerUnhealthy",
                   "BoxwatchModelDriftDetected", "BoxwatchRegistryUnavailable", "BoxwatchCollectorFailing", "GpuLost",
                   "ContainerOomKilled", ("GpuPowerThrottling", "critical"), "GpuMemoryDegraded"}


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def all_rules() -> list[dict]:
    return [rule for path in rule_files() for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def alerting_rules() -> list[dict]:
    return [rule for rule in all_rules() if "alert" in rule]


def seconds(duration: str | None) -> int:
    if not duration:
        return 0
    match = DURATION.match(str(duration))
    assert match, f"unexpected duration {duration!r}"
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_check_rules_accepts_every_rule_file():
    promtool = require_binary("promtool", "/usr/bin/promtool")
    result = _run([promtool, "check", "rules", *map(str, rule_files())])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(rule_files())


def test_promtool_rule_tests_pass():
    promtool = require_binary("promtool", "/usr/bin/promtool")
    tests = sorted(RULE_TESTS_DIR.glob("*.test.yml"))
    assert tests
    result = _run([promtool, "test", "rules", *(p.name for p in tests)], cwd=RULE_TESTS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_tests_can_fail(tmp_path):
    """A rule test with a wrong expectation fails: the suite above is not vacuous."""
    promtool = require_binary("promtool", "/usr/bin/promtool")
    original = yaml.safe_load((RULE_TESTS_DIR / "gpu.test.yml").read_text())
    broken = {**original, "rule_files": [str(RULES_DIR / "gpu.yml")], "tests": original["tests"][:1]}
    expected = broken["tests"][0]["alert_rule_test"][0]["exp_alerts"][0]
    expected["exp_annotations"]["runbook_url"] = "https://example.org/wrong.md"
    path = tmp_path / "broken.test.yml"
    path.write_text(yaml.safe_dump(broken))
    result = _run([promtool, "test", "rules", str(path)])
    assert result.returncode != 0
    assert "wrong.md" in result.stdout + result.stderr


def test_every_rule_file_has_a_promtool_test_file():
    for path in rule_files():
        test_file = RULE_TESTS_DIR / path.name.replace(".yml", ".test.yml")
        assert test_file.exists(), f"{path.name} has no {test_file.name}"
        assert yaml.safe_load(test_file.read_text())["rule_files"] == [f"../../prometheus/rules/{path.name}"]


def test_every_alert_is_tested_firing_and_not_firing_with_annotations():
    firing: dict[str, set[str]] = {}
    silent: set[str] = set()
    for path in RULE_TESTS_DIR.glob("*.test.yml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                name = case["alertname"]
                if not case.get("exp_alerts"):
                    silent.add(name)
                for alert in case.get("exp_alerts", []):
                    annotations = alert.get("exp_annotations", {})
                    assert {"summary", "description", "runbook_url"} <= set(annotations), (name, annotations)
                    firing.setdefault(name, set()).add(alert["exp_labels"]["severity"])
    for rule in alerting_rules():
        name, severity = rule["alert"], rule["labels"]["severity"]
        assert severity in firing.get(name, set()), f"no test fires {name} at {severity}"
        assert name in silent, f"no test shows {name} not firing"


def test_recording_rule_names_are_level_metric_operations():
    records = [rule["record"] for rule in all_rules() if "record" in rule]
    assert records
    for name in records:
        assert RECORD_NAME.match(name), f"{name} is not level:metric:operations"
        level, metric, _ = name.split(":")
        assert metric.startswith(("boxwatch_", "node_")) and not metric.endswith("_total"), name


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}")
def test_alert_follows_the_conventions(rule):
    name = rule["alert"]
    assert ALERT_NAME.match(name), name
    assert rule["labels"]["severity"] in ("warning", "critical")
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert "\n" not in annotations["summary"].strip()
    assert "$labels" in annotations["description"], f"{name}: description names no label"
    if name not in VALUE_IS_A_FLAG and (name, rule["labels"]["severity"]) not in VALUE_IS_A_FLAG:
        assert "$value" in annotations["description"], f"{name}: description does not show the value"
    assert annotations["runbook_url"] == f"{THRESHOLDS['runbook_base_url']}{name}.md"
    runbook = RUNBOOKS / f"{name}.md"
    assert runbook.exists(), f"missing runbook {runbook}"
    text = runbook.read_text()
    for section in ("## Meaning", "## Likely causes", "## How to check", "## How to fix"):
        assert section in text, f"{runbook.name} lacks {section}"


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}")
def test_alert_matches_the_thresholds_file(rule):
    name, severity = rule["alert"], rule["labels"]["severity"]
    entry = THRESHOLDS["alerts"].get(name, {}).get(severity)
    assert entry, f"prometheus/thresholds.yml has no {name}.{severity}"
    assert seconds(rule.get("for")) == seconds(entry["for"]), f"{name}.{severity}: for differs"
    expr = " ".join(rule["expr"].split())
    threshold = entry["threshold"]
    assert re.search(rf"(>|>=|==|<)\s*{re.escape(str(threshold))}(\s|$|\))", expr), (
        f"{name}.{severity}: {expr!r} does not compare with {threshold}")
    if "selector" in entry:
        assert entry["selector"] in expr, f"{name}.{severity}: selector {entry['selector']} not in {expr!r}"
    if "margin" in entry:  # relative to the card's own limit; `threshold` is then the fallback
        assert re.search(rf"_celsius - {entry['margin']}\)", expr), f"{name}.{severity}: margin not in {expr!r}"


def test_thresholds_file_lists_only_existing_alerts():
    defined = {(r["alert"], r["labels"]["severity"]) for r in alerting_rules()}
    listed = {(name, sev) for name, sevs in THRESHOLDS["alerts"].items() for sev in sevs}
    assert listed == defined


def test_fatal_xid_list_is_the_same_everywhere():
    fatal = THRESHOLDS["fatal_xids"]
    gpu_rules = [r for r in alerting_rules() if r["alert"] == "GpuXidErrors"]
    assert all(fatal in r["expr"] for r in gpu_rules)


def test_every_alert_is_documented():
    doc = (REPO / "docs" / "alerts.md").read_text()
    for name in {r["alert"] for r in alerting_rules()}:
        assert f"[{name}]" in doc, f"docs/alerts.md does not list {name}"
    assert sorted(p.stem for p in RUNBOOKS.glob("*.md")) == sorted({r["alert"] for r in alerting_rules()})
