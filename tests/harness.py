"""Real processes for the tests: Prometheus, Alertmanager, history backfill, a webhook sink.

Everything listens on loopback ports picked free at start and lives in a temp dir.
Under ``CI=true`` a missing binary fails the test; elsewhere it skips it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
import requests
import yaml

from boxwatch.exposition import label_text

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCH = REPO.parent / "shared" / "bench"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str, *candidates: str) -> str:
    """Path of a binary on PATH or at one of ``candidates``; fail in CI, skip elsewhere."""
    for option in (shutil.which(name), *candidates):
        if option and os.access(option, os.X_OK):
            return option
    message = f"{name} not found (install it: see scripts/setup.sh)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_path(path: Path, what: str) -> Path:
    """``path`` if it exists; skip cleanly (even in CI) when optional shared data is absent."""
    if not path.exists():
        pytest.skip(f"{what} not found at {path}")
    return path


def freeze(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP ``pid`` and wait until every one of its threads is stopped: ``kill`` only queues the signal,
    and a thread running on another core could still answer a request sent right after it."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:  # "pid (comm) state ...": the state follows the last ')'
                states.append((task / "stat").read_text().rpartition(")")[2].split()[0])
            except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
                continue
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not stop within {timeout:g} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``url`` answers 200; raise with the process' output if it died first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


class Process:
    """A child process with its output in a log file, stopped with SIGTERM then SIGKILL."""

    def __init__(self, argv: list[str], log_path: Path, env: Mapping[str, str] | None = None, cwd=None):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Prometheus(Process):
    """A real Prometheus on a free loopback port.

    ``config`` is the prometheus.yml as a dict; ``rule_files`` are copied beside it.
    """

    def __init__(self, workdir: Path, config: dict | None = None, rule_files: Iterable[Path] = (),
                 data_dir: Path | None = None, extra_args: Iterable[str] = ()):
        binary = require_binary("prometheus", "/usr/bin/prometheus")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir or workdir / "data"
        config = dict(config or {"global": {"scrape_interval": "15s"}})
        rules = []
        for rule_file in rule_files:
            target = workdir / Path(rule_file).name
            shutil.copy(rule_file, target)
            rules.append(str(target))
        if rules:
            config["rule_files"] = rules
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        argv = [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=3650d",
            "--web.enable-lifecycle",
            "--web.enable-admin-api",
            *extra_args,
        ]
        super().__init__(argv, workdir / "prometheus.log")
        try:
            wait_http(f"{self.url}/-/ready", 30, self.proc)
        except Exception as err:
            self.stop()
            raise RuntimeError(f"{err}\n{self.output()[-3000:]}") from err

    def api(self, path: str, **params) -> dict:
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, time: float | None = None) -> list[dict]:
        params = {"query": expr} | ({"time": time} if time is not None else {})
        return self.api("query", **params)["result"]

    def query_range(self, expr: str, start: float, end: float, step: str | float = "60s") -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def reload(self) -> None:
        requests.post(f"{self.url}/-/reload", timeout=10).raise_for_status()

    def wait_for(self, expr: str, predicate=bool, timeout: float = 60.0, interval: float = 0.5) -> list[dict]:
        """Poll an instant query until ``predicate(result)`` holds; return the result."""
        deadline = time.monotonic() + timeout
        result: list[dict] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(interval)
        raise AssertionError(f"{expr!r} did not satisfy the predicate within {timeout}s; last: {result}")


class Alertmanager(Process):
    """A real Alertmanager on a free loopback port, clustering off."""

    def __init__(self, workdir: Path, config: dict):
        binary = require_binary("prometheus-alertmanager", "/usr/bin/prometheus-alertmanager",
                                shutil.which("alertmanager") or "")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        argv = [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.path={workdir / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
        ]
        super().__init__(argv, workdir / "alertmanager.log")
        try:
            wait_http(f"{self.url}/-/ready", 30, self.proc)
        except Exception as err:
            self.stop()
            raise RuntimeError(f"{err}\n{self.output()[-3000:]}") from err

    def alerts(self) -> list[dict]:
        return requests.get(f"{self.url}/api/v2/alerts", timeout=10).json()


# --------------------------------------------------------------------------- history


def openmetrics(series: Mapping[tuple[str, tuple[tuple[str, str], ...]], Iterable[tuple[float, float]]],
                types: Mapping[str, str] | None = None) -> str:
    """OpenMetrics text for ``promtool tsdb create-blocks-from openmetrics``.

    ``series`` maps ``(metric_name, ((label, value), ...))`` to ``(unix_seconds, value)`` samples.
    ``types`` optionally maps a metric name to its type (gauge by default). Samples of each
    metric family are written together, as the format requires.
    """
    types = types or {}
    by_name: dict[str, list] = {}
    for (name, labels), samples in series.items():
        by_name.setdefault(name, []).append((labels, samples))
    lines: list[str] = []
    for name, members in by_name.items():
        kind = types.get(name, "gauge")
        family = name.removesuffix("_total") if kind == "counter" else name
        lines.append(f"# TYPE {family} {kind}")
        for labels, samples in members:
            text = label_text(labels)
            selector = f"{name}{{{text}}}" if text else name
            lines.extend(f"{selector} {value!r} {ts:.3f}" for ts, value in samples)
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def backfill(data_dir: Path, text: str, max_block_duration: str = "24h") -> None:
    """Write OpenMetrics ``text`` into TSDB blocks under ``data_dir`` with promtool."""
    promtool = require_binary("promtool", "/usr/bin/promtool")
    data_dir.mkdir(parents=True, exist_ok=True)
    source = data_dir.parent / f"{data_dir.name}-backfill.om"
    source.write_text(text)
    result = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics",
         f"--max-block-duration={max_block_duration}", str(source), str(data_dir)],
        capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"promtool backfill failed:\n{result.stdout}\n{result.stderr}")


def python_module(module: str, *args: str) -> list[str]:
    """argv that runs ``python -m module args`` with this interpreter (works from any checkout)."""
    return [sys.executable, "-m", module, *args]
