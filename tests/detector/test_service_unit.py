"""The scoring service in-process: ``Detector(clock=...)`` driven by ``run_cycle(now)`` and ``fit_query``,
its ``/metrics`` rendered with prometheus_client's ``generate_latest``.

The quick tier's view of what tests/detector/test_service.py checks against a real Prometheus and a
detector process: the history comes from :class:`RangeServer`, a thread in this process that answers
Prometheus' ``/api/v1/query_range`` from a dict of samples, with Prometheus' five-minute lookback.
No thread of the service runs: each test moves the clock itself, so a test takes a fraction of a second.
"""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from boxwatch.times import parse_duration
from detector.config import validate
from detector.metrics import build_registry
from detector.scoring import shard_of
from detector.service import Detector
from tests.detector.conftest import detector_config, wave

STEP = 60
NOW = 1_767_225_600.0 + 37  # 2026-01-01T00:00:37Z: between grid points, as a real clock is
LOOKBACK = 300.0  # Prometheus' default: an instant sees the latest sample at most 5 minutes old


class RangeServer:
    """``/api/v1/query_range`` over ``series``: ``{(metric, ((label, value), ...)): [(ts, value), ...]}``.

    A query is a bare metric name or ``{__name__=~"a|b"}``. ``status`` set to an HTTP code answers every request with it
    (an outage as a proxy in front of Prometheus reports it).
    """

    def __init__(self, series: dict):
        self.series = series
        self.status = 200
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                url = urlparse(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                server.requests.append(params)
                if server.status != 200 or url.path != "/api/v1/query_range":
                    self._send(server.status if server.status != 200 else 404, {"status": "error"})
                    return
                result = server.matrix(params["query"], float(params["start"]), float(params["end"]),
                                       parse_duration(params["step"]))
                self._send(200, {"status": "success", "data": {"resultType": "matrix", "result": result}})

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def matrix(self, metric: str, start: float, end: float, step: float) -> list[dict]:
        result = []
        wanted = re.fullmatch(r'\{__name__=~"([^"]*)"\}', metric)
        pattern = re.compile(wanted.group(1) if wanted else re.escape(metric))
        for (name, labels), samples in self.series.items():
            if not pattern.fullmatch(name):
                continue
            values = []
            t = start
            while t <= end + 1e-9:
                seen = [v for ts, v in samples if t - LOOKBACK < ts <= t]
                if seen:
                    values.append([t, repr(seen[-1])])
                t += step
            if values:
                result.append({"metric": {"__name__": name, **dict(labels)}, "values": values})
        return result

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


GPU0, GPU1 = (("gpu", "0"),), (("gpu", "1"),)


@pytest.fixture
def source():
    """Two hours of a calm wave for two GPUs, up to ``NOW``."""
    server = RangeServer({("unit_test_temp", GPU0): wave(NOW - 7200, NOW, STEP, seed=1),
                          ("unit_test_temp", GPU1): wave(NOW - 7200, NOW, STEP, seed=2)})
    yield server
    server.stop()


def make_detector(source: RangeServer, tmp_path, clock=lambda: NOW, shard=(0, 1), **query) -> Detector:
    queries = {"temp": {"expr": "unit_test_temp", "step": f"{STEP}s", "fit_window": "1h", "fit_every": "1h",
                        "infer_every": f"{STEP}s", **query}}
    config = validate(detector_config(source.url, tmp_path / "state", queries))
    return Detector(config, shard=shard, clock=clock)


def exposition(detector: Detector) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(build_registry(detector)).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def score_labels(metrics: dict) -> set[frozenset]:
    return {labels for name, labels in metrics if name == "boxwatch_anomaly_score"}


def append(source: RangeServer, key: tuple, start: float, end: float, value) -> None:
    """Samples on the grid ``start .. end``; ``value(ts)`` gives each."""
    t = start
    while t <= end:
        source.series[key].append((t, value(t)))
        t += STEP


def test_stand_in_scores_every_series_at_once_and_a_fit_takes_over(source, tmp_path):
    detector = make_detector(source, tmp_path)
    assert not detector.ready
    assert detector.run_cycle(NOW) == 2  # both GPUs, by the robust stand-in started from their history
    assert {b["query"]: b["fallback_series"] for b in detector.bundles()} == {"temp": 2}
    metrics = exposition(detector)
    assert score_labels(metrics) == {frozenset({"gpu": g, "query": "temp", "model": "robust"}.items())
                                     for g in ("0", "1")}
    assert metrics[("boxwatch_detector_models_ready", frozenset())] == 0.0
    assert metrics[("boxwatch_detector_prometheus_up", frozenset())] == 1.0
    lower = metrics[("boxwatch_anomaly_expected_lower", frozenset({"gpu": "0", "query": "temp",
                                                                  "model": "robust"}.items()))]
    upper = metrics[("boxwatch_anomaly_expected_upper", frozenset({"gpu": "0", "query": "temp",
                                                                  "model": "robust"}.items()))]
    assert lower < 50 < upper  # the band sits around the series' level

    bundle = detector.fit_query("temp", NOW)
    assert bundle is not None and set(bundle.models) == {GPU0, GPU1}
    assert bundle.training_end - bundle.training_start == 3600
    assert detector.ready
    assert detector.run_cycle(NOW) == 0  # not due again before infer_every has passed
    append(source, ("unit_test_temp", GPU0), NOW - 37 + STEP, NOW - 37 + STEP, lambda t: 50.0)
    append(source, ("unit_test_temp", GPU1), NOW - 37 + STEP, NOW - 37 + STEP, lambda t: 50.0)
    assert detector.run_cycle(NOW + STEP) == 2
    summary = {b["query"]: b for b in detector.bundles()}["temp"]
    assert summary["ready"] and summary["fallback_series"] == 0 and summary["series"] == 2
    metrics = exposition(detector)
    assert metrics[("boxwatch_detector_models_ready", frozenset())] == 1.0
    assert metrics[("boxwatch_detector_series_scored", frozenset({"query": "temp", "model": "robust"}.items()))] \
        == 2.0
    assert metrics[("boxwatch_detector_model_fit_duration_seconds",
                    frozenset({"query": "temp", "model": "robust"}.items()))] > 0


def test_a_spike_is_an_anomaly_in_the_api_and_the_scores_and_a_calm_series_is_not(source, tmp_path):
    detector = make_detector(source, tmp_path, direction="above")
    detector.run_cycle(NOW)
    detector.fit_query("temp", NOW)
    after = NOW - 37 + STEP
    append(source, ("unit_test_temp", GPU0), after, after, lambda t: 50.0)
    append(source, ("unit_test_temp", GPU1), after, after, lambda t: 95.0)
    detector.run_cycle(NOW + STEP)
    metrics = exposition(detector)
    scores = {dict(labels)["gpu"]: value for (name, labels), value in metrics.items()
              if name == "boxwatch_anomaly_score"}
    assert scores["1"] > 1 > scores["0"]
    anomalies = detector.anomalies(since=after)
    assert [(a["labels"], a["value"]) for a in anomalies] == [({"gpu": "1"}, 95.0)]
    assert anomalies[0]["score"] == pytest.approx(scores["1"])
    assert metrics[("boxwatch_detector_anomalies_total", frozenset({"query": "temp"}.items()))] == 1.0


def test_an_outage_is_counted_and_the_missed_points_are_scored_when_prometheus_is_back(source, tmp_path):
    detector = make_detector(source, tmp_path)
    detector.run_cycle(NOW)
    detector.fit_query("temp", NOW)
    last_scored_before = {p.timestamp for points in detector.snapshot().values() for p in points}
    source.status = 503
    assert detector.run_cycle(NOW + STEP) == 0
    assert detector.run_cycle(NOW + 2 * STEP) == 0
    metrics = exposition(detector)
    assert metrics[("boxwatch_detector_prometheus_up", frozenset())] == 0.0
    assert metrics[("boxwatch_detector_query_errors_total", frozenset({"query": "temp"}.items()))] == 2.0
    # the last good scores stay published through the outage
    assert {p.timestamp for points in detector.snapshot().values() for p in points} == last_scored_before

    source.status = 200
    for key in (("unit_test_temp", GPU0), ("unit_test_temp", GPU1)):
        append(source, key, NOW - 37 + STEP, NOW - 37 + 3 * STEP, lambda t: 50.0)
    source.requests.clear()
    assert detector.run_cycle(NOW + 3 * STEP) == 2
    asked = source.requests[0]
    assert float(asked["end"]) - float(asked["start"]) == 2 * STEP  # three grid points: two missed, one new
    assert exposition(detector)[("boxwatch_detector_prometheus_up", frozenset())] == 1.0


def test_a_series_that_vanishes_leaves_the_scores_and_a_new_one_gets_a_stand_in(source, tmp_path):
    detector = make_detector(source, tmp_path)
    detector.run_cycle(NOW)
    detector.fit_query("temp", NOW)
    del source.series[("unit_test_temp", GPU1)]
    gpu2 = ("unit_test_temp", (("gpu", "2"),))
    source.series[gpu2] = wave(NOW - 3600, NOW, STEP, seed=3)
    # past the lookback, so the vanished series has no sample left in the window
    later = NOW + 6 * STEP
    append(source, ("unit_test_temp", GPU0), NOW - 37 + STEP, later - 37, lambda t: 50.0)
    append(source, gpu2, NOW - 37 + STEP, later - 37, lambda t: 50.0)
    assert detector.run_cycle(later) == 2
    metrics = exposition(detector)
    assert {dict(labels)["gpu"] for labels in score_labels(metrics)} == {"0", "2"}
    summary = {b["query"]: b for b in detector.bundles()}["temp"]
    assert summary["series"] == 2 and summary["fallback_series"] == 1  # GPU 2 until the next fit


def test_a_raw_counter_is_scored_as_a_rate_across_a_reset(tmp_path):
    start = NOW - 7200
    counter, total = [], 0.0
    for i, t in enumerate(range(int(start), int(NOW) + 1, STEP)):
        total = 0.0 if i == 60 else total + 30.0  # 0.5 per second, and a restart halfway
        counter.append((float(t), total))
    source = RangeServer({("unit_test_requests_total", GPU0): counter})
    try:
        detector = make_detector(source, tmp_path, expr="unit_test_requests_total", counter=True)
        detector.fit_query("temp", NOW)
        detector.run_cycle(NOW)
        [point] = [p for points in detector.snapshot().values() for p in points]
        assert point.value == pytest.approx(0.5)
        assert not math.isnan(point.score) and point.score < 1
    finally:
        source.stop()


def test_two_shards_score_every_series_exactly_once(tmp_path):
    labels = [(("gpu", str(i)),) for i in range(8)]
    source = RangeServer({("unit_test_temp", lab): wave(NOW - 3600, NOW, STEP, seed=i)
                          for i, lab in enumerate(labels)})
    try:
        expected = [{lab[0][1] for lab in labels if shard_of(lab, 2) == i} for i in range(2)]
        assert expected[0] and expected[1]  # the hash does split these eight series
        scored = []
        for index in range(2):
            detector = make_detector(source, tmp_path / f"shard-{index}", shard=(index, 2))
            detector.run_cycle(NOW)
            metrics = exposition(detector)
            scored.append({dict(labels)["gpu"] for labels in score_labels(metrics)})
            assert metrics[("boxwatch_detector_shard", frozenset({"total": "2"}.items()))] == index
        assert scored == expected
    finally:
        source.stop()


def test_a_multivariate_query_scores_each_entity_and_names_the_features(tmp_path):
    series = {}
    for gpu in ("0", "1"):
        series[("mv_temp", (("gpu", gpu),))] = wave(NOW - 6 * 3600, NOW, STEP, base=60, seed=int(gpu))
        series[("mv_power", (("gpu", gpu),))] = wave(NOW - 6 * 3600, NOW, STEP, base=200, amplitude=20, noise=5,
                                                     seed=10 + int(gpu))
    source = RangeServer(series)
    try:
        detector = make_detector(source, tmp_path, expr='{__name__=~"mv_temp|mv_power"}', model="iforest",
                                 group_by=["gpu"], fit_window="6h")
        detector.fit_query("temp", NOW)
        after = NOW - 37 + STEP
        for (name, labels) in list(series):
            calm = series[(name, labels)][-1][1]
            hot = name == "mv_temp" and labels == (("gpu", "1"),)
            append(source, (name, labels), after, after, lambda t, v=calm, h=hot: v + (30.0 if h else 0.0))
        assert detector.run_cycle(NOW + STEP) == 2
        metrics = exposition(detector)
        scores = {dict(labels)["gpu"]: v for (name, labels), v in metrics.items() if name == "boxwatch_anomaly_score"}
        assert score_labels(metrics) == {
            frozenset({"gpu": g, "query": "temp", "model": "iforest"}.items()) for g in ("0", "1")}
        assert scores["1"] > 1 > scores["0"]
        assert not any(name == "boxwatch_anomaly_expected" for name, _ in metrics)  # a forest has no band
        [anomaly] = detector.anomalies()
        assert anomaly["labels"] == {"gpu": "1"} and anomaly["top_features"][0] == "mv_temp"
        tops = {dict(labels)["rank"]: dict(labels)["feature"] for (name, labels) in metrics
                if name == "boxwatch_anomaly_top_feature" and dict(labels)["gpu"] == "1"}
        assert tops["1"] == "mv_temp" and set(tops) <= {"1", "2", "3"}
    finally:
        source.stop()


@pytest.mark.parametrize("counter", [False, True])
@pytest.mark.parametrize("shard", [(0, 1), (1, 2)])
def test_a_multivariate_answer_as_arrays_gives_the_frames_its_series_give(counter, shard):
    """The serve cycle's entities (entity_units, from the reader's arrays) are build_units' frames from the
    same answer as pandas Series: features, names, counter rates, shard and NaN gaps alike."""
    import numpy as np
    import pandas as pd

    from detector.reader import utc_index
    from detector.scoring import build_units, entity_units

    config = validate({"schema_version": 1, "reader": {"url": "http://127.0.0.1:1"}, "state_dir": "/tmp/unused",
                       "queries": {"q": {"expr": "x", "model": "iforest", "group_by": ["gpu"], "counter": counter}}})
    query = config.queries["q"]
    index = utc_index(NOW - 37 + STEP * np.arange(6))
    rng = np.random.default_rng(1)
    keys = tuple((("__name__", name), ("gpu", gpu), *((("fan", fan),) if fan else ()))
                 for gpu in ("0", "1", "2", "3") for name, fan in (("temp", ""), ("power", ""), ("rpm", "a")))
    values = np.cumsum(rng.uniform(0, 5, (len(keys), len(index))), axis=1)
    values[3, 2] = np.nan
    raw = {key: pd.Series(row, index=index, name="value") for key, row in zip(keys, values, strict=True)}
    expected = build_units(query, True, raw, shard)
    got = entity_units(query, index, keys, values, shard)
    assert list(got) == list(expected) and 0 < len(got) <= 4
    for entity, frame in expected.items():
        pd.testing.assert_frame_equal(got[entity], frame, check_freq=False)
    assert list(next(iter(got.values())).columns) == ["power", "rpm{fan=a}", "temp"]


def test_the_sink_gets_the_fit_with_its_training_frames_and_what_it_returns_serves(source, tmp_path):
    import dataclasses

    detector = make_detector(source, tmp_path)
    handed = []

    def versioning_sink(result):
        handed.append(result)
        return dataclasses.replace(result.bundle, version="7")

    detector.fit_sink = versioning_sink
    served = detector.fit_query("temp", NOW)
    [result] = handed
    assert set(result.units) == {GPU0, GPU1} and len(result.units[GPU0]) == 61  # the hour the models were fitted on
    assert served.version == "7" and result.bundle.version is None
    assert detector.model_info() == [("temp", "robust", "7")]
    assert result.same_fit(served)
    assert not result.same_fit(dataclasses.replace(served, fitted_at=served.fitted_at - 3600))
    units = detector.read_units("temp", NOW - 600, NOW)  # what drift reads its recent window with
    assert set(units) == {GPU0, GPU1} and len(units[GPU0]) == 11


def _no_proxy_settings(monkeypatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_prometheus_is_read_through_the_proxy_the_environment_names_as_it_was_at_start(source, tmp_path,
                                                                                       monkeypatch):
    """``HTTP_PROXY`` and ``NO_PROXY`` apply as for any requests client; they are read once, when the service
    makes its client, not at every request of every cycle."""
    _no_proxy_settings(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", source.url)  # the range server answers a proxied request as well
    queries = {"temp": {"expr": "unit_test_temp", "step": f"{STEP}s", "fit_window": "1h", "fit_every": "1h",
                        "infer_every": f"{STEP}s"}}
    proxied = Detector(validate(detector_config("http://prometheus.invalid:9090", tmp_path / "a", queries)),
                       clock=lambda: NOW)
    assert proxied.run_cycle(NOW) == 2  # a name that resolves nowhere: only the proxy could answer
    assert source.requests

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = make_detector(source, tmp_path / "b")
    assert direct.run_cycle(NOW) == 2
    monkeypatch.delenv("NO_PROXY")  # a running service keeps the settings it started with
    append(source, ("unit_test_temp", GPU0), NOW - 37 + STEP, NOW - 37 + STEP, lambda t: 50.0)
    append(source, ("unit_test_temp", GPU1), NOW - 37 + STEP, NOW - 37 + STEP, lambda t: 50.0)
    assert direct.run_cycle(NOW + STEP) == 2
    assert proxied.run_cycle(NOW + STEP) == 2
