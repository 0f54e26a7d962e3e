"""``boxwatch-exporter containers`` against a real Docker engine started by the tests.

The engine is a private ``dockerd`` (own socket, data root, no bridge, no iptables) running
containers from a busybox image imported from a tarball. The exporter runs as a subprocess and
every assertion is on the exposition text it serves.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exporters import containers
from tests.dockerd import BUSYBOX_IMAGE, PrivateDockerd
from tests.harness import IN_CI, Process, free_port, python_module, require_binary, wait_http

MiB = 1024 * 1024
COMPOSE_LABEL = {"com.docker.compose.service": "web"}


# --------------------------------------------------------------------------- helpers


class Scrape:
    """One scrape of the exporter, parsed: ``value(name, **labels)``."""

    def __init__(self, text: str, seconds: float):
        self.text = text
        self.seconds = seconds
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def find(self, metric: str, /, **labels: str) -> list:
        return [s for s in self.samples
                if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, metric: str, /, **labels: str) -> float | None:
        found = self.find(metric, **labels)
        if len(found) > 1:
            raise AssertionError(f"{metric}{labels} matches {len(found)} series: {found}")
        return found[0].value if found else None

    def names(self) -> set[str]:
        return {s.labels["name"] for s in self.find("boxwatch_container_info")}


class Exporter(Process):
    def __init__(self, engine: PrivateDockerd, log_dir, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        argv = python_module("exporters", "containers", f"--docker.host={engine.url}",
                             f"--web.listen-address=127.0.0.1:{self.port}", *flags)
        super().__init__(argv, log_dir / f"exporter-{self.port}.log")
        wait_http(self.url, 30, self.proc)

    def scrape(self) -> Scrape:
        started = time.perf_counter()
        response = requests.get(self.url, timeout=10)
        response.raise_for_status()
        return Scrape(response.text, time.perf_counter() - started)

    def wait_until(self, unmet: Callable[[Scrape], list[str]], timeout: float = 45.0) -> Scrape:
        """Scrape until ``unmet(scrape)`` lists no unmet condition; fail with the last list."""
        deadline = time.monotonic() + timeout
        while True:
            scrape = self.scrape()
            missing = unmet(scrape)
            if not missing:
                return scrape
            if time.monotonic() > deadline:
                raise AssertionError(f"after {timeout}s still unmet: {missing}\n{self.output()[-2000:]}")
            time.sleep(0.3)


def check(conditions: dict[str, bool]) -> list[str]:
    return [what for what, ok in conditions.items() if not ok]


def run(client, name: str, command: list[str], **kwargs):
    kwargs.setdefault("network_mode", "none")
    return client.containers.run(BUSYBOX_IMAGE, command, name=name, detach=True, **kwargs)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.2)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def engine():
    """A private dockerd with the busybox image; everything it started is gone afterwards."""
    dockerd = require_binary("dockerd", "/usr/sbin/dockerd")
    busybox = require_binary("busybox", "/bin/busybox")
    if os.geteuid() != 0:
        message = "dockerd needs root"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    daemon = PrivateDockerd(dockerd, busybox)
    try:
        daemon.start()
        daemon.import_busybox()
        yield daemon
    finally:
        daemon.cleanup()
    leftovers = daemon.leftover_processes()
    assert not leftovers, f"processes left behind by the test engine: {leftovers}"


@pytest.fixture(scope="module")
def client(engine):
    with closing(engine.client()) as docker_client:
        yield docker_client


@pytest.fixture(scope="module")
def exporter(engine, tmp_path_factory):
    proc = Exporter(engine, tmp_path_factory.mktemp("exporter"), "--docker.poll-interval=0.3",
                    "--docker.timeout=5", "--docker.retry-max-backoff=1", "--log.level=info")
    yield proc
    assert proc.stop() == 0, proc.output()


@pytest.fixture(scope="module")
def scenario(engine, client, exporter):
    """Containers that exit, restart, get OOM-killed, turn unhealthy and do some work.

    Started after the exporter so that their events are counted; returns once Docker itself
    reports each of them in its final state.
    """
    run(client, "exits", ["sh", "-c", "exit 3"], labels=COMPOSE_LABEL)
    run(client, "flaky", ["sh", "-c", "sleep 0.2; exit 1"],
        restart_policy={"Name": "on-failure", "MaximumRetryCount": 2})
    # The hog's worker is OOM-killed and the container lives on until the test stops it. Docker sets
    # State.OOMKilled at exit only if the runtime's OOM event came first; a container that exits with
    # its killed worker races that event, and loses it now and then.
    started = time.time()
    run(client, "hog", ["sh", "-c", "head -c 200m /dev/zero | tail; sleep 300"],
        mem_limit="16m", memswap_limit="16m")
    run(client, "sick", ["sleep", "300"], init=True,
        healthcheck={"test": ["CMD", "false"], "interval": 200_000_000, "timeout": 2_000_000_000,
                     "retries": 1})
    run(client, "worker", ["sh", "-c", "x=$(yes aaaaaaaaaaaaaaa | head -c 6291456); sleep 300 & wait"],
        init=True, mem_limit="64m")

    def attrs(name: str) -> dict:
        return client.api.inspect_container(name)

    wait_for(lambda: attrs("exits")["State"]["Status"] == "exited", "exits exited")
    wait_for(lambda: attrs("flaky")["RestartCount"] == 2 and attrs("flaky")["State"]["Status"] == "exited",
             "flaky restarted twice then stayed down")
    assert attrs("hog")["HostConfig"]["Memory"] == 16 * MiB
    wait_for(lambda: any(client.events(since=started, until=time.time() + 1, decode=True,
                                       filters={"container": "hog", "event": "oom"})), "hog's oom event")
    client.api.kill("hog")
    wait_for(lambda: attrs("hog")["State"]["Status"] == "exited", "hog exited")
    assert attrs("hog")["State"]["OOMKilled"], "the hog was not OOM-killed: the test setup is wrong"
    wait_for(lambda: attrs("sick")["State"].get("Health", {}).get("Status") == "unhealthy", "sick unhealthy")
    return client


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_help_documents_every_flag():
    declared: dict[str, str] = {}

    class Recorder(argparse.ArgumentParser):
        def add_argument(self, *names, **kwargs):
            declared.update(dict.fromkeys(names, kwargs.get("help", "")))
            return super().add_argument(*names, **kwargs)

    containers.add_arguments(Recorder())
    assert declared, "the module declares no flags"
    assert all(declared.values()), f"flags without help: {[f for f, h in declared.items() if not h]}"
    result = subprocess.run(python_module("exporters", "containers", "--help"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in [*declared, "--web.listen-address", "--web.telemetry-path", "--log.level"]:
        assert flag in result.stdout, f"{flag} missing from --help"
    assert "127.0.0.1:9873" in result.stdout, "default listen address"


@pytest.mark.slow
def test_no_daemon_is_reported_and_served(tmp_path):
    """Without a daemon the exporter starts, serves docker_up 0 and logs it once."""
    port = free_port()
    proc = Process(python_module("exporters", "containers", f"--docker.host=unix://{tmp_path}/none.sock",
                                 f"--web.listen-address=127.0.0.1:{port}", "--docker.retry-max-backoff=0.5"),
                   tmp_path / "exporter.log")
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_http(url, 30, proc.proc)
        time.sleep(2)  # several retries
        scrape = Scrape(requests.get(url, timeout=10).text, 0)
        assert scrape.value("boxwatch_docker_up") == 0
        assert scrape.value("boxwatch_docker_errors_total", operation="connect") >= 2
        assert scrape.value("boxwatch_exporter_scrape_collector_success", collector="containers") == 1
        assert not scrape.find("boxwatch_container_info")
    finally:
        assert proc.stop() == 0
    assert proc.output().count("stats: docker daemon unreachable") == 1, proc.output()


@pytest.mark.slow
def test_bad_flag_value_is_a_clear_error():
    result = subprocess.run(python_module("exporters", "containers", "--docker.poll-interval=0"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--docker.poll-interval" in result.stderr and "must be > 0" in result.stderr


@pytest.mark.slow
@pytest.mark.docker
def test_states_restarts_oom_health_and_events(scenario, exporter):
    def unmet(s: Scrape) -> list[str]:
        web = {"name": "exits", "image": BUSYBOX_IMAGE, "compose_service": "web"}
        return check({
            "docker up": s.value("boxwatch_docker_up") == 1,
            "exits is exited": s.value("boxwatch_container_state", **web, state="exited") == 1,
            "exits not running": s.value("boxwatch_container_state", **web, state="running") == 0,
            "exits died once": s.value("boxwatch_container_events_total", name="exits",
                                       compose_service="web", event="die") == 1,
            "flaky restarted twice": s.value("boxwatch_container_restarts_total", name="flaky") == 2,
            "flaky started three times": s.value("boxwatch_container_events_total", name="flaky",
                                                 event="start") == 3,
            "flaky died three times": s.value("boxwatch_container_events_total", name="flaky",
                                              event="die") == 3,
            "hog OOM-killed": s.value("boxwatch_container_oom_killed", name="hog") == 1,
            "one oom event for hog": s.value("boxwatch_container_events_total", name="hog", event="oom") == 1,
            "sick unhealthy": s.value("boxwatch_container_health_status", name="sick", status="unhealthy") == 1,
            "sick not healthy": s.value("boxwatch_container_health_status", name="sick", status="healthy") == 0,
            "unhealthy event": s.value("boxwatch_container_events_total", name="sick",
                                       event="health_status_unhealthy") == 1,
            "worker running": s.value("boxwatch_container_state", name="worker", state="running") == 1,
            "worker used CPU": (s.value("boxwatch_container_cpu_seconds_total", name="worker") or 0) > 0,
            "worker holds >= 4 MiB": (s.value("boxwatch_container_memory_usage_bytes", name="worker") or 0)
            >= 4 * MiB,
            "worker limit is 64 MiB": s.value("boxwatch_container_memory_limit_bytes", name="worker") == 64 * MiB,
            "worker stats fresh": (s.value("boxwatch_container_stats_age_seconds", name="worker") or 99) < 10,
        })

    scrape = exporter.wait_until(unmet)
    assert scrape.value("boxwatch_container_oom_killed", name="worker") == 0
    assert scrape.value("boxwatch_container_health_status", name="worker", status="healthy") is None, \
        "a container without healthcheck must not have health series"
    assert scrape.value("boxwatch_container_cpu_seconds_total", name="exits") is None, \
        "an exited container has no resource stats"
    assert scrape.value("boxwatch_container_network_receive_bytes_total", name="worker") is None, \
        "network_mode=none: no interface, no network series"
    info = scrape.find("boxwatch_container_info", name="exits")
    assert info and info[0].labels["compose_service"] == "web" and len(info[0].labels["id"]) == 12
    assert scrape.value("boxwatch_exporter_scrape_collector_success", collector="containers") == 1


@pytest.mark.slow
@pytest.mark.docker
def test_removed_container_disappears_but_keeps_its_event_counters(scenario, exporter):
    run(scenario, "gone", ["sh", "-c", "exit 0"])
    exporter.wait_until(lambda s: check({"gone listed": "gone" in s.names(),
                                         "gone died": s.value("boxwatch_container_events_total", name="gone",
                                                              event="die") == 1}))
    scenario.containers.get("gone").remove()
    scrape = exporter.wait_until(lambda s: check({"gone not listed": "gone" not in s.names()}))
    assert not scrape.find("boxwatch_container_state", name="gone")
    assert scrape.value("boxwatch_container_events_total", name="gone", event="die") == 1


@pytest.mark.slow
@pytest.mark.docker
def test_promtool_check_metrics_is_clean(scenario, exporter):
    promtool = require_binary("promtool", "/usr/bin/promtool")
    scrape = exporter.wait_until(lambda s: check({
        "health series present": bool(s.find("boxwatch_container_health_status")),
        "event series present": bool(s.find("boxwatch_container_events_total")),
        "stats present": bool(s.find("boxwatch_container_cpu_seconds_total")),
    }))
    result = subprocess.run([promtool, "check", "metrics"], input=scrape.text, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.docker
def test_scrape_serves_the_cache_while_the_daemon_is_frozen(engine, client, tmp_path):
    """With the daemon frozen (SIGSTOP) a scrape still answers at once, from the cache."""
    count = 30
    names = [f"idle-{i:02d}" for i in range(count)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: run(client, n, ["sleep", "600"], init=True), names))
    exporter = Exporter(engine, tmp_path, "--docker.poll-interval=0.3", "--docker.timeout=120")
    try:
        exporter.wait_until(lambda s: check({
            f"{n} has stats": s.value("boxwatch_container_cpu_seconds_total", name=n) is not None for n in names
        }))
        engine.pause()
        try:
            time.sleep(1.5)  # the poller is now stuck in a call to the frozen daemon
            scrapes = [exporter.scrape() for _ in range(10)]
        finally:
            engine.resume()
        for scrape in scrapes:
            assert set(names) <= scrape.names()
            assert scrape.value("boxwatch_docker_up") == 1
            assert scrape.seconds < 1.0, f"scrape took {scrape.seconds:.3f}s"
            assert scrape.value("boxwatch_exporter_scrape_collector_duration_seconds", collector="containers") < 0.1
        unlimited = scrapes[0].value("boxwatch_container_memory_limit_bytes", name=names[0])
        assert unlimited is not None and unlimited > 64 * MiB, "no limit: the host's memory"
        ages = [s.value("boxwatch_container_stats_age_seconds", name=names[0]) for s in scrapes]
        assert ages[-1] > 1.0 and ages == sorted(ages), f"stats age should grow while frozen: {ages}"
        exporter.wait_until(lambda s: check({
            "fresh stats after thaw": s.value("boxwatch_container_stats_age_seconds", name=names[0]) < 1.0}))
    finally:
        exporter.stop()
        for name in names:
            client.containers.get(name).remove(force=True)


@pytest.mark.slow
@pytest.mark.docker
def test_daemon_stop_and_return(engine, exporter):
    """The exporter keeps serving with docker_up 0 while the daemon is gone, then resumes."""
    with closing(engine.client()) as docker_client:
        run(docker_client, "always", ["sleep", "600"], init=True, restart_policy={"Name": "always"})
    exporter.wait_until(lambda s: check({
        "always running": s.value("boxwatch_container_state", name="always", state="running") == 1}))
    before = exporter.scrape().names()
    lines_before = exporter.output().count("stats: docker daemon unreachable")

    engine.stop()
    down = exporter.wait_until(lambda s: check({"docker down": s.value("boxwatch_docker_up") == 0}), timeout=20)
    assert not down.names(), "no container series while the daemon cannot vouch for them"
    time.sleep(3)  # several retries while the daemon is away
    assert exporter.scrape().value("boxwatch_docker_up") == 0
    assert exporter.output().count("stats: docker daemon unreachable") == lines_before + 1, \
        "the outage must be logged once, not once per retry"
    assert exporter.scrape().value("boxwatch_docker_errors_total", operation="connect") > 0

    engine.start()
    exporter.wait_until(lambda s: check({
        "docker up again": s.value("boxwatch_docker_up") == 1,
        "always running again": s.value("boxwatch_container_state", name="always", state="running") == 1,
        "every container back": before <= s.names(),
    }), timeout=30)
    with closing(engine.client()) as docker_client:
        run(docker_client, "after-return", ["sh", "-c", "exit 0"])
    exporter.wait_until(lambda s: check({
        "events followed again": s.value("boxwatch_container_events_total", name="after-return",
                                         event="die") == 1}), timeout=30)
    assert "stats: docker daemon reachable" in exporter.output()
