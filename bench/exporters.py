"""Scrape latency and memory of boxwatch's exporters.

    python bench/exporters.py [--exporter gpu|containers|all] [--scrapes N] [--json]

For each exporter and size (GPU: 2 and 8 GPUs; containers: 10 and 200 containers) it starts
the exporter through its benchmark module (``bench/exporters_<name>.py``, a context manager
``start(n)`` yielding ``(metrics_url, pid)``), scrapes ``/metrics`` N times over fresh HTTP
connections (as Prometheus' first scrape would) and prints p50 / p99 latency, the number of
samples and the exporter's resident memory. A part whose module or prerequisites (e.g.
dockerd) are missing is skipped with the reason.
"""

from __future__ import annotations

import argparse
import http.client
import importlib
import json
import statistics
import sys
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
    note: str = ""


def scrape(url: str) -> tuple[float, bytes]:
    """One scrape over a fresh connection; returns (seconds, body)."""
    parts = urlsplit(url)
    start = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", parts.path or "/", headers={"Accept": "text/plain"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")
    finally:
        conn.close()
    return time.perf_counter() - start, body


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


def load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise Skip(f"{module_name} is not present") from err
        raise Skip(f"{module_name} needs {err.name}, which is not installed") from err


def run_part(name: str, scrapes: int) -> list[Result]:
    module_name, sizes, unit = PARTS[name]
    try:
        module = load(module_name)
    except Skip as skip:
        return [Result(name, size, unit, "skipped", note=str(skip)) for size in sizes]
    note = getattr(module, "DESCRIPTION", "")
    results = []
    for size in sizes:
        try:
            with module.start(size) as (url, pid):
                figures = measure(url, pid, scrapes)
            results.append(Result(name, size, unit, "ok", scrapes, note=note, **figures))
        except (FileNotFoundError, PermissionError, ConnectionError, Skip) as err:
            results.append(Result(name, size, unit, "skipped", note=f"{type(err).__name__}: {err}"))
        except Exception as err:  # reported, and the exit status says so
            if "unavailable" in type(err).__name__.lower() or "skip" in type(err).__name__.lower():
                results.append(Result(name, size, unit, "skipped", note=f"{type(err).__name__}: {err}"))
            else:
                results.append(Result(name, size, unit, "failed", note=f"{type(err).__name__}: {err}"))
    return results


def table(results: list[Result]) -> str:
    header = ("exporter", "size", "scrapes", "p50 ms", "p99 ms", "max ms", "samples", "RSS MiB", "peak MiB")
    rows = [header]
    for r in results:
        if r.status != "ok":
            rows.append((r.exporter, f"{r.size} {r.unit}", r.status, "", "", "", "", "", ""))
            continue
        rows.append((r.exporter, f"{r.size} {r.unit}", str(r.scrapes), f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                     f"{r.max_ms:.2f}", str(r.samples), f"{r.rss_mib:.1f}", f"{r.peak_rss_mib:.1f}"))
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
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.scrapes < 1:
        parser.error("--scrapes must be at least 1")
    names = list(PARTS) if args.exporter == "all" else [args.exporter]
    results = [result for name in names for result in run_part(name, args.scrapes)]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(table(results))
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
