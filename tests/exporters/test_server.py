"""The shared exporter server: failure isolation, self metrics, HTTP endpoints, flags."""

from __future__ import annotations

import argparse
import gzip
import threading
import time

import pytest
import requests
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from boxwatch.web import parse_listen_address
from exporters.exposition import ClockGauge, Prepared
from exporters.server import (
    InstrumentedCollector,
    Source,
    add_collector_flag,
    build_registry,
    make_app,
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


def test_server_families_are_present_before_the_server_is_attached():
    """The HTTP server accepts scrapes a moment before the exporter learns of it: those scrapes
    must still carry the server's families (at 0), or the exposition's shape depends on timing."""
    registry = build_registry("test", Source({}))
    assert registry.instrumented.server is None
    assert registry.get_sample_value("boxwatch_exporter_http_connections_refused_total") == 0
    assert registry.get_sample_value("boxwatch_exporter_http_connections_timed_out_total") == 0


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


class Polled:
    """A source polled in the background: it renders its families once per snapshot."""

    def __init__(self):
        self.prepared = Prepared()
        self.renders = 0
        self.snapshot = 0

    def publish(self, value: float) -> None:
        self.snapshot = value
        self.prepared.publish(self._families(value), value,
                              [ClockGauge("boxwatch_test_age_seconds", "Age.", ["k"], [(["a"], time.time() - 5)])])

    def _families(self, value: float):
        self.renders += 1
        g = GaugeMetricFamily("boxwatch_test_polled", "A polled value.", labels=["k"])
        for i in range(50):
            g.add_metric([f"k{i:02d}"], value + i)
        yield g

    def parts(self):
        yield self.prepared.current
        yield from self.prepared.current.extra
        yield GaugeMetricFamily("boxwatch_test_live", "Computed per scrape.", value=self.snapshot)


def _scrape(app, accept: str = "", encoding: str = "") -> tuple[dict, bytes]:
    got = {}

    def start_response(status, headers):
        got.update(headers, status=status)

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "HTTP_ACCEPT": accept,
               "HTTP_ACCEPT_ENCODING": encoding}
    return got, b"".join(app(environ, start_response))


def test_scrapes_serve_the_prepared_rendering_in_every_format():
    source = Polled()
    source.publish(1.0)
    app = make_app("test", build_registry("test", Source({"polled": source})))
    _, text = _scrape(app)
    headers, gz = _scrape(app, encoding="gzip")
    om_headers, om = _scrape(app, accept="application/openmetrics-text;version=1.0.0")
    assert headers["Content-Encoding"] == "gzip"
    assert om_headers["Content-Type"].startswith("application/openmetrics-text") and om.endswith(b"# EOF\n")
    plain_samples = _samples(text)
    unzipped = _samples(gzip.decompress(gz))
    assert {n: set(v) for n, v in unzipped.items()} == {n: set(v) for n, v in plain_samples.items()}
    assert unzipped["boxwatch_test_polled"] == plain_samples["boxwatch_test_polled"], "one gzip member, same content"
    assert plain_samples["boxwatch_test_polled"][("k", "k49")] == 50.0
    assert 4.5 < plain_samples["boxwatch_test_age_seconds"][("k", "a")] < 60
    assert plain_samples["boxwatch_test_live"][()] == 1.0
    om_families = {f.name for f in text_string_to_metric_families(om.decode().replace("# EOF\n", ""))}
    assert {"boxwatch_test_polled", "boxwatch_test_age_seconds", "boxwatch_exporter_build"} <= om_families
    renders = source.renders
    for _ in range(20):
        _scrape(app, encoding="gzip")
        _scrape(app)
    assert source.renders == renders, "scrapes never rebuild the prepared families"
    source.publish(2.0)
    assert _samples(_scrape(app)[1])["boxwatch_test_polled"][("k", "k00")] == 2.0
    assert _samples(_scrape(app)[1])["boxwatch_exporter_render_duration_seconds"][("collector", "polled")] > 0


def _samples(body: bytes) -> dict:
    out: dict = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))[0] if s.labels else ()] = s.value
    return out


@pytest.mark.timeout(30)
def test_a_gzipped_openmetrics_scrape_does_not_stop_the_next_rendering():
    """Prometheus asks for OpenMetrics with gzip: the poller renders that variant of every later
    snapshot ahead of the scrapes, the plain body it compresses included, and goes on polling."""
    source = Polled()
    source.publish(1.0)
    app = make_app("test", build_registry("test", Source({"polled": source})))
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    _scrape(app, accept=accept, encoding="gzip")
    publisher = threading.Thread(target=source.publish, args=(2.0,), daemon=True)
    publisher.start()
    publisher.join(10)
    assert not publisher.is_alive(), "publishing the next snapshot hung"
    headers, body = _scrape(app, accept=accept, encoding="gzip")
    assert headers["Content-Encoding"] == "gzip"
    families = {f.name: f for f in text_string_to_metric_families(gzip.decompress(body).decode().replace("# EOF\n", ""))}
    assert {s.labels["k"]: s.value for s in families["boxwatch_test_polled"].samples}["k00"] == 2.0
