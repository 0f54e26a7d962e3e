"""The containers exporter's own work per scrape, in process, at 10 and 200 containers.

    python -m bench.scrape_path [--sizes 10,200] [--scrapes 400] [--clients 4] [--json]

What ``bench/exporters.py`` measures end to end (a private dockerd, HTTP over loopback) also
holds the daemon's and the machine's load; this measures only the exporter's scrape path: the
``/metrics`` WSGI app of a real ``ContainerCollector`` in an ``ExporterRegistry`` (self metrics,
process metrics and all), its snapshot published the way the Docker poller publishes one. Each
size runs three cases, each in text and in gzip'd OpenMetrics (what Prometheus asks for):

``quiet``
    one client, no events;
``events``
    one client, every container with event counters (a ``start`` each, then one more event per
    scrape: a crash-looping container);
``worst``
    ``--clients`` threads scraping at once while another thread publishes a fresh snapshot
    back to back (a poll always in progress), events as above.

Latencies are per scrape (the app's call, body included) in milliseconds: p50, p99 and max. The
interpreter's switch interval is the exporter's (``exporters.server.SWITCH_INTERVAL``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from exporters.containers import (  # noqa: E402
    Container,
    ContainerCollector,
    ErrorCounts,
    EventCounts,
    Snapshot,
    Stats,
    StatsPoller,
)
from exporters.server import SWITCH_INTERVAL, Source, build_registry, make_app  # noqa: E402

FORMATS = {"text": ("text/plain", ""),
           "openmetrics+gzip": ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", "gzip")}


def snapshot(n_containers: int, now: float) -> Snapshot:
    """``n_containers`` running containers with stats, as one refresh of idle busybox containers reads them."""
    containers = tuple(
        Container(id=f"{i:012x}", name=f"idle-{i:04d}", image="bb:local", compose_service="", state="running",
                  health=None, restart_count=0, oom_killed=False,
                  stats=Stats(now - 0.5, 0.01 * i + now % 7, 1e6 + 4096 * i, 8e9, None, None, 0.0, 4096.0 * i))
        for i in range(n_containers))
    return Snapshot(up=True, containers=containers, refreshed_at=now, refresh_seconds=1.0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_case(n_containers: int, case: str, fmt: str, scrapes: int, clients: int) -> dict:
    errors, events = ErrorCounts(), EventCounts(max_names=1000)
    poller = StatsPoller(lambda: None, None, 5.0, 1, 30.0, errors)  # never started: this run publishes
    collector = ContainerCollector(poller, events, errors)
    app = make_app("containers", build_registry("containers", Source({"containers": collector})))
    accept, encoding = FORMATS[fmt]
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "HTTP_ACCEPT": accept,
               "HTTP_ACCEPT_ENCODING": encoding}
    collector.prepare(snapshot(n_containers, time.time()))
    if case != "quiet":
        for i in range(n_containers):
            events.add(f"idle-{i:04d}", "", "start")
    size = len(app(dict(environ), lambda status, headers: None)[0])
    collector.prepare(snapshot(n_containers, time.time()))  # the format this client asked for is now prepared
    publishes, stop, publishing = 0, threading.Event(), threading.Event()

    def publish_back_to_back() -> None:
        nonlocal publishes
        while not stop.is_set():
            collector.prepare(snapshot(n_containers, time.time()))
            publishes += 1
            publishing.set()

    def client(out: list[float], count: int) -> None:
        for k in range(count):
            if case != "quiet":
                events.add(f"idle-{k % n_containers:04d}", "", "die")
            start = time.perf_counter()
            app(dict(environ), lambda status, headers: None)
            out.append((time.perf_counter() - start) * 1000)

    publisher = threading.Thread(target=publish_back_to_back, daemon=True)
    n_clients = clients if case == "worst" else 1
    results: list[list[float]] = [[] for _ in range(n_clients)]
    threads = [threading.Thread(target=client, args=(results[i], scrapes // n_clients)) for i in range(n_clients)]
    if case == "worst":
        publisher.start()
        publishing.wait()  # the clients start with the second publish under way
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    if case == "worst":
        publisher.join()
    latencies = [ms for got in results for ms in got]
    return {"containers": n_containers, "case": case, "format": fmt, "clients": n_clients,
            "scrapes": len(latencies), "publishes_meanwhile": publishes, "bytes": size,
            "p50_ms": round(statistics.median(latencies), 3), "p99_ms": round(percentile(latencies, 0.99), 3),
            "max_ms": round(max(latencies), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,200", help="comma-separated container counts (default: %(default)s)")
    parser.add_argument("--scrapes", type=int, default=400, help="scrapes per case (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients in the worst case (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    sizes = [int(part) for part in args.sizes.split(",") if part.strip()]
    sys.setswitchinterval(SWITCH_INTERVAL)  # as the exporter process sets it
    if not sizes or min(sizes) < 1 or args.scrapes < 1 or args.clients < 1:
        parser.error("--sizes, --scrapes and --clients must be positive")
    rows = [run_case(n, case, fmt, args.scrapes, args.clients)
            for case in ("quiet", "events", "worst") for fmt in FORMATS for n in sizes]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'case':7} {'format':17} {'containers':>10} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'bytes':>8}"
    print(header)
    for r in rows:
        print(f"{r['case']:7} {r['format']:17} {r['containers']:>10} {r['clients']:>7} {r['p50_ms']:>8.3f} "
              f"{r['p99_ms']:>8.3f} {r['max_ms']:>8.3f} {r['bytes']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
