"""The detector service: fit on a schedule, score on a schedule, publish a snapshot.

Two threads do the work. The *scoring* thread wakes every second and, for each query whose
``infer_every`` has come, range-queries the points since the last scored one (bounded by
``reader.catch_up_max``), scores them online, keeps anomalies in a bounded buffer and
replaces the query's snapshot. The *fitting* thread refits each query every ``fit_every``
on its ``fit_window`` and hands the result (a :class:`~detector.store.FitResult`) to the
:data:`~detector.store.FitSink`.

A unit (series or entity) without a fitted model — a container restarted after the last fit,
or every unit before the first fit — is scored at once by a robust stand-in started from its
recent history, until its own model exists. ``/metrics`` reads only the snapshot: a scrape
never computes and never waits on Prometheus.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from boxwatch.log import kv as _fields
from boxwatch.memory import freeze_survivors, release_free_memory
from detector.calibration import Calibration
from detector.causes import CauseFinder
from detector.config import ConfigError, DetectorConfig, load_config
from detector.feedback import Feedback
from detector.httpclient import session_for
from detector.models.base import Model
from detector.peers import is_cross_sectional, member_points, stand_in
from detector.reader import PrometheusReader, PrometheusUnavailable, ReaderError, SeriesKey, align
from detector.scoring import (
    FALLBACK_WINDOW,
    UnitLayout,
    UnitRows,
    build_units,
    entity_units,
    fit_bundle,
    grid_seconds,
    is_multivariate,
    point_labels,
    score_online,
    score_online_many,
)
from detector.store import FitResult, FitSink, LocalStore, ModelBundle
from detector.writer import RemoteWriter, ScoredPoint, points_of_rows, scored_points

log = logging.getLogger("boxwatch.detector")

CYCLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FIT_RETRY_SECONDS = 60.0


@dataclass
class QueryState:
    """What the service knows about one query between cycles."""

    alias: str
    config_hash: str
    bundle: ModelBundle | None = None
    fallback: dict[SeriesKey, Model] = field(default_factory=dict)
    calibration: dict[SeriesKey, Calibration] = field(default_factory=dict)
    last_scored: float | None = None
    next_fit: float = 0.0
    next_infer: float = 0.0
    snapshot: list[ScoredPoint] = field(default_factory=list)
    models_in_snapshot: dict[str, int] = field(default_factory=dict)
    fit_error: str | None = None
    plan: ScoringPlan | None = None  # the last cycle's, while its units, bundle and stand-ins hold


@dataclass
class Batch:
    """Units of one model class scored together, one model call per point (see :meth:`Detector._plan`)."""

    keys: list[SeriesKey]
    models: list[Model]
    names: list[str]  # each unit's model name (a fitted model's or its stand-in's)
    model_name: str | None  # the one name when every unit has it
    labels: list[tuple[tuple[str, str], ...]]  # each unit's point labels
    calibrations: list[Calibration | None]
    take: np.ndarray | None  # the units' rows of the query's :class:`UnitRows`; None: every row, in order


@dataclass
class ScoringPlan:
    """Which model scores each unit of a query, and which units are scored together."""

    layout: UnitLayout | None  # the layout of the units it was made for (None: not kept)
    bundle: ModelBundle | None
    config: DetectorConfig
    assigned: dict[SeriesKey, tuple[Model, str]]  # unit -> its model and the model's name
    batches: list[Batch]
    alone: list[SeriesKey]  # assigned units scored one by one, in the order of units


@dataclass
class Stats:
    """Self-metric state, updated by the threads and read by the collector under a lock."""

    prometheus_up: bool = False
    query_errors: dict[str, int] = field(default_factory=dict)
    scoring_errors: dict[str, int] = field(default_factory=dict)
    last_success: float = 0.0
    cycle_buckets: list[int] = field(default_factory=lambda: [0] * len(CYCLE_BUCKETS))
    cycle_count: int = 0
    cycle_sum: float = 0.0
    last_cycle_seconds: float = 0.0
    last_cycle_query_seconds: float = 0.0
    fit_seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    fit_process_peak_bytes: dict[tuple[str, str], int] = field(default_factory=dict)
    reload_success: bool = True
    reload_timestamp: float = 0.0
    settled_timestamp: float = 0.0
    frozen_objects: int = 0
    remote_write_errors: int = 0
    anomalies_total: dict[str, int] = field(default_factory=dict)


class Detector:
    """The scoring service. Build it, :meth:`start` it, read it from the HTTP layer, :meth:`stop` it.

    Parameters
    ----------
    config : DetectorConfig
        The validated configuration.
    config_path : str, optional
        Where :meth:`reload` reads the configuration again.
    overrides : mapping, optional
        Key-path overrides (flags) re-applied on every reload.
    shard : (index, total)
        This replica's share of the units.
    fit_sink : FitSink, optional
        Where fit results go; the bundle it returns is served. Default: ``LocalStore.save_fit``.
    load_bundle : callable, optional
        ``alias -> ModelBundle | None`` used at start and on reload. Default: ``LocalStore.load``.
    clock : callable, optional
        Unix time now (a replay injects the data's time).
    reader : PrometheusReader, optional
        Where range queries go (anything with its ``query_range``, ``last_request_seconds`` and
        ``close``; a replay serves a file). Default: one for ``config.reader``.
    """

    def __init__(
        self,
        config: DetectorConfig,
        config_path: str | None = None,
        overrides: Mapping[str, str] | None = None,
        shard: tuple[int, int] = (0, 1),
        fit_sink: FitSink | None = None,
        load_bundle: Callable[[str], ModelBundle | None] | None = None,
        clock: Callable[[], float] = time.time,
        reader: PrometheusReader | None = None,
    ):
        self.config = config
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self.shard = shard
        self.store = LocalStore(config.state_dir, config.model_key_file)
        self.fit_sink: FitSink = fit_sink or self.store.save_fit
        self.load_bundle = load_bundle or self.store.load
        self.clock = clock
        self.stats = Stats()
        self.started_at = clock()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self._fit_wakeup = threading.Event()
        self._threads: list[threading.Thread] = []
        self._first_cycle_done = threading.Event()
        self._reader = reader or PrometheusReader(config.reader)
        self._writer = self._make_writer(config)
        self._anomalies: deque[dict[str, Any]] = deque(maxlen=config.anomalies.max_kept)
        self._states: dict[str, QueryState] = {}
        self._sync_states(config)
        self.causes = CauseFinder(lambda: (self.config.causes, self.config.reader, self.config.anomalies.threshold),
                                  clock)
        self.feedback = Feedback(lambda: self.config, config.state_dir, clock)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Detector:
        self.settle_memory()  # the modules and the loaded models live as long as the service
        for name, target in (("scoring", self._scoring_loop), ("fitting", self._fitting_loop)):
            thread = threading.Thread(target=target, name=f"detector-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self.causes.start()
        self.feedback.start()
        return self

    def settle_memory(self) -> None:
        """After start-up and whenever models change: collect the garbage, give free pages back to the
        system, and keep what is alive now (modules, models, calibrations) out of later garbage
        collections (:func:`~boxwatch.memory.freeze_survivors`), so that a full collection in a serve
        cycle scans that cycle's objects only. :meth:`start`, the fitting thread, :meth:`reload` and
        the registry's champion watcher call it; a process that drives the cycles itself (a
        benchmark) calls it after its fits, as the fitting thread would. Never call it holding the
        lock a serve cycle waits for: a full collection takes tens of milliseconds."""
        frozen = freeze_survivors()
        release_free_memory()
        with self._lock:
            self.stats.frozen_objects = frozen
            self.stats.settled_timestamp = self.clock()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._fit_wakeup.set()
        for thread in self._threads:
            thread.join(timeout)
        self.causes.stop(timeout)
        self.feedback.stop(timeout)
        self._reader.close()

    # ------------------------------------------------------------------ read side (HTTP layer)

    @property
    def ready(self) -> bool:
        """Every query has fitted (or loaded) models."""
        with self._lock:
            return all(state.bundle is not None for state in self._states.values())

    def snapshot(self) -> dict[str, list[ScoredPoint]]:
        with self._lock:
            return {alias: list(state.snapshot) for alias, state in self._states.items()}

    def bundles(self) -> list[dict[str, Any]]:
        """Summaries of the served bundles, plus how many units the stand-in scores."""
        with self._lock:
            result = []
            for alias, state in self._states.items():
                entry: dict[str, Any] = {"query": alias, "ready": state.bundle is not None,
                                         "fallback_series": len(state.fallback), "fit_error": state.fit_error}
                if state.bundle is not None:
                    entry.update(state.bundle.summary())
                else:
                    name, params = self.config.model_for(alias)
                    entry.update({"model": name, "params": params, "version": None, "series": 0})
                result.append(entry)
            return result

    def anomalies(self, since: float = 0.0) -> list[dict[str, Any]]:
        with self._lock:
            records = [a for a in self._anomalies if a["timestamp"] >= since]
        return self.causes.annotate(records)

    def stats_copy(self) -> tuple[Stats, dict[str, dict[str, int]]]:
        """A consistent copy of the self-metric state and, per query, units scored per model."""
        with self._lock:
            return copy.deepcopy(self.stats), {a: dict(s.models_in_snapshot) for a, s in self._states.items()}

    def model_info(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return [(alias, s.bundle.model_name, s.bundle.version or "local")
                    for alias, s in self._states.items() if s.bundle is not None]

    # ------------------------------------------------------------------ hooks for a registry

    def install_bundle(self, bundle: ModelBundle) -> bool:
        """Serve ``bundle`` for its query from the next cycle on; ``False`` if it is stale or unknown."""
        with self._lock:
            state = self._states.get(bundle.query)
            if state is None or bundle.config_hash != state.config_hash:
                log.warning("ignoring models fitted for another configuration",
                            extra=_fields(query=bundle.query, config_hash=bundle.config_hash))
                return False
            if tuple(bundle.shard) != tuple(self.shard):
                log.warning("ignoring models fitted for another shard", extra=_fields(
                    query=bundle.query, shard=f"{bundle.shard[0]}/{bundle.shard[1]}",
                    this_shard=f"{self.shard[0]}/{self.shard[1]}"))
                return False
            carry_over(state.bundle, bundle)
            state.bundle = bundle
            state.fallback.clear()  # units the bundle lacks get a fresh stand-in at the next cycle
            state.plan = None
            adopt_calibration(state, bundle)
            state.next_fit = bundle.fitted_at + self.config.queries[bundle.query].fit_every
            state.fit_error = None
            self.stats.fit_seconds[(bundle.query, bundle.model_name)] = bundle.fit_seconds
            if bundle.fit_peak_rss_bytes is not None:
                self.stats.fit_process_peak_bytes[(bundle.query, bundle.model_name)] = bundle.fit_peak_rss_bytes
        return True

    def request_fit(self, alias: str | None = None) -> None:
        """Refit ``alias`` (or every query) as soon as the fitting thread is free."""
        with self._lock:
            for name, state in self._states.items():
                if alias is None or name == alias:
                    state.next_fit = 0.0
        self._fit_wakeup.set()

    def read_units(self, alias: str, start: float, end: float) -> dict[SeriesKey, pd.DataFrame]:
        """The units of ``alias`` from ``start`` to ``end`` (aligned to its step) through this service's
        reader and shard, a counter's rates from the point before ``start`` on; :class:`ReaderError` when
        the query fails. For readers beside the scoring loop (drift's windows)."""
        with self._lock:
            config = self.config
            reader = self._reader
        query = config.queries[alias]
        lead = query.step if query.counter else 0.0
        raw = reader.query_range(query.expr, align(start, query.step) - lead, align(end, query.step), query.step)
        return build_units(query, is_multivariate(config, alias), raw, self.shard, alias)

    # ------------------------------------------------------------------ reload

    def request_reload(self) -> None:
        """Reload from the scoring thread at its next wake-up (safe from a signal handler)."""
        self._reload_requested.set()

    def reload(self) -> tuple[bool, list[str]]:
        """Read the configuration file again; keep the current one when the new one is bad."""
        if self.config_path is None:
            return False, ["no configuration file to reload from"]
        try:
            new = load_config(self.config_path, self.overrides)
        except ConfigError as err:
            problems = [str(p) for p in err.problems]
            with self._lock:
                self.stats.reload_success = False
            log.error("configuration reload failed; keeping the last good configuration",
                      extra=_fields(file=self.config_path, problems="; ".join(problems)))
            return False, problems
        with self._lock:
            if new.server != self.config.server or new.state_dir != self.config.state_dir:
                log.warning("server and state_dir changes take effect at the next restart")
            if new.reader != self.config.reader:
                self._reader.close()
                self._reader = PrometheusReader(new.reader)
            if new.writer != self.config.writer:
                self._writer = self._make_writer(new)
            if new.anomalies.max_kept != self.config.anomalies.max_kept:
                self._anomalies = deque(self._anomalies, maxlen=new.anomalies.max_kept)
            self.config = new
            self._sync_states(new)
            self.stats.reload_success = True
            self.stats.reload_timestamp = self.clock()
        self.settle_memory()  # new queries' loaded models live long; removed queries' are garbage
        log.info("configuration reloaded", extra=_fields(file=self.config_path, queries=len(new.queries)))
        self._fit_wakeup.set()
        return True, []

    def _sync_states(self, config: DetectorConfig) -> None:
        """Match query states to ``config``: new queries start (from the store), changed ones restart."""
        for alias in list(self._states):
            if alias not in config.queries or self._states[alias].config_hash != config.query_hash(alias):
                del self._states[alias]
        for alias in config.queries:
            if alias in self._states:
                continue
            state = self._states[alias] = QueryState(alias, config.query_hash(alias))
            bundle = self.load_bundle(alias)
            if bundle is not None and bundle.config_hash == state.config_hash and tuple(bundle.shard) == tuple(self.shard):
                state.bundle = bundle
                adopt_calibration(state, bundle)
                state.next_fit = bundle.fitted_at + config.queries[alias].fit_every
                self.stats.fit_seconds[(alias, bundle.model_name)] = bundle.fit_seconds
                log.info("loaded persisted models", extra=_fields(query=alias, series=len(bundle.models),
                                                                  version=bundle.version or "local"))

    @staticmethod
    def _make_writer(config: DetectorConfig) -> RemoteWriter | None:
        remote = config.writer.remote_write
        return RemoteWriter(remote.url, remote.timeout, session=session_for(remote)) if remote.url else None

    # ------------------------------------------------------------------ scoring

    def _scoring_loop(self) -> None:
        while not self._stop.is_set():
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
            try:
                self.run_cycle()
            except Exception:  # a bug in one cycle must not stop scoring for good: log it, go on
                log.exception("scoring cycle failed")
            self._first_cycle_done.set()
            self._stop.wait(self._seconds_to_next_infer())

    def _seconds_to_next_infer(self) -> float:
        with self._lock:
            due = min((s.next_infer for s in self._states.values()), default=self.clock() + 1)
        return min(max(due - self.clock(), 0.05), 1.0)

    def run_cycle(self, now: float | None = None) -> int:
        """Score every query that is due; return how many units were scored."""
        now = self.clock() if now is None else now
        with self._lock:
            due = [alias for alias, s in self._states.items() if s.next_infer <= now]
        if not due:
            return 0
        began = time.perf_counter()
        query_seconds, scored = 0.0, 0
        for alias in due:
            count, seconds = self._infer(alias, now)
            scored += count
            query_seconds += seconds
        self._observe_cycle(time.perf_counter() - began, query_seconds)
        return scored

    def _infer(self, alias: str, now: float) -> tuple[int, float]:
        with self._lock:
            config = self.config
            state = self._states.get(alias)
            if state is None:
                return 0, 0.0
            query = config.queries[alias]
            state.next_infer = now + query.infer_interval
            reader = self._reader
        end = align(now, query.step)
        start = self._infer_start(state, query, end, config.reader.catch_up_max)
        if start > end:
            return 0, 0.0
        if end - start >= 2 * query.step:
            log.info("catching up", extra=_fields(query=alias, points=int((end - start) // query.step) + 1,
                                                  start=start, end=end))
        lead = query.step if query.counter else 0.0
        multivariate = is_multivariate(config, alias)
        arrays = getattr(reader, "query_range_arrays", None)
        try:
            if arrays is not None:  # no pandas object per series
                answer = arrays(query.expr, start - lead, end, query.step)
            else:
                raw = reader.query_range(query.expr, start - lead, end, query.step)
        except ReaderError as err:
            self._query_failed(alias, err)
            return 0, reader.last_request_seconds
        query_seconds = reader.last_request_seconds
        if arrays is not None and not multivariate:  # the rows are scored in batches
            units: Mapping[SeriesKey, pd.DataFrame] = UnitRows.from_query(query, *answer, self.shard, alias)
            if lead:  # the extra point before start only served the first rate
                units = units.after_first()
        else:  # a frame per unit (an entity's from its rows where the reader gave arrays)
            units = (entity_units(query, *answer, self.shard) if arrays is not None
                     else build_units(query, multivariate, raw, self.shard, alias))
            if lead:
                units = {key: frame.iloc[1:] for key, frame in units.items()}
        try:
            query_seconds += self._add_fallbacks(alias, state, units, multivariate, start)
        except ReaderError as err:
            self._query_failed(alias, err)
            return 0, query_seconds + reader.last_request_seconds
        points, latest, used = self._score_units(alias, state, units, query, config.anomalies.threshold, end)
        self.causes.observe(points)
        with self._lock:
            if self._states.get(alias) is state:
                state.snapshot = latest
                state.models_in_snapshot = used
                state.last_scored = end
            self._query_succeeded()
        if self._writer is not None and points:
            self._remote_write(alias, points)
        return len(latest), query_seconds

    def _infer_start(self, state: QueryState, query, end: float, catch_up_max: float) -> float:
        """First grid point to score: after the last scored one, at most ``catch_up_max`` back.

        At start-up (nothing scored yet) the recent ``catch_up_max`` is scored too, after the end
        of the served bundle's training window, so a restart fills what it missed (remote write,
        anomalies) without scoring points a model was trained on.
        """
        earliest = align(end - catch_up_max, query.step)
        if state.last_scored is not None:
            return max(state.last_scored + query.step, earliest)
        with self._lock:
            trained_until = state.bundle.training_end if state.bundle else None
        if trained_until is not None:
            return max(trained_until + query.step, earliest) if trained_until < end else end
        return earliest

    def _add_fallbacks(self, alias: str, state: QueryState, units: Mapping[SeriesKey, pd.DataFrame],
                       multivariate: bool, start: float) -> float:
        """Start a robust stand-in for every unit without a model, from its recent history."""
        with self._lock:
            plan = self._kept_plan(state, units)
            if plan is not None and len(plan.assigned) == len(units):
                return 0.0  # the units of the last cycle, each with its model
            known = state.bundle.models if state.bundle else {}
            missing = [key for key in units if key not in known and key not in state.fallback]
            config = self.config
            query = config.queries[alias]
            reader = self._reader
        if not missing:
            return 0.0
        history_start = start - FALLBACK_WINDOW * query.step
        lead = query.step if query.counter else 0.0
        raw = reader.query_range(query.expr, history_start - lead, start - query.step, query.step)
        history = build_units(query, multivariate, raw, self.shard, alias)
        created = {}
        for key in missing:
            frame = history.get(key)
            if frame is None:
                frame = units[key].iloc[:0]
            created[key] = stand_in(config, alias, multivariate, frame)
        with self._lock:
            state.fallback.update(created)
            state.plan = None
        log.info("scoring new series with the robust model until their own is fitted",
                 extra=_fields(query=alias, series=len(created)))
        return reader.last_request_seconds

    def _score_units(self, alias: str, state: QueryState, units: Mapping[SeriesKey, pd.DataFrame],
                     query, threshold: float, end: float) -> tuple[list, list, dict]:
        """Score each unit's new points; return all points, the points at ``end``, units per model.

        Units whose model scores many units at once (``batch``) are scored together, one call per
        model class and point; the others one by one.
        """
        points: list[ScoredPoint] = []
        latest: list[ScoredPoint] = []
        used: dict[str, int] = {}
        plan = self._plan(state, units)
        scored, failed = self._score_batches(alias, units, plan, query)
        for batch, scores, batch_points in scored:
            with np.errstate(invalid="ignore"):
                above = scores > threshold
            for i in np.flatnonzero(above.any(axis=1)).tolist():  # an incident: few units, few points
                for point in batch_points[i]:
                    if point.score > threshold:
                        self._found(alias, batch.names[i], batch.keys[i], point)
            at_end = [unit_points[-1] for unit_points in batch_points
                      if unit_points and unit_points[-1].timestamp == end]
            latest.extend(at_end)
            if batch.model_name is not None:
                used[batch.model_name] = used.get(batch.model_name, 0) + len(at_end)
            else:
                for point in at_end:
                    name = dict(point.labels)["model"]
                    used[name] = used.get(name, 0) + 1
            points.extend(itertools.chain.from_iterable(batch_points))
        for key in plan.alone + failed:  # in the order of units
            model, model_name = plan.assigned[key]
            unit_points = self._score_unit(alias, state, key, units[key], model, model_name, query)
            if unit_points is None:
                continue
            for point in unit_points:
                if point.score > threshold:
                    self._found(alias, model_name, key, point)
                if point.timestamp == end:
                    latest.append(point)
                    used[model_name] = used.get(model_name, 0) + 1
            points.extend(unit_points)
        return points, latest, used

    def _found(self, alias: str, model_name: str, key: SeriesKey, point: ScoredPoint) -> None:
        """A point above the threshold: kept as an anomaly unless the operator said it is expected."""
        if not self.feedback.is_expected(dict(point.labels), point.timestamp):
            self._record_anomaly(alias, model_name, key, point)

    def _plan(self, state: QueryState, units: Mapping[SeriesKey, pd.DataFrame]) -> ScoringPlan:
        """Which model scores each unit, and which units are scored together.

        Kept between cycles while the query's units (their :class:`~detector.scoring.UnitLayout`), its
        bundle, its stand-ins and the configuration stay the same: a steady serve cycle goes straight to
        the scoring.
        """
        rows = units if isinstance(units, UnitRows) else None
        with self._lock:
            plan = self._kept_plan(state, units)
            if plan is not None:
                return plan
            bundle, config = state.bundle, self.config
            own_models = bundle.models if bundle else {}
            fallback = state.fallback
            assigned: dict[SeriesKey, tuple[Model, str]] = {}
            if rows is None or len(rows.index):
                for key in units:
                    own = own_models.get(key)
                    model = own if own is not None else fallback.get(key)
                    if model is not None and (rows is not None or not units[key].empty):
                        assigned[key] = (model, bundle.model_name if own is not None else model.name)
            batches = self._batches(state, units, assigned, rows, state.alias)
            batched = {key for batch in batches for key in batch.keys}
            plan = ScoringPlan(rows.layout if rows is not None else None, bundle, config, assigned, batches,
                               [key for key in assigned if key not in batched])
            if rows is not None and len(rows.index):
                state.plan = plan
            return plan

    def _kept_plan(self, state: QueryState, units: Mapping[SeriesKey, pd.DataFrame]) -> ScoringPlan | None:
        """The query's plan when it was made for these units (the same layout), its bundle and configuration;
        new stand-ins drop it (:meth:`_add_fallbacks`). Called under the lock."""
        plan = state.plan
        if (isinstance(units, UnitRows) and plan is not None and plan.layout is units.layout
                and plan.bundle is state.bundle and plan.config is self.config):
            return plan
        return None

    def _batches(self, state: QueryState, units: Mapping[SeriesKey, pd.DataFrame],
                 assigned: Mapping[SeriesKey, tuple[Model, str]], rows: UnitRows | None, alias: str) -> list[Batch]:
        """The univariate units (and multivariate ones on the same grid) whose model class scores in
        batches, grouped by class: each group of two or more is a :class:`Batch`."""
        groups: dict[tuple, list[SeriesKey]] = {}
        index = rows.index if rows is not None else None
        batching: dict[type, bool] = {}
        for key, (model, _) in assigned.items():
            kind = type(model)
            batches = batching.get(kind)
            if batches is None:
                batches = batching[kind] = kind.batches()
            if not batches or is_cross_sectional(model):
                continue
            if rows is not None:
                if not model.multivariate:
                    groups.setdefault((type(model), 1), []).append(key)
                continue
            frame = units[key]
            columns = getattr(model, "columns_", ["value"]) if model.multivariate else ["value"]
            if list(frame.columns) != ["value"] and not model.multivariate or set(columns) != set(frame.columns):
                continue
            if index is None:
                index = frame.index
            if frame.index is index or frame.index.equals(index):
                groups.setdefault((type(model), len(columns)), []).append(key)
        out = []
        for keys in groups.values():
            if len(keys) < 2:
                continue
            names = [assigned[key][1] for key in keys]
            out.append(Batch(keys, [assigned[key][0] for key in keys], names,
                             names[0] if len(set(names)) == 1 else None,
                             [point_labels(key, alias, name) for key, name in zip(keys, names, strict=True)],
                             self._calibrations(state, keys), rows.positions(keys) if rows is not None else None))
        return out

    def _score_unit(self, alias: str, state: QueryState, key: SeriesKey, frame: pd.DataFrame, model: Model,
                    model_name: str, query) -> list[ScoredPoint] | None:
        """One unit's points, scored on its own; ``None`` (counted, logged) when its model fails."""
        try:
            if is_cross_sectional(model):  # one series per member of the group
                return list(member_points(model, key, frame, alias, model_name, query.direction,
                                          query.min_deviation))
            result = score_online(model, frame, query.direction, query.min_deviation, self._calibration(state, key))
            labels = point_labels(key, alias, model_name)
            return list(scored_points(labels, frame, result))
        except Exception as err:  # one unit's model failing leaves the other units scored
            with self._lock:
                self.stats.scoring_errors[alias] = self.stats.scoring_errors.get(alias, 0) + 1
            log.warning("scoring failed for a series", extra=_fields(query=alias, labels=dict(key), error=err))
            return None

    def _score_batches(self, alias: str, units: Mapping[SeriesKey, pd.DataFrame], plan: ScoringPlan,
                       query) -> tuple[list[tuple[Batch, np.ndarray, list[Sequence[ScoredPoint]]]], list[SeriesKey]]:
        """Each batch of ``plan`` scored (:func:`~detector.scoring.score_online_many`): its scores (units x
        points) and its points per unit; and the units of batches that failed.

        A batch that fails is logged and its units are left to :meth:`_score_unit`, one by one, where a
        failing unit stays alone.
        """
        scored, failed = [], []
        for batch in plan.batches:
            if isinstance(units, UnitRows):
                index = units.index
                values = units.values if batch.take is None else units.values[batch.take]
            else:
                index = units[batch.keys[0]].index
                if batch.models[0].multivariate:
                    values = np.stack([_columns(units[key], model.columns_)
                                       for key, model in zip(batch.keys, batch.models, strict=True)])
                else:
                    values = np.stack([units[key].to_numpy(dtype=float)[:, 0] for key in batch.keys])
            try:
                result = score_online_many(batch.models, grid_seconds(index), values, query.direction,
                                           query.min_deviation, batch.calibrations)
            except Exception as err:
                log.warning("batch scoring failed; scoring unit by unit", extra=_fields(query=alias, error=err))
                failed.extend(batch.keys)
                continue
            plain = np.full(values.shape[:2], np.nan) if values.ndim == 3 else values
            scored.append((batch, result["score"],
                           points_of_rows(batch.labels, index.asi8 / 1e9, plain, result["expected"], result["lower"],
                                          result["upper"], result["score"], result["raw_score"],
                                          result.get("top_features"))))
        return scored, failed

    def _calibration(self, state: QueryState, key: SeriesKey) -> Calibration | None:
        """The unit's score calibration, started fresh for a unit seen for the first time."""
        return self._calibrations(state, [key])[0]

    def _calibrations(self, state: QueryState, keys: list[SeriesKey]) -> list[Calibration | None]:
        """:meth:`_calibration` of each of ``keys``, under one hold of the lock."""
        with self._lock:
            settings = self.config.anomalies.calibration
            known = state.calibration
            out = []
            for key in keys:
                calibration = known.get(key)
                if calibration is None:
                    calibration = settings.make()
                    if calibration is not None:
                        known[key] = calibration
                out.append(calibration)
            return out

    def _record_anomaly(self, alias: str, model_name: str, key: SeriesKey, point: ScoredPoint) -> None:
        with self._lock:
            self._anomalies.append({
                "timestamp": point.timestamp, "query": alias, "model": model_name, "labels": unit_labels(point),
                "value": _json_float(point.value), "expected": _json_float(point.expected),
                "lower": _json_float(point.lower), "upper": _json_float(point.upper),
                "score": _json_float(point.score), "top_features": list(point.top_features),
            })
            self.stats.anomalies_total[alias] = self.stats.anomalies_total.get(alias, 0) + 1
        self.feedback.observe_anomaly(alias, model_name, unit_labels(point), point.timestamp)

    def _remote_write(self, alias: str, points: list[ScoredPoint]) -> None:
        try:
            self._writer.write(points)
        except Exception as err:  # the push is best effort: /metrics still serves the scores
            with self._lock:
                self.stats.remote_write_errors += 1
            log.warning("remote write failed", extra=_fields(query=alias, error=err))

    def _query_failed(self, alias: str, err: ReaderError) -> None:
        with self._lock:
            self.stats.query_errors[alias] = self.stats.query_errors.get(alias, 0) + 1
            if isinstance(err, PrometheusUnavailable):
                if self.stats.prometheus_up:
                    log.error("prometheus is unreachable; scoring resumes when it is back",
                              extra=_fields(url=self.config.reader.url, error=err))
                self.stats.prometheus_up = False
            else:
                self.stats.prometheus_up = True
                log.error("query failed", extra=_fields(query=alias, error=err))

    def _query_succeeded(self) -> None:
        if not self.stats.prometheus_up:
            log.info("prometheus is reachable", extra=_fields(url=self.config.reader.url))
        self.stats.prometheus_up = True
        self.stats.last_success = self.clock()

    def _observe_cycle(self, seconds: float, query_seconds: float) -> None:
        with self._lock:
            stats = self.stats
            for i, bound in enumerate(CYCLE_BUCKETS):
                if seconds <= bound:
                    stats.cycle_buckets[i] += 1
            stats.cycle_count += 1
            stats.cycle_sum += seconds
            stats.last_cycle_seconds = seconds
            stats.last_cycle_query_seconds = query_seconds

    # ------------------------------------------------------------------ fitting

    def _fitting_loop(self) -> None:
        # Score first (stand-ins start from recent history in seconds), then fit.
        self._first_cycle_done.wait(60.0)
        while not self._stop.is_set():
            now = self.clock()
            with self._lock:
                due = [alias for alias, s in self._states.items() if s.next_fit <= now]
            for alias in due:
                if self._stop.is_set():
                    return
                try:
                    self.fit_query(alias, now)
                except Exception as err:  # a model that cannot fit must not stop the other queries' fits
                    log.exception("fit failed", extra=_fields(query=alias))
                    with self._lock:
                        state = self._states.get(alias)
                    if state is not None:
                        self._fit_failed(state, f"{type(err).__name__}: {err}")
            if due:  # a fit's window, frames and temporaries are garbage now; the new models live long
                self.settle_memory()
            with self._lock:
                next_fit = min((s.next_fit for s in self._states.values()), default=now + 60)
            self._fit_wakeup.wait(min(max(next_fit - self.clock(), 0.05), 30.0))
            self._fit_wakeup.clear()

    def fit_query(self, alias: str, now: float | None = None) -> ModelBundle | None:
        """:meth:`fit` ``alias``, hand the result to the sink and serve the bundle it returns."""
        now = self.clock() if now is None else now
        result = self.fit(alias, now)
        if result is None:
            return None
        bundle = result.bundle
        try:
            served = self.fit_sink(result)
        except Exception as err:  # a failing sink (disk full, registry down) must not stop scoring
            log.exception("saving fitted models failed; serving them anyway", extra=_fields(query=alias))
            with self._lock:
                state = self._states.get(alias)
                if state is not None and state.config_hash == bundle.config_hash:
                    state.fit_error = f"fit sink failed: {err}"
            served = bundle
        self.install_bundle(served)
        with self._lock:  # a sink may keep serving an older bundle (a rejected challenger): wait a full interval
            state = self._states.get(alias)
            if state is not None and state.config_hash == bundle.config_hash:
                state.next_fit = max(state.next_fit, now + self.config.queries[alias].fit_every)
        peak = {} if bundle.fit_peak_rss_bytes is None else {"fit_process_peak_rss_mib": bundle.fit_peak_rss_bytes >> 20}
        log.info("fitted models", extra=_fields(query=alias, model=bundle.model_name, series=len(bundle.models),
                                                seconds=round(bundle.fit_seconds, 3), **peak))
        return served

    def fit(self, alias: str, now: float | None = None) -> FitResult | None:
        """Fit every unit of ``alias`` on its window ending at ``now``; ``None`` (and a retry scheduled)
        when the query fails or no unit fits. Nothing is saved or served."""
        now = self.clock() if now is None else now
        with self._lock:
            config = self.config
            state = self._states.get(alias)
            reader = self._reader
        if state is None:
            return None
        query = config.queries[alias]
        end = align(now, query.step)
        start = end - query.fit_window
        try:
            raw = reader.query_range(query.expr, start, end, query.step)
        except ReaderError as err:
            self._query_failed(alias, err)
            self._fit_failed(state, f"query failed: {err}")
            return None
        units = build_units(query, is_multivariate(config, alias), raw, self.shard, alias)
        units = self.feedback.mask_training(alias, config.model_for(alias)[0], units)  # known events: not normal
        bundle = fit_bundle(config, alias, units, start, end, isolate=config.fitting.isolate, cancel=self._stop)
        bundle.shard = self.shard
        if not bundle.models and units:
            self._fit_failed(state, "no series could be fitted")
            return None
        with self._lock:  # what the series' scores taught so far is saved with the models
            bundle.calibration = copy.deepcopy(state.calibration)
        return FitResult(bundle, units)

    def _fit_failed(self, state: QueryState, reason: str) -> None:
        with self._lock:
            state.fit_error = reason
            query = self.config.queries.get(state.alias)
            state.next_fit = self.clock() + min(FIT_RETRY_SECONDS, query.fit_every if query else FIT_RETRY_SECONDS)
        log.warning("fit failed; retrying later", extra=_fields(query=state.alias, reason=reason))


def carry_over(previous: ModelBundle | None, bundle: ModelBundle) -> None:
    """Each series' model in ``bundle`` takes over what the one it replaces in ``previous`` must hand on
    (:meth:`~detector.models.base.Model.carry_over`: an incident in progress)."""
    if previous is None:
        return
    for key, model in bundle.models.items():
        old = previous.models.get(key)
        if old is not None and old is not model:
            model.carry_over(old)


def adopt_calibration(state: QueryState, bundle: ModelBundle) -> None:
    """Calibrations for a newly served bundle: the live ones where the service has them (they are
    newer), else the bundle's; every level is re-estimated, as a refit refreshes the models."""
    for key, calibration in (getattr(bundle, "calibration", None) or {}).items():
        state.calibration.setdefault(key, copy.deepcopy(calibration))
    for calibration in state.calibration.values():
        calibration.fit_level()


def _columns(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """``frame[columns]`` as an array; without pandas' column lookup when the order already is that."""
    if list(frame.columns) == columns:
        return frame.to_numpy(dtype=float)
    return frame[columns].to_numpy(dtype=float)


def unit_labels(point: ScoredPoint) -> dict[str, str]:
    """The scored series' own labels (``query`` and ``model`` left out)."""
    return {k: v for k, v in point.labels if k not in ("query", "model")}


def _json_float(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)
