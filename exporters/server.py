"""What every boxwatch exporter shares: flags, self-metrics and serving ``/metrics`` (logging, the
HTTP server and the other process plumbing come from ``boxwatch``).

A source module (``gpu``, ``containers``, ``journald``) provides two functions:

``add_arguments(parser)``
    adds its own ``--collector.*`` / source flags to an ``argparse`` parser;
``create(args) -> Source``
    builds its collectors (and starts any background poller) from the parsed flags.

``run_exporter`` turns that into a process: it wraps every collector so that one failing
collector never fails the scrape, adds node_exporter-style self metrics, serves
``/metrics`` (through ``boxwatch.web``: a bounded worker pool, TLS and basic auth from
``--web.config.file``) and stops cleanly on SIGTERM / SIGINT.

A collector whose source is polled in the background also has ``parts()``: the exposition its
poller already rendered (``exporters.exposition``) plus the few families that must be computed per
scrape. A scrape then serves those bytes instead of rebuilding every family.
"""

from __future__ import annotations

import argparse
import logging
import math
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from boxwatch import __version__
from boxwatch.log import add_log_flags, kv, setup_logging
from boxwatch.web import (
    Limits,
    Server,
    add_web_flags,
    serve,
    server_metrics,
    web_config_from_flags,
)
from exporters.exposition import Part, Rendered, assemble, families_of, respond

log = logging.getLogger("boxwatch")


@dataclass
class Source:
    """Collectors of one exporter, by name, and what to call on shutdown."""

    collectors: dict[str, object]
    close: Callable[[], None] = field(default=lambda: None)


# --------------------------------------------------------------------------- flags


def add_common_flags(parser: argparse.ArgumentParser, default_port: int) -> None:
    add_web_flags(parser, f"127.0.0.1:{default_port}", telemetry_path=True)
    add_log_flags(parser)


def add_collector_flag(parser: argparse.ArgumentParser, name: str, help: str, default: bool = True) -> None:
    """``--collector.NAME`` / ``--no-collector.NAME``, as node_exporter has them."""
    state = "enabled" if default else "disabled"
    parser.add_argument(
        f"--collector.{name}",
        dest=f"collector_{name.replace('.', '_').replace('-', '_')}",
        action=argparse.BooleanOptionalAction,
        default=default,
        help=f"{help} (default: {state})",
    )


def positive_float(text: str) -> float:
    """An ``argparse`` type: a finite number above 0 (an interval, a timeout)."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (a positive number), got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An ``argparse`` type: a whole number of at least 1 (a limit, a concurrency)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An ``argparse`` type: a whole number of at least 0 (0 turns the feature off)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    value = int(text)
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text!r}")
    return value


# --------------------------------------------------------------------------- self metrics


class InstrumentedCollector:
    """Runs named collectors, isolating their failures and timing them.

    Yields, besides each collector's own families, node_exporter-style
    ``boxwatch_exporter_scrape_collector_duration_seconds{collector}`` (what this scrape spent on the
    collector: reading prepared exposition and the per-scrape families) and
    ``boxwatch_exporter_scrape_collector_success{collector}``, counts failures in
    ``boxwatch_exporter_collector_errors_total{collector}`` and, for collectors that render ahead of
    scrapes, reports ``boxwatch_exporter_render_duration_seconds{collector}``: how long their last
    rendering took in the background. A collector that raises contributes no families to that
    scrape; the others are unaffected.
    """

    def __init__(self, exporter: str, collectors: dict[str, object]):
        self._exporter = exporter
        self._collectors = dict(sorted(collectors.items()))
        self._errors = dict.fromkeys(self._collectors, 0)
        self._lock = threading.Lock()
        self.server: Server | None = None
        info = InfoMetricFamily("boxwatch_exporter_build", "boxwatch exporter build information.")
        info.add_metric(
            [],
            {"exporter": exporter, "version": __version__, "python_version": platform.python_version()},
        )
        self._build_info = Rendered([info])

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        return families_of(self.parts())

    def want(self, fmt, gzip: bool) -> None:
        """Ask collectors that render ahead to keep ``fmt`` (gzipped or not) ready too."""
        for collector in self._collectors.values():
            prepared = getattr(collector, "prepared", None)
            if prepared is not None:
                prepared.want(fmt, gzip)

    def parts(self) -> Iterable[Part]:
        duration = GaugeMetricFamily(
            "boxwatch_exporter_scrape_collector_duration_seconds",
            "Time a collector took during this scrape.",
            labels=["collector"],
        )
        success = GaugeMetricFamily(
            "boxwatch_exporter_scrape_collector_success",
            "1 if the collector succeeded during this scrape, 0 if it raised.",
            labels=["collector"],
        )
        render = GaugeMetricFamily(
            "boxwatch_exporter_render_duration_seconds",
            "Time the last rendering of a collector's exposition took, done once per change of its "
            "source in the background rather than in each scrape.",
            labels=["collector"],
        )
        for name, collector in self._collectors.items():
            start = time.perf_counter()
            try:
                parts = list(collector.parts() if hasattr(collector, "parts") else collector.collect())
                ok = True
            except Exception:
                log.exception("collector failed", extra=kv(collector=name))
                parts, ok = [], False
                with self._lock:
                    self._errors[name] += 1
            duration.add_metric([name], time.perf_counter() - start)
            success.add_metric([name], 1.0 if ok else 0.0)
            prepared = getattr(collector, "prepared", None)
            if prepared is not None and prepared.render_seconds is not None:
                render.add_metric([name], prepared.render_seconds)
            yield from parts
        yield duration
        yield success
        if render.samples:
            yield render
        errors = CounterMetricFamily(
            "boxwatch_exporter_collector_errors",
            "Collector runs that raised an exception, since the exporter started.",
            labels=["collector"],
        )
        with self._lock:
            for name, count in self._errors.items():
                errors.add_metric([name], count)
        yield errors
        yield self._build_info
        yield from server_metrics(self.server, "boxwatch_exporter")


# Reading /proc and encoding process_* costs more than serving the rest of a scrape; Prometheus
# scrapes every 15 s or so, so one reading per second loses nothing.
PROCESS_METRICS_TTL = 1.0


class ExporterRegistry(CollectorRegistry):
    """The registry of one exporter process; ``parts()`` is what ``/metrics`` serves."""

    def __init__(self, exporter: str, source: Source):
        super().__init__(auto_describe=False)
        self.instrumented = InstrumentedCollector(exporter, source.collectors)
        self.register(self.instrumented)
        self._process = ProcessCollector(registry=self)
        self._platform = Rendered(PlatformCollector(registry=self).collect())  # fixed for the process' life
        self._process_rendered: tuple[float, Rendered] | None = None

    def parts(self) -> Iterable[Part]:
        yield from self.instrumented.parts()
        yield self._process_part()
        yield self._platform

    def _process_part(self) -> Rendered:
        """process_* families, read from /proc at most once per ``PROCESS_METRICS_TTL``."""
        now = time.monotonic()
        cached = self._process_rendered
        if cached is None or now - cached[0] >= PROCESS_METRICS_TTL:
            cached = self._process_rendered = (now, Rendered(self._process.collect()))
        return cached[1]


def build_registry(exporter: str, source: Source) -> ExporterRegistry:
    """A fresh registry holding the source's collectors plus process and self metrics."""
    return ExporterRegistry(exporter, source)


# --------------------------------------------------------------------------- HTTP


def make_app(exporter: str, registry: CollectorRegistry, telemetry_path: str = "/metrics"):
    """WSGI app: landing page at ``/``, metrics at ``telemetry_path``, ``/healthz``.

    Metrics are negotiated as prometheus_client does (OpenMetrics or text, gzip when accepted,
    ``name[]`` to select families).
    """
    landing = (
        f"<html><head><title>boxwatch {exporter} exporter</title></head><body>"
        f"<h1>boxwatch {exporter} exporter</h1><p>version {__version__}</p>"
        f'<p><a href="{telemetry_path}">Metrics</a></p></body></html>'
    ).encode()

    def metrics(environ, start_response):
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
            return [b"use GET\n"]
        fmt, gzip = respond(environ.get("HTTP_ACCEPT"), environ.get("HTTP_ACCEPT_ENCODING"))
        names = parse_qs(environ.get("QUERY_STRING", "")).get("name[]")
        parts = registry.parts() if hasattr(registry, "parts") else registry.collect()
        if names:
            wanted = set(names)
            parts = [f for f in families_of(parts) if f.name in wanted
                     or any(s.name in wanted for s in f.samples)]
        elif hasattr(registry, "instrumented"):
            registry.instrumented.want(fmt, gzip)
        headers = [("Content-Type", fmt.content_type)]
        if gzip:
            headers.append(("Content-Encoding", "gzip"))
        body = assemble(parts, fmt, gzip)
        start_response("200 OK", headers)
        return [body]

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == telemetry_path:
            return metrics(environ, start_response)
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [landing]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return app


# Exporters answer small requests: a few workers keep up with many scrapers and nothing else waits.
EXPORTER_LIMITS = Limits(workers=4, max_queued=64, max_connections=512, read_timeout=10.0,
                         write_timeout=30.0, max_body_bytes=64 * 1024)


SWITCH_INTERVAL = 0.0005  # seconds; CPython's default is 0.005


def serve_forever(app, listen_address: str, stop: threading.Event, web_config=None,
                  on_start: Callable[[Server], None] | None = None) -> None:
    """Serve ``app`` until ``stop`` is set; the socket is bound before this returns control."""
    server = serve(app, listen_address, web_config, EXPORTER_LIMITS, name="http")
    if on_start is not None:
        on_start(server)
    log.info("listening", extra=kv(address=f"{server.host}:{server.port}", scheme=server.scheme,
                                   basic_auth=bool(server.config.users)))
    try:
        stop.wait()
    finally:
        server.stop()


def run_exporter(exporter: str, args: argparse.Namespace, create: Callable[[argparse.Namespace], Source]) -> int:
    """Run one exporter process until SIGTERM or SIGINT. Returns the exit status."""
    setup_logging(args.log_level, args.log_format)
    web_config = web_config_from_flags(args)
    if web_config is None:
        return 2
    stop = threading.Event()

    def _stop(signum, _frame):
        log.info("shutting down", extra=kv(signal=signal.Signals(signum).name))
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # A poller's threads (64 Docker stats requests in flight) hold the GIL for up to the switch
    # interval each time a scrape's thread wakes from I/O: a shorter one keeps scrapes fast.
    sys.setswitchinterval(SWITCH_INTERVAL)
    log.info("starting", extra=kv(exporter=exporter, version=__version__))
    source = create(args)
    try:
        registry = build_registry(exporter, source)

        def attach(server: Server) -> None:
            registry.instrumented.server = server

        app = make_app(exporter, registry, args.telemetry_path)
        serve_forever(app, args.listen_address, stop, web_config, attach)
    except OSError as err:
        log.error("cannot listen", extra=kv(address=args.listen_address, error=err))
        return 1
    finally:
        source.close()
    return 0
