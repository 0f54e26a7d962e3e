"""The GPU exporter, end to end: real nvidia-ml-py over a fake ``libnvidia-ml.so.1``.

Each test starts ``python -m exporters gpu`` as a subprocess with ``LD_LIBRARY_PATH`` pointing at
a C library compiled from tests/exporters/fake_nvml/fake_nvml.c, and asserts on the scraped
exposition text. nvidia-ml-py is not patched: it loads the library with ctypes as it would load
the driver's. The fixture has two GPUs: 0 is an "NVIDIA RTX A5000" (ECC), 1 an
"NVIDIA GeForce RTX 3060" (no ECC: NVML_ERROR_NOT_SUPPORTED).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.exporters import fake_nvml
from tests.harness import Process, free_port, python_module, require_binary, wait_http

pytestmark = pytest.mark.slow  # every test runs the exporter (or its CLI) as a process

GOLDEN = Path(__file__).parent / "golden" / "gpu.prom"
UPDATE_GOLDEN = os.environ.get("BOXWATCH_UPDATE_GOLDEN") == "1"
GPU0 = {"gpu": "0", "uuid": "GPU-5eed0000-1b2c-4d3e-8f40-000000000000", "name": "NVIDIA RTX A5000"}
GPU1 = {"gpu": "1", "uuid": "GPU-5eed0001-1b2c-4d3e-8f40-000000000001", "name": "NVIDIA GeForce RTX 3060"}
NO_SUCH_PID = 2**31 - 1  # above any pid_max: /proc has no such entry
GPU_FLAGS = [
    "--collector.processes", "--no-collector.processes", "--gpu.max-processes", "--gpu.poll-interval",
    "--gpu.max-snapshot-age", "--gpu.devices", "--gpu.ecc-counter", "--gpu.init-retry-max-interval",
    "--path.procfs", "--docker.host", "--web.listen-address", "--web.telemetry-path", "--web.config.file",
    "--log.level", "--log.format",
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def fake_lib(tmp_path_factory) -> Path:
    """Directory holding the compiled fake libnvidia-ml.so.1 (built once per session)."""
    require_binary("gcc", "/usr/bin/gcc")
    return fake_nvml.build(tmp_path_factory.mktemp("fake-nvml"))


@pytest.fixture(scope="session")
def old_driver_lib(tmp_path_factory) -> Path:
    """The fake library as older drivers have it: without the calls that replaced deprecated ones."""
    require_binary("gcc", "/usr/bin/gcc")
    return fake_nvml.build(tmp_path_factory.mktemp("fake-nvml-old"), old_driver=True)


@pytest.fixture(scope="session")
def workload(tmp_path_factory):
    """Real processes for NVML to report: copies of ``sleep`` named trainer and inference.

    Yields the FAKE_NVML_PROCS value: GPU 0 runs two trainers (3 GiB + 1 GiB) and one inference
    (2 GiB), GPU 1 one trainer (512 MiB) and a PID that no longer exists (64 MiB).
    """
    bin_dir = tmp_path_factory.mktemp("workload")
    procs = {}
    for name in ("trainer", "inference"):
        shutil.copy(shutil.which("sleep"), bin_dir / name)
    started = []
    for key, name in (("t1", "trainer"), ("t2", "trainer"), ("inf", "inference"), ("t3", "trainer")):
        proc = subprocess.Popen([str(bin_dir / name), "600"])
        started.append(proc)
        procs[key] = proc.pid
    gib = 1 << 30
    spec = ",".join([
        f"0:{procs['t1']}:{3 * gib}", f"0:{procs['t2']}:{gib}", f"0:{procs['inf']}:{2 * gib}",
        f"1:{procs['t3']}:{gib // 2}", f"1:{NO_SUCH_PID}:{64 << 20}",
    ])
    yield spec
    for proc in started:
        proc.kill()
        proc.wait()


class Exporter:
    """A running GPU exporter process on a free loopback port."""

    def __init__(self, workdir: Path, args: list[str], env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        argv = python_module("exporters", "gpu", f"--web.listen-address=127.0.0.1:{self.port}", *args)
        workdir.mkdir(parents=True, exist_ok=True)
        self.process = Process(argv, workdir / "exporter.log", env=env, cwd=Path(__file__).parents[2])
        try:
            wait_http(self.url, 30, self.process.proc)
        except Exception as err:
            self.process.stop()
            raise RuntimeError(f"{err}\n{self.process.output()}") from err

    def scrape(self) -> str:
        response = requests.get(self.url, timeout=5)
        response.raise_for_status()
        return response.text

    def log(self) -> str:
        return self.process.output()


@pytest.fixture
def start_exporter(tmp_path, fake_lib):
    """Factory: ``start_exporter(*flags, lib=True, **FAKE_NVML_env)`` -> running Exporter."""
    started: list[Exporter] = []

    def start(*args: str, lib: Path | None | bool = True, **fake_env: str) -> Exporter:
        env = {key: value for key, value in os.environ.items() if not key.startswith("FAKE_NVML_")}
        env["LD_LIBRARY_PATH"] = str(fake_lib if lib is True else lib or "")
        env.update({f"FAKE_NVML_{key.upper()}": str(value) for key, value in fake_env.items()})
        exporter = Exporter(tmp_path / f"exporter-{len(started)}", list(args), env)
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        exporter.process.stop()


# --------------------------------------------------------------------------- helpers


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, keyed by (name, frozenset of label items)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, metric: str, /, **labels: str) -> float | None:
    return samples(text).get((metric, frozenset(labels.items())))


def series(text: str, metric: str) -> list[dict[str, str]]:
    return [dict(labels) for (sample, labels) in samples(text) if sample == metric]


def wait_until(exporter: Exporter, predicate, timeout: float = 15.0) -> str:
    """Scrape until ``predicate(text)`` holds; return that exposition."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = exporter.scrape()
        if predicate(text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s; last scrape:\n{text}\nlog:\n{exporter.log()}")


_VARYING = re.compile(
    r"^(boxwatch_exporter_scrape_collector_duration_seconds|boxwatch_gpu_snapshot_age_seconds"
    r"|boxwatch_gpu_poll_duration_seconds|boxwatch_exporter_render_duration_seconds)(\{[^}]*\})? \S+$"
)


def characterize(text: str) -> str:
    """The exposition without process_/python_ families, with timing values and versions masked."""
    lines = []
    for line in text.splitlines():
        name = line.split(" ")[2] if line.startswith("# ") else line
        if name.startswith(("process_", "python_")):
            continue
        line = _VARYING.sub(lambda m: f"{m.group(1)}{m.group(2) or ''} <varies>", line)
        line = re.sub(r'python_version="[^"]*"', 'python_version="<python>"', line)
        line = re.sub(r'(boxwatch_exporter_build_info\{[^}]*)version="[^"]*"', r'\1version="<version>"', line)
        lines.append(line)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- tests


def test_exposition_matches_golden_file(start_exporter, workload):
    """Characterization: the whole exposition for the two-GPU fixture, compared with a checked-in file."""
    exporter = start_exporter("--gpu.poll-interval=0.2", procs=workload)
    text = wait_until(exporter, lambda t: value(t, "boxwatch_gpu_up", **GPU1) == 1.0)
    got = characterize(text)
    if UPDATE_GOLDEN:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text(), "exposition changed; rerun with BOXWATCH_UPDATE_GOLDEN=1 if intended"


def test_values_are_converted_to_base_units(start_exporter, workload):
    text = start_exporter(procs=workload).scrape()
    assert value(text, "boxwatch_nvml_up") == 1.0
    assert value(text, "boxwatch_gpu_utilization_ratio", **GPU0) == pytest.approx(0.87)
    assert value(text, "boxwatch_gpu_memory_used_bytes", **GPU0) == 10 * 2**30
    assert value(text, "boxwatch_gpu_power_watts", **GPU0) == pytest.approx(182.345)  # from mW
    assert value(text, "boxwatch_gpu_energy_joules_total", **GPU0) == pytest.approx(123456.789)  # from mJ
    assert value(text, "boxwatch_gpu_sm_clock_hertz", **GPU1) == 210e6  # from MHz
    assert value(text, "boxwatch_gpu_fan_speed_ratio", **GPU1) == pytest.approx(0.30)
    assert value(text, "boxwatch_gpu_pcie_throughput_bytes_per_second", **GPU0, direction="rx") == 345000 * 1024
    active = {s["reason"] for s in series(text, "boxwatch_gpu_throttle_active") if s["gpu"] == "0"
              and value(text, "boxwatch_gpu_throttle_active", **s) == 1.0}
    assert active == {"sw_power_cap", "sw_thermal_slowdown"}
    assert value(text, "boxwatch_gpu_info", **GPU0, pci_bus_id="00000000:01:00.0") == 1.0


def test_health_fields_pcie_link_limits_and_violation_time(start_exporter):
    text = start_exporter().scrape()
    # GPU 1 trained at x8 in a x16 slot, and resent 12 packets over the link.
    assert value(text, "boxwatch_gpu_pcie_link_width", **GPU1) == 8.0
    assert value(text, "boxwatch_gpu_pcie_link_width_max", **GPU1) == 16.0
    assert value(text, "boxwatch_gpu_pcie_link_generation", **GPU1) == 1.0
    assert value(text, "boxwatch_gpu_pcie_link_generation_max", **GPU1) == 4.0
    assert value(text, "boxwatch_gpu_pcie_replay_errors_total", **GPU1) == 12.0
    assert value(text, "boxwatch_gpu_pcie_link_width", **GPU0) == 16.0
    # Each card's own limits, not one number for all.
    assert value(text, "boxwatch_gpu_slowdown_temperature_celsius", **GPU0) == 95.0
    assert value(text, "boxwatch_gpu_slowdown_temperature_celsius", **GPU1) == 93.0
    assert value(text, "boxwatch_gpu_shutdown_temperature_celsius", **GPU0) == 98.0
    assert value(text, "boxwatch_gpu_performance_state", **GPU0) == 0.0
    assert value(text, "boxwatch_gpu_performance_state", **GPU1) == 8.0
    # Violation time: ns in NVML, seconds here; policies a card lacks are left out.
    assert value(text, "boxwatch_gpu_violation_seconds_total", **GPU0, policy="power") == pytest.approx(61.5)
    assert value(text, "boxwatch_gpu_violation_seconds_total", **GPU0, policy="thermal") == pytest.approx(2.25)
    assert {s["policy"] for s in series(text, "boxwatch_gpu_violation_seconds_total") if s["gpu"] == "1"} == {
        "power", "thermal"}
    assert not any(s["policy"] == "sync_boost" for s in series(text, "boxwatch_gpu_violation_seconds_total"))
    # Memory temperature (a field value) and row remapping where the card has them.
    assert value(text, "boxwatch_gpu_memory_temperature_celsius", **GPU0) == 84.0
    assert value(text, "boxwatch_gpu_remapped_rows", **GPU0, type="correctable") == 2.0
    assert value(text, "boxwatch_gpu_remapped_rows", **GPU0, type="uncorrectable") == 0.0
    assert value(text, "boxwatch_gpu_row_remap_pending", **GPU0) == 0.0
    assert value(text, "boxwatch_gpu_row_remap_failed", **GPU0) == 0.0
    for metric in ("boxwatch_gpu_memory_temperature_celsius", "boxwatch_gpu_remapped_rows",
                   "boxwatch_gpu_row_remap_pending", "boxwatch_gpu_retired_pages",
                   "boxwatch_gpu_retired_pages_pending"):
        assert [s for s in series(text, metric) if s["gpu"] == "1"] == [], metric
    assert value(text, "boxwatch_gpu_errors_total", **GPU1) == 0.0  # unsupported is not an error


def test_the_first_scrape_has_the_first_poll_readings(start_exporter):
    """Start-up waits (at most 2 s) for the first poll's readings, not only for NVML to initialise: with
    NVML calls of 20 ms, a scrape right after the exporter listens already has every GPU."""
    text = start_exporter(delay_us=20_000).scrape()
    assert value(text, "boxwatch_gpu_up", **GPU0) == 1.0 and value(text, "boxwatch_gpu_up", **GPU1) == 1.0
    assert value(text, "boxwatch_gpu_temperature_celsius", **GPU0) is not None


def test_page_retirement_card_reports_retired_pages_instead_of_remapped_rows(start_exporter):
    text = start_exporter(page_retirement_gpu=1).scrape()
    v100 = {**GPU1, "name": "Tesla V100-PCIE-16GB"}
    assert value(text, "boxwatch_gpu_retired_pages", **v100, cause="single_bit_ecc") == 2.0
    assert value(text, "boxwatch_gpu_retired_pages", **v100, cause="double_bit_ecc") == 1.0
    assert value(text, "boxwatch_gpu_retired_pages_pending", **v100) == 1.0
    assert [s for s in series(text, "boxwatch_gpu_remapped_rows") if s["gpu"] == "1"] == []
    assert series(text, "boxwatch_gpu_retired_pages") == [
        {**v100, "cause": "single_bit_ecc"}, {**v100, "cause": "double_bit_ecc"}]
    assert value(text, "boxwatch_gpu_errors_total", **v100) == 0.0


def test_ecc_unsupported_gpu_omits_the_series_without_error(start_exporter):
    text = start_exporter().scrape()
    assert value(text, "boxwatch_gpu_ecc_errors_total", **GPU0, type="corrected") == 3.0  # volatile by default
    assert [s for s in series(text, "boxwatch_gpu_ecc_errors_total") if s["gpu"] == "1"] == []
    assert value(text, "boxwatch_gpu_up", **GPU1) == 1.0
    assert value(text, "boxwatch_gpu_errors_total", **GPU1) == 0.0
    assert value(text, "boxwatch_exporter_scrape_collector_success", collector="gpu") == 1.0


def test_aggregate_ecc_counter_flag(start_exporter):
    text = start_exporter("--gpu.ecc-counter=aggregate").scrape()
    assert value(text, "boxwatch_gpu_ecc_errors_total", **GPU0, type="corrected") == 17.0
    assert value(text, "boxwatch_gpu_ecc_errors_total", **GPU0, type="uncorrected") == 1.0


def test_process_memory_is_aggregated_per_name_and_bounded(start_exporter, workload):
    text = start_exporter(procs=workload).scrape()
    procs = {(s["gpu"], s["process"]): value(text, "boxwatch_gpu_process_memory_used_bytes", **s)
             for s in series(text, "boxwatch_gpu_process_memory_used_bytes")}
    assert procs == {("0", "trainer"): 4 * 2**30, ("0", "inference"): 2 * 2**30,
                     ("1", "trainer"): 2**29, ("1", "unknown"): 64 << 20}
    # host processes: outside any container
    assert {(s["container"], s["compose_service"]) for s in series(text, "boxwatch_gpu_process_memory_used_bytes")} \
        == {("", "")}
    assert not any("pid" in s for s in series(text, "boxwatch_gpu_process_memory_used_bytes"))

    bounded = start_exporter("--gpu.max-processes=1", f"--gpu.devices={GPU0['uuid']}", procs=workload).scrape()
    procs = {s["process"]: value(bounded, "boxwatch_gpu_process_memory_used_bytes", **s)
             for s in series(bounded, "boxwatch_gpu_process_memory_used_bytes")}
    assert procs == {"trainer": 4 * 2**30, "other": 2 * 2**30}
    assert {s["gpu"] for s in series(bounded, "boxwatch_gpu_up")} == {"0"}  # --gpu.devices by UUID

    off = start_exporter("--no-collector.processes", procs=workload).scrape()
    assert series(off, "boxwatch_gpu_process_memory_used_bytes") == []
    assert value(off, "boxwatch_gpu_up", **GPU0) == 1.0


def test_lost_gpu_is_reported_and_the_other_keeps_reporting(start_exporter, tmp_path):
    trigger = tmp_path / "gpu1-lost"
    exporter = start_exporter("--gpu.poll-interval=0.1", lost_file=trigger, lost_gpu=1)
    before = exporter.scrape()
    assert value(before, "boxwatch_gpu_up", **GPU1) == 1.0
    assert value(before, "boxwatch_gpu_errors_total", **GPU1) == 0.0

    trigger.touch()  # from now on every call for GPU 1 returns NVML_ERROR_GPU_IS_LOST
    lost = wait_until(exporter, lambda t: value(t, "boxwatch_gpu_up", **GPU1) == 0.0)
    first_errors = value(lost, "boxwatch_gpu_errors_total", **GPU1)
    assert first_errors >= 1
    assert value(lost, "boxwatch_gpu_temperature_celsius", **GPU1) is None
    assert value(lost, "boxwatch_gpu_up", **GPU0) == 1.0
    assert value(lost, "boxwatch_gpu_temperature_celsius", **GPU0) == 71.0
    assert value(lost, "boxwatch_gpu_errors_total", **GPU0) == 0.0
    assert value(lost, "boxwatch_nvml_up") == 1.0
    assert value(lost, "boxwatch_exporter_scrape_collector_success", collector="gpu") == 1.0
    later = wait_until(exporter, lambda t: value(t, "boxwatch_gpu_errors_total", **GPU1) > first_errors)
    assert value(later, "boxwatch_gpu_up", **GPU1) == 0.0
    assert exporter.log().count("GPU failing") == 1  # a transition is logged once, not every poll

    trigger.unlink()
    wait_until(exporter, lambda t: value(t, "boxwatch_gpu_up", **GPU1) == 1.0)
    assert "GPU answering again" in exporter.log()


def test_gpu_lost_before_start_is_listed_and_identified_once_back(start_exporter, tmp_path):
    trigger = tmp_path / "gpu1-lost"
    trigger.touch()
    exporter = start_exporter("--gpu.poll-interval=0.1", lost_file=trigger, lost_gpu=1)
    unknown = {"gpu": "1", "uuid": "unknown", "name": "unknown"}
    text = wait_until(exporter, lambda t: value(t, "boxwatch_gpu_up", **unknown) == 0.0)
    assert value(text, "boxwatch_gpu_up", **GPU0) == 1.0
    assert value(text, "boxwatch_gpu_errors_total", **unknown) >= 1

    trigger.unlink()
    text = wait_until(exporter, lambda t: value(t, "boxwatch_gpu_up", **GPU1) == 1.0)
    assert value(text, "boxwatch_gpu_temperature_celsius", **GPU1) == 45.0


def test_driver_unloaded_then_reloaded_reinitialises_nvml(start_exporter, tmp_path):
    gone = tmp_path / "driver-gone"
    exporter = start_exporter("--gpu.poll-interval=0.1", "--gpu.init-retry-max-interval=0.2",
                              driver_gone_file=gone)
    assert value(exporter.scrape(), "boxwatch_nvml_up") == 1.0

    gone.touch()  # every call now returns NVML_ERROR_DRIVER_NOT_LOADED, and so does nvmlInit
    text = wait_until(exporter, lambda t: value(t, "boxwatch_nvml_up") == 0.0)
    assert series(text, "boxwatch_gpu_up") == []
    time.sleep(1.0)  # several failed re-initialisations
    assert exporter.log().count("NVML unavailable") == 1

    gone.unlink()
    text = wait_until(exporter, lambda t: value(t, "boxwatch_gpu_up", **GPU1) == 1.0)
    assert value(text, "boxwatch_nvml_up") == 1.0
    assert value(text, "boxwatch_gpu_temperature_celsius", **GPU0) == 71.0


def test_older_driver_falls_back_to_the_older_calls(start_exporter, old_driver_lib):
    """No nvmlDeviceGetCurrentClocksEventReasons (before R535) nor nvmlDeviceGetTemperatureV."""
    text = start_exporter(lib=old_driver_lib).scrape()
    assert value(text, "boxwatch_gpu_temperature_celsius", **GPU0) == 71.0
    assert value(text, "boxwatch_gpu_throttle_active", **GPU0, reason="sw_power_cap") == 1.0
    assert value(text, "boxwatch_gpu_throttle_active", **GPU1, reason="gpu_idle") == 1.0
    assert value(text, "boxwatch_gpu_errors_total", **GPU0) == 0.0


def _real_nvml_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_real_nvml_present(), reason="a real libnvidia-ml.so.1 is installed: cannot test its absence")
def test_no_library_reports_nvml_down_and_recovers_when_it_appears(start_exporter, tmp_path, fake_lib):
    lib_dir = tmp_path / "driver"
    lib_dir.mkdir()
    exporter = start_exporter("--gpu.init-retry-max-interval=0.2", "--gpu.poll-interval=0.2", lib=lib_dir)
    for _ in range(3):
        text = exporter.scrape()
        assert value(text, "boxwatch_nvml_up") == 0.0
        assert series(text, "boxwatch_gpu_up") == []
        assert value(text, "boxwatch_exporter_scrape_collector_success", collector="gpu") == 1.0
        time.sleep(0.5)  # several retries happen meanwhile
    assert exporter.process.proc.poll() is None
    log = exporter.log()
    assert log.count("NVML unavailable") == 1, log  # one clear line, not one per retry
    assert "NVML Shared Library Not Found" in log

    shutil.copy(fake_lib / fake_nvml.LIBRARY_NAME, lib_dir)  # the driver gets installed
    text = wait_until(exporter, lambda t: value(t, "boxwatch_nvml_up") == 1.0)
    text = wait_until(exporter, lambda t: value(t, "boxwatch_gpu_up", **GPU0) == 1.0)
    assert "NVML initialised" in exporter.log()


def test_init_failure_is_reported_not_fatal(start_exporter):
    exporter = start_exporter("--gpu.init-retry-max-interval=0.2", init_error=9)  # DRIVER_NOT_LOADED
    time.sleep(1.0)
    text = exporter.scrape()
    assert value(text, "boxwatch_nvml_up") == 0.0
    assert exporter.process.proc.poll() is None
    assert exporter.log().count("NVML unavailable") == 1
    assert "Driver Not Loaded" in exporter.log()


def test_slow_nvml_never_blocks_a_scrape(start_exporter):
    """Each NVML call takes 0.15 s (a poll of two GPUs takes seconds); scrapes still answer at once."""
    exporter = start_exporter("--gpu.poll-interval=0.1", "--gpu.max-snapshot-age=0.5", delay_us=150_000)
    latencies = []
    for _ in range(10):
        start = time.perf_counter()
        text = exporter.scrape()
        latencies.append(time.perf_counter() - start)
        time.sleep(0.1)
    assert max(latencies) < 0.5, latencies
    assert value(text, "boxwatch_nvml_up") == 1.0
    # A poll takes longer than --gpu.max-snapshot-age: readings are withheld, GPUs marked down.
    stale = wait_until(exporter, lambda t: value(t, "boxwatch_gpu_snapshot_age_seconds") > 0.5
                       and value(t, "boxwatch_gpu_up", **GPU0) == 0.0)
    assert value(stale, "boxwatch_gpu_temperature_celsius", **GPU0) is None


def test_promtool_check_metrics_is_clean(start_exporter, workload):
    promtool = require_binary("promtool", "/usr/bin/promtool")
    text = start_exporter(procs=workload).scrape()
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout + result.stderr


def test_help_documents_every_flag():
    result = subprocess.run(python_module("exporters", "gpu", "--help"), capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr
    options = result.stdout.split("options:", 1)[1]
    listed = {option.split(" ")[0]
              for line in options.splitlines() if line.startswith("  -")
              for option in line.strip().split("  ")[0].split(", ")}
    assert listed == {"-h", "--help", *GPU_FLAGS}
    for flag in GPU_FLAGS:  # every flag comes with a description and its default
        entry = options.split(flag, 1)[1].split("\n  -", 1)[0]
        assert "default" in entry, flag


def test_bad_flag_value_is_a_clear_error():
    result = subprocess.run(python_module("exporters", "gpu", "--gpu.poll-interval=-1"), capture_output=True,
                            text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert result.returncode == 2
    assert "--gpu.poll-interval" in result.stderr and "positive" in result.stderr


@pytest.mark.slow
def test_prometheus_scrapes_the_exporter_under_the_boxwatch_gpu_job(start_exporter, start_prometheus, workload):
    """The repository's scrape job, pointed at the exporter: a real Prometheus ingests every series."""
    repo_config = yaml.safe_load((Path(__file__).parents[2] / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in repo_config["scrape_configs"] if j["job_name"] == "boxwatch-gpu")
    exporter = start_exporter("--gpu.poll-interval=0.5", procs=workload)
    job = {**job, "scrape_interval": "1s", "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}
    prom = start_prometheus(config={"global": {"scrape_interval": "1s"}, "scrape_configs": [job]})

    up = prom.wait_for('boxwatch_gpu_up{job="boxwatch-gpu"} == 1', lambda r: len(r) == 2, timeout=30)
    assert {r["metric"]["uuid"] for r in up} == {GPU0["uuid"], GPU1["uuid"]}
    result = prom.query('sum by (gpu) (boxwatch_gpu_process_memory_used_bytes{job="boxwatch-gpu"})')
    assert {r["metric"]["gpu"]: float(r["value"][1]) for r in result} == {"0": 6 * 2**30, "1": 2**29 + (64 << 20)}
    throttled = prom.query('boxwatch_gpu_throttle_active{reason="sw_thermal_slowdown"} == 1')
    assert [r["metric"]["gpu"] for r in throttled] == ["0"]
    scrape = prom.query('up{job="boxwatch-gpu"}')
    assert float(scrape[0]["value"][1]) == 1.0
