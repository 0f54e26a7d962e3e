"""The reader against a real Prometheus holding history written by promtool."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import requests

from detector.config import ReaderConfig
from detector.reader import PrometheusReader, PrometheusUnavailable, QueryError, counter_rate, counter_rates
from tests.detector.conftest import STEP
from tests.harness import free_port, freeze

END = (int(time.time()) // 3600 - 2) * 3600  # an aligned hour, safely in the past
DAYS = 9  # 12961 one-minute points: more than one request may carry


class CountingSession(requests.Session):
    def __init__(self):
        super().__init__()
        self.calls: list[dict] = []

    def get(self, url, params=None, **kwargs):
        self.calls.append(dict(params or {}))
        return super().get(url, params=params, **kwargs)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Prometheus with 9 days of 1-minute history of three series, one with a 2-hour gap and a counter."""
    from tests.harness import Prometheus, backfill, openmetrics

    start = END - DAYS * 86400
    stamps = np.arange(start, END + 1, STEP)
    gap = (stamps >= END - 5 * 3600) & (stamps < END - 3 * 3600)
    counter = np.cumsum(np.full(len(stamps), 6.0))  # 0.1/s
    counter[stamps >= END - 86400] -= counter[stamps >= END - 86400][0] - 3.0  # a restart one day ago
    series = {
        ("reader_test_value", (("gpu", "0"),)): [(t, float(t % 1000)) for t in stamps],
        ("reader_test_value", (("gpu", "1"),)): [(t, float(t % 777)) for t, g in zip(stamps, gap, strict=True)
                                                  if not g],
        ("reader_test_bytes_total", (("gpu", "0"),)): list(zip(stamps.tolist(), counter.tolist(), strict=True)),
    }
    workdir = tmp_path_factory.mktemp("reader")
    backfill(workdir / "data", openmetrics(series, {"reader_test_bytes_total": "counter"}))
    prom = Prometheus(workdir, data_dir=workdir / "data")
    yield prom
    prom.stop()


@pytest.mark.slow
def test_long_range_is_chunked_and_lands_on_the_step_grid(loaded):
    session = CountingSession()
    reader = PrometheusReader(ReaderConfig(url=loaded.url), session=session)
    start = END - DAYS * 86400
    result = reader.query_range("reader_test_value", start, END, STEP)
    assert len(session.calls) == 2  # 12961 points, at most 11000 per request
    assert set(result) == {(("__name__", "reader_test_value"), ("gpu", "0")),
                           (("__name__", "reader_test_value"), ("gpu", "1"))}
    first = result[(("__name__", "reader_test_value"), ("gpu", "0"))]
    assert len(first) == DAYS * 1440 + 1
    assert first.index[0].timestamp() == start and first.index[-1].timestamp() == END
    expected = (np.arange(start, END + 1, STEP) % 1000).astype(float)
    np.testing.assert_array_equal(first.to_numpy(), expected)


@pytest.mark.slow
def test_answers_come_uncompressed_unless_asked_for(loaded):
    """Beside Prometheus, gzip costs more than it saves: not asked for by default; ``compression`` asks for
    it, and an ``Accept-Encoding`` header of the configuration wins either way."""

    def encodings(**settings) -> tuple[list, dict]:
        session, seen = requests.Session(), []
        session.hooks["response"].append(lambda response, **_: seen.append(response.headers.get("Content-Encoding")))
        reader = PrometheusReader(ReaderConfig(url=loaded.url, **settings), session=session)
        answer = reader.query_range("reader_test_value", END - 3600, END, STEP)
        return seen, answer

    plain, answer = encodings()
    gzipped, same = encodings(compression=True)
    assert plain == [None] and gzipped == ["gzip"]
    assert answer.keys() == same.keys()
    for key, series in answer.items():
        np.testing.assert_array_equal(series.to_numpy(), same[key].to_numpy())
    assert encodings(headers={"accept-encoding": "gzip"})[0] == ["gzip"]
    assert encodings(compression=True, headers={"Accept-Encoding": "identity"})[0] == [None]


@pytest.mark.slow
def test_smaller_chunks_give_the_same_answer(loaded):
    small = CountingSession()
    reader = PrometheusReader(ReaderConfig(url=loaded.url, max_points_per_request=500), session=small)
    start = END - 86400
    chunked = reader.query_range("reader_test_value", start, END, STEP)
    whole = PrometheusReader(ReaderConfig(url=loaded.url)).query_range("reader_test_value", start, END, STEP)
    assert len(small.calls) == 3  # 1441 points by 500
    for key, series in whole.items():
        np.testing.assert_array_equal(chunked[key].to_numpy(), series.to_numpy())


@pytest.mark.slow
def test_series_answered_with_few_samples_read_as_with_many(loaded):
    """A serve cycle's answer (a few samples a series) and a fit's (many) are read by two paths: same values,
    gaps included."""
    few = PrometheusReader(ReaderConfig(url=loaded.url, max_points_per_request=10))
    start = END - 6 * 3600
    keys, values = few.query_range_arrays("reader_test_value", start, END, STEP)[1:]
    whole = PrometheusReader(ReaderConfig(url=loaded.url)).query_range("reader_test_value", start, END, STEP)
    assert set(keys) == set(whole) and np.isnan(values).any() and not np.isnan(values).all()
    for key, row in zip(keys, values, strict=True):
        np.testing.assert_array_equal(row, whole[key].to_numpy())


@pytest.mark.slow
def test_the_same_series_answered_again_give_the_same_keys_and_other_series_new_ones(loaded):
    """A serve cycle's answer lists the same series cycle after cycle: the keys come back as the same tuple
    (what the service keeps its per-unit work by); a series that comes or goes gives new keys and rows."""
    reader = PrometheusReader(ReaderConfig(url=loaded.url))
    inside_gap = END - 4 * 3600  # gpu="1" has no sample for more than 5 minutes here
    _, both, values = reader.query_range_arrays("reader_test_value", END - STEP, END, STEP)
    _, again, _ = reader.query_range_arrays("reader_test_value", END - STEP, END, STEP)
    assert again is both and len(both) == 2
    _, one, gap_values = reader.query_range_arrays("reader_test_value", inside_gap, inside_gap, STEP)
    assert one == ((("__name__", "reader_test_value"), ("gpu", "0")),)
    assert gap_values.tolist() == [[float(inside_gap % 1000)]]
    _, back, _ = reader.query_range_arrays("reader_test_value", END - STEP, END, STEP)
    assert back == both and back is not both
    row = {key: i for i, key in enumerate(back)}[(("__name__", "reader_test_value"), ("gpu", "1"))]
    assert values[row].tolist() == [float((END - STEP) % 777), float(END % 777)]


@pytest.mark.slow
def test_gaps_stay_nan(loaded):
    reader = PrometheusReader(ReaderConfig(url=loaded.url))
    series = reader.query_range('reader_test_value{gpu="1"}', END - 8 * 3600, END, STEP)
    values = next(iter(series.values()))
    stamps = values.index.map(lambda t: t.timestamp())
    missing = values.isna().to_numpy()
    # Prometheus' 5-minute lookback fills the first minutes of the gap; the rest is NaN.
    inside = (stamps >= END - 5 * 3600 + 300) & (stamps < END - 3 * 3600)
    assert missing[inside].all()
    assert not missing[stamps < END - 5 * 3600].any()
    assert not missing[stamps >= END - 3 * 3600].any()


@pytest.mark.slow
def test_raw_counter_resets_become_rates(loaded):
    reader = PrometheusReader(ReaderConfig(url=loaded.url))
    raw = next(iter(reader.query_range("reader_test_bytes_total", END - 2 * 86400, END, STEP).values()))
    rates = counter_rate(raw, STEP).dropna()
    assert rates.min() >= 0  # the restart is not a huge negative rate
    np.testing.assert_allclose(rates[rates.index != rates.index[0]].median(), 0.1)
    reset = raw.index.get_loc(raw.diff().idxmin())
    assert rates.loc[raw.index[reset]] == pytest.approx(3.0 / STEP)


@pytest.mark.slow
def test_bad_query_is_not_retried(loaded):
    session = CountingSession()
    reader = PrometheusReader(ReaderConfig(url=loaded.url, retries=3), session=session, sleep=lambda s: None)
    with pytest.raises(QueryError, match="parse error"):
        reader.query_range("rate(", END - 3600, END, STEP)
    assert len(session.calls) == 1


@pytest.mark.slow
def test_instant_vector_only_queries_are_refused(loaded):
    reader = PrometheusReader(ReaderConfig(url=loaded.url))
    with pytest.raises(QueryError):
        reader.query_range("reader_test_value[5m]", END - 3600, END, STEP)


def test_unreachable_prometheus_is_retried_with_backoff():
    delays: list[float] = []
    reader = PrometheusReader(ReaderConfig(url=f"http://127.0.0.1:{free_port()}", retries=3, backoff=0.2,
                                           timeout=1), sleep=delays.append)
    with pytest.raises(PrometheusUnavailable, match="after 4 tries"):
        reader.query_range("up", END - 600, END, STEP)
    assert delays == [0.2, 0.4, 0.8]


@pytest.mark.slow
def test_a_hung_prometheus_is_reported_within_one_timeout_and_scoring_resumes(loaded, tmp_path):
    """SIGSTOP: the kernel still accepts connections, nothing answers. Not retried: one timeout, not four."""
    import os
    import signal

    from detector.config import validate
    from detector.service import Detector

    reader = PrometheusReader(ReaderConfig(url=loaded.url, retries=3, timeout="2s", backoff="0.1s"))
    config = validate({"schema_version": 1, "state_dir": str(tmp_path / "state"),
                       "reader": {"url": loaded.url, "timeout": "2s", "retries": 3},
                       "queries": {"q": {"expr": "reader_test_value", "step": f"{STEP}s"}}})
    detector = Detector(config, clock=lambda: END)
    freeze(loaded.proc.pid)
    try:
        began = time.monotonic()
        with pytest.raises(PrometheusUnavailable, match="did not answer within 2 s"):
            reader.query_range("reader_test_value", END - 3600, END, STEP)
        assert time.monotonic() - began < 3.0
        began = time.monotonic()
        detector.run_cycle(END)
        assert time.monotonic() - began < 3.0
        stats, _ = detector.stats_copy()
        assert stats.prometheus_up is False and stats.query_errors == {"q": 1}
    finally:
        os.kill(loaded.proc.pid, signal.SIGCONT)
    assert len(reader.query_range("reader_test_value", END - 3600, END, STEP)) == 2
    assert detector.run_cycle(END + STEP) == 2
    assert detector.stats_copy()[0].prometheus_up is True
    detector.stop()


def test_counter_rates_of_rows_are_counter_rate_of_each_series():
    """The serve cycle's array path turns counters into rates exactly as the per-series path does."""
    rows = np.array([[1, 3, np.nan, 7, 2, 5, 5, np.nan, np.nan, 9.0], [0, 0, 10, 4, 4, np.nan, 6, 8, 1, 2]])
    index = pd.date_range("2026-01-01", periods=rows.shape[1], freq="min", tz="UTC")
    expected = [counter_rate(pd.Series(row, index=index), STEP).to_numpy() for row in rows]
    np.testing.assert_array_equal(counter_rates(rows, STEP), np.stack(expected))
