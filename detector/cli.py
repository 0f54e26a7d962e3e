"""``boxwatch-detector serve|backfill|validate-config`` (and the registry's train|models|promote|rollback).

Each subcommand is an entry of :data:`COMMANDS` (help, how to add its flags, how to run it): this
module's own and the registry's (:data:`detector.registry_cli.COMMANDS`), listed here explicitly.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from boxwatch import __version__
from boxwatch.log import kv, setup_logging
from boxwatch.memory import limit_arenas
from boxwatch.times import parse_duration, parse_time
from boxwatch.web import Limits, Server, add_web_flags, load_web_config, parse_listen_address
from detector import registry_cli
from detector.cli_common import Command, add_config_flags, load_or_report, overrides_from, unknown_queries
from detector.config import DEFAULT_LISTEN_ADDRESS

log = logging.getLogger("boxwatch.detector")


# --------------------------------------------------------------------------- validate-config


def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", help="configuration file (default: --config)")
    add_config_flags(parser)


def _validate(args: argparse.Namespace) -> int:
    if args.file:
        args.config = args.file
    config = load_or_report(args)
    if config is None:
        return 1
    print(f"{args.config}: valid configuration, {len(config.queries)} queries: {', '.join(config.queries)}")
    return 0


# --------------------------------------------------------------------------- serve


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser)
    add_web_flags(parser, DEFAULT_LISTEN_ADDRESS, config_section="server")


# /metrics and /healthz must answer while slow API calls run: more workers than the API lets /score
# use at once (detector/api.py limits that), and a deadline on every client's reading and writing.
DETECTOR_LIMITS = Limits(workers=16, max_queued=64, max_connections=512, read_timeout=10.0,
                         write_timeout=60.0, max_body_bytes=16 << 20)

# glibc gives each thread that allocates an arena of its own (up to 8 per core), and each keeps what its
# thread freed: the fitting thread's large temporaries, the HTTP workers' answers.
SERVE_MALLOC_ARENAS = 2


def _serve(args: argparse.Namespace) -> int:
    """Build the service and what the configuration enables around it, wire them, serve until a signal."""
    setup_logging(args.log_level, args.log_format)
    limit_arenas(SERVE_MALLOC_ARENAS)
    with _pyarrow_hidden():  # the configuration's check imports pandas already
        config = load_or_report(args)
        from detector.api import add_routes, create_app
        from detector.metrics import build_registry
        from detector.service import Detector
        from detector.store import FitSink, LocalStore
    if config is None:
        log.error("refusing to start with an invalid configuration", extra=kv(file=args.config))
        return 1
    store = LocalStore(config.state_dir, config.model_key_file)
    sink: FitSink = store.save_fit
    families: list[Callable[[], Iterable[Any]]] = []  # extra /metrics families
    routes: list[tuple[Any, dict[str, Any]]] = []
    watcher = monitor = None
    if config.registry.enabled:  # every fit is gated by the registry; its champion serves
        from detector import registry

        model_registry, health = registry.Registry(config, args.shard), registry.RegistryHealth()
        watcher = registry.ChampionWatcher(model_registry, store, health)
        sink = registry.RegistrySink(model_registry, store, health)
        families.append(lambda: registry.registry_families(health))
        routes.append((registry.blueprint(watcher), registry.OPENAPI_PATHS))
    if config.drift.enabled:  # outermost: keeps the training data of whatever fit goes on to serve
        from detector import drift

        monitor = drift.DriftMonitor(config)
        sink = monitor.wrap_sink(sink)
        families.append(lambda: drift.drift_families(monitor))
        routes.append((drift.blueprint(monitor), drift.OPENAPI_PATHS))
    web_config = load_web_config(config.server.web_config_file)  # checked with the configuration
    detector = Detector(config, args.config, overrides_from(args), args.shard, sink, store.load)
    app = create_app(detector, build_registry(detector, families))
    for blueprint, paths in routes:
        add_routes(app, blueprint, paths)
    try:
        server = Server(app, *parse_listen_address(config.server.listen_address), web_config, DETECTOR_LIMITS,
                        name="http")
    except OSError as err:
        log.error("cannot listen", extra=kv(address=config.server.listen_address, error=err))
        return 1
    stop = threading.Event()
    _install_signals(stop, detector.request_reload)
    log.info("starting", extra=kv(version=__version__, queries=len(config.queries),
                                  shard=f"{args.shard[0]}/{args.shard[1]}", ready=detector.ready))
    detector.start()
    threads = [part for part in (watcher, monitor) if part is not None]
    for part in threads:
        part.start(detector)
    server.start()
    log.info("listening", extra=kv(address=f"{server.host}:{server.port}", scheme=server.scheme,
                                   basic_auth=bool(web_config.users)))
    stop.wait()
    server.stop()
    for part in threads:
        part.stop()
    detector.stop()
    return 0


@contextlib.contextmanager
def _pyarrow_hidden() -> Iterator[None]:
    """Import pandas as if pyarrow were not installed, then run the block (which cannot import pyarrow).

    pandas 2 imports pyarrow at start whenever it is installed (about 60 MiB of resident memory), and
    nothing on the serve path uses it. MLflow imports it itself when the registry is on (pandas then
    reads and writes Parquet with it as usual; only its pyarrow-backed dtypes stay off); pandas imported
    before the block keeps what it found.
    """
    if "pandas" in sys.modules or "pyarrow" in sys.modules:
        yield
        return
    sys.modules["pyarrow"] = None  # type: ignore[assignment]  # makes `import pyarrow` raise ImportError
    try:
        import pandas  # noqa: F401
        yield
    finally:
        if "pyarrow" in sys.modules and sys.modules["pyarrow"] is None:
            del sys.modules["pyarrow"]


def _install_signals(stop: threading.Event, reload: Callable[[], None]) -> None:
    def _stop(signum, _frame):
        log.info("shutting down", extra=kv(signal=signal.Signals(signum).name))
        stop.set()

    def _hup(_signum, _frame):
        log.info("reloading configuration", extra=kv(signal="SIGHUP"))
        reload()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _hup)


# --------------------------------------------------------------------------- backfill


def _backfill_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser)
    parser.add_argument("--from", dest="start", required=True, type=parse_when,
                        help="start of the range: RFC 3339, unix seconds, or now-DURATION (e.g. now-7d)")
    parser.add_argument("--to", dest="end", default="now", type=parse_when,
                        help="end of the range (same forms; default: now)")
    parser.add_argument("--output", help="write OpenMetrics here, for promtool tsdb create-blocks-from openmetrics")
    parser.add_argument("--remote-write-url", help="push the scores to this remote-write URL (…/api/v1/write)")
    parser.add_argument("--query", dest="queries", action="append",
                        help="only this query alias (repeatable; default: every query)")


def parse_when(text: str) -> float:
    """Unix seconds from RFC 3339, a number, ``now`` or ``now-DURATION``."""
    text = text.strip()
    match = re.fullmatch(r"now(?:\s*-\s*(\S+))?", text)
    try:
        if match:
            return time.time() - (parse_duration(match.group(1)) if match.group(1) else 0.0)
        return parse_time(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected RFC 3339, unix seconds or now-DURATION, got {text!r}: {err}") from None


def _backfill(args: argparse.Namespace) -> int:
    from detector.backfill import backfill
    from detector.reader import PrometheusReader, ReaderError
    from detector.writer import RemoteWriter, write_openmetrics

    setup_logging(args.log_level, args.log_format)
    if not args.output and not args.remote_write_url:
        print("backfill: give --output FILE and/or --remote-write-url URL", file=sys.stderr)
        return 2
    if args.end <= args.start:
        print("backfill: --to must be after --from", file=sys.stderr)
        return 2
    config = load_or_report(args)
    if config is None:
        return 1
    if unknown_queries("backfill", config, args.queries):
        return 2
    reader = PrometheusReader(config.reader)
    try:
        points = list(backfill(config, reader, args.start, args.end, args.queries, args.shard))
    except ReaderError as err:
        log.error("backfill failed", extra=kv(error=err))
        return 1
    finally:
        reader.close()
    if args.output:
        with open(args.output, "w") as handle:
            samples = write_openmetrics(points, handle)
        log.info("wrote OpenMetrics", extra=kv(file=args.output, samples=samples, points=len(points)))
    if args.remote_write_url:
        import requests

        from detector.httpclient import session_for

        remote = config.writer.remote_write
        writer = RemoteWriter(args.remote_write_url, remote.timeout, session=session_for(remote))
        try:
            samples = writer.write(points)
        except requests.RequestException as err:
            log.error("remote write failed", extra=kv(url=args.remote_write_url, error=err))
            return 1
        log.info("remote write done", extra=kv(url=args.remote_write_url, samples=samples))
    return 0


COMMANDS: dict[str, Command] = {
    "serve": Command(
        "score the configured queries continuously and serve /metrics and the API",
        _serve_arguments, _serve,
        "Fit models on a schedule, score new points as they arrive and serve the scores on /metrics, with a "
        "JSON API. SIGHUP or POST /-/reload re-reads the configuration.",
    ),
    "backfill": Command(
        "score a past range and write it for Prometheus (OpenMetrics file or remote write)",
        _backfill_arguments, _backfill,
        "Score [--from, --to] as the service would have (fit before, refit every fit_every) and write the "
        "scores as OpenMetrics (load with: promtool tsdb create-blocks-from openmetrics FILE DATA_DIR) and/or "
        "push them with remote write.",
    ),
    "validate-config": Command(
        "check a configuration file and print every problem",
        _validate_arguments, _validate,
        "Parse and validate the configuration; print each problem with file, key and reason. Exit 1 if "
        "invalid.",
    ),
    **registry_cli.COMMANDS,
}

# --------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boxwatch-detector",
        description="boxwatch anomaly detector: Prometheus range queries in, anomaly scores out.",
        epilog="Configuration: a YAML file (see detector/boxwatch-detector.example.yml); keys can be overridden "
               "with --set KEY=VALUE or BOXWATCH_<SECTION>__<KEY> environment variables.",
    )
    parser.add_argument("--version", action="version", version=f"boxwatch-detector {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        child = sub.add_parser(name, help=command.help, description=command.description or command.help)
        command.add_arguments(child)
        child.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args: Any = build_parser().parse_args(argv)
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
