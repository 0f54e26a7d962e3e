"""A webhook receiver for Alertmanager that logs and keeps what it receives.

The native stack points Alertmanager's default receiver here, so a newcomer sees alerts
arrive without configuring mail or chat; the tests use the same class to assert what
Alertmanager sent. ``GET /alerts`` returns the notifications received, newest last.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("boxwatch.webhook")


class WebhookSink:
    """Receives Alertmanager webhook notifications (POST any path) on ``host:port``.

    ``port=0`` picks a free port; read it back from ``.port`` after ``start()``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, keep: int = 1000):
        self.host = host
        self._requested_port = port
        self._received: deque[dict] = deque(maxlen=keep)
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/alert"

    @property
    def received(self) -> list[dict]:
        with self._cond:
            return list(self._received)

    def alerts(self) -> list[dict]:
        """Every alert of every notification received, flattened."""
        return [alert for note in self.received for alert in note.get("alerts", [])]

    def wait_for(self, predicate, timeout: float) -> bool:
        """Block until ``predicate(self.alerts())`` is true or ``timeout`` seconds pass."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.alerts()), timeout)

    def _record(self, payload: dict) -> None:
        with self._cond:
            self._received.append(payload)
            self._cond.notify_all()
        for alert in payload.get("alerts", []):
            labels = alert.get("labels", {})
            log.warning(
                "alert %s: %s %s",
                alert.get("status"),
                labels.get("alertname"),
                ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname"),
            )

    def start(self) -> WebhookSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: _record logs what matters
                pass

            def _reply(self, code: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    payload = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError as err:
                    self._reply(400, {"error": f"body is not JSON: {err}"})
                    return
                sink._record(payload)
                self._reply(200, {"status": "ok"})

            def do_GET(self):
                if self.path.startswith("/alerts"):
                    self._reply(200, sink.received)
                elif self.path == "/healthz":
                    self._reply(200, {"status": "ok"})
                else:
                    self._reply(404, {"error": "not found"})

        self._server = ThreadingHTTPServer((self.host, self._requested_port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
