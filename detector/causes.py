"""Cause hints: when a unit scores above the anomaly threshold, what else happened to the same GPU,
container or journal unit around that time.

The scoring thread only reports the points it scored (:meth:`CauseFinder.observe`: a few dict
updates). A background thread looks up the causes of every unit in an anomalous run with PromQL
instant queries -- bounded (``causes.max_units`` per pass, ``causes.timeout`` per query), cached
(looked up again every ``causes.refresh``), and never able to break scoring: a failing query is
counted and skipped. The window reaches from ``causes.window`` before the run began to now (at
most ``causes.max_lookback``), so an Xid logged just before a temperature climbed is found.

Join keys (the exporters' labels, see docs/causes.md): a unit with ``uuid``/``gpu``/``pci_bus_id``
is a GPU (Xid events join through ``boxwatch_gpu_info``'s ``pci_bus_id``); a unit with ``name``
(and no GPU label) a container; a unit with ``unit`` a journal unit. Host pressure (node_exporter's
PSI) applies to every unit.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from prometheus_client.core import GaugeMetricFamily, Metric

from boxwatch.log import kv
from boxwatch.loop import Background, Loop
from boxwatch.xid import CATALOG
from detector.config import CausesConfig, ReaderConfig
from detector.writer import ScoredPoint

log = logging.getLogger("boxwatch.detector.causes")

IGNORED_THROTTLE = "gpu_idle|applications_clocks_setting|display_clock_setting|sync_boost"
CRITICAL_XIDS = frozenset({48, 62, 64, 74, 79, 95, 119, 120})
ERROR_PRIORITIES = "emerg|alert|crit|err"
MAX_RANK = 3  # top features exported per unit
Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Cause:
    """One related signal. ``cause`` is the bounded label value; ``detail`` the evidence for people."""

    cause: str
    kind: str
    detail: str
    weight: float

    def as_dict(self) -> dict[str, str]:
        return {"cause": self.cause, "kind": self.kind, "detail": self.detail}


@dataclass
class Run:
    """A unit's current (or last) stretch of points above the threshold."""

    labels: Labels  # the scored series' labels (query and model included) at its last point
    started: float
    last_above: float
    score: float
    ended: float | None = None
    causes: list[Cause] = field(default_factory=list)
    checked_at: float = 0.0


# --------------------------------------------------------------------------- the checks


def _q(value: str) -> str:
    return json.dumps(value)  # a PromQL string literal: double quotes, Go escapes


def _selector(labels: Mapping[str, str], *names: str) -> str:
    return ",".join(f"{name}={_q(labels[name])}" for name in names if labels.get(name))


def new_events(metric: str, selector: str, lookback: str) -> str:
    """Increase of a counter over the lookback, also for a series born inside it (the exporters create an
    event counter at its first event, so ``increase()`` alone would see nothing)."""
    series = f"{metric}{{{selector}}}"
    return (f"(({series} - {series} offset {lookback}) > 0 or "
            f"(({series} unless {series} offset {lookback}) > 0))")


def is_gpu(labels: Mapping[str, str]) -> bool:
    return any(labels.get(name) for name in ("uuid", "gpu", "pci_bus_id"))


def checks(labels: Mapping[str, str], lookback: str) -> list[tuple[str, str]]:
    """``(kind, PromQL)`` of every check that applies to a unit with ``labels``."""
    found: list[tuple[str, str]] = []
    if is_gpu(labels):
        gpu = _selector(labels, "uuid") or _selector(labels, "gpu")
        if labels.get("pci_bus_id"):
            xids = new_events("boxwatch_gpu_xid_errors_total", _selector(labels, "pci_bus_id"), lookback)
            found.append(("xid", f"sum by (pci_bus_id, xid) ({xids})"))
        elif gpu:
            xids = new_events("boxwatch_gpu_xid_errors_total", "", lookback)
            found.append(("xid", f"sum by (pci_bus_id, xid) ({xids}) * on (pci_bus_id) group_left () "
                                 f"max by (pci_bus_id) (boxwatch_gpu_info{{{gpu}}})"))
        if gpu:
            found.append(("throttle", f"max by (reason) (max_over_time(boxwatch_gpu_throttle_active{{{gpu},"
                                      f"reason!~{_q(IGNORED_THROTTLE)}}}[{lookback}])) == 1"))
        found.append(("journal_errors", _journal_errors('unit="kernel"', lookback)))
    elif labels.get("name") or labels.get("compose_service"):
        container = _selector(labels, "name", "compose_service")
        ooms = new_events("boxwatch_container_events_total", container + ',event="oom"', lookback)
        found.append(("oom", f"sum({ooms}) or max(max_over_time(boxwatch_container_oom_killed{{{container}}}"
                             f"[{lookback}])) == 1"))
        found.append(("restart", f"sum({new_events('boxwatch_container_restarts_total', container, lookback)})"))
        found.append(("unhealthy", f"max(max_over_time(boxwatch_container_health_status{{{container},"
                                   f"status=\"unhealthy\"}}[{lookback}])) == 1"))
    if labels.get("unit"):
        unit = _selector(labels, "unit")
        found.append(("journal_errors", _journal_errors(unit, lookback)))
        found.append(("new_templates", f"sum by (unit) (increase(boxwatch_journal_new_templates_total{{{unit}}}"
                                       f"[{lookback}])) >= 1"))
    found.append(("host_pressure", " or ".join(
        f'label_replace(max_over_time(rate(node_pressure_{resource}_waiting_seconds_total[5m])[{lookback}:1m]) > 0.2,'
        f' "resource", "{resource}", "", "")' for resource in ("cpu", "memory", "io"))))
    return found


def _journal_errors(unit_selector: str, lookback: str) -> str:
    return (f"sum by (unit) (increase(boxwatch_journal_entries_total{{{unit_selector},"
            f"priority=~{_q(ERROR_PRIORITIES)}}}[{lookback}])) >= 5")


def to_causes(kind: str, result: list[dict]) -> list[Cause]:
    """Causes from one check's instant-vector result."""
    causes = []
    for item in result:
        labels, value = item["metric"], float(item["value"][1])
        if kind == "xid":
            code = int(labels.get("xid", "0") or 0)
            known = CATALOG.get(code)
            name = known.name if known else "unknown"
            text = known.meaning + " " + known.action if known else "Not in boxwatch's catalog; see NVIDIA's Xid docs."
            causes.append(Cause(f"Xid {code} {name}", "xid",
                                f"{value:g} Xid {code} event(s) on {labels.get('pci_bus_id', '?')}: {text}",
                                20.0 if code in CRITICAL_XIDS else 10.0))
        elif kind == "throttle":
            reason = labels.get("reason", "?")
            thermal = "thermal" in reason or reason == "hw_slowdown"
            causes.append(Cause(f"throttle {reason}", kind, f"clock throttle reason {reason} was active",
                                9.0 if thermal else 5.0))
        elif kind == "oom":
            causes.append(Cause("OOM kill", kind, "the container was killed for running out of memory", 8.0))
        elif kind == "restart":
            causes.append(Cause("restarted", kind, f"{value:g} restart(s)", 7.0))
        elif kind == "unhealthy":
            causes.append(Cause("unhealthy", kind, "the container's healthcheck failed", 6.0))
        elif kind == "journal_errors":
            unit = labels.get("unit", "?")
            causes.append(Cause(f"journal errors {unit}", kind, f"{value:.0f} error lines from {unit}", 4.0))
        elif kind == "new_templates":
            unit = labels.get("unit", "?")
            causes.append(Cause(f"new log templates {unit}", kind, f"{value:.0f} never-seen log templates", 3.0))
        elif kind == "host_pressure":
            resource = labels.get("resource", "?")
            causes.append(Cause(f"host pressure {resource}", kind,
                                f"tasks waited on {resource} {value:.0%} of the time", 2.0))
    return causes


# --------------------------------------------------------------------------- the finder


@functools.lru_cache(maxsize=65536)  # called per scored point while runs are open
def series_of(labels: Labels) -> Labels:
    """A run belongs to the series, not to the model serving it: a refit that swaps the stand-in
    for the fitted model (another ``model`` label) continues the run."""
    return tuple((k, v) for k, v in labels if k != "model")


class CauseFinder(Background):
    """Tracks anomalous runs per unit and looks up their causes in the background.

    Parameters
    ----------
    settings : callable
        Returns the current ``(CausesConfig, ReaderConfig, threshold)`` (so a reload applies).
    clock : callable
        Unix time now.
    """

    def __init__(self, settings: Callable[[], tuple[CausesConfig, ReaderConfig, float]],
                 clock: Callable[[], float] = time.time, session: requests.Session | None = None):
        self._settings = settings
        self._clock = clock
        self._session = session or requests.Session()
        self._lock = threading.Lock()
        self._runs: dict[Labels, Run] = {}
        # per series, [its latest run]; per labels tuple seen (by id, the tuple kept), its series' cell
        self._cells: dict[Labels, list[Run | None]] = {}
        self._by_id: dict[int, tuple[Labels, list[Run | None]]] = {}
        self._loop = Loop("detector-causes", self._pass, error_message="cause lookup pass failed")
        self.query_errors = 0
        self.lookups = 0

    # ------------------------------------------------------------------ scoring thread side

    def observe(self, points: Iterable[ScoredPoint]) -> None:
        """Follow the runs above the threshold in freshly scored points (cheap; the scoring thread calls it)."""
        config, _, threshold = self._settings()
        if not config.enabled:
            return
        woke = False
        with self._lock:
            # only a point above the threshold starts or continues a run, and only one of a series with an
            # open run ends it: the others are passed over by their labels' identity (no hash of the labels)
            if any(run.ended is None for run in self._runs.values()):
                relevant = [p for p in points if p.score > threshold or self._has_open_run(p.labels)]
            else:
                relevant = [p for p in points if p.score > threshold]
            for point in sorted(relevant, key=lambda p: p.timestamp):
                key = series_of(point.labels)
                run = self._runs.get(key)
                if point.score > threshold:
                    if run is None or run.ended is not None:
                        run = self._runs[key] = Run(point.labels, point.timestamp, point.timestamp, point.score)
                        self._cells.setdefault(key, [None])[0] = run
                        woke = True
                    run.labels, run.last_above, run.score = point.labels, point.timestamp, point.score
                elif run is not None and run.ended is None and point.timestamp > run.last_above:
                    run.ended = point.timestamp
            self._forget(config)
        if woke:
            self._loop.wake()

    def _has_open_run(self, labels: Labels) -> bool:
        """Whether the series of ``labels`` has an open run. Its cell (its latest run) is found by the identity of
        the labels tuple (a serve cycle's points reuse their unit's tuple), by its series the first time."""
        entry = self._by_id.get(id(labels))
        if entry is None or entry[0] is not labels:
            if len(self._by_id) >= 200_000 or len(self._cells) >= 200_000:  # start afresh, open runs kept
                self._by_id.clear()
                self._cells = {key: [run] for key, run in self._runs.items() if run.ended is None}
            entry = self._by_id[id(labels)] = (labels, self._cells.setdefault(series_of(labels), [None]))
        run = entry[1][0]
        return run is not None and run.ended is None

    def _forget(self, config: CausesConfig) -> None:
        horizon = self._clock() - config.max_lookback
        for run in self._runs.values():  # no point above the threshold for that long: its series is gone
            if run.ended is None and run.last_above < horizon:
                run.ended = run.last_above
        for key in [k for k, r in self._runs.items() if r.ended is not None and r.ended < horizon]:
            del self._runs[key]
        if len(self._runs) > 10_000:  # a flood of anomalies: keep the open runs, drop the oldest closed ones
            closed = sorted((r.ended, k) for k, r in self._runs.items() if r.ended is not None)
            for _, key in closed[: len(self._runs) - 10_000]:
                del self._runs[key]

    # ------------------------------------------------------------------ background thread

    def close(self) -> None:
        self._session.close()

    def _pass(self) -> float:
        """One pass of the thread; woken early when a new run begins."""
        self.refresh()
        return 1.0

    def refresh(self) -> int:
        """Look up causes of the open runs that are due (worst first, bounded); return how many."""
        config, reader, _ = self._settings()
        if not config.enabled:
            return 0
        now = self._clock()
        with self._lock:
            due = sorted((r for r in self._runs.values()
                          if r.ended is None and now - r.checked_at >= config.refresh),
                         key=lambda r: -r.score)[: config.max_units]
            jobs = [(r.labels, r.started) for r in due]
        for labels, started in jobs:
            if self._loop.stopping:
                break
            lookback = f"{int(min(config.max_lookback, max(now - started, 0.0) + config.window))}s"
            causes = self.lookup(dict(labels), lookback, now, config, reader)
            with self._lock:
                run = self._runs.get(series_of(labels))
                if run is not None and run.started == started:
                    run.causes, run.checked_at = causes, now
        return len(jobs)

    def lookup(self, labels: Mapping[str, str], lookback: str, now: float, config: CausesConfig,
               reader: ReaderConfig) -> list[Cause]:
        """Every cause found for one unit, strongest first, at most ``max_causes``."""
        unit = {k: v for k, v in labels.items() if k not in ("query", "model")}
        found: dict[str, Cause] = {}
        for kind, expr in checks(unit, lookback):
            try:
                result = self._instant(expr, now, config.timeout, reader)
            except (requests.RequestException, ValueError, KeyError) as err:
                with self._lock:
                    self.query_errors += 1
                log.debug("cause query failed", extra=kv(kind=kind, error=err))
                continue
            for cause in to_causes(kind, result):
                if cause.cause not in found or found[cause.cause].weight < cause.weight:
                    found[cause.cause] = cause
        with self._lock:
            self.lookups += 1
        return sorted(found.values(), key=lambda c: (-c.weight, c.cause))[: config.max_causes]

    def _instant(self, expr: str, at: float, timeout: float, reader: ReaderConfig) -> list[dict]:
        response = self._session.get(f"{reader.url}/api/v1/query", params={"query": expr, "time": f"{at:.3f}"},
                                     headers=reader.headers, timeout=timeout)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise ValueError(f"HTTP {response.status_code}: {body.get('error', '')}")
        return body["data"]["result"]

    # ------------------------------------------------------------------ read side

    def current(self) -> list[tuple[Labels, list[Cause]]]:
        """Open runs with causes: what ``boxwatch_anomaly_cause`` exports."""
        with self._lock:
            return [(r.labels, list(r.causes)) for r in self._runs.values() if r.ended is None and r.causes]

    def annotate(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Copies of anomaly records with ``causes`` added: those of the run each record belongs to."""
        with self._lock:
            runs = {key: (r.started, r.ended, [c.as_dict() for c in r.causes]) for key, r in self._runs.items()}
        annotated = []
        for record in records:
            run = runs.get(tuple(sorted({**record["labels"], "query": record["query"]}.items())))
            causes = []
            if run is not None and run[0] <= record["timestamp"] and (run[1] is None or record["timestamp"] < run[1]):
                causes = run[2]
            annotated.append({**record, "causes": causes})
        return annotated


# --------------------------------------------------------------------------- metric families


def merged_gauge(name: str, help_text: str, rows: Iterable[tuple[dict[str, str], float]]) -> Iterable[Metric]:
    """One gauge family for ``name`` from rows whose label names differ (queries differ in their labels):
    one family per label-name set, merged, as the exposition format wants one HELP/TYPE per name."""
    merged: GaugeMetricFamily | None = None
    by_names: dict[tuple[str, ...], list[tuple[dict[str, str], float]]] = {}
    for labels, value in rows:
        by_names.setdefault(tuple(labels), []).append((labels, value))
    for names, members in by_names.items():
        part = GaugeMetricFamily(name, help_text, labels=list(names))
        for labels, value in members:
            part.add_metric([labels[n] for n in names], value)
        if merged is None:
            merged = part
        else:
            merged.samples.extend(part.samples)
    if merged is not None:
        yield merged


def _with(labels: Labels, **extra: str) -> dict[str, str]:
    """The series' labels plus ``extra``; a source label of the same name is kept as ``exported_<name>``."""
    out = {}
    for name, value in labels:
        out[f"exported_{name}" if name in extra else name] = value
    out.update(extra)
    return dict(sorted(out.items()))


def top_feature_family(points: Iterable[ScoredPoint]) -> Iterable[Metric]:
    """``boxwatch_anomaly_top_feature{..., rank, feature} 1`` for the units whose last score names features."""
    rows = [(_with(point.labels, rank=str(rank), feature=feature), 1.0)
            for point in points for rank, feature in enumerate(point.top_features[:MAX_RANK], start=1)]
    yield from merged_gauge("boxwatch_anomaly_top_feature",
                         "Features (or peer-group members) that drove the unit's last score, rank 1 the strongest.",
                         rows)


def cause_family(current: Iterable[tuple[Labels, list[Cause]]]) -> Iterable[Metric]:
    """``boxwatch_anomaly_cause{..., rank, cause} 1`` for the units in an anomalous run."""
    rows = [(_with(labels, rank=str(rank), cause=cause.cause), 1.0)
            for labels, causes in current for rank, cause in enumerate(causes, start=1)]
    yield from merged_gauge("boxwatch_anomaly_cause",
                         "Related signals of the same GPU, container or journal unit while it scores above the "
                         "threshold (docs/causes.md), rank 1 the strongest.", rows)


def self_families(finder: CauseFinder) -> Iterable[Metric]:
    """The finder's own counters: lookups done and cause queries that failed."""
    from prometheus_client.core import CounterMetricFamily

    yield CounterMetricFamily("boxwatch_detector_cause_lookups", "Units whose causes were looked up.",
                              value=finder.lookups)
    yield CounterMetricFamily("boxwatch_detector_cause_query_errors",
                              "Cause queries that failed (the cause is skipped; scoring is not affected).",
                              value=finder.query_errors)
