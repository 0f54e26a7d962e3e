"""The demo box's week, ending in an incident: every series' values as a function of time (no I/O).

THIS IS DEMO DATA. Every series carries ``boxwatch_demo="1"`` and ``instance="demo-box"``, so it
never mixes with a real machine's series and every panel or alert shows where it came from.

The box: two GPUs (gpu 0: an RTX 3090 serving an LLM through the ``ollama`` container; gpu 1: an
RTX 3060 used by ``open-webui`` for embeddings), three compose services (``ollama``, ``open-webui``,
``searxng``) and a systemd journal (kernel, docker, containerd, sshd, ...). The series use the exporters'
real metric names and labels (METRICS contract), so the rules, the dashboards and the detector run on
the demo unchanged.

Scenario (all times relative to ``end``, the scenario's "now"):

* A daily LLM-serving load: quiet nights, a working-day peak around 14:00 and an evening bump
  around 21:00, lower at weekends, bursty minute to minute. The hours are the scenario's own clock,
  which puts ``end`` at 00:00 (for an ``end`` at 00:00 UTC it is UTC): the incident always falls in
  the quiet night, whatever the hour the demo is started, so what the models see of it does not
  depend on the time of day. GPU utilisation, power, temperature,
  clocks, memory, the containers' CPU and network and the journal's info lines follow it.
* Day-to-day background: one Xid 13 on gpu 1 (an application fault) and one OOM kill of
  ``open-webui`` mid-week, so the Xid and OOM panels have history.
* The incident (:func:`incident`): at ``end - 45m`` gpu 0's fan stops; its temperature climbs to
  ~92 °C, software then hardware thermal slowdown engage and the SM clock falls. At ``end - 20m``
  the driver logs **Xid 79** (GPU fallen off the bus) on gpu 0; the ``ollama`` container crashes and
  restarts every 4 minutes, turns unhealthy, and the kernel and docker units log an error burst with
  new log templates. The incident lasts until ``end + 60m``: :class:`Scenario` is defined after
  ``end`` too (the live server, :mod:`stack.demo.metrics`, serves it at wall-clock time), so after a
  backfill the incident is still going on at "now" and alerts with ``for:`` durations fire in real time.

Values are a pure function of (seed, series, time): the noise is a counter-based hash of the
step index, and counters are cumulative sums from the scenario's start, so a backfill and a live
scrape of the same scenario agree exactly where they meet.

:meth:`Scenario.series` is the whole interface: (name, type, labels, values) per series, values an
array over the requested times with NaN where the series is absent. Turning that into exposition
(live ``/metrics``, an OpenMetrics history for promtool) is :mod:`stack.demo.metrics`' job.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from boxwatch.jobs import JOBS

DEMO_LABELS = (("boxwatch_demo", "1"), ("instance", "demo-box"))
DEFAULT_SEED = 7
DEFAULT_STEP = 60.0
DAY = 86400.0

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Incident:
    """When the scenario's incident happens (unix seconds)."""

    start: float      # gpu 0 fan stops; temperature starts to climb
    throttle: float   # thermal slowdown is active from here on (temperature above 86 °C)
    xid: float        # the Xid 79 on gpu 0; ollama starts crashing and restarting
    end: float        # everything back to normal (after the scenario's ``end``: still on at "now")
    gpu: str = "0"
    pci_bus_id: str = "00000000:01:00.0"
    xid_code: str = "79"
    container: str = "ollama"


def incident(end: float) -> Incident:
    """The incident of a scenario that ends at ``end``."""
    return Incident(start=end - 45 * 60, throttle=end - 35 * 60, xid=end - 20 * 60, end=end + 60 * 60)


@dataclass(frozen=True)
class Gpu:
    index: str
    uuid: str
    name: str
    memory_total: float
    power_limit: float
    pci_bus_id: str
    slowdown_celsius: float
    shutdown_celsius: float
    container: tuple[str, str]  # (name, compose_service) of the container holding its process; "" for host


GPUS = (
    Gpu("0", "GPU-5f3c0d6e-demo-0000-0000-3090a0000000", "NVIDIA GeForce RTX 3090", 24 * 2**30, 350.0,
        "00000000:01:00.0", 91.0, 98.0, ("ollama", "ollama")),
    Gpu("1", "GPU-8b21e4a7-demo-0000-0000-3060a0000001", "NVIDIA GeForce RTX 3060", 12 * 2**30, 170.0,
        "00000000:02:00.0", 95.0, 98.0, ("", "")),
)
CPUS = 2  # logical CPUs of the demo box's node_exporter series
DISK_BYTES = 2e12

CONTAINERS = (
    # name, image, compose_service, short id, memory limit (0 = none), healthcheck
    ("ollama", "ollama/ollama:0.4.7", "ollama", "3f9a1c2d4e5b", 0.0, True),
    ("open-webui", "ghcr.io/open-webui/open-webui:0.4.8", "open-webui", "a1b2c3d4e5f6", 4 * 2**30, True),
    ("searxng", "searxng/searxng:2024.11.29", "searxng", "0c1d2e3f4a5b", 1 * 2**30, False),
)

THROTTLE_REASONS = ("gpu_idle", "applications_clocks_setting", "sw_power_cap", "hw_slowdown", "sync_boost",
                    "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown",
                    "display_clock_setting")

# unit -> {priority: entries per second at full load / at idle}
JOURNAL_UNITS = {
    "kernel": {"info": (0.02, 0.01), "notice": (0.002, 0.002), "warning": (0.003, 0.001), "err": (0.0005, 0.0)},
    "docker.service": {"info": (0.3, 0.05), "warning": (0.01, 0.002), "err": (0.002, 0.0)},
    "containerd.service": {"info": (0.05, 0.01), "warning": (0.002, 0.001)},
    "nvidia-persistenced.service": {"notice": (0.0005, 0.0005), "info": (0.001, 0.001)},
    "sshd.service": {"info": (0.01, 0.002), "notice": (0.001, 0.0005), "err": (0.0002, 0.0001)},
    "systemd-logind.service": {"info": (0.003, 0.001)},
    "cron.service": {"info": (0.004, 0.004)},
}
TEMPLATES = {
    "kernel": ["NVRM: GPU at PCI:<*>: GPU-<*>", "NVRM: Xid (PCI:<*>): <NUM>, pid=<NUM>, name=<*>, <*>",
               "nvidia-modeset: WARNING: GPU:<NUM>: Lost display notification"],
    "docker.service": ["level=info msg=\"ignoring event\" container=<*> module=libcontainerd",
                       "level=error msg=\"restart container\" container=<*> error=\"exit status <NUM>\""],
    "sshd.service": ["Accepted publickey for <*> from <IP> port <NUM> ssh2: ED25519 SHA256:<*>"],
}


# ------------------------------------------------------------------------------- determinism


def _hash_uniform(seed: int, key: str, idx: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) per (seed, key, step index): splitmix64 of a counter, no state."""
    salt = np.uint64((zlib.crc32(key.encode()) << 16) ^ (seed * 0x9E3779B1) & 0xFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        z = idx.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + salt
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _noise(seed: int, key: str, idx: np.ndarray) -> np.ndarray:
    """Standard normal noise per (seed, key, step index) (Box-Muller over two hashed uniforms)."""
    u1 = np.maximum(_hash_uniform(seed, key + "#1", idx), 1e-12)
    u2 = _hash_uniform(seed, key + "#2", idx)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * math.pi * u2)


def _bump(hours: np.ndarray, center: float, width: float) -> np.ndarray:
    distance = np.minimum(np.abs(hours - center), 24 - np.abs(hours - center))
    return np.exp(-0.5 * (distance / width) ** 2)


# ------------------------------------------------------------------------------- the scenario


class Scenario:
    """The demo box between ``end - days`` and ``end`` (plus the live continuation after ``end``).

    ``runtime=True`` adds what a running stack produces itself rather than the exporters: ``up``
    per scrape job and the detector's metrics (scores with bands, model info, drift, cycle
    times). Leave it off when a real detector and real scrapes run (``boxwatch-stack up --demo``);
    the dashboard tests turn it on to have data behind every panel.
    """

    def __init__(self, end: float, days: float = 7.0, step: float = DEFAULT_STEP, seed: int = DEFAULT_SEED,
                 runtime: bool = False):
        if step <= 0 or days <= 0:
            raise ValueError(f"step and days must be positive (got step={step}, days={days})")
        self.step = float(step)
        self.end = math.floor(end / self.step) * self.step
        self.start = self.end - math.floor(days * DAY / self.step) * self.step
        self.seed = seed
        self.runtime = runtime
        self.incident = incident(self.end)
        self.clock_shift = self.end % DAY  # the scenario's clock reads 00:00 at its end
        self.oom_at = self.start + 0.47 * (self.end - self.start)
        self.xid13_at = self.start + 0.23 * (self.end - self.start)

    # -- time axis ---------------------------------------------------------------------------

    def times(self, until: float | None = None) -> np.ndarray:
        """Sample times from the start to ``until`` (default: the scenario's end), inclusive."""
        until = self.end if until is None else until
        count = int(math.floor((until - self.start) / self.step)) + 1
        return self.start + self.step * np.arange(count, dtype=np.float64)

    def _idx(self, t: np.ndarray) -> np.ndarray:
        return np.round(t / self.step).astype(np.int64)

    def _n(self, key: str, t: np.ndarray) -> np.ndarray:
        return _noise(self.seed, key, self._idx(t))

    def _u(self, key: str, t: np.ndarray) -> np.ndarray:
        return _hash_uniform(self.seed, key, self._idx(t))

    def load(self, t: np.ndarray) -> np.ndarray:
        """LLM-serving load 0..1: daily and weekly shape, bursty."""
        local = t - self.clock_shift
        hours = (local % DAY) / 3600.0
        weekday = ((local // DAY) + 3) % 7  # 1970-01-01 was a Thursday: 0 = Monday
        shape = 0.05 + 0.6 * _bump(hours, 14.0, 3.5) + 0.35 * _bump(hours, 21.0, 1.6)
        shape = np.where(weekday >= 5, 0.55 * shape, shape)
        burst = 1.0 + 0.25 * self._n("load", t)
        return np.clip(shape * burst, 0.0, 1.0)

    def _in(self, t: np.ndarray, start: float, stop: float) -> np.ndarray:
        return (t >= start) & (t < stop)

    def _restart_times(self) -> np.ndarray:
        """ollama's crash/restart times during the incident: every 4 minutes after the Xid."""
        inc = self.incident
        return np.arange(inc.xid + 60.0, inc.end, 240.0)

    # -- GPUs --------------------------------------------------------------------------------

    def gpu_series(self, t: np.ndarray) -> Iterator[tuple[str, str, Labels, np.ndarray]]:
        load = self.load(t)
        inc = self.incident
        crashed = self._in(t, inc.xid, inc.end)
        for gpu in GPUS:
            labels = (("gpu", gpu.index), ("uuid", gpu.uuid), ("name", gpu.name))
            key = f"gpu{gpu.index}"
            if gpu.index == "0":
                util = 0.02 + 0.93 * load + 0.04 * self._n(key + "util", t)
                util = np.where(crashed, 0.04 + 0.03 * self._u(key + "crash", t), util)
            else:
                util = 0.01 + 0.55 * load**2 + 0.03 * self._n(key + "util", t)
            util = np.clip(util, 0.0, 1.0)
            incident_gpu = gpu.index == inc.gpu
            heat = np.clip((t - inc.start) / (inc.throttle - inc.start), 0.0, 1.0) if incident_gpu else 0 * t
            in_incident = self._in(t, inc.start, inc.end) if incident_gpu else np.zeros_like(t, dtype=bool)
            temp = 31.0 + 44.0 * util + 0.7 * self._n(key + "temp", t)
            temp = np.where(in_incident, np.maximum(temp, 70 + 22 * heat + 0.6 * self._n(key + "hot", t)), temp)
            thermal_sw = in_incident & (temp > 86.0)
            thermal_hw = in_incident & (temp > 89.5)
            sm_clock = np.where(util > 0.05, 1.695e9 + 0.1e9 * self._n(key + "clk", t), 0.21e9)
            sm_clock = np.where(thermal_sw, 1.1e9, sm_clock)
            sm_clock = np.where(thermal_hw, 0.6e9, sm_clock)
            power = 22.0 + util * (gpu.power_limit - 22.0) * 0.97 + 4.0 * self._n(key + "pow", t)
            power = np.where(thermal_sw, power * 0.62, power)
            power = np.clip(power, 15.0, gpu.power_limit)
            fan = np.clip(0.3 + 0.6 * util + 0.02 * self._n(key + "fan", t), 0.3, 1.0)
            fan = np.where(in_incident, 0.0, fan)
            if gpu.index == "0":
                mem = 18.2e9 + 1.2e9 * load + 0.05e9 * self._n(key + "mem", t)
                mem = np.where(crashed & (self._u(key + "crash", t) < 0.5), 0.4e9, mem)
                process, proc_mem = "ollama_llama_server", mem - 0.35e9
            else:
                mem = 2.9e9 + 3.0e9 * load + 0.05e9 * self._n(key + "mem", t)
                process, proc_mem = "python3", mem - 0.25e9
            yield "boxwatch_gpu_up", "gauge", labels, np.ones_like(t)
            # pci_bus_id joins the journal's Xid counters with this GPU (the detector's cause hints use it)
            yield "boxwatch_gpu_info", "gauge", (*labels, ("pci_bus_id", gpu.pci_bus_id)), np.ones_like(t)
            yield "boxwatch_gpu_errors_total", "counter", labels, np.zeros_like(t)
            yield "boxwatch_gpu_utilization_ratio", "gauge", labels, util
            yield "boxwatch_gpu_memory_utilization_ratio", "gauge", labels, np.clip(util * 0.6, 0, 1)
            yield "boxwatch_gpu_memory_used_bytes", "gauge", labels, np.round(mem)
            yield "boxwatch_gpu_memory_total_bytes", "gauge", labels, np.full_like(t, gpu.memory_total)
            yield "boxwatch_gpu_temperature_celsius", "gauge", labels, np.round(temp)
            yield "boxwatch_gpu_power_watts", "gauge", labels, np.round(power, 2)
            yield "boxwatch_gpu_power_limit_watts", "gauge", labels, np.full_like(t, gpu.power_limit)
            yield "boxwatch_gpu_energy_joules_total", "counter", labels, np.cumsum(power * self.step)
            yield "boxwatch_gpu_fan_speed_ratio", "gauge", labels, np.round(fan, 2)
            yield "boxwatch_gpu_sm_clock_hertz", "gauge", labels, np.round(sm_clock, -6)
            yield "boxwatch_gpu_memory_clock_hertz", "gauge", labels, np.where(util > 0.05, 9.751e9, 0.405e9)
            reasons = {
                "gpu_idle": util <= 0.05,
                "sw_power_cap": power >= 0.95 * gpu.power_limit,
                "hw_slowdown": thermal_hw,
                "sw_thermal_slowdown": thermal_sw,
                "hw_thermal_slowdown": thermal_hw,
            }
            for reason in THROTTLE_REASONS:
                active = reasons.get(reason, np.zeros_like(t, dtype=bool)).astype(float)
                yield "boxwatch_gpu_throttle_active", "gauge", (*labels, ("reason", reason)), active
            for direction, scale in (("rx", 3.0e8), ("tx", 0.8e8)):
                rate = np.abs(scale * load * (1 + 0.3 * self._n(key + direction, t)))
                yield ("boxwatch_gpu_pcie_throughput_bytes_per_second", "gauge",
                       (*labels, ("direction", direction)), np.round(rate, -3))
            yield ("boxwatch_gpu_process_memory_used_bytes", "gauge",
                   (*labels, ("process", process), ("container", gpu.container[0]),
                    ("compose_service", gpu.container[1])), np.round(np.maximum(proc_mem, 0.0)))
            yield from self._gpu_health(t, labels, util, power >= 0.95 * gpu.power_limit, thermal_sw, gpu)
        yield "boxwatch_nvml_up", "gauge", (), np.ones_like(t)

    def _gpu_health(self, t: np.ndarray, labels: Labels, util: np.ndarray, capped: np.ndarray,
                    thermal: np.ndarray, gpu: Gpu) -> Iterator[tuple[str, str, Labels, np.ndarray]]:
        """The card's limits, P-state, PCIe link and time held below target clocks."""
        busy = util > 0.05
        yield "boxwatch_gpu_slowdown_temperature_celsius", "gauge", labels, np.full_like(t, gpu.slowdown_celsius)
        yield "boxwatch_gpu_shutdown_temperature_celsius", "gauge", labels, np.full_like(t, gpu.shutdown_celsius)
        yield "boxwatch_gpu_performance_state", "gauge", labels, np.where(busy, 2.0, 8.0)
        yield "boxwatch_gpu_pcie_link_generation", "gauge", labels, np.where(busy, 4.0, 1.0)
        yield "boxwatch_gpu_pcie_link_generation_max", "gauge", labels, np.full_like(t, 4.0)
        yield "boxwatch_gpu_pcie_link_width", "gauge", labels, np.full_like(t, 16.0)
        yield "boxwatch_gpu_pcie_link_width_max", "gauge", labels, np.full_like(t, 16.0)
        yield "boxwatch_gpu_pcie_replay_errors_total", "counter", labels, np.zeros_like(t)
        for policy, held in (("power", capped), ("thermal", thermal)):
            yield ("boxwatch_gpu_violation_seconds_total", "counter", (*labels, ("policy", policy)),
                   np.cumsum(held * self.step))

    # -- host (node_exporter) ----------------------------------------------------------------

    def host_series(self, t: np.ndarray) -> Iterator[tuple[str, str, Labels, np.ndarray]]:
        """node_exporter's view of the box: CPU heat and fans following the load, memory
        pressure, a slowly filling disk, booted ten days before the scenario's end (the same for a
        backfill and the live continuation)."""
        load = self.load(t)
        busy = np.clip(0.08 + 0.55 * load + 0.05 * self._n("cpu", t), 0.02, 1.0)
        for cpu in range(CPUS):
            labels = (("cpu", str(cpu)),)
            yield "node_cpu_seconds_total", "counter", (*labels, ("mode", "idle")), np.cumsum((1 - busy) * self.step)
            yield "node_cpu_seconds_total", "counter", (*labels, ("mode", "user")), np.cumsum(busy * self.step)
        chip = (("chip", "platform_coretemp_0"),)
        yield "node_hwmon_chip_names", "gauge", (*chip, ("chip_name", "coretemp")), np.ones_like(t)
        yield ("node_hwmon_temp_celsius", "gauge", (*chip, ("sensor", "temp1")),
               np.round(38.0 + 34.0 * busy + 0.8 * self._n("cputemp", t)))
        fans = (("chip", "platform_nct6775_656"),)
        yield "node_hwmon_chip_names", "gauge", (*fans, ("chip_name", "nct6798")), np.ones_like(t)
        for sensor, base, span in (("fan1", 600.0, 900.0), ("fan2", 500.0, 700.0)):
            yield ("node_hwmon_fan_rpm", "gauge", (*fans, ("sensor", sensor)),
                   np.round(base + span * busy + 15.0 * self._n(f"{sensor}-rpm", t)))
        waiting = np.clip(0.002 + 0.03 * load**3 + 0.002 * self._n("psi", t), 0.0, 1.0)
        yield "node_pressure_memory_waiting_seconds_total", "counter", (), np.cumsum(waiting * self.step)
        yield "node_pressure_memory_stalled_seconds_total", "counter", (), np.cumsum(0.2 * waiting * self.step)
        disk = (("device", "/dev/nvme0n1p2"), ("fstype", "ext4"), ("mountpoint", "/"))
        used = 0.62 * DISK_BYTES + 2e9 * (t - self.start) / DAY  # checkpoints: 2 GB a day
        yield "node_filesystem_size_bytes", "gauge", disk, np.full_like(t, DISK_BYTES)
        yield "node_filesystem_avail_bytes", "gauge", disk, np.round(DISK_BYTES - used, -6)
        yield "node_filesystem_readonly", "gauge", disk, np.zeros_like(t)
        yield "node_boot_time_seconds", "gauge", (), np.full_like(t, math.floor(self.end) - 10 * DAY)

    # -- containers --------------------------------------------------------------------------

    def container_series(self, t: np.ndarray) -> Iterator[tuple[str, str, Labels, np.ndarray]]:
        load = self.load(t)
        inc = self.incident
        restarts = self._restart_times()
        restart_count = np.searchsorted(restarts, t, side="right").astype(float)
        restarting = np.zeros_like(t, dtype=bool)
        for moment in restarts:
            restarting |= (t >= moment) & (t < moment + self.step)
        yield "boxwatch_docker_up", "gauge", (), np.ones_like(t)
        for name, image, service, cid, limit, healthcheck in CONTAINERS:
            labels = (("name", name), ("image", image), ("compose_service", service))
            event_labels = (("name", name), ("compose_service", service))
            key = f"c-{name}"
            yield "boxwatch_container_info", "gauge", (*labels, ("id", cid)), np.ones_like(t)
            is_ollama = name == inc.container
            is_webui = name == "open-webui"
            oom_now = self._in(t, self.oom_at, self.oom_at + 2 * self.step) if is_webui else np.zeros_like(
                t, dtype=bool)
            down = restarting if is_ollama else oom_now
            for state in ("created", "running", "paused", "restarting", "removing", "exited", "dead"):
                value = {"running": ~down, "restarting": down}.get(state, np.zeros_like(t, dtype=bool))
                yield "boxwatch_container_state", "gauge", (*labels, ("state", state)), value.astype(float)
            if healthcheck:
                unhealthy = self._in(t, inc.xid, inc.end) if is_ollama else np.zeros_like(t, dtype=bool)
                starting = down & ~unhealthy
                for status, value in (("starting", starting), ("healthy", ~unhealthy & ~starting),
                                      ("unhealthy", unhealthy)):
                    yield ("boxwatch_container_health_status", "gauge", (*labels, ("status", status)),
                           value.astype(float))
            if is_ollama:
                restart_total = restart_count
            elif is_webui:
                restart_total = (t >= self.oom_at).astype(float)
            else:
                restart_total = np.zeros_like(t)
            yield "boxwatch_container_restarts_total", "counter", labels, restart_total
            yield "boxwatch_container_oom_killed", "gauge", labels, oom_now.astype(float)
            events = {"start": 1.0 + restart_total, "die": restart_total, "restart": restart_total}
            if is_webui:
                events["oom"] = (t >= self.oom_at).astype(float)
            if healthcheck:
                unhealthy_events = (t >= inc.xid).astype(float) if is_ollama else np.zeros_like(t)
                events["health_status_unhealthy"] = unhealthy_events
            for event, value in events.items():
                yield ("boxwatch_container_events_total", "counter", (*event_labels, ("event", event)),
                       1.0 * value)
            cpu_cores = {"ollama": 0.2 + 5.5 * load, "open-webui": 0.05 + 0.6 * load,
                         "searxng": 0.01 + 0.15 * load}[name]
            cpu_cores = np.abs(cpu_cores * (1 + 0.15 * self._n(key + "cpu", t)))
            if is_ollama:
                cpu_cores = np.where(self._in(t, inc.xid, inc.end), 1.6 + 0.3 * self._u(key + "spin", t),
                                     cpu_cores)
            yield "boxwatch_container_cpu_seconds_total", "counter", labels, np.cumsum(cpu_cores * self.step)
            base_mem = {"ollama": 1.1e9, "open-webui": 0.9e9, "searxng": 0.18e9}[name]
            memory = base_mem * (1 + 0.4 * load + 0.03 * self._n(key + "mem", t))
            if is_webui:  # a slow leak until the OOM kill, then back to normal
                leak_start = self.oom_at - 0.5 * DAY
                ramp = np.clip((t - leak_start) / (self.oom_at - leak_start), 0.0, 1.0) * (t < self.oom_at)
                memory = memory + ramp * (limit - memory) * 0.98
            yield "boxwatch_container_memory_usage_bytes", "gauge", labels, np.round(memory)
            yield "boxwatch_container_memory_limit_bytes", "gauge", labels, np.full_like(t, limit)
            net = {"ollama": 4.0e5, "open-webui": 2.5e5, "searxng": 6.0e4}[name]
            for metric, factor in (("network_receive", 1.0), ("network_transmit", 2.2),
                                   ("block_read", 0.05), ("block_write", 0.2)):
                rate = np.abs(net * factor * load * (1 + 0.3 * self._n(key + metric, t)))
                yield f"boxwatch_container_{metric}_bytes_total", "counter", labels, np.cumsum(rate * self.step)
            yield ("boxwatch_container_stats_age_seconds", "gauge", labels,
                   np.round(1.0 + 2.0 * self._u(key + "age", t), 2))

    # -- journal -----------------------------------------------------------------------------

    def journal_series(self, t: np.ndarray) -> Iterator[tuple[str, str, Labels, np.ndarray]]:
        load = self.load(t)
        inc = self.incident
        burst = self._in(t, inc.xid, inc.end)
        for unit, priorities in JOURNAL_UNITS.items():
            for priority, (busy, idle) in priorities.items():
                rate = idle + (busy - idle) * load
                rate = rate * np.clip(1 + 0.4 * self._n(f"j-{unit}-{priority}", t), 0.0, None)
                if priority == "err" and unit in ("kernel", "docker.service"):
                    rate = rate + burst * (0.5 if unit == "kernel" else 0.8)
                if unit == "kernel" and priority == "warning":
                    rate = rate + self._in(t, inc.throttle, inc.end) * 0.1
                count = np.floor(np.cumsum(rate * self.step))
                yield ("boxwatch_journal_entries_total", "counter", (("unit", unit), ("priority", priority)),
                       count)
            news = np.floor(np.cumsum(self._u(f"new-{unit}", t) < 0.0005))
            if unit in ("kernel", "docker.service"):
                # a new template every 2 minutes while the incident lasts (driver and restart messages)
                news = news + (np.floor((np.minimum(t, inc.end) - inc.xid) / 120.0) + 1) * (t >= inc.xid)
            yield "boxwatch_journal_new_templates_total", "counter", (("unit", unit),), news
            for number, template in enumerate(TEMPLATES.get(unit, []), start=1):
                template_labels = (("unit", unit), ("template_id", str(number)))
                yield ("boxwatch_journal_template_info", "gauge", (*template_labels, ("template", template)),
                       np.ones_like(t))
                rate = 0.01 * (1 + load) if "error" not in template and "Xid" not in template else 0.0 * t
                if "Xid" in template or "error" in template:
                    rate = rate + burst * 0.3
                yield ("boxwatch_journal_template_entries_total", "counter", template_labels,
                       np.floor(np.cumsum(rate * self.step)))
        xids = ((GPUS[1].pci_bus_id, "13", self.xid13_at), (inc.pci_bus_id, inc.xid_code, inc.xid))
        for bus, code, moment in xids:
            if t[-1] >= moment:  # like the exporter: a series exists from its first event on
                mask = t >= moment
                yield ("boxwatch_gpu_xid_errors_total", "counter", (("pci_bus_id", bus), ("xid", code)),
                       np.where(mask, 1.0, np.nan))
        yield "boxwatch_journal_invalid_entries_total", "counter", (("reason", "no_message"),), np.zeros_like(t)
        yield "boxwatch_journal_last_entry_timestamp_seconds", "gauge", (), t - 2.0

    # -- exporters' self-metrics -------------------------------------------------------------

    def exporter_series(self, t: np.ndarray) -> Iterator[tuple[str, str, Labels, np.ndarray]]:
        collectors = {"gpu": ("gpu",), "containers": ("containers",), "journald": ("journal", "xid")}
        for exporter, names in collectors.items():
            yield ("boxwatch_exporter_build_info", "gauge",
                   (("exporter", exporter), ("version", "0.1.0"), ("python_version", "3.11.2")), np.ones_like(t))
            for collector in names:
                labels = (("collector", collector),)
                duration = 0.002 + 0.004 * self._u(f"dur-{collector}", t)
                yield "boxwatch_exporter_scrape_collector_duration_seconds", "gauge", labels, np.round(duration, 5)
                yield "boxwatch_exporter_scrape_collector_success", "gauge", labels, np.ones_like(t)
                yield "boxwatch_exporter_collector_errors_total", "counter", labels, np.zeros_like(t)

    # -- what the stack itself would produce (runtime=True) ----------------------------------

    def runtime_series(self, t: np.ndarray) -> Iterator[tuple[str, str, Labels, np.ndarray]]:
        for job in (JOBS[c] for c in ("prometheus", "alertmanager", "node", "gpu", "containers", "journald",
                                      "detector")):
            yield "up", "gauge", (("job", job),), np.ones_like(t)
        load = self.load(t)
        inc = self.incident
        watched = {
            "gpu_temperature": [(GPUS[0], 31.0 + 44.0 * (0.02 + 0.93 * load), 3.0),
                                (GPUS[1], 31.0 + 44.0 * (0.01 + 0.55 * load**2), 3.0)],
            "gpu_power": [(GPUS[0], 22.0 + (0.02 + 0.93 * load) * 328 * 0.97, 25.0)],
        }
        temps = {gpu: values for name, _, labels, values in self.gpu_series(t)
                 if name == "boxwatch_gpu_temperature_celsius" for gpu in [dict(labels)["gpu"]]}
        powers = {gpu: values for name, _, labels, values in self.gpu_series(t)
                  if name == "boxwatch_gpu_power_watts" for gpu in [dict(labels)["gpu"]]}
        observed = {"gpu_temperature": temps, "gpu_power": powers}
        scores: list = []
        for query, members in watched.items():
            for gpu, expected, half_band in members:
                labels = (("gpu", gpu.index), ("uuid", gpu.uuid), ("name", gpu.name), ("job", JOBS["gpu"]),
                          ("query", query), ("model", "robust"))
                actual = observed[query][gpu.index]
                score = np.round(np.abs(actual - expected) / half_band, 3)
                scores.append(("boxwatch_anomaly_score", "gauge", labels, score))
                yield "boxwatch_anomaly_score", "gauge", labels, score
                yield "boxwatch_anomaly_expected", "gauge", labels, np.round(expected, 2)
                yield "boxwatch_anomaly_expected_lower", "gauge", labels, np.round(expected - half_band, 2)
                yield "boxwatch_anomaly_expected_upper", "gauge", labels, np.round(expected + half_band, 2)
        yield from self._explanations(t)
        for query in watched:
            yield "boxwatch_detector_series_scored", "gauge", (("query", query), ("model", "robust")), \
                np.full_like(t, float(len(watched[query])))
            yield "boxwatch_detector_query_errors_total", "counter", (("query", query),), np.zeros_like(t)
            outside = sum((values > 1.0).astype(float) for name, _, labels, values in scores
                          if dict(labels)["query"] == query)
            yield "boxwatch_detector_anomalies_total", "counter", (("query", query),), np.cumsum(outside)
            yield ("boxwatch_detector_model_fit_duration_seconds", "gauge", (("query", query), ("model", "robust")),
                   np.round(0.2 + 0.1 * self._u(f"fit-{query}", t), 3))
            versions = 1 + np.floor((t - self.start) / DAY)
            for version in range(1, int(versions[-1]) + 1):
                yield ("boxwatch_model_info", "gauge",
                       (("query", query), ("model", "robust"), ("version", str(version))),
                       np.where(versions == version, 1.0, np.nan))
            drift = np.round(np.clip(0.05 + 0.03 * self._n(f"drift-{query}", t), 0, 1)
                             + 0.5 * self._in(t, inc.start, inc.end), 3)
            yield ("boxwatch_drift_score", "gauge", (("query", query), ("model", "robust"), ("feature", "value")),
                   drift)
            yield "boxwatch_drift_detected", "gauge", (("query", query), ("model", "robust")), \
                (drift > 0.3).astype(float)
        buckets = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))
        cycle = 0.08 + 0.3 * self._u("cycle", t)
        for bound in buckets:
            yield ("boxwatch_detector_cycle_duration_seconds_bucket", "histogram",
                   (("le", _format_le(bound)),), np.cumsum(cycle <= bound).astype(float))
        yield "boxwatch_detector_cycle_duration_seconds_count", "histogram", (), np.arange(1, len(t) + 1, dtype=float)
        yield "boxwatch_detector_cycle_duration_seconds_sum", "histogram", (), np.round(np.cumsum(cycle), 3)
        yield "boxwatch_detector_prometheus_up", "gauge", (), np.ones_like(t)
        yield "boxwatch_detector_last_success_timestamp_seconds", "gauge", (), t - 5.0
        yield "boxwatch_detector_models_ready", "gauge", (), np.ones_like(t)
        yield "boxwatch_detector_registry_up", "gauge", (), np.ones_like(t)
        yield "boxwatch_detector_registry_errors_total", "counter", (), np.zeros_like(t)
        yield "boxwatch_detector_build_info", "gauge", (("version", "0.1.0"),), np.ones_like(t)

    def _explanations(self, t: np.ndarray) -> Iterator[tuple[str, str, Labels, np.ndarray]]:
        """Peer-group scores, cause hints, top features and feedback marks, as the detector publishes them."""
        inc = self.incident
        hot, xid = self._in(t, inc.throttle, inc.end), self._in(t, inc.xid, inc.end)
        warm = self._in(t, inc.start, inc.end)
        for gpu in GPUS:
            labels = (("gpu", gpu.index), ("uuid", gpu.uuid), ("name", gpu.name), ("job", JOBS["gpu"]))
            calm = np.round(np.abs(0.3 * self._n(f"peer-{gpu.index}", t)), 3)
            score = np.where(warm, 2.0 + 5.0 * np.clip((t - inc.start) / (inc.throttle - inc.start), 0, 1), calm) \
                if gpu.index == inc.gpu else calm
            yield ("boxwatch_anomaly_score", "gauge", (*labels, ("query", "gpu_temperature_peers"), ("model", "peer")),
                   np.round(score, 3))
        gpu0 = (("gpu", GPUS[0].index), ("uuid", GPUS[0].uuid), ("name", GPUS[0].name), ("job", JOBS["gpu"]))
        series = (*gpu0, ("query", "gpu_temperature"), ("model", "robust"))
        causes = [("1", "throttle sw_thermal_slowdown", hot & ~xid), ("1", "Xid 79 gpu_fallen_off_bus", xid),
                  ("2", "throttle sw_thermal_slowdown", xid), ("3", "throttle hw_thermal_slowdown", xid)]
        for rank, cause, active in causes:
            yield ("boxwatch_anomaly_cause", "gauge", (*series, ("rank", rank), ("cause", cause)),
                   np.where(active, 1.0, np.nan))
        health = (*gpu0, ("query", "gpu_health"), ("model", "iforest"))
        yield "boxwatch_anomaly_score", "gauge", health, np.round(np.where(warm, 3.2, 0.2 + 0.1 * self._u("hs", t)), 3)
        for rank, feature in (("1", "boxwatch_gpu_temperature_celsius"), ("2", "boxwatch_gpu_sm_clock_hertz")):
            yield ("boxwatch_anomaly_top_feature", "gauge", (*health, ("rank", rank), ("feature", feature)),
                   np.where(warm, 1.0, np.nan))
        marked = np.floor(np.clip((t - self.start) / DAY, 0, None) / 3)  # an operator marks one every few days
        yield ("boxwatch_feedback_false_positives_total", "counter", (("query", "gpu_power"), ("model", "robust")),
               marked)

    # -- assembly ----------------------------------------------------------------------------

    SOURCE_JOBS = {"gpu": JOBS["gpu"], "container": JOBS["containers"], "journal": JOBS["journald"],
                   "host": JOBS["node"], "exporter": None, "runtime": JOBS["detector"]}

    def series(self, t: np.ndarray) -> Iterator[tuple[str, str, Labels, np.ndarray]]:
        """Every series of the scenario at times ``t``: (name, type, labels, values; NaN = absent)."""
        sources = [("gpu", self.gpu_series), ("container", self.container_series),
                   ("journal", self.journal_series), ("host", self.host_series), ("exporter", self.exporter_series)]
        if self.runtime:
            sources.append(("runtime", self.runtime_series))
        for source, produce in sources:
            for name, kind, labels, values in produce(t):
                job = self.SOURCE_JOBS[source]
                if source == "exporter":
                    exporter = dict(labels).get("exporter") or dict(labels)["collector"]
                    job = JOBS[exporter] if exporter in ("gpu", "containers") else JOBS["journald"]
                extra = () if any(k == "job" for k, _ in labels) else (("job", job),)
                yield name, kind, (*labels, *extra, *DEMO_LABELS), values


def _format_le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))

