"""``boxwatch-stack webhook``: the shared ``--web.*`` flags, basic auth from ``--web.config.file``, and
the notifications it keeps."""

from __future__ import annotations

import time

import bcrypt
import pytest
import requests

from stack.cli import build_parser
from tests.harness import Process, free_port, python_module

pytestmark = pytest.mark.slow


def test_the_older_listen_flag_still_names_the_address():
    args = build_parser().parse_args(["webhook", "--listen", "0.0.0.0:9876"])
    assert args.listen_address == "0.0.0.0:9876" and args.web_config_file == ""


def test_webhook_serves_behind_basic_auth_from_the_web_config_file(tmp_path):
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alertmanager: '{hashed}'\n")
    port = free_port()
    sink = Process(python_module("stack", "webhook", f"--web.listen-address=127.0.0.1:{port}",
                                 f"--web.config.file={web}"), tmp_path / "webhook.log")
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_listening(base, sink)
        note = {"status": "firing", "alerts": [{"status": "firing", "labels": {"alertname": "GpuHot"}}]}
        assert requests.post(f"{base}/alert", json=note, timeout=5).status_code == 401
        auth = ("alertmanager", "s3cret")
        assert requests.post(f"{base}/alert", json=note, auth=auth, timeout=5).json() == {"status": "ok"}
        assert requests.post(f"{base}/alert", data=b"{", auth=auth, timeout=5).status_code == 400
        assert requests.get(f"{base}/alerts", auth=auth, timeout=5).json() == [note]
    finally:
        sink.stop()
    assert "GpuHot" in sink.output()


def _wait_listening(base: str, sink: Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(f"{base}/healthz", timeout=1)  # 401 without credentials: it listens
            return
        except requests.ConnectionError:
            assert sink.proc.poll() is None, sink.output()
            time.sleep(0.05)
    raise TimeoutError(f"{base} did not answer within {timeout}s")
