"""Grafana dashboards: structure, provisioning, and every panel query run against a real Prometheus
that holds a day of demo data (promtool backfill) and evaluates boxwatch's rules (for ALERTS)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import requests
import yaml

from stack.demo import Scenario, write_openmetrics
from tests.harness import REPO, Prometheus, backfill

DASHBOARD_DIR = REPO / "grafana" / "dashboards"
DASHBOARDS = {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
STEP = 60
# Grafana's built-in interval variables, with the values Grafana would use for a 24h dashboard on
# 60s-resolution data ($__rate_interval = max(4 x scrape interval, $__interval + scrape interval)).
BUILTINS = {"$__rate_interval": "4m", "$__interval": "1m", "$__range": "24h"}
VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def panels_of(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def all_targets() -> list[tuple[str, str, dict]]:
    return [(name, panel["title"], tgt) for name, dash in DASHBOARDS.items() for panel in panels_of(dash)
            for tgt in panel["targets"]]


# ----------------------------------------------------------------------------- structure


def test_the_expected_dashboards_exist():
    assert set(DASHBOARDS) == {"anomaly-overview.json", "gpus.json", "containers.json", "journal.json",
                               "detector-health.json"}


def test_dashboards_are_built_from_their_source():
    result = subprocess.run([sys.executable, "-m", "mixin.generate", "--check"], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name):
    dash = DASHBOARDS[name]
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dash["uid"]) and dash["title"].startswith("boxwatch / ")
    assert dash["schemaVersion"] >= 36 and "boxwatch" in dash["tags"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DS_REF, var["name"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
    for panel in panels_of(dash):
        assert panel["title"] and panel["datasource"] == DS_REF, panel["title"]
        assert panel["targets"], panel["title"]
        for tgt in panel["targets"]:
            assert tgt["datasource"] == DS_REF and tgt["expr"].strip()
        used = {m for tgt in panel["targets"] for m in VARIABLE.findall(tgt["expr"]) if not m.startswith("__")}
        assert used <= set(variables), f"{panel['title']} uses undefined variables {used - set(variables)}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_no_datasource_uid_is_hard_coded(name):
    text = json.dumps(DASHBOARDS[name])
    uids = set(re.findall(r'"uid": "([^"]*)"', text)) - {DASHBOARDS[name]["uid"]}
    assert uids <= {"${datasource}", "-- Grafana --"}, uids


def test_per_entity_variables_exist():
    names = {n: {v["name"] for v in d["templating"]["list"]} for n, d in DASHBOARDS.items()}
    assert {"instance", "gpu"} <= names["gpus.json"]
    assert {"instance", "container"} <= names["containers.json"]
    assert {"instance", "unit"} <= names["journal.json"]
    assert {"instance", "query", "model"} <= names["anomaly-overview.json"]


def test_provisioning_points_at_the_dashboards():
    datasources = yaml.safe_load((REPO / "grafana/provisioning/datasources/prometheus.yml").read_text())
    [source] = datasources["datasources"]
    assert source["type"] == "prometheus" and source["uid"] and "$" not in json.dumps(source)
    providers = yaml.safe_load((REPO / "grafana/provisioning/dashboards/boxwatch.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


# ----------------------------------------------------------------------------- queries


@pytest.fixture(scope="module")
def demo_prometheus(tmp_path_factory):
    """A day of the demo scenario (with the detector's metrics synthesized), rules evaluated."""
    workdir = tmp_path_factory.mktemp("dashboards")
    scenario = Scenario(time.time(), days=1, step=STEP, runtime=True)
    history = workdir / "demo.om"
    with history.open("w") as out:
        write_openmetrics(scenario, out)
    backfill(workdir / "data", history.read_text(), max_block_duration="2h")
    prom = Prometheus(workdir, config={"global": {"scrape_interval": "15s", "evaluation_interval": "1s"}},
                      rule_files=sorted((REPO / "prometheus" / "rules").glob("*.yml")), data_dir=workdir / "data")
    try:
        prom.wait_for("ALERTS", timeout=30)
        yield prom, scenario
    finally:
        prom.stop()


def _label_values(prom: Prometheus, definition: str, values: dict[str, str]) -> list[str]:
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", definition)
    assert match, f"unsupported variable query {definition!r}"
    selector = _substitute(match[1], values)
    response = requests.get(f"{prom.url}/api/v1/label/{match[2]}/values",
                            params={"match[]": selector, "start": time.time() - 86400}, timeout=10).json()
    assert response["status"] == "success", response
    return response["data"]


def _substitute(expr: str, values: dict[str, str]) -> str:
    for builtin, value in BUILTINS.items():
        expr = expr.replace(builtin, value)
    return VARIABLE.sub(lambda m: values.get(m[1], m[0]), expr)


def _escape(value: str) -> str:
    """A value as Grafana puts it into a regex matcher: metacharacters escaped for a PromQL string."""
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", value)


def _variable_values(prom: Prometheus, dashboard: dict) -> dict[str, str]:
    """Each query variable resolved in order, as Grafana does with every value selected:
    the real label values joined into one alternation."""
    values: dict[str, str] = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        found = _label_values(prom, var["definition"], values)
        assert found, f"variable {var['name']} ({var['definition']}) has no values"
        values[var["name"]] = "(" + "|".join(_escape(v) for v in found) + ")"
    return values


@pytest.mark.slow
@pytest.mark.parametrize(("name", "title", "tgt"), all_targets(), ids=lambda x: x if isinstance(x, str) else "")
def test_panel_query_returns_data(demo_prometheus, name, title, tgt):
    prom, scenario = demo_prometheus
    expr = _substitute(tgt["expr"], _variable_values(prom, DASHBOARDS[name]))
    assert "$" not in expr, expr
    now = time.time()  # the demo ends when the fixture started: its last samples are still fresh
    if tgt.get("instant"):
        result = prom.query(expr, time=now)
    else:
        result = prom.query_range(expr, now - 86400 + 3600, now, step="300")
        result = [series for series in result if series["values"]]
    assert result, f"{name} / {title}: {expr} returned no data"
