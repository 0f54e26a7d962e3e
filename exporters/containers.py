"""Docker containers through the Docker Engine API (docker SDK).

Two background threads talk to the daemon; a scrape never does:

* ``StatsPoller`` lists the containers every ``--docker.poll-interval``, inspects each one
  (state, health, restart count, OOM flag) and fetches one-shot stats for the running ones,
  ``--docker.stats-concurrency`` requests at a time. Each round ends by swapping in a new
  immutable ``Snapshot``.
* ``EventFollower`` follows the daemon's event stream and counts container events.

Each new snapshot is rendered to exposition text once, by the poller thread
(``exporters.exposition``); a scrape serves those bytes plus the event and error counters and the
stats ages, so it takes about a millisecond whatever the number of containers and however slow the
daemon is.
A daemon that cannot be reached sets ``boxwatch_docker_up`` to 0 (logged once per change of
state) and is retried with exponential backoff; both threads resume when it is back.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from boxwatch.backoff import Backoff
from boxwatch.log import kv
from boxwatch.loop import Loop
from exporters.exposition import ClockGauge, Part, Prepared, Rendered, Rows, families_of
from exporters.server import Source, positive_float, positive_int

log = logging.getLogger("boxwatch.containers")

STATES = ("created", "running", "paused", "restarting", "removing", "exited", "dead")
HEALTH_STATUSES = ("starting", "healthy", "unhealthy")
EVENTS = ("die", "oom", "restart", "start", "stop", "kill", "health_status_unhealthy", "health_status_healthy")
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
CONTAINER_LABELS = ["name", "image", "compose_service"]
# Containers in these states have a cgroup, hence stats worth asking for.
STATS_STATES = frozenset({"running", "paused"})
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


# --------------------------------------------------------------------------- flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--docker.*`` flags of ``boxwatch-exporter containers``."""
    parser.add_argument(
        "--docker.host",
        dest="docker_host",
        default=os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST,
        metavar="URL",
        help="Docker Engine API endpoint, unix:///PATH or tcp://HOST:PORT "
        f"(default: $DOCKER_HOST, else {DEFAULT_DOCKER_HOST})",
    )
    parser.add_argument(
        "--docker.timeout",
        dest="docker_timeout",
        metavar="SECONDS",
        type=positive_float,
        default=10.0,
        help="seconds to wait for one Docker API call before giving up on it (default: %(default)s)",
    )
    parser.add_argument(
        "--docker.poll-interval",
        dest="docker_poll_interval",
        metavar="SECONDS",
        type=positive_float,
        default=5.0,
        help="seconds between two refreshes of the container list, state and stats; a scrape "
        "serves the latest refresh (default: %(default)s)",
    )
    parser.add_argument(
        "--docker.stats-concurrency",
        dest="docker_stats_concurrency",
        metavar="N",
        type=positive_int,
        default=64,
        help="inspect/stats requests in flight at once during a refresh. The daemon answers a "
        "stats request at its next 1 s collection tick, so a refresh of N running containers "
        "takes about N / this many seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--docker.retry-max-backoff",
        dest="docker_retry_max_backoff",
        metavar="SECONDS",
        type=positive_float,
        default=30.0,
        help="longest wait, in seconds, between two attempts to reach an unreachable daemon; the "
        "wait starts at 0.5 s and doubles (default: %(default)s)",
    )
    parser.add_argument(
        "--docker.events-max-names",
        dest="docker_events_max_names",
        metavar="N",
        type=positive_int,
        default=1000,
        help="container names whose event counters are kept; beyond it the least recently active "
        "name's series are dropped, which bounds cardinality (default: %(default)s)",
    )


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Stats:
    """Resource usage of one container, from one stats response."""

    read_at: float  # unix time the exporter received it
    cpu_seconds: float
    memory_usage_bytes: float
    memory_limit_bytes: float | None
    network_receive_bytes: float | None  # None: the container has no network interface
    network_transmit_bytes: float | None
    block_read_bytes: float
    block_write_bytes: float


@dataclass(frozen=True)
class Container:
    """What one refresh learnt about one container."""

    id: str
    name: str
    image: str
    compose_service: str
    state: str
    health: str | None  # None when the container has no healthcheck
    restart_count: int
    oom_killed: bool
    stats: Stats | None

    @property
    def labels(self) -> list[str]:
        return [self.name, self.image, self.compose_service]


@dataclass(frozen=True)
class Snapshot:
    up: bool
    containers: tuple[Container, ...] = ()
    refreshed_at: float | None = None  # unix time of the last successful refresh
    refresh_seconds: float | None = None  # how long that refresh took


def memory_usage_bytes(memory_stats: dict) -> float:
    """Memory in use without reclaimable page cache, as ``docker stats`` and cAdvisor's
    working set compute it: usage minus ``total_inactive_file`` (cgroup v1) or
    ``inactive_file`` (cgroup v2)."""
    usage = float(memory_stats.get("usage") or 0)
    details = memory_stats.get("stats") or {}
    for key in ("total_inactive_file", "inactive_file"):
        if key in details:
            inactive = float(details[key])
            return usage - inactive if inactive < usage else usage
    return usage


def parse_stats(raw: dict, read_at: float) -> Stats:
    """A ``Stats`` from the Engine API's ``/containers/{id}/stats`` document (v1 or v2 cgroups)."""
    memory = raw.get("memory_stats") or {}
    networks = raw.get("networks")
    blkio = (raw.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []
    block = {"read": 0.0, "write": 0.0}
    for entry in blkio:
        op = str(entry.get("op", "")).lower()
        if op in block:
            block[op] += float(entry.get("value") or 0)
    limit = memory.get("limit")
    return Stats(
        read_at=read_at,
        cpu_seconds=float(((raw.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0) / 1e9,
        memory_usage_bytes=memory_usage_bytes(memory),
        memory_limit_bytes=float(limit) if limit else None,
        network_receive_bytes=sum(float(n.get("rx_bytes") or 0) for n in networks.values()) if networks else None,
        network_transmit_bytes=sum(float(n.get("tx_bytes") or 0) for n in networks.values()) if networks else None,
        block_read_bytes=block["read"],
        block_write_bytes=block["write"],
    )


def container_from_inspect(attrs: dict, stats: Stats | None) -> Container:
    """A ``Container`` from the Engine API's ``/containers/{id}/json`` document."""
    state = attrs.get("State") or {}
    config = attrs.get("Config") or {}
    health = state.get("Health")
    return Container(
        id=attrs["Id"][:12],
        name=str(attrs.get("Name", "")).lstrip("/"),
        image=str(config.get("Image") or attrs.get("Image", "")),
        compose_service=str((config.get("Labels") or {}).get(COMPOSE_SERVICE_LABEL, "")),
        state=str(state.get("Status", "")),
        health=str(health["Status"]) if health and health.get("Status") in HEALTH_STATUSES else None,
        restart_count=int(attrs.get("RestartCount") or 0),
        oom_killed=bool(state.get("OOMKilled")),
        stats=stats,
    )


# --------------------------------------------------------------------------- connection


class DaemonState:
    """Whether a thread can reach the daemon; logs each change of state once, not each attempt."""

    def __init__(self, what: str):
        self._what = what
        self.up: bool | None = None

    def mark_up(self, **fields: object) -> None:
        if self.up is not True:
            log.info(f"{self._what}: docker daemon reachable", extra=kv(**fields))
        self.up = True

    def mark_down(self, error: BaseException) -> None:
        if self.up is not False:
            log.warning(f"{self._what}: docker daemon unreachable, retrying with backoff",
                        extra=kv(error=_describe(error)))
        self.up = False


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class ErrorCounts:
    """``boxwatch_docker_errors_total{operation}``: failed Docker API calls, by kind."""

    OPERATIONS = ("connect", "list", "inspect", "stats", "events")

    def __init__(self) -> None:
        self._counts = dict.fromkeys(self.OPERATIONS, 0)
        self._lock = threading.Lock()

    def add(self, operation: str) -> None:
        with self._lock:
            self._counts[operation] += 1

    def items(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._counts.items())


# --------------------------------------------------------------------------- stats poller


class StatsPoller:
    """Background thread that refreshes a ``Snapshot`` of every container.

    ``connect`` returns a docker SDK ``DockerClient`` (it raises while the daemon is away).
    The snapshot is replaced as a whole, so readers never see half a refresh.
    """

    def __init__(self, connect: Callable[[], Any], docker_errors: Any, interval: float,
                 concurrency: int, max_backoff: float, errors: ErrorCounts):
        self._connect = connect
        self._docker_errors = docker_errors
        self._interval = interval
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="docker-stats")
        self._backoff = Backoff(max_backoff)
        self._errors = errors
        self._state = DaemonState("stats")
        self._client: Any = None
        self._one_shot = True
        self._last_stats: dict[str, Stats] = {}
        self._last: dict[str, Container] = {}
        self.snapshot = Snapshot(up=False)
        self.listeners: list[Callable[[Snapshot], None]] = []  # called with each new snapshot
        self._loop = Loop("docker-poller", self._poll)

    def start(self) -> StatsPoller:
        self._loop.start()
        return self

    def close(self) -> None:
        self._loop.stop(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()

    def _poll(self) -> float:
        try:
            self.refresh()
        except Exception as err:  # the daemon went away or answered nonsense
            self._on_failure(err)
            return self._backoff.next_delay()
        self._backoff.reset()
        return self._interval

    def _on_failure(self, err: BaseException) -> None:
        self._state.mark_down(err)
        log.debug("refresh failed", extra=kv(error=_describe(err)))
        self._errors.add("connect" if self._client is None else "list")
        if self._client is not None:
            self._client.close()
            self._client = None
        self._last_stats.clear()
        self._last.clear()
        self._publish(Snapshot(up=False, refreshed_at=self.snapshot.refreshed_at,
                               refresh_seconds=self.snapshot.refresh_seconds))

    def _publish(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        for listener in self.listeners:
            try:
                listener(snapshot)
            except Exception:  # a rendering bug must not stop the polling
                log.exception("snapshot listener failed")

    def refresh(self) -> None:
        """List, inspect and fetch stats of every container, then publish the new snapshot."""
        started = time.monotonic()
        if self._client is None:
            self._client = self._connect()
            version = self._client.api.api_version
            self._one_shot = _version_at_least(version, "1.41")
        summaries = self._client.api.containers(all=True)
        self._state.mark_up(api_version=self._client.api.api_version, containers=len(summaries))
        ids = [s["Id"] for s in summaries]
        results = dict(zip(ids, self._pool.map(self._inspect_with_stats, ids), strict=True))
        self._last = {full_id: c for full_id, c in results.items() if c is not None}
        containers = tuple(self._last.values())
        self._last_stats = {c.id: c.stats for c in containers if c.stats is not None}
        self._publish(Snapshot(
            up=True,
            containers=tuple(sorted(containers, key=lambda c: (c.name, c.id))),
            refreshed_at=time.time(),
            refresh_seconds=time.monotonic() - started,
        ))

    def _inspect_with_stats(self, container_id: str) -> Container | None:
        api = self._client.api
        try:
            attrs = api.inspect_container(container_id)
        except self._docker_errors.NotFound:
            return None  # removed since it was listed
        except Exception as err:  # keep what the last refresh knew rather than drop the series
            self._errors.add("inspect")
            log.debug("inspect failed", extra=kv(id=container_id[:12], error=_describe(err)))
            return self._last.get(container_id)
        short_id = attrs["Id"][:12]
        stats = None
        if (attrs.get("State") or {}).get("Status") in STATS_STATES:
            stats = self._stats(container_id, short_id)
        return container_from_inspect(attrs, stats)

    def _stats(self, container_id: str, short_id: str) -> Stats | None:
        """Fresh stats, or the previous ones (their age grows) when this call failed."""
        try:
            if self._one_shot:
                raw = self._client.api.stats(container_id, stream=False, one_shot=True)
            else:  # API < 1.41: the daemon waits for a second sample (~1 s)
                raw = self._client.api.stats(container_id, stream=False)
        except self._docker_errors.NotFound:
            return None
        except Exception as err:
            self._errors.add("stats")
            log.debug("stats failed", extra=kv(id=short_id, error=_describe(err)))
            return self._last_stats.get(short_id)
        if not raw.get("read") or raw["read"].startswith("0001-"):
            return self._last_stats.get(short_id)  # the container stopped meanwhile
        return parse_stats(raw, time.time())


def _version_at_least(version: str, minimum: str) -> bool:
    def as_tuple(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split("."))

    return as_tuple(version) >= as_tuple(minimum)


# --------------------------------------------------------------------------- events


@dataclass
class EventCounts:
    """Container event counters by ``(name, compose_service)``, the least recently active
    name dropped first once ``max_names`` names are held."""

    max_names: int
    version: int = 0  # changes with every event counted
    _counts: OrderedDict[tuple[str, str], dict[str, int]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, compose_service: str, event: str) -> None:
        key = (name, compose_service)
        with self._lock:
            counts = self._counts.pop(key, None) or dict.fromkeys(EVENTS, 0)
            counts[event] += 1
            self._counts[key] = counts
            self.version += 1
            while len(self._counts) > self.max_names:
                self._counts.popitem(last=False)

    def items(self) -> list[tuple[tuple[str, str], dict[str, int]]]:
        with self._lock:
            return sorted((key, dict(counts)) for key, counts in self._counts.items())


def event_name(action: str) -> str | None:
    """The ``event`` label for a Docker container event action, None for those not counted.

    ``"health_status: unhealthy"`` becomes ``health_status_unhealthy``; ``exec_start: ...``
    and the like are not counted.
    """
    name = action.replace(": ", "_").replace(":", "_").strip()
    return name if name in EVENTS else None


class EventFollower:
    """Background thread that follows ``/events`` and counts container events.

    The kernel may notify several OOM events for one kill (one per OOM-killer invocation in
    the cgroup); ``oom`` counts at most one per container between two ``start`` events, so it
    reads as "runs that hit their memory limit". After a lost connection the stream resumes
    from the last event seen, so events logged by a live daemon are not lost to a reconnect.
    """

    def __init__(self, connect: Callable[[], Any], max_backoff: float, counts: EventCounts,
                 errors: ErrorCounts):
        self._connect = connect
        self._backoff = Backoff(max_backoff)
        self.counts = counts
        self._errors = errors
        self._state = DaemonState("events")
        self._stream: Any = None
        self._client: Any = None
        self._since: str | None = None
        self._oom_seen: set[str] = set()
        self._loop = Loop("docker-events", self._follow_until_lost)

    def start(self) -> EventFollower:
        self._loop.start()
        return self

    def close(self) -> None:
        self._loop.request_stop()
        stream = self._stream
        if stream is not None:
            stream.close()  # ends the blocking read of the stream
        self._loop.stop(timeout=5)
        if self._client is not None:
            self._client.close()

    def _follow_until_lost(self) -> float:
        """Follow the event stream until it breaks; the delay before reconnecting."""
        try:
            self._follow()
            error: BaseException = ConnectionError("event stream ended")
        except Exception as err:  # connection refused, reset, daemon restarting
            error = err
        if self._loop.stopping:
            return 0.0
        self._state.mark_down(error)
        self._errors.add("events")
        self._close_client()
        return self._backoff.next_delay()

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._stream = None

    def _follow(self) -> None:
        self._client = self._connect()
        if self._since is None:  # count from the exporter's start, not the daemon's history
            self._since = _timestamp(time.time_ns())
        self._stream = self._client.api.events(since=self._since, filters={"type": "container"},
                                               decode=True)
        self._state.mark_up()
        self._backoff.reset()
        for event in self._stream:
            self.record(event)

    def record(self, event: dict) -> None:
        """Count one decoded event (also advances the resume point)."""
        time_nano = event.get("timeNano")
        if time_nano:
            self._since = _timestamp(int(time_nano) + 1)
        if event.get("Type", "container") != "container":
            return
        name = event_name(str(event.get("Action") or event.get("status") or ""))
        actor = event.get("Actor") or {}
        container_id = str(actor.get("ID") or event.get("id") or "")
        if name == "start":
            self._oom_seen.discard(container_id)
        elif name == "oom":
            if container_id in self._oom_seen:
                return
            self._oom_seen.add(container_id)
        elif name is None:
            if event.get("Action") == "destroy":
                self._oom_seen.discard(container_id)
            return
        attributes = actor.get("Attributes") or {}
        self.counts.add(str(attributes.get("name", "")), str(attributes.get(COMPOSE_SERVICE_LABEL, "")), name)


def _timestamp(time_ns: int) -> str:
    """The ``since`` parameter format the Engine API accepts: ``seconds.nanoseconds``."""
    return f"{time_ns // 1_000_000_000}.{time_ns % 1_000_000_000:09d}"


# --------------------------------------------------------------------------- collector


class ContainerCollector:
    """Metric families from the poller's latest snapshot and the event counters.

    The snapshot's families are rendered once, when the poller publishes it (``prepared``); a
    scrape adds only what changes between snapshots: error and event counters (a name's events
    rendered again only when they change), and stats ages.
    Neither does I/O: a scrape costs the same whether the daemon answers or not.
    """

    def __init__(self, poller: StatsPoller, events: EventCounts, errors: ErrorCounts,
                 clock: Callable[[], float] = time.time):
        self._poller = poller
        self._events = events
        self._errors = errors
        self._clock = clock
        self.prepared = Prepared()
        self._event_rows = Rows(self._event_family, self._add_event_row)
        poller.listeners.append(self.prepare)

    def describe(self) -> list[Metric]:
        return []

    def prepare(self, snapshot: Snapshot) -> Rendered:
        """Render ``snapshot`` for the scrapes to come (called by the poller with each snapshot)."""
        return self.prepared.publish(self._snapshot_families(snapshot), snapshot,
                                     [self._stats_ages(snapshot.containers)])

    def parts(self) -> Iterator[Part]:
        rendered = self.prepared.current or self.prepare(self._poller.snapshot)
        yield rendered
        yield self._error_family()
        yield from rendered.extra
        yield self._event_rows.part(self._events.version, self._events.items)

    def collect(self) -> Iterable[Metric]:
        return families_of(self.parts())

    def _snapshot_families(self, snapshot: Snapshot) -> list[Metric]:
        return [*self._daemon_families(snapshot), *self._container_families(snapshot.containers),
                *self._stats_families(snapshot.containers)]

    def _daemon_families(self, snapshot: Snapshot) -> Iterable[Metric]:
        yield GaugeMetricFamily("boxwatch_docker_up", "1 if the last refresh reached the Docker daemon, 0 if not.",
                                value=1.0 if snapshot.up else 0.0)
        if snapshot.refreshed_at is not None:
            yield GaugeMetricFamily("boxwatch_docker_last_refresh_timestamp_seconds",
                                    "Unix time of the last successful refresh of container state and stats.",
                                    value=snapshot.refreshed_at)
            yield GaugeMetricFamily("boxwatch_docker_refresh_duration_seconds",
                                    "Time the last successful refresh took (list, inspect and stats of every "
                                    "container).", value=snapshot.refresh_seconds)

    def _error_family(self) -> Metric:
        errors = CounterMetricFamily("boxwatch_docker_errors",
                                     "Docker API calls that failed, by operation.", labels=["operation"])
        for operation, count in self._errors.items():
            errors.add_metric([operation], count)
        return errors

    def _container_families(self, containers: tuple[Container, ...]) -> Iterable[Metric]:
        info = GaugeMetricFamily("boxwatch_container_info", "Container metadata; always 1.",
                                 labels=[*CONTAINER_LABELS, "id"])
        state = GaugeMetricFamily("boxwatch_container_state", "1 for the container's current state, 0 for the others.",
                                  labels=[*CONTAINER_LABELS, "state"])
        health = GaugeMetricFamily("boxwatch_container_health_status",
                                   "1 for the container's current health status, 0 for the others; only "
                                   "containers with a healthcheck.", labels=[*CONTAINER_LABELS, "status"])
        restarts = CounterMetricFamily("boxwatch_container_restarts",
                                       "Restarts of the container by its restart policy (Docker's RestartCount).",
                                       labels=CONTAINER_LABELS)
        oom = GaugeMetricFamily("boxwatch_container_oom_killed",
                                "1 if the container's last run was killed by the OOM killer (State.OOMKilled).",
                                labels=CONTAINER_LABELS)
        for c in containers:
            info.add_metric([*c.labels, c.id], 1.0)
            for name in STATES:
                state.add_metric([*c.labels, name], 1.0 if c.state == name else 0.0)
            if c.health is not None:
                for status in HEALTH_STATUSES:
                    health.add_metric([*c.labels, status], 1.0 if c.health == status else 0.0)
            restarts.add_metric(c.labels, c.restart_count)
            oom.add_metric(c.labels, 1.0 if c.oom_killed else 0.0)
        yield from (info, state, health, restarts, oom)

    def _stats_families(self, containers: tuple[Container, ...]) -> Iterable[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=CONTAINER_LABELS)

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=CONTAINER_LABELS)

        cpu = counter("boxwatch_container_cpu_seconds", "CPU time consumed by the container, user and system.")
        memory = gauge("boxwatch_container_memory_usage_bytes",
                       "Memory used by the container without inactive page cache (cAdvisor's working set).")
        limit = gauge("boxwatch_container_memory_limit_bytes",
                      "Memory limit of the container (the host's memory when it has none).")
        rx = counter("boxwatch_container_network_receive_bytes", "Bytes received on all the container's interfaces.")
        tx = counter("boxwatch_container_network_transmit_bytes", "Bytes sent on all the container's interfaces.")
        block_read = counter("boxwatch_container_block_read_bytes", "Bytes read from block devices.")
        block_write = counter("boxwatch_container_block_write_bytes", "Bytes written to block devices.")
        for c in containers:
            s = c.stats
            if s is None:
                continue
            cpu.add_metric(c.labels, s.cpu_seconds)
            memory.add_metric(c.labels, s.memory_usage_bytes)
            if s.memory_limit_bytes is not None:
                limit.add_metric(c.labels, s.memory_limit_bytes)
            if s.network_receive_bytes is not None:
                rx.add_metric(c.labels, s.network_receive_bytes)
                tx.add_metric(c.labels, s.network_transmit_bytes)
            block_read.add_metric(c.labels, s.block_read_bytes)
            block_write.add_metric(c.labels, s.block_write_bytes)
        yield from (cpu, memory, limit, rx, tx, block_read, block_write)

    def _stats_ages(self, containers: tuple[Container, ...]) -> ClockGauge:
        return ClockGauge("boxwatch_container_stats_age_seconds", "Seconds since the exporter received these stats.",
                          CONTAINER_LABELS, [(c.labels, c.stats.read_at) for c in containers if c.stats is not None],
                          self._clock)

    @staticmethod
    def _event_family() -> Metric:
        return CounterMetricFamily("boxwatch_container_events",
                                   "Container events from the Docker event stream since the exporter started.",
                                   labels=["name", "compose_service", "event"])

    @staticmethod
    def _add_event_row(family: CounterMetricFamily, key: tuple[str, str], counts: dict[str, int]) -> None:
        name, service = key
        for event in EVENTS:
            family.add_metric([name, service, event], counts[event])


# --------------------------------------------------------------------------- wiring


def create(args: argparse.Namespace) -> Source:
    """Start the poller and the event follower against ``--docker.host``."""
    import docker  # imported here so that the other exporters do not need the docker SDK

    concurrency = args.docker_stats_concurrency

    def connect() -> Any:
        return docker.DockerClient(base_url=args.docker_host, timeout=args.docker_timeout,
                                   max_pool_size=concurrency + 2)

    def connect_events() -> Any:
        return docker.DockerClient(base_url=args.docker_host, timeout=args.docker_timeout)

    errors = ErrorCounts()
    counts = EventCounts(max_names=args.docker_events_max_names)
    poller = StatsPoller(connect, docker.errors, args.docker_poll_interval, concurrency,
                         args.docker_retry_max_backoff, errors).start()
    follower = EventFollower(connect_events, args.docker_retry_max_backoff, counts, errors).start()
    log.info("following docker", extra=kv(host=args.docker_host, poll_interval=args.docker_poll_interval))

    def close() -> None:
        follower.close()
        poller.close()

    return Source(collectors={"containers": ContainerCollector(poller, counts, errors)}, close=close)
