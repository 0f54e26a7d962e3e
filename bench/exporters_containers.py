"""Benchmark fixture: a containers exporter in front of a private dockerd running N idle containers.

``start(n_containers)`` is the interface ``bench/exporters.py`` drives (a context manager
yielding ``(metrics_url, pid)``). It starts its own ``dockerd`` (tests/dockerd.py: own socket
and data root, no bridge, no iptables; needs root), imports the busybox image, runs
``n_containers`` idle busybox containers (``sleep``), starts ``python -m exporters containers``
with its default poll settings and yields once the exporter's cache holds stats for every
container. Everything is removed on exit.

    sudo python -m bench.exporters_containers 200     # prints the time one stats refresh takes
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench._running import exporter_process  # noqa: E402
from tests.dockerd import BUSYBOX_IMAGE, PrivateDockerd  # noqa: E402
from tests.harness import free_port  # noqa: E402

DESCRIPTION = "private dockerd, idle busybox containers, default --docker.* flags (poll every 5 s)"


@contextmanager
def start(n_containers: int, timeout: float = 600.0) -> Iterator[tuple[str, int]]:
    """Run the exporter against ``n_containers`` idle containers; yield ``(metrics_url, pid)``."""
    dockerd = _binary("dockerd", "/usr/sbin/dockerd")
    busybox = _binary("busybox", "/bin/busybox")
    if os.geteuid() != 0:
        raise PermissionError("a private dockerd needs root")
    engine = PrivateDockerd(dockerd, busybox)
    try:
        engine.start()
        engine.import_busybox()
        _run_idle_containers(engine, n_containers)
        port = free_port()
        url = f"http://127.0.0.1:{port}/metrics"
        with exporter_process(["containers", f"--docker.host={engine.url}", f"--web.listen-address=127.0.0.1:{port}"],
                              engine.root / "exporter.log") as proc:
            _wait_for_stats(url, proc, n_containers, timeout)
            yield url, proc.pid
    finally:
        engine.cleanup()


def _binary(name: str, fallback: str) -> str:
    found = shutil.which(name) or (fallback if os.access(fallback, os.X_OK) else None)
    if not found:
        raise FileNotFoundError(f"{name} not found (Debian: apt-get install docker.io busybox-static)")
    return found


def _run_idle_containers(engine: PrivateDockerd, count: int) -> None:
    with closing(engine.client()) as client:
        def run(index: int) -> None:
            client.containers.run(BUSYBOX_IMAGE, ["sleep", "1000000"], name=f"idle-{index:04d}", detach=True,
                                  network_mode="none", init=True)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(run, range(count)))


def scrape_values(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values.setdefault(sample.name, []).append(sample)
    return values


def _wait_for_stats(url: str, proc: subprocess.Popen, n_containers: int, timeout: float) -> dict[str, list]:
    """Wait until one refresh has cached stats for all ``n_containers``; return that scrape."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exporter exited with {proc.returncode}")
        try:
            values = scrape_values(url)
        except OSError:
            values = {}
        if len(values.get("boxwatch_container_stats_age_seconds", [])) >= n_containers:
            return values
        time.sleep(0.5)
    raise TimeoutError(f"the exporter did not cache stats of {n_containers} containers within {timeout}s")


def main() -> int:
    n_containers = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    with start(n_containers) as (url, pid):
        time.sleep(12)  # let a couple of refreshes run at the default 5 s interval
        values = scrape_values(url)
        refresh = values["boxwatch_docker_refresh_duration_seconds"][0].value
        collect = values["boxwatch_exporter_scrape_collector_duration_seconds"][0].value
        rss_kib = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
        print(f"{n_containers} containers: stats refresh {refresh:.2f} s, collector {collect * 1000:.2f} ms "
              f"per scrape, exporter RSS {rss_kib / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
