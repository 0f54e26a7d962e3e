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

from boxwatch.web import Limits, Server, WebConfig

log = logging.getLogger("boxwatch.webhook")

# Alertmanager groups many alerts into one notification: room for large bodies.
LIMITS = Limits(workers=4, max_queued=64, max_body_bytes=16 << 20)


class WebhookSink:
    """Receives Alertmanager webhook notifications (POST any path) on ``host:port``.

    ``port=0`` picks a free port; read it back from ``.port`` after ``start()``. Served by
    ``boxwatch.web`` like every boxwatch endpoint: TLS and basic auth from ``web_config``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, keep: int = 1000, web_config: WebConfig | None = None):
        self.host = host
        self._requested_port = port
        self._web_config = web_config
        self._received: deque[dict] = deque(maxlen=keep)
        self._cond = threading.Condition()
        self._server: Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return self._server.port

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"{self._server.scheme}://{self.host}:{self.port}/alert"

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

    def app(self, environ: dict, start_response) -> list[bytes]:
        """WSGI: ``POST`` (any path) records a notification; ``GET /alerts``, ``GET /healthz``."""
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")

        def reply(status: str, body: object) -> list[bytes]:
            data = json.dumps(body).encode()
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
            return [data]

        if method == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            try:
                payload = json.loads(environ["wsgi.input"].read(length) or b"{}")
            except json.JSONDecodeError as err:
                return reply("400 Bad Request", {"error": f"body is not JSON: {err}"})
            self._record(payload)
            return reply("200 OK", {"status": "ok"})
        if method != "GET":
            return reply("405 Method Not Allowed", {"error": "use GET or POST"})
        if path.startswith("/alerts"):
            return reply("200 OK", self.received)
        if path == "/healthz":
            return reply("200 OK", {"status": "ok"})
        return reply("404 Not Found", {"error": "not found"})

    def start(self) -> WebhookSink:
        self._server = Server(self.app, self.host, self._requested_port, self._web_config, LIMITS, name="webhook")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
