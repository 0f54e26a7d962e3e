"""The one place for boxwatch's job names, alert thresholds and ``for:`` durations.

Rules and dashboards are built from a :class:`Config`; :data:`CONFIG` is the one the repository ships.
To change a number: edit it here, run ``python -m mixin.generate``, then the tests (the promtool
rule tests pin the behaviour at the thresholds). ``why`` says what a number stands for; it is
written to prometheus/thresholds.yml beside the number.

Selectors: boxwatch metric names are unique (prefix ``boxwatch_``), so the rules select by name and
aggregate with ``without (...)``, keeping job, instance and any label Prometheus adds. Only the
``up`` alerts select jobs: the job names of boxwatch/jobs.py (those of prometheus/prometheus.yml).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from boxwatch.jobs import JOBS


@dataclass(frozen=True)
class Threshold:
    """One severity of one alert: the number it compares with and how long it must hold.

    ``selector`` is the part of the expression that picks what the threshold applies to;
    ``margin`` (GpuTemperatureHigh) is relative to the card's own limit, ``threshold`` then the
    fallback for a card that reports none.
    """

    threshold: float
    for_: str
    why: str = ""
    selector: str = ""
    margin: float | None = None


def job_selector(jobs: dict[str, str], *components: str) -> str:
    """A ``job`` matcher for the components named (keys of boxwatch.jobs.JOBS)."""
    names = [jobs[c] for c in components]
    return f'job="{names[0]}"' if len(names) == 1 else f'job=~"{"|".join(names)}"'


FATAL_XIDS = "48|64|74|79|94|95|119|120"  # GpuXidErrors critical; every other Xid is a warning
ERROR_PRIORITIES = 'priority=~"emerg|alert|crit|err"'
FILESYSTEMS = 'fstype!~"tmpfs|ramfs|squashfs"'  # pseudo filesystems are never "filling up"


def default_alerts(jobs: dict[str, str], fatal_xids: str = FATAL_XIDS) -> dict[str, dict[str, Threshold]]:
    t = Threshold
    return {
        "AnomalyScoreHigh": {
            "warning": t(1, "3m", "outside the band for 3 scoring cycles (infer every 1m)"),
            "critical": t(2, "15m", "twice the band away, for a quarter of an hour"),
        },
        "BoxwatchDetectorDown": {
            "critical": t(0, "5m", "no anomaly detection at all", selector=job_selector(jobs, "detector")),
        },
        "BoxwatchDetectorPrometheusUnreachable": {
            "critical": t(0, "5m", "scores are stale: the detector is blind"),
        },
        "BoxwatchDetectorNotScoring": {
            "warning": t(600, "5m", "no successful cycle for 10 minutes (seconds)"),
        },
        "BoxwatchDetectorQueryErrors": {
            "warning": t(0, "15m", "one query failing for 15 minutes is a config or data problem"),
        },
        "BoxwatchModelsNotReady": {
            "warning": t(0, "1h", "the first fits need history; an hour without is not start-up"),
        },
        "BoxwatchModelDriftDetected": {
            "warning": t(1, "1h", "drift that lasts an hour calls for a retrain"),
        },
        "BoxwatchRegistryUnavailable": {
            "warning": t(0, "15m", "current models keep serving; only updates stop"),
        },
        "BoxwatchDetectorConfigReloadFailed": {
            "warning": t(0, "5m", "the file on disk is bad: the next restart would refuse to start"),
        },
        "BoxwatchDetectorRemoteWriteFailing": {
            "warning": t(0, "15m", "the remote store misses scores; /metrics still has them"),
        },
        "BoxwatchDetectorScoringErrors": {
            "warning": t(0, "15m", "a model failing for 15 minutes leaves its series unscored"),
        },
        "BoxwatchDetectorPersistFailing": {
            "warning": t(0, "0s", "one failed write already loses a fit at the next restart"),
        },
        "BoxwatchModelRejected": {
            "critical": t(0, "0s", "a model file the detector did not write: possibly planted code"),
        },
        "BoxwatchJournalReaderDown": {
            "warning": t(0, "10m", "reopens are retried; 10 minutes without the journal is not a blip"),
        },
        "BoxwatchExporterDown": {
            "warning": t(0, "5m", selector=job_selector(jobs, "gpu", "containers", "journald")),
        },
        "BoxwatchCollectorFailing": {
            "warning": t(0, "10m"),
        },
        "GpuNvmlUnavailable": {
            "critical": t(0, "5m", "no GPU monitored; usually a driver/kernel mismatch"),
        },
        "GpuLost": {
            "critical": t(0, "1m", "a lost GPU does not come back on its own"),
        },
        "GpuThermalThrottling": {
            "warning": t(0, "5m", selector='reason=~"sw_thermal_slowdown|hw_thermal_slowdown"'),
            "critical": t(0, "5m", selector='reason="hw_thermal_slowdown"'),
        },
        "GpuPowerThrottling": {
            "warning": t(0.9, "15m", "capped 90% of 30m: a GPU at its limit under full load is normal, all the "
                         "time is not", selector='reason="sw_power_cap"'),
            "critical": t(0, "1m", "external power brake: PSU or cabling", selector='reason="hw_power_brake_slowdown"'),
        },
        "GpuTemperatureHigh": {
            "warning": t(83, "5m", "10 C under slowdown is where boost clocks start to drop; GeForce boost targets "
                         "~83 C", margin=10),
            "critical": t(90, "2m", "a few degrees from slowdown (~90-93 C on Ampere)", margin=3),
        },
        "GpuXidErrors": {
            "warning": t(0, "0s", selector=f'xid!~"{fatal_xids}"'),
            "critical": t(0, "0s", selector=f'xid=~"{fatal_xids}"'),
        },
        "GpuPcieLinkDegraded": {
            "warning": t(1, "30m", "any width under the maximum for half an hour (the width, unlike the "
                         "generation, does not drop at idle)"),
        },
        "GpuMemoryDegraded": {
            "warning": t(1, "5m", "repairs wait for a GPU reset", selector="boxwatch_gpu_row_remap_pending"),
            "critical": t(1, "0s", "no spare rows left", selector="boxwatch_gpu_row_remap_failed"),
        },
        "GpuEccUncorrectableErrors": {
            "critical": t(0, "0s", selector='type="uncorrected"'),
        },
        "DockerDaemonUnreachable": {
            "warning": t(0, "2m"),
        },
        "ContainerOomKilled": {
            "warning": t(0, "0s", "any OOM kill in the last 15 minutes"),
        },
        "ContainerRestartLoop": {
            "warning": t(2, "5m", "3+ restarts in 15 minutes"),
            "critical": t(10, "15m", "11+ restarts in an hour, for 15 minutes"),
        },
        "ContainerUnhealthy": {
            "warning": t(1, "5m"),
        },
        "JournalErrorBurst": {
            "warning": t(0.2, "5m", "12 error lines a minute from one unit", selector=ERROR_PRIORITIES),
            "critical": t(1, "5m", "60 a minute", selector=ERROR_PRIORITIES),
        },
        "JournalNewTemplatesBurst": {
            "warning": t(5, "0s", "more than 5 never-seen templates in 15 minutes"),
        },
        "HostCpuTemperatureHigh": {
            "warning": t(85, "10m", "well above a CPU under a working cooler, 10-15 C under TjMax"),
            "critical": t(95, "5m", "at the throttling point (Intel TjMax 100 C, AMD Zen 4 regulates at 95 C)"),
        },
        "HostFanStopped": {
            "warning": t(0, "5m", "0 rpm with the CPUs over half busy (instance:node_cpu_utilisation:rate5m > 0.5), "
                         "for a fan that spun in the last day"),
        },
        "HostMemoryPressure": {
            "warning": t(0.2, "10m", "some task stalled on memory a fifth of the time",
                         selector="node_pressure_memory_waiting_seconds_total"),
            "critical": t(0.1, "5m", "every task stalled at once a tenth of the time: thrashing",
                          selector="node_pressure_memory_stalled_seconds_total"),
        },
        "HostFilesystemFillingUp": {
            "warning": t(0.15, "1h", "under 15% free and full within 24 h at the 6 h trend (node-mixin)",
                         selector=FILESYSTEMS),
            "critical": t(0.1, "30m", "under 10% free and full within 4 h", selector=FILESYSTEMS),
        },
        "HostUnexpectedReboot": {
            "warning": t(60, "0s", "the boot time moved by more than a minute within the hour (btime wobbles by "
                         "a second)"),
        },
    }


@dataclass(frozen=True)
class Config:
    """What the rules and dashboards are built from. ``alerts`` defaults to :func:`default_alerts`
    of ``jobs`` and ``fatal_xids``: the ``up`` alerts select the jobs named here."""

    jobs: dict[str, str] = field(default_factory=lambda: dict(JOBS))
    runbook_base_url: str = "https://github.com/boxwatch/boxwatch/blob/main/docs/runbooks/"
    fatal_xids: str = FATAL_XIDS
    alerts: dict[str, dict[str, Threshold]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.alerts:
            object.__setattr__(self, "alerts", default_alerts(self.jobs, self.fatal_xids))

    def alert(self, name: str, severity: str) -> Threshold:
        return self.alerts[name][severity]

    def runbook(self, name: str) -> str:
        return f"{self.runbook_base_url}{name}.md"

    def with_threshold(self, name: str, severity: str, **changes) -> Config:
        """A copy with one alert's threshold (or ``for_``, ``margin``, ...) changed."""
        alerts = {n: dict(sevs) for n, sevs in self.alerts.items()}
        alerts[name][severity] = dataclasses.replace(alerts[name][severity], **changes)
        return dataclasses.replace(self, alerts=alerts)


CONFIG = Config()
