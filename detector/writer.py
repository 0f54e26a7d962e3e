"""Scores out of band: OpenMetrics text for promtool, and Prometheus remote write.

A :class:`ScoredPoint` list is rendered as the four ``boxwatch_anomaly_*`` families.
OpenMetrics output is for ``promtool tsdb create-blocks-from openmetrics`` (timestamps in
seconds, each family's samples together, ``# EOF`` at the end). Remote write sends a
``WriteRequest`` (encoded here by hand: Prometheus' protobuf messages are not in the
``protobuf`` package) compressed with snappy's block format.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import requests

from boxwatch.exposition import label_text

SCORE_FAMILIES = {
    "score": ("boxwatch_anomaly_score",
              "Calibrated anomaly score: 0 normal, above 1 alert-worthy (rare for this series)."),
    "raw_score": ("boxwatch_anomaly_score_raw", "Raw distance from the expected band: above 1 outside it."),
    "expected": ("boxwatch_anomaly_expected", "Value the model expected."),
    "lower": ("boxwatch_anomaly_expected_lower", "Lower edge of the expected band."),
    "upper": ("boxwatch_anomaly_expected_upper", "Upper edge of the expected band."),
}


class ScoredPoint(NamedTuple):
    """One scored point of one unit: output labels (source labels + query + model) and values.

    A named tuple, not a dataclass: a serve cycle makes one per unit, and a frozen dataclass'
    field-by-field ``__init__`` cost more than scoring the unit.
    """

    labels: tuple[tuple[str, str], ...]
    timestamp: float
    value: float
    expected: float
    lower: float
    upper: float
    score: float
    top_features: tuple[str, ...] = ()
    raw_score: float = math.nan

    def field_value(self, name: str) -> float:
        return getattr(self, name)


def scored_points(labels: tuple[tuple[str, str], ...], frame, result) -> Iterator[ScoredPoint]:
    """:class:`ScoredPoint` per row of a model's ``result`` with a score (NaN scores are skipped)."""
    import numpy as np

    scores = result["score"].to_numpy(dtype=float)
    if np.isnan(scores).all():
        return
    stamps = result.index.asi8 / 1e9 if hasattr(result.index, "asi8") else result.index
    values = frame["value"].to_numpy(dtype=float) if "value" in frame.columns else np.full(len(frame), np.nan)
    expected, lower, upper = (result[c].to_numpy(dtype=float) for c in ("expected", "lower", "upper"))
    tops = result["top_features"].to_numpy() if "top_features" in result.columns else None
    raws = result["raw_score"].to_numpy(dtype=float) if "raw_score" in result.columns else scores
    yield from points_of(labels, stamps, values, expected, lower, upper, scores, raws, tops)


def points_of(labels: tuple[tuple[str, str], ...], stamps, values, expected, lower, upper, scores, raws,
              tops=None) -> Iterator[ScoredPoint]:
    """:class:`ScoredPoint` per position of the arrays with a score (NaN scores are skipped)."""
    import numpy as np

    keep = np.flatnonzero(~np.isnan(np.asarray(scores, dtype=float)))
    if not len(keep):
        return
    columns = [np.asarray(a, dtype=float)[keep].tolist() for a in (stamps, values, expected, lower, upper, scores, raws)]
    if tops is None:
        for stamp, value, exp, low, up, score, raw in zip(*columns, strict=True):
            yield ScoredPoint(labels, stamp, value, exp, low, up, score, (), raw)
        return
    for i, stamp, value, exp, low, up, score, raw in zip(keep.tolist(), *columns, strict=True):
        top = tops[i]
        yield ScoredPoint(labels, stamp, value, exp, low, up, score, tuple(top) if isinstance(top, list | tuple) else (),
                          raw)


def points_of_rows(labels, stamps, values, expected, lower, upper, scores, raws,
                   tops=None) -> list[Sequence[ScoredPoint]]:
    """:func:`points_of` of each row of units x points arrays (``labels[i]`` row ``i``'s, the units share
    ``stamps``), in one pass over the batch instead of a pass per unit.

    A row's points are a tuple when there is one (a serve cycle's): a tuple of numbers and strings is
    left alone by the garbage collector after its first pass, a list never is."""
    import numpy as np

    rows, cols = np.nonzero(~np.isnan(np.asarray(scores, dtype=float)))
    if not len(rows):
        return [[] for _ in labels]
    columns = [np.asarray(a, dtype=float)[rows, cols].tolist() for a in (values, expected, lower, upper, scores)]
    stamps = np.asarray(stamps, dtype=float)[cols].tolist()
    row_list = rows.tolist()
    if tops is None:
        features = [()] * len(row_list)
    else:
        features = [tuple(top) if isinstance(top, list | tuple) else () for top in tops[rows, cols].tolist()]
    # tuple.__new__ over zipped columns: a named tuple's own __new__ is a Python call per point
    made = list(map(tuple.__new__, itertools.repeat(ScoredPoint),
                    zip([labels[i] for i in row_list], stamps, *columns, features,
                        np.asarray(raws, dtype=float)[rows, cols].tolist(), strict=True)))
    if len(made) == len(labels) and row_list == list(range(len(labels))):  # one point per unit (a serve cycle)
        return [(point,) for point in made]
    out: list[list[ScoredPoint]] = [[] for _ in labels]
    for i, point in zip(row_list, made, strict=True):
        out[i].append(point)
    return out


def present(value: float) -> bool:
    return value is not None and not math.isnan(value)


# --------------------------------------------------------------------------- OpenMetrics


def openmetrics_lines(points: Iterable[ScoredPoint]) -> Iterator[str]:
    """OpenMetrics lines (no ``# EOF``) for ``points``; NaN values are left out, as on /metrics."""
    points = sorted(points, key=lambda p: (p.labels, p.timestamp))
    for column, (name, help_text) in SCORE_FAMILIES.items():
        yield f"# TYPE {name} gauge"
        yield f"# HELP {name} {help_text}"
        for point in points:
            value = point.field_value(column)
            if present(value):
                yield f"{name}{{{label_text(point.labels)}}} {_number(value)} {point.timestamp:.3f}"


def write_openmetrics(points: Iterable[ScoredPoint], handle) -> int:
    """Write ``points`` as a complete OpenMetrics document; return the number of samples."""
    count = 0
    for line in openmetrics_lines(points):
        handle.write(line + "\n")
        count += not line.startswith("#")
    handle.write("# EOF\n")
    return count


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


# --------------------------------------------------------------------------- remote write


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_write_request(series: Iterable[tuple[Iterable[tuple[str, str]], Iterable[tuple[float, float]]]]) -> bytes:
    """Protobuf ``prometheus.WriteRequest`` from ``(labels, [(unix_seconds, value), ...])`` pairs.

    ``WriteRequest{1: repeated TimeSeries}``, ``TimeSeries{1: repeated Label, 2: repeated Sample}``,
    ``Label{1: name, 2: value}``, ``Sample{1: double value, 2: int64 timestamp_ms}``. Labels are
    sorted by name, as the receiver requires.
    """
    body = bytearray()
    for labels, samples in series:
        ts = bytearray()
        for name, value in sorted(labels):
            ts += _field_bytes(1, _field_bytes(1, name.encode()) + _field_bytes(2, str(value).encode()))
        for timestamp, value in samples:
            sample = b"\x09" + struct.pack("<d", float(value)) + b"\x10" + _varint(int(round(timestamp * 1000)) & (2**64 - 1))
            ts += _field_bytes(2, sample)
        body += _field_bytes(1, bytes(ts))
    return bytes(body)


def points_to_series(points: Iterable[ScoredPoint]) -> list[tuple[tuple[tuple[str, str], ...], list[tuple[float, float]]]]:
    """Group points into remote-write time series, one per family and label set, in time order."""
    grouped: dict[tuple, list[tuple[float, float]]] = {}
    for point in points:
        for column, (name, _) in SCORE_FAMILIES.items():
            value = point.field_value(column)
            if present(value):
                grouped.setdefault((("__name__", name), *point.labels), []).append((point.timestamp, value))
    return [(labels, sorted(samples)) for labels, samples in grouped.items()]


class RemoteWriter:
    """Pushes scored points to a Prometheus remote-write endpoint, in batches."""

    def __init__(self, url: str, timeout: float = 30.0, batch_samples: int = 5000,
                 session: requests.Session | None = None):
        self.url = url
        self.timeout = timeout
        self.batch_samples = batch_samples
        self._session = session or requests.Session()

    def write(self, points: Iterable[ScoredPoint]) -> int:
        """Send every point; raise ``requests.HTTPError`` with the receiver's message on refusal."""
        import cramjam

        sent = 0
        batch: list = []
        size = 0
        for labels, samples in points_to_series(points):
            batch.append((labels, samples))
            size += len(samples)
            if size >= self.batch_samples:
                sent += self._send(batch, cramjam)
                batch, size = [], 0
        if batch:
            sent += self._send(batch, cramjam)
        return sent

    def _send(self, batch: list, cramjam) -> int:
        payload = bytes(cramjam.snappy.compress_raw(encode_write_request(batch)))
        response = self._session.post(
            self.url, data=payload, timeout=self.timeout,
            headers={"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                     "X-Prometheus-Remote-Write-Version": "0.1.0"},
        )
        if response.status_code >= 300:
            raise requests.HTTPError(
                f"remote write to {self.url} refused: HTTP {response.status_code}: {response.text.strip()[:300]}",
                response=response,
            )
        return sum(len(samples) for _, samples in batch)

    def close(self) -> None:
        self._session.close()
