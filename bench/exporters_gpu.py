"""Benchmark fixture: a GPU exporter process over a fake NVML with ``n_gpus`` GPUs.

There is no GPU on the machines this runs on in CI, so the stand-in libnvidia-ml.so.1 of the
tests (tests/exporters/fake_nvml) answers for the driver: the figures measure the exporter
(nvidia-ml-py, snapshot, exposition, HTTP), not NVIDIA's library.

``start(n_gpus)`` is the interface ``bench/exporters.py`` drives; every exporter benchmark
module has the same shape: a context manager yielding ``(metrics_url, pid)``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._running import exporter_process  # noqa: E402 - needs the repository root on sys.path
from tests.exporters import fake_nvml  # noqa: E402
from tests.harness import free_port  # noqa: E402

DESCRIPTION = "fake libnvidia-ml.so.1 (tests/exporters/fake_nvml): no GPU here, measures the exporter only"
PROCESSES_PER_GPU = 4


@contextmanager
def start(n_gpus: int, timeout: float = 30.0) -> Iterator[tuple[str, int]]:
    """Run ``python -m exporters gpu`` over ``n_gpus`` fake GPUs; yield ``(metrics_url, pid)``."""
    with tempfile.TemporaryDirectory(prefix="boxwatch-bench-gpu-") as tmp:
        lib_dir = fake_nvml.build(Path(tmp) / "lib")
        port = free_port()
        url = f"http://127.0.0.1:{port}/metrics"
        # Compute processes for the process-memory path: this benchmark's own PID, named by /proc.
        procs = ",".join(f"{gpu}:{os.getpid()}:{(k + 1) << 28}"
                         for gpu in range(n_gpus) for k in range(PROCESSES_PER_GPU))
        env = {**os.environ, "LD_LIBRARY_PATH": str(lib_dir), "FAKE_NVML_GPUS": str(n_gpus),
               "FAKE_NVML_PROCS": procs}
        with exporter_process(["gpu", f"--web.listen-address=127.0.0.1:{port}"],
                              Path(tmp) / "exporter.log", env) as proc:
            _wait_ready(url, proc, timeout)
            yield url, proc.pid

def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"GPU exporter exited with {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if b'boxwatch_gpu_up{gpu="0"' in response.read():
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"GPU exporter at {url} not ready within {timeout}s")
