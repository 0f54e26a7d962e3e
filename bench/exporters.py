"""Scrape latency and memory of boxwatch's exporters.

    python bench/exporters.py [--exporter gpu|containers|all] [--scrapes N] [--sizes 10,200] [--json]
    python bench/exporters.py --exporter containers --sizes 10 --concurrency 20 --duration 30 [--idle 200]
    python bench/exporters.py ... --as-prometheus      # OpenMetrics and gzip, as Prometheus scrapes

For each exporter and size (GPU: 2 and 8 GPUs; containers: 10 and 200 containers) it starts
the exporter through its benchmark module (``bench/exporters_<name>.py``, a context manager
``start(n)`` yielding ``(metrics_url, pid)``), scrapes ``/metrics`` N times over fresh HTTP
connections (as Prometheus' first scrape would) and prints p50 / p99 latency, the number of
samples and the exporter's resident memory. A part whose module or prerequisites (e.g.
dockerd) are missing is skipped with the reason.

With ``--concurrency N --duration S`` it measures instead N clients (separate processes, so
that the clients do not queue behind each other's interpreter) scraping in a closed loop for S
seconds, each scrape over a fresh loopback connection, optionally with ``--idle M`` connections
held open and silent the whole time; it reports latency percentiles, scrapes refused (503) or
failed, and the most threads the exporter had.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import importlib
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this file's directory comes first on sys.path and its name would shadow the
# ``exporters`` package the benchmark modules start: put the repository root there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

PARTS = {"gpu": ("bench.exporters_gpu", (2, 8), "GPUs"),
         "containers": ("bench.exporters_containers", (10, 200), "containers")}
WARMUP = 5
TEXT_HEADERS = {"Accept": "text/plain"}
# What Prometheus 2.x sends when it scrapes: OpenMetrics preferred, gzip accepted.
PROMETHEUS_HEADERS = {"Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                                "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                      "Accept-Encoding": "gzip"}
REQUEST_HEADERS = TEXT_HEADERS  # set by --as-prometheus before any client starts


class Skip(Exception):
    """A part that cannot run here (missing module or prerequisite)."""


@dataclass
class Result:
    exporter: str
    size: int
    unit: str
    status: str  # ok, skipped, failed
    scrapes: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    samples: int | None = None
    rss_mib: float | None = None
    peak_rss_mib: float | None = None
    clients: int | None = None
    refused: int | None = None
    failed: int | None = None
    threads: int | None = None
    cpu_ms_per_scrape: float | None = None
    note: str = ""


def scrape(url: str) -> tuple[float, bytes]:
    """One scrape over a fresh connection; returns (seconds, body)."""
    parts = urlsplit(url)
    start = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", parts.path or "/", headers=REQUEST_HEADERS)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")
    finally:
        conn.close()
    seconds = time.perf_counter() - start
    if response.getheader("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return seconds, body


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB, from /proc/PID/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(rest.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(url: str, pid: int, scrapes: int) -> dict:
    for _ in range(WARMUP):
        scrape(url)
    latencies, body = [], b""
    for _ in range(scrapes):
        seconds, body = scrape(url)
        latencies.append(seconds * 1000)
    rss, peak = memory_mib(pid)
    samples = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    return {"p50_ms": round(statistics.median(latencies), 2), "p99_ms": round(percentile(latencies, 0.99), 2),
            "max_ms": round(max(latencies), 2), "samples": samples, "rss_mib": round(rss, 1),
            "peak_rss_mib": round(peak, 1)}


def _client(url: str, duration: float, start_at: float, out) -> None:
    """One closed-loop client (a child process): scrape until ``duration`` is over."""
    latencies, refused, failed = [], 0, 0
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + duration
    while time.time() < end:
        try:
            seconds, _ = scrape(url)
            latencies.append(seconds * 1000)
        except RuntimeError as err:
            refused += "503" in str(err)
            failed += "503" not in str(err)
        except OSError:
            failed += 1
    out.put((latencies, refused, failed))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def measure_concurrent(url: str, pid: int, clients: int, duration: float, idle: int) -> dict:
    """``clients`` closed-loop scrapers for ``duration`` seconds, with ``idle`` silent connections open."""
    for _ in range(WARMUP):
        scrape(url)
    parts = urlsplit(url)
    held = []
    try:
        for _ in range(idle):
            held.append(http.client.HTTPConnection(parts.hostname, parts.port, timeout=30))
            held[-1].connect()
        context = multiprocessing.get_context("fork")
        out = context.Queue()
        start_at = time.time() + 0.5
        procs = [context.Process(target=_client, args=(url, duration, start_at, out)) for _ in range(clients)]
        cpu_before = cpu_seconds(pid)
        for proc in procs:
            proc.start()
        peak, done = threads_of(pid), threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.wait(0.2):
                peak = max(peak, threads_of(pid))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        results = [out.get(timeout=duration + 60) for _ in procs]
        cpu = cpu_seconds(pid) - cpu_before
        done.set()
        for proc in procs:
            proc.join(10)
    finally:
        for conn in held:
            conn.close()
    latencies = [ms for got, _, _ in results for ms in got]
    rss, peak_rss = memory_mib(pid)
    return {"p50_ms": round(statistics.median(latencies), 2) if latencies else None,
            "p99_ms": round(percentile(latencies, 0.99), 2) if latencies else None,
            "max_ms": round(max(latencies), 2) if latencies else None, "scrapes": len(latencies),
            "refused": sum(r for _, r, _ in results), "failed": sum(f for _, _, f in results),
            "clients": clients, "threads": peak,
            "cpu_ms_per_scrape": round(1000 * cpu / len(latencies), 3) if latencies else None, "rss_mib": round(rss, 1), "peak_rss_mib": round(peak_rss, 1)}


def load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise Skip(f"{module_name} is not present") from err
        raise Skip(f"{module_name} needs {err.name}, which is not installed") from err


def run_part(name: str, scrapes: int, sizes: tuple[int, ...] | None = None,
             concurrent: tuple[int, float, int] | None = None) -> list[Result]:
    module_name, default_sizes, unit = PARTS[name]
    sizes = sizes or default_sizes
    try:
        module = load(module_name)
    except Skip as skip:
        return [Result(name, size, unit, "skipped", note=str(skip)) for size in sizes]
    note = getattr(module, "DESCRIPTION", "")
    results = []
    for size in sizes:
        try:
            with module.start(size) as (url, pid):
                if concurrent:
                    figures = measure_concurrent(url, pid, *concurrent)
                else:
                    figures = {"scrapes": scrapes, **measure(url, pid, scrapes)}
            results.append(Result(name, size, unit, "ok", note=note, **figures))
        except (FileNotFoundError, PermissionError, ConnectionError, Skip) as err:
            results.append(Result(name, size, unit, "skipped", note=f"{type(err).__name__}: {err}"))
        except Exception as err:  # reported, and the exit status says so
            if "unavailable" in type(err).__name__.lower() or "skip" in type(err).__name__.lower():
                results.append(Result(name, size, unit, "skipped", note=f"{type(err).__name__}: {err}"))
            else:
                results.append(Result(name, size, unit, "failed", note=f"{type(err).__name__}: {err}"))
    return results


def table(results: list[Result]) -> str:
    concurrent = any(r.clients for r in results)
    header = ("exporter", "size", "scrapes", "p50 ms", "p99 ms", "max ms",
              *(("clients", "refused", "failed", "threads", "CPU ms/scrape") if concurrent else ("samples",)),
              "RSS MiB", "peak MiB")
    rows = [header]
    for r in results:
        if r.status != "ok":
            rows.append((r.exporter, f"{r.size} {r.unit}", r.status, *[""] * (len(header) - 3)))
            continue
        extra = ((str(r.clients), str(r.refused), str(r.failed), str(r.threads), f"{r.cpu_ms_per_scrape:.2f}")
                 if concurrent else (str(r.samples),))
        rows.append((r.exporter, f"{r.size} {r.unit}", str(r.scrapes), f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                     f"{r.max_ms:.2f}", *extra, f"{r.rss_mib:.1f}", f"{r.peak_rss_mib:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    notes = []
    for r in results:
        line = f"{r.exporter}: {r.note}"
        if r.note and line not in notes:
            notes.append(line)
    return "\n".join(lines + [""] + [f"note: {n}" for n in notes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exporter", choices=["gpu", "containers", "all"], default="all",
                        help="which exporter to benchmark (default: %(default)s)")
    parser.add_argument("--scrapes", type=int, default=200, help="timed scrapes per size (default: %(default)s)")
    parser.add_argument("--sizes", type=_sizes, help="comma-separated sizes instead of each part's defaults")
    parser.add_argument("--concurrency", type=int, default=0, metavar="N",
                        help="measure N concurrent closed-loop clients instead of sequential scrapes (1..64)")
    parser.add_argument("--duration", type=float, default=30.0, metavar="SECONDS",
                        help="how long the concurrent clients run (1..120, default: %(default)s)")
    parser.add_argument("--idle", type=int, default=0, metavar="M",
                        help="with --concurrency: keep M silent connections open meanwhile (0..1000)")
    parser.add_argument("--as-prometheus", action="store_true",
                        help="ask for what Prometheus asks for (OpenMetrics, gzip) instead of plain text; the time "
                        "includes receiving the gzip'd body, not decompressing it")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    global REQUEST_HEADERS
    REQUEST_HEADERS = PROMETHEUS_HEADERS if args.as_prometheus else TEXT_HEADERS
    if args.scrapes < 1:
        parser.error("--scrapes must be at least 1")
    if not 0 <= args.concurrency <= 64 or not 1 <= args.duration <= 120 or not 0 <= args.idle <= 1000:
        parser.error("--concurrency must be 0..64, --duration 1..120 s and --idle 0..1000")
    concurrent = (args.concurrency, args.duration, args.idle) if args.concurrency else None
    names = list(PARTS) if args.exporter == "all" else [args.exporter]
    results = [result for name in names for result in run_part(name, args.scrapes, args.sizes, concurrent)]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(table(results))
    return 1 if any(r.status == "failed" for r in results) else 0


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 10,200; got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes; got {text!r}")
    return sizes


if __name__ == "__main__":
    sys.exit(main())
