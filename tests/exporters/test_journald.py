"""The journald exporter end to end: real journal files written by systemd-journal-remote, the
exporter as a subprocess reading them through systemd-python, its /metrics scraped over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.exporters.journal_files import kernel_entry, unit_entry, write_journal
from tests.harness import REPO, Process, free_port, require_binary, wait_http

pytest.importorskip("systemd.journal")


class Exporter:
    """``python -m exporters journald`` on a free port, reading ``journal_dir``."""

    def __init__(self, tmp_path: Path, journal_dir: Path | None, state_dir: Path, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        source = [f"--journal.directory={journal_dir}"] if journal_dir is not None else []
        argv = [sys.executable, "-m", "exporters", "journald", *source, f"--state.directory={state_dir}",
                f"--web.listen-address=127.0.0.1:{self.port}", *flags]
        self.process = Process(argv, tmp_path / f"exporter-{self.port}.log", cwd=REPO)
        try:
            wait_http(self.url, 30, self.process.proc)
            # entries written from now on are after the reader's start position
            self.wait_for(lambda m: m.get(("boxwatch_journal_reader_up", ())) == 1)
        except Exception:
            self.stop()
            raise

    def text(self) -> str:
        return requests.get(self.url, timeout=10).text

    def metrics(self) -> dict[tuple[str, tuple], float]:
        samples = {}
        for family in text_string_to_metric_families(self.text()):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def wait_for(self, predicate, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            metrics = self.metrics()
            if predicate(metrics):
                return metrics
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met; exporter log:\n{self.process.output()[-3000:]}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if sig != signal.SIGTERM and self.process.proc.poll() is None:
            self.process.proc.send_signal(sig)
            self.process.proc.wait(10)
        return self.process.stop()


@pytest.fixture
def journal(tmp_path):
    directory = tmp_path / "journal"
    directory.mkdir()
    return directory


@pytest.fixture
def start(tmp_path, journal):
    started: list[Exporter] = []

    def run(*flags: str, state: Path | None = None, directory: bool = True) -> Exporter:
        exporter = Exporter(tmp_path, journal if directory else None, state or tmp_path / "state", *flags)
        started.append(exporter)
        return exporter

    yield run
    for exporter in started:
        exporter.stop()


def value(metrics: dict, name: str, **labels) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


def entries(metrics: dict, unit: str, priority: str) -> float | None:
    return value(metrics, "boxwatch_journal_entries_total", unit=unit, priority=priority)


def total_entries(metrics: dict) -> float:
    return sum(v for (name, _), v in metrics.items() if name == "boxwatch_journal_entries_total")


def series(metrics: dict, name: str) -> dict[tuple, float]:
    return {labels: v for (n, labels), v in metrics.items() if n == name}


# --------------------------------------------------------------------------- counting


@pytest.mark.slow
def test_counts_entries_per_unit_and_priority_written_after_start(start, journal):
    write_journal(journal / "system.journal", [unit_entry("old.service", "before the exporter started")] * 3)
    exporter = start()
    write_journal(journal / "system.journal", [
        unit_entry("nginx.service", "GET / 200", priority=6),
        unit_entry("nginx.service", "GET / 200", priority=6),
        unit_entry("nginx.service", "upstream timed out", priority=3),
        unit_entry("backup.service", "disk almost full", priority=4),
        kernel_entry("usb 1-1: new high-speed USB device number 3", priority=6),
        {"SYSLOG_IDENTIFIER": "cron", "PRIORITY": 5, "MESSAGE": "job started"},  # no unit
        {"_COMM": "myscript", "PRIORITY": 7, "MESSAGE": "debugging"},  # neither unit nor identifier
        {"_SYSTEMD_UNIT": "session-42.scope", "SYSLOG_IDENTIFIER": "sudo", "PRIORITY": 5, "MESSAGE": "x"},
    ])
    m = exporter.wait_for(lambda m: total_entries(m) >= 8)
    assert total_entries(m) == 8, "entries written before the first start are not counted"
    assert entries(m, "nginx.service", "info") == 2
    assert entries(m, "nginx.service", "err") == 1
    assert entries(m, "backup.service", "warning") == 1
    assert entries(m, "kernel", "info") == 1
    assert entries(m, "cron", "notice") == 1
    assert entries(m, "myscript", "debug") == 1
    assert entries(m, "sudo", "notice") == 1, "scope units (one per session) count under the program"
    assert value(m, "boxwatch_journal_last_entry_timestamp_seconds") == pytest.approx(time.time(), abs=60)
    assert 0 <= value(m, "boxwatch_journal_lag_seconds") < 60
    assert value(m, "boxwatch_exporter_scrape_collector_success", collector="journal") == 1


@pytest.mark.slow
def test_from_start_backfills_a_journal_on_first_start(start, journal):
    write_journal(journal / "system.journal", [unit_entry("old.service", f"old entry {i}") for i in range(4)])
    exporter = start("--journal.from-start")
    m = exporter.wait_for(lambda m: total_entries(m) >= 4)
    assert entries(m, "old.service", "info") == 4


# --------------------------------------------------------------------------- templates


@pytest.mark.slow
def test_templates_ids_stay_stable_across_a_restart(start, journal, tmp_path):
    write_journal(journal / "system.journal", [unit_entry("init.service", "boot")])
    exporter = start()
    write_journal(journal / "system.journal", [
        *[unit_entry("sshd.service", f"Accepted publickey for user{i} from 10.0.0.{i} port {4000 + i} ssh2")
          for i in range(5)],
        *[unit_entry("sshd.service", f"Connection closed by 192.168.1.{i} port {5000 + i}") for i in range(3)],
    ])
    m = exporter.wait_for(lambda m: total_entries(m) >= 8)
    info = series(m, "boxwatch_journal_template_info")
    templates = {dict(labels)["template"]: dict(labels)["template_id"] for labels in info}
    assert len(templates) == 2, templates
    accepted = next(t for t in templates if t.startswith("Accepted publickey"))
    closed = next(t for t in templates if t.startswith("Connection closed"))
    assert "<IP>" in accepted and "<NUM>" in accepted
    assert value(m, "boxwatch_journal_template_entries_total", unit="sshd.service",
                 template_id=templates[accepted]) == 5
    assert value(m, "boxwatch_journal_new_templates_total", unit="sshd.service") == 2
    exporter.stop()

    exporter = start()
    write_journal(journal / "system.journal", [
        unit_entry("sshd.service", "Accepted publickey for zoe from 10.1.1.1 port 6001 ssh2"),
        unit_entry("sshd.service", "Connection closed by 192.168.7.7 port 6002"),
        unit_entry("sshd.service", "Server listening on 0.0.0.0 port 22."),
    ])
    m = exporter.wait_for(lambda m: total_entries(m) >= 11)
    info_after = {dict(labels)["template"]: dict(labels)["template_id"]
                  for labels in series(m, "boxwatch_journal_template_info")}
    assert info_after[accepted] == templates[accepted]
    assert info_after[closed] == templates[closed]
    assert value(m, "boxwatch_journal_template_entries_total", unit="sshd.service",
                 template_id=templates[accepted]) == 6
    assert value(m, "boxwatch_journal_new_templates_total", unit="sshd.service") == 3, \
        "only the listening message is a never-seen template after the restart"


@pytest.mark.slow
def test_template_series_are_capped_per_unit(start, journal):
    write_journal(journal / "system.journal", [unit_entry("init.service", "boot")])
    exporter = start("--templates.max-per-unit=2")
    messages = ["alpha phase complete", "beta stage reached quickly", "gamma ray detected on sensor 4 today",
                "delta", "alpha phase complete"]
    write_journal(journal / "system.journal", [unit_entry("noisy.service", msg) for msg in messages])
    m = exporter.wait_for(lambda m: total_entries(m) >= 5)
    per_template = {dict(k)["template_id"]: v
                    for k, v in series(m, "boxwatch_journal_template_entries_total").items()
                    if dict(k)["unit"] == "noisy.service"}
    assert per_template["other"] == 2
    assert sorted(v for k, v in per_template.items() if k != "other") == [1, 2]
    assert len(series(m, "boxwatch_journal_template_info")) == 2
    assert value(m, "boxwatch_journal_new_templates_total", unit="noisy.service") == 4


@pytest.mark.slow
def test_units_are_capped(start, journal):
    write_journal(journal / "system.journal", [unit_entry("init.service", "boot")])
    exporter = start("--journal.max-units=2")
    write_journal(journal / "system.journal", [unit_entry(f"u{i}.service", "hello") for i in range(5)])
    m = exporter.wait_for(lambda m: total_entries(m) >= 5)
    assert entries(m, "u0.service", "info") == 1
    assert entries(m, "u1.service", "info") == 1
    assert entries(m, "other", "info") == 3
    assert value(m, "boxwatch_journal_template_entries_total", unit="other", template_id="other") == 3


@pytest.mark.slow
def test_template_mining_can_be_switched_off(start, journal):
    write_journal(journal / "system.journal", [unit_entry("init.service", "boot")])
    exporter = start("--no-collector.templates")
    write_journal(journal / "system.journal", [unit_entry("app.service", "hello 1"),
                                               kernel_entry("NVRM: Xid (PCI:0000:01:00): 79, pid=1, x")])
    m = exporter.wait_for(lambda m: total_entries(m) >= 2)
    assert series(m, "boxwatch_journal_template_entries_total") == {}
    assert series(m, "boxwatch_journal_new_templates_total") == {}
    assert value(m, "boxwatch_gpu_xid_errors_total", pci_bus_id="00000000:01:00.0", xid="79") == 1


# --------------------------------------------------------------------------- Xid


@pytest.mark.slow
def test_gpu_xid_events_are_parsed_from_kernel_lines(start, journal):
    write_journal(journal / "system.journal", [unit_entry("init.service", "boot")])
    exporter = start()
    write_journal(journal / "system.journal", [
        kernel_entry("NVRM: Xid (PCI:0000:01:00): 79, pid=1234, name=python3, GPU has fallen off the bus."),
        kernel_entry("NVRM: Xid (PCI:0000:01:00): 79, pid=1234, name=python3, GPU has fallen off the bus."),
        kernel_entry("NVRM: Xid (PCI:0000:3B:00): 13, pid=77, name=train, Graphics SM Warp Exception"),
        kernel_entry("NVRM: Xid (0000:af:00): 48, An uncorrectable double bit error (DBE) has been detected"),
        kernel_entry("NVRM: GPU at PCI:0000:01:00: GPU-abc"),  # not an Xid line
        unit_entry("fake.service", "NVRM: Xid (PCI:0000:01:00): 79, printed by a program"),  # not the kernel
    ])
    m = exporter.wait_for(lambda m: total_entries(m) >= 6)
    assert series(m, "boxwatch_gpu_xid_errors_total") == {
        (("pci_bus_id", "00000000:01:00.0"), ("xid", "79")): 2,
        (("pci_bus_id", "00000000:3b:00.0"), ("xid", "13")): 1,
        (("pci_bus_id", "00000000:af:00.0"), ("xid", "48")): 1,
    }
    assert entries(m, "kernel", "err") == 5


# --------------------------------------------------------------------------- bad input


@pytest.mark.slow
def test_bad_entries_are_counted_and_reading_goes_on(start, journal):
    write_journal(journal / "system.journal", [unit_entry("init.service", "boot")])
    exporter = start("--templates.max-line-length=1000")
    write_journal(journal / "system.journal", [
        unit_entry("bin.service", b"\xff\xfe\x00\x01 binary payload"),
        {"_SYSTEMD_UNIT": "nomsg.service", "PRIORITY": 6},
        unit_entry("noprio.service", "no priority here", priority=None),
        unit_entry("badprio.service", "odd priority", priority="urgent"),
        unit_entry("huge.service", "x" * 200_000),
        unit_entry("ok.service", "still reading"),
    ])
    m = exporter.wait_for(lambda m: total_entries(m) >= 6)
    invalid = {dict(k)["reason"]: v for k, v in series(m, "boxwatch_journal_invalid_entries_total").items()}
    assert invalid == {"binary_message": 1, "missing_message": 1, "missing_priority": 1,
                       "bad_priority": 1, "too_long": 1}
    assert entries(m, "bin.service", "info") == 1
    assert entries(m, "noprio.service", "info") == 1, "an entry without PRIORITY counts as info"
    assert entries(m, "ok.service", "info") == 1
    huge = [dict(k)["template"] for k in series(m, "boxwatch_journal_template_info")
            if dict(k)["unit"] == "huge.service"]
    assert huge and len(huge[0]) <= 1000
    assert value(m, "boxwatch_journal_read_errors_total") == 0


# --------------------------------------------------------------------------- cursor and rotation


@pytest.mark.slow
def test_restart_neither_skips_nor_double_counts(start, journal, tmp_path):
    write_journal(journal / "system.journal", [unit_entry("init.service", "boot")])
    exporter = start()
    write_journal(journal / "system.journal", [unit_entry("app.service", f"request {i} done") for i in range(5)])
    exporter.wait_for(lambda m: entries(m, "app.service", "info") == 5)
    assert exporter.stop() == 0

    # written while the exporter is down: counted after the restart, once
    write_journal(journal / "system.journal", [unit_entry("app.service", f"request {i} done") for i in range(3)])
    exporter = start()
    write_journal(journal / "system.journal", [unit_entry("app.service", f"request {i} done") for i in range(2)])
    m = exporter.wait_for(lambda m: entries(m, "app.service", "info") >= 10)
    time.sleep(1.5)  # a reader that double counts would have done so by now
    m = exporter.metrics()
    assert entries(m, "app.service", "info") == 10
    assert total_entries(m) == 10


@pytest.mark.slow
def test_crash_falls_back_to_the_last_save_consistently(start, journal, tmp_path):
    write_journal(journal / "system.journal", [unit_entry("init.service", "boot")])
    exporter = start("--state.save-interval=0")
    write_journal(journal / "system.journal", [unit_entry("app.service", f"job {i} ok") for i in range(4)])
    exporter.wait_for(lambda m: entries(m, "app.service", "info") == 4
                      and value(m, "boxwatch_journal_state_last_save_timestamp_seconds") is not None)
    time.sleep(0.5)
    exporter.stop(signal.SIGKILL)  # no clean shutdown, no final save

    write_journal(journal / "system.journal", [unit_entry("app.service", f"job {i} ok") for i in range(3)])
    exporter = start("--state.save-interval=0")
    exporter.wait_for(lambda m: entries(m, "app.service", "info") >= 7)
    time.sleep(1.0)
    assert entries(exporter.metrics(), "app.service", "info") == 7


@pytest.mark.slow
def test_crash_during_a_burst_never_publishes_a_lower_counter(start, journal):
    """A SIGKILL between two saves: the restarted exporter must never serve less than was served
    before, or Prometheus reads a counter reset and increase() counts the re-read entries twice."""
    write_journal(journal / "system.journal", [unit_entry("init.service", "boot")])
    exporter = start("--state.save-interval=60")  # no periodic save while the test runs
    burst = 3000
    write_journal(journal / "system.journal", [unit_entry("app.service", f"request {i} served in {i % 97} ms")
                                               for i in range(burst)])
    served = []
    deadline = time.monotonic() + 3.0  # long enough to read the whole burst
    while time.monotonic() < deadline:
        served.append(entries(exporter.metrics(), "app.service", "info") or 0)
        time.sleep(0.05)
    exporter.stop(signal.SIGKILL)  # before any save of the burst

    exporter = start("--state.save-interval=0.2")
    after = []
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline and (not after or after[-1] < burst):
        after.append(entries(exporter.metrics(), "app.service", "info") or 0)
        time.sleep(0.02)
    assert after and after[-1] == burst, f"the restarted exporter re-reads the burst exactly once: {after[-5:]}"
    assert after[0] >= max(served), (f"served {max(served)} before the crash, {after[0]} after the restart: "
                                      "Prometheus would see a counter reset")
    assert after == sorted(after), "the counter never decreases"
    time.sleep(0.5)
    assert entries(exporter.metrics(), "app.service", "info") == burst


@pytest.mark.slow
def test_rotation_new_files_and_vacuumed_files(start, journal):
    first = journal / "system.journal"
    write_journal(first, [unit_entry("init.service", "boot")])
    exporter = start()
    write_journal(first, [unit_entry("app.service", "in the first file")] * 2)
    exporter.wait_for(lambda m: entries(m, "app.service", "info") == 2)

    # journald rotates: a new file appears, the old one is archived and later vacuumed
    second = journal / "system@rotated.journal"
    write_journal(second, [unit_entry("app.service", "in the second file")] * 3)
    exporter.wait_for(lambda m: entries(m, "app.service", "info") == 5)
    first.unlink()
    time.sleep(1.5)
    write_journal(second, [unit_entry("app.service", "after the vacuum")] * 2)
    # the layout of /var/log/journal: one folder per machine id, possibly created later
    machine = journal / "fedcba9876543210fedcba9876543210"
    machine.mkdir()
    write_journal(machine / "system.journal", [unit_entry("app.service", "in a third file")] * 4)
    m = exporter.wait_for(lambda m: entries(m, "app.service", "info") >= 11)
    time.sleep(1.0)
    m = exporter.metrics()
    assert entries(m, "app.service", "info") == 11
    assert value(m, "boxwatch_journal_reader_up") == 1
    assert value(m, "boxwatch_journal_read_errors_total") == 0


@pytest.mark.slow
def test_journal_files_reads_exactly_the_given_files(start, journal):
    chosen, ignored = journal / "chosen.journal", journal / "ignored.journal"
    write_journal(chosen, [unit_entry("init.service", "boot")])
    write_journal(ignored, [unit_entry("init.service", "boot")])
    exporter = start(f"--journal.files={chosen}", directory=False)
    write_journal(chosen, [unit_entry("app.service", "counted")] * 2)
    write_journal(ignored, [unit_entry("other.service", "not counted")] * 2)
    exporter.wait_for(lambda m: entries(m, "app.service", "info") == 2)
    time.sleep(1.0)
    assert entries(exporter.metrics(), "other.service", "info") is None


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--journal.max-units=0", "--templates.max-per-unit=-1"])
def test_invalid_flag_values_stop_the_exporter_with_a_clear_error(tmp_path, flag):
    result = subprocess.run([sys.executable, "-m", "exporters", "journald", f"--state.directory={tmp_path}",
                             f"--web.listen-address=127.0.0.1:{free_port()}", flag],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert flag.split("=")[0] in result.stderr


@pytest.mark.slow
def test_missing_journal_directory_is_reported_not_fatal(tmp_path):
    port = free_port()
    argv = [sys.executable, "-m", "exporters", "journald", f"--journal.directory={tmp_path / 'absent'}",
            f"--state.directory={tmp_path / 'state'}", f"--web.listen-address=127.0.0.1:{port}"]
    process = Process(argv, tmp_path / "exporter.log", cwd=REPO)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", 30, process.proc)
        time.sleep(1.0)
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "boxwatch_journal_reader_up 0.0" in text
        assert "boxwatch_journal_read_errors_total 0.0" not in text
    finally:
        process.stop()
    assert "not a directory" in process.output()


@pytest.mark.slow
@pytest.mark.parametrize("content", ["{not json", '{"version": 1, "entries": [["only-two", 3]]}',
                                     '{"version": 7}'])
def test_unusable_state_file_is_moved_aside(start, journal, tmp_path, content):
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(content)
    write_journal(journal / "system.journal", [unit_entry("init.service", "boot")])
    exporter = start(state=state)
    assert list(state.glob("state.json.invalid-*"))
    assert "unusable state file" in exporter.process.output()


# --------------------------------------------------------------------------- exposition


@pytest.mark.slow
def test_exposition_passes_promtool(start, journal, tmp_path):
    promtool = require_binary("promtool", "/usr/bin/promtool")
    write_journal(journal / "system.journal", [unit_entry("init.service", "boot")])
    exporter = start()
    write_journal(journal / "system.journal", [
        unit_entry("app.service", "started in 3.2 s"),
        kernel_entry("NVRM: Xid (PCI:0000:01:00): 79, pid=1, name=x, GPU has fallen off the bus."),
        unit_entry("bin.service", b"\x00\xff"),
    ])
    exporter.wait_for(lambda m: total_entries(m) >= 3)
    result = subprocess.run([promtool, "check", "metrics"], input=exporter.text(), capture_output=True,
                            text=True, timeout=30, env={**os.environ})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


@pytest.mark.parametrize(("kernel", "nvml"), [
    ("0000:01:00", "00000000:01:00.0"),
    ("0000:3B:00", "00000000:3b:00.0"),
    ("01:00", "00000000:01:00.0"),
    ("0000:af:00.1", "00000000:af:00.1"),
])
def test_xid_pci_id_takes_nvml_form_to_join_gpu_info(kernel, nvml):
    from exporters.xid import parse_xid

    assert parse_xid(f"NVRM: Xid (PCI:{kernel}): 79, pid=1, GPU has fallen off the bus.").pci_bus_id == nvml
