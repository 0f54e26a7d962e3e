"""`boxwatch-stack`: the native supervisor, run as a user runs it, against real binaries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from stack.runtime import DEFAULT_PORTS
from stack.supervisor import pid_alive
from tests.harness import free_port, python_module, require_binary

pytestmark = pytest.mark.slow


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _state(state_dir: Path) -> dict | None:
    try:
        return json.loads((state_dir / "stack.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class Stack:
    def __init__(self, tmp_path: Path, components: list[str], extra: list[str] = ()):
        require_binary("prometheus", "/usr/bin/prometheus")
        require_binary("prometheus-alertmanager", "/usr/bin/prometheus-alertmanager")
        self.state_dir = tmp_path / "state"
        self.ports = {name: free_port() for name in DEFAULT_PORTS}
        argv = python_module("stack", "--state-dir", str(self.state_dir), "up")
        argv += [f"--port={k}={v}" for k, v in self.ports.items()]
        argv += [f"--only={c}" for c in components] + list(extra)
        self.log = open(tmp_path / "stack.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.components = components

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(python_module("stack", "--state-dir", str(self.state_dir), *args),
                              capture_output=True, text=True, timeout=timeout)

    def wait_healthy(self, timeout: float = 60) -> dict:
        def healthy():
            state = _state(self.state_dir)
            if state and all(c["healthy"] for c in state["children"].values()):
                return state
            return None
        return _wait(healthy, timeout, "every child healthy")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(30)
        self.log.close()


@pytest.fixture
def core_stack(tmp_path):
    stack = Stack(tmp_path, ["prometheus", "alertmanager", "webhook"])
    yield stack
    stack.stop()


@pytest.fixture
def full_stack(tmp_path):
    require_binary("prometheus-node-exporter", "/usr/bin/prometheus-node-exporter")
    stack = Stack(tmp_path, ["prometheus", "alertmanager", "webhook", "node", "gpu", "containers", "journald",
                             "detector"])
    yield stack
    stack.stop()


def test_up_status_targets_and_ctrl_c_leaves_nothing_behind(full_stack):
    core_stack = full_stack
    state = core_stack.wait_healthy(timeout=120)
    pids = [c["pid"] for c in state["children"].values()]
    assert all(pids)

    status = core_stack.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    for name in core_stack.components:
        assert name in status.stdout
    assert "unhealthy" not in status.stdout

    # Prometheus runs the generated config: the jobs of the running components are its targets,
    # and it scrapes itself and Alertmanager successfully.
    prom = f"http://127.0.0.1:{core_stack.ports['prometheus']}"
    def targets_up():
        active = requests.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in active}
    jobs = _wait(lambda: (t := targets_up()) and len(t) == 7 and all(h == "up" for h in t.values()) and t,
                 90, "every target up")
    assert set(jobs) == {"prometheus", "alertmanager", "boxwatch-node", "boxwatch-gpu", "boxwatch-containers",
                         "boxwatch-journald", "boxwatch-detector"}
    # node_exporter runs the stack's collectors: the host's memory and boot time are in Prometheus.
    assert requests.get(f"{prom}/api/v1/query", params={"query": 'node_boot_time_seconds{job="boxwatch-node"}'},
                        timeout=5).json()["data"]["result"]
    assert f"http://127.0.0.1:{core_stack.ports['prometheus']}" in core_stack.output()

    # Alertmanager was pointed at the stack's own webhook sink.
    am_config = (core_stack.state_dir / "alertmanager" / "alertmanager.yml").read_text()
    assert f"http://127.0.0.1:{core_stack.ports['webhook']}/alert" in am_config

    core_stack.proc.send_signal(signal.SIGINT)
    assert core_stack.proc.wait(30) == 0
    for pid in pids:
        _wait(lambda pid=pid: not pid_alive(pid), 10, f"pid {pid} gone")
    assert not (core_stack.state_dir / "stack.json").exists()


def test_crashed_child_is_restarted_with_backoff(core_stack):
    state = core_stack.wait_healthy()
    old_pid = state["children"]["webhook"]["pid"]
    os.kill(old_pid, signal.SIGKILL)

    def restarted():
        child = (_state(core_stack.state_dir) or {}).get("children", {}).get("webhook", {})
        return child if child.get("restarts") == 1 and child.get("pid") not in (None, old_pid) else None
    child = _wait(restarted, 30, "webhook restarted")
    assert child["last_exit"] == -signal.SIGKILL
    core_stack.wait_healthy()
    assert "restarting after backoff" in core_stack.output()


def test_down_from_another_shell(core_stack):
    state = core_stack.wait_healthy()
    down = core_stack.cli("down")
    assert down.returncode == 0, down.stderr
    assert core_stack.proc.wait(30) == 0
    for child in state["children"].values():
        _wait(lambda pid=child["pid"]: not pid_alive(pid), 10, "child gone")
    assert core_stack.cli("status").returncode == 3


def test_children_die_with_a_killed_supervisor(core_stack):
    state = core_stack.wait_healthy()
    core_stack.proc.kill()
    core_stack.proc.wait(10)
    for child in state["children"].values():
        _wait(lambda pid=child["pid"]: not pid_alive(pid), 15, f"{child} gone")


def test_second_stack_on_the_same_state_dir_is_refused(core_stack):
    core_stack.wait_healthy()
    second = core_stack.cli("up", "--only=webhook", f"--port=webhook={free_port()}", timeout=30)
    assert second.returncode == 1
    assert "already runs" in second.stderr


def test_bad_port_flag_is_a_clear_error(tmp_path):
    result = subprocess.run(python_module("stack", "--state-dir", str(tmp_path), "up", "--port=nothing=1"),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "expected NAME=PORT" in result.stderr


def test_demo_anomaly_score_crosses_1_and_the_alert_reaches_the_webhook(tmp_path):
    """`boxwatch-stack up --demo`, as a newcomer runs it: history loaded, detector trained on it,
    the incident scored above 1, AnomalyScoreHigh fired by the shipped rules and delivered by
    the shipped Alertmanager routes to the stack's webhook sink."""
    stack = Stack(tmp_path, ["prometheus", "alertmanager", "webhook", "demo", "detector"], ["--demo"])
    try:
        stack.wait_healthy(timeout=240)
        prom = f"http://127.0.0.1:{stack.ports['prometheus']}"
        webhook = f"http://127.0.0.1:{stack.ports['webhook']}/alerts"

        def query(expr):
            return requests.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10).json()["data"]["result"]

        # The overheating GPU of the scenario is scored outside its band, the healthy one is not.
        hot = _wait(lambda: query('boxwatch_anomaly_score{query="gpu_temperature", gpu="0"} > 1'), 180,
                    "GPU 0's temperature scored above 1")
        assert hot[0]["metric"]["boxwatch_demo"] == "1"
        assert not query('boxwatch_anomaly_score{query="gpu_temperature", gpu="1"} > 1')

        def anomaly_alerts():
            notes = requests.get(webhook, timeout=10).json()
            return [a for n in notes for a in n["alerts"] if a["labels"]["alertname"] == "AnomalyScoreHigh"]
        alerts = _wait(anomaly_alerts, 420, "AnomalyScoreHigh delivered to the webhook")
        assert all(a["status"] == "firing" and a["labels"]["severity"] == "warning" for a in alerts)
        assert "runbook_url" in alerts[0]["annotations"]
        assert "AnomalyScoreHigh" in (stack.state_dir / "logs" / "webhook.log").read_text()

        # The overheating GPU's alert names its causes: the Xid 79 (joined through pci_bus_id) and the
        # thermal throttling, found by the detector around the anomaly (docs/causes.md).
        def explained():
            return [a for a in anomaly_alerts() if a["labels"].get("gpu") == "0"
                    and "Xid 79 gpu_fallen_off_bus" in a["annotations"]["description"]
                    and "thermal_slowdown" in a["annotations"]["description"]]
        hinted = _wait(explained, 300, "gpu 0's AnomalyScoreHigh with its causes delivered to the webhook")
        assert "Likely causes: Xid 79 gpu_fallen_off_bus" in hinted[0]["annotations"]["description"]
        detector = f"http://127.0.0.1:{stack.ports['detector']}"
        records = requests.get(f"{detector}/api/v1/anomalies", timeout=10).json()["data"]
        causes = {c["cause"] for r in records if r["labels"].get("gpu") == "0" for c in r["causes"]}
        assert "Xid 79 gpu_fallen_off_bus" in causes
    finally:
        stack.stop()
