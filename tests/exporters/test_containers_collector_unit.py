"""The container collector in-process: Engine API documents (``/containers/{id}/json`` and
``/containers/{id}/stats``) through ``container_from_inspect`` and ``parse_stats`` into a snapshot,
rendered with ``generate_latest``.

The quick tier's view of what tests/exporters/test_containers.py checks against a private dockerd:
states, health, restarts, OOM kills, resource counters in base units, event counters and the daemon's
up gauge. Talking to the daemon (polling, events, a frozen or stopped daemon) stays with those tests.
"""

from __future__ import annotations

import gzip

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from exporters.containers import (
    ContainerCollector,
    ErrorCounts,
    EventCounts,
    Snapshot,
    StatsPoller,
    container_from_inspect,
    event_name,
    parse_stats,
)
from exporters.server import Source, build_registry, make_app

NOW = 1_767_225_600.0
WEB = (("compose_service", "web"), ("image", "nginx:1.27"), ("name", "shop-web-1"))
JOB = (("compose_service", ""), ("image", "bb:local"), ("name", "batch"))


def inspect(name: str, image: str, status: str, service: str = "", health: str | None = None,
            restarts: int = 0, oom: bool = False) -> dict:
    state = {"Status": status, "OOMKilled": oom, **({"Health": {"Status": health}} if health else {})}
    labels = {"com.docker.compose.service": service} if service else {}
    return {"Id": f"{name:0<64}", "Name": f"/{name}", "Image": "sha256:0123", "RestartCount": restarts,
            "State": state, "Config": {"Image": image, "Labels": labels}}


STATS_V2 = {  # cgroup v2: memory usage less inactive_file, as docker stats and cAdvisor count it
    "cpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000}},
    "memory_stats": {"usage": 300 << 20, "limit": 1 << 30, "stats": {"inactive_file": 100 << 20}},
    "networks": {"eth0": {"rx_bytes": 1000, "tx_bytes": 200}, "eth1": {"rx_bytes": 24, "tx_bytes": 0}},
    "blkio_stats": {"io_service_bytes_recursive": [{"op": "read", "value": 4096}, {"op": "write", "value": 512},
                                                   {"op": "Read", "value": 4096}]},
}


def collector() -> tuple[ContainerCollector, CollectorRegistry, EventCounts, ErrorCounts]:
    """A collector on a poller that is never started: the test publishes its snapshots."""
    errors = ErrorCounts()
    events = EventCounts(max_names=100)
    poller = StatsPoller(connect=lambda: None, docker_errors=(), interval=5.0, concurrency=1, max_backoff=30.0,
                         errors=errors)
    containers = ContainerCollector(poller, events, errors, clock=lambda: NOW + 3)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(containers)
    return containers, registry, events, errors


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def with_(labels: tuple, **extra: str) -> tuple:
    return tuple(sorted((*labels, *extra.items())))


def test_state_health_restarts_oom_and_resources_of_each_container():
    containers, registry, _, _ = collector()
    web = container_from_inspect(inspect("shop-web-1", "nginx:1.27", "running", "web", "unhealthy", restarts=3),
                                 parse_stats(STATS_V2, NOW))
    job = container_from_inspect(inspect("batch", "bb:local", "exited", oom=True), None)
    containers.prepare(Snapshot(True, (web, job), refreshed_at=NOW, refresh_seconds=0.05))
    m = scrape(registry)
    assert m[("boxwatch_docker_up", ())] == 1.0
    assert m[("boxwatch_container_state", with_(WEB, state="running"))] == 1.0
    assert m[("boxwatch_container_state", with_(WEB, state="exited"))] == 0.0
    assert m[("boxwatch_container_state", with_(JOB, state="exited"))] == 1.0
    assert m[("boxwatch_container_health_status", with_(WEB, status="unhealthy"))] == 1.0
    assert not any(name == "boxwatch_container_health_status" and dict(labels)["name"] == "batch"
                   for name, labels in m)  # no healthcheck: no health series
    assert m[("boxwatch_container_restarts_total", WEB)] == 3.0
    assert m[("boxwatch_container_oom_killed", JOB)] == 1.0 and m[("boxwatch_container_oom_killed", WEB)] == 0.0
    assert m[("boxwatch_container_cpu_seconds_total", WEB)] == 2.5
    assert m[("boxwatch_container_memory_usage_bytes", WEB)] == 200 << 20
    assert m[("boxwatch_container_memory_limit_bytes", WEB)] == 1 << 30
    assert m[("boxwatch_container_network_receive_bytes_total", WEB)] == 1024
    assert m[("boxwatch_container_network_transmit_bytes_total", WEB)] == 200
    assert m[("boxwatch_container_block_read_bytes_total", WEB)] == 8192
    assert m[("boxwatch_container_block_write_bytes_total", WEB)] == 512
    assert m[("boxwatch_container_stats_age_seconds", WEB)] == 3.0
    assert ("boxwatch_container_cpu_seconds_total", JOB) not in m  # a stopped container has no stats


def test_a_container_without_network_has_no_network_series():
    containers, registry, _, _ = collector()
    isolated = {**STATS_V2, "networks": None}
    job = container_from_inspect(inspect("batch", "bb:local", "running"), parse_stats(isolated, NOW))
    containers.prepare(Snapshot(True, (job,), refreshed_at=NOW, refresh_seconds=0.01))
    m = scrape(registry)
    assert m[("boxwatch_container_cpu_seconds_total", JOB)] == 2.5
    assert ("boxwatch_container_network_receive_bytes_total", JOB) not in m


def test_events_and_errors_are_counted_between_snapshots_and_a_lost_daemon_shows():
    containers, registry, events, errors = collector()
    containers.prepare(Snapshot(False))
    for action in ("die", "restart", "health_status: unhealthy", "exec_start: sh -c true"):
        if event_name(action):
            events.add("shop-web-1", "web", event_name(action))
    errors.add("connect")
    errors.add("connect")
    m = scrape(registry)
    assert m[("boxwatch_docker_up", ())] == 0.0
    assert m[("boxwatch_docker_errors_total", (("operation", "connect"),))] == 2.0
    assert m[("boxwatch_docker_errors_total", (("operation", "stats"),))] == 0.0
    counted = {dict(labels)["event"]: v for (name, labels), v in m.items() if name == "boxwatch_container_events_total"}
    assert counted["die"] == counted["restart"] == counted["health_status_unhealthy"] == 1.0
    assert counted["oom"] == 0.0 and "exec_start" not in " ".join(counted)
    assert not any(name.startswith("boxwatch_container_state") for name, _ in m)


def test_served_event_counters_follow_every_event_in_every_format():
    """The bytes a scrape serves keep each name's event counters rendered until they change: a new
    event, a new name and a name dropped past ``max_names`` all show in the next scrape, in text and
    gzip'd OpenMetrics alike, with the same samples the registry's own rendering has."""
    containers, registry, events, _ = collector()
    events.max_names = 2
    containers.prepare(Snapshot(True))
    app = make_app("containers", build_registry("containers", Source({"containers": containers})))

    def served(accept: str = "", encoding: str = "") -> dict[tuple[str, str], float]:
        got: dict = {}
        body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "HTTP_ACCEPT": accept,
                             "HTTP_ACCEPT_ENCODING": encoding}, lambda status, headers: got.update(headers)))
        text = (gzip.decompress(body) if got.get("Content-Encoding") == "gzip" else body).decode()
        parse = openmetrics_families if "openmetrics" in got["Content-Type"] else text_string_to_metric_families
        return {(s.labels["name"], s.labels["event"]): s.value for f in parse(text)
                for s in f.samples if s.name == "boxwatch_container_events_total"}

    formats = [("", ""), ("application/openmetrics-text;version=1.0.0", "gzip")]
    events.add("web-1", "web", "start")
    for accept, encoding in formats:
        assert served(accept, encoding)[("web-1", "start")] == 1.0
    events.add("web-1", "web", "die")
    events.add("job", "", "start")
    for accept, encoding in formats:
        counted = served(accept, encoding)
        assert counted[("web-1", "die")] == counted[("web-1", "start")] == counted[("job", "start")] == 1.0
        assert counted[("job", "die")] == 0.0 and len(counted) == 16
    events.add("late", "", "oom")  # a third name: the least recently active one (web-1) goes
    for accept, encoding in formats:
        counted = served(accept, encoding)
        assert counted[("late", "oom")] == 1.0 and not any(name == "web-1" for name, _ in counted)
    in_registry = {(dict(labels)["name"], dict(labels)["event"]): v for (name, labels), v in scrape(registry).items()
                   if name == "boxwatch_container_events_total"}
    assert served() == in_registry
