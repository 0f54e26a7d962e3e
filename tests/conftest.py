"""Shared fixtures: real Prometheus / Alertmanager processes and a webhook sink."""

from __future__ import annotations

import pytest

from stack.webhook import WebhookSink
from tests.harness import Alertmanager, Prometheus

# Fixtures that start a process (directly or through another fixture): a test using one belongs to the
# slow tier even where its file forgot the marker, so `-m "not slow"` stays quick as tests are added.
PROCESS_FIXTURES = frozenset({"start_prometheus", "start_alertmanager", "history_prometheus", "start_detector",
                              "start_exporter"})


def pytest_collection_modifyitems(items):
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def start_prometheus(tmp_path):
    """Factory: ``start_prometheus(config=..., rule_files=..., data_dir=...)`` -> running Prometheus."""
    started: list[Prometheus] = []

    def start(**kwargs) -> Prometheus:
        prom = Prometheus(tmp_path / f"prometheus-{len(started)}", **kwargs)
        started.append(prom)
        return prom

    yield start
    for prom in started:
        prom.stop()


@pytest.fixture
def webhook():
    sink = WebhookSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def start_alertmanager(tmp_path):
    """Factory: ``start_alertmanager(config_dict)`` -> running Alertmanager."""
    started: list[Alertmanager] = []

    def start(config: dict) -> Alertmanager:
        am = Alertmanager(tmp_path / f"alertmanager-{len(started)}", config)
        started.append(am)
        return am

    yield start
    for am in started:
        am.stop()
