"""A small process supervisor: start children, watch their health, restart with backoff, stop cleanly.

Children run in their own session (so a Ctrl-C in the terminal reaches the supervisor only,
which then stops them in reverse start order) and with a parent-death signal, so that even a
supervisor killed with SIGKILL leaves no orphans behind. The supervisor's view of the world is
written to ``<state>/stack.json`` for ``boxwatch-stack status`` and ``down``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from boxwatch.backoff import Backoff
from boxwatch.files import atomic_write
from boxwatch.log import kv

log = logging.getLogger("boxwatch.stack")

PR_SET_PDEATHSIG = 1
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0
STABLE_AFTER_S = 30.0  # a child that ran this long without exiting gets its backoff reset
HEALTH_EVERY_S = 5.0
STOP_TIMEOUT_S = 15.0


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the supervisor dies, however it dies."""
    # Not glibc/Linux: no parent-death signal; Supervisor.stop_all still stops the children.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One supervised process. ``health_url`` answers 200 when the child is healthy."""

    name: str
    argv: list[str]
    url: str
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    # runtime state
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: Backoff = field(default_factory=lambda: Backoff(BACKOFF_MAX_S, BACKOFF_START_S))
    next_start: float = 0.0
    last_exit: int | None = None
    healthy: bool | None = None

    def state(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            return "running"
        return "backoff" if self.next_start else "stopped"

    def to_json(self) -> dict:
        return {
            "pid": self.proc.pid if self.proc is not None and self.proc.poll() is None else None,
            "state": self.state(),
            "healthy": self.healthy,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "url": self.url,
            "health_url": self.health_url,
            "argv": self.argv,
        }


class Supervisor:
    def __init__(self, children: list[Child], state_dir: Path, log_dir: Path):
        self.children = children
        self.state_dir = state_dir
        self.log_dir = log_dir
        self._stop = threading.Event()
        self._state_file = state_dir / "stack.json"

    # ------------------------------------------------------------------ lifecycle

    def start_child(self, child: Child) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{child.name}.log", "ab") as out:
            child.proc = subprocess.Popen(
                child.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **child.env},
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child.started_at = time.monotonic()
        child.next_start = 0.0
        child.healthy = None
        log.info("started", extra=kv(child=child.name, pid=child.proc.pid))

    def _reap(self, child: Child, now: float) -> None:
        """Schedule a restart with exponential backoff for a child that exited."""
        assert child.proc is not None
        child.last_exit = child.proc.returncode
        child.proc = None
        child.healthy = False
        if now - child.started_at >= STABLE_AFTER_S:
            child.backoff.reset()
        delay = child.backoff.next_delay()
        child.next_start = now + delay
        log.warning(
            "child exited; restarting after backoff",
            extra=kv(child=child.name, exit_code=child.last_exit, backoff_seconds=delay,
                     log=self.log_dir / f"{child.name}.log"),
        )

    def check_health(self, child: Child) -> None:
        was = child.healthy
        try:
            child.healthy = requests.get(child.health_url, timeout=2).status_code == 200
        except requests.RequestException:
            child.healthy = False
        if was is not child.healthy and (was is not None or child.healthy):
            log.info("health changed", extra=kv(child=child.name, healthy=child.healthy))

    def run(self) -> None:
        """Start every child, then supervise until ``request_stop``; then stop all of them."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            for child in self.children:
                self.start_child(child)
            next_health = 0.0
            while not self._stop.is_set():
                now = time.monotonic()
                for child in self.children:
                    if child.proc is not None and child.proc.poll() is not None:
                        self._reap(child, now)
                    elif child.proc is None and child.next_start and now >= child.next_start:
                        child.restarts += 1
                        self.start_child(child)
                if now >= next_health:
                    for child in self.children:
                        if child.proc is not None:
                            self.check_health(child)
                    settled = all(c.healthy for c in self.children if c.proc is not None)
                    next_health = now + (HEALTH_EVERY_S if settled else 1.0)
                self.write_state()
                self._stop.wait(0.5)
        finally:
            self.stop_all()
            self._state_file.unlink(missing_ok=True)

    def request_stop(self) -> None:
        self._stop.set()

    def stop_all(self) -> None:
        """SIGTERM every child in reverse start order, SIGKILL what is left after a timeout."""
        running = [c for c in reversed(self.children) if c.proc is not None and c.proc.poll() is None]
        for child in running:
            child.proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in running:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("child did not stop in time; killing", extra=kv(child=child.name))
                child.proc.kill()
                child.proc.wait()
            log.info("stopped", extra=kv(child=child.name, exit_code=child.proc.returncode))

    # ------------------------------------------------------------------ state file

    def write_state(self) -> None:
        state = {
            "supervisor_pid": os.getpid(),
            "updated": time.time(),
            "children": {c.name: c.to_json() for c in self.children},
        }
        atomic_write(self._state_file, json.dumps(state, indent=2), durable=False)


def read_state(state_dir: Path) -> dict | None:
    """The running supervisor's state, or None when none runs for ``state_dir``."""
    path = state_dir / "stack.json"
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not pid_alive(state.get("supervisor_pid", -1)):
        return None
    return state


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still "exists": look at its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True
