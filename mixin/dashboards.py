"""boxwatch's Grafana dashboards (grafana/dashboards/*.json), as data built from a :class:`~mixin.config.Config`.

Like the monitoring mixins, dashboards are code: every panel uses the ``${datasource}`` variable
(no datasource UID is hard-coded) and the template variables of its dashboard. Panels use raw
expressions (not recording rules) so that backfilled history, the demo's included, renders too.
A panel that draws an alert's threshold takes the number from the config, as the rule does.
"""

from __future__ import annotations

import json

from mixin.config import ERROR_PRIORITIES, FILESYSTEMS, Config
from mixin.rules import num, words

DS = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39
TAGS = ["boxwatch"]


# ----------------------------------------------------------------------------- building blocks


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str | None = None) -> dict:
    out = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref,
           "range": not instant, "instant": instant}
    if fmt:
        out["format"] = fmt
    return out


def _targets(exprs) -> list[dict]:
    items = [exprs] if isinstance(exprs, tuple | str) else exprs
    out = []
    for index, item in enumerate(items):
        expr, legend = (item, "") if isinstance(item, str) else item
        out.append(target(expr, legend, chr(ord("A") + index)))
    return out


def timeseries(title: str, exprs, unit: str = "short", description: str = "", stack: bool = False,
               thresholds: list[tuple[float, str]] | None = None, overrides: list | None = None,
               min_: float | None = None, max_: float | None = None, fill: int = 10) -> dict:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": fill, "showPoints": "never",
              "spanNulls": False, "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults: dict = {"unit": unit, "custom": custom}
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    if thresholds:
        custom["thresholdsStyle"] = {"mode": "line"}
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "green", "value": None}] + [
            {"color": color, "value": value} for value, color in thresholds]}
    return {"type": "timeseries", "title": title, "description": description, "datasource": DS,
            "targets": _targets(exprs), "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def stat(title: str, expr: str, unit: str = "short", description: str = "",
         thresholds: list[tuple[float, str]] | None = None, legend: str = "") -> dict:
    steps = [{"color": "green", "value": None}] + [{"color": c, "value": v} for v, c in (thresholds or [])]
    return {"type": "stat", "title": title, "description": description, "datasource": DS,
            "targets": [target(expr, legend, instant=True)],
            "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
                            "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "none", "textMode": "auto"}}


def table(title: str, expr: str, description: str = "", hide: tuple[str, ...] = ("Time",)) -> dict:
    return {"type": "table", "title": title, "description": description, "datasource": DS,
            "targets": [target(expr, instant=True, fmt="table")],
            "fieldConfig": {"defaults": {}, "overrides": []},
            "transformations": [{"id": "organize", "options": {"excludeByName": dict.fromkeys(hide, True)}}],
            "options": {"showHeader": True, "footer": {"show": False}}}


def state_timeline(title: str, exprs, description: str = "") -> dict:
    return {"type": "state-timeline", "title": title, "description": description, "datasource": DS,
            "targets": _targets(exprs),
            "fieldConfig": {"defaults": {"mappings": [
                {"type": "value", "options": {"0": {"text": "off", "color": "transparent"},
                                              "1": {"text": "active", "color": "red"}}}],
                "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None},
                                                             {"color": "red", "value": 1}]}}, "overrides": []},
            "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8}}


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def datasource_var() -> dict:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []}


def query_var(name: str, label: str, query: str, multi: bool = True) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
            "refresh": 2, "sort": 1, "multi": multi, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "hide": 0, "options": []}


def layout(items: list[tuple[dict, int, int]]) -> list[dict]:
    """Place panels left to right, wrapping at 24 columns; rows take a full line."""
    panels, x, y, line_height = [], 0, 0, 0
    for panel_id, (panel, width, height) in enumerate(items, start=1):
        if panel["type"] == "row":
            y += line_height
            x, line_height = 0, 0
            width, height = 24, 1
        elif x + width > 24:
            y += line_height
            x, line_height = 0, 0
        panels.append({"id": panel_id, "gridPos": {"x": x, "y": y, "w": width, "h": height}, **panel})
        x += width
        line_height = max(line_height, height)
        if panel["type"] == "row":
            y += 1
            x, line_height = 0, 0
    return panels


def dashboard(uid: str, title: str, description: str, variables: list[dict], items, links=True) -> dict:
    return {
        "uid": uid, "title": title, "description": description, "tags": TAGS,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
        "time": {"from": "now-24h", "to": "now"}, "refresh": "1m", "timezone": "",
        "templating": {"list": [datasource_var(), *variables]},
        "annotations": {"list": [{"builtIn": 1, "name": "Annotations & Alerts", "type": "dashboard",
                                  "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)"}]},
        "links": [{"title": "boxwatch", "type": "dashboards", "tags": TAGS, "asDropdown": True}] if links else [],
        "panels": layout(items),
    }


# ----------------------------------------------------------------------------- dashboards

INSTANCE = 'instance=~"$instance"'
NODE = 'instance=~"$node"'
CPU_TEMPERATURE = (  # as the recording rule instance:node_cpu_temperature_celsius:max, raw for backfills
    f'max by (instance) (node_hwmon_temp_celsius{{{NODE}}} and on (instance, chip) '
    f'node_hwmon_chip_names{{chip_name=~"coretemp|k10temp|zenpower"}}) '
    f'or max by (instance) (node_thermal_zone_temp{{{NODE}, type=~"x86_pkg_temp|cpu[-_]thermal|soc[-_]thermal"}})')


def pair(cfg: Config, name: str, scale: float = 1) -> list[tuple[float, str]]:
    """An alert's warning and critical thresholds as orange and red threshold lines (times ``scale``)."""
    sevs = cfg.alerts[name]
    return [(_number(sevs[sev].threshold * scale), color) for sev, color in (("warning", "orange"), ("critical", "red"))]


def _number(value: float) -> float:
    """``value`` rounded off float noise (0.2 * 60), and an int where it is whole (12, not 12.0)."""
    value = round(value, 6)
    return int(value) if float(value).is_integer() else value


def anomaly_overview(cfg: Config) -> dict:
    score = pair(cfg, "AnomalyScoreHigh")
    sel = f'{INSTANCE}, query=~"$query", model=~"$model"'
    band_overrides = [
        {"matcher": {"id": "byName", "options": "upper"},
         "properties": [{"id": "custom.fillBelowTo", "value": "lower"}, {"id": "custom.lineWidth", "value": 0},
                        {"id": "color", "value": {"mode": "fixed", "fixedColor": "blue"}},
                        {"id": "custom.fillOpacity", "value": 20}]},
        {"matcher": {"id": "byName", "options": "lower"},
         "properties": [{"id": "custom.lineWidth", "value": 0},
                        {"id": "color", "value": {"mode": "fixed", "fixedColor": "blue"}}]},
        {"matcher": {"id": "byName", "options": "expected"},
         "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [6, 4]}},
                        {"id": "color", "value": {"mode": "fixed", "fixedColor": "blue"}},
                        {"id": "custom.fillOpacity", "value": 0}]},
        {"matcher": {"id": "byName", "options": "observed"},
         "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "orange"}},
                        {"id": "custom.lineWidth", "value": 2}, {"id": "custom.fillOpacity", "value": 0}]},
    ]

    def band(title: str, query: str, observed: str, unit: str) -> dict:
        labels = f'query="{query}", {INSTANCE}, gpu=~"$gpu"'
        return timeseries(
            title,
            [(f"max(boxwatch_anomaly_expected_upper{{{labels}}})", "upper"),
             (f"min(boxwatch_anomaly_expected_lower{{{labels}}})", "lower"),
             (f"avg(boxwatch_anomaly_expected{{{labels}}})", "expected"),
             (f'max({observed}{{{INSTANCE}, gpu=~"$gpu"}})', "observed")],
            unit=unit, overrides=band_overrides, fill=0,
            description=f"The observed series against the band the detector expects for query {query} "
                        "(pick one GPU with the gpu variable). Outside the band means a score above 1.")

    items = [
        (stat("Series outside their band", f"count(boxwatch_anomaly_score{{{sel}}} > 1) or vector(0)",
              thresholds=[(1, "orange"), (5, "red")],
              description="Series whose anomaly score is above 1 now."), 6, 4),
        (stat("Highest anomaly score", f"max(boxwatch_anomaly_score{{{sel}}})", thresholds=score,
              description="0 is normal, above 1 is outside the band."), 6, 4),
        (stat("Active alerts", 'count(ALERTS{alertstate="firing"}) or vector(0)', thresholds=[(1, "red")],
              description="Firing alerts of every boxwatch rule."), 6, 4),
        (stat("Watched series", f"count(boxwatch_anomaly_score{{{sel}}})",
              description="Series the detector scores."), 6, 4),
        (timeseries("Anomaly scores", [(f"boxwatch_anomaly_score{{{sel}}}",
                                        "{{query}} {{instance}} {{gpu}}{{name}}{{unit}}")],
                    thresholds=score, min_=0, fill=0,
                    description=f"Every scored series. The lines at {num(score[0][0])} and {num(score[1][0])} are the "
                                "thresholds of AnomalyScoreHigh (warning and critical)."), 24, 9),
        (band("GPU temperature: observed and expected band", "gpu_temperature",
              "boxwatch_gpu_temperature_celsius", "celsius"), 12, 9),
        (band("GPU power: observed and expected band", "gpu_power", "boxwatch_gpu_power_watts", "watt"), 12, 9),
        (table("Top anomalous series now", f"topk(10, boxwatch_anomaly_score{{{sel}}})",
               description="The ten highest scores now. The features that drove a multivariate score are in the "
                           "detector's /api/v1/anomalies."), 12, 8),
        (table("Likely causes now", f"boxwatch_anomaly_cause{{{sel}}}",
               hide=("Time", "Value", "__name__", "job", "boxwatch_demo"),
               description="Related signals of the same GPU, container or journal unit while it scores above 1 "
                           "(Xid events, throttle reasons, OOM kills, restarts, journal bursts, host pressure), "
                           "rank 1 the strongest. See docs/causes.md."), 12, 8),
        (timeseries("Peer-group scores", [(f'boxwatch_anomaly_score{{{sel}, model="peer"}}',
                                           "{{query}} {{gpu}}{{name}}")],
                    thresholds=score, min_=0, fill=0,
                    description="Each member against its siblings at the same step (peer model): a GPU hotter than "
                                "its sibling under the same load, a replica busier than the others."), 12, 8),
        (table("Top features now", f"boxwatch_anomaly_top_feature{{{sel}}}",
               hide=("Time", "Value", "__name__", "job", "boxwatch_demo"),
               description="The features that drove each multivariate score, rank 1 the strongest."), 12, 8),
        (timeseries("Drift by feature", [('boxwatch_drift_score{query=~"$query", model=~"$model"}',
                                          "{{query}} {{feature}}")], min_=0,
                    description="Evidently drift score per feature: how far recent data is from the training "
                                "window."), 12, 8),
        (table("Active alerts", "sum by (alertname, severity, alertstate, instance) (ALERTS)",
               description="Pending and firing alerts (ALERTS series of Prometheus)."), 12, 8),
        (timeseries("Anomalous points per query", [(
            'sum by (query) (rate(boxwatch_detector_anomalies_total{query=~"$query"}[$__rate_interval])) * 60',
            "{{query}}")], unit="short", description="Points scored above the anomaly threshold, per minute."),
         12, 8),
    ]
    variables = [
        query_var("instance", "Host", "label_values(boxwatch_anomaly_score, instance)"),
        query_var("query", "Query", "label_values(boxwatch_anomaly_score, query)"),
        query_var("model", "Model", "label_values(boxwatch_anomaly_score, model)"),
        query_var("gpu", "GPU", "label_values(boxwatch_anomaly_score{query=\"gpu_temperature\"}, gpu)"),
    ]
    return dashboard("boxwatch-anomaly-overview", "boxwatch / Anomaly overview",
                     "Anomaly scores, expected bands around the observed series, and active alerts.",
                     variables, items)


def gpus(cfg: Config) -> dict:
    temperature = cfg.alerts["GpuTemperatureHigh"]
    cpu_temperature = pair(cfg, "HostCpuTemperatureHigh")
    # PSI some (waiting): red at HostMemoryPressure's warning, orange at half of it
    psi = cfg.alert("HostMemoryPressure", "warning").threshold
    psi_lines = [(_number(psi / 2), "orange"), (psi, "red")]
    sel = f'{INSTANCE}, gpu=~"$gpu"'
    legend = "{{instance}} gpu {{gpu}}"
    items = [
        (stat("GPUs up", f"sum(boxwatch_gpu_up{{{sel}}})", description="GPUs answering NVML."), 6, 4),
        (stat("Hottest GPU", f"max(boxwatch_gpu_temperature_celsius{{{sel}}})", unit="celsius",
              thresholds=pair(cfg, "GpuTemperatureHigh"),
              description="Lines at GpuTemperatureHigh's thresholds for a card that reports no slowdown "
                          "temperature."), 6, 4),
        (stat("Power draw", f"sum(boxwatch_gpu_power_watts{{{sel}}})", unit="watt"), 6, 4),
        (stat("Xid errors (24h)", f"sum(increase(boxwatch_gpu_xid_errors_total{{{INSTANCE}}}[24h])) or vector(0)",
              thresholds=[(1, "red")]), 6, 4),
        (timeseries("Utilization", [(f"boxwatch_gpu_utilization_ratio{{{sel}}}", legend)], unit="percentunit",
                    min_=0, max_=1), 12, 8),
        (timeseries("Memory used", [(f"boxwatch_gpu_memory_used_bytes{{{sel}}}", legend + " used"),
                                    (f"boxwatch_gpu_memory_total_bytes{{{sel}}}", legend + " total")],
                    unit="bytes", min_=0), 12, 8),
        (timeseries("Temperature and the card's slowdown temperature",
                    [(f"boxwatch_gpu_temperature_celsius{{{sel}}}", legend),
                     (f"boxwatch_gpu_slowdown_temperature_celsius{{{sel}}}", legend + " slowdown")],
                    unit="celsius", fill=0,
                    description=f"GpuTemperatureHigh fires {num(temperature['warning'].margin)} °C (warning) and "
                                f"{num(temperature['critical'].margin)} °C (critical) under the card's own "
                                "slowdown temperature."), 12, 8),
        (timeseries("Power draw and limit", [(f"boxwatch_gpu_power_watts{{{sel}}}", legend + " draw"),
                                             (f"boxwatch_gpu_power_limit_watts{{{sel}}}", legend + " limit")],
                    unit="watt", min_=0, fill=0), 12, 8),
        (timeseries("Energy use", [(f"rate(boxwatch_gpu_energy_joules_total{{{sel}}}[$__rate_interval])", legend)],
                    unit="watt", description="Average power from the cumulative energy counter."), 12, 8),
        (timeseries("Fan speed", [(f"boxwatch_gpu_fan_speed_ratio{{{sel}}}", legend)], unit="percentunit",
                    min_=0, max_=1, fill=0), 12, 8),
        (timeseries("Clocks", [(f"boxwatch_gpu_sm_clock_hertz{{{sel}}}", legend + " SM"),
                               (f"boxwatch_gpu_memory_clock_hertz{{{sel}}}", legend + " memory")],
                    unit="hertz", fill=0), 12, 8),
        (state_timeline("Throttle reasons", [(
            f'max by (instance, gpu, reason) (boxwatch_gpu_throttle_active{{{sel}, reason!="gpu_idle"}})',
            "gpu {{gpu}} {{reason}}")],
            description="Clock-throttle reasons active per GPU (idle is left out). Thermal and power-brake "
                        "slowdowns are alerts."), 12, 8),
        (timeseries("PCIe throughput", [(f"boxwatch_gpu_pcie_throughput_bytes_per_second{{{sel}}}",
                                         legend + " {{direction}}")], unit="Bps"), 12, 8),
        (timeseries("Memory per process", [(f"boxwatch_gpu_process_memory_used_bytes{{{sel}}}",
                                            legend + " {{process}} {{container}}")], unit="bytes", stack=True), 12, 8),
        (timeseries("GPU memory per container", [(
            f'sum by (instance, container, compose_service) (boxwatch_gpu_process_memory_used_bytes{{{sel}, '
            f'container!=""}})', "{{container}}")], unit="bytes", stack=True,
            description="Device memory of the compute processes in each container (found through their cgroup), "
                        "named as on the Containers dashboard."), 12, 8),
        (timeseries("PCIe link", [(f"boxwatch_gpu_pcie_link_width{{{sel}}}", legend + " width"),
                                  (f"boxwatch_gpu_pcie_link_width_max{{{sel}}}", legend + " max width"),
                                  (f"boxwatch_gpu_pcie_link_generation{{{sel}}}", legend + " gen")], fill=0,
                    description="Lanes and generation of the link now, against the most the card and the slot "
                                "support. The generation drops at idle to save power; a width under the maximum "
                                "is a card that trained down (riser, slot, dirt)."), 12, 8),
        (timeseries("Clocks held back", [(
            f"rate(boxwatch_gpu_violation_seconds_total{{{sel}}}[$__rate_interval])", legend + " {{policy}}")],
            unit="percentunit", min_=0, fill=0,
            description="Fraction of the time the clocks were held below their target, per policy (NVML "
                        "violation time): power, thermal, board limit, ..."), 12, 8),
        (row("Host (node_exporter)"), 24, 1),
        (stat("Uptime", f"min(time() - node_boot_time_seconds{{{NODE}}})", unit="s",
              description="Since the last boot; HostUnexpectedReboot fires for an hour after a reboot."), 6, 4),
        (stat("Hottest CPU sensor", f"max({CPU_TEMPERATURE})", unit="celsius",
              thresholds=cpu_temperature), 6, 4),
        (stat("Memory pressure", f"max(rate(node_pressure_memory_waiting_seconds_total{{{NODE}}}[5m]))",
              unit="percentunit", thresholds=psi_lines,
              description="Share of the last 5 minutes some task waited for memory (PSI some)."), 6, 4),
        (stat("Fans at 0 rpm", f"count(node_hwmon_fan_rpm{{{NODE}}} == 0) or vector(0)",
              description="Fans reading 0 rpm now (zero-rpm idle modes included)."), 6, 4),
        (timeseries("CPU temperature", [(CPU_TEMPERATURE, "{{instance}}")], unit="celsius", fill=0,
                    thresholds=cpu_temperature,
                    description="The hottest CPU sensor (hwmon coretemp/k10temp/zenpower, else the package "
                                "thermal zone)."), 12, 8),
        (timeseries("Fans", [(f"node_hwmon_fan_rpm{{{NODE}}}", "{{instance}} {{chip}} {{sensor}}")], unit="rpm",
                    min_=0, fill=0), 12, 8),
        (timeseries("Memory pressure (PSI)", [
            (f"rate(node_pressure_memory_waiting_seconds_total{{{NODE}}}[$__rate_interval])", "{{instance}} some"),
            (f"rate(node_pressure_memory_stalled_seconds_total{{{NODE}}}[$__rate_interval])", "{{instance}} full")],
            unit="percentunit", min_=0, fill=0, thresholds=psi_lines,
            description="Time some task (some) or every task (full) waited for memory."), 12, 8),
        (timeseries("Disk free and its 24h forecast", [
            (f"node_filesystem_avail_bytes{{{NODE}, {FILESYSTEMS}}}", "{{instance}} {{mountpoint}}"),
            (f"predict_linear(node_filesystem_avail_bytes{{{NODE}, {FILESYSTEMS}}}[6h], 86400)",
             "{{instance}} {{mountpoint}} in 24h")], unit="bytes", fill=0,
            description="Free space, and where the last 6 hours' trend takes it in a day "
                        "(HostFilesystemFillingUp)."), 12, 8),
    ]
    variables = [query_var("instance", "Host", "label_values(boxwatch_gpu_up, instance)"),
                 query_var("gpu", "GPU", 'label_values(boxwatch_gpu_up{instance=~"$instance"}, gpu)'),
                 query_var("node", "node_exporter", "label_values(node_boot_time_seconds, instance)")]
    return dashboard("boxwatch-gpus", "boxwatch / GPUs",
                     "NVML metrics per GPU (load, memory, heat, power, throttling, PCIe) and the host under them "
                     "(node_exporter: CPU heat, fans, memory pressure, disks).", variables, items)


def containers(cfg: Config) -> dict:
    sel = f'{INSTANCE}, name=~"$container"'
    legend = "{{name}}"
    items = [
        (stat("Running", f'sum(boxwatch_container_state{{{sel}, state="running"}})'), 6, 4),
        (stat("Unhealthy", f'sum(boxwatch_container_health_status{{{sel}, status="unhealthy"}}) or vector(0)',
              thresholds=[(1, "red")]), 6, 4),
        (stat("Restarts (24h)", f"sum(increase(boxwatch_container_restarts_total{{{sel}}}[24h]))",
              thresholds=[(3, "orange"), (10, "red")]), 6, 4),
        (stat("Docker reachable", f"min(boxwatch_docker_up{{{INSTANCE}}})", thresholds=[]), 6, 4),
        (table("Containers", f"boxwatch_container_info{{{sel}}}",
               description="Every container with its image, compose service and short id.",
               hide=("Time", "Value", "__name__", "job", "boxwatch_demo")), 24, 6),
        (timeseries("CPU", [(f"rate(boxwatch_container_cpu_seconds_total{{{sel}}}[$__rate_interval])", legend)],
                    unit="short", description="CPU cores in use."), 12, 8),
        (timeseries("Memory", [(f"boxwatch_container_memory_usage_bytes{{{sel}}}", legend),
                               (f"boxwatch_container_memory_limit_bytes{{{sel}}} > 0", legend + " limit")],
                    unit="bytes", fill=0), 12, 8),
        (timeseries("Restarts", [(f"increase(boxwatch_container_restarts_total{{{sel}}}[$__rate_interval])",
                                  legend)], description="Restarts per interval (Docker's RestartCount)."), 12, 8),
        (timeseries("Events", [(
            f'sum by (name, event) (increase(boxwatch_container_events_total{{{sel}}}[$__rate_interval]))',
            "{{name}} {{event}}")], stack=True, description="die, oom, restart, health changes..."), 12, 8),
        (state_timeline("Health and OOM kills", [
            (f'max by (name) (boxwatch_container_health_status{{{sel}, status="unhealthy"}})', "{{name}} unhealthy"),
            (f"max by (name) (boxwatch_container_oom_killed{{{sel}}})", "{{name}} OOM-killed")]), 12, 8),
        (timeseries("Network", [
            (f"rate(boxwatch_container_network_receive_bytes_total{{{sel}}}[$__rate_interval])", legend + " rx"),
            (f"-rate(boxwatch_container_network_transmit_bytes_total{{{sel}}}[$__rate_interval])", legend + " tx")],
            unit="Bps"), 12, 8),
        (timeseries("Block I/O", [
            (f"rate(boxwatch_container_block_read_bytes_total{{{sel}}}[$__rate_interval])", legend + " read"),
            (f"-rate(boxwatch_container_block_write_bytes_total{{{sel}}}[$__rate_interval])", legend + " write")],
            unit="Bps"), 12, 8),
        (timeseries("Stats age", [(f"boxwatch_container_stats_age_seconds{{{sel}}}", legend)], unit="s", fill=0,
                    description="Age of the cached Docker stats (the exporter reads them in the background)."),
         12, 8),
    ]
    variables = [query_var("instance", "Host", "label_values(boxwatch_container_info, instance)"),
                 query_var("container", "Container",
                           'label_values(boxwatch_container_info{instance=~"$instance"}, name)')]
    return dashboard("boxwatch-containers", "boxwatch / Containers",
                     "Docker containers: state, health, restarts, OOM kills, CPU, memory, I/O.", variables, items)


def journal(cfg: Config) -> dict:
    sel = f'{INSTANCE}, unit=~"$unit"'
    errors = ERROR_PRIORITIES
    per_minute = pair(cfg, "JournalErrorBurst", scale=60)
    per_second = [num(cfg.alert("JournalErrorBurst", sev).threshold) for sev in ("warning", "critical")]
    items = [
        (stat("Error lines / min", f"sum(rate(boxwatch_journal_entries_total{{{sel}, {errors}}}[5m])) * 60",
              thresholds=per_minute), 6, 4),
        (stat("New templates (1h)", f"sum(increase(boxwatch_journal_new_templates_total{{{sel}}}[1h]))",
              thresholds=[(5, "orange")]), 6, 4),
        (stat("Xid events (24h)", f"sum(increase(boxwatch_gpu_xid_errors_total{{{INSTANCE}}}[24h])) or vector(0)",
              thresholds=[(1, "red")]), 6, 4),
        (stat("Last entry age", f"time() - max(boxwatch_journal_last_entry_timestamp_seconds{{{INSTANCE}}})",
              unit="s", thresholds=[(600, "orange")],
              description="How long ago the exporter read the newest journal entry."), 6, 4),
        (timeseries("Entries by priority", [(
            f"sum by (priority) (rate(boxwatch_journal_entries_total{{{sel}}}[$__rate_interval]))", "{{priority}}")],
            unit="short", stack=True, description="Lines per second, all selected units."), 12, 8),
        (timeseries("Errors by unit", [(
            f"sum by (unit) (rate(boxwatch_journal_entries_total{{{sel}, {errors}}}[$__rate_interval])) * 60",
            "{{unit}}")], unit="short", thresholds=per_minute, fill=0,
            description="err or worse per minute; the lines are JournalErrorBurst's warning and critical "
                        f"({per_second[0]}/s and {per_second[1]}/s)."), 12, 8),
        (timeseries("New log templates", [(
            f"sum by (unit) (increase(boxwatch_journal_new_templates_total{{{sel}}}[$__rate_interval]))", "{{unit}}")],
            description="Never-seen message templates per interval: a unit logging something new."), 12, 8),
        (timeseries("Xid events", [(
            f"sum by (pci_bus_id, xid) (increase(boxwatch_gpu_xid_errors_total{{{INSTANCE}}}[$__rate_interval]))",
            "{{pci_bus_id}} Xid {{xid}}")],
            description="NVIDIA Xid events parsed from kernel NVRM lines, by GPU PCI address and code."), 12, 8),
        (table("Busiest templates (range)", f"topk(15, sum by (unit, template_id) (increase("
               f"boxwatch_journal_template_entries_total{{{sel}}}[$__range])))",
               description="Join with the template text in the next table by unit and template_id."), 12, 8),
        (table("Template texts", f"boxwatch_journal_template_info{{{sel}}}",
               hide=("Time", "Value", "__name__", "job", "instance", "boxwatch_demo")), 12, 8),
    ]
    variables = [query_var("instance", "Host", "label_values(boxwatch_journal_entries_total, instance)"),
                 query_var("unit", "Unit", 'label_values(boxwatch_journal_entries_total{instance=~"$instance"}, unit)')]
    return dashboard("boxwatch-journal", "boxwatch / Journal",
                     "systemd journal: severity rates, new log templates, GPU Xid events.", variables, items)


def detector_health(cfg: Config) -> dict:
    not_scoring = cfg.alert("BoxwatchDetectorNotScoring", "warning").threshold
    own_jobs = "|".join(job for component, job in cfg.jobs.items() if component not in ("prometheus", "alertmanager"))
    items = [
        (stat("Detector up", f'min(up{{job="{cfg.jobs["detector"]}"}})', thresholds=[]), 4, 4),
        (stat("Prometheus reachable", "min(boxwatch_detector_prometheus_up)"), 4, 4),
        (stat("Models ready", "min(boxwatch_detector_models_ready)"), 4, 4),
        (stat("Last successful cycle", "time() - max(boxwatch_detector_last_success_timestamp_seconds)", unit="s",
              thresholds=[(not_scoring // 2, "orange"), (not_scoring, "red")],
              description=f"BoxwatchDetectorNotScoring fires after {words(int(not_scoring))} without one."), 4, 4),
        (stat("Queries drifting", "sum(boxwatch_drift_detected) or vector(0)", thresholds=[(1, "orange")]), 4, 4),
        (stat("Registry up", "min(boxwatch_detector_registry_up)"), 4, 4),
        (timeseries("Scoring cycle duration", [
            ("histogram_quantile(0.5, sum by (le) (rate(boxwatch_detector_cycle_duration_seconds_bucket"
             "[$__rate_interval])))", "p50"),
            ("histogram_quantile(0.95, sum by (le) (rate(boxwatch_detector_cycle_duration_seconds_bucket"
             "[$__rate_interval])))", "p95")], unit="s", fill=0), 12, 8),
        (timeseries("Series scored", [("boxwatch_detector_series_scored", "{{query}} {{model}}")], stack=True),
         12, 8),
        (timeseries("Errors", [
            ("sum by (query) (rate(boxwatch_detector_query_errors_total[$__rate_interval]))", "query {{query}}"),
            ("rate(boxwatch_detector_registry_errors_total[$__rate_interval])", "registry")],
            unit="short", fill=0), 12, 8),
        (timeseries("Model fit duration", [("boxwatch_detector_model_fit_duration_seconds", "{{query}} {{model}}")],
                    unit="s", fill=0), 12, 8),
        (table("Model versions serving", "boxwatch_model_info",
               hide=("Time", "Value", "__name__", "job", "instance", "boxwatch_demo"),
               description="The registry version (alias champion) each query's model serves."), 12, 8),
        (timeseries("Drift score", [("boxwatch_drift_score", "{{query}} {{feature}}")], min_=0, fill=0), 12, 8),
        (timeseries("Anomalies marked as false positives", [(
            "sum by (query, model) (increase(boxwatch_feedback_false_positives_total[1d]))", "{{query}} {{model}}")],
            unit="short", fill=0,
            description="Anomalies an operator marked false_positive (POST /api/v1/feedback), per query and model, "
                        "over the last day. A model whose marks pile up should be looked at (docs/feedback.md)."),
         12, 8),
        (state_timeline("Scrape targets up", [(f'up{{job=~"{own_jobs}"}}', "{{job}} {{instance}}")]), 12, 8),
        (timeseries("Exporter collectors", [
            ("boxwatch_exporter_scrape_collector_duration_seconds", "{{job}} {{collector}}")], unit="s", fill=0,
            description="Time each collector takes per scrape; BoxwatchCollectorFailing fires when one fails."),
         12, 8),
    ]
    return dashboard("boxwatch-detector-health", "boxwatch / Detector health",
                     "The detector and exporters themselves: cycles, errors, model versions, drift.", [], items)


DASHBOARDS = {
    "anomaly-overview.json": anomaly_overview,
    "gpus.json": gpus,
    "containers.json": containers,
    "journal.json": journal,
    "detector-health.json": detector_health,
}


def render(cfg: Config) -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: json.dumps(build(cfg), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()}
