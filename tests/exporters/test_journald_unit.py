"""The journald collector in-process: ``JournalState`` fed entries as ``systemd.journal.Reader`` hands
them (``PRIORITY`` an int, ``__REALTIME_TIMESTAMP`` a datetime), rendered with ``generate_latest``.

The quick tier's view of the counting, Xid, template and cap checks of tests/exporters/test_journald.py,
which run the exporter as a process over journal files that systemd-journal-remote writes.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporters.journald import JournalCollector, JournalFollower, JournalState, StateStore
from tests.exporters.journal_files import kernel_entry, unit_entry

_cursor = itertools.count(1)


def reader_entry(fields: dict, when: float = 1_767_225_600.0) -> dict:
    """``fields`` as the journal Reader gives them: a cursor and a datetime realtime timestamp."""
    return {**fields, "__CURSOR": f"s=test;i={next(_cursor)}",
            "__REALTIME_TIMESTAMP": datetime.fromtimestamp(when, UTC)}


class Journal:
    """A state restored from ``state_dir`` as the exporter starts, its (not started) follower and its
    collector, on a registry of their own."""

    def __init__(self, state_dir, **settings):
        self.state = JournalState(**settings)
        self.store = StateStore(state_dir)
        saved = self.store.load()
        if saved is not None:
            self.state.restore(saved)
        self.follower = JournalFollower(self.state, self.store)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(JournalCollector(self.state, self.follower))

    def add(self, *entries: dict) -> None:
        for fields in entries:
            self.state.add(reader_entry(fields))

    def metrics(self, save: bool = True) -> dict[tuple[str, tuple], float]:
        if save:
            self.follower.save(force=True)
        text = generate_latest(self.registry).decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


def series(metrics: dict, name: str) -> dict[tuple, float]:
    return {labels: v for (n, labels), v in metrics.items() if n == name}


def entries(metrics: dict, unit: str, priority: str) -> float | None:
    return metrics.get(("boxwatch_journal_entries_total", (("priority", priority), ("unit", unit))))


def test_entries_are_counted_per_unit_and_priority(tmp_path):
    journal = Journal(tmp_path)
    journal.add(
        unit_entry("nginx.service", "GET / 200", priority=6),
        unit_entry("nginx.service", "GET / 200", priority=6),
        unit_entry("nginx.service", "upstream timed out", priority=3),
        unit_entry("backup.service", "disk almost full", priority=4),
        kernel_entry("usb 1-1: new high-speed USB device number 3", priority=6),
        {"SYSLOG_IDENTIFIER": "cron", "PRIORITY": 5, "MESSAGE": "job started"},  # no unit
        {"_COMM": "myscript", "PRIORITY": 7, "MESSAGE": "debugging"},  # neither unit nor identifier
        {"_SYSTEMD_UNIT": "session-42.scope", "SYSLOG_IDENTIFIER": "sudo", "PRIORITY": 5, "MESSAGE": "x"},
    )
    m = journal.metrics()
    assert sum(series(m, "boxwatch_journal_entries_total").values()) == 8
    assert entries(m, "nginx.service", "info") == 2
    assert entries(m, "nginx.service", "err") == 1
    assert entries(m, "backup.service", "warning") == 1
    assert entries(m, "kernel", "info") == 1
    assert entries(m, "cron", "notice") == 1
    assert entries(m, "myscript", "debug") == 1
    assert entries(m, "sudo", "notice") == 1, "scope units (one per session) count under the program"
    assert m[("boxwatch_journal_last_entry_timestamp_seconds", ())] == 1_767_225_600.0
    assert m[("boxwatch_journal_reader_up", ())] == 0.0  # the follower was never started


def test_a_scrape_serves_the_counters_as_of_the_last_save(tmp_path):
    journal = Journal(tmp_path)
    journal.add(unit_entry("app.service", "hello"))
    assert entries(journal.metrics(save=False), "app.service", "info") is None
    assert entries(journal.metrics(), "app.service", "info") == 1
    journal.add(unit_entry("app.service", "hello"))
    assert entries(journal.metrics(save=False), "app.service", "info") == 1
    assert entries(journal.metrics(), "app.service", "info") == 2


def test_xid_events_come_from_kernel_lines_only(tmp_path):
    journal = Journal(tmp_path)
    journal.add(
        kernel_entry("NVRM: Xid (PCI:0000:01:00): 79, pid=1234, name=python3, GPU has fallen off the bus."),
        kernel_entry("NVRM: Xid (PCI:0000:01:00): 79, pid=1234, name=python3, GPU has fallen off the bus."),
        kernel_entry("NVRM: Xid (PCI:0000:3B:00): 13, pid=77, name=train, Graphics SM Warp Exception"),
        kernel_entry("NVRM: Xid (0000:af:00): 48, An uncorrectable double bit error (DBE) has been detected"),
        kernel_entry("NVRM: GPU at PCI:0000:01:00: GPU-abc"),  # not an Xid line
        unit_entry("fake.service", "NVRM: Xid (PCI:0000:01:00): 79, printed by a program"),  # not the kernel
    )
    assert series(journal.metrics(), "boxwatch_gpu_xid_errors_total") == {
        (("pci_bus_id", "00000000:01:00.0"), ("xid", "79")): 2,
        (("pci_bus_id", "00000000:3b:00.0"), ("xid", "13")): 1,
        (("pci_bus_id", "00000000:af:00.0"), ("xid", "48")): 1,
    }


def test_template_series_and_units_are_capped(tmp_path):
    journal = Journal(tmp_path, max_units=2, templates_max_per_unit=2)
    messages = ["alpha phase complete", "beta stage reached quickly", "gamma ray detected on sensor 4 today",
                "delta", "alpha phase complete"]
    journal.add(*(unit_entry("noisy.service", msg) for msg in messages))
    journal.add(*(unit_entry(f"u{i}.service", "hello") for i in range(3)))
    m = journal.metrics()
    per_template = {dict(k)["template_id"]: v for k, v in series(m, "boxwatch_journal_template_entries_total").items()
                    if dict(k)["unit"] == "noisy.service"}
    assert per_template["other"] == 2
    assert sorted(v for k, v in per_template.items() if k != "other") == [1, 2]
    assert len([k for k in series(m, "boxwatch_journal_template_info") if dict(k)["unit"] == "noisy.service"]) == 2
    assert m[("boxwatch_journal_new_templates_total", (("unit", "noisy.service"),))] == 4
    # the second unit takes the last place; the other two count under "other"
    assert entries(m, "u0.service", "info") == 1
    assert entries(m, "other", "info") == 2
    assert m[("boxwatch_journal_template_entries_total", (("template_id", "other"), ("unit", "other")))] == 2


@pytest.mark.parametrize(("fields", "reason"), [
    ({"_SYSTEMD_UNIT": "a.service", "MESSAGE": "no priority"}, "missing_priority"),
    ({"_SYSTEMD_UNIT": "a.service", "PRIORITY": 9, "MESSAGE": "bad priority"}, "bad_priority"),
    ({"_SYSTEMD_UNIT": "a.service", "PRIORITY": 6}, "missing_message"),
    ({"_SYSTEMD_UNIT": "a.service", "PRIORITY": 6, "MESSAGE": b"\xff\x00binary"}, "binary_message"),
    ({"_SYSTEMD_UNIT": "a.service", "PRIORITY": 6, "MESSAGE": "x" * 3000}, "too_long"),
])
def test_a_bad_entry_is_counted_by_reason_and_still_counted(tmp_path, fields, reason):
    journal = Journal(tmp_path)
    journal.add(fields)
    m = journal.metrics()
    invalid = {dict(k)["reason"]: v for k, v in series(m, "boxwatch_journal_invalid_entries_total").items()}
    assert invalid[reason] == 1 and sum(invalid.values()) == 1
    assert sum(series(m, "boxwatch_journal_entries_total").values()) == 1


def test_a_restart_restores_counters_and_templates_from_the_state_file(tmp_path):
    first = Journal(tmp_path)
    first.add(unit_entry("app.service", "listening on port 80"), unit_entry("app.service", "request 17 done"),
              kernel_entry("NVRM: Xid (PCI:0000:01:00): 79, pid=1, GPU has fallen off the bus."))
    before = first.metrics()
    second = Journal(tmp_path)
    after = second.metrics(save=False)
    for name in ("boxwatch_journal_entries_total", "boxwatch_journal_template_entries_total",
                 "boxwatch_journal_template_info", "boxwatch_gpu_xid_errors_total"):
        assert series(after, name) == series(before, name) != {}
    second.add(unit_entry("app.service", "request 18 done"))  # a known template: not new after the restart
    m = second.metrics()
    assert m[("boxwatch_journal_new_templates_total", (("unit", "app.service"),))] == 2
    assert entries(m, "app.service", "info") == 3
