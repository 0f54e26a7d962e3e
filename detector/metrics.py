"""``/metrics`` of the detector: a custom collector that only reads the service's snapshot."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from boxwatch import __version__
from detector.causes import cause_family, merged_gauge, top_feature_family
from detector.causes import self_families as causes_self_families
from detector.feedback import families as feedback_families
from detector.service import CYCLE_BUCKETS, Detector
from detector.store import model_file_families
from detector.writer import SCORE_FAMILIES, present


class DetectorCollector:
    """Scores of the last cycle and the detector's self metrics, built fresh per scrape, and the families of
    each of ``extra`` (callables: the registry's, drift's)."""

    def __init__(self, detector: Detector, extra: Iterable[Callable[[], Iterable[Metric]]] = ()):
        self._detector = detector
        self._extra = list(extra)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        yield from self._scores()
        yield from top_feature_family(p for points in self._detector.snapshot().values() for p in points)
        yield from cause_family(self._detector.causes.current())
        yield from self._self_metrics()
        yield from causes_self_families(self._detector.causes)
        yield from feedback_families(self._detector.feedback)
        yield from model_file_families()
        for families in self._extra:
            yield from families()

    def _scores(self) -> Iterable[Metric]:
        # Series of different queries have different label names: merged_gauge makes one family per name.
        points = [point for points in self._detector.snapshot().values() for point in points]
        for column, (name, help_text) in SCORE_FAMILIES.items():
            yield from merged_gauge(name, help_text, [(dict(p.labels), p.field_value(column)) for p in points
                                                      if present(p.field_value(column))])

    def _self_metrics(self) -> Iterable[Metric]:
        detector = self._detector
        stats, scored = detector.stats_copy()
        queries = list(scored)
        up = stats.prometheus_up
        errors = {alias: stats.query_errors.get(alias, 0) for alias in queries}
        last_success = stats.last_success
        buckets, count, total = stats.cycle_buckets, stats.cycle_count, stats.cycle_sum
        last_cycle, last_query = stats.last_cycle_seconds, stats.last_cycle_query_seconds
        fit_seconds = stats.fit_seconds
        reload_ok, reload_ts = stats.reload_success, stats.reload_timestamp
        remote_errors = stats.remote_write_errors
        anomalies = {alias: stats.anomalies_total.get(alias, 0) for alias in queries}
        yield _gauge("boxwatch_detector_prometheus_up", "1 if the last query to Prometheus succeeded, else 0.",
                     float(up))
        failures = CounterMetricFamily("boxwatch_detector_query_errors", "Range queries that failed, by query.",
                                       labels=["query"])
        for alias, value in errors.items():
            failures.add_metric([alias], value)
        yield failures
        scoring = CounterMetricFamily("boxwatch_detector_scoring_errors",
                                      "Series whose model raised while scoring, by query.", labels=["query"])
        for alias in queries:
            scoring.add_metric([alias], stats.scoring_errors.get(alias, 0))
        yield scoring
        yield _gauge("boxwatch_detector_last_success_timestamp_seconds",
                     "Unix time of the last successful scoring query.", last_success)
        cumulative = [(str(bound), buckets[i]) for i, bound in enumerate(CYCLE_BUCKETS)] + [("+Inf", count)]
        yield HistogramMetricFamily("boxwatch_detector_cycle_duration_seconds",
                                    "Wall time of one scoring cycle over the due queries.",
                                    buckets=cumulative, sum_value=total)
        yield _gauge("boxwatch_detector_last_cycle_duration_seconds", "Wall time of the last scoring cycle.",
                     last_cycle)
        yield _gauge("boxwatch_detector_last_cycle_query_seconds",
                     "Time the last scoring cycle waited for Prometheus to answer.", last_query)
        series = GaugeMetricFamily("boxwatch_detector_series_scored", "Units scored in the last cycle.",
                                   labels=["query", "model"])
        for alias, models in scored.items():
            for model, value in sorted(models.items()):
                series.add_metric([alias, model], value)
        yield series
        fits = GaugeMetricFamily("boxwatch_detector_model_fit_duration_seconds", "Duration of the last fit.",
                                 labels=["query", "model"])
        for (alias, model), value in sorted(fit_seconds.items()):
            if alias in scored:
                fits.add_metric([alias, model], value)
        yield fits
        peaks = GaugeMetricFamily("boxwatch_detector_fit_process_peak_memory_bytes",
                                  "Peak resident memory of the child process the last fit ran in.",
                                  labels=["query", "model"])
        for (alias, model), value in sorted(stats.fit_process_peak_bytes.items()):
            if alias in scored:
                peaks.add_metric([alias, model], value)
        yield peaks
        yield _gauge("boxwatch_detector_models_ready", "1 once every query has fitted or loaded models.",
                     float(detector.ready))
        yield _gauge("boxwatch_detector_memory_settled_timestamp_seconds",
                     "Unix time the detector last collected garbage and froze what lives on (start-up, fits, "
                     "champion installs, reloads).", stats.settled_timestamp)
        yield _gauge("boxwatch_detector_gc_frozen_objects",
                     "Objects kept out of garbage collections since the last settle (modules, models).",
                     float(stats.frozen_objects))
        info = InfoMetricFamily("boxwatch_model", "The model version serving each query.",
                                labels=["query", "model", "version"])
        for alias, model, version in detector.model_info():
            info.add_metric([alias, model, version], {})
        yield info
        found = CounterMetricFamily("boxwatch_detector_anomalies", "Scored points above the anomaly threshold.",
                                    labels=["query"])
        for alias, value in anomalies.items():
            found.add_metric([alias], value)
        yield found
        yield _gauge("boxwatch_detector_config_last_reload_successful",
                     "1 if the last configuration reload succeeded (the last good one is kept otherwise).",
                     float(reload_ok))
        yield _gauge("boxwatch_detector_config_last_reload_success_timestamp_seconds",
                     "Unix time of the last successful configuration load.", reload_ts or detector.started_at)
        yield CounterMetricFamily("boxwatch_detector_remote_write_errors",
                                  "Remote-write pushes of scores that failed.", value=remote_errors)
        shard = GaugeMetricFamily("boxwatch_detector_shard", "This replica's shard index, labelled with the total.",
                                  labels=["total"])
        shard.add_metric([str(detector.shard[1])], detector.shard[0])
        yield shard
        build = InfoMetricFamily("boxwatch_detector_build", "boxwatch detector build information.")
        build.add_metric([], {"version": __version__})
        yield build


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def build_registry(detector: Detector, extra: Iterable[Callable[[], Iterable[Metric]]] = ()) -> CollectorRegistry:
    """A registry with the detector's collector (and ``extra`` families: a registry's, drift's) and process
    metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DetectorCollector(detector, extra))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
