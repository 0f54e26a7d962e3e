"""What every boxwatch exporter shares: flags, logging, self-metrics and the HTTP server.

A source module (``gpu``, ``containers``, ``journald``) provides two functions:

``add_arguments(parser)``
    adds its own ``--collector.*`` / source flags to an ``argparse`` parser;
``create(args) -> Source``
    builds its collectors (and starts any background poller) from the parsed flags.

``run_exporter`` turns that into a process: it wraps every collector so that one failing
collector never fails the scrape, adds node_exporter-style self metrics, serves
``/metrics`` and stops cleanly on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer

from exporters import __version__

log = logging.getLogger("boxwatch")


@dataclass
class Source:
    """Collectors of one exporter, by name, and what to call on shutdown."""

    collectors: dict[str, object]
    close: Callable[[], None] = field(default=lambda: None)


# --------------------------------------------------------------------------- logging


class LogfmtFormatter(logging.Formatter):
    """One event per line: ``ts=... level=... logger=... msg="..." key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields.update(getattr(record, "fields", {}))
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())


class JsonFormatter(LogfmtFormatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields.update(getattr(record, "fields", {}))
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(fields, default=str)


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n'):
        return json.dumps(text)
    return text


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    """Structured logs to stderr. ``level`` is one of debug, info, warn, error."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(level.lower(), level.upper()))


def kv(**fields: object) -> dict:
    """``log.info("msg", extra=kv(gpu=0))`` attaches key=value pairs to a log line."""
    return {"fields": fields}


# --------------------------------------------------------------------------- flags


def add_common_flags(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=f"127.0.0.1:{default_port}",
        help="address to serve metrics on, HOST:PORT or :PORT for all interfaces (default: %(default)s)",
    )
    parser.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        help="path under which to expose metrics (default: %(default)s)",
    )
    parser.add_argument(
        "--log.level",
        dest="log_level",
        default="info",
        choices=["debug", "info", "warn", "error"],
        help="only log messages with this severity or above (default: %(default)s)",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=["logfmt", "json"],
        help="output format of log messages (default: %(default)s)",
    )


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


def parse_listen_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:9872"`` -> ("127.0.0.1", 9872); ``":9872"`` -> ("0.0.0.0", 9872); ``"[::1]:9872"``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {address!r}: expected HOST:PORT or :PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


# --------------------------------------------------------------------------- self metrics


class InstrumentedCollector:
    """Runs named collectors, isolating their failures and timing them.

    Yields, besides each collector's own families, node_exporter-style
    ``boxwatch_exporter_scrape_collector_duration_seconds{collector}`` and
    ``boxwatch_exporter_scrape_collector_success{collector}``, and counts failures in
    ``boxwatch_exporter_collector_errors_total{collector}``. A collector that raises
    contributes no families to that scrape; the others are unaffected.
    """

    def __init__(self, exporter: str, collectors: dict[str, object]):
        self._exporter = exporter
        self._collectors = dict(sorted(collectors.items()))
        self._errors = dict.fromkeys(self._collectors, 0)
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
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
        for name, collector in self._collectors.items():
            start = time.perf_counter()
            try:
                families = list(collector.collect())
                ok = True
            except Exception:
                log.exception("collector failed", extra=kv(collector=name))
                families, ok = [], False
                with self._lock:
                    self._errors[name] += 1
            duration.add_metric([name], time.perf_counter() - start)
            success.add_metric([name], 1.0 if ok else 0.0)
            yield from families
        yield duration
        yield success
        errors = CounterMetricFamily(
            "boxwatch_exporter_collector_errors",
            "Collector runs that raised an exception, since the exporter started.",
            labels=["collector"],
        )
        with self._lock:
            for name, count in self._errors.items():
                errors.add_metric([name], count)
        yield errors
        info = InfoMetricFamily("boxwatch_exporter_build", "boxwatch exporter build information.")
        info.add_metric(
            [],
            {"exporter": self._exporter, "version": __version__, "python_version": platform.python_version()},
        )
        yield info


def build_registry(exporter: str, source: Source) -> CollectorRegistry:
    """A fresh registry holding the source's collectors plus process and self metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InstrumentedCollector(exporter, source.collectors))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


# --------------------------------------------------------------------------- HTTP


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        log.debug("http request", extra=kv(request=format % args))


def make_app(exporter: str, registry: CollectorRegistry, telemetry_path: str = "/metrics"):
    """WSGI app: landing page at ``/``, metrics at ``telemetry_path``, ``/healthz``."""
    metrics_app = make_wsgi_app(registry)
    landing = (
        f"<html><head><title>boxwatch {exporter} exporter</title></head><body>"
        f"<h1>boxwatch {exporter} exporter</h1><p>version {__version__}</p>"
        f'<p><a href="{telemetry_path}">Metrics</a></p></body></html>'
    ).encode()

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == telemetry_path:
            return metrics_app(environ, start_response)
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [landing]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return app


def serve_forever(app, listen_address: str, stop: threading.Event) -> None:
    """Serve ``app`` until ``stop`` is set; the socket is bound before this returns control."""
    host, port = parse_listen_address(listen_address)
    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    log.info("listening", extra=kv(address=f"{host}:{server.server_port}"))
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()


def run_exporter(exporter: str, args: argparse.Namespace, create: Callable[[argparse.Namespace], Source]) -> int:
    """Run one exporter process until SIGTERM or SIGINT. Returns the exit status."""
    setup_logging(args.log_level, args.log_format)
    try:
        parse_listen_address(args.listen_address)
    except ValueError as err:
        log.error(str(err))
        return 2
    stop = threading.Event()

    def _stop(signum, _frame):
        log.info("shutting down", extra=kv(signal=signal.Signals(signum).name))
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("starting", extra=kv(exporter=exporter, version=__version__))
    source = create(args)
    try:
        app = make_app(exporter, build_registry(exporter, source), args.telemetry_path)
        serve_forever(app, args.listen_address, stop)
    except OSError as err:
        log.error("cannot listen", extra=kv(address=args.listen_address, error=err))
        return 1
    finally:
        source.close()
    return 0
