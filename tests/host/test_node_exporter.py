"""node_exporter as boxwatch runs it: the real binary with the stack's collectors, on loopback,
scraped by a real Prometheus that evaluates prometheus/rules/host.yml against this machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from boxwatch.jobs import JOBS
from stack.runtime import NODE_EXPORTER_COLLECTORS, node_exporter_flags
from tests.harness import REPO, Process, free_port, require_binary, wait_http


@pytest.fixture
def node_exporter(tmp_path):
    binary = require_binary("prometheus-node-exporter", "/usr/bin/prometheus-node-exporter")
    port = free_port()
    proc = Process([binary, f"--web.listen-address=127.0.0.1:{port}", *node_exporter_flags()],
                   tmp_path / "node-exporter.log")
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_http(url, 30, proc.proc)
        yield port, url
    finally:
        proc.stop()


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.slow
def test_only_the_chosen_collectors_run_and_the_host_signals_are_there(node_exporter):
    _, url = node_exporter
    samples = _samples(requests.get(url, timeout=10).text)
    collectors = {dict(labels)["collector"]: value for (name, labels), value in samples.items()
                  if name == "node_scrape_collector_success"}
    assert set(collectors) == set(NODE_EXPORTER_COLLECTORS)  # the noisy defaults (arp, nfs, ...) are off
    for collector in ("cpu", "meminfo", "stat", "filesystem", "loadavg"):
        assert collectors[collector] == 1.0, collector
    names = {name for name, _ in samples}
    assert {"node_boot_time_seconds", "node_memory_MemAvailable_bytes", "node_filesystem_avail_bytes",
            "node_cpu_seconds_total"} <= names
    if Path("/proc/pressure/memory").exists():  # PSI: Linux 4.20+ with CONFIG_PSI
        assert collectors["pressure"] == 1.0
        assert "node_pressure_memory_waiting_seconds_total" in names


@pytest.mark.slow
def test_host_rules_evaluate_on_this_machines_node_exporter(node_exporter, start_prometheus):
    port, _ = node_exporter
    prom = start_prometheus(
        config={"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": JOBS["node"], "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]},
        rule_files=[REPO / "prometheus" / "rules" / "host.yml"])
    available = prom.wait_for('instance:node_memory_available_bytes:ratio{job="boxwatch-node"}', timeout=60)
    assert 0 < float(available[0]["value"][1]) <= 1
    busy = prom.wait_for("instance:node_cpu_utilisation:rate5m", timeout=60)
    assert 0 <= float(busy[0]["value"][1]) <= 1
    if Path("/proc/pressure/memory").exists():
        waiting = prom.wait_for("instance:node_pressure_memory_waiting_seconds:rate5m", timeout=60)
        assert 0 <= float(waiting[0]["value"][1]) <= 1
    # A machine that has not rebooted: the reboot alert stays quiet.
    assert prom.query('ALERTS{alertname="HostUnexpectedReboot"}') == []
