"""Range queries against a Prometheus-compatible HTTP API (Prometheus, Thanos, Mimir, VictoriaMetrics).

One query gives many series, each keyed by its label set (a sorted tuple of pairs,
``__name__`` included when the query keeps it). Values lie on the query's step grid
(``start + k * step``); a grid point without a sample is NaN, so gaps stay gaps.

Long ranges are split so that no request asks for more than ``max_points_per_request``
points per series (Prometheus refuses more than 11,000). Connection errors, 5xx and 429
answers are retried with exponential backoff within one ``timeout``; a 4xx (a bad query) is
not, nor a read timeout (a hung server): either way a request fails within ``timeout``.
Answers come uncompressed unless ``compression`` is set: the detector usually runs beside
Prometheus, where gzip costs both ends more time than the bytes it saves.

Counters: prefer ``rate()`` in PromQL. For a query that returns raw counters, set
``counter: true`` and :func:`counter_rate` turns the values into per-second rates, reading a
drop as a reset (the new value is the increase since the reset), as ``rate()`` does.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Mapping

import numpy as np
import pandas as pd
import requests

from boxwatch.backoff import Backoff
from boxwatch.log import kv
from boxwatch.times import format_duration
from detector.config import ReaderConfig
from detector.httpclient import session_for

log = logging.getLogger("boxwatch.detector.reader")

SeriesKey = tuple[tuple[str, str], ...]
DENSE_SAMPLES = 16  # a series answered with more samples than this is converted with arrays
LAYOUTS = 256  # queries whose last answer's series keys are remembered


class ReaderError(RuntimeError):
    """A query failed."""


class PrometheusUnavailable(ReaderError):
    """Prometheus did not answer (connection refused, timeout, 5xx) after every retry."""


class QueryError(ReaderError):
    """Prometheus answered that the query itself is wrong (HTTP 400/422): retrying will not help."""


def series_key(labels: Mapping[str, str]) -> SeriesKey:
    return tuple(sorted(labels.items()))


def grid(start: float, end: float, step: float) -> np.ndarray:
    """Evaluation timestamps of a range query: ``start, start + step, ..., <= end``."""
    count = int(math.floor((end - start) / step + 1e-9)) + 1
    return start + step * np.arange(max(count, 0))


def utc_index(seconds: np.ndarray) -> pd.DatetimeIndex:
    """A UTC ``DatetimeIndex`` of Unix seconds (a query's grid): what ``pd.to_datetime(seconds, unit="s",
    utc=True)`` gives, at a hundredth of its cost (6 ms for a 14-day grid of minutes)."""
    nanoseconds = np.rint(np.asarray(seconds, dtype=float) * 1e9).astype(np.int64)
    return pd.DatetimeIndex(nanoseconds.view("datetime64[ns]"), tz="UTC")


def align(timestamp: float, step: float) -> float:
    """The grid point at or before ``timestamp`` on the grid of multiples of ``step``."""
    return math.floor(timestamp / step) * step


def counter_rates(values: np.ndarray, step: float) -> np.ndarray:
    """:func:`counter_rate` of each row of ``values`` (series x grid points)."""
    values = np.asarray(values, dtype=float)
    diff = np.full(values.shape, np.nan)
    diff[..., 1:] = values[..., 1:] - values[..., :-1]
    with np.errstate(invalid="ignore"):
        return np.where(diff >= 0, diff, values) / step


def counter_rate(values: pd.Series, step: float) -> pd.Series:
    """Per-second rate between consecutive grid points of a raw counter, resets handled.

    A drop means the counter restarted from 0: the increase is the new value. The first
    point and points next to a gap are NaN.
    """
    diff = values.diff()
    increase = diff.where(diff >= 0, values)
    return increase / step


class PrometheusReader:
    """``query_range`` with chunking, retries, a timeout and NaN-filled gaps.

    Parameters
    ----------
    config : ReaderConfig
        URL, timeout, retries, backoff and the per-request point limit.
    session : requests.Session, optional
        Connection pool to use (tests may pass their own).
    """

    def __init__(self, config: ReaderConfig, session: requests.Session | None = None, sleep=time.sleep):
        self.config = config
        self._session = session_for(config, session)
        if not config.compression and not any(name.lower() == "accept-encoding" for name in config.headers):
            # requests asks for gzip by default, and Prometheus then compresses every answer: for a serve
            # cycle's 5,000 series (700 kB) that made the request and its decoding 72 ms instead of 52
            self._session.headers["Accept-Encoding"] = "identity"
        self._sleep = sleep
        self.last_request_seconds = 0.0
        self._layouts: dict[str, tuple[list[dict], tuple[SeriesKey, ...], dict[SeriesKey, int] | None]] = {}

    def close(self) -> None:
        self._session.close()

    def query_range(self, expr: str, start: float, end: float, step: float) -> dict[SeriesKey, pd.Series]:
        """Every series of ``expr`` on the grid ``start .. end`` by ``step``, as float Series.

        The index is a UTC ``DatetimeIndex`` of the grid; missing samples are NaN. Series
        with no sample at all in the range are absent.
        """
        index, keys, values = self.query_range_arrays(expr, start, end, step)
        return {key: pd.Series(row, index=index, name="value") for key, row in zip(keys, values, strict=True)}

    def query_range_arrays(self, expr: str, start: float, end: float,
                           step: float) -> tuple[pd.DatetimeIndex, tuple[SeriesKey, ...], np.ndarray]:
        """:meth:`query_range` as one array: the grid, the series' keys, and their values (series x grid).

        What a serve cycle reads: no pandas object per series. When the answer lists the same series
        in the same order as the last answer to ``expr`` (a serve cycle's, cycle after cycle), the keys
        are the same tuple object, so a caller may keep what it derived from them.
        """
        if end < start:
            raise ValueError(f"end {end} is before start {start}")
        stamps = grid(start, end, step)
        count = len(stamps)
        chunk = self.config.max_points_per_request
        rows: dict[SeriesKey, int] = {}
        dense: dict[int, np.ndarray] = {}  # rows of series with many samples, filled array-wise
        at_row: list[np.ndarray] = []  # the few samples of the other series (a serve cycle's): one assignment
        at_stamp: list[np.ndarray] = []
        found: list[str] = []
        keys: tuple[SeriesKey, ...] = ()
        ordered = False  # one answer whose series are the rows in order: its keys (kept) are the rows'
        self.last_request_seconds = 0.0
        for first in range(0, count, chunk):
            part = stamps[first:first + chunk]
            result = self._request(expr, float(part[0]), float(part[-1]), step)
            keys, positions = self._keys(expr, [item["metric"] for item in result])
            if not rows and positions is not None:  # the first answer: its rows in answer order
                ordered = count <= chunk
                rows = positions if ordered else dict(positions)
                row_of = np.arange(len(keys))
            else:  # a series may be in some chunks only
                row_of = np.fromiter([rows.setdefault(key, len(rows)) for key in keys], dtype=np.intp,
                                     count=len(keys))
            samples = [item["values"] for item in result]
            lengths = np.fromiter(map(len, samples), dtype=np.intp, count=len(samples))
            many = lengths > DENSE_SAMPLES
            for i in np.flatnonzero(many).tolist():
                target = dense.get(int(row_of[i]))
                if target is None:
                    target = dense[int(row_of[i])] = np.full(count, np.nan)
                index = np.rint((np.array([ts for ts, _ in samples[i]], dtype=float) - start) / step).astype(int)
                inside = (index >= 0) & (index < count)
                target[index[inside]] = _floats([value for _, value in samples[i]])[inside]
            few = samples if not many.any() else [samples[i] for i in np.flatnonzero(~many).tolist()]
            flat = list(itertools.chain.from_iterable(few))
            if flat:
                stamps_of, values_of = zip(*flat, strict=True)
                at_row.append(np.repeat(row_of[~many], lengths[~many]))
                at_stamp.append(np.array(stamps_of, dtype=float))
                found.extend(values_of)
        values = np.full((len(rows), count), np.nan)
        for row, target in dense.items():
            values[row] = target
        if found:
            index = np.rint((np.concatenate(at_stamp) - start) / step).astype(np.intp)
            inside = (index >= 0) & (index < count)
            values[np.concatenate(at_row)[inside], index[inside]] = _floats(found)[inside]
        if not ordered:
            keys = tuple(rows)  # several answers (or repeated series): in order of first appearance
        return utc_index(stamps), keys, values

    def _keys(self, expr: str, metrics: list[dict]) -> tuple[tuple[SeriesKey, ...], dict[SeriesKey, int] | None]:
        """The series' keys of an answer's label sets, and each key's position (``None`` if a key repeats).

        The same objects as last time when the answer lists the same series in the same order as the
        last answer to ``expr`` (a serve cycle's, cycle after cycle): no sort or hash per series.
        """
        known = self._layouts.get(expr)
        if known is not None and known[0] == metrics:
            return known[1], known[2]
        keys = tuple(series_key(labels) for labels in metrics)
        positions = dict(zip(keys, range(len(keys)), strict=True))
        if len(positions) < len(keys):
            positions = None
        if len(self._layouts) >= LAYOUTS:
            self._layouts.clear()
        self._layouts[expr] = (metrics, keys, positions)
        return keys, positions

    def _request(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        """One range request, answered within ``timeout`` or failed.

        Connection errors, 5xx and 429 are retried with backoff while the deadline (one
        ``timeout`` from the first try) allows; a read timeout is not: a hung server (stopped,
        deadlocked) would only hang again, and retrying it would report the outage several
        timeouts late.
        """
        params = {"query": expr, "start": _fmt(start), "end": _fmt(end), "step": format_duration(step)}
        url = f"{self.config.url}/api/v1/query_range"
        backoff = Backoff(maximum=math.inf, initial=self.config.backoff)
        deadline = time.monotonic() + self.config.timeout
        tries = 0
        for attempt in range(self.config.retries + 1):
            began = time.perf_counter()
            tries += 1
            try:
                response = self._session.get(url, params=params, timeout=max(deadline - time.monotonic(), 0.001))
            except requests.exceptions.ReadTimeout:
                raise PrometheusUnavailable(f"{self.config.url} did not answer within {self.config.timeout:g} s "
                                            "(read timeout; not retried)") from None
            except requests.RequestException as err:
                problem: str = f"{type(err).__name__}: {err}"
            else:
                if response.status_code in (400, 422):
                    raise QueryError(_error_text(response))
                if response.status_code == 200:
                    body = response.json()
                    self.last_request_seconds += time.perf_counter() - began
                    if body.get("status") != "success":
                        raise QueryError(body.get("error", "query failed"))
                    if body["data"]["resultType"] != "matrix":
                        raise QueryError(f"expected a range vector, got {body['data']['resultType']}")
                    return body["data"]["result"]
                problem = f"HTTP {response.status_code}: {_error_text(response)}"
                if response.status_code < 500 and response.status_code != 429:
                    raise QueryError(problem)
            delay = backoff.next_delay()
            if attempt == self.config.retries or time.monotonic() + delay >= deadline:
                break
            log.debug("retrying query", extra=kv(error=problem, attempt=attempt + 1))
            self._sleep(delay)
        raise PrometheusUnavailable(f"{self.config.url} unreachable after {tries} tries: {problem}")


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def _floats(values: list[str]) -> np.ndarray:
    """Prometheus' sample strings as floats ("NaN", "+Inf" included); one that is no number is NaN."""
    try:
        return np.array(values, dtype=float)
    except ValueError:
        return np.array([_float(value) for value in values], dtype=float)


def _fmt(ts: float) -> str:
    return f"{ts:.3f}"


def _error_text(response: requests.Response) -> str:
    try:
        return response.json().get("error") or response.text[:200]
    except ValueError:
        return response.text[:200]
