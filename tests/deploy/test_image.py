"""Build the boxwatch image for real and run programs from it, on a private Docker engine.

No registry is reachable from the test machines, so:
- the base image is Debian bookworm made with ``debootstrap`` (its python3 is 3.11, like the
  default ``python:3.11-slim-bookworm``; it carries gcc and the systemd headers, so the builder
  skips apt) and ``docker import``ed, through the Dockerfile's ``BASE_IMAGE`` build argument;
- pip inside ``docker build`` installs from a wheelhouse that this test downloads with pip and
  serves on loopback (``PIP_NO_INDEX=1``, ``PIP_FIND_LINKS=http://127.0.0.1:PORT/``; the build runs
  with ``--network host`` and reaches nothing else).
Both are cached in ``$BOXWATCH_TEST_CACHE`` (default ``~/.cache/boxwatch-tests``). The engine keeps
its data in a tmpfs (``BOXWATCH_TEST_DOCKER_TMPFS``, default ``10g``; ``off`` for the disk): removing
the image layers from a busy disk took 45 s here, unmounting takes none.

The full image is built (``EXTRAS=all``; ``BOXWATCH_TEST_IMAGE_EXTRAS=gpu,containers,journald`` for the
exporters' image). Measured on a shared 2-core machine: debootstrap 70 s and wheel download 19 s once,
import 5 s, build 107-192 s with 3.2 GB of engine data (the exporters' image: 18 s, 1.5 GB).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import IN_CI, REPO, free_port, require_binary, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.docker]

CACHE = Path(os.environ.get("BOXWATCH_TEST_CACHE", Path.home() / ".cache" / "boxwatch-tests"))
MIRROR = os.environ.get("BOXWATCH_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = "python3,python3-venv,python3-dev,gcc,libc6-dev,libsystemd-dev,pkg-config"
BASE_IMAGE = "boxwatch-test-base:bookworm"
IMAGE = "boxwatch:test"
EXTRAS = os.environ.get("BOXWATCH_TEST_IMAGE_EXTRAS", "all")  # gpu,containers,journald: the exporters' image
UID = "10001"
# Memory for the engine's data ("off": use the disk); see the module docstring for what it takes.
TMPFS_SIZE = os.environ.get("BOXWATCH_TEST_DOCKER_TMPFS", "10g")


def _need(condition: bool, message: str) -> None:
    if not condition:
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def _run(argv: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:4])} ... exited {result.returncode}:\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def _base_tarball() -> Path:
    """A Debian bookworm rootfs with python3 and the build tools, as a tar (cached)."""
    tarball = CACHE / f"debian-bookworm-{hashlib.sha256(BASE_PACKAGES.encode()).hexdigest()[:12]}.tar"
    if tarball.exists():
        return tarball
    debootstrap = require_binary("debootstrap", "/usr/sbin/debootstrap")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bw-rootfs-", dir=CACHE) as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run([debootstrap, "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(rootfs), MIRROR],
             timeout=900)
        partial = Path(tmp) / "rootfs.tar"
        _run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."])
        partial.rename(tarball)
    return tarball


def _wheelhouse() -> Path:
    """Wheels (and sdists, e.g. systemd-python) of the image's requirements (cached)."""
    requirements = _run([sys.executable, str(REPO / "deploy" / "docker" / "requirements.py"),
                         str(REPO / "pyproject.toml"), EXTRAS]).stdout
    constraints = REPO / "constraints.txt"
    key = hashlib.sha256((requirements + (constraints.read_text() if constraints.exists() else "")).encode())
    wheelhouse = CACHE / f"wheelhouse-py{sys.version_info[0]}{sys.version_info[1]}-{key.hexdigest()[:12]}"
    if wheelhouse.exists():
        return wheelhouse
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bw-wheels-", dir=CACHE) as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(requirements)
        download = Path(tmp) / "wheels"
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(download), "-r", str(req),
                "setuptools>=68", "wheel"]
        if constraints.exists():
            argv += ["-c", str(constraints)]
        _run(argv, timeout=900)
        download.rename(wheelhouse)
    return wheelhouse


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # pip's requests are not the test's output
        pass


class PrivateDockerd:
    """A dockerd of the test's own: socket, data and exec roots in a temp dir, no bridge, no iptables."""

    def __init__(self, dockerd: str, docker: str):
        self.docker_binary = docker
        self.root = Path(tempfile.mkdtemp(prefix="bw-img-", dir="/tmp"))
        # Falls back to the disk where a tmpfs cannot be mounted.
        self.tmpfs = TMPFS_SIZE != "off" and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(self.root)],
            capture_output=True).returncode == 0
        self.host = f"unix://{self.root / 'd.sock'}"
        self.log = open(self.root / "dockerd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [dockerd, f"--host={self.host}", f"--data-root={self.root / 'data'}",
             f"--exec-root={self.root / 'exec'}", f"--pidfile={self.root / 'd.pid'}",
             "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
             "--shutdown-timeout=2"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while self.docker("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dockerd did not start:\n{(self.root / 'dockerd.log').read_text()[-3000:]}")
            time.sleep(0.2)

    def docker(self, *args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        env = {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0"}
        argv = [self.docker_binary, *args]
        if check:
            return _run(argv, timeout=timeout, env=env, **kwargs)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)

    def stop(self) -> None:
        started = time.monotonic()
        if self.proc.poll() is None:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()
        # overlay mounts the daemon left behind, innermost first, then the tmpfs itself
        with open("/proc/self/mounts") as mounts:
            targets = [line.split()[1] for line in mounts if line.split()[1].startswith(str(self.root))]
        for target in sorted(targets, key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)
        print(f"\nprivate dockerd stopped and removed in {time.monotonic() - started:.1f}s")


@pytest.fixture(scope="module")
def engine() -> Iterator[PrivateDockerd]:
    _need(os.geteuid() == 0, "building an image needs root (dockerd, debootstrap)")
    dockerd = require_binary("dockerd", "/usr/sbin/dockerd")
    docker = require_binary("docker", "/usr/bin/docker")
    engine = PrivateDockerd(dockerd, docker)
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def image(engine: PrivateDockerd) -> dict:
    """Build the image; returns what was measured (seconds) and `docker inspect` of the image."""
    _need(sys.version_info[:2] == (3, 11), "the wheelhouse is downloaded for the base image's Python 3.11")
    timings = {}
    start = time.monotonic()
    tarball = _base_tarball()
    wheelhouse = _wheelhouse()
    timings["prepare_s"] = time.monotonic() - start

    start = time.monotonic()
    with open(tarball, "rb") as tar:
        engine.docker("import", "-", BASE_IMAGE, stdin=tar)
    timings["import_s"] = time.monotonic() - start

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(wheelhouse)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        start = time.monotonic()
        engine.docker(
            "build", "--network", "host", "--tag", IMAGE,
            "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", f"EXTRAS={EXTRAS}",
            "--build-arg", "PIP_NO_INDEX=1",
            "--build-arg", f"PIP_FIND_LINKS=http://127.0.0.1:{server.server_address[1]}/",
            "--build-arg", "REVISION=test", str(REPO), timeout=900,
        )
        timings["build_s"] = time.monotonic() - start
        usage = os.statvfs(engine.root)
        timings["engine_data_gb"] = (usage.f_blocks - usage.f_bfree) * usage.f_frsize / 1e9
    finally:
        server.shutdown()
        server.server_close()
    print(f"\nimage timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    inspect = json.loads(engine.docker("image", "inspect", IMAGE).stdout)[0]
    return {"timings": timings, "inspect": inspect}


def _start(engine: PrivateDockerd, name: str, *command: str, volume: str | None = None) -> None:
    # the engine's own health check every second, instead of every 30 s, to see it turn healthy
    mount = ["--volume", volume] if volume else []
    engine.docker("run", "--detach", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
                  "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--health-interval", "1s",
                  "--health-start-period", "60s", *mount, IMAGE, *command)


def _wait_healthy(engine: PrivateDockerd, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = engine.docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
        if status == "healthy":
            return
        time.sleep(0.5)
    logs = engine.docker("logs", name, check=False)
    raise AssertionError(f"{name} is {status!r}, not healthy:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}")


def test_image_runs_as_a_fixed_non_root_user_with_labels_and_healthcheck(image, record_property):
    for key, value in image["timings"].items():
        record_property(key, round(value, 1))
    config = image["inspect"]["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["boxwatch-entrypoint"]
    assert config["Healthcheck"]["Test"] == ["CMD", "boxwatch-healthcheck"]
    assert config["Labels"]["org.opencontainers.image.title"] == "boxwatch"
    assert config["Labels"]["org.opencontainers.image.revision"] == "test"


def test_webhook_sink_from_the_image_receives_an_alert(engine, image):
    port = free_port()
    _start(engine, "bw-webhook", "stack", "webhook", "--listen", f"127.0.0.1:{port}")
    wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
    alert = {"alerts": [{"status": "firing", "labels": {"alertname": "ImageTest", "severity": "warning"}}]}
    assert requests.post(f"http://127.0.0.1:{port}/alert", json=alert, timeout=5).status_code == 200
    assert requests.get(f"http://127.0.0.1:{port}/alerts", timeout=5).json() == [alert]
    _wait_healthy(engine, "bw-webhook")
    assert engine.docker("exec", "bw-webhook", "id", "-u").stdout.strip() == UID
    assert "ImageTest" in engine.docker("logs", "bw-webhook").stderr


def test_gpu_exporter_from_the_image_serves_metrics_without_a_gpu(engine, image):
    port = free_port()
    _start(engine, "bw-gpu", "exporter", "gpu", f"--web.listen-address=127.0.0.1:{port}")
    wait_http(f"http://127.0.0.1:{port}/metrics", timeout=60)
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {s.name: s for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples["boxwatch_nvml_up"].value == 0  # no NVIDIA driver in the test container
    assert samples["boxwatch_exporter_build_info"].labels["exporter"] == "gpu"
    _wait_healthy(engine, "bw-gpu")
    assert engine.docker("exec", "bw-gpu", "id", "-u").stdout.strip() == UID


def _needs_detector_extra() -> None:
    if EXTRAS not in ("all", "detector") and "detector" not in EXTRAS.split(","):
        pytest.skip(f"the image was built with EXTRAS={EXTRAS}, without the detector")


def test_detector_in_the_image_accepts_the_compose_configuration(engine, image):
    _needs_detector_extra()
    result = engine.docker(
        "run", "--rm", "--network", "none", "--read-only",
        "-v", f"{REPO / 'detector' / 'boxwatch-detector.example.yml'}:/etc/boxwatch/detector.yml:ro",
        "-e", "BOXWATCH_READER__URL=http://prometheus:9090", "-e", "BOXWATCH_REGISTRY__ENABLED=true",
        "-e", "BOXWATCH_REGISTRY__TRACKING_URI=http://mlflow:5000",
        IMAGE, "detector", "validate-config", "--config", "/etc/boxwatch/detector.yml",
    )
    assert "valid configuration" in result.stdout


def test_mlflow_server_from_the_image_becomes_healthy(engine, image):
    _needs_detector_extra()
    port = free_port()
    engine.docker("volume", "create", "bw-mlflow")
    _start(engine, "bw-mlflow", "mlflow", "server", "--host=127.0.0.1", f"--port={port}",
           "--backend-store-uri=sqlite:////var/lib/boxwatch/mlflow.db",
           "--artifacts-destination=/var/lib/boxwatch/artifacts", "--serve-artifacts",
           f"--allowed-hosts=mlflow:{port},127.0.0.1:{port}", volume="bw-mlflow:/var/lib/boxwatch")
    _wait_healthy(engine, "bw-mlflow", timeout=180)  # mlflow imports for 20-60 s on a busy machine
    # the named volume took the ownership of the image's /var/lib/boxwatch: UID 10001 writes there
    listing = engine.docker("exec", "bw-mlflow", "ls", "-n", "/var/lib/boxwatch").stdout
    assert "mlflow.db" in listing and f" {UID} " in listing
    reply = requests.get(f"http://127.0.0.1:{port}/health", headers={"Host": f"mlflow:{port}"}, timeout=10)
    assert reply.status_code == 200
