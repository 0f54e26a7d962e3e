"""boxwatch.web: the bounded HTTP server and --web.config.file, with real TLS clients (curl, requests)
against a real exporter process, and the limits (idle connections, slow clients, a full queue)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import bcrypt
import pytest
import requests

from boxwatch.web import Limits, Server, WebConfigError, load_web_config
from tests.harness import REPO, Process, free_port, python_module, require_binary

PASSWORD = "s3cret-scraper"


# --------------------------------------------------------------------------- certificates


def write_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def issue(subject: str, key, issuer: str, issuer_key, ca: bool, extensions=()):
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def save(stem: str, cert, key) -> None:
        (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("boxwatch test CA", ca_key, "boxwatch test CA", ca_key, True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = issue("127.0.0.1", server_key, "boxwatch test CA", ca_key, False, [
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = issue("prometheus", client_key, "boxwatch test CA", ca_key, False,
                   [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])])
    save("ca", ca, ca_key)
    save("server", server, server_key)
    save("client", client, client_key)
    return {stem: directory / f"{stem}.crt" for stem in ("ca", "server", "client")} | {
        "client_key": directory / "client.key"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    return write_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def web_config(pki) -> Path:
    """Mutual TLS and basic auth, with relative file names (read relative to the file)."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(8)).decode().replace("$2b$", "$2y$", 1)
    path = pki["ca"].parent / "web.yml"
    path.write_text(
        "tls_server_config:\n"
        "  cert_file: server.crt\n  key_file: server.key\n  client_ca_file: ca.crt\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS12\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
        "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n")
    return path


@pytest.fixture(scope="module")
def tls_exporter(tmp_path_factory, web_config):
    """A GPU exporter (no NVML here: it reports boxwatch_nvml_up 0) behind mutual TLS and basic auth."""
    port = free_port()
    env = {**os.environ, "LD_LIBRARY_PATH": ""}
    log = tmp_path_factory.mktemp("tls-exporter") / "exporter.log"
    process = Process(python_module("exporters", "gpu", f"--web.listen-address=127.0.0.1:{port}",
                                    f"--web.config.file={web_config}"), log, env=env, cwd=REPO)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.proc.poll() is None, process.output()
            time.sleep(0.1)
    yield f"https://127.0.0.1:{port}/metrics"
    process.stop()


def _curl(*args: str) -> subprocess.CompletedProcess:
    curl = require_binary("curl", "/usr/bin/curl")
    return subprocess.run([curl, "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", *args],
                          capture_output=True, text=True, timeout=30)


# --------------------------------------------------------------------------- TLS and basic auth


@pytest.mark.slow
def test_curl_with_client_certificate_and_password_gets_metrics(tls_exporter, pki):
    result = _curl("--cacert", str(pki["ca"]), "--cert", str(pki["client"]), "--key", str(pki["client_key"]),
                   "-u", f"prometheus:{PASSWORD}", "--compressed", "-D", "/dev/stderr", tls_exporter)
    assert result.returncode == 0, result.stderr
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "200"
    assert "boxwatch_nvml_up 0.0" in body and body.rstrip().endswith("1.0")
    assert "x-content-type-options: nosniff" in result.stderr.lower()


@pytest.mark.slow
def test_requests_with_client_certificate_and_password_gets_openmetrics(tls_exporter, pki):
    response = requests.get(tls_exporter, verify=str(pki["ca"]), cert=(str(pki["client"]), str(pki["client_key"])),
                            auth=("prometheus", PASSWORD), timeout=10,
                            headers={"Accept": "application/openmetrics-text;version=1.0.0"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


@pytest.mark.slow
def test_without_password_or_with_a_wrong_one_gets_401(tls_exporter, pki):
    client = ("--cacert", str(pki["ca"]), "--cert", str(pki["client"]), "--key", str(pki["client_key"]))
    for auth in ((), ("-u", "prometheus:wrong"), ("-u", f"intruder:{PASSWORD}")):
        result = _curl(*client, *auth, tls_exporter)
        assert result.stdout.rsplit("\n", 1)[1] == "401", (auth, result.stdout)
        assert "boxwatch_" not in result.stdout


@pytest.mark.slow
def test_without_client_certificate_the_handshake_fails(tls_exporter, pki):
    result = _curl("--cacert", str(pki["ca"]), "-u", f"prometheus:{PASSWORD}", tls_exporter)
    assert result.returncode != 0 and result.stdout.rsplit("\n", 1)[1] == "000", result
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_exporter, verify=str(pki["ca"]), auth=("prometheus", PASSWORD), timeout=10)


@pytest.mark.slow
def test_plain_http_to_the_tls_port_gets_nothing(tls_exporter):
    result = _curl(tls_exporter.replace("https://", "http://"))
    assert result.stdout.rsplit("\n", 1)[1] != "200"
    assert "boxwatch_" not in result.stdout


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(("content", "key"), [
    ("tls_server_config:\n  cert_file: server.crt\n", "tls_server_config.key_file"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: Sometimes\n",
     "tls_server_config.client_auth_type"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  client_auth_type: RequireAndVerifyClientCert\n", "tls_server_config.client_ca_file"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n", "tls_server_config.cert_file"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n", "tls_server_config.cert_file"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: SSL3\n",
     "tls_server_config.min_version"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cipher_suites: [TLS_AES_128]\n",
     "tls_server_config.cipher_suites"),
    ("basic_auth_users:\n  alice: hunter2\n", "basic_auth_users.alice"),
    ("basic_auth_users:\n  alice: $2y$10$tooshort\n", "basic_auth_users.alice"),
    ("http_server_config:\n  headers:\n    Set-Cookie: a=b\n", "http_server_config.headers.Set-Cookie"),
    ("tls_config:\n  cert_file: x\n", "tls_config"),
    ("tls_server_config: [\n", "not valid YAML"),
])
def test_bad_web_config_names_the_file_and_the_key(pki, content, key):
    path = pki["ca"].parent / "bad-web.yml"
    path.write_text(content)
    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)
    assert any(str(path) in problem and key in problem for problem in caught.value.problems), caught.value.problems


@pytest.mark.slow
def test_exporter_refuses_to_start_with_a_bad_web_config(tmp_path):
    bad = tmp_path / "web.yml"
    bad.write_text("basic_auth_users:\n  alice: plain-text-password\n")
    result = subprocess.run(python_module("exporters", "gpu", f"--web.listen-address=127.0.0.1:{free_port()}",
                                          f"--web.config.file={bad}"), capture_output=True, text=True,
                            timeout=60, cwd=REPO, env={**os.environ, "LD_LIBRARY_PATH": ""})
    assert result.returncode != 0
    assert str(bad) in result.stderr and "basic_auth_users.alice" in result.stderr
    missing = subprocess.run(python_module("exporters", "gpu", f"--web.config.file={tmp_path / 'absent.yml'}"),
                             capture_output=True, text=True, timeout=60, cwd=REPO)
    assert missing.returncode != 0 and "absent.yml" in missing.stderr


# --------------------------------------------------------------------------- limits


def _slow_app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(float(environ["QUERY_STRING"] or 1))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]


@pytest.fixture
def small_server():
    servers = []

    def start(**limits) -> Server:
        server = Server(_slow_app, "127.0.0.1", 0, limits=Limits(**limits)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_idle_connections_take_no_worker_and_are_closed_at_the_deadline(small_server):
    server = small_server(workers=2, read_timeout=1.0)
    threads_before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(200)]
    try:
        started = time.monotonic()
        assert requests.get(f"http://127.0.0.1:{server.port}/", timeout=5).text == "ok\n"
        assert time.monotonic() - started < 0.5, "200 idle connections must not delay a request"
        assert threading.active_count() == threads_before, "no thread per connection"
        time.sleep(1.6)
        assert all(sock.recv(1) == b"" for sock in idle[:5]), "idle connections are closed after read_timeout"
        assert server.timed_out >= 200
    finally:
        for sock in idle:
            sock.close()


def test_a_client_that_stalls_mid_request_loses_its_worker(small_server):
    server = small_server(workers=1, read_timeout=0.5)
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    time.sleep(0.1)
    started = time.monotonic()
    assert requests.get(f"http://127.0.0.1:{server.port}/", timeout=5).text == "ok\n"
    assert time.monotonic() - started < 1.5, "the only worker is freed at the stalled client's deadline"
    slow.settimeout(2)
    assert slow.recv(1024) == b""
    slow.close()


def test_excess_connections_are_answered_503_not_queued_forever(small_server):
    server = small_server(workers=1, max_queued=1)
    url = f"http://127.0.0.1:{server.port}/slow?0.8"
    results: list[int] = []

    def fetch() -> None:
        results.append(requests.get(url, timeout=10).status_code)

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert results.count(200) >= 2 and results.count(503) >= 3, results
    assert server.refused == results.count(503)


def test_request_body_over_the_limit_is_refused(small_server):
    server = small_server(max_body_bytes=1000)
    response = requests.post(f"http://127.0.0.1:{server.port}/", data=b"x" * 5000, timeout=5)
    assert response.status_code == 413
