"""The shared exporter server: failure isolation, self metrics, HTTP endpoints, flags."""

from __future__ import annotations

import argparse
import threading

import pytest
import requests
from prometheus_client.core import GaugeMetricFamily

from exporters.server import (
    InstrumentedCollector,
    Source,
    add_collector_flag,
    build_registry,
    make_app,
    parse_listen_address,
    serve_forever,
)
from tests.harness import free_port


class Working:
    def collect(self):
        g = GaugeMetricFamily("boxwatch_test_value", "A test value.", labels=["k"])
        g.add_metric(["a"], 1.5)
        yield g


class Broken:
    def collect(self):
        yield GaugeMetricFamily("boxwatch_test_partial", "Never seen: the collector raises.", value=1)
        raise RuntimeError("source fell over")


def test_one_broken_collector_does_not_fail_the_scrape():
    registry = build_registry("test", Source({"good": Working(), "bad": Broken()}))
    assert registry.get_sample_value("boxwatch_test_value", {"k": "a"}) == 1.5
    assert registry.get_sample_value("boxwatch_test_partial") is None
    assert registry.get_sample_value("boxwatch_exporter_scrape_collector_success", {"collector": "good"}) == 1
    assert registry.get_sample_value("boxwatch_exporter_scrape_collector_success", {"collector": "bad"}) == 0
    assert registry.get_sample_value("boxwatch_exporter_scrape_collector_duration_seconds",
                                     {"collector": "good"}) >= 0
    # every scrape that fails counts
    registry.get_sample_value("boxwatch_test_value")
    assert registry.get_sample_value("boxwatch_exporter_collector_errors_total", {"collector": "bad"}) >= 2
    assert registry.get_sample_value("boxwatch_exporter_collector_errors_total", {"collector": "good"}) == 0


def test_build_info_and_process_metrics_are_exported():
    registry = build_registry("test", Source({}))
    info = [s for m in registry.collect() for s in m.samples if s.name == "boxwatch_exporter_build_info"]
    assert len(info) == 1 and info[0].labels["exporter"] == "test" and info[0].value == 1
    assert registry.get_sample_value("process_resident_memory_bytes") > 0


def test_http_endpoints():
    port = free_port()
    stop = threading.Event()
    app = make_app("test", build_registry("test", Source({"good": Working()})), "/custom-metrics")
    thread = threading.Thread(target=serve_forever, args=(app, f"127.0.0.1:{port}", stop), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                requests.get(base + "/healthz", timeout=1)
                break
            except requests.ConnectionError:
                threading.Event().wait(0.05)
        assert requests.get(base + "/healthz", timeout=5).text == "ok\n"
        assert "/custom-metrics" in requests.get(base + "/", timeout=5).text
        body = requests.get(base + "/custom-metrics", timeout=5).text
        assert 'boxwatch_test_value{k="a"} 1.5' in body
        assert requests.get(base + "/metrics", timeout=5).status_code == 404
    finally:
        stop.set()
        thread.join(5)


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:9872", ("127.0.0.1", 9872)), (":9872", ("0.0.0.0", 9872)), ("[::1]:80", ("::1", 80))],
)
def test_parse_listen_address(address, expected):
    assert parse_listen_address(address) == expected


@pytest.mark.parametrize("address", ["9872", "host:", "host:port", "h:70000"])
def test_parse_listen_address_rejects_bad_input(address):
    with pytest.raises(ValueError, match="invalid listen address"):
        parse_listen_address(address)


def test_collector_flags_follow_node_exporter():
    parser = argparse.ArgumentParser()
    add_collector_flag(parser, "processes", "export per-process memory")
    assert parser.parse_args([]).collector_processes is True
    assert parser.parse_args(["--no-collector.processes"]).collector_processes is False
    assert "--collector.processes" in parser.format_help()


def test_instrumented_collector_describes_nothing():
    """A registry must not scrape a slow source at register time (auto-describe)."""
    assert InstrumentedCollector("x", {"bad": Broken()}).describe() == []
