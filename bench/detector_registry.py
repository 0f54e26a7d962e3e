"""Cost of the model registry and drift checks: import time, RSS, log+register time per model.

    python -m bench.detector_registry [--series 10] [--days 1] [--fits 3] [--json FILE]

Each import is timed in a fresh interpreter (``python -c``), so nothing is cached:

* the detector's serve path without MLflow or Evidently (what ``serve`` imports at start);
* the same plus ``mlflow`` (what the first fit or registry check adds, on its own thread);
* the same plus ``evidently`` (what the first drift check adds);

with the interpreter's peak RSS after each. Then, in this process, with an embedded SQLite
store in a temp dir: ``--fits`` fits of a robust bundle of ``--series`` series of ``--days``
of 1-minute data, each validated, logged as a run, registered and gated (the first one also
creates the database), the time to load a champion back, and one drift check (Evidently
report over the features of the same data; the first one includes importing evidently).

``registry_bench(args)`` returns the same figures for ``bench.detector``'s ``EXTRA_BENCHES``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SERVE_IMPORTS = "import detector.cli, detector.service, detector.api, detector.metrics, detector.registry, detector.drift"
PROBE = ("import resource, sys, time; t = time.perf_counter(); {imports}; "
         "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "
         "'mlflow' in sys.modules, 'evidently' in sys.modules)")


def import_cost(imports: str) -> dict:
    """Seconds to import ``imports`` in a fresh interpreter, its peak RSS, and which heavy modules loaded."""
    out = subprocess.run([sys.executable, "-c", PROBE.format(imports=imports)], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout.split()
    return {"seconds": float(out[0]), "peak_rss_bytes": int(out[1]), "mlflow_loaded": out[2] == "True",
            "evidently_loaded": out[3] == "True"}


def synthetic_units(series: int, days: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    index = pd.date_range(end=pd.Timestamp.now(tz="UTC").floor("min"), periods=int(days * 1440), freq="min")
    return {(("instance", f"host{i}"),): pd.DataFrame({"value": 50 + rng.normal(0, 1, len(index))}, index=index)
            for i in range(series)}


def registry_bench(args: argparse.Namespace) -> dict:
    from detector.config import validate
    from detector.drift import compare, features
    from detector.registry import Registry, register_fit
    from detector.scoring import fit_bundle
    from detector.store import FitResult

    results: dict = {
        "import_serve_path": import_cost(SERVE_IMPORTS),
        "import_serve_path_with_mlflow": import_cost(f"{SERVE_IMPORTS}; from detector.registry import import_mlflow; "
                                                     "import_mlflow(); import detector.mlflow_model"),
        "import_serve_path_with_mlflow_and_evidently": import_cost(
            f"{SERVE_IMPORTS}; from detector.registry import import_mlflow; import_mlflow(); "
            "import detector.mlflow_model; import evidently, evidently.metrics"),
    }
    units = synthetic_units(args.series, args.days)
    with tempfile.TemporaryDirectory() as state:
        config = validate({"schema_version": 1, "state_dir": state, "registry": {"enabled": True},
                           "queries": {"bench": {"expr": "bench", "step": "60s", "fit_window": f"{args.days}d"}}})
        registry = Registry(config)
        start = next(iter(units.values())).index[0].timestamp()
        end = next(iter(units.values())).index[-1].timestamp()
        began = time.perf_counter()
        registry.ping()
        results["create_store_seconds"] = time.perf_counter() - began
        per_fit = []
        for _ in range(args.fits):
            bundle = fit_bundle(config, "bench", units, start, end)
            began = time.perf_counter()
            decision, _ = register_fit(registry, FitResult(bundle, units))
            per_fit.append(time.perf_counter() - began)
        results["register_fit_seconds"] = per_fit
        results["register_fit_seconds_median"] = float(np.median(per_fit))
        began = time.perf_counter()
        registry.cache_dir = Path(state) / "fresh-cache"  # time a download, not a cache hit
        registry.load_champion("bench")
        results["load_champion_seconds"] = time.perf_counter() - began
        reference = features(units, False)
        current = reference.tail(60)
        sample = reference.sample(n=min(5000, len(reference)), random_state=0)
        for key in ("drift_check_first_seconds", "drift_check_seconds"):  # the first one imports evidently
            began = time.perf_counter()
            compare(sample, current)
            results[key] = time.perf_counter() - began
    results["bench_process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results["series"], results["days"] = args.series, args.days
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.detector_registry", description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=10, help="series in the bundle that is logged")
    parser.add_argument("--days", type=float, default=1.0, help="days of 1-minute data per series")
    parser.add_argument("--fits", type=int, default=3, help="fits to log, register and gate")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    results = registry_bench(args)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
