"""The detector's HTTP interface (Flask): metrics, health, a small JSON API and its OpenAPI document.

Routes are registered on the app built by :func:`create_app`, which also holds the app's OpenAPI
document; ``serve`` attaches another component's routes (a registry, drift reports) with
:func:`add_routes`, which registers its blueprint and documents its paths on that app.

What every request goes through, whichever blueprint serves it:

- the Host header must be an allowed host (``api.allowed_hosts``), against DNS rebinding: a web
  page cannot reach a detector on localhost through a name that resolves to 127.0.0.1;
- a body over ``api.max_body_bytes`` is refused with 413 before it is parsed;
- a state-changing request (any method but GET/HEAD/OPTIONS, except the read-only
  ``POST /api/v1/score``) is refused with 403 when ``api.mutations`` is off;
- every failure is a JSON error (``{"status": "error", "error": ...}``), never an HTML page;
- JSON out is strict: a non-finite number is written as ``null``, never as a bare ``NaN`` or
  ``Infinity`` that JSON parsers reject.

``POST /api/v1/score`` fits a model per request, so it is bounded: its body is a pydantic model
with limits on points, features and every model parameter (the same declarations
``validate-config`` checks), and at most ``api.max_concurrent_scores`` run at once; more get
429 at once rather than queueing in front of ``/metrics``.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import logging
import math
import threading
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from flask import Blueprint, Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema
from werkzeug.exceptions import HTTPException

from boxwatch import __version__, times
from boxwatch.child import run_in_child
from boxwatch.log import kv
from detector import feedback
from detector.models import MODELS, make_model
from detector.models.base import Model, NotFittedError
from detector.models.params import check_params, params_schema
from detector.scoring import fit_models, score_online
from detector.service import Detector

log = logging.getLogger("boxwatch.detector.api")

MAX_HISTORY_POINTS = 10_000  # what a model is fitted on
MAX_SCORE_POINTS = 100  # scored one by one, online (milliseconds each)
MAX_FEATURES = 8
# Tighter than what a configured query may use: one request must cost seconds of CPU, not minutes.
API_PARAM_LIMITS: dict[str, dict[str, int]] = {
    "robust": {"window": MAX_HISTORY_POINTS},
    "seasonal": {"max_points_per_day": 1440, "phase_bins": 288},
    "iforest": {"n_estimators": 100, "max_samples": 1024, "max_top_features": MAX_FEATURES},
}
MAX_GRID_STEPS = 100_000  # span / median spacing: a sparse history must not become a huge regular grid
MAX_TIMESTAMP = 4_102_444_800.0  # 2100-01-01
MAX_ABS_VALUE = 1e100
READ_ONLY_POSTS = frozenset({"/api/v1/score"})
LOCAL_HOSTS = ("localhost", "*.localhost", "127.0.0.1", "::1")


class BadRequest(ValueError):
    """A request the API refuses with 400 and this message."""


# --------------------------------------------------------------------------- request bodies

_Strict = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
Timestamp = Annotated[float, Field(ge=0, le=MAX_TIMESTAMP)]
Value = Annotated[float, Field(ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)] | None
FeatureName = Annotated[str, Field(min_length=1, max_length=200)]


class Series(BaseModel):
    """Points of one series, or of several features sharing the timestamps."""

    model_config = _Strict
    timestamps: list[Timestamp] = Field(min_length=1, max_length=MAX_HISTORY_POINTS,
                                        description="Unix seconds, strictly increasing.")
    values: list[Value] | Annotated[dict[FeatureName, list[Value]], Field(min_length=1, max_length=MAX_FEATURES)] \
        = Field(description="One series (a list; null for a gap), or feature name -> list for multivariate "
                            "models. As long as timestamps.")


class ScoreRequest(BaseModel):
    """Fit ``model`` with ``params`` on ``history``, then score ``points`` online (each point is scored,
    then learned)."""

    model_config = _Strict
    model: Literal[tuple(sorted(MODELS))] = Field("robust", description="Registered model name.")  # type: ignore[valid-type]
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="Model constructor parameters; see the model's schema.")
    history: Series
    points: Series = Field(description=f"At most {MAX_SCORE_POINTS} points, the same features as history.")
    direction: Literal["both", "above", "below"] = Field("both", description="Which deviations count.")
    min_deviation: float = Field(0.0, ge=0, le=MAX_ABS_VALUE,
                                 description="Absolute deviation below which the score is 0.")


class Error(BaseModel):
    """Every failure: 4xx and 5xx answers carry this body."""

    status: Literal["error"]
    error: str = Field(description="What was wrong, naming the field or parameter.")
    problems: list[str] | None = Field(None, description="Every problem, when there are several.")


class Status(BaseModel):
    status: str
    data: Any = None


# --------------------------------------------------------------------------- the app


class StrictJSONProvider(DefaultJSONProvider):
    """Flask JSON with non-finite floats written as null (``json.dumps`` would write bare NaN/Infinity)."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("default", self.default)
        kwargs.setdefault("ensure_ascii", self.ensure_ascii)
        kwargs.setdefault("sort_keys", self.sort_keys)
        return json.dumps(finite(obj), allow_nan=False, **kwargs)


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (nested in dicts, lists, tuples) replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def error(status: int, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify({"status": "error", "error": message, **extra}), status


def create_app(detector: Detector, registry: CollectorRegistry) -> Flask:
    app = Flask("boxwatch-detector")
    app.json = StrictJSONProvider(app)
    app.json.sort_keys = False
    api = detector.config.api
    app.config["MAX_CONTENT_LENGTH"] = api.max_body_bytes
    scoring = threading.BoundedSemaphore(api.max_concurrent_scores)

    @app.before_request
    def _guard():
        settings = detector.config.api
        host = request.host
        if not host_allowed(host, allowed_hosts(settings.allowed_hosts, detector.config.server.listen_address)):
            return error(403, f"host {host!r} is not an allowed host of this detector (api.allowed_hosts)")
        if request.content_length is not None and request.content_length > settings.max_body_bytes:
            return error(413, f"request body of {request.content_length} bytes is over the limit of "
                              f"{settings.max_body_bytes} (api.max_body_bytes)")
        mutating = request.method not in ("GET", "HEAD", "OPTIONS") and request.path not in READ_ONLY_POSTS
        if mutating and not settings.mutations:
            return error(403, f"{request.method} {request.path} changes the detector's state and is disabled "
                              "(api.mutations: false)")
        return None

    @app.errorhandler(BadRequest)
    def _bad_request(err: BadRequest):
        return error(400, str(err))

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        messages = {404: f"no route {request.path}", 405: f"{request.method} not allowed on {request.path}",
                    413: f"request body over the limit of {detector.config.api.max_body_bytes} bytes "
                         "(api.max_body_bytes)"}
        response = error(err.code or 500, messages.get(err.code, err.description or err.name))
        if err.code == 405 and err.valid_methods:
            response[0].headers["Allow"] = ", ".join(err.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        log.exception("request failed", extra=kv(method=request.method, path=request.path))
        return error(500, f"internal error: {type(err).__name__}")

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
        return error(400, "configuration not reloaded; the last good one is kept", problems=problems)

    @app.get("/api/v1/models")
    def models():
        return jsonify({"status": "success", "data": detector.bundles()})

    @app.get("/api/v1/anomalies")
    def anomalies():
        since = parse_time(request.args.get("since"), "since") if request.args.get("since") else 0.0
        return jsonify({"status": "success", "data": detector.anomalies(since)})

    @app.post("/api/v1/score")
    def score():
        body = request.get_json(silent=True)  # a body over the limit raises 413 here
        if not scoring.acquire(blocking=False):
            response = error(429, f"too many scoring requests at once (api.max_concurrent_scores: "
                                  f"{api.max_concurrent_scores}); retry later")
            response[0].headers["Retry-After"] = "1"
            return response
        try:
            return jsonify({"status": "success", "data": score_request(body, detector.config.fitting.isolate)})
        finally:
            scoring.release()

    app.extensions["openapi"] = build_openapi()

    @app.get("/api/v1/openapi.json")
    def openapi():
        return jsonify(app.extensions["openapi"])

    app.register_blueprint(feedback.blueprint(detector, parse_time, BadRequest))
    return app


def add_routes(app: Flask, blueprint: Blueprint, paths: dict[str, Any]) -> None:
    """Serve ``blueprint``'s routes on ``app`` and add their ``paths`` to the app's OpenAPI document."""
    app.register_blueprint(blueprint)
    app.extensions["openapi"]["paths"].update(paths)


# --------------------------------------------------------------------------- Host header


def allowed_hosts(configured: list[str] | None, listen_address: str) -> tuple[str, ...]:
    """Host patterns accepted: ``configured``, or the default for ``listen_address`` (module docstring)."""
    if configured is not None:
        return tuple(configured)
    host = listen_address.rpartition(":")[0].strip("[]").lower()
    if host in ("", "0.0.0.0", "::", "*"):
        return ("*",)  # reachable on every address anyway: compose service names, pod IPs, node names
    return (host, *LOCAL_HOSTS)


def host_allowed(header: str, patterns: tuple[str, ...]) -> bool:
    """Whether the Host header ``header`` (port and IPv6 brackets stripped) matches a pattern."""
    host = header.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if not host:
        return "*" in patterns
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        host = host.rstrip(".")
    return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in patterns)


def parse_time(text: str, name: str) -> float:
    """Unix seconds from RFC 3339 or a number; :class:`BadRequest` naming ``name`` otherwise."""
    try:
        return times.parse_time(text)
    except ValueError as err:
        raise BadRequest(f"{name}: {err}") from None


# --------------------------------------------------------------------------- POST /api/v1/score


def score_request(body: Any, isolate: bool = False) -> dict[str, Any]:
    """Fit the named model on ``history``, score ``points`` online; see the OpenAPI document. With
    ``isolate`` a model whose fit imports heavy packages is fitted in a child process, as the
    service's fits are (``fitting.isolate``)."""
    if not isinstance(body, dict):
        raise BadRequest("body: expected a JSON object (Content-Type: application/json)")
    try:
        req = ScoreRequest.model_validate(body)
    except ValidationError as err:
        raise BadRequest(_request_problem(err, body)) from None
    problems = check_params(req.model, req.params) or [
        (key, f"at most {limit} in an ad-hoc request (got {req.params[key]!r})")
        for key, limit in API_PARAM_LIMITS.get(req.model, {}).items()
        if isinstance(req.params.get(key), int) and req.params[key] > limit]
    if problems:
        raise BadRequest("; ".join(f"params{'.' + key if key else ''}: {reason}" for key, reason in problems))
    if len(req.points.timestamps) > MAX_SCORE_POINTS:
        raise BadRequest(f"points.timestamps: at most {MAX_SCORE_POINTS} points")
    history = _frame(req.history, "history")
    points = _frame(req.points, "points")
    if list(history.columns) != list(points.columns):
        raise BadRequest("points: must have the same features as history")
    model = make_model(req.model, req.params)
    if model.multivariate == ("value" in history.columns and len(history.columns) == 1):
        shape = "an object of features" if model.multivariate else "a list of numbers"
        raise BadRequest(f"history.values: model {req.model!r} expects {shape}")
    try:
        with np.errstate(all="ignore"):
            model = _fitted(model, history, isolate)
            result = score_online(model, points, req.direction, req.min_deviation)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError, NotFittedError) as err:
        raise BadRequest(f"history: cannot fit model {req.model!r}: {err}") from None
    return {"model": req.model, "params": model.get_params(), "scores": _rows(points, result)}


def _fitted(model: Model, history: pd.DataFrame, isolate: bool) -> Model:
    """``model`` fitted on ``history``: in a child process when ``isolate`` and its fit imports heavy
    packages (``ValueError`` when the fit fails there, as it would here)."""
    if not (isolate and model.fit_imports):
        return model.fit(history)
    models, failures = run_in_child(fit_models, model.name, model.get_params(), {(): history},
                                    name="ad-hoc fit process").value
    if failures:
        raise ValueError(failures[0][1])
    if () not in models:
        raise ValueError("no value to fit on")
    return models[()]


def _request_problem(err: ValidationError, body: dict) -> str:
    """One message for the first problem of a request body, naming the field as ``a.b``."""
    unknown = [str(e["loc"][0]) for e in err.errors() if e["type"] == "extra_forbidden" and len(e["loc"]) == 1]
    if unknown:
        return f"unknown field(s): {', '.join(sorted(unknown))}"
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    part = loc[0]
    if part in ("history", "points"):
        given = body.get(part)
        if len(loc) == 1 or not isinstance(given, dict):
            return f"{part}: expected an object with 'timestamps' and 'values'"
        if loc[1] == "timestamps":
            if first["type"] in ("too_short", "list_type"):
                return f"{part}.timestamps: expected a non-empty list of unix seconds"
            if first["type"] == "too_long":
                return f"{part}.timestamps: at most {MAX_HISTORY_POINTS} points"
            reason = first["msg"] if first["type"].endswith(("_than", "_equal")) else "expected numbers (unix seconds)"
            return f"{part}.timestamps: {reason}"
        if loc[1] == "values":
            values = given.get("values")
            if isinstance(values, list):
                return f"{part}.values: expected numbers (null for a gap), each within ±{MAX_ABS_VALUE:g}"
            if isinstance(values, dict) and values and len(values) <= MAX_FEATURES:
                bad = next((k for k, v in values.items() if not isinstance(v, list)
                            or not all(x is None or type(x) in (int, float) and abs(x) <= MAX_ABS_VALUE
                                       for x in v)), None)
                if bad is not None:
                    return f"{part}.values.{bad}: expected a list of numbers (null for a gap)"
            return (f"{part}.values: expected a list of numbers or an object of 1 to {MAX_FEATURES} features "
                    "-> list of numbers")
    if part == "model":
        return f"model: unknown model {body.get('model')!r}; known models: {', '.join(sorted(MODELS))}"
    if part == "params":
        return "params: expected an object of model parameters"
    return f"{'.'.join(loc)}: {first['msg']}"


def _frame(series: Series, name: str) -> pd.DataFrame:
    stamps = np.asarray(series.timestamps, dtype=float)
    if len(stamps) > 1 and not (np.diff(stamps) > 0).all():
        raise BadRequest(f"{name}.timestamps: must be strictly increasing")
    if len(stamps) > 2 and (stamps[-1] - stamps[0]) / np.median(np.diff(stamps)) > MAX_GRID_STEPS:
        raise BadRequest(f"{name}.timestamps: too sparse: the span is more than {MAX_GRID_STEPS} times the "
                         "median spacing of the points")
    index = pd.to_datetime(stamps, unit="s", utc=True)
    columns = {"value": series.values} if isinstance(series.values, list) else series.values
    data = {}
    for feature, column in columns.items():
        label = f"{name}.values" + ("" if isinstance(series.values, list) else f".{feature}")
        if len(column) != len(stamps):
            raise BadRequest(f"{label}: expected a list as long as timestamps ({len(stamps)})")
        data[feature] = np.asarray([math.nan if v is None else v for v in column], dtype=float)
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
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- OpenAPI

REF = "#/components/schemas/{model}"


def _schemas() -> dict[str, Any]:
    """Component schemas: the request and error models, and each model's parameters."""
    _, top = models_json_schema([(ScoreRequest, "validation"), (Error, "serialization"),
                                 (Status, "serialization")], ref_template=REF)
    schemas = dict(top.get("$defs", {}))
    for name in sorted(MODELS):
        schemas[f"{name.capitalize()}Params"] = {**params_schema(name),
                                                 "description": f"Parameters of the {name!r} model."}
    request_schema = schemas["ScoreRequest"]
    request_schema["properties"]["params"] = {
        "description": "Model constructor parameters, per model (the one named by `model`).",
        "anyOf": [{"$ref": REF.format(model=f"{name.capitalize()}Params")} for name in sorted(MODELS)],
    }
    return schemas


def _json_response(description: str, schema: dict | None = None) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": schema or {"$ref": REF.format(model="Status")}}}}


def _errors(*codes: int) -> dict[str, dict]:
    what = {400: "Bad request: the message names the problem.", 403: "Host not allowed, or mutations disabled.",
            413: "Body over api.max_body_bytes.", 429: "Too many scoring requests at once; retry later.",
            500: "Internal error."}
    return {str(code): _json_response(what[code], {"$ref": REF.format(model="Error")}) for code in codes}


def build_openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the JSON API; request bodies from the pydantic models that check them."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "boxwatch detector API", "version": __version__,
                 "description": "Anomaly scores of Prometheus series; see docs/detector.md. Non-finite numbers "
                                "are written as null."},
        "paths": {
            "/metrics": {"get": {"summary": "Prometheus metrics: anomaly scores and self metrics.",
                                 "responses": {"200": {"description": "Prometheus text exposition.",
                                                       "content": {"text/plain": {}}}}}},
            "/healthz": {"get": {"summary": "Liveness.", "responses": {"200": _json_response("The process is up.")}}},
            "/readyz": {"get": {"summary": "Readiness: every query has fitted or loaded models.",
                                "responses": {"200": _json_response("Ready."),
                                              "503": _json_response("Not ready; lists the queries still fitting.")}}},
            "/-/reload": {"post": {"summary": "Reload the configuration file; the last good one is kept on error.",
                                   "responses": {"200": _json_response("Reloaded."), **_errors(400, 403)}}},
            "/api/v1/models": {"get": {
                "summary": "The models serving each query.",
                "responses": {"200": _json_response("Per query: model, params, version, training window, series.")}}},
            "/api/v1/anomalies": {"get": {
                "summary": "Recent anomalies (bounded buffer), with the features that drove them.",
                "parameters": [{"name": "since", "in": "query", "required": False,
                                "description": "RFC 3339 time or unix seconds.", "schema": {"type": "string"}}],
                "responses": {"200": _json_response("Anomalies, oldest first."), **_errors(400)}}},
            "/api/v1/score": {"post": {
                "summary": "Fit a named model on a posted history and score posted points online.",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": REF.format(model="ScoreRequest")}}}},
                "responses": {"200": _json_response("One entry per point: value, expected, lower, upper, score "
                                                    "(null before the model can judge), top_features."),
                              **_errors(400, 413, 429)}}},
            **feedback.OPENAPI_PATHS,
            "/api/v1/openapi.json": {"get": {"summary": "This document.",
                                             "responses": {"200": _json_response("OpenAPI 3 document.",
                                                                                 {"type": "object"})}}},
        },
        "components": {"schemas": _schemas()},
    }

