"""The demo scenario as Prometheus metrics: a collector for the live server and the backfill history.

Both are built from :meth:`Scenario.series <stack.demo.scenario.Scenario.series>` as prometheus_client
metric families and written by prometheus_client's encoders; nothing here formats exposition text.

* :class:`DemoCollector`: the scenario at the collector's clock (wall-clock time by default), one
  sample per series; a series whose value is NaN at that moment is absent, as it would be from an
  exporter. :func:`serve` puts it on ``/metrics`` through ``boxwatch.web`` (text or OpenMetrics,
  as the scraper asks).
* :func:`write_openmetrics`: the history from the scenario's start, every sample with its timestamp,
  for ``promtool tsdb create-blocks-from openmetrics``, one family at a time through
  :func:`boxwatch.exposition.write_history` (prometheus_client's OpenMetrics encoder renders each
  series' name and labels once; a week is two million samples).

Series are grouped into families by name (``_total`` off a counter's, ``_bucket``/``_count``/``_sum``
off a histogram's), each family once, in the order the scenario first yields it.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

import numpy as np
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import Metric

from boxwatch.exposition import write_history
from boxwatch.web import Server, WebConfig
from boxwatch.web import serve as serve_app
from stack.demo.scenario import DAY, DEFAULT_SEED, DEFAULT_STEP, Labels, Scenario

HELP = "DEMO DATA (boxwatch demo scenario)."
_EOF = "# EOF\n"


def family_name(name: str, kind: str) -> str:
    """The family a sample named ``name`` belongs to (OpenMetrics naming: no ``_total``, no ``_bucket``)."""
    if kind == "counter":
        return name.removesuffix("_total")
    if kind == "histogram":
        for suffix in ("_bucket", "_count", "_sum"):
            name = name.removesuffix(suffix)
    return name


def _grouped(series: Iterable[tuple[str, str, Labels, np.ndarray]]) -> dict[str, tuple[str, list]]:
    """family name -> (type, [(sample name, labels, values), ...]), in first-seen order."""
    families: dict[str, tuple[str, list]] = {}
    for name, kind, labels, values in series:
        families.setdefault(family_name(name, kind), (kind, []))[1].append((name, dict(labels), values))
    return families


# ------------------------------------------------------------------------------- live


def families_at(scenario: Scenario, now: float) -> list[Metric]:
    """The scenario's metric families as a scrape at ``now`` sees them (counters cumulative since the start)."""
    t = scenario.times(max(now, scenario.start))
    families = []
    for family, (kind, members) in _grouped(scenario.series(t)).items():
        metric = Metric(family, HELP, kind)
        for name, labels, values in members:
            if not np.isnan(values[-1]):
                metric.add_sample(name, labels, float(values[-1]))
        if metric.samples:
            families.append(metric)
    return families


class DemoCollector:
    """prometheus_client collector of ``scenario`` at ``clock()`` (default: wall-clock time)."""

    def __init__(self, scenario: Scenario, clock: Callable[[], float] = time.time):
        self._scenario = scenario
        self._clock = clock

    def describe(self) -> list[Metric]:
        return []  # no scenario computation when registered

    def collect(self) -> list[Metric]:
        return families_at(self._scenario, self._clock())


def make_app(scenario: Scenario, clock: Callable[[], float] = time.time):
    """WSGI app: the scenario at ``/metrics`` (negotiated and gzipped as prometheus_client does), ``/healthz``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DemoCollector(scenario, clock))
    metrics = make_wsgi_app(registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found\n"]

    return app


def serve(scenario: Scenario, listen_address: str, clock: Callable[[], float] = time.time,
          web_config: WebConfig | None = None) -> Server:
    """Serve the scenario live on ``listen_address`` (``HOST:PORT``; port 0 picks one: ``server.port``).

    Returns the started ``boxwatch.web.Server``; ``stop()`` it when done.
    """
    return serve_app(make_app(scenario, clock), listen_address, web_config, name="demo")


def serve_until(scenario: Scenario, listen_address: str, stop: threading.Event,
                web_config: WebConfig | None = None) -> None:
    """Serve until ``stop`` is set (the CLI sets it on SIGTERM / SIGINT)."""
    server = serve(scenario, listen_address, web_config=web_config)
    try:
        stop.wait()
    finally:
        server.stop()


# ------------------------------------------------------------------------------- history


def write_openmetrics(scenario: Scenario, out: TextIO, until: float | None = None) -> int:
    """Write the history (start..``until``, default: the scenario's end) as one OpenMetrics document
    for promtool, every sample timestamped; return the sample count."""
    t = scenario.times(until)
    count = 0
    for family, (kind, members) in _grouped(scenario.series(t)).items():
        count += write_history(out, Metric(family, HELP, kind), members, t)
    out.write(_EOF)
    return count


def generate(start: float, end: float, step: float = DEFAULT_STEP, seed: int = DEFAULT_SEED,
             runtime: bool = False) -> str:
    """OpenMetrics text of the demo scenario from ``start`` to ``end`` (unix seconds), for promtool.

    The incident is placed relative to ``end`` (see :func:`stack.demo.scenario.incident`).
    """
    buffer = io.StringIO()
    write_openmetrics(Scenario(end, days=(end - start) / DAY, step=step, seed=seed, runtime=runtime), buffer)
    return buffer.getvalue()


def write(path: Path, end: float, days: float = 7.0, step: float = DEFAULT_STEP, seed: int = DEFAULT_SEED,
          runtime: bool = False) -> Scenario:
    """Write the scenario's history to ``path`` (OpenMetrics); return the scenario."""
    scenario = Scenario(end, days=days, step=step, seed=seed, runtime=runtime)
    with open(path, "w", encoding="utf-8") as out:
        write_openmetrics(scenario, out)
    return scenario
