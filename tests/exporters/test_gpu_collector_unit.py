"""The GPU collector in-process: snapshots as the NVML poller publishes them, rendered with
``generate_latest`` through a registry of the test's own.

The quick tier's view of the rendering rules that tests/exporters/test_gpu.py checks end to end (an
exporter process over nvidia-ml-py and the fake libnvidia-ml.so.1): which series a reading gives,
what a failing GPU and a lost NVML leave, and that a stalled poll withholds the readings. Reading NVML
itself (error classes, unit conversion, old drivers) stays with the process tests.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporters.gpu import GpuCollector, GpuIdentity, GpuReading, NvmlPoller, PollerConfig, Snapshot

A5000 = GpuIdentity(0, "GPU-5eed0000-1b2c-4d3e-8f40-000000000000", "NVIDIA RTX A5000")
RTX3060 = GpuIdentity(1, "GPU-5eed0001-1b2c-4d3e-8f40-000000000001", "NVIDIA GeForce RTX 3060")
GPU0 = (("gpu", "0"), ("name", A5000.name), ("uuid", A5000.uuid))
GPU1 = (("gpu", "1"), ("name", RTX3060.name), ("uuid", RTX3060.uuid))


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def collector(max_age: float = 30.0) -> tuple[GpuCollector, CollectorRegistry, Clock]:
    """A collector on a poller that is never started: the test publishes its snapshots."""
    clock = Clock()
    poller = NvmlPoller(PollerConfig(), clock=clock)
    gpus = GpuCollector(poller, max_age, clock=clock)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(gpus)
    return gpus, registry, clock


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def names(metrics: dict) -> set[str]:
    return {name for name, _ in metrics}


def reading(identity: GpuIdentity, **fields) -> GpuReading:
    return GpuReading(identity, pci_bus_id=f"00000000:0{identity.index + 1}:00.0", **fields)


def test_readings_become_one_series_per_gpu_and_unsupported_fields_none():
    gpus, registry, clock = collector()
    gpus.prepare(Snapshot(True, clock.now - 2, 0.01, "550.54.15", gpus=(
        reading(A5000, gauges={"temperature": 71.0, "power": 180.5, "utilization": 0.9},
                energy_joules=5000.0, throttle_mask=0x4 | 0x20, ecc={"corrected": 3.0, "uncorrected": 0.0},
                processes=[(("trainer", "", ""), 4 * 2**30), (("inference", "llm", "api"), 2 * 2**30)]),
        reading(RTX3060, gauges={"temperature": 45.0}),  # no ECC, no energy counter: no series at all
    ), errors=((RTX3060, 2),)))
    m = scrape(registry)
    assert m[("boxwatch_nvml_up", ())] == 1.0
    assert m[("boxwatch_gpu_snapshot_age_seconds", ())] == 2.0
    assert m[("boxwatch_gpu_driver_info", (("driver_version", "550.54.15"),))] == 1.0
    assert m[("boxwatch_gpu_up", GPU0)] == m[("boxwatch_gpu_up", GPU1)] == 1.0
    assert m[("boxwatch_gpu_info", tuple(sorted((*GPU0, ("pci_bus_id", "00000000:01:00.0")))))] == 1.0
    assert m[("boxwatch_gpu_temperature_celsius", GPU0)] == 71.0
    assert m[("boxwatch_gpu_temperature_celsius", GPU1)] == 45.0
    assert m[("boxwatch_gpu_power_watts", GPU0)] == 180.5 and ("boxwatch_gpu_power_watts", GPU1) not in m
    assert m[("boxwatch_gpu_energy_joules_total", GPU0)] == 5000.0
    active = {dict(labels)["reason"] for (name, labels), v in m.items()
              if name == "boxwatch_gpu_throttle_active" and v == 1.0}
    assert active == {"sw_power_cap", "sw_thermal_slowdown"}
    assert len([n for n, _ in m if n == "boxwatch_gpu_throttle_active"]) == 9  # every reason, 0 or 1
    assert {dict(labels)["type"]: v for (name, labels), v in m.items() if name == "boxwatch_gpu_ecc_errors_total"} \
        == {"corrected": 3.0, "uncorrected": 0.0}
    assert m[("boxwatch_gpu_process_memory_used_bytes",
              tuple(sorted((*GPU0, ("process", "inference"), ("container", "llm"), ("compose_service", "api")))))] \
        == 2 * 2**30
    assert m[("boxwatch_gpu_errors_total", GPU1)] == 2.0
    assert "boxwatch_gpu_remapped_rows" not in names(m)  # no HELP/TYPE for a family without samples


def test_a_failing_gpu_says_so_and_the_other_keeps_reporting():
    gpus, registry, clock = collector()
    gpus.prepare(Snapshot(True, clock.now, 0.01, gpus=(
        reading(A5000, gauges={"temperature": 71.0}),
        GpuReading(RTX3060, up=False, gauges={"temperature": 45.0}),
    )))
    m = scrape(registry)
    assert m[("boxwatch_gpu_up", GPU0)] == 1.0 and m[("boxwatch_gpu_up", GPU1)] == 0.0
    assert ("boxwatch_gpu_temperature_celsius", GPU1) not in m  # no stale value for a GPU that failed
    assert m[("boxwatch_gpu_temperature_celsius", GPU0)] == 71.0


def test_without_nvml_only_the_up_gauges_and_the_errors_remain():
    gpus, registry, clock = collector()
    assert names(scrape(registry)) == {"boxwatch_nvml_up"}  # before the first poll
    assert scrape(registry)[("boxwatch_nvml_up", ())] == 0.0
    gpus.prepare(Snapshot(False, clock.now, 0.002, errors=((A5000, 5),)))
    m = scrape(registry)
    assert m[("boxwatch_nvml_up", ())] == 0.0
    assert m[("boxwatch_gpu_errors_total", GPU0)] == 5.0
    assert not any(name.startswith(("boxwatch_gpu_up", "boxwatch_gpu_temperature")) for name in names(m))


def test_a_stalled_poll_withholds_the_readings_until_a_fresh_snapshot():
    gpus, registry, clock = collector(max_age=30.0)
    snap = Snapshot(True, clock.now, 0.01, gpus=(reading(A5000, gauges={"temperature": 71.0}),))
    gpus.prepare(snap)
    assert scrape(registry)[("boxwatch_gpu_temperature_celsius", GPU0)] == 71.0
    clock.now += 31
    m = scrape(registry)
    assert m[("boxwatch_gpu_snapshot_age_seconds", ())] == 31.0
    assert m[("boxwatch_gpu_up", GPU0)] == 0.0
    assert ("boxwatch_gpu_temperature_celsius", GPU0) not in m
    assert m[("boxwatch_nvml_up", ())] == 1.0  # NVML is up; its poll is late
    gpus.prepare(Snapshot(True, clock.now, 0.01, gpus=(reading(A5000, gauges={"temperature": 72.0}),)))
    m = scrape(registry)
    assert m[("boxwatch_gpu_up", GPU0)] == 1.0 and m[("boxwatch_gpu_temperature_celsius", GPU0)] == 72.0
