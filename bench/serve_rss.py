"""Resident memory of a real ``serve`` process with the registry and drift off, and on.

    python -m bench.serve_rss --prometheus.url URL [--config detector/boxwatch-detector.example.yml]
                              [--timeout 600] [--json FILE]

Starts ``boxwatch-detector serve`` twice on the same configuration against a Prometheus that
holds history for its queries (``boxwatch-stack up --demo --only prometheus --only demo`` gives
one for the example configuration), each with an empty state dir of its own:

* ``registry.enabled=false drift.enabled=false``: neither MLflow nor Evidently is imported;
* as configured with both on (the example's default): every fit is logged and registered in the
  embedded SQLite store, and the first drift check imports Evidently.

Each run waits until every query serves a fitted model (and, with the registry on, a registered
version; with drift on, it then runs one drift check with ``POST /api/v1/drift/check`` instead of
waiting ``drift.interval``), then reads the process' ``VmRSS`` and ``VmHWM`` (peak) from ``/proc``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _samples(url: str) -> list:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def _ready(samples: list, registry: bool) -> bool:
    by_name: dict[str, list] = {}
    for sample in samples:
        by_name.setdefault(sample.name, []).append(sample)
    if [s.value for s in by_name.get("boxwatch_detector_models_ready", [])] != [1.0]:
        return False
    return not registry or all(s.labels.get("version") != "local" for s in by_name.get("boxwatch_model_info", []))


def _memory(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def measure(config: Path, prometheus: str, registry: bool, drift: bool, timeout: float) -> dict:
    port = _free_port()
    with tempfile.TemporaryDirectory() as state:
        argv = [sys.executable, "-m", "detector", "serve", f"--config={config}", f"--prometheus.url={prometheus}",
                f"--web.listen-address=127.0.0.1:{port}", f"--set=state_dir={state}",
                f"--set=registry.enabled={str(registry).lower()}", f"--set=drift.enabled={str(drift).lower()}"]
        began = time.monotonic()
        proc = subprocess.Popen(argv, cwd=state, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"serve exited with {proc.returncode}")
                if time.monotonic() - began > timeout:
                    raise TimeoutError("serve did not get ready")
                try:
                    if _ready(_samples(url), registry):
                        break
                except requests.RequestException:
                    pass
                time.sleep(1.0)
            seconds = time.monotonic() - began
            drift_seconds = None
            if drift:
                checked = time.monotonic()
                requests.post(f"{url}/api/v1/drift/check", timeout=timeout).raise_for_status()
                drift_seconds = round(time.monotonic() - checked, 1)
            memory = _memory(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
    return {"registry": registry, "drift": drift, "ready_seconds": round(seconds, 1), "drift_check_seconds": drift_seconds,
            "rss_bytes": memory["VmRSS"], "peak_rss_bytes": memory["VmHWM"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus.url", dest="prometheus", required=True)
    parser.add_argument("--config", type=Path, default=REPO / "detector" / "boxwatch-detector.example.yml")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = [measure(args.config, args.prometheus, registry, drift, args.timeout)
               for registry, drift in ((False, False), (True, False), (True, True))]
    for row in results:
        check = f"  first drift check {row['drift_check_seconds']} s" if row["drift"] else ""
        print(f"registry={row['registry']!s:5} drift={row['drift']!s:5} ready {row['ready_seconds']:6.1f} s  "
              f"RSS {row['rss_bytes'] / 2**20:6.0f} MiB  peak {row['peak_rss_bytes'] / 2**20:6.0f} MiB{check}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
