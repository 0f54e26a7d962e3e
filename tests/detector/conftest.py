"""Fixtures for the detector: Prometheus with generated history, detector processes over HTTP."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from tests.harness import Process, backfill, free_port, openmetrics, python_module, wait_http

STEP = 60


def wave(start: float, end: float, step: float = STEP, base: float = 50.0, amplitude: float = 5.0,
         noise: float = 1.0, seed: int = 0) -> list[tuple[float, float]]:
    """A daily sine with noise: ``[(ts, value), ...]`` on ``start..end`` by ``step``."""
    rng = np.random.default_rng(seed)
    stamps = np.arange(start, end + 1e-9, step)
    values = base + amplitude * np.sin(2 * math.pi * stamps / 86400) + rng.normal(0, noise, len(stamps))
    return [(float(t), float(round(v, 3))) for t, v in zip(stamps, values, strict=True)]


@pytest.fixture
def history_prometheus(start_prometheus, tmp_path):
    """Factory: ``history_prometheus(series, **prometheus_kwargs)`` -> Prometheus with ``series`` loaded.

    ``series`` is what ``tests.harness.openmetrics`` takes. History is written with promtool
    before Prometheus starts on the data dir.
    """
    count = [0]

    def start(series, types=None, **kwargs):
        data = tmp_path / f"history-{count[0]}" / "data"
        count[0] += 1
        backfill(data, openmetrics(series, types))
        return start_prometheus(data_dir=data, **kwargs)

    return start


class DetectorProcess(Process):
    """``python -m detector serve`` on a free port, with its config file in a temp dir."""

    def __init__(self, workdir: Path, config: dict, args: tuple[str, ...] = (), port: int | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "detector.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        argv = python_module("detector", "serve", "--config", str(self.config_path),
                             "--web.listen-address", f"127.0.0.1:{self.port}", "--log.level", "debug", *args)
        super().__init__(argv, workdir / f"detector-{self.port}.log")
        try:
            wait_http(f"{self.url}/healthz", 30, self.proc)
        except Exception as err:
            self.stop()
            raise RuntimeError(f"{err}\n{self.output()[-3000:]}") from err

    def metrics(self) -> str:
        return requests.get(f"{self.url}/metrics", timeout=10).text

    def sample(self, name: str, **labels: str) -> list[float]:
        """Values of ``name`` whose labels include ``labels``, from the text exposition."""
        from prometheus_client.parser import text_string_to_metric_families

        values = []
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    values.append(sample.value)
        return values

    def samples(self, name: str) -> list:
        from prometheus_client.parser import text_string_to_metric_families

        return [s for f in text_string_to_metric_families(self.metrics()) for s in f.samples if s.name == name]

    def wait_for(self, check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"detector exited with {self.proc.returncode}:\n{self.log_tail(3000)}")
            if check():
                return
            time.sleep(0.2)
        raise AssertionError(f"{what} not reached within {timeout}s; log:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the log without the debug lines of HTTP requests (a waiting test makes one every 0.2 s)."""
        lines = [line for line in self.output().splitlines() if 'msg="http request"' not in line]
        return "\n".join(lines)[-chars:]

    def signal(self, signum: int = signal.SIGHUP) -> None:
        self.proc.send_signal(signum)


@pytest.fixture
def start_detector(tmp_path):
    """Factory: ``start_detector(config_dict, *args)`` -> running detector; stopped at teardown."""
    started: list[DetectorProcess] = []

    def start(config: dict, *args: str, name: str | None = None, port: int | None = None) -> DetectorProcess:
        detector = DetectorProcess(tmp_path / (name or f"detector-{len(started)}"), config, args, port)
        started.append(detector)
        return detector

    yield start
    for detector in started:
        detector.stop()


def detector_config(prometheus_url: str, state_dir: Path, queries: dict, **extra) -> dict:
    """A minimal valid configuration dict with fast retries (tests should not wait on backoff)."""
    return {
        "schema_version": 1,
        "reader": {"url": prometheus_url, "timeout": "5s", "retries": 1, "backoff": "100ms",
                   "catch_up_max": "2m"},
        "queries": queries,
        "state_dir": str(state_dir),
        **extra,
    }


@contextmanager
def mlflow_server(root: Path) -> Iterator[tuple[str, Path]]:
    """A real ``mlflow server`` on a loopback port (SQLite backend, artifacts proxied to ``root``):
    yields its URL and the folder where it keeps artifacts; stopped with its workers at exit."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    artifacts = root / "server-artifacts"
    log = open(root / "mlflow-server.log", "wb")  # noqa: SIM115 - closed below
    # Its own session, so the stop reaches the server's workers too (uvicorn, job runners).
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
             "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 90, server)
        yield f"http://127.0.0.1:{port}", artifacts
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
