"""boxwatch's recording and alerting rules, as data built from a :class:`~mixin.config.Config`.

Each rule file is a :class:`RuleFile` (prometheus/rules/<name>.yml): a header comment and its
groups. A rule is the dict Prometheus reads, plus an optional ``comment`` the generator writes above
it. Every threshold and ``for:`` comes from the config, and so do the numbers in the annotations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mixin.config import ERROR_PRIORITIES, Config, Threshold

DURATION = re.compile(r"^(\d+)([smhd])$")
UNITS = {"s": ("second", 1), "m": ("minute", 60), "h": ("hour", 3600), "d": ("day", 86400)}


@dataclass(frozen=True)
class RuleFile:
    name: str
    header: str
    groups: list[dict]
    title: str = ""  # of its table in docs/alerts.md

    def alerts(self) -> list[dict]:
        return [rule for group in self.groups for rule in group["rules"] if "alert" in rule]


# ----------------------------------------------------------------------------- wording


def seconds(duration: str) -> int:
    match = DURATION.match(duration)
    if not match:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return int(match[1]) * UNITS[match[2]][1]


def words(duration: str | int) -> str:
    """``5m`` (or 300 seconds) as "5 minutes", ``1h`` as "1 hour": in the largest whole unit."""
    total = duration if isinstance(duration, int) else seconds(duration)
    for unit, size in sorted(UNITS.values(), key=lambda u: -u[1]):
        if total >= size and total % size == 0:
            count = total // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{total} seconds"


def an(duration: str) -> str:
    """As :func:`words`, with "an hour" / "a minute" for one of a unit."""
    text = words(duration)
    return re.sub(r"^1 (\w+)$", lambda m: ("an " if m[1] == "hour" else "a ") + m[1], text)


def num(value: float) -> str:
    """A threshold as PromQL and people write it: 2 not 2.0, 0.2 not 0.20000001."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def times(value: float) -> str:
    return {2: "twice", 3: "three times"}.get(value, f"{num(value)} times")


def only(cfg: Config, name: str) -> Threshold:
    """The threshold of an alert that has one severity."""
    [threshold] = cfg.alerts[name].values()
    return threshold


def block(*lines: str) -> str:
    """A multi-line expression (written as a YAML block)."""
    return "\n".join(lines) + "\n"


def alert(cfg: Config, name: str, severity: str, expr: str, summary: str, description: str,
          comment: str = "") -> dict:
    rule: dict = {"alert": name, "expr": expr}
    if seconds(cfg.alert(name, severity).for_):
        rule["for"] = cfg.alert(name, severity).for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description, "runbook_url": cfg.runbook(name)}
    if comment:
        rule = {"comment": comment, **rule}
    return rule


def record(name: str, expr: str, comment: str = "") -> dict:
    return {"comment": comment, "record": name, "expr": expr} if comment else {"record": name, "expr": expr}


# ----------------------------------------------------------------------------- anomaly.yml

# The cause hints and top features of the same series (every label of the score), looked up when the
# annotation is rendered, so that a changing cause never changes the alert's identity.
_CAUSES = (
    '{{ $sel := "" }}{{ range $k, $v := $labels }}{{ if ne $k "__name__" }}{{ $sel = printf "%s%s=%q," $sel $k $v }}'
    '{{ end }}{{ end }}{{ with query (printf "boxwatch_anomaly_cause{%s}" $sel) }} Likely causes: '
    '{{ range $i, $s := sortByLabel "rank" . }}{{ if $i }}, {{ end }}{{ $s.Labels.cause }}{{ end }}.{{ end }}'
    '{{ with query (printf "boxwatch_anomaly_top_feature{%s}" $sel) }} Top features: '
    '{{ range $i, $s := sortByLabel "rank" . }}{{ if $i }}, {{ end }}{{ $s.Labels.feature }}{{ end }}.{{ end }}')
_SCORED = ("The anomaly score of {{ $labels.query }} ({{ $labels.model }}) for {{ with $labels.instance }}{{ . }} "
           "{{ end }}{{ with $labels.gpu }}gpu {{ . }} {{ end }}{{ with $labels.name }}{{ . }} {{ end }}"
           "{{ with $labels.unit }}{{ . }} {{ end }}is {{ $value | printf \"%.2f\" }}")


def anomaly(cfg: Config) -> RuleFile:
    warn, crit = cfg.alert("AnomalyScoreHigh", "warning"), cfg.alert("AnomalyScoreHigh", "critical")
    a = {name: only(cfg, name) for name in cfg.alerts if name.startswith("Boxwatch")}
    scores = [
        alert(cfg, "AnomalyScoreHigh", "warning", f"boxwatch_anomaly_score > {num(warn.threshold)}",
              "{{ $labels.query }} is outside the band the {{ $labels.model }} model expects.",
              f"{_SCORED} (> 1 means outside the expected band) for more than {words(warn.for_)}.{_CAUSES}",
              comment=f"Score convention: 0 normal, > 1 outside the model's band. Warning: {warn.why}.\n"
                      f"Critical: {crit.why}.\n"
                      "The description names the detector's cause hints and top features of the same series\n"
                      "(boxwatch_anomaly_cause / _top_feature, matched on every label of the score; docs/causes.md),\n"
                      "looked up in the annotation so that a changing cause never changes the alert's identity."),
        alert(cfg, "AnomalyScoreHigh", "critical", f"boxwatch_anomaly_score > {num(crit.threshold)}",
              f"{{{{ $labels.query }}}} has been far outside its expected band for {words(crit.for_)}.",
              f"{_SCORED} (over {num(crit.threshold)}: the deviation is {times(crit.threshold)} the band) "
              f"for more than {words(crit.for_)}.{_CAUSES}"),
    ]
    t = a["BoxwatchDetectorNotScoring"]
    detector = [
        alert(cfg, "BoxwatchDetectorDown", "critical",
              f"up{{{a['BoxwatchDetectorDown'].selector}}} == {num(a['BoxwatchDetectorDown'].threshold)}",
              "The boxwatch detector is down: no anomaly scores.",
              "Prometheus has failed to scrape the detector {{ $labels.instance }} (job {{ $labels.job }}) for "
              f"{words(a['BoxwatchDetectorDown'].for_)}. Anomaly alerts are inhibited while it is down."),
        alert(cfg, "BoxwatchDetectorPrometheusUnreachable", "critical",
              f"boxwatch_detector_prometheus_up == {num(a['BoxwatchDetectorPrometheusUnreachable'].threshold)}",
              "The boxwatch detector cannot query Prometheus.",
              "The detector {{ $labels.instance }} has failed its Prometheus queries for "
              f"{words(a['BoxwatchDetectorPrometheusUnreachable'].for_)} (boxwatch_detector_prometheus_up = "
              "{{ $value }}); its scores are stale. Anomaly alerts are inhibited."),
        alert(cfg, "BoxwatchDetectorNotScoring", "warning",
              f"time() - boxwatch_detector_last_success_timestamp_seconds > {num(t.threshold)}",
              f"The boxwatch detector has not completed a scoring cycle for over {words(int(t.threshold))}.",
              "The last successful scoring cycle of {{ $labels.instance }} was {{ $value | humanizeDuration }} ago."),
        alert(cfg, "BoxwatchDetectorQueryErrors", "warning",
              f"rate(boxwatch_detector_query_errors_total[15m]) > {num(a['BoxwatchDetectorQueryErrors'].threshold)}",
              "The watched query {{ $labels.query }} keeps failing.",
              "The detector {{ $labels.instance }} has had errors on query {{ $labels.query }} for "
              f"{words(a['BoxwatchDetectorQueryErrors'].for_)} ({{{{ $value | printf \"%.4f\" }}}} errors/s); "
              "that query is not being scored."),
        alert(cfg, "BoxwatchModelsNotReady", "warning",
              f"boxwatch_detector_models_ready == {num(a['BoxwatchModelsNotReady'].threshold)}",
              f"The boxwatch detector has had no ready models for {an(a['BoxwatchModelsNotReady'].for_)}.",
              "boxwatch_detector_models_ready on {{ $labels.instance }} has been {{ $value }} for "
              f"{words(a['BoxwatchModelsNotReady'].for_)}: not enough history, or every fit fails."),
        alert(cfg, "BoxwatchModelDriftDetected", "warning",
              f"boxwatch_drift_detected == {num(a['BoxwatchModelDriftDetected'].threshold)}",
              "The data of {{ $labels.query }} has drifted from what its model was trained on.",
              "Evidently reports drift for query {{ $labels.query }} ({{ $labels.model }}) on {{ $labels.instance }} "
              f"for over {an(a['BoxwatchModelDriftDetected'].for_)}; scores may be unreliable until a retrain."),
        alert(cfg, "BoxwatchRegistryUnavailable", "warning",
              f"boxwatch_detector_registry_up == {num(a['BoxwatchRegistryUnavailable'].threshold)}",
              "The detector cannot reach its model registry.",
              "The MLflow registry has been unreachable from {{ $labels.instance }} for "
              f"{words(a['BoxwatchRegistryUnavailable'].for_)}: new model versions are neither registered nor "
              "picked up; the current models keep serving."),
        alert(cfg, "BoxwatchDetectorConfigReloadFailed", "warning",
              "boxwatch_detector_config_last_reload_successful == "
              f"{num(a['BoxwatchDetectorConfigReloadFailed'].threshold)}",
              "The boxwatch detector refused its new configuration.",
              "The last configuration reload of {{ $labels.instance }} failed "
              "(boxwatch_detector_config_last_reload_successful = {{ $value }}); it keeps serving the last good "
              "configuration, and a restart would refuse to start."),
        alert(cfg, "BoxwatchDetectorRemoteWriteFailing", "warning",
              "rate(boxwatch_detector_remote_write_errors_total[15m]) > "
              f"{num(a['BoxwatchDetectorRemoteWriteFailing'].threshold)}",
              "The boxwatch detector cannot push its scores with remote write.",
              "Remote writes from {{ $labels.instance }} have failed for "
              f"{words(a['BoxwatchDetectorRemoteWriteFailing'].for_)} ({{{{ $value | printf \"%.4f\" }}}} "
              "failures/s); scores are still on /metrics but the remote store misses them."),
        alert(cfg, "BoxwatchDetectorScoringErrors", "warning",
              "rate(boxwatch_detector_scoring_errors_total[15m]) > "
              f"{num(a['BoxwatchDetectorScoringErrors'].threshold)}",
              "Models of query {{ $labels.query }} fail while scoring.",
              "The detector {{ $labels.instance }} has had scoring errors on query {{ $labels.query }} for "
              f"{words(a['BoxwatchDetectorScoringErrors'].for_)} ({{{{ $value | printf \"%.4f\" }}}} errors/s); "
              "the series whose model fails get no score."),
        alert(cfg, "BoxwatchDetectorPersistFailing", "warning",
              "increase(boxwatch_detector_persist_errors_total[1h]) > "
              f"{num(a['BoxwatchDetectorPersistFailing'].threshold)}",
              "The boxwatch detector cannot write to its state directory.",
              "Writes to the state directory of {{ $labels.instance }} failed {{ $value | printf \"%.0f\" }} times "
              "in the last hour (disk full, read-only or wrong permissions): fitted models serve from memory only "
              "and are lost at the next restart."),
        alert(cfg, "BoxwatchModelRejected", "critical",
              f"increase(boxwatch_detector_rejected_models_total[1h]) > {num(a['BoxwatchModelRejected'].threshold)}",
              "The boxwatch detector refused a model file it did not write ({{ $labels.source }}).",
              "{{ $labels.instance }} refused {{ $value | printf \"%.0f\" }} model files from the {{ $labels.source }} "
              "in the last hour: unsigned, signed with another key, or owned or writable by another user. Someone "
              "may have planted a model (pickles run code); it was not loaded."),
    ]
    return RuleFile("anomaly", "Alerts on the detector's anomaly scores and on the detector itself.", [
        {"name": "boxwatch-anomaly.alerts", "rules": scores},
        {"name": "boxwatch-detector.alerts", "rules": detector},
    ], title="Anomaly scores and the detector")


# ----------------------------------------------------------------------------- exporters.yml


def exporters(cfg: Config) -> RuleFile:
    down = cfg.alert("BoxwatchExporterDown", "warning")
    collector = cfg.alert("BoxwatchCollectorFailing", "warning")
    reader = cfg.alert("BoxwatchJournalReaderDown", "warning")
    rules = [
        alert(cfg, "BoxwatchExporterDown", "warning", f"up{{{down.selector}}} == {num(down.threshold)}",
              "The boxwatch exporter {{ $labels.job }} is down.",
              "Prometheus has failed to scrape {{ $labels.job }} on {{ $labels.instance }} for "
              f"{words(down.for_)}; its metrics and the alerts that depend on them are missing."),
        alert(cfg, "BoxwatchCollectorFailing", "warning",
              f"boxwatch_exporter_scrape_collector_success == {num(collector.threshold)}",
              "The {{ $labels.collector }} collector of {{ $labels.job }} is failing.",
              "The {{ $labels.collector }} collector on {{ $labels.instance }} ({{ $labels.job }}) has failed every "
              f"scrape for {words(collector.for_)}; its series are missing while the exporter's others still are "
              "reported."),
        alert(cfg, "BoxwatchJournalReaderDown", "warning", f"boxwatch_journal_reader_up == {num(reader.threshold)}",
              "The journald exporter is not reading the journal.",
              "boxwatch_journal_reader_up on {{ $labels.instance }} ({{ $labels.job }}) has been {{ $value }} for "
              f"{words(reader.for_)}; journal entries, log templates and Xid events are not counted while the "
              "exporter itself still answers."),
    ]
    return RuleFile("exporters", "Alerts on boxwatch's own exporters (self-monitoring).",
                    [{"name": "boxwatch-exporters.alerts", "rules": rules}], title="boxwatch exporters (self-monitoring)")


# ----------------------------------------------------------------------------- gpu.yml

_GPU = "GPU {{ $labels.gpu }} ({{ $labels.name }}) on {{ $labels.instance }}"


def _xid(selector: str) -> str:
    return block(f"increase(boxwatch_gpu_xid_errors_total{{{selector}}}[1h]) > 0",
                 "or",
                 f"(boxwatch_gpu_xid_errors_total{{{selector}}}",
                 f"  unless boxwatch_gpu_xid_errors_total{{{selector}}} offset 1h)")


def _gpu_temperature(t: Threshold, above: str) -> str:
    return block("boxwatch_gpu_temperature_celsius",
                 "  > on (instance, gpu, uuid) group_left () (boxwatch_gpu_slowdown_temperature_celsius - "
                 f"{num(t.margin)})",
                 "or",
                 f"(boxwatch_gpu_temperature_celsius {above} {num(t.threshold)}",
                 "  unless on (instance, gpu, uuid) boxwatch_gpu_slowdown_temperature_celsius)")


def gpu(cfg: Config) -> RuleFile:
    a = {(name, sev): cfg.alert(name, sev) for name, sevs in cfg.alerts.items() for sev in sevs}
    nvml, lost = a["GpuNvmlUnavailable", "critical"], a["GpuLost", "critical"]
    thermal_w, thermal_c = a["GpuThermalThrottling", "warning"], a["GpuThermalThrottling", "critical"]
    power_w, power_c = a["GpuPowerThrottling", "warning"], a["GpuPowerThrottling", "critical"]
    temp_w, temp_c = a["GpuTemperatureHigh", "warning"], a["GpuTemperatureHigh", "critical"]
    xid_w, xid_c = a["GpuXidErrors", "warning"], a["GpuXidErrors", "critical"]
    ecc, pcie = a["GpuEccUncorrectableErrors", "critical"], a["GpuPcieLinkDegraded", "warning"]
    mem_w, mem_c = a["GpuMemoryDegraded", "warning"], a["GpuMemoryDegraded", "critical"]
    xid_annotation = ("The NVIDIA driver logged Xid {{ $labels.xid }} for the GPU at PCI {{ $labels.pci_bus_id }} on "
                      "{{ $labels.instance }} in the last hour (count: {{ $value | printf \"%.0f\" }})")
    rules = [
        alert(cfg, "GpuNvmlUnavailable", "critical", f"boxwatch_nvml_up == {num(nvml.threshold)}",
              "The NVIDIA driver (NVML) is not available on {{ $labels.instance }}.",
              "The GPU exporter on {{ $labels.instance }} could not initialise NVML for "
              f"{words(nvml.for_)} (boxwatch_nvml_up = {{{{ $value }}}}): no GPU is monitored."),
        alert(cfg, "GpuLost", "critical", f"boxwatch_gpu_up == {num(lost.threshold)}",
              "GPU {{ $labels.gpu }} ({{ $labels.name }}) on {{ $labels.instance }} stopped answering.",
              "NVML calls on GPU {{ $labels.gpu }} ({{ $labels.name }}, {{ $labels.uuid }}) of {{ $labels.instance }} "
              f"have failed for {words(lost.for_)} (e.g. GPU_IS_LOST after an Xid 79). Its other alerts are "
              "inhibited."),
        alert(cfg, "GpuThermalThrottling", "warning",
              f"max without (reason) (boxwatch_gpu_throttle_active{{{thermal_w.selector}}}) > "
              f"{num(thermal_w.threshold)}",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} is slowing its clocks because it is too hot.",
              f"{_GPU} has been thermally throttled (software or hardware thermal slowdown) for "
              f"{words(thermal_w.for_)}."),
        alert(cfg, "GpuThermalThrottling", "critical",
              f"max without (reason) (boxwatch_gpu_throttle_active{{{thermal_c.selector}}}) > "
              f"{num(thermal_c.threshold)}",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} is in hardware thermal slowdown.",
              f"{_GPU} has been in hardware thermal slowdown for {words(thermal_c.for_)}: it is at its shutdown "
              "margin and running at a fraction of its clocks."),
        alert(cfg, "GpuPowerThrottling", "warning",
              f"avg_over_time(boxwatch_gpu_throttle_active{{{power_w.selector}}}[30m]) > {num(power_w.threshold)}",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} is held at its power limit most of the time.",
              f"{_GPU} was power-capped {{{{ $value | humanizePercentage }}}} of the last 30 minutes, for "
              f"{words(power_w.for_)} on end."),
        alert(cfg, "GpuPowerThrottling", "critical",
              f"boxwatch_gpu_throttle_active{{{power_c.selector}}} > {num(power_c.threshold)}",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} is in hardware power-brake slowdown.",
              "The power brake of GPU {{ $labels.gpu }} ({{ $labels.name }}) on {{ $labels.instance }} has been "
              f"asserted for {words(power_c.for_)}: the power supply or its cabling cannot deliver what the GPU "
              "draws."),
        alert(cfg, "GpuTemperatureHigh", "warning", _gpu_temperature(temp_w, ">"),
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} runs hot: {{ $value }} °C.",
              f"{_GPU} has been within {num(temp_w.margin)} °C of its slowdown temperature for {words(temp_w.for_)} "
              f"(now {{{{ $value }}}} °C; above {num(temp_w.threshold)} °C for a card that reports no slowdown "
              "temperature).",
              comment="Each card's own slowdown temperature (boxwatch_gpu_slowdown_temperature_celsius) less a\n"
                      "margin; the fixed number only for a card that reports none."),
        alert(cfg, "GpuTemperatureHigh", "critical", _gpu_temperature(temp_c, ">="),
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} is at {{ $value }} °C.",
              f"{_GPU} has been within {num(temp_c.margin)} °C of its slowdown temperature for {words(temp_c.for_)} "
              f"(now {{{{ $value }}}} °C; {num(temp_c.threshold)} °C or more for a card that reports no slowdown "
              "temperature): it is about to slow down, and its shutdown temperature is not far above."),
        alert(cfg, "GpuXidErrors", "warning", _xid(xid_w.selector),
              "Xid {{ $labels.xid }} on the GPU at PCI {{ $labels.pci_bus_id }} ({{ $labels.instance }}).",
              f"{xid_annotation}. Usually an application or driver fault; see the runbook for the code.",
              comment="Xid counters appear with their first event, so `increase` alone misses that event: the\n"
                      "`unless ... offset` branch catches series that did not exist an hour ago."),
        alert(cfg, "GpuXidErrors", "critical", _xid(xid_c.selector),
              "Fatal Xid {{ $labels.xid }} on the GPU at PCI {{ $labels.pci_bus_id }} ({{ $labels.instance }}).",
              f"{xid_annotation}: a hardware-level error (ECC, fallen off the bus, NVLink or GSP) that needs a GPU "
              "reset or a reboot."),
        alert(cfg, "GpuEccUncorrectableErrors", "critical",
              f"increase(boxwatch_gpu_ecc_errors_total{{{ecc.selector}}}[1h]) > {num(ecc.threshold)}",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} had uncorrectable ECC errors.",
              f"{_GPU} counted {{{{ $value | printf \"%.0f\" }}}} uncorrectable ECC errors in the last hour."),
        alert(cfg, "GpuPcieLinkDegraded", "warning",
              f"boxwatch_gpu_pcie_link_width / boxwatch_gpu_pcie_link_width_max < {num(pcie.threshold)}",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} runs on a narrower PCIe link than it can.",
              "The PCIe link of GPU {{ $labels.gpu }} ({{ $labels.name }}) on {{ $labels.instance }} has been at "
              "{{ $value | humanizePercentage }} of the width the card and slot support for "
              f"{words(pcie.for_)}: it trained down (riser, seating, slot wiring).",
              comment="Width, not generation: the generation drops at idle to save power, the width stays."),
        alert(cfg, "GpuMemoryDegraded", "warning",
              f"{mem_w.selector} == {num(mem_w.threshold)} or boxwatch_gpu_retired_pages_pending == "
              f"{num(mem_w.threshold)}",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} needs a reset to retire failing memory.",
              f"{_GPU} has remapped rows or retired pages that take effect only after a GPU reset or driver "
              "reload; until then the failing memory is still in use."),
        alert(cfg, "GpuMemoryDegraded", "critical", f"{mem_c.selector} == {num(mem_c.threshold)}",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} can no longer repair its memory.",
              "A row remapping of GPU {{ $labels.gpu }} ({{ $labels.name }}, {{ $labels.uuid }}) on "
              "{{ $labels.instance }} failed: the memory has no spare rows left for the failing ones. The card "
              "needs replacing (RMA)."),
    ]
    return RuleFile("gpu", "Alerts on raw GPU signals: they need no model.\n"
                           "GPU identity on every alert: instance, gpu (index), uuid, name. Alertmanager inhibits a "
                           "GPU's\nother alerts while GpuLost fires for it (equal: instance, gpu).",
                    [{"name": "boxwatch-gpu.alerts", "rules": rules}], title="GPU (raw signals, no model)")


# ----------------------------------------------------------------------------- containers.yml

_CONTAINER = "{{ $labels.name }} (compose service {{ $labels.compose_service }}) on {{ $labels.instance }}"


def containers(cfg: Config) -> RuleFile:
    docker = cfg.alert("DockerDaemonUnreachable", "warning")
    oom = cfg.alert("ContainerOomKilled", "warning")
    loop_w, loop_c = cfg.alert("ContainerRestartLoop", "warning"), cfg.alert("ContainerRestartLoop", "critical")
    unhealthy = cfg.alert("ContainerUnhealthy", "warning")
    rules = [
        alert(cfg, "DockerDaemonUnreachable", "warning", f"boxwatch_docker_up == {num(docker.threshold)}",
              "The containers exporter cannot reach Docker on {{ $labels.instance }}.",
              "boxwatch_docker_up on {{ $labels.instance }} has been {{ $value }} for "
              f"{words(docker.for_)}: container metrics are missing."),
        alert(cfg, "ContainerOomKilled", "warning", block(
            f"max without (image) (boxwatch_container_oom_killed) > {num(oom.threshold)}",
            "or",
            'max without (event) (increase(boxwatch_container_events_total{event="oom"}[15m])) > '
            f"{num(oom.threshold)}",
            "or",
            'max without (event) (boxwatch_container_events_total{event="oom"}',
            '  unless boxwatch_container_events_total{event="oom"} offset 15m)'),
            "Container {{ $labels.name }} on {{ $labels.instance }} was OOM-killed.",
            f"The kernel OOM killer stopped container {_CONTAINER} in the last 15 minutes.",
            comment="The oom event counter appears with its first event: the `unless ... offset` branch catches it."),
        alert(cfg, "ContainerRestartLoop", "warning",
              f"max without (image) (increase(boxwatch_container_restarts_total[15m])) > {num(loop_w.threshold)}",
              "Container {{ $labels.name }} on {{ $labels.instance }} keeps restarting.",
              f"Container {_CONTAINER} restarted {{{{ $value | printf \"%.0f\" }}}} times in the last 15 minutes."),
        alert(cfg, "ContainerRestartLoop", "critical",
              f"max without (image) (increase(boxwatch_container_restarts_total[1h])) > {num(loop_c.threshold)}",
              "Container {{ $labels.name }} on {{ $labels.instance }} is in a restart loop.",
              f"Container {_CONTAINER} restarted {{{{ $value | printf \"%.0f\" }}}} times in the last hour; it has "
              f"not stayed up for {words(loop_c.for_)}."),
        alert(cfg, "ContainerUnhealthy", "warning",
              'max without (image, status) (boxwatch_container_health_status{status="unhealthy"}) == '
              f"{num(unhealthy.threshold)}",
              "Container {{ $labels.name }} on {{ $labels.instance }} is unhealthy.",
              f"The healthcheck of container {_CONTAINER} has failed for {words(unhealthy.for_)}."),
    ]
    return RuleFile("containers", "Alerts on raw container signals.\n"
                                  "Container identity on every alert: instance, name, compose_service.",
                    [{"name": "boxwatch-containers.alerts", "rules": rules}], title="Containers (raw signals)")


# ----------------------------------------------------------------------------- journal.yml


def journal_error_rate(selector: str) -> str:
    """Error lines per second of each unit, over 5 minutes (JournalErrorBurst and its recording rule)."""
    return f"sum without (priority) (rate(boxwatch_journal_entries_total{{{selector}}}[5m]))"


def journal(cfg: Config) -> RuleFile:
    burst_w, burst_c = cfg.alert("JournalErrorBurst", "warning"), cfg.alert("JournalErrorBurst", "critical")
    new = cfg.alert("JournalNewTemplatesBurst", "warning")
    over = ("The journal of {{ $labels.instance }} has received {{ $value | printf \"%.2f\" }} entries per second at "
            "priority err or worse from {{ $labels.unit }} over 5 minutes")
    rules = [
        alert(cfg, "JournalErrorBurst", "warning", f"{journal_error_rate(burst_w.selector)} > {num(burst_w.threshold)}",
              "{{ $labels.unit }} on {{ $labels.instance }} logs errors at {{ $value | printf \"%.2f\" }}/s.",
              f"{over} (threshold {num(burst_w.threshold)}/s = {num(round(burst_w.threshold * 60, 6))} a minute)."),
        alert(cfg, "JournalErrorBurst", "critical", f"{journal_error_rate(burst_c.selector)} > {num(burst_c.threshold)}",
              "{{ $labels.unit }} on {{ $labels.instance }} floods the journal with errors "
              "({{ $value | printf \"%.2f\" }}/s).",
              f"{over} (threshold {num(burst_c.threshold)}/s)."),
        alert(cfg, "JournalNewTemplatesBurst", "warning",
              f"increase(boxwatch_journal_new_templates_total[15m]) > {num(new.threshold)}",
              "{{ $labels.unit }} on {{ $labels.instance }} logs messages never seen before.",
              "{{ $value | printf \"%.0f\" }} new log templates appeared for {{ $labels.unit }} on "
              "{{ $labels.instance }} in 15 minutes: it is logging something it has not logged before."),
    ]
    return RuleFile("journal", 'Alerts on the systemd journal\'s counts.\n'
                               'Unit identity on every alert: instance, unit ("kernel" for kernel messages).',
                    [{"name": "boxwatch-journal.alerts", "rules": rules}], title="Journal (raw signals)")


# ----------------------------------------------------------------------------- host.yml


def _filesystem_filling(t: Threshold, hours: int) -> str:
    fs = t.selector
    return block(f"node_filesystem_avail_bytes{{{fs}}} / node_filesystem_size_bytes{{{fs}}} < {num(t.threshold)}",
                 f"  and predict_linear(node_filesystem_avail_bytes{{{fs}}}[6h], {hours} * 3600) < 0",
                 f"  and node_filesystem_readonly{{{fs}}} == 0")


def host(cfg: Config) -> RuleFile:
    cpu_w, cpu_c = cfg.alert("HostCpuTemperatureHigh", "warning"), cfg.alert("HostCpuTemperatureHigh", "critical")
    fan = cfg.alert("HostFanStopped", "warning")
    psi_w, psi_c = cfg.alert("HostMemoryPressure", "warning"), cfg.alert("HostMemoryPressure", "critical")
    fs_w, fs_c = cfg.alert("HostFilesystemFillingUp", "warning"), cfg.alert("HostFilesystemFillingUp", "critical")
    reboot = cfg.alert("HostUnexpectedReboot", "warning")
    recording = [
        record("instance:node_cpu_temperature_celsius:max", block(
            "max without (chip, sensor) (",
            "  node_hwmon_temp_celsius",
            '    and on (instance, chip) node_hwmon_chip_names{chip_name=~"coretemp|k10temp|zenpower"}',
            ")",
            "or",
            'max without (zone, type) (node_thermal_zone_temp{type=~"x86_pkg_temp|cpu[-_]thermal|soc[-_]thermal"})'),
            comment="The hottest CPU package/die sensor: hwmon's coretemp (Intel) or k10temp/zenpower (AMD),\n"
                    "else the kernel's thermal zone for the package (x86_pkg_temp) or the SoC."),
        record("instance:node_cpu_utilisation:rate5m",
               '1 - avg without (cpu, mode) (rate(node_cpu_seconds_total{mode="idle"}[5m]))'),
        record("instance:node_pressure_memory_waiting_seconds:rate5m",
               "rate(node_pressure_memory_waiting_seconds_total[5m])",
               comment="Pressure stall information: the fraction of time some task (waiting) or every task\n"
                       "(stalled) could not run for want of memory."),
        record("instance:node_pressure_memory_stalled_seconds:rate5m",
               "rate(node_pressure_memory_stalled_seconds_total[5m])"),
        record("instance:node_memory_available_bytes:ratio", "node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes"),
    ]
    fs_annotation = ("{{ $labels.mountpoint }} ({{ $labels.device }}) on {{ $labels.instance }} has "
                     "{{ $value | humanizePercentage }} free and, at the rate of the last 6 hours, fills up within ")
    alerts = [
        alert(cfg, "HostCpuTemperatureHigh", "warning",
              f"instance:node_cpu_temperature_celsius:max > {num(cpu_w.threshold)}",
              "The CPU of {{ $labels.instance }} runs hot: {{ $value }} °C.",
              f"The hottest CPU sensor of {{{{ $labels.instance }}}} has been above {num(cpu_w.threshold)} °C for "
              f"{words(cpu_w.for_)} (now {{{{ $value }}}} °C): the cooler, its fan or the case airflow is not keeping "
              "up."),
        alert(cfg, "HostCpuTemperatureHigh", "critical",
              f"instance:node_cpu_temperature_celsius:max > {num(cpu_c.threshold)}",
              "The CPU of {{ $labels.instance }} is at {{ $value }} °C.",
              f"The hottest CPU sensor of {{{{ $labels.instance }}}} has been above {num(cpu_c.threshold)} °C for "
              f"{words(cpu_c.for_)} (now {{{{ $value }}}} °C): at its throttling limit, minutes from a thermal "
              "shutdown."),
        alert(cfg, "HostFanStopped", "warning", block(
            f"node_hwmon_fan_rpm == {num(fan.threshold)}",
            "  and on (instance, chip, sensor) (max_over_time(node_hwmon_fan_rpm[1d]) > 0)",
            "  and on (instance) (instance:node_cpu_utilisation:rate5m > 0.5)"),
            "Fan {{ $labels.sensor }} of {{ $labels.instance }} stopped under load.",
            "Fan {{ $labels.sensor }} ({{ $labels.chip }}) of {{ $labels.instance }} has read {{ $value }} rpm for "
            f"{words(fan.for_)} while the CPUs were more than half busy; it spun in the last day.",
            comment="A fan that spun in the last day reads 0 rpm while the CPUs are busy: stopped, not in its\n"
                    "zero-rpm idle mode. Fan headers with nothing attached (never above 0) are left out."),
        alert(cfg, "HostMemoryPressure", "warning", f"rate({psi_w.selector}[5m]) > {num(psi_w.threshold)}",
              "{{ $labels.instance }} is short of memory: tasks wait for it {{ $value | humanizePercentage }} of the "
              "time.",
              "On {{ $labels.instance }}, some task has been stalled waiting for memory "
              f"{{{{ $value | humanizePercentage }}}} of the time for {words(psi_w.for_)} (PSI memory some): reclaim "
              "and swapping slow the workloads down."),
        alert(cfg, "HostMemoryPressure", "critical", f"rate({psi_c.selector}[5m]) > {num(psi_c.threshold)}",
              "{{ $labels.instance }} is thrashing: every task stalls on memory {{ $value | humanizePercentage }} of "
              "the time.",
              "On {{ $labels.instance }}, all non-idle tasks have been stalled on memory at once "
              f"{{{{ $value | humanizePercentage }}}} of the time for {words(psi_c.for_)} (PSI memory full): the box "
              "is thrashing and the OOM killer is near."),
        alert(cfg, "HostFilesystemFillingUp", "warning", _filesystem_filling(fs_w, 24),
              "{{ $labels.mountpoint }} on {{ $labels.instance }} will be full within a day.",
              f"{fs_annotation}24 hours."),
        alert(cfg, "HostFilesystemFillingUp", "critical", _filesystem_filling(fs_c, 4),
              "{{ $labels.mountpoint }} on {{ $labels.instance }} will be full within 4 hours.",
              f"{fs_annotation}4 hours."),
        alert(cfg, "HostUnexpectedReboot", "warning",
              "max_over_time(node_boot_time_seconds[1h]) - min_over_time(node_boot_time_seconds[1h]) > "
              f"{num(reboot.threshold)}",
              "{{ $labels.instance }} rebooted within the last hour.",
              "{{ $labels.instance }} booted again within the last hour, {{ $value | humanizeDuration }} after its "
              "previous boot. If nobody restarted it, look for a power, thermal or kernel fault.",
              comment="The boot time moved: the box restarted within the hour (a min/max spread, so the second\n"
                      "or so by which /proc/stat's btime can wobble does not count)."),
    ]
    return RuleFile("host", f"The host under the GPUs, from node_exporter (job {cfg.jobs['node']}; docs/host.md): CPU "
                            "temperature,\nfans, memory pressure, filling disks, reboots.\n"
                            "node_exporter's metric names are not boxwatch's own: the rules select them by name, so "
                            "any\nnode_exporter your Prometheus scrapes (kube-prometheus' included) feeds them.", [
        {"name": "boxwatch-host.recording", "rules": recording},
        {"name": "boxwatch-host.alerts", "rules": alerts},
    ], title="Host (node_exporter)")


# ----------------------------------------------------------------------------- recording.yml


def recording(cfg: Config) -> RuleFile:
    gpu_rules = [
        record("gpu:boxwatch_gpu_power_watts:avg5m", "avg_over_time(boxwatch_gpu_power_watts[5m])"),
        record("gpu:boxwatch_gpu_utilization_ratio:avg5m", "avg_over_time(boxwatch_gpu_utilization_ratio[5m])"),
        record("gpu:boxwatch_gpu_temperature_celsius:max5m", "max_over_time(boxwatch_gpu_temperature_celsius[5m])"),
        record("gpu:boxwatch_gpu_memory_used_bytes:ratio", "boxwatch_gpu_memory_used_bytes / boxwatch_gpu_memory_total_bytes"),
        record("gpu:boxwatch_gpu_energy_joules:rate5m", "rate(boxwatch_gpu_energy_joules_total[5m])"),
        record("gpu:boxwatch_gpu_throttle_active:max_thermal",
               f"max without (reason) (boxwatch_gpu_throttle_active{{{cfg.alert('GpuThermalThrottling', 'warning').selector}}})"),
        record("container:boxwatch_gpu_process_memory_used_bytes:sum", block(
            "label_replace(",
            '  sum without (gpu, uuid, name, process) (boxwatch_gpu_process_memory_used_bytes{container!=""}),',
            '  "name", "$1", "container", "(.+)")'),
            comment="GPU memory per container, over all its processes and GPUs, labelled as the containers\n"
                    "exporter labels the container (name, compose_service): it joins those series `on (name)`."),
    ]
    container_rules = [
        record("container:boxwatch_container_cpu_seconds:rate5m", "rate(boxwatch_container_cpu_seconds_total[5m])"),
        record("container:boxwatch_container_memory_usage_bytes:ratio",
               "boxwatch_container_memory_usage_bytes / (boxwatch_container_memory_limit_bytes > 0)"),
        record("container:boxwatch_container_restarts:increase15m", "increase(boxwatch_container_restarts_total[15m])"),
    ]
    journal_rules = [
        record("unit:boxwatch_journal_entries:rate5m", "rate(boxwatch_journal_entries_total[5m])"),
        record("unit:boxwatch_journal_error_entries:rate5m", journal_error_rate(ERROR_PRIORITIES)),
        record("unit:boxwatch_journal_new_templates:increase1h", "increase(boxwatch_journal_new_templates_total[1h])"),
    ]
    anomaly_rules = [
        record("query:boxwatch_anomaly_score:max", "max by (query, model) (boxwatch_anomaly_score)"),
        record("query:boxwatch_anomaly_score_above_band:count", "count by (query, model) (boxwatch_anomaly_score > 1)"),
    ]
    return RuleFile("recording", "boxwatch recording rules: level:metric:operations (Prometheus \"Defining recording "
                                 "rules\").\n"
                                 "  level      the labels kept: gpu (a GPU of an instance), container, unit (a systemd "
                                 "unit), query\n"
                                 "  metric     the source metric, without _total after a rate/increase\n"
                                 "  operations what was applied, newest first (avg5m, rate5m, ratio, max)\n"
                                 "Aggregations use `without (...)` so the identifying labels (job, instance, gpu, "
                                 "uuid, name, ...)\nand any labels Prometheus adds stay on the result. Dashboards use "
                                 "raw expressions so that\nbackfilled history renders too; these series are for "
                                 "alerts-to-come, federation and long-term stores.", [
        {"name": "boxwatch-gpu.recording", "rules": gpu_rules},
        {"name": "boxwatch-containers.recording", "rules": container_rules},
        {"name": "boxwatch-journal.recording", "rules": journal_rules},
        {"name": "boxwatch-anomaly.recording", "rules": anomaly_rules},
    ])


def rule_files(cfg: Config) -> list[RuleFile]:
    return [build(cfg) for build in (anomaly, containers, exporters, gpu, host, journal, recording)]
