"""The detector's HTTP server (boxwatch.web): --web.config.file with real TLS clients, a bad file
refused at start, and /metrics answering while many connections sit idle."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import bcrypt
import pytest
import requests
import yaml

from tests.boxwatch.test_web import write_certificates
from tests.detector.conftest import detector_config
from tests.harness import Process, free_port, python_module

pytestmark = pytest.mark.slow  # a detector process per test

QUERY = {"expr": "svc_test_value", "step": "5s", "fit_window": "1h", "fit_every": "1h", "infer_every": "1s"}
NO_PROMETHEUS = "http://127.0.0.1:9"  # nothing listens: the detector serves and keeps retrying


def test_detector_serves_over_mutual_tls_with_basic_auth(tmp_path):
    pki = write_certificates(tmp_path)
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(6)).decode()
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(pki["server"]), "key_file": str(tmp_path / "server.key"),
                              "client_ca_file": str(pki["ca"])},
        "basic_auth_users": {"prometheus": hashed}}))
    config = tmp_path / "detector.yml"
    config.write_text(yaml.safe_dump(detector_config(NO_PROMETHEUS, tmp_path / "state", {"temp": QUERY})))
    port = free_port()
    process = Process(python_module("detector", "serve", "--config", str(config),
                                    "--web.listen-address", f"127.0.0.1:{port}", "--web.config.file", str(web)),
                      tmp_path / "detector.log")
    url = f"https://127.0.0.1:{port}"
    client = {"verify": str(pki["ca"]), "cert": (str(pki["client"]), str(pki["client_key"])), "timeout": 10}
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.proc.poll() is None, process.output()[-3000:]
            try:
                response = requests.get(f"{url}/metrics", auth=("prometheus", "pw"), **client)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, process.output()[-3000:]
                time.sleep(0.2)
        assert response.status_code == 200 and "boxwatch_detector_" in response.text
        assert requests.get(f"{url}/healthz", auth=("prometheus", "bad"), **client).status_code == 401
        assert requests.get(f"{url}/api/v1/models", **client).status_code == 401
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{url}/healthz", verify=str(pki["ca"]), auth=("prometheus", "pw"), timeout=10)
    finally:
        process.stop()


def test_bad_web_config_is_a_configuration_error(tmp_path):
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: nowhere.crt\n  key_file: nowhere.key\n")
    config = tmp_path / "detector.yml"
    config.write_text(yaml.safe_dump(detector_config(NO_PROMETHEUS, tmp_path / "state", {"temp": QUERY},
                                                     server={"web_config_file": str(web)})))
    for command in ("validate-config", "serve"):
        result = subprocess.run(python_module("detector", command, "--config", str(config),
                                              *(["--web.listen-address", f"127.0.0.1:{free_port()}"]
                                                if command == "serve" else [])),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0, command
        assert "server.web_config_file" in result.stderr and str(web) in result.stderr, result.stderr
        assert "tls_server_config.cert_file" in result.stderr


def test_metrics_answer_while_many_connections_sit_idle(start_detector, tmp_path):
    detector = start_detector(detector_config(NO_PROMETHEUS, tmp_path / "state", {"temp": QUERY}))
    idle = [socket.create_connection(("127.0.0.1", detector.port)) for _ in range(150)]
    try:
        started = time.monotonic()
        response = requests.get(f"{detector.url}/metrics", timeout=10)
        assert response.status_code == 200
        assert time.monotonic() - started < 2.0, "idle connections must not hold the workers /metrics needs"
        status = Path(f"/proc/{detector.proc.pid}/status").read_text()
        threads = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))
        assert threads < 60, f"{threads} threads: connections must not get a thread each"
    finally:
        for sock in idle:
            sock.close()
