"""The HTTP server of every boxwatch process: a bounded worker pool, timeouts, TLS and basic auth.

``Server`` serves a WSGI app with a fixed number of worker threads:

* One thread accepts connections and watches them in a selector until their request starts to
  arrive; an idle connection costs a file descriptor, not a thread. A connection with bytes to read
  is queued for a worker; when ``max_queued`` connections already wait, or ``max_connections`` are
  open, a new one is answered ``503`` (plain HTTP) or closed (TLS) at once.
* A worker serves one request per connection (``Connection: close``): TLS handshake, request head
  and body must arrive within ``read_timeout`` of the accept, and the response must be written
  within ``write_timeout``; past either deadline the connection is shut down under the worker, so a
  slow or stalled client never holds a worker for longer. The app itself runs without a deadline.

``--web.config.file`` takes the Prometheus exporter-toolkit format (what node_exporter reads)::

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_ca_file: ca.crt                            # client certificates signed by this CA
      client_auth_type: RequireAndVerifyClientCert      # or VerifyClientCertIfGiven, NoClientCert
      min_version: TLS12                                # TLS10 .. TLS13
    basic_auth_users:
      prometheus: $2y$10$...                            # bcrypt hash (htpasswd -nBC 10 USER)
    http_server_config:
      headers:
        Strict-Transport-Security: max-age=31536000

Relative file names are read relative to the configuration file. Every problem is reported at once,
with the file and the key, by :class:`WebConfigError`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import logging
import queue
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from boxwatch.log import kv

log = logging.getLogger("boxwatch.web")

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]

# --------------------------------------------------------------------------- --web.config.file

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH_TYPES = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                     "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
# exporter-toolkit settings Python's ssl module cannot honour: refused rather than silently ignored.
UNSUPPORTED_TLS_KEYS = {
    "cipher_suites": "choose ciphers through OpenSSL's configuration instead",
    "curve_preferences": "not supported",
    "prefer_server_cipher_suites": "not supported",
    "client_allowed_sans": "not supported",
    "cert": "give the certificate as cert_file",
    "key": "give the key as key_file",
}
UNSUPPORTED_CLIENT_AUTH = {"RequestClientCert", "RequireAnyClientCert"}
TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version")
ALLOWED_HEADERS = ("Strict-Transport-Security", "X-Frame-Options", "X-Content-Type-Options",
                   "X-XSS-Protection", "Content-Security-Policy")


class WebConfigError(ValueError):
    """An unusable ``--web.config.file``; ``problems`` lists each one as ``FILE: KEY: reason``."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class WebConfig:
    """What ``--web.config.file`` asks for; the default serves plain HTTP without authentication."""

    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user name -> bcrypt hash
    headers: dict[str, str] = field(default_factory=dict)
    path: Path | None = None


def load_web_config(path: str | Path | None) -> WebConfig:
    """Parse and check a web configuration file (exporter-toolkit format); ``None`` -> defaults."""
    if path is None or str(path) == "":
        return WebConfig()
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise WebConfigError([f"{path}: cannot read: {err.strerror or err}"]) from err
    except yaml.YAMLError as err:
        raise WebConfigError([f"{path}: not valid YAML: {err}"]) from err
    problems: list[str] = []
    config = WebConfig(path=path)

    def problem(key: str, reason: str) -> None:
        problems.append(f"{path}: {key}: {reason}")

    if data is None:
        return config
    if not isinstance(data, dict):
        raise WebConfigError([f"{path}: expected a mapping at the top level, got {type(data).__name__}"])
    for key in data:
        if key not in ("tls_server_config", "basic_auth_users", "http_server_config"):
            problem(str(key), "unknown key; expected tls_server_config, basic_auth_users or http_server_config")
    if data.get("tls_server_config") is not None:
        before = len(problems)
        context = _tls_context(data["tls_server_config"], path.parent, problem)
        config.tls = context if len(problems) == before else None
    if data.get("basic_auth_users") is not None:
        config.users = _users(data["basic_auth_users"], problem)
    if data.get("http_server_config") is not None:
        config.headers = _headers(data["http_server_config"], problem)
    if problems:
        raise WebConfigError(problems)
    return config


def _tls_context(section: Any, base: Path, problem: Callable[[str, str], None]) -> ssl.SSLContext | None:
    if not _is_mapping(section, "tls_server_config", "a mapping", problem):
        return None
    problems: list[str] = []

    def local(key: str, reason: str) -> None:
        problems.append(key)
        problem(key, reason)

    for key in section:
        if key in UNSUPPORTED_TLS_KEYS:
            local(f"tls_server_config.{key}", UNSUPPORTED_TLS_KEYS[key])
        elif key not in TLS_KEYS:
            local(f"tls_server_config.{key}", f"unknown key; expected one of {', '.join(TLS_KEYS)}")
    files = {}
    for key in ("cert_file", "key_file", "client_ca_file"):
        value = section.get(key)
        if value in (None, ""):
            if key != "client_ca_file":
                local(f"tls_server_config.{key}", "missing; TLS needs a certificate and its key")
            continue
        file = base / str(value)
        if not file.is_file():
            local(f"tls_server_config.{key}", f"{file}: no such file")
        files[key] = file
    auth = section.get("client_auth_type") or ("RequireAndVerifyClientCert" if "client_ca_file" in files
                                               else "NoClientCert")
    if auth in UNSUPPORTED_CLIENT_AUTH:
        local("tls_server_config.client_auth_type",
                f"{auth} is not supported (clients are never accepted unverified); use "
                "VerifyClientCertIfGiven or RequireAndVerifyClientCert")
    elif auth not in CLIENT_AUTH_TYPES:
        local("tls_server_config.client_auth_type",
                f"{auth!r}: expected one of {', '.join(CLIENT_AUTH_TYPES)}")
    elif CLIENT_AUTH_TYPES[auth] != ssl.CERT_NONE and "client_ca_file" not in files:
        local("tls_server_config.client_ca_file", f"required by client_auth_type {auth}")
    versions = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = section.get(key) or default
        if name not in TLS_VERSIONS:
            local(f"tls_server_config.{key}", f"{name!r}: expected one of {', '.join(TLS_VERSIONS)}")
        else:
            versions[key] = TLS_VERSIONS[name]
    if problems:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = versions["min_version"]
    context.maximum_version = versions["max_version"]
    try:
        context.load_cert_chain(files["cert_file"], files["key_file"])
    except (ssl.SSLError, OSError) as err:
        local("tls_server_config.cert_file", f"{files['cert_file']} with key_file {files['key_file']}: "
                f"cannot load the certificate and key: {err}")
        return None
    context.verify_mode = CLIENT_AUTH_TYPES[auth]
    if "client_ca_file" in files:
        try:
            context.load_verify_locations(cafile=str(files["client_ca_file"]))
        except (ssl.SSLError, OSError) as err:
            local("tls_server_config.client_ca_file", f"{files['client_ca_file']}: cannot load: {err}")
            return None
    return context


def _is_mapping(section: Any, key: str, what: str, problem: Callable[[str, str], None]) -> bool:
    if not isinstance(section, dict):
        problem(key, f"expected {what}")
        return False
    return True


def _items(section: Any, key: str, what: str, problem: Callable[[str, str], None]) -> Iterable[tuple[Any, Any]]:
    """The entries of a mapping section; none (and a problem) when it is not a mapping."""
    return section.items() if _is_mapping(section, key, what, problem) else ()


def _users(section: Any, problem: Callable[[str, str], None]) -> dict[str, bytes]:
    import bcrypt

    users = {}
    for user, hashed in _items(section, "basic_auth_users", "a mapping of user name to bcrypt hash", problem):
        key = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            problem(key, "a user name is a non-empty string without ':'")
            continue
        if not isinstance(hashed, str) or not hashed.startswith("$2"):
            problem(key, "expected a bcrypt hash ($2a$, $2b$ or $2y$; htpasswd -nBC 10 USER makes one)")
            continue
        try:
            bcrypt.checkpw(b"", hashed.encode())
        except ValueError as err:
            problem(key, f"not a valid bcrypt hash: {err}")
            continue
        users[user] = hashed.encode()
    return users


def _headers(section: Any, problem: Callable[[str, str], None]) -> dict[str, str]:
    headers = {}
    for key, value in _items(section, "http_server_config", "a mapping", problem):
        if key == "http2":  # HTTP/1.1 only; accepted so that node_exporter's files load unchanged
            continue
        if key != "headers":
            problem(f"http_server_config.{key}", "unknown key; expected headers or http2")
            continue
        if not isinstance(value, dict):
            problem("http_server_config.headers", "expected a mapping of header name to value")
            continue
        for name, text in value.items():
            if name not in ALLOWED_HEADERS:
                problem(f"http_server_config.headers.{name}", f"expected one of {', '.join(ALLOWED_HEADERS)}")
            elif not isinstance(text, str) or "\n" in text or "\r" in text:
                problem(f"http_server_config.headers.{name}", "expected a one-line string")
            else:
                headers[name] = text
    return headers


# --------------------------------------------------------------------------- authentication


class BasicAuth:
    """WSGI middleware: ``401`` unless the request carries a user and password of ``users``.

    bcrypt is slow by design (tens of milliseconds a check), so a successful check is remembered,
    as exporter-toolkit does, by a hash of user and password; unknown users cost a check too, so
    the time does not tell which user names exist.
    """

    MAX_CACHED = 1024

    def __init__(self, app: WSGIApp, users: dict[str, bytes]):
        import bcrypt

        self._app = app
        self._users = users
        self._bcrypt = bcrypt
        self._dummy = bcrypt.hashpw(b"boxwatch", bcrypt.gensalt(10))
        self._verified: set[bytes] = set()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        user = self.authenticate(environ.get("HTTP_AUTHORIZATION", ""))
        if user is None:
            start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                                ("WWW-Authenticate", 'Basic realm="boxwatch"')])
            return [b"Unauthorized\n"]
        environ["REMOTE_USER"] = user
        return self._app(environ, start_response)

    def authenticate(self, header: str) -> str | None:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except ValueError:
            return None
        if not sep:
            return None
        key = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        if key in self._verified:
            return user
        hashed = self._users.get(user)
        try:
            ok = self._bcrypt.checkpw(password.encode(), hashed or self._dummy) and hashed is not None
        except ValueError:  # a password longer than bcrypt's 72 bytes
            ok = False
        if not ok:
            return None
        if len(self._verified) >= self.MAX_CACHED:
            self._verified.clear()
        self._verified.add(key)
        return user


class ExtraHeaders:
    """WSGI middleware adding ``http_server_config.headers`` to every response."""

    def __init__(self, app: WSGIApp, headers: dict[str, str]):
        self._app = app
        self._headers = list(headers.items())

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        def start(status, headers, exc_info=None):
            return start_response(status, [*headers, *self._headers], exc_info)

        return self._app(environ, start)


def protect(app: WSGIApp, config: WebConfig) -> WSGIApp:
    """``app`` behind the basic auth and with the headers of ``config``."""
    if config.users:
        app = BasicAuth(app, config.users)
    if config.headers:
        app = ExtraHeaders(app, config.headers)
    return app


# --------------------------------------------------------------------------- server


@dataclass(frozen=True)
class Limits:
    """How much of the process HTTP may take; see the module docstring."""

    workers: int = 8
    max_queued: int = 32
    max_connections: int = 512
    read_timeout: float = 10.0
    write_timeout: float = 30.0
    max_body_bytes: int = 1 << 20


# A refused request whose body was not read: after the answer, the server stops writing and reads (and
# drops) what the client still sends for at most this long, so that closing with unread bytes does not
# reset the connection and destroy the answer on its way (Apache's "lingering close").
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 << 20

_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 24\r\n"
         b"Retry-After: 1\r\nConnection: close\r\n\r\nserver busy, retry later\n")


class _Connection:
    """One accepted connection and the deadline it must meet; ``abort`` may come from another thread."""

    __slots__ = ("sock", "address", "deadline", "_lock", "_closed", "_shadow")

    def __init__(self, sock: socket.socket, address: Any, deadline: float):
        self.sock = sock
        self.address = address
        self.deadline: float | None = deadline
        self._lock = threading.Lock()
        self._closed = False
        self._shadow: socket.socket | None = None

    def hold(self) -> None:
        """Keep a second descriptor of the socket, so that ``abort`` works under a TLS wrapper."""
        self._shadow = self.sock.dup()

    def abort(self) -> None:
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(OSError):
                (self._shadow or self.sock).shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for sock in (self.sock, self._shadow):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()


class Server:
    """Serve a WSGI ``app`` on ``host:port`` with a bounded pool of workers (see the module docstring).

    ``start()`` binds and returns at once (``port`` is then the bound port); ``stop()`` closes the
    listening socket, lets the workers finish what they serve, and returns.
    """

    def __init__(self, app: WSGIApp, host: str, port: int, config: WebConfig | None = None,
                 limits: Limits | None = None, name: str = "http"):
        self.config = config or WebConfig()
        self.limits = limits or Limits()
        self._app = protect(app, self.config)
        self._name = name
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((host, port))
            self._listener.listen(128)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self.host = host
        self.port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._queue: queue.Queue[_Connection | None] = queue.Queue(maxsize=self.limits.max_queued)
        self._waiting: dict[socket.socket, _Connection] = {}
        self._busy: set[_Connection] = set()
        self._lock = threading.Lock()
        self._open = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.refused = 0
        self.timed_out = 0

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls is not None else "http"

    def start(self) -> Server:
        self._selector.register(self._listener, selectors.EVENT_READ)
        accept = threading.Thread(target=self._accept_loop, name=f"{self._name}-accept", daemon=True)
        self._threads.append(accept)
        for index in range(self.limits.workers):
            self._threads.append(threading.Thread(target=self._work, name=f"{self._name}-{index}", daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        for thread in self._threads[:1]:
            thread.join(timeout)
        for _ in range(self.limits.workers):
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                break
        for thread in self._threads[1:]:
            thread.join(timeout)

    # ----------------------------------------------------------------- accepting

    def _accept_loop(self) -> None:
        try:
            while not self._stopping.is_set():
                for key, _ in self._selector.select(timeout=0.25):
                    if key.fileobj is self._listener:
                        self._accept()
                    else:
                        self._ready(key.fileobj)
                self._expire(time.monotonic())
        finally:
            self._selector.close()
            self._listener.close()
            for connection in list(self._waiting.values()):
                connection.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. EMFILE: leave the rest in the backlog for the next round
                log.warning("accept failed", extra=kv(error=err))
                return
            with self._lock:
                full = self._open >= self.limits.max_connections
                if not full:
                    self._open += 1
            if full:
                self._refuse(sock)
                continue
            sock.setblocking(False)
            connection = _Connection(sock, address, time.monotonic() + self.limits.read_timeout)
            try:
                arrived = sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                self._waiting[sock] = connection
                self._selector.register(sock, selectors.EVENT_READ)
                continue
            except OSError:
                arrived = b""
            if not arrived:  # closed before it said anything
                self._release(connection)
                continue
            self._enqueue(connection)  # the request is already here: no round through the selector

    def _ready(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        self._enqueue(self._waiting.pop(sock))

    def _enqueue(self, connection: _Connection) -> None:
        try:
            self._queue.put_nowait(connection)
        except queue.Full:
            self._refuse(connection.sock)
            self._release(connection)

    def _refuse(self, sock: socket.socket) -> None:
        """Answer 503 without a worker (plain HTTP only: a TLS client just sees the connection close)."""
        self.refused += 1
        try:
            if self.config.tls is None:
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.recv(65536)  # unread request bytes would turn the close into a reset
                sock.send(_BUSY)
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            sock.close()

    def _expire(self, now: float) -> None:
        for sock, connection in list(self._waiting.items()):
            if connection.deadline is not None and connection.deadline < now:
                self._selector.unregister(sock)
                del self._waiting[sock]
                self.timed_out += 1
                self._release(connection)
        with self._lock:
            late = [c for c in self._busy if c.deadline is not None and c.deadline < now]
        for connection in late:
            connection.deadline = None
            self.timed_out += 1
            connection.abort()

    def _release(self, connection: _Connection) -> None:
        connection.close()
        with self._lock:
            self._open -= 1

    # ----------------------------------------------------------------- serving

    def _work(self) -> None:
        while True:
            connection = self._queue.get()
            if connection is None:
                return
            with self._lock:
                self._busy.add(connection)
            try:
                self._serve(connection)
            except Exception as err:  # a broken client must not end the worker
                log.debug("connection failed", extra=kv(client=connection.address[0], error=err))
            finally:
                with self._lock:
                    self._busy.discard(connection)
                self._release(connection)

    def _serve(self, connection: _Connection) -> None:
        sock = connection.sock
        sock.setblocking(True)
        remaining = (connection.deadline or time.monotonic()) - time.monotonic()
        sock.settimeout(max(0.05, remaining))
        if self.config.tls is not None:
            connection.hold()
            try:
                sock = connection.sock = self.config.tls.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as err:
                log.debug("TLS handshake failed", extra=kv(client=connection.address[0], error=err))
                return
        _Handler(sock, connection.address, _Exchange(self, connection))

    def run_app(self, environ: dict, connection: _Connection) -> tuple[str, list[tuple[str, str]], bytes]:
        """Call the app with no deadline; the response then has ``write_timeout`` to be written."""
        connection.deadline = None
        connection.sock.settimeout(self.limits.write_timeout)
        response: dict[str, Any] = {}

        def start_response(status, headers, exc_info=None):
            if exc_info and response:
                raise exc_info[1].with_traceback(exc_info[2])
            response["status"], response["headers"] = status, list(headers)
            return chunks.append

        chunks: list[bytes] = []
        try:
            result = self._app(environ, start_response)
            try:
                chunks.extend(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        except Exception:
            log.exception("request failed", extra=kv(path=environ.get("PATH_INFO")))
            return "500 Internal Server Error", [("Content-Type", "text/plain")], b"internal server error\n"
        connection.deadline = time.monotonic() + self.limits.write_timeout
        return response["status"], response["headers"], b"".join(chunks)


@dataclass
class _Exchange:
    server: Server
    connection: _Connection


class _Handler(BaseHTTPRequestHandler):
    """One request, read whole (head and body), passed to the WSGI app, answered, connection closed."""

    protocol_version = "HTTP/1.1"
    server_version = "boxwatch"
    exchange: _Exchange

    def __init__(self, sock, address, exchange: _Exchange):
        self.exchange = exchange
        super().__init__(sock, address, exchange.server)

    def handle(self) -> None:
        self.close_connection = True
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline:
            return
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if not self.parse_request():
            return
        server = self.exchange.server
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._refuse_unread(411, "a request body needs Content-Length")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.send_error(400, "bad Content-Length")
            return
        if length > server.limits.max_body_bytes:
            self._refuse_unread(413, f"request body over {server.limits.max_body_bytes} bytes")
            return
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            return  # the client went away or the deadline passed
        status, headers, payload = server.run_app(self._environ(body), self.exchange.connection)
        self._respond(status, headers, payload)

    def _refuse_unread(self, code: int, message: str) -> None:
        """Answer ``code`` to a request whose body stays unread, then linger (see LINGER_SECONDS)."""
        self.send_error(code, message)
        sock = self.connection
        with contextlib.suppress(OSError, ValueError):
            self.wfile.flush()
            if not isinstance(sock, ssl.SSLSocket):  # TLS: the answer is framed; just drain
                sock.shutdown(socket.SHUT_WR)
            deadline, drained = time.monotonic() + LINGER_SECONDS, 0
            while drained < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    break
                drained += len(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Refusals the server makes itself (before the app sees the request) are JSON, like the app's."""
        reason = self.responses.get(code, ("error",))[0]
        body = json.dumps({"status": "error", "error": message or reason}).encode()
        self.log_error("code %d, message %s", code, message or reason)
        self.send_response(code, reason)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def _environ(self, body: bytes) -> dict:
        server = self.exchange.server
        path, _, query = self.path.partition("?")
        environ = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(path, "latin-1"),
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)) if body else "",
            "SERVER_NAME": server.host,
            "SERVER_PORT": str(server.port),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": str(self.client_address[1]),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": server.scheme,
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in self.headers.items():
            if "_" in name:  # WSGI turns '-' into '_': a name with '_' could pose as another header
                continue
            key = "HTTP_" + name.upper().replace("-", "_")
            if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                continue
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    def _respond(self, status: str, headers: list[tuple[str, str]], payload: bytes) -> None:
        lines = [f"HTTP/1.1 {status}"]
        names = set()
        for name, value in headers:
            lines.append(f"{name}: {value}")
            names.add(name.lower())
        if "content-length" not in names:
            lines.append(f"Content-Length: {len(payload)}")
        lines += [f"Date: {self.date_time_string()}", "Connection: close", "", ""]
        head = "\r\n".join(lines).encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + payload)
        self.log_request(status.split(" ", 1)[0], len(payload))

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        if log.isEnabledFor(logging.DEBUG):
            log.debug("http request", extra=kv(client=self.client_address[0], request=format % args))


def serve(app: WSGIApp, listen_address: str, config: WebConfig | None = None, limits: Limits | None = None,
          name: str = "http") -> Server:
    """Bind ``listen_address`` (``HOST:PORT``) and start serving ``app``; raises OSError if it cannot bind."""
    host, port = parse_listen_address(listen_address)
    return Server(app, host, port, config, limits, name).start()


def add_web_flags(parser: argparse.ArgumentParser, default_listen: str, *, telemetry_path: bool = False,
                  config_section: str | None = None, listen_aliases: Sequence[str] = ()) -> None:
    """The ``--web.*`` flags of every boxwatch server, as the Prometheus exporters have them.

    ``--web.listen-address`` (``args.listen_address``) and ``--web.config.file``
    (``args.web_config_file``); with ``telemetry_path`` also ``--web.telemetry-path``
    (``args.telemetry_path``). With ``config_section`` the flags override that section's
    ``listen_address`` and ``web_config_file`` keys of a configuration file, so they default to None
    (not given). ``listen_aliases`` are older spellings still accepted (``--listen``).
    """
    overrides = config_section is not None
    listen_help = "address to serve on, HOST:PORT or :PORT for all interfaces"
    config_help = "exporter-toolkit web configuration (TLS, client certificates, basic auth)"
    if overrides:
        listen_help += f" (overrides {config_section}.listen_address, default {default_listen})"
        config_help += f" (overrides {config_section}.web_config_file; default: plain HTTP, no authentication)"
    else:
        listen_help += " (default: %(default)s)"
        config_help += " (default: plain HTTP, no authentication)"
    parser.add_argument("--web.listen-address", *listen_aliases, dest="listen_address", metavar="HOST:PORT",
                        default=None if overrides else default_listen, help=listen_help)
    if telemetry_path:
        parser.add_argument("--web.telemetry-path", dest="telemetry_path", default="/metrics", metavar="PATH",
                            help="path under which to expose metrics (default: %(default)s)")
    parser.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                        default=None if overrides else "", help=config_help)


def web_config_from_flags(args: argparse.Namespace) -> WebConfig | None:
    """The configuration ``--web.config.file`` names, ``--web.listen-address`` checked too; None, with
    each problem logged, when either is unusable (the process then exits 2)."""
    try:
        parse_listen_address(args.listen_address)
        return load_web_config(args.web_config_file)
    except WebConfigError as err:
        for problem in err.problems:
            log.error("invalid --web.config.file", extra=kv(problem=problem))
    except ValueError as err:
        log.error(str(err))
    return None


def parse_listen_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:9872"`` -> ("127.0.0.1", 9872); ``":9872"`` -> ("0.0.0.0", 9872); ``"[::1]:9872"``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {address!r}: expected HOST:PORT or :PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def server_metrics(server: Server | None, prefix: str) -> Iterable[Any]:
    """Counter families of ``server``: connections refused (busy) and cut at a deadline.

    ``server`` is None while a server is starting (it accepts connections a moment before its
    owner learns of it); the families are then present with 0, so no scrape ever lacks them."""
    from prometheus_client.core import CounterMetricFamily

    yield CounterMetricFamily(f"{prefix}_http_connections_refused",
                              "Connections refused because every worker was busy and the queue full, "
                              "or too many connections were open.", value=server.refused if server else 0)
    yield CounterMetricFamily(f"{prefix}_http_connections_timed_out",
                              "Connections closed because the client did not send its request or read "
                              "the response in time.", value=server.timed_out if server else 0)

