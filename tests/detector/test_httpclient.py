"""Reader and remote write over TLS with a client certificate, basic auth and a bearer token.

A real Prometheus (remote-write receiver on) sits behind a TLS-terminating proxy on loopback that
requires a client certificate signed by the test CA and checks the Authorization header, the way
an authenticating gateway in front of Prometheus, Mimir or Thanos does.
"""

from __future__ import annotations

import base64
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from detector.config import ConfigError, ReaderConfig, RemoteWriteConfig, validate
from detector.httpclient import session_for
from detector.reader import PrometheusReader, PrometheusUnavailable, QueryError
from detector.writer import RemoteWriter, ScoredPoint
from tests.harness import require_binary

TOKEN = "s3cret-token"
PASSWORD = "hunter2"


def openssl(*args: str, cwd) -> None:
    subprocess.run([require_binary("openssl", "/usr/bin/openssl"), *args], cwd=cwd, check=True,
                   capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "1", "-subj", "/CN=boxwatch test CA", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "1", "-extfile", "san.ext", cwd=d)
    (d / "token").write_text(TOKEN + "\n")
    (d / "password").write_text(PASSWORD + "\n")
    return d


@pytest.fixture(scope="module")
def gateway(pki, tmp_path_factory):
    """``https://127.0.0.1:PORT`` forwarding to a real Prometheus; mTLS and credentials required."""
    from tests.harness import Prometheus

    prom = Prometheus(tmp_path_factory.mktemp("prom"), extra_args=["--web.enable-remote-write-receiver"])
    accepted = {f"Bearer {TOKEN}", "Basic " + base64.b64encode(f"boxwatch:{PASSWORD}".encode()).decode()}

    class Proxy(BaseHTTPRequestHandler):
        def _forward(self):
            if self.headers.get("Authorization") not in accepted:
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization")}
            upstream = requests.request(self.command, prom.url + self.path, data=body or None, headers=headers,
                                        timeout=30)
            self.send_response(upstream.status_code)
            self.send_header("Content-Type", upstream.headers.get("Content-Type", "text/plain"))
            self.send_header("Content-Length", str(len(upstream.content)))
            self.end_headers()
            self.wfile.write(upstream.content)

        do_GET = do_POST = _forward

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.crt", pki / "server.key")
    context.load_verify_locations(pki / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    prom.stop()


def client(pki, **overrides) -> dict:
    settings = {"tls_config": {"ca_file": str(pki / "ca.crt"), "cert_file": str(pki / "client.crt"),
                               "key_file": str(pki / "client.key")},
                "bearer_token_file": str(pki / "token")}
    settings.update(overrides)
    return {k: v for k, v in settings.items() if v is not None}


def test_remote_write_and_reader_over_mutual_tls_with_a_token_and_basic_auth(gateway, pki):
    now = round(time.time())
    point = ScoredPoint((("model", "robust"), ("query", "tls")), now, 5.0, 4.0, 3.0, 6.0, 0.5)
    remote = RemoteWriteConfig(url=f"{gateway}/api/v1/write", **client(pki))
    assert RemoteWriter(remote.url, session=session_for(remote)).write([point]) == 4

    basic = client(pki, bearer_token_file=None,
                   basic_auth={"username": "boxwatch", "password_file": str(pki / "password")})
    reader = PrometheusReader(ReaderConfig(url=gateway, **basic))
    [series] = reader.query_range('boxwatch_anomaly_score{query="tls"}', now - 60, now + 60, 15).values()
    assert series.dropna().tolist() == [0.5] * len(series.dropna()) and len(series.dropna()) >= 1

    skip = client(pki, tls_config={"insecure_skip_verify": True, "cert_file": str(pki / "client.crt"),
                                   "key_file": str(pki / "client.key")})
    assert PrometheusReader(ReaderConfig(url=gateway, **skip)).query_range("vector(1)", now, now, 15)


@pytest.mark.parametrize("settings, error", [
    ({"tls_config": None}, PrometheusUnavailable),  # the test CA is unknown to the system store
    ({"tls_config": {"ca_file": "CA"}}, PrometheusUnavailable),  # no client certificate
    ({"bearer_token_file": None}, QueryError),  # 401
    ({"bearer_token_file": None, "basic_auth": {"username": "boxwatch", "password": "wrong"}}, QueryError),
])
def test_without_the_right_certificate_or_credentials_the_reader_is_refused(gateway, pki, settings, error):
    if settings.get("tls_config") == {"ca_file": "CA"}:
        settings = {**settings, "tls_config": {"ca_file": str(pki / "ca.crt")}}
    config = ReaderConfig(url=gateway, retries=0, **client(pki, **settings))
    with pytest.raises(error):
        PrometheusReader(config).query_range("vector(1)", time.time() - 60, time.time(), 15)


def test_client_settings_are_checked_with_the_config(pki, tmp_path):
    with pytest.raises(ConfigError) as caught:
        validate({"schema_version": 1, "queries": {"q": {"expr": "up"}},
                  "reader": {"tls_config": {"cert_file": str(pki / "client.crt")},
                             "bearer_token_file": str(tmp_path / "missing")},
                  "writer": {"remote_write": {"url": "https://x/api/v1/write", "bearer_token_file": str(pki / "token"),
                                              "basic_auth": {"username": "u", "password": "p"}}}})
    found = {p.key: p.reason for p in caught.value.problems}
    assert "cert_file and key_file go together" in found["reader.tls_config"]
    assert "is not a readable file" in found["reader.bearer_token_file"]
    assert "not both" in found["writer.remote_write"]


def test_a_rotated_token_is_picked_up_without_a_restart(gateway, pki, tmp_path):
    token = tmp_path / "token"
    token.write_text("old")
    reader = PrometheusReader(ReaderConfig(url=gateway, retries=0, **client(pki, bearer_token_file=str(token))))
    with pytest.raises(QueryError):
        reader.query_range("vector(1)", time.time() - 60, time.time(), 15)
    token.write_text(TOKEN)
    assert reader.query_range("vector(1)", time.time() - 60, time.time(), 15)
