#!/opt/boxwatch/bin/python3
"""Health check of a boxwatch container: GET the health endpoint of the process it runs.

One image runs every boxwatch program, each on its own port, so the check reads the command line
of PID 1 (the program the entrypoint exec'd) to find the address it listens on:
``--web.listen-address`` (exporters, detector), ``--listen`` (webhook sink) or the program's
default port; ``mlflow server`` is checked on ``--port`` (default 5000) at ``/health``.
``BOXWATCH_HEALTHCHECK_URL`` overrides all of this. Exit 0 when healthy, 1 otherwise.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

EXPORTER_PORTS = {"gpu": 9872, "containers": 9873, "journald": 9874}
DETECTOR_PORT = 9875
WEBHOOK_PORT = 9876
MLFLOW_PORT = 5000


def flag_value(args: list[str], *names: str) -> str | None:
    """The value of the last ``--name VALUE`` or ``--name=VALUE`` among ``args``."""
    value = None
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


def local_url(address: str, path: str) -> str:
    """``":9872"``/``"0.0.0.0:9872"`` -> ``http://127.0.0.1:9872/path``; a specific host is kept."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def health_url(argv: list[str]) -> str:
    """The health URL of the program started with ``argv``."""
    programs = [os.path.basename(arg) for arg in argv]
    if "boxwatch-exporter" in programs:
        rest = argv[programs.index("boxwatch-exporter") + 1:]
        source = next((arg for arg in rest if arg in EXPORTER_PORTS), None)
        if source is None:
            raise ValueError(f"no exporter source in {argv}")
        default = f"127.0.0.1:{EXPORTER_PORTS[source]}"
        return local_url(flag_value(rest, "--web.listen-address") or default, "/healthz")
    if "boxwatch-detector" in programs:
        address = flag_value(argv, "--web.listen-address", "--listen") or f"127.0.0.1:{DETECTOR_PORT}"
        return local_url(address, "/healthz")
    if "boxwatch-stack" in programs:
        return local_url(flag_value(argv, "--web.listen-address", "--listen") or f"127.0.0.1:{WEBHOOK_PORT}",
                         "/healthz")
    if "mlflow" in programs:
        return local_url(f":{flag_value(argv, '--port', '-p') or MLFLOW_PORT}", "/health")
    raise ValueError(f"no boxwatch program in {argv}; set BOXWATCH_HEALTHCHECK_URL")


def pid1_argv() -> list[str]:
    raw = Path("/proc/1/cmdline").read_bytes()
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def main() -> int:
    try:
        url = os.environ.get("BOXWATCH_HEALTHCHECK_URL") or health_url(pid1_argv())
    except (OSError, ValueError) as err:
        print(f"healthcheck: {err}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=float(os.environ.get("BOXWATCH_HEALTHCHECK_TIMEOUT", "4"))) as reply:
            print(f"healthcheck: {url} -> {reply.status}")
            return 0 if reply.status == 200 else 1
    except (urllib.error.URLError, OSError) as err:
        print(f"healthcheck: {url} -> {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
