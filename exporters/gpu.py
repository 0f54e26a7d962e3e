"""NVIDIA GPU exporter: NVML through nvidia-ml-py (``import pynvml``).

Design: a background thread (``NvmlPoller``) owns every NVML call. Each poll reads all GPUs
into an immutable ``Snapshot`` and swaps it in; ``GpuCollector.collect()`` only turns the
latest snapshot into metric families, once per snapshot (``exporters.exposition``): a scrape
serves those bytes. A scrape therefore never waits on NVML, however slow the driver is (NVML calls can take hundreds of milliseconds on a GPU that is falling off the
bus, and a ctypes call cannot be interrupted from Python). If polling stalls, the snapshot
ages: ``boxwatch_gpu_snapshot_age_seconds`` grows and, past ``--gpu.max-snapshot-age``, the
readings are withheld and every GPU reports ``boxwatch_gpu_up 0`` rather than stale values.

Failure handling, per NVML return code:

* ``NOT_SUPPORTED`` / ``FUNCTION_NOT_FOUND`` (consumer cards have no ECC, old drivers lack a
  call): that series is omitted for that GPU; not an error.
* ``GPU_IS_LOST``, ``RESET_REQUIRED``, ``GPU_NOT_FOUND``: the GPU is failed for this poll
  (``boxwatch_gpu_up 0``, ``boxwatch_gpu_errors_total`` + 1); the other GPUs still report.
* ``UNINITIALIZED``, ``DRIVER_NOT_LOADED``, ``LIB_RM_VERSION_MISMATCH`` (driver unloaded or
  upgraded under us): NVML is shut down and initialised again with backoff.
* anything else: that field is omitted and ``boxwatch_gpu_errors_total`` + 1.

No NVML library, or an ``nvmlInit`` that fails: one log line (again only if the reason
changes), ``boxwatch_nvml_up 0``, and initialisation is retried with exponential backoff.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from boxwatch.backoff import Backoff
from boxwatch.log import kv
from exporters.cgroups import ContainerNames, container_of_pid
from exporters.exposition import Part, Prepared, Rendered, families_of
from exporters.server import Source, add_collector_flag, non_negative_int, positive_float

log = logging.getLogger("boxwatch.gpu")

GPU_LABELS = ["gpu", "uuid", "name"]

# Bits of nvmlClocksEventReasons / nvmlClocksThrottleReasons (nvml.h ABI), in label order.
THROTTLE_REASONS: tuple[tuple[str, int], ...] = (
    ("gpu_idle", 0x1),
    ("applications_clocks_setting", 0x2),
    ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40),
    ("hw_power_brake_slowdown", 0x80),
    ("display_clock_setting", 0x100),
)

# NVML return codes (nvml.h), grouped by what the exporter does about them.
_NOT_SUPPORTED = 3
_FUNCTION_NOT_FOUND = 13
_UNSUPPORTED = {_NOT_SUPPORTED, _FUNCTION_NOT_FOUND}
_GPU_FATAL = {15, 16, 28}  # GPU_IS_LOST, RESET_REQUIRED, GPU_NOT_FOUND
_DRIVER_FATAL = {1, 9, 18}  # UNINITIALIZED, DRIVER_NOT_LOADED, LIB_RM_VERSION_MISMATCH

# NVML perf policies (nvmlPerfPolicyType_t) whose violation time is exported, by label value.
VIOLATION_POLICIES: tuple[tuple[str, int], ...] = (
    ("power", 0),
    ("thermal", 1),
    ("sync_boost", 2),
    ("board_limit", 3),
    ("low_utilization", 4),
    ("reliability", 5),
)
_PSTATE_UNKNOWN = 32
_FI_DEV_MEMORY_TEMP = 82  # NVML_FI_DEV_MEMORY_TEMP (nvml.h field id)

OTHER_PROCESSES = "other"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
ProcessKey = tuple[str, str, str]  # process name, container, compose_service
UNKNOWN = "unknown"


# --------------------------------------------------------------------------- snapshot


@dataclass(frozen=True)
class GpuIdentity:
    """What the GPU labels are made of; stable for the life of an NVML session."""

    index: int
    uuid: str
    name: str

    def labels(self) -> list[str]:
        return [str(self.index), self.uuid, self.name]


@dataclass
class GpuReading:
    """One poll of one GPU. A field the GPU does not support is absent (None or missing key)."""

    identity: GpuIdentity
    up: bool = True
    pci_bus_id: str | None = None
    gauges: dict[str, float] = field(default_factory=dict)
    energy_joules: float | None = None
    throttle_mask: int | None = None
    pcie: dict[str, float] = field(default_factory=dict)
    ecc: dict[str, float] = field(default_factory=dict)
    pcie_replays: float | None = None
    violation_seconds: dict[str, float] = field(default_factory=dict)  # policy -> seconds
    retired_pages: dict[str, float] = field(default_factory=dict)  # cause -> pages
    remapped_rows: dict[str, float] = field(default_factory=dict)  # correctable/uncorrectable -> rows
    processes: list[tuple[ProcessKey, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape exports, produced by the poller and never mutated afterwards."""

    nvml_up: bool
    taken_at: float  # time.monotonic() when the poll finished
    poll_duration: float
    driver_version: str | None = None
    gpus: tuple[GpuReading, ...] = ()
    errors: tuple[tuple[GpuIdentity, int], ...] = ()  # cumulative NVML call failures per GPU


# --------------------------------------------------------------------------- NVML errors


class GpuFailed(Exception):
    """This GPU is unusable for the rest of the poll (e.g. NVML_ERROR_GPU_IS_LOST)."""


class DriverFailed(Exception):
    """NVML as a whole is unusable; shut it down and initialise it again."""


@dataclass
class _Device:
    handle: object | None  # None: the GPU could not be reached when NVML was initialised
    identity: GpuIdentity


# --------------------------------------------------------------------------- reading


class GpuReader:
    """Reads one GPU through the pynvml module, classifying every NVML error."""

    def __init__(self, nvml: ModuleType, procfs: Path, processes: bool, max_processes: int,
                 ecc_counter: str, on_error: Callable[[GpuIdentity, str, Exception], None],
                 containers: ContainerNames | None = None):
        self._nv = nvml
        self._procfs = procfs
        self._containers = containers
        self.container_ids: set[str] = set()  # containers seen in this poll
        self._processes = processes
        self._max_processes = max_processes
        self._ecc_counter = nvml.NVML_AGGREGATE_ECC if ecc_counter == "aggregate" else nvml.NVML_VOLATILE_ECC
        self._on_error = on_error

    def read(self, device: _Device) -> GpuReading:
        """All fields of one GPU; a GPU that fails fatally comes back with ``up=False``."""
        reading = GpuReading(identity=device.identity)
        try:
            self._fill(device.handle, reading)
        except GpuFailed:
            return GpuReading(identity=device.identity, up=False)
        return reading

    def _fill(self, handle: object, r: GpuReading) -> None:
        nv, ident = self._nv, r.identity
        pci = self.call(ident, "pci_info", nv.nvmlDeviceGetPciInfo, handle)
        if pci is not None:
            r.pci_bus_id = _text(pci.busId)
        util = self.call(ident, "utilization", nv.nvmlDeviceGetUtilizationRates, handle)
        if util is not None:
            r.gauges["utilization"] = util.gpu / 100.0
            r.gauges["memory_utilization"] = util.memory / 100.0
        memory = self.call(ident, "memory", nv.nvmlDeviceGetMemoryInfo, handle)
        if memory is not None:
            r.gauges["memory_used"] = float(memory.used)
            r.gauges["memory_total"] = float(memory.total)
        temperature = self._first_available(ident, "temperature", ("nvmlDeviceGetTemperatureV",
                                            "nvmlDeviceGetTemperature"), handle, nv.NVML_TEMPERATURE_GPU)
        if temperature is not None:
            r.gauges["temperature"] = float(temperature)
        self._gauge(r, "power", 1e-3, nv.nvmlDeviceGetPowerUsage, handle)  # mW
        self._gauge(r, "power_limit", 1e-3, nv.nvmlDeviceGetEnforcedPowerLimit, handle)  # mW
        self._gauge(r, "fan_speed", 1e-2, nv.nvmlDeviceGetFanSpeed, handle)  # percent
        self._gauge(r, "sm_clock", 1e6, nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_SM)  # MHz
        self._gauge(r, "memory_clock", 1e6, nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_MEM)
        energy = self.call(ident, "energy", nv.nvmlDeviceGetTotalEnergyConsumption, handle)
        if energy is not None:
            r.energy_joules = energy / 1000.0  # mJ
        # Drivers before R535 only have the older ...ThrottleReasons name for the same bitmask.
        r.throttle_mask = self._first_available(ident, "throttle_reasons", (
            "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"), handle)
        for direction, counter in (("rx", nv.NVML_PCIE_UTIL_RX_BYTES), ("tx", nv.NVML_PCIE_UTIL_TX_BYTES)):
            kbs = self.call(ident, f"pcie_{direction}", nv.nvmlDeviceGetPcieThroughput, handle, counter)
            if kbs is not None:
                r.pcie[direction] = kbs * 1024.0  # KB/s
        for kind, error_type in (("corrected", nv.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                                 ("uncorrected", nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)):
            count = self.call(ident, f"ecc_{kind}", nv.nvmlDeviceGetTotalEccErrors,
                               handle, error_type, self._ecc_counter)
            if count is not None:
                r.ecc[kind] = float(count)
        self._fill_health(handle, r)
        if self._processes:
            r.processes = self._process_memory(handle, ident)

    def _fill_health(self, handle: object, r: GpuReading) -> None:
        """PCIe link, memory repair, limits and time spent below target clocks (dcgm-exporter's
        health fields); each one only where the card supports it."""
        nv, ident = self._nv, r.identity
        for key, fn in (("pcie_link_gen", nv.nvmlDeviceGetCurrPcieLinkGeneration),
                        ("pcie_link_gen_max", nv.nvmlDeviceGetMaxPcieLinkGeneration),
                        ("pcie_link_width", nv.nvmlDeviceGetCurrPcieLinkWidth),
                        ("pcie_link_width_max", nv.nvmlDeviceGetMaxPcieLinkWidth)):
            self._gauge(r, key, 1.0, fn, handle)
        replays = self.call(ident, "pcie_replay", nv.nvmlDeviceGetPcieReplayCounter, handle)
        if replays is not None:
            r.pcie_replays = float(replays)
        pstate = self.call(ident, "performance_state", nv.nvmlDeviceGetPerformanceState, handle)
        if pstate is not None and pstate != _PSTATE_UNKNOWN:
            r.gauges["performance_state"] = float(pstate)
        for key, threshold in (("shutdown_temperature", nv.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN),
                               ("slowdown_temperature", nv.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)):
            self._gauge(r, key, 1.0, nv.nvmlDeviceGetTemperatureThreshold, handle, threshold)
        memory_temperature = self._field_value(ident, "memory_temperature", handle, _FI_DEV_MEMORY_TEMP)
        if memory_temperature is not None:
            r.gauges["memory_temperature"] = memory_temperature
        for policy, policy_type in VIOLATION_POLICIES:
            violation = self.call(ident, f"violation_{policy}", nv.nvmlDeviceGetViolationStatus, handle, policy_type)
            if violation is not None:
                r.violation_seconds[policy] = violation.violationTime / 1e9  # ns
        self._memory_repair(handle, r)

    def _memory_repair(self, handle: object, r: GpuReading) -> None:
        """Row remapping (Ampere and later) or page retirement (earlier data-centre cards)."""
        nv, ident = self._nv, r.identity
        rows = self.call(ident, "remapped_rows", nv.nvmlDeviceGetRemappedRows, handle)
        if rows is not None:
            correctable, uncorrectable, pending, failed = rows
            r.remapped_rows = {"correctable": float(correctable), "uncorrectable": float(uncorrectable)}
            r.gauges["row_remap_pending"] = 1.0 if pending else 0.0
            r.gauges["row_remap_failed"] = 1.0 if failed else 0.0
            return
        for cause, source in (("single_bit_ecc", nv.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS),
                              ("double_bit_ecc", nv.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)):
            pages = self.call(ident, f"retired_pages_{cause}", nv.nvmlDeviceGetRetiredPages, handle, source)
            if pages is not None:
                r.retired_pages[cause] = float(len(pages))
        pending = self.call(ident, "retired_pages_pending", nv.nvmlDeviceGetRetiredPagesPendingStatus, handle)
        if pending is not None:
            r.gauges["retired_pages_pending"] = 1.0 if pending else 0.0

    def _field_value(self, ident: GpuIdentity, what: str, handle: object, field_id: int) -> float | None:
        """One NVML field value (nvmlDeviceGetFieldValues); each field has its own return code."""
        values = self.call(ident, what, self._nv.nvmlDeviceGetFieldValues, handle, [field_id])
        if not values:
            return None
        value = values[0]
        if value.nvmlReturn != self._nv.NVML_SUCCESS:
            return self._failed(ident, what, self._nv.NVMLError(value.nvmlReturn))
        return float(_field_number(self._nv, value))

    def _gauge(self, r: GpuReading, key: str, scale: float, fn: Callable, *args: object) -> None:
        value = self.call(r.identity, key, fn, *args)
        if value is not None:
            r.gauges[key] = value * scale

    def _first_available(self, ident: GpuIdentity, what: str, names: tuple[str, ...], *args: object):
        """The first of ``names`` that the binding and the driver both have (newest first)."""
        for name in names:
            fn = getattr(self._nv, name, None)
            if fn is None:  # an older nvidia-ml-py
                continue
            try:
                return fn(*args)
            except self._nv.NVMLError as err:
                if err.value == _FUNCTION_NOT_FOUND:  # an older driver
                    continue
                return self._failed(ident, what, err)
        return None

    def _process_memory(self, handle: object, ident: GpuIdentity) -> list[tuple[ProcessKey, float]]:
        procs = self.call(ident, "processes", self._nv.nvmlDeviceGetComputeRunningProcesses, handle)
        by_key: dict[ProcessKey, float] = {}
        for proc in procs or ():
            if proc.usedGpuMemory is None:  # not available (e.g. Windows WDDM)
                continue
            key = (process_name(self._procfs, proc.pid), *self._container(proc.pid))
            by_key[key] = by_key.get(key, 0.0) + float(proc.usedGpuMemory)
        return top_processes(by_key, self._max_processes)

    def _container(self, pid: int) -> tuple[str, str]:
        """(container name, compose service) of ``pid``; empty for a host process."""
        ref = container_of_pid(self._procfs, pid)
        if ref is None or self._containers is None:
            return ("", "") if ref is None else (ref.short_id, "")
        self.container_ids.add(ref.id)
        labels = self._containers.labels(ref)
        return labels.name, labels.compose_service

    def call(self, ident: GpuIdentity, what: str, fn: Callable, *args: object):
        """``fn(*args)``, or None if unsupported or failed (counted); raises GpuFailed / DriverFailed."""
        try:
            return fn(*args)
        except self._nv.NVMLError as err:
            return self._failed(ident, what, err)
        except self._nv.NVMLLibraryMismatchError:
            return None  # an unversioned call the installed driver lacks: unsupported

    def _failed(self, ident: GpuIdentity, what: str, err: Exception) -> None:
        code = getattr(err, "value", None)
        if code in _UNSUPPORTED:
            return None
        self._on_error(ident, what, err)
        if code in _GPU_FATAL:
            raise GpuFailed(str(err)) from err
        if code in _DRIVER_FATAL:
            raise DriverFailed(str(err)) from err
        return None


def process_name(procfs: Path, pid: int) -> str:
    """The executable name of ``pid`` (``/proc/PID/comm``), or "unknown" if it cannot be read.

    NVML reports host PIDs: an exporter in a container needs the host's PID namespace (or the
    host's /proc mounted and ``--path.procfs``) to name them.
    """
    try:
        return (procfs / str(pid) / "comm").read_text().strip() or UNKNOWN
    except OSError:
        return UNKNOWN


def top_processes(by_key: dict[ProcessKey, float], limit: int) -> list[tuple[ProcessKey, float]]:
    """The ``limit`` largest (process, container) keys by memory; the rest summed under process
    "other", outside any container (bounded cardinality)."""
    ranked = sorted(by_key.items(), key=lambda item: (-item[1], item[0]))
    top, rest = ranked[:limit], ranked[limit:]
    if rest:
        top.append(((OTHER_PROCESSES, "", ""), sum(used for _, used in rest)))
    return sorted(top)


def _field_number(nv: ModuleType, value: object) -> float:
    """The number in an nvmlFieldValue_t, read from the union member its valueType names."""
    member = {nv.NVML_VALUE_TYPE_DOUBLE: "dVal", nv.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
              nv.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal", nv.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
              nv.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal", nv.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
              nv.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal"}.get(value.valueType, "uiVal")
    return float(getattr(value.value, member))


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- polling


@dataclass
class PollerConfig:
    poll_interval: float = 5.0
    processes: bool = True
    max_processes: int = 10
    ecc_counter: str = "volatile"
    devices: tuple[str, ...] = ()  # indexes or UUIDs; empty: all
    procfs: Path = Path("/proc")
    docker_host: str | None = None  # names the containers of GPU processes; None: short ids only
    retry_initial: float = 1.0
    retry_max: float = 60.0


class NvmlPoller:
    """Background thread that owns NVML: initialise (with backoff), poll, publish a Snapshot."""

    def __init__(self, config: PollerConfig, clock: Callable[[], float] = time.monotonic):
        self._config = config
        self._clock = clock
        self._nv: ModuleType | None = None
        self._devices: list[_Device] = []
        self._driver_version: str | None = None
        self._errors: dict[GpuIdentity, int] = {}
        self._logged: set[tuple] = set()
        self._down: set[GpuIdentity] = set()
        self._last_init_error: str | None = None
        self._retry = Backoff(config.retry_max, config.retry_initial)
        self._snapshot: Snapshot | None = None
        self._containers = ContainerNames(config.docker_host) if config.docker_host else None
        self.listeners: list[Callable[[Snapshot], None]] = []  # called with each new snapshot
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml-poller", daemon=True)

    # public -----------------------------------------------------------------

    def start(self, wait: float = 2.0) -> NvmlPoller:
        """Start polling; wait up to ``wait`` seconds (never longer) for the first poll's readings, or
        for NVML to be found down, so that the first scrape has them."""
        self._thread.start()
        self._first.wait(wait)
        return self

    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._shutdown()

    # thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._nv is None:
                if not self._init():
                    self._publish(Snapshot(nvml_up=False, taken_at=self._clock(), poll_duration=0.0,
                                           errors=self._error_counts()))
                    self._stop.wait(self._retry.next_delay())
                    continue
                # NVML is up but no GPU has been read yet: say so rather than nvml_up 0 (not yet the
                # first snapshot start() waits for: that one has the GPUs' readings)
                self._publish(Snapshot(nvml_up=True, taken_at=self._clock(), poll_duration=0.0,
                                       driver_version=self._driver_version, errors=self._error_counts()),
                              complete=False)
            try:
                self._poll()
            except Exception:
                # A bug must not kill the thread silently: log it; the snapshot then ages and
                # boxwatch_gpu_snapshot_age_seconds / boxwatch_gpu_up 0 make it visible.
                log.exception("NVML poll raised")
            self._stop.wait(self._config.poll_interval)

    def _publish(self, snapshot: Snapshot, complete: bool = True) -> None:
        self._snapshot = snapshot  # one reference swap: readers see the old or the new, whole
        for listener in self.listeners:
            try:
                listener(snapshot)
            except Exception:  # a rendering bug must not stop the polling
                log.exception("snapshot listener failed")
        if complete:  # a poll's readings, or NVML down
            self._first.set()

    def _poll(self) -> None:
        start = self._clock()
        reader = GpuReader(self._nv, self._config.procfs, self._config.processes,
                           self._config.max_processes, self._config.ecc_counter, self._count_error,
                           self._containers)
        readings = []
        try:
            for device in self._devices:
                unreachable = device.handle is None or device.identity.uuid == UNKNOWN
                if unreachable and not self._refresh(device, reader):
                    readings.append(GpuReading(identity=device.identity, up=False))
                    continue
                readings.append(reader.read(device))
        except DriverFailed as err:
            log.error("NVML failed; re-initialising", extra=kv(error=err))
            self._shutdown()
            self._publish(Snapshot(nvml_up=False, taken_at=self._clock(), poll_duration=0.0,
                                   errors=self._error_counts()))
            return
        self._note_transitions(readings)
        if self._containers is not None:
            self._containers.keep_only(reader.container_ids)
        end = self._clock()
        self._publish(Snapshot(nvml_up=True, taken_at=end, poll_duration=end - start,
                               driver_version=self._driver_version, gpus=tuple(readings),
                               errors=self._error_counts()))

    def _refresh(self, device: _Device, reader: GpuReader) -> bool:
        """Handle and identity of a GPU unreachable at initialisation; False while it still is."""
        nv, ident = self._nv, device.identity
        try:
            if device.handle is None:
                device.handle = reader.call(ident, "handle", nv.nvmlDeviceGetHandleByIndex, ident.index)
            if device.handle is None:
                return False
            uuid = reader.call(ident, "uuid", nv.nvmlDeviceGetUUID, device.handle)
            name = reader.call(ident, "name", nv.nvmlDeviceGetName, device.handle)
        except GpuFailed:
            return False
        if uuid is None or name is None:
            return False
        device.identity = GpuIdentity(ident.index, _text(uuid), _text(name))
        self._errors.setdefault(device.identity, 0)
        return True

    def _note_transitions(self, readings: list[GpuReading]) -> None:
        for reading in readings:
            ident = reading.identity
            if not reading.up and ident not in self._down:
                self._down.add(ident)
                log.warning("GPU failing; reporting boxwatch_gpu_up 0", extra=kv(gpu=ident.index, uuid=ident.uuid))
            elif reading.up and ident in self._down:
                self._down.discard(ident)
                log.info("GPU answering again", extra=kv(gpu=ident.index, uuid=ident.uuid))

    def _count_error(self, ident: GpuIdentity, what: str, err: Exception) -> None:
        self._errors[ident] = self._errors.get(ident, 0) + 1
        key = (ident, what, getattr(err, "value", None))
        if key not in self._logged:  # once per GPU, field and error code: no per-poll spam
            self._logged.add(key)
            log.warning("NVML call failed", extra=kv(gpu=ident.index, uuid=ident.uuid, field=what, error=err))

    def _error_counts(self) -> tuple[tuple[GpuIdentity, int], ...]:
        return tuple(sorted(self._errors.items(), key=lambda item: (item[0].index, item[0].uuid)))

    # initialisation ------------------------------------------------------------

    def _init(self) -> bool:
        """Load and initialise NVML and enumerate the GPUs; False (logged once) if impossible."""
        try:
            import pynvml  # lazy: the exporter must start (and report nvml_up 0) without it
        except ImportError as err:
            return self._init_failed(f"nvidia-ml-py is not installed ({err}); install boxwatch[gpu]")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            hint = " (no NVIDIA driver on this machine?)" if err.value == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND else ""
            return self._init_failed(f"nvmlInit: {err}{hint}")
        self._nv = pynvml
        try:
            self._driver_version = _text(pynvml.nvmlSystemGetDriverVersion())
            self._devices = self._enumerate(pynvml)
        except pynvml.NVMLError as err:
            self._shutdown()
            return self._init_failed(f"enumerating GPUs: {err}")
        log.info("NVML initialised", extra=kv(driver_version=self._driver_version, gpus=len(self._devices)))
        self._last_init_error = None
        self._retry.reset()
        return True

    def _enumerate(self, nv: ModuleType) -> list[_Device]:
        devices = []
        wanted = set(self._config.devices)
        for index in range(nv.nvmlDeviceGetCount()):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
            except nv.NVMLError as err:  # e.g. GPU_IS_LOST: still listed, as failing, and retried
                if err.value in _DRIVER_FATAL:
                    raise
                log.warning("cannot reach GPU", extra=kv(gpu=index, error=err))
                handle = None
            if handle is None:
                identity = GpuIdentity(index, UNKNOWN, UNKNOWN)
            else:
                identity = self._identity(nv, handle, index)
            if wanted and str(index) not in wanted and identity.uuid not in wanted:
                continue
            devices.append(_Device(handle, identity))
            self._errors.setdefault(identity, 0)  # exported from the start, so rate() works
        return devices

    @staticmethod
    def _identity(nv: ModuleType, handle: object, index: int) -> GpuIdentity:
        """UUID and name; a GPU that cannot say is labelled "unknown" until a later poll can."""
        values = []
        for what, fn in (("uuid", nv.nvmlDeviceGetUUID), ("name", nv.nvmlDeviceGetName)):
            try:
                values.append(_text(fn(handle)))
            except nv.NVMLError as err:
                log.warning("cannot read GPU identity", extra=kv(gpu=index, field=what, error=err))
                values.append(UNKNOWN)
        if UNKNOWN in values:
            return GpuIdentity(index, UNKNOWN, UNKNOWN)
        return GpuIdentity(index, values[0], values[1])

    def _init_failed(self, reason: str) -> bool:
        if reason != self._last_init_error:
            log.error("NVML unavailable; exporting boxwatch_nvml_up 0 and retrying with backoff",
                      extra=kv(reason=reason, retry_max_interval=self._config.retry_max))
        else:
            log.debug("NVML still unavailable", extra=kv(reason=reason))
        self._last_init_error = reason
        return False

    def _shutdown(self) -> None:
        if self._nv is None:
            return
        try:
            self._nv.nvmlShutdown()
        except self._nv.NVMLError as err:
            log.debug("nvmlShutdown failed", extra=kv(error=err))
        self._nv = None
        self._devices = []


# --------------------------------------------------------------------------- collector


_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("utilization", "boxwatch_gpu_utilization_ratio",
     "Fraction of the last sample period during which a kernel ran on the GPU (0..1)."),
    ("memory_utilization", "boxwatch_gpu_memory_utilization_ratio",
     "Fraction of the last sample period during which device memory was read or written (0..1)."),
    ("memory_used", "boxwatch_gpu_memory_used_bytes", "Device memory in use (NVML nvmlMemory_t.used)."),
    ("memory_total", "boxwatch_gpu_memory_total_bytes", "Total installed device memory."),
    ("temperature", "boxwatch_gpu_temperature_celsius", "GPU core temperature."),
    ("power", "boxwatch_gpu_power_watts", "Power drawn by the board."),
    ("power_limit", "boxwatch_gpu_power_limit_watts", "Enforced power limit of the board."),
    ("fan_speed", "boxwatch_gpu_fan_speed_ratio",
     "Intended fan speed as a fraction of the maximum (may exceed 1 on some boards)."),
    ("sm_clock", "boxwatch_gpu_sm_clock_hertz", "Current SM (streaming multiprocessor) clock."),
    ("memory_clock", "boxwatch_gpu_memory_clock_hertz", "Current memory clock."),
    ("memory_temperature", "boxwatch_gpu_memory_temperature_celsius",
     "Device memory (HBM) temperature, where the card has a sensor for it."),
    ("slowdown_temperature", "boxwatch_gpu_slowdown_temperature_celsius",
     "This card's temperature at which the GPU starts slowing its clocks (NVML slowdown threshold)."),
    ("shutdown_temperature", "boxwatch_gpu_shutdown_temperature_celsius",
     "This card's temperature at which the GPU shuts down (NVML shutdown threshold)."),
    ("performance_state", "boxwatch_gpu_performance_state",
     "Performance state: 0 (P0, maximum performance) to 15 (P15, minimum)."),
    ("pcie_link_gen", "boxwatch_gpu_pcie_link_generation",
     "Current PCIe link generation (drops at idle to save power; compare under load)."),
    ("pcie_link_gen_max", "boxwatch_gpu_pcie_link_generation_max",
     "Highest PCIe link generation this GPU and the slot support."),
    ("pcie_link_width", "boxwatch_gpu_pcie_link_width",
     "Current PCIe link width (lanes)."),
    ("pcie_link_width_max", "boxwatch_gpu_pcie_link_width_max",
     "Widest PCIe link this GPU and the slot support (lanes)."),
    ("row_remap_pending", "boxwatch_gpu_row_remap_pending",
     "1 if remapped memory rows wait for a GPU reset to take effect (row remapping cards)."),
    ("row_remap_failed", "boxwatch_gpu_row_remap_failed",
     "1 if a row remapping failed: the memory cannot be repaired (row remapping cards)."),
    ("retired_pages_pending", "boxwatch_gpu_retired_pages_pending",
     "1 if retired memory pages wait for a driver reload (page retirement cards)."),
)


class GpuCollector:
    """Turns the poller's latest snapshot into metric families; never calls NVML itself.

    Each snapshot is rendered once, by the poller thread (``prepared``); a scrape adds the
    snapshot's age, and withholds the readings (a second rendering, made when first needed) once
    the snapshot is older than ``max_snapshot_age``.
    """

    def __init__(self, poller: NvmlPoller, max_snapshot_age: float, clock: Callable[[], float] = time.monotonic):
        self._poller = poller
        self._max_age = max_snapshot_age
        self._clock = clock
        self._stale_logged = False
        self._stale: Rendered | None = None
        self.prepared = Prepared()
        poller.listeners.append(self.prepare)

    def describe(self) -> list[Metric]:
        return []

    def prepare(self, snap: Snapshot) -> Rendered:
        """Render ``snap`` for the scrapes to come (called by the poller with each snapshot)."""
        return self.prepared.publish(self._snapshot_families(snap, stale=False), snap)

    def collect(self) -> Iterable[Metric]:
        return families_of(self.parts())

    def parts(self) -> Iterable[Part]:
        rendered = self.prepared.current
        if rendered is None and self._poller.snapshot() is not None:
            rendered = self.prepare(self._poller.snapshot())
        snap: Snapshot | None = rendered.source if rendered is not None else None
        nvml_up = GaugeMetricFamily("boxwatch_nvml_up", "1 if NVML is initialised, 0 if not (no driver, init failed).")
        nvml_up.add_metric([], 1.0 if snap is not None and snap.nvml_up else 0.0)
        yield nvml_up
        if snap is None:
            return
        age = self._clock() - snap.taken_at
        yield GaugeMetricFamily("boxwatch_gpu_snapshot_age_seconds",
                                "Seconds since the NVML poll that this scrape's values come from.", value=age)
        stale = snap.nvml_up and age > self._max_age
        if snap.nvml_up:
            self._log_staleness(stale, age)
        if not stale:
            yield rendered
            return
        withheld = self._stale
        if withheld is None or withheld.source is not snap:
            withheld = self._stale = Rendered(self._snapshot_families(snap, stale=True), snap)
        yield withheld

    def _snapshot_families(self, snap: Snapshot, stale: bool) -> list[Metric]:
        families: list[Metric] = [
            GaugeMetricFamily("boxwatch_gpu_poll_duration_seconds",
                              "Time the last NVML poll of all GPUs took.", value=snap.poll_duration),
            self._errors(snap),
        ]
        if not snap.nvml_up:
            return families
        if snap.driver_version is not None:
            driver = InfoMetricFamily("boxwatch_gpu_driver", "NVIDIA driver version, from NVML.")
            driver.add_metric([], {"driver_version": snap.driver_version})
            families.append(driver)
        families.extend(self._gpu_families(snap.gpus, stale))
        return families

    def _log_staleness(self, stale: bool, age: float) -> None:
        if stale and not self._stale_logged:
            log.warning("NVML poll is stalled; withholding GPU readings", extra=kv(snapshot_age=round(age, 1)))
        elif not stale and self._stale_logged:
            log.info("NVML poll resumed")
        self._stale_logged = stale

    @staticmethod
    def _errors(snap: Snapshot) -> Metric:
        errors = CounterMetricFamily("boxwatch_gpu_errors", "Failed NVML calls per GPU since the exporter started.",
                                     labels=GPU_LABELS)
        for ident, count in snap.errors:
            errors.add_metric(ident.labels(), count)
        return errors

    def _gpu_families(self, gpus: tuple[GpuReading, ...], stale: bool) -> Iterable[Metric]:
        up = GaugeMetricFamily("boxwatch_gpu_up", "1 if the GPU answered its last NVML poll, 0 if it is failing.",
                               labels=GPU_LABELS)
        info = InfoMetricFamily("boxwatch_gpu", "GPU identity; pci_bus_id joins with boxwatch_gpu_xid_errors_total.",
                                labels=GPU_LABELS)
        gauges = {key: GaugeMetricFamily(name, doc, labels=GPU_LABELS) for key, name, doc in _GAUGES}
        energy = CounterMetricFamily("boxwatch_gpu_energy_joules",
                                     "Energy consumed by the GPU since the driver was loaded.", labels=GPU_LABELS)
        throttle = GaugeMetricFamily("boxwatch_gpu_throttle_active",
                                     "1 if this clock-throttle (clocks event) reason is active.",
                                     labels=[*GPU_LABELS, "reason"])
        pcie = GaugeMetricFamily("boxwatch_gpu_pcie_throughput_bytes_per_second",
                                 "PCIe throughput over the last NVML sample (about 20 ms).",
                                 labels=[*GPU_LABELS, "direction"])
        ecc = CounterMetricFamily("boxwatch_gpu_ecc_errors", "ECC memory errors (see --gpu.ecc-counter).",
                                  labels=[*GPU_LABELS, "type"])
        replays = CounterMetricFamily("boxwatch_gpu_pcie_replay_errors",
                                      "PCIe packets the GPU had to resend (replays): a bad link or riser.",
                                      labels=GPU_LABELS)
        violation = CounterMetricFamily("boxwatch_gpu_violation_seconds",
                                        "Time the GPU's clocks were held below their target by this policy "
                                        "(NVML violation status).", labels=[*GPU_LABELS, "policy"])
        retired = GaugeMetricFamily("boxwatch_gpu_retired_pages",
                                    "Memory pages retired, by cause (page retirement cards).",
                                    labels=[*GPU_LABELS, "cause"])
        remapped = GaugeMetricFamily("boxwatch_gpu_remapped_rows",
                                     "Memory rows remapped, by the kind of error that caused it (row remapping "
                                     "cards).", labels=[*GPU_LABELS, "type"])
        procs = GaugeMetricFamily("boxwatch_gpu_process_memory_used_bytes",
                                  "Device memory used by compute processes, per executable name and "
                                  "container (top --gpu.max-processes, the rest as process=\"other\"); "
                                  "container is empty for host processes.",
                                  labels=[*GPU_LABELS, "process", "container", "compose_service"])
        for reading in sorted(gpus, key=lambda g: g.identity.index):
            labels = reading.identity.labels()
            up.add_metric(labels, 1.0 if reading.up and not stale else 0.0)
            if stale or not reading.up:
                continue
            if reading.pci_bus_id is not None:
                info.add_metric(labels, {"pci_bus_id": reading.pci_bus_id})
            for key, value in reading.gauges.items():
                gauges[key].add_metric(labels, value)
            if reading.energy_joules is not None:
                energy.add_metric(labels, reading.energy_joules)
            if reading.throttle_mask is not None:
                for reason, bit in THROTTLE_REASONS:
                    throttle.add_metric([*labels, reason], 1.0 if reading.throttle_mask & bit else 0.0)
            for direction, value in sorted(reading.pcie.items()):
                pcie.add_metric([*labels, direction], value)
            for kind, value in sorted(reading.ecc.items()):
                ecc.add_metric([*labels, kind], value)
            if reading.pcie_replays is not None:
                replays.add_metric(labels, reading.pcie_replays)
            for policy, value in reading.violation_seconds.items():
                violation.add_metric([*labels, policy], value)
            for cause, value in reading.retired_pages.items():
                retired.add_metric([*labels, cause], value)
            for kind, value in reading.remapped_rows.items():
                remapped.add_metric([*labels, kind], value)
            for key, used in reading.processes:
                procs.add_metric([*labels, *key], used)
        families = [up, info, *gauges.values(), energy, throttle, pcie, ecc, replays, violation, retired, remapped,
                    procs]
        yield from (family for family in families if family.samples)  # no HELP/TYPE without samples


# --------------------------------------------------------------------------- CLI


def _device_list(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "all"):
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """GPU exporter flags (besides the common --web.* and --log.* ones)."""
    add_collector_flag(parser, "processes",
                       "export per-process GPU memory (boxwatch_gpu_process_memory_used_bytes)")
    parser.add_argument("--gpu.max-processes", dest="gpu_max_processes", type=non_negative_int, default=10,
                        metavar="N",
                        help="per GPU, export the N process names using the most memory; the rest are "
                             "summed as process=\"other\" (default: %(default)s)")
    parser.add_argument("--gpu.poll-interval", dest="gpu_poll_interval", type=positive_float, default=5.0,
                        metavar="SECONDS",
                        help="how often the background thread polls NVML; scrapes read the latest poll "
                             "and never wait for NVML (like dcgm-exporter's --collect-interval) "
                             "(default: %(default)s)")
    parser.add_argument("--gpu.max-snapshot-age", dest="gpu_max_snapshot_age", type=positive_float,
                        default=30.0, metavar="SECONDS",
                        help="if the last completed poll is older than this (a hung driver call), "
                             "withhold readings and report boxwatch_gpu_up 0; at least twice the poll "
                             "interval is used (default: %(default)s)")
    parser.add_argument("--gpu.devices", dest="gpu_devices", type=_device_list, default=(), metavar="LIST",
                        help="comma-separated GPU indexes or UUIDs to export, or \"all\" "
                             "(like dcgm-exporter's --devices) (default: all)")
    parser.add_argument("--gpu.ecc-counter", dest="gpu_ecc_counter", choices=["volatile", "aggregate"],
                        default="volatile",
                        help="ECC counts since the last driver load (volatile) or over the board's "
                             "lifetime (aggregate) (default: %(default)s)")
    parser.add_argument("--gpu.init-retry-max-interval", dest="gpu_init_retry_max", type=positive_float,
                        default=60.0, metavar="SECONDS",
                        help="when NVML cannot be initialised (no driver), retry with exponential "
                             "backoff from 1 s up to this interval (default: %(default)s)")
    parser.add_argument("--docker.host", dest="docker_host",
                        default=os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST, metavar="URL",
                        help="Docker Engine API asked for the name and compose service of a container "
                             "that runs a GPU process (found through /proc/PID/cgroup), as the "
                             "containers exporter labels it; \"\" to label containers by short id only "
                             f"(default: $DOCKER_HOST, else {DEFAULT_DOCKER_HOST})")
    parser.add_argument("--path.procfs", dest="path_procfs", type=Path, default=Path("/proc"), metavar="PATH",
                        help="procfs mount point used to name GPU processes by PID; NVML reports host "
                             "PIDs (default: %(default)s)")


def create(args: argparse.Namespace) -> Source:
    """Start the NVML poller and return the GPU collector (NVML is loaded in the poller thread)."""
    config = PollerConfig(
        poll_interval=args.gpu_poll_interval,
        processes=args.collector_processes,
        max_processes=args.gpu_max_processes,
        ecc_counter=args.gpu_ecc_counter,
        devices=tuple(args.gpu_devices),
        procfs=args.path_procfs,
        docker_host=args.docker_host or None,
        retry_initial=min(1.0, args.gpu_init_retry_max),
        retry_max=args.gpu_init_retry_max,
    )
    poller = NvmlPoller(config).start()
    max_age = max(args.gpu_max_snapshot_age, 2 * args.gpu_poll_interval)
    return Source(collectors={"gpu": GpuCollector(poller, max_age)}, close=poller.close)
