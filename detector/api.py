"""The detector's HTTP interface (Flask): metrics, health, a small JSON API and its OpenAPI document.

Routes are registered on a :class:`flask.Blueprint`-free app built by :func:`create_app`;
another component (a registry, drift reports) adds its own routes with
``app.register_blueprint(...)`` and its paths to ``OPENAPI["paths"]``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from detector import __version__, feedback
from detector.models import MODELS, make_model
from detector.models.base import NotFittedError
from detector.scoring import score_online
from detector.service import Detector

MAX_SCORE_POINTS = 200_000


class BadRequest(ValueError):
    """A request the API refuses with 400 and this message."""


def create_app(detector: Detector, registry: CollectorRegistry) -> Flask:
    app = Flask("boxwatch-detector")
    app.json.sort_keys = False

    @app.errorhandler(BadRequest)
    def _bad_request(err: BadRequest):
        return jsonify({"status": "error", "error": str(err)}), 400

    @app.errorhandler(404)
    def _not_found(_err):
        return jsonify({"status": "error", "error": f"no route {request.path}"}), 404

    @app.errorhandler(405)
    def _not_allowed(_err):
        return jsonify({"status": "error", "error": f"{request.method} not allowed on {request.path}"}), 405

    @app.get("/")
    def index():
        links = "".join(f'<li><a href="{p}">{p}</a></li>' for p in
                        ("/metrics", "/healthz", "/readyz", "/api/v1/models", "/api/v1/anomalies",
                         "/api/v1/openapi.json"))
        return (f"<html><head><title>boxwatch detector</title></head><body><h1>boxwatch detector</h1>"
                f"<p>version {__version__}</p><ul>{links}</ul></body></html>")

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        if detector.ready:
            return jsonify({"status": "ready"})
        waiting = [m["query"] for m in detector.bundles() if not m["ready"]]
        return jsonify({"status": "not ready", "waiting_for": waiting}), 503

    @app.post("/-/reload")
    def reload():
        ok, problems = detector.reload()
        if ok:
            return jsonify({"status": "success"})
        return jsonify({"status": "error", "error": "configuration not reloaded; the last good one is kept",
                        "problems": problems}), 400

    @app.get("/api/v1/models")
    def models():
        return jsonify({"status": "success", "data": detector.bundles()})

    @app.get("/api/v1/anomalies")
    def anomalies():
        since = parse_time(request.args.get("since"), "since") if request.args.get("since") else 0.0
        return jsonify({"status": "success", "data": detector.anomalies(since)})

    @app.post("/api/v1/score")
    def score():
        return jsonify({"status": "success", "data": score_request(request.get_json(silent=True))})

    @app.get("/api/v1/openapi.json")
    def openapi():
        return jsonify(OPENAPI)

    app.register_blueprint(feedback.blueprint(detector, parse_time, BadRequest))
    return app


def parse_time(text: str, name: str) -> float:
    """Unix seconds from RFC 3339 or a number; :class:`BadRequest` naming ``name`` otherwise."""
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(f"{name}: expected RFC 3339 time or unix seconds, got {text!r}") from None
        if parsed.tzinfo is None:
            raise BadRequest(f"{name}: RFC 3339 time needs a time zone (Z or +hh:mm), got {text!r}") from None
        return parsed.timestamp()
    if not math.isfinite(value):
        raise BadRequest(f"{name}: expected a finite number, got {text!r}")
    return value


# --------------------------------------------------------------------------- POST /api/v1/score


def score_request(body: Any) -> dict[str, Any]:
    """Fit the named model on ``history``, score ``points`` online; see the OpenAPI document."""
    if not isinstance(body, dict):
        raise BadRequest("body: expected a JSON object (Content-Type: application/json)")
    unknown = sorted(set(body) - {"model", "params", "history", "points", "direction", "min_deviation"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    name = body.get("model", "robust")
    if name not in MODELS:
        raise BadRequest(f"model: unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise BadRequest("params: expected an object of model parameters")
    direction = body.get("direction", "both")
    if direction not in ("both", "above", "below"):
        raise BadRequest(f"direction: expected both, above or below, got {direction!r}")
    min_deviation = body.get("min_deviation", 0.0)
    if not isinstance(min_deviation, int | float) or isinstance(min_deviation, bool) or min_deviation < 0:
        raise BadRequest("min_deviation: expected a non-negative number")
    history = _frame(body.get("history"), "history")
    points = _frame(body.get("points"), "points")
    if list(history.columns) != list(points.columns):
        raise BadRequest("points: must have the same features as history")
    try:
        model = make_model(name, params)
    except (TypeError, ValueError) as err:
        raise BadRequest(f"params: {err}") from None
    if model.multivariate == ("value" in history.columns and len(history.columns) == 1):
        shape = "an object of features" if model.multivariate else "a list of numbers"
        raise BadRequest(f"history.values: model {name!r} expects {shape}")
    try:
        model.fit(history)
        result = score_online(model, points, direction, float(min_deviation))
    except (ValueError, NotFittedError) as err:
        raise BadRequest(f"history: cannot fit model {name!r}: {err}") from None
    return {"model": name, "params": model.get_params(), "scores": _rows(points, result)}


def _frame(part: Any, name: str) -> pd.DataFrame:
    if not isinstance(part, dict):
        raise BadRequest(f"{name}: expected an object with 'timestamps' and 'values'")
    stamps, values = part.get("timestamps"), part.get("values")
    if not isinstance(stamps, list) or not stamps:
        raise BadRequest(f"{name}.timestamps: expected a non-empty list of unix seconds")
    if len(stamps) > MAX_SCORE_POINTS:
        raise BadRequest(f"{name}.timestamps: at most {MAX_SCORE_POINTS} points")
    try:
        index = pd.to_datetime(np.asarray(stamps, dtype=float), unit="s", utc=True)
    except (TypeError, ValueError):
        raise BadRequest(f"{name}.timestamps: expected numbers (unix seconds)") from None
    if not index.is_monotonic_increasing or index.has_duplicates:
        raise BadRequest(f"{name}.timestamps: must be strictly increasing")
    columns = {"value": values} if isinstance(values, list) else values
    if not isinstance(columns, dict) or not columns:
        raise BadRequest(f"{name}.values: expected a list of numbers or an object of feature -> list")
    data = {}
    for feature, column in columns.items():
        label = f"{name}.values" + ("" if isinstance(values, list) else f".{feature}")
        if not isinstance(column, list) or len(column) != len(stamps):
            raise BadRequest(f"{label}: expected a list as long as timestamps ({len(stamps)})")
        try:
            data[feature] = np.asarray([math.nan if v is None else v for v in column], dtype=float)
        except (TypeError, ValueError):
            raise BadRequest(f"{label}: expected numbers (null for a gap)") from None
    return pd.DataFrame(data, index=index)


def _rows(points: pd.DataFrame, result: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for position, (ts, row) in enumerate(result.iterrows()):
        entry = {"timestamp": ts.timestamp()}
        if "value" in points:
            entry["value"] = _json(points["value"].iloc[position])
        for column in ("expected", "lower", "upper", "score"):
            entry[column] = _json(row[column])
        tops = row.get("top_features")
        if isinstance(tops, list | tuple):
            entry["top_features"] = list(tops)
        rows.append(entry)
    return rows


def _json(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


# --------------------------------------------------------------------------- OpenAPI


def _json_response(description: str, schema: dict | None = None) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": schema or {"$ref": "#/components/schemas/Status"}}}}


_ERROR = _json_response("Bad request: the message names the problem.", {"$ref": "#/components/schemas/Error"})
_SERIES = {
    "type": "object",
    "required": ["timestamps", "values"],
    "properties": {
        "timestamps": {"type": "array", "items": {"type": "number"}, "description": "Unix seconds, increasing."},
        "values": {"oneOf": [
            {"type": "array", "items": {"type": ["number", "null"]}, "description": "One series."},
            {"type": "object", "additionalProperties": {"type": "array", "items": {"type": ["number", "null"]}},
             "description": "Feature name -> values, for multivariate models."},
        ]},
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "boxwatch detector API", "version": __version__,
             "description": "Anomaly scores of Prometheus series; see docs/detector.md."},
    "paths": {
        "/metrics": {"get": {"summary": "Prometheus metrics: anomaly scores and self metrics.",
                             "responses": {"200": {"description": "Prometheus text exposition.",
                                                   "content": {"text/plain": {}}}}}},
        "/healthz": {"get": {"summary": "Liveness.", "responses": {"200": _json_response("The process is up.")}}},
        "/readyz": {"get": {"summary": "Readiness: every query has fitted or loaded models.",
                            "responses": {"200": _json_response("Ready."),
                                          "503": _json_response("Not ready; lists the queries still fitting.")}}},
        "/-/reload": {"post": {"summary": "Reload the configuration file; the last good one is kept on error.",
                               "responses": {"200": _json_response("Reloaded."), "400": _ERROR}}},
        "/api/v1/models": {"get": {
            "summary": "The models serving each query.",
            "responses": {"200": _json_response("Per query: model, params, version, training window, series.")}}},
        "/api/v1/anomalies": {"get": {
            "summary": "Recent anomalies (bounded buffer), with the features that drove them.",
            "parameters": [{"name": "since", "in": "query", "required": False,
                            "description": "RFC 3339 time or unix seconds.", "schema": {"type": "string"}}],
            "responses": {"200": _json_response("Anomalies, oldest first."), "400": _ERROR}}},
        "/api/v1/score": {"post": {
            "summary": "Fit a named model on a posted history and score posted points online.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["history", "points"], "additionalProperties": False,
                "properties": {
                    "model": {"type": "string", "default": "robust", "enum": sorted(MODELS)},
                    "params": {"type": "object", "description": "Model constructor parameters."},
                    "history": _SERIES, "points": _SERIES,
                    "direction": {"type": "string", "enum": ["both", "above", "below"], "default": "both"},
                    "min_deviation": {"type": "number", "minimum": 0, "default": 0},
                }}}}},
            "responses": {"200": _json_response("One entry per point: value, expected, lower, upper, score "
                                                "(null before the model can judge), top_features."),
                          "400": _ERROR}}},
        **feedback.OPENAPI_PATHS,
        "/api/v1/openapi.json": {"get": {"summary": "This document.",
                                         "responses": {"200": _json_response("OpenAPI 3 document.",
                                                                             {"type": "object"})}}},
    },
    "components": {"schemas": {
        "Status": {"type": "object", "properties": {"status": {"type": "string"}, "data": {}}},
        "Error": {"type": "object", "required": ["status", "error"],
                  "properties": {"status": {"type": "string", "enum": ["error"]}, "error": {"type": "string"},
                                 "problems": {"type": "array", "items": {"type": "string"}}}},
    }},
}
