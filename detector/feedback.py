"""Feedback: known events and false positives as data (docs/feedback.md).

A *mark* is label matchers, a time range and a kind:

``expected``
    a known event (maintenance, a stress test). Points of matching series inside it are left
    out of training (set to NaN before the fit, so no model learns the stress test as normal)
    and out of the anomaly counts and records.
``false_positive``
    the model was wrong there. Anomalies of matching series inside it are counted per query
    and model (``boxwatch_feedback_false_positives_total``): a model whose marks pile up should
    be looked at.

Marks come from three places: ``maintenance:`` in the configuration, ``POST /api/v1/feedback``
(persisted in ``<state_dir>/feedback/marks.json``, written atomically), and -- when
``alertmanager.url`` is set -- Alertmanager's silences (active and expired ones, read from
``GET /api/v2/silences`` every ``alertmanager.poll_interval``), which count as ``expected``.
A silence's ``alertname`` and ``severity`` matchers are ignored: they describe alerts, not series.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests

from boxwatch.log import kv
from boxwatch.loop import Background, Loop
from detector.config import DetectorConfig, FeedbackWindow
from detector.matchers import Matcher, matches_all, parse_matcher
from detector.reader import SeriesKey
from detector.store import write_state_file

log = logging.getLogger("boxwatch.detector.feedback")

KINDS = ("expected", "false_positive")
ALERT_ONLY_LABELS = ("alertname", "severity")
MAX_MARKS = 10_000


@dataclass(frozen=True)
class Mark:
    matchers: tuple[str, ...]
    start: float
    end: float
    kind: str
    source: str  # config, api, alertmanager
    id: str = ""
    comment: str = ""
    created: float = 0.0
    parsed: tuple[Matcher, ...] = field(default=(), compare=False, repr=False)

    def covers(self, labels: Mapping[str, str], timestamp: float) -> bool:
        return self.start <= timestamp <= self.end and matches_all(self.parsed, labels)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("parsed")
        data["matchers"] = list(self.matchers)
        return data


def make_mark(matchers, start: float, end: float, kind: str, source: str, **extra: Any) -> Mark:
    """A validated mark; ``ValueError`` naming the problem otherwise."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(matchers, list | tuple):
        raise ValueError('matchers: expected a list of matchers like ["query=\\"gpu_power\\"", "gpu=\\"0\\""]')
    try:
        parsed = tuple(parse_matcher(m) for m in matchers)
    except ValueError as err:
        raise ValueError(f"matchers: {err}") from None
    if not end > start:
        raise ValueError("end: must be after start")
    return Mark(tuple(str(m) for m in parsed), float(start), float(end), kind, source, parsed=parsed, **extra)


def silence_mark(silence: Mapping[str, Any]) -> Mark | None:
    """An ``expected`` mark from one silence of Alertmanager's API v2 (``None`` for a pending one)."""
    state = silence.get("status", {}).get("state")
    if state not in ("active", "expired"):
        return None
    matchers = []
    for item in silence.get("matchers", []):
        if item["name"] in ALERT_ONLY_LABELS:
            continue
        op = ("=" if item.get("isEqual", True) else "!=") if not item.get("isRegex") else (
            "=~" if item.get("isEqual", True) else "!~")
        matchers.append(str(Matcher(item["name"], op, item["value"])))
    start, end = (pd.Timestamp(silence[k]).timestamp() for k in ("startsAt", "endsAt"))
    return make_mark(matchers, start, end, "expected", "alertmanager", id=str(silence.get("id", "")),
                     comment=f"silence by {silence.get('createdBy', '?')}: {silence.get('comment', '')}"[:500])


class Feedback(Background):
    """Every mark in force, and what the service asks of them (masks, expected points, counts).

    Parameters
    ----------
    config : callable
        Returns the current :class:`DetectorConfig` (so a reload applies).
    state_dir : path
        Where marks posted through the API are kept.
    """

    def __init__(self, config: Callable[[], DetectorConfig], state_dir: str | Path,
                 clock: Callable[[], float] = time.time, session: requests.Session | None = None):
        self._config = config
        self.path = Path(state_dir) / "feedback" / "marks.json"
        self._clock = clock
        self._session = session or requests.Session()
        self._lock = threading.Lock()
        self._api_marks: list[Mark] = self._load()
        self._silences: list[Mark] = []
        self.silences_read_at = 0.0
        self.alertmanager_errors = 0
        self.false_positives: dict[tuple[str, str], int] = {}
        self.excluded: dict[str, dict[str, Any]] = {}
        self._parsed_config: tuple[Any, list[Mark]] = (None, [])
        self._loop = Loop("detector-feedback", self._poll, error_message="reading silences failed",
                          error_delay=60.0)

    # ------------------------------------------------------------------ marks

    def _load(self) -> list[Mark]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as err:
            log.error("cannot read feedback marks; starting without them",
                      extra=kv(path=str(self.path), error=err))
            return []
        marks = []
        for item in raw.get("marks", []):
            try:
                marks.append(make_mark(item["matchers"], item["start"], item["end"], item["kind"], "api",
                                       id=item.get("id", ""), comment=item.get("comment", ""),
                                       created=item.get("created", 0.0)))
            except (KeyError, TypeError, ValueError) as err:
                log.warning("skipping a bad feedback mark", extra=kv(path=str(self.path), error=err))
        return marks

    def _config_marks(self) -> list[Mark]:
        windows = self._config().maintenance
        if self._parsed_config[0] is not windows:  # parsed once per configuration (a reload replaces it)
            self._parsed_config = (windows, [_window_mark(w, i) for i, w in enumerate(windows)])
        return self._parsed_config[1]

    def marks(self) -> list[Mark]:
        with self._lock:
            return [*self._config_marks(), *self._api_marks, *self._silences]

    def add(self, mark: Mark, anomalies: list[dict[str, Any]] = ()) -> Mark:
        """Keep a mark posted through the API (persisted atomically); count the recorded anomalies it marks."""
        mark = Mark(mark.matchers, mark.start, mark.end, mark.kind, "api", mark.id or uuid.uuid4().hex[:12],
                    mark.comment, mark.created or self._clock(), mark.parsed)
        with self._lock:
            if len(self._api_marks) >= MAX_MARKS:
                raise ValueError(f"at most {MAX_MARKS} marks are kept; delete old ones from {self.path}")
            marks = [*self._api_marks, mark]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_state_file(self.path, json.dumps({"marks": [m.as_dict() for m in marks]}, indent=1).encode())
            self._api_marks = marks
        if mark.kind == "false_positive":
            for record in anomalies:
                if mark.covers({**record["labels"], "query": record["query"], "model": record["model"]},
                               record["timestamp"]):
                    self._count(record["query"], record["model"])
        return mark

    # ------------------------------------------------------------------ Alertmanager silences

    def close(self) -> None:
        self._session.close()

    def _poll(self) -> float:
        settings = self._config().alertmanager
        if settings.url:
            self.read_silences()
        return settings.poll_interval

    def read_silences(self) -> bool:
        """Read Alertmanager's silences now; on failure keep the last ones read and count the error."""
        settings = self._config().alertmanager
        if not settings.url:
            return False
        try:
            response = self._session.get(f"{settings.url}/api/v2/silences", timeout=settings.timeout)
            response.raise_for_status()
            marks = [m for s in response.json() if (m := _safe_silence(s)) is not None]
        except (requests.RequestException, ValueError) as err:
            with self._lock:
                self.alertmanager_errors += 1
            log.warning("cannot read Alertmanager silences; keeping the last ones read",
                        extra=kv(url=settings.url, error=err))
            return False
        with self._lock:
            self._silences = marks
            self.silences_read_at = self._clock()
        return True

    # ------------------------------------------------------------------ what the service asks

    def is_expected(self, labels: Mapping[str, str], timestamp: float) -> bool:
        return any(m.kind == "expected" and m.covers(labels, timestamp) for m in self.marks())

    def observe_anomaly(self, query: str, model: str, labels: Mapping[str, str], timestamp: float) -> None:
        full = {**labels, "query": query, "model": model}
        if any(m.kind == "false_positive" and m.covers(full, timestamp) for m in self.marks()):
            self._count(query, model)

    def _count(self, query: str, model: str) -> None:
        with self._lock:
            self.false_positives[(query, model)] = self.false_positives.get((query, model), 0) + 1

    def mask_training(self, alias: str, model: str, units: dict[SeriesKey, pd.DataFrame]) -> dict[SeriesKey, pd.DataFrame]:
        """``units`` with the points inside ``expected`` marks set to NaN (copies; the rest untouched)."""
        expected = [m for m in self.marks() if m.kind == "expected"]
        masked_units, points, windows = {}, 0, set()
        for key, frame in units.items():
            labels = {**dict(key), "query": alias, "model": model}
            stamps = frame.index.asi8 / 1e9 if len(frame) else np.array([])
            hide = np.zeros(len(frame), dtype=bool)
            for mark in expected:
                if mark.end < (stamps[0] if len(stamps) else 0) or not matches_all(mark.parsed, labels):
                    continue
                inside = (stamps >= mark.start) & (stamps <= mark.end)
                if inside.any():
                    hide |= inside
                    windows.add((mark.source, mark.id, mark.start, mark.end))
            if hide.any():
                frame = frame.copy()
                frame.iloc[hide] = np.nan
                points += int(hide.sum())
            masked_units[key] = frame
        with self._lock:
            self.excluded[alias] = {"points": points, "windows": [
                {"source": s, "id": i, "start": a, "end": b} for s, i, a, b in sorted(windows, key=lambda w: w[2])]}
        if points:
            log.info("left known events out of training", extra=kv(query=alias, points=points,
                                                                         windows=len(windows)))
        return masked_units

    def summary(self) -> dict[str, Any]:
        with self._lock:
            counts = [{"query": q, "model": m, "false_positives": n} for (q, m), n in sorted(self.false_positives.items())]
            excluded = dict(self.excluded)
            read_at = self.silences_read_at
        return {"marks": [m.as_dict() for m in self.marks()], "false_positives": counts,
                "excluded_from_training": excluded, "silences_read_at": read_at or None}


def _window_mark(window: FeedbackWindow, index: int) -> Mark:
    start, end = (pd.Timestamp(t).timestamp() for t in (window.start, window.end))
    return make_mark(list(window.matchers), start, end, window.kind, "config", id=f"maintenance.{index}",
                     comment=window.comment)


def _safe_silence(silence: Any) -> Mark | None:
    try:
        return silence_mark(silence)
    except (KeyError, TypeError, ValueError) as err:
        log.warning("skipping a silence boxwatch cannot read", extra=kv(error=err))
        return None


# --------------------------------------------------------------------------- metrics and HTTP


def families(feedback: Feedback):
    """``boxwatch_feedback_false_positives_total{query, model}`` and the Alertmanager read errors."""
    from prometheus_client.core import CounterMetricFamily

    with feedback._lock:
        counts = dict(feedback.false_positives)
        errors = feedback.alertmanager_errors
    marked = CounterMetricFamily("boxwatch_feedback_false_positives",
                                 "Anomalies inside a false_positive mark, per query and model.",
                                 labels=["query", "model"])
    for (query, model), value in sorted(counts.items()):
        marked.add_metric([query, model], value)
    yield marked
    yield CounterMetricFamily("boxwatch_feedback_alertmanager_errors",
                              "Failed reads of Alertmanager's silences.", value=errors)


def blueprint(detector, parse_time: Callable[[str, str], float], bad_request: type[Exception]):
    """``GET``/``POST /api/v1/feedback``."""
    from flask import Blueprint, jsonify, request

    routes = Blueprint("feedback", __name__)

    @routes.get("/api/v1/feedback")
    def list_marks():
        return jsonify({"status": "success", "data": detector.feedback.summary()})

    @routes.post("/api/v1/feedback")
    def post_mark():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise bad_request("body: expected a JSON object (Content-Type: application/json)")
        unknown = sorted(set(body) - {"matchers", "start", "end", "kind", "comment"})
        if unknown:
            raise bad_request(f"unknown field(s): {', '.join(unknown)}")
        for name in ("matchers", "start", "end", "kind"):
            if name not in body:
                raise bad_request(f"{name}: required")
        start, end = (parse_time(str(body[k]), k) for k in ("start", "end"))
        comment = body.get("comment", "")
        if not isinstance(comment, str) or len(comment) > 500:
            raise bad_request("comment: expected a string of at most 500 characters")
        try:
            mark = make_mark(body["matchers"], start, end, body["kind"], "api", comment=comment)
            mark = detector.feedback.add(mark, detector.anomalies())
        except ValueError as err:
            raise bad_request(str(err)) from None
        return jsonify({"status": "success", "data": mark.as_dict()}), 201

    return routes


OPENAPI_PATHS = {
    "/api/v1/feedback": {
        "get": {"summary": "Feedback marks in force (config, API, Alertmanager silences), false-positive counts, "
                           "and what the last fit of each query left out.",
                "responses": {"200": {"description": "Marks and counts.",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}}},
        "post": {"summary": "Mark series over a time range as expected (a known event) or false_positive.",
                 "requestBody": {"required": True, "content": {"application/json": {"schema": {
                     "type": "object", "required": ["matchers", "start", "end", "kind"],
                     "additionalProperties": False,
                     "properties": {
                         "matchers": {"type": "array", "items": {"type": "string"},
                                      "description": 'Label matchers, e.g. ["query=\\"gpu_power\\"", "gpu=\\"0\\""].'},
                         "start": {"type": "string", "description": "RFC 3339 time or unix seconds."},
                         "end": {"type": "string", "description": "RFC 3339 time or unix seconds."},
                         "kind": {"type": "string", "enum": list(KINDS)},
                         "comment": {"type": "string", "maxLength": 500}}}}}},
                 "responses": {"201": {"description": "The mark, persisted.",
                                       "content": {"application/json": {"schema": {"type": "object"}}}},
                               "400": {"description": "Bad request: the message names the problem.",
                                       "content": {"application/json": {"schema": {
                                           "$ref": "#/components/schemas/Error"}}}}}},
    },
}


# --------------------------------------------------------------------------- registry gate input


def false_positive_counts(config: DetectorConfig, alias: str, model_name: str, units: Mapping[SeriesKey, pd.DataFrame],
                          split: float, candidate: Mapping[SeriesKey, Any],
                          champion: Mapping[SeriesKey, Any] | None) -> tuple[int, int] | None:
    """``(candidate, champion)`` anomalies on the held-out window that fall inside ``false_positive``
    marks (from the configuration and the API; read from the state dir), or ``None`` when no such mark
    overlaps it -- then the gate decides on its metric alone."""
    import copy

    from detector.scoring import score_online

    if champion is None:
        return None
    marks = [m for m in Feedback(lambda: config, config.state_dir).marks() if m.kind == "false_positive"
             and m.end >= split]
    query = config.queries[alias]
    held = {key: frame.loc[frame.index >= pd.Timestamp(split, unit="s", tz="UTC")] for key, frame in units.items()}
    relevant = {key: [m for m in marks if matches_all(m.parsed, {**dict(key), "query": alias, "model": model_name})]
                for key in held}
    if not any(relevant.values()):
        return None

    def count(models: Mapping[SeriesKey, Any]) -> int:
        total = 0
        for key, frame in held.items():
            model = models.get(key)
            if model is None or frame.empty or not relevant[key]:
                continue
            scores = score_online(copy.deepcopy(model), frame, query.direction, query.min_deviation)["score"]
            stamps = frame.index.asi8 / 1e9
            flagged = scores.to_numpy(dtype=float) > config.anomalies.threshold
            total += sum(1 for ts in stamps[flagged] if any(m.start <= ts <= m.end for m in relevant[key]))
        return total

    return count(candidate), count(champion)
