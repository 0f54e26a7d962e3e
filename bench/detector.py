"""Benchmark the detector service against a real Prometheus holding generated history.

    python -m bench.detector [--series 200] [--days 14] [--cycles 20] [--models robust,seasonal,iforest]
                             [--fit-series 3] [--cold] [--profile FILE] [--json FILE]

Measures, per model:

* fit time per series on ``--days`` of 1-minute data (the fit query included separately);
* a serve cycle: series scored per second, the cycle's wall time, the time Prometheus took
  to answer the cycle's queries, and the ratio of the detector's own time to Prometheus' time;
* the benchmark process' resident memory (RSS) after each stage, and the RSS of a real
  ``serve`` process with every benchmarked query fitted (from its ``process_resident_memory_bytes``;
  its peak from ``/proc``), and the largest peak RSS of the child processes its fits ran in.

``--json FILE`` writes every figure; per model (the size is in ``args``): ``fit_seconds_per_series``,
``cycle_ms`` and ``prometheus_ms`` (medians over the cycles), ``series_per_second``,
``own_over_prometheus`` (the cycle less Prometheus' time, over Prometheus' time) and
``serve_rss_mib`` (the serve process', the same for every model), beside the older keys; and the
1-minute load average at the start and the end (``load_average_start``, ``load_average_end``): the
figures are only as good as the machine was quiet.

History is written with promtool before Prometheus starts; the serve cycles then run the
service's own code path (``Detector.run_cycle``) once per 1-minute grid point over the
last ``--cycles`` minutes of it, so every cycle scores one new point of every series.

The cycles are timed at steady state, as a service that has run for days: each model's window
is filled by its fit (``--serve-fit-days`` of history: a robust model keeps its last 360 points),
and each unit's score calibration starts full (its ``window`` of 4,000 learned values, the state
reached after ~2.8 days at 1m), so every cycle pays for the calibration's level fit over a full
window. The values it starts with are ``log(1 + raw)`` of raw scores drawn as ``|z| / 5``, ``z``
standard normal (a Gaussian series against a 5-sigma band); ``--cold`` starts the calibrations
empty instead (the first hours of a service). ``--profile FILE`` writes a cProfile of the timed
cycles of each model (``FILE.<model>``).

Where another component adds its own figures (a model registry: import time and RSS with
MLflow loaded), it appends a function to :data:`EXTRA_BENCHES`; each returns a dict of
figures printed and saved with the rest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

STEP = 60
EXTRA_BENCHES: list[Callable[[argparse.Namespace], dict]] = []


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def generate(series: int, days: float, end: float, seed: int = 0) -> str:
    """OpenMetrics text: ``series`` GPUs with temperature and power, daily cycle plus noise."""
    from tests.harness import openmetrics

    rng = np.random.default_rng(seed)
    stamps = np.arange(end - days * 86400, end + 1, STEP)
    daily = np.sin(2 * math.pi * stamps / 86400)
    weekly = np.sin(2 * math.pi * stamps / (7 * 86400))
    data = {}
    for i in range(series):
        labels = (("gpu", str(i)), ("uuid", f"GPU-{i:04d}"))
        temp = 55 + 8 * daily + 2 * weekly + rng.normal(0, 1, len(stamps))
        power = 150 + 60 * daily + rng.normal(0, 8, len(stamps))
        data[("bench_gpu_temperature_celsius", labels)] = list(zip(stamps.tolist(), np.round(temp, 2).tolist(),
                                                                  strict=True))
        data[("bench_gpu_power_watts", labels)] = list(zip(stamps.tolist(), np.round(power, 1).tolist(),
                                                          strict=True))
    return openmetrics(data)


def start_prometheus(workdir: Path, text: str):
    from tests.harness import Prometheus, backfill

    began = time.perf_counter()
    backfill(workdir / "data", text)
    loaded = time.perf_counter() - began
    return Prometheus(workdir / "prometheus", data_dir=workdir / "data"), loaded


def make_config(url: str, state_dir: Path, model: str, days: float):
    from detector.config import validate

    query = {"step": "1m", "fit_window": f"{int(days * 1440)}m", "fit_every": "30d", "model": model}
    if model == "iforest":
        query.update(expr='{__name__=~"bench_gpu_temperature_celsius|bench_gpu_power_watts"}',
                     group_by=["gpu", "uuid"])
    else:
        query.update(expr="bench_gpu_temperature_celsius")
    # fitted in this process: the fit figure is the models' cost (the serve process below fits in a child)
    return validate({"schema_version": 1, "reader": {"url": url, "timeout": "120s"}, "queries": {model: query},
                     "state_dir": str(state_dir), "fitting": {"isolate": False}})


def bench_fit(url: str, workdir: Path, model: str, days: float, fit_series: int, end: float) -> dict:
    """Fit time per series (or entity) on ``days`` of 1-minute history."""
    from detector.service import Detector

    config = make_config(url, workdir / f"fit-{model}", model, days)
    if model == "iforest":
        expr = '{__name__=~"bench_gpu_temperature_celsius|bench_gpu_power_watts", gpu=~"%s"}'
    else:
        expr = 'bench_gpu_temperature_celsius{gpu=~"%s"}'
    alias = model
    queries = {alias: config.queries[alias].model_copy(
        update={"expr": expr % "|".join(str(i) for i in range(fit_series))})}
    config = config.model_copy(update={"queries": queries})
    detector = Detector(config)
    began = time.perf_counter()
    bundle = detector.fit_query(alias, end)
    total = time.perf_counter() - began
    assert bundle is not None and len(bundle.models) == fit_series, "the fit did not cover every series"
    return {"fit_series": fit_series, "fit_seconds_per_series": bundle.fit_seconds / fit_series,
            "fit_query_seconds": total - bundle.fit_seconds, "fit_points_per_series": int(days * 1440) + 1}


def full_calibrations(config, keys, seed: int = 0) -> dict:
    """Per key, a calibration holding a full window of learned values (see the module's docstring)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key in keys:
        calibration = config.anomalies.calibration.make()
        if calibration is None:
            return {}
        calibration.values_ = np.log1p(np.abs(rng.standard_normal(calibration.window)) / 5)
        calibration.fit_level()
        out[key] = calibration
    return out


def bench_cycles(url: str, workdir: Path, model: str, days: float, cycles: int, end: float, cold: bool = False,
                 profile: str | None = None) -> dict:
    """Serve cycles over the last ``cycles`` minutes: throughput and detector vs Prometheus time."""
    from detector.service import Detector

    config = make_config(url, workdir / f"serve-{model}", model, days)
    detector = Detector(config)
    first = end - cycles * STEP
    began = time.perf_counter()
    bundle = detector.fit_query(model, first)
    fit_all = time.perf_counter() - began
    if not cold:  # served as a bundle that carries its calibrations, as after a restart
        bundle.calibration = full_calibrations(config, bundle.models)
        detector.install_bundle(bundle)
    detector.settle_memory()  # what the service's fitting thread does after its fits
    detector.run_cycle(first)  # the first cycle starts any stand-ins; measured cycles follow
    durations, query_seconds, scored = [], [], []
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    for k in range(1, cycles + 1):
        began = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        scored.append(detector.run_cycle(first + k * STEP))
        if profiler is not None:
            profiler.disable()
        durations.append(time.perf_counter() - began)
        stats, _ = detector.stats_copy()
        query_seconds.append(stats.last_cycle_query_seconds)
    if profiler is not None:
        profiler.dump_stats(f"{profile}.{model}")
    units = len(bundle.models)
    assert min(scored) == units, f"a cycle scored {min(scored)} of {units} units"
    cycle = float(np.median(durations))
    prom = float(np.median(query_seconds))
    return {
        "units": units,
        "fit_all_seconds": fit_all,
        "cycle_seconds_median": cycle,
        "cycle_seconds_max": float(max(durations)),
        "prometheus_seconds_median": prom,
        "series_scored_per_second": units / cycle,
        "detector_to_prometheus_ratio": (cycle - prom) / prom if prom > 0 else float("inf"),
        "cycle_ms": cycle * 1000,
        "prometheus_ms": prom * 1000,
        "series_per_second": units / cycle,
        "own_over_prometheus": (cycle - prom) / prom if prom > 0 else float("inf"),
    }


def bench_serve_process(url: str, workdir: Path, models: list[str], days: float) -> dict:
    """RSS of a real ``serve`` process with every benchmarked query fitted, read from its /metrics."""
    import requests
    import yaml

    from tests.harness import Process, free_port, python_module, wait_http

    queries = {}
    for model in models:
        queries.update(make_config(url, workdir, model, days).model_dump(mode="json")["queries"])
    config = {"schema_version": 1, "reader": {"url": url, "timeout": "120s"}, "queries": queries,
              "state_dir": str(workdir / "serve-process")}
    path = workdir / "serve.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    began = time.perf_counter()
    process = Process(python_module("detector", "serve", "--config", str(path),
                                    "--web.listen-address", f"127.0.0.1:{port}"), workdir / "serve.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 60, process.proc)
        listening = time.perf_counter() - began
        wait_http(f"http://127.0.0.1:{port}/readyz", 1200, process.proc)
        ready = time.perf_counter() - began
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        status = Path(f"/proc/{process.proc.pid}/status").read_text()
    finally:
        process.stop()
    rss = next(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("process_resident_memory_bytes"))
    peak = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
    children = [float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("boxwatch_detector_fit_process_peak_memory_bytes{")]
    return {"serve_rss_bytes": rss, "serve_peak_rss_bytes": peak,
            "serve_fit_process_peak_rss_bytes": max(children, default=None),
            "serve_listening_seconds": listening, "serve_ready_seconds": ready}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.detector", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=200, help="series per metric for the serve cycles")
    parser.add_argument("--days", type=float, default=14, help="days of 1-minute history (fit window)")
    parser.add_argument("--cycles", type=int, default=20, help="serve cycles to time")
    parser.add_argument("--serve-fit-days", type=float, default=2,
                        help="fit window of the models behind the serve cycles (keeps the set-up short)")
    parser.add_argument("--models", default="robust,seasonal,iforest")
    parser.add_argument("--fit-series", type=int, default=3, help="series fitted for the fit-time figure")
    parser.add_argument("--cold", action="store_true",
                        help="start the score calibrations empty (default: full, as at steady state)")
    parser.add_argument("--profile", help="write a cProfile of each model's timed cycles to FILE.<model>")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    results: dict = {"args": vars(args), "models": {}, "load_average_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="boxwatch-bench-") as tmp:
        workdir = Path(tmp)
        end = (int(time.time()) // STEP - 1) * STEP
        began = time.perf_counter()
        text = generate(args.series, args.days, end)
        results["generate_seconds"] = time.perf_counter() - began
        prom, results["promtool_seconds"] = start_prometheus(workdir, text)
        del text
        try:
            results["rss_start_bytes"] = rss_bytes()
            for model in models:
                print(f"# {model}", file=sys.stderr)
                figures = bench_fit(prom.url, workdir, model, args.days, args.fit_series, end)
                figures.update(bench_cycles(prom.url, workdir, model, min(args.serve_fit_days, args.days),
                                            args.cycles, end, args.cold, args.profile))
                figures["rss_bytes"] = rss_bytes()
                results["models"][model] = figures
            results["peak_rss_bytes"] = peak_rss_bytes()
            results.update(bench_serve_process(prom.url, workdir, models, min(args.serve_fit_days, args.days)))
            for figures in results["models"].values():
                figures["serve_rss_mib"] = results["serve_rss_bytes"] / 2**20
            for extra in EXTRA_BENCHES:
                results.update(extra(args))
        finally:
            prom.stop()
    results["load_average_end"] = os.getloadavg()[0]
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def report(results: dict) -> None:
    args = results["args"]
    print(f"history: {args['series']} series x 2 metrics, {args['days']:g} days at 1m "
          f"(generated {results['generate_seconds']:.1f}s, promtool {results['promtool_seconds']:.1f}s)")
    header = (f"{'model':<10}{'units':>7}{'fit s/series':>14}{'cycle ms':>10}{'prom ms':>9}"
              f"{'series/s':>10}{'own/prom':>10}{'RSS MiB':>9}")
    print(header)
    for model, f in results["models"].items():
        print(f"{model:<10}{f['units']:>7}{f['fit_seconds_per_series']:>14.3f}{f['cycle_seconds_median'] * 1000:>10.1f}"
              f"{f['prometheus_seconds_median'] * 1000:>9.1f}{f['series_scored_per_second']:>10.0f}"
              f"{f['detector_to_prometheus_ratio']:>10.1f}{f['rss_bytes'] / 2**20:>9.0f}")
    print(f"load average (1 min) {results['load_average_start']:.1f} at the start, "
          f"{results.get('load_average_end', math.nan):.1f} at the end")
    print(f"peak RSS of this process (history generation included) {results['peak_rss_bytes'] / 2**20:.0f} MiB")
    print(f"serve process with every query above fitted: RSS {results['serve_rss_bytes'] / 2**20:.0f} MiB "
          f"(peak {results['serve_peak_rss_bytes'] / 2**20:.0f} MiB), "
          f"listening after {results['serve_listening_seconds']:.1f}s, ready after {results['serve_ready_seconds']:.1f}s")
    if results["serve_fit_process_peak_rss_bytes"] is not None:
        print(f"its fit processes: peak RSS {results['serve_fit_process_peak_rss_bytes'] / 2**20:.0f} MiB (the largest)")
    for key, value in results.items():
        if key not in ("args", "models", "generate_seconds", "promtool_seconds", "rss_start_bytes",
                       "peak_rss_bytes", "serve_rss_bytes", "serve_listening_seconds", "serve_ready_seconds",
                       "serve_peak_rss_bytes", "serve_fit_process_peak_rss_bytes",
                       "load_average_start", "load_average_end"):
            print(f"{key}: {value}")


if __name__ == "__main__":
    sys.exit(main())
