"""Which container a process runs in: its cgroup, and the container's name from the Docker API.

NVML names GPU processes by host PID only. ``/proc/PID/cgroup`` holds the container's id in the
cgroup path every runtime creates for it:

=================================  ===================================================
cgroup v2, systemd driver          ``0::/system.slice/docker-<id>.scope``
cgroup v1/v2, cgroupfs driver      ``4:memory:/docker/<id>``
containerd / CRI (Kubernetes)      ``.../cri-containerd-<id>.scope``, ``/kubepods/.../<id>``
CRI-O                              ``.../crio-<id>.scope``
podman                             ``.../libpod-<id>.scope/container``, ``/libpod_parent/libpod-<id>``
=================================  ===================================================

The innermost id wins (Docker in Docker). ``ContainerNames`` turns an id into the labels the
containers exporter uses (``name``, ``compose_service``) by asking the Docker Engine API once
per new container, from the GPU exporter's background poller, never from a scrape. An id the
daemon does not know (a Kubernetes pod under containerd, no Docker socket) keeps its 12-character
short id as the name, the form ``docker ps`` shows.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxwatch.log import kv

log = logging.getLogger("boxwatch.gpu")

SHORT_ID = 12
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
# <runtime>-<id>[.scope] (systemd driver; podman's cgroupfs libpod-<id>), or /<runtime>/<id> (cgroupfs).
_SCOPED = re.compile(r"(docker|cri-containerd|crio|libpod)-([0-9a-f]{64})(?:\.scope)?(?=/|$)")
_CGROUPFS = re.compile(r"/(docker|libpod|kubepods(?:/[^/]+)*)/([0-9a-f]{64})(?=/|$)")
_RUNTIMES = {"docker": "docker", "libpod": "podman", "cri-containerd": "containerd", "crio": "cri-o"}


@dataclass(frozen=True)
class ContainerRef:
    """A container found in a cgroup path: the runtime that made the path and the full id."""

    runtime: str
    id: str

    @property
    def short_id(self) -> str:
        return self.id[:SHORT_ID]


def container_in_cgroup(text: str) -> ContainerRef | None:
    """The container named by the contents of a ``/proc/PID/cgroup`` file, or None (a host process)."""
    found: ContainerRef | None = None
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        matches = [(m.start(), m[1], m[2]) for pattern in (_SCOPED, _CGROUPFS) for m in pattern.finditer(path)]
        if not matches:
            continue
        _, runtime, container_id = max(matches)  # innermost: the last one in the path
        runtime = "containerd" if runtime.startswith("kubepods") else _RUNTIMES[runtime]
        ref = ContainerRef(runtime, container_id)
        if line.startswith("0::"):  # the unified hierarchy is authoritative where there is one
            return ref
        found = found or ref
    return found


def container_of_pid(procfs: Path, pid: int) -> ContainerRef | None:
    """The container ``pid`` runs in, from ``<procfs>/PID/cgroup``; None for a host process or a
    PID that is gone."""
    try:
        return container_in_cgroup((procfs / str(pid) / "cgroup").read_text())
    except OSError:
        return None


@dataclass(frozen=True)
class ContainerLabels:
    name: str
    compose_service: str = ""


HOST = ContainerLabels("", "")


class ContainerNames:
    """Container id -> the name and compose service the containers exporter labels it with.

    Names are cached for as long as the container holds GPU memory; a failed lookup (daemon down,
    unknown id) is answered with the short id and retried after ``retry_after`` seconds. Call
    only from a background thread: a lookup may wait up to ``timeout`` on the daemon.
    """

    def __init__(self, docker_host: str, timeout: float = 2.0, retry_after: float = 30.0,
                 connect: Callable[[str, float], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._host = docker_host
        self._timeout = timeout
        self._retry_after = retry_after
        self._connect = connect or _docker_client
        self._clock = clock
        self._client: Any = None
        self._cache: dict[str, tuple[ContainerLabels, float | None]] = {}  # id -> (labels, retry at)
        self._logged: str | None = None

    def labels(self, ref: ContainerRef | None) -> ContainerLabels:
        if ref is None:
            return HOST
        cached = self._cache.get(ref.id)
        if cached is not None and (cached[1] is None or self._clock() < cached[1]):
            return cached[0]
        resolved = self._lookup(ref)
        labels = resolved or ContainerLabels(ref.short_id)
        self._cache[ref.id] = (labels, None if resolved else self._clock() + self._retry_after)
        return labels

    def keep_only(self, ids: Iterable[str]) -> None:
        """Forget containers that no longer run GPU processes (bounded cache)."""
        wanted = set(ids)
        for container_id in [i for i in self._cache if i not in wanted]:
            del self._cache[container_id]

    def _lookup(self, ref: ContainerRef) -> ContainerLabels | None:
        if ref.runtime not in ("docker", "podman"):  # CRI containers are not the Docker API's
            return None
        try:
            if self._client is None:
                self._client = self._connect(self._host, self._timeout)
            attrs = self._client.api.inspect_container(ref.id)
        except Exception as err:  # noqa: BLE001 - docker.errors.*, requests' and socket errors alike
            self._close()
            self._log_once(f"{type(err).__name__}: {err}")
            return None
        self._logged = None
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        return ContainerLabels(str(attrs.get("Name", "")).lstrip("/") or ref.short_id,
                               str(labels.get(COMPOSE_SERVICE_LABEL, "")))

    def _log_once(self, reason: str) -> None:
        if reason != self._logged:
            log.warning("cannot name a GPU process's container; labelling it with its short id",
                        extra=kv(docker_host=self._host, error=reason))
        self._logged = reason

    def _close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a broken client
                log.debug("closing the Docker client failed", exc_info=True)
        self._client = None


def _docker_client(host: str, timeout: float) -> Any:
    import docker  # lazy: only when a GPU process runs in a container

    return docker.DockerClient(base_url=host, timeout=timeout)
