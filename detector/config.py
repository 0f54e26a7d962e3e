"""The detector's configuration: one YAML file, parsed once into typed objects.

Precedence, lowest first: the YAML file, ``BOXWATCH_*`` environment variables, command-line
flags. An override names a key path: ``BOXWATCH_READER__URL`` (double underscore between
levels) or the flag ``--set reader.url=...``; values are read as YAML scalars.

Every problem is reported at once, each with the file (or the variable / flag that set the
key), the key path and the reason: :class:`ConfigError` carries the list.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from boxwatch.times import parse_bounded_duration, parse_duration, parse_rfc3339
from boxwatch.web import parse_listen_address
from detector.httpclient import HttpClientConfig

SCHEMA_VERSION = 1
ENV_PREFIX = "BOXWATCH_"
DEFAULT_LISTEN_ADDRESS = "127.0.0.1:9875"

_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_:-]*$")
RESERVED_OUTPUT_LABELS = ("query", "model")


MAX_STEP = 86400.0  # one point a day is the coarsest grid a range query is useful on
MAX_FIT_WINDOW = 366 * 86400.0
MAX_POINTS_PER_SERIES = 1_000_000  # fit_window / step: what one series' history may hold in memory

# Duration fields: a Prometheus duration ("90s", "1h30m", "14d") or a number of seconds, positive.
Duration = Annotated[float, BeforeValidator(parse_duration)]
StepDuration = Annotated[float, BeforeValidator(lambda value: parse_bounded_duration(value, 0.001, MAX_STEP))]
WindowDuration = Annotated[float, BeforeValidator(lambda value: parse_bounded_duration(value, 0.001, MAX_FIT_WINDOW))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReaderConfig(HttpClientConfig):
    """Where data comes from: a Prometheus-compatible HTTP API (headers, TLS and credentials as in
    Prometheus' client configuration: ``tls_config``, ``basic_auth``, ``bearer_token_file``)."""

    url: str = Field("http://127.0.0.1:9090", description="Base URL of the Prometheus HTTP API.")
    timeout: Duration = Field(30.0, description="Timeout of one HTTP request (duration).")
    retries: int = Field(3, ge=0, le=10, description="Retries of a failed request (connection error, 5xx, 429).")
    backoff: Duration = Field(0.5, description="First retry delay (duration); doubles on each retry.")
    max_points_per_request: int = Field(
        11000, ge=2, le=11000, description="Points per series per request; longer ranges are chunked."
    )
    catch_up_max: Duration = Field(
        3600.0, description="After an outage, score at most this much of the missed range (duration)."
    )
    compression: bool = Field(
        False, description="Ask Prometheus to gzip its answers (for a Prometheus across a slow link; beside it, "
                           "compressing costs both ends more time than the bytes save)."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"expected an http:// or https:// URL; got {value!r}")
        return value.rstrip("/")


class ModelPreset(_Strict):
    """A named model configuration that queries can refer to (``queries.X.model``)."""

    name: str = Field(description="Registered model name: robust, seasonal, iforest, peer.")
    params: dict[str, Any] = Field(default_factory=dict, description="Model constructor parameters.")


class QueryConfig(_Strict):
    """One PromQL query to watch; each series it returns is modelled on its own."""

    expr: str = Field(min_length=1, description="PromQL expression (prefer rate() over raw counters).")
    step: StepDuration = Field(60.0, description="Resolution of the range queries (duration).")
    fit_window: WindowDuration = Field(14 * 86400.0, description="History a model is fitted on (duration).")
    fit_every: WindowDuration = Field(86400.0, description="Refit interval (duration).")
    infer_every: WindowDuration | None = Field(None, description="Scoring interval (duration); default: step.")
    model: str = Field("robust", description="A key of `models:` or a registered model name.")
    params: dict[str, Any] = Field(default_factory=dict, description="Model parameters (override a preset's).")
    direction: Literal["both", "above", "below"] = Field(
        "both", description="Which deviations count: above, below or both."
    )
    min_deviation: float = Field(0.0, ge=0, description="Absolute deviation below which the score is 0.")
    group_by: list[str] = Field(
        default_factory=list,
        description="Entity labels for multivariate models: series sharing them are one entity's features.",
    )
    counter: bool = Field(
        False, description="The expr returns raw counters: convert to per-second rates, handling resets."
    )

    @model_validator(mode="after")
    def _windows(self) -> QueryConfig:
        if self.fit_window < 2 * self.step:
            raise ValueError("fit_window must span at least two steps")
        if self.fit_window / self.step > MAX_POINTS_PER_SERIES:
            raise ValueError(f"fit_window / step is {self.fit_window / self.step:.0f} points per series; "
                             f"at most {MAX_POINTS_PER_SERIES} (use a longer step or a shorter fit_window)")
        return self

    @property
    def infer_interval(self) -> float:
        return self.infer_every or self.step


class ServerConfig(_Strict):
    listen_address: str = Field(DEFAULT_LISTEN_ADDRESS, description="HOST:PORT the HTTP server listens on.")
    web_config_file: str | None = Field(None, description="exporter-toolkit web configuration (TLS, client "
                                        "certificates, basic auth), as node_exporter's --web.config.file.")

    @field_validator("web_config_file")
    @classmethod
    def _web_config(cls, value: str | None) -> str | None:
        from boxwatch.web import WebConfigError, load_web_config

        try:
            load_web_config(value)
        except WebConfigError as err:
            raise ValueError("; ".join(err.problems)) from None
        return value or None

    @field_validator("listen_address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            parse_listen_address(value)
        except ValueError:
            raise ValueError(f"expected HOST:PORT or :PORT; got {value!r}") from None
        return value


class RemoteWriteConfig(HttpClientConfig):
    """Prometheus remote write, with headers (tenant IDs), TLS and credentials like the reader's."""

    url: str | None = Field(None, description="Prometheus remote-write URL (…/api/v1/write); off when empty.")
    timeout: Duration = Field(30.0, description="Timeout of one push (duration).")


class ApiConfig(_Strict):
    """Limits and guards of the HTTP API (the server's TLS and basic auth come from --web.config.file)."""

    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024,
        description="Largest request body; a bigger one is refused with 413 before it is parsed.",
    )
    max_concurrent_scores: int = Field(
        2, ge=1, le=64, description="POST /api/v1/score requests computed at once; more get 429 at once, "
                                    "so /metrics and /healthz always find a free worker.",
    )
    allowed_hosts: list[str] | None = Field(
        None, description="Host header values accepted (shell patterns, e.g. '*.svc.cluster.local'; '*' for "
                          "any), against DNS rebinding. Default: the listen host and localhost names when "
                          "listening on a loopback or specific address; any host when listening on all "
                          "addresses (:9875, 0.0.0.0:9875).",
    )
    mutations: bool = Field(
        True, description="Allow the endpoints that change state (POST /-/reload, registry reload, drift "
                          "check); false refuses them with 403 (SIGHUP still reloads).",
    )


class WriterConfig(_Strict):
    """Where scores go besides /metrics: optionally remote write (catch-up ranges included)."""

    remote_write: RemoteWriteConfig = Field(default_factory=RemoteWriteConfig)


class CalibrationConfig(_Strict):
    """Per-series calibration of the raw band distance into the published score (docs/models.md)."""

    enabled: bool = Field(True, description="false publishes the raw band distance as the score.")
    target_rate: float = Field(0.1, gt=0, lt=0.5,
                               description="Rate of normal points whose calibrated score exceeds 1.")
    window: int = Field(4000, ge=10, le=1_000_000, description="Recent points the level is learned from.")
    min_points: int = Field(200, ge=1, le=1_000_000,
                            description="Normal points seen before the fitted level replaces the band.")
    tail_quantile: float = Field(0.9, gt=0, lt=1, description="Where the exponential tail starts.")
    min_raw: float = Field(1.0, ge=0, description="Raw score a point must exceed to alert (1: outside the band).")
    hold: int = Field(10, ge=0, le=100_000,
                      description="Points after a score above 1 during which the score stays above 1.")
    learn_below: float = Field(math.inf, gt=1, description="Points scoring above this are not learned (inf: all).")
    sustain: float = Field(0.5, ge=0, le=1, description="While held, a point outside the band scoring above "
                                                         "this continues the incident.")
    refit_every: int = Field(1, ge=1, le=100_000, description="Learned points between two fits of the tail.")

    def make(self):
        """A fresh :class:`~detector.calibration.Calibration` with these settings (None when disabled)."""
        from detector.calibration import Calibration

        if not self.enabled:
            return None
        return Calibration(self.target_rate, self.window, self.min_points, self.tail_quantile, self.min_raw,
                           self.hold, self.refit_every, self.learn_below,
                           self.sustain)


class AnomaliesConfig(_Strict):
    max_kept: int = Field(1000, ge=1, le=1_000_000, description="Size of the recent-anomalies buffer.")
    threshold: float = Field(1.0, gt=0, description="A point with a score above this is an anomaly.")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)


class PromotionConfig(_Strict):
    """When a freshly fitted version replaces the ``champion`` (see docs/registry.md)."""

    metric: Literal["auto", "anomaly_rate", "nab_score"] = Field(
        "auto",
        description="auto: nab_score where registry.incidents label the validation window, else the "
                    "calibrated alert rate closest to anomalies.calibration.target_rate; "
                    "anomaly_rate: share of validation points scored > 1 (lower is better; favours "
                    "insensitive models); nab_score: NAB standard-profile score on registry.incidents "
                    "(higher is better).",
    )
    tolerance: float = Field(
        0.01, ge=0, description="How much worse than the champion a challenger may be and still be promoted "
                                "(absolute: a rate for anomaly_rate and auto's rate, points for nab_score).",
    )
    respect_manual: bool = Field(
        True, description="A champion chosen by hand (promote/rollback) is not replaced automatically.",
    )


class RegistryConfig(_Strict):
    """The MLflow model registry: every fit is a run and a model version; alias ``champion`` serves."""

    enabled: bool = Field(False, description="Log fits to MLflow and serve the registry's champions.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (http://mlflow:5000); default sqlite:///<state_dir>/mlflow/mlflow.db.",
    )
    artifact_location: str | None = Field(
        None, description="Artifact root of the experiment when it is created; default <state_dir>/mlflow/artifacts "
                          "for the embedded store (a server uses its own --default-artifact-root).",
    )
    experiment: str = Field("boxwatch-detector", min_length=1, description="MLflow experiment of the fit runs.")
    validation_fraction: float = Field(
        0.2, gt=0, lt=0.9, description="Share of the training window held out for validation (its last part).",
    )
    validation_max_points: int = Field(1440, ge=10, description="At most this many steps are held out.")
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    poll_interval: Duration | None = Field(
        None, description="How often serve checks the champion alias (duration); default: the shortest fit_every.",
    )
    timeout: Duration = Field(10.0, description="Timeout of one request to an MLflow server (duration).")
    incidents: dict[str, list[tuple[str, str]]] = Field(
        default_factory=dict,
        description="Labelled incident windows per query alias, [[start, end], ...] in RFC 3339, for nab_score.",
    )



class DriftConfig(_Strict):
    """Evidently drift checks: the training window's data against the most recent window."""

    enabled: bool = Field(False, description="Run drift checks on a schedule while serving.")
    interval: Duration = Field(3600.0, description="How often to check (duration).")
    window: Duration = Field(3600.0, description="The recent window compared with the training data (duration).")
    method: str = Field("ks", description="Evidently stat test: ks, wasserstein, psi, jensenshannon, anderson, ...")
    threshold: float | None = Field(None, gt=0, description="The test's threshold; default: Evidently's for it.")
    min_points: int = Field(30, ge=5, description="Fewer recent points than this and a query is not checked.")
    reference_max_points: int = Field(5000, ge=100, description="Sample size kept from the training window.")
    retrain_on_drift: bool = Field(False, description="Drift triggers a refit (through the promotion gate).")

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value not in DRIFT_METHODS:
            raise ValueError(f"unknown drift method {value!r}; known: {', '.join(sorted(DRIFT_METHODS))}")
        return value


class FittingConfig(_Strict):
    """Where fits run."""

    isolate: bool = Field(
        True, description="Fit models whose fit imports scikit-learn or statsmodels (seasonal, iforest, ensemble) "
        "in a child process, so the serving process never loads them (about 95 MiB); costs a process start and "
        "those imports (a few seconds) per fit.")
    timeout: Duration | None = Field(None, description="A fit in a child process running longer is stopped and "
                                     "reported as failed (duration; default: no limit).")


class CausesConfig(_Strict):
    """Cause hints: raw signals of the same GPU, container or journal unit around an anomaly (docs/causes.md)."""

    enabled: bool = Field(True, description="Look up causes for units scoring above the anomaly threshold.")
    window: Duration = Field(600.0, description="How far before the anomaly began to look (duration).")
    max_lookback: Duration = Field(7200.0, description="Longest window looked at for a long anomaly (duration).")
    refresh: Duration = Field(60.0, description="How often the causes of a unit still anomalous are looked up again.")
    timeout: Duration = Field(5.0, description="Timeout of one cause query (duration).")
    max_causes: int = Field(5, ge=1, le=9, description="Most causes kept (and exported) per unit.")
    max_units: int = Field(20, ge=1, le=1000, description="Most units looked up per pass (worst scores first).")



class FeedbackWindow(_Strict):
    """A known event: series matching ``matchers`` between ``start`` and ``end`` (docs/feedback.md)."""

    matchers: list[str] = Field(default_factory=list, description='Label matchers, e.g. [\'query="gpu_power"\', '
                                                                  '\'gpu="0"\']; none matches every series.')
    start: str = Field(description="RFC 3339 start.")
    end: str = Field(description="RFC 3339 end.")
    kind: Literal["expected", "false_positive"] = Field(
        "expected", description="expected: left out of training and anomaly counts; false_positive: counted.")
    comment: str = Field("", max_length=500)

    @model_validator(mode="after")
    def _check(self) -> FeedbackWindow:
        from detector.matchers import parse_matcher

        for text in self.matchers:
            parse_matcher(text)
        begin, finish = (parse_rfc3339(t) for t in (self.start, self.end))
        if finish <= begin:
            raise ValueError("end must be after start")
        return self


class AlertmanagerConfig(_Strict):
    """Alertmanager whose silences count as ``expected`` feedback (off without a URL)."""

    url: str | None = Field(None, description="Base URL of Alertmanager (…:9093); its silences are read.")
    timeout: Duration = Field(5.0, description="Timeout of one request (duration).")
    poll_interval: Duration = Field(60.0, description="How often silences are read again (duration).")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"expected an http:// or https:// URL; got {value!r}")
        return value.rstrip("/") if value else value


# Evidently's numerical stat tests (evidently.legacy.calculations.stattests), listed here so that
# validating a config does not import evidently (~6 s).
DRIFT_METHODS = frozenset({
    "ks", "wasserstein", "psi", "jensenshannon", "kl_div", "anderson", "cramer_von_mises", "mannw",
    "ed", "es", "t_test", "empirical_mmd", "hellinger",
})


class DetectorConfig(_Strict):
    schema_version: Literal[1] = Field(description="Configuration schema version; this release reads 1.")
    reader: ReaderConfig = Field(default_factory=ReaderConfig)
    models: dict[str, ModelPreset] = Field(default_factory=dict)
    queries: dict[str, QueryConfig] = Field(min_length=1)
    server: ServerConfig = Field(default_factory=ServerConfig)
    state_dir: str = Field(".boxwatch/detector", description="Where fitted models are persisted.")
    model_key_file: str | None = Field(
        None, description="HMAC key that signs every model file the detector writes and is checked before one "
                          "is loaded (local store and registry); default <state_dir>/model.key, created 0600. "
                          "Replicas sharing a registry share it (e.g. a Kubernetes Secret).",
    )
    writer: WriterConfig = Field(default_factory=WriterConfig)
    anomalies: AnomaliesConfig = Field(default_factory=AnomaliesConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    causes: CausesConfig = Field(default_factory=CausesConfig)
    fitting: FittingConfig = Field(default_factory=FittingConfig)
    maintenance: list[FeedbackWindow] = Field(default_factory=list, description="Known events (docs/feedback.md).")
    alertmanager: AlertmanagerConfig = Field(default_factory=AlertmanagerConfig)

    def model_for(self, alias: str) -> tuple[str, dict[str, Any]]:
        """``(model name, params)`` of query ``alias``, with a preset's params under the query's."""
        query = self.queries[alias]
        preset = self.models.get(query.model)
        if preset is None:
            return query.model, dict(query.params)
        return preset.name, {**preset.params, **query.params}

    def query_hash(self, alias: str) -> str:
        """Hash of what a fitted model depends on; a bundle with another hash is stale."""
        query = self.queries[alias]
        name, params = self.model_for(alias)
        material = {
            "expr": query.expr, "step": query.step, "fit_window": query.fit_window, "model": name,
            "params": params, "group_by": sorted(query.group_by), "counter": query.counter,
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    source: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.key or '(top level)'}: {self.reason}"


class ConfigError(ValueError):
    """Every problem found in a configuration, each with source, key path and reason."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


# --------------------------------------------------------------------------- loading


def load_config(
    path: str | os.PathLike,
    overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> DetectorConfig:
    """Read, override and validate a config file; raise :class:`ConfigError` listing every problem.

    ``overrides`` maps dotted key paths to values (from ``--set`` and dedicated flags);
    ``environ`` defaults to ``os.environ`` and contributes ``BOXWATCH_A__B=value`` as ``a.b``.
    """
    path = str(path)
    raw, problems = _read_yaml(path)
    if raw is None:
        raise ConfigError(problems)
    sources: dict[str, str] = {}
    flag_overrides = {key: (f"flag --set {key}", value) for key, value in (overrides or {}).items()}
    for key, (label, value) in [*_env_overrides(os.environ if environ is None else environ).items(),
                                *flag_overrides.items()]:
        problem = _apply_override(raw, key, value)
        sources[key] = label
        if problem:
            problems.append(Problem(label, key, problem))
    try:
        config = validate(raw, path, sources)
    except ConfigError as err:
        raise ConfigError(problems + err.problems) from None
    if problems:  # duplicate keys, bad overrides: the rest was checked too, so every problem is listed
        raise ConfigError(problems)
    return config


def validate(raw: Any, path: str = "<config>", sources: Mapping[str, str] | None = None) -> DetectorConfig:
    """Validate a parsed document; every schema and cross-reference problem at once."""
    sources = sources or {}
    if not isinstance(raw, dict):
        raise ConfigError([Problem(path, "", f"expected a mapping at the top level, got {type(raw).__name__}")])
    try:
        config = DetectorConfig.model_validate(raw)
    except ValidationError as err:
        problems = [_problem_from(error, path, sources) for error in err.errors()]
        problems.extend(_cross_problems_raw(raw, path))
        raise ConfigError(_dedupe(problems)) from None
    problems = _semantic_problems(config, path, sources)
    if problems:
        raise ConfigError(problems)
    return config


def _read_yaml(path: str) -> tuple[Any, list[Problem]]:
    try:
        text = Path(path).read_text()
    except OSError as err:
        return None, [Problem(path, "", f"cannot read file: {err.strerror or err}")]
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        reason = getattr(err, "problem", None) or str(err)
        return None, [Problem(path, "", f"not valid YAML{where}: {reason}")]
    if raw is None:
        return None, [Problem(path, "", "the file is empty")]
    if not isinstance(raw, dict):
        return None, [Problem(path, "", f"expected a mapping at the top level, got {type(raw).__name__}")]
    return raw, [Problem(path, key, reason) for key, reason in _duplicate_keys(yaml.compose(text, yaml.SafeLoader))]


def _duplicate_keys(node: yaml.Node | None, prefix: str = "") -> list[tuple[str, str]]:
    """``(key path, reason)`` for every key given twice in one mapping: YAML keeps the last one
    silently, so a second query with the same alias would replace the first without a word."""
    problems = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            path = f"{prefix}.{key}" if prefix else key
            line = key_node.start_mark.line + 1
            if key in first_line and key != "<<":
                problems.append((path, f"duplicate key (line {line}; first given on line {first_line[key]})"))
            first_line.setdefault(key, line)
            problems.extend(_duplicate_keys(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems.extend(_duplicate_keys(item, f"{prefix}.{i}"))
    return problems


def _env_overrides(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    result = {}
    top = set(DetectorConfig.model_fields)
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if parts[0] not in top:
            continue  # BOXWATCH_* variables of other components
        result[".".join(parts)] = (f"environment {name}", value)
    return result


def _apply_override(raw: dict, key: str, value: str) -> str | None:
    parts = [p for p in key.split(".") if p]
    if not parts:
        return "empty key path"
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return f"cannot set a key below {part!r}: it is not a mapping"
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value) if isinstance(value, str) else value
    except yaml.YAMLError:
        node[parts[-1]] = value
    return None


def _problem_from(error: Mapping[str, Any], path: str, sources: Mapping[str, str]) -> Problem:
    key = ".".join(str(part) for part in error["loc"])
    reason = error["msg"]
    if error["type"] == "extra_forbidden":
        reason = "unknown key"
    elif error["type"] == "missing":
        reason = "required key is missing"
    elif reason.startswith("Value error, "):
        reason = reason[len("Value error, "):]
    if error["type"] not in ("missing", "extra_forbidden") and "input" in error:
        shown = repr(error["input"])
        if len(shown) < 60 and shown not in reason:
            reason = f"{reason} (got {shown})"
    return Problem(_source_of(key, path, sources), key, reason)


def _source_of(key: str, path: str, sources: Mapping[str, str]) -> str:
    for candidate, label in sources.items():
        if key == candidate or key.startswith(candidate + "."):
            return label
    return path


def _cross_problems_raw(raw: dict, path: str) -> list[Problem]:
    """Model problems of the parts that did parse, so schema errors elsewhere do not hide them."""
    problems = []
    presets = raw.get("models") if isinstance(raw.get("models"), dict) else {}
    queries = raw.get("queries") if isinstance(raw.get("queries"), dict) else {}
    for alias, preset in presets.items():
        if isinstance(preset, dict) and isinstance(preset.get("name"), str):
            params = preset.get("params") if isinstance(preset.get("params"), dict) else {}
            for key, reason in _model_problems(preset["name"], params, f"models.{alias}.params",
                                               f"models.{alias}.name"):
                problems.append(Problem(path, key, reason))
    for alias, query in queries.items():
        if not isinstance(query, dict) or not isinstance(query.get("model", "robust"), str):
            continue
        model = query.get("model", "robust")
        params = query.get("params") if isinstance(query.get("params"), dict) else {}
        preset = presets.get(model)
        if isinstance(preset, dict):
            if not isinstance(preset.get("name"), str):
                continue
            model = preset["name"]
        for key, reason in _model_problems(model, params, f"queries.{alias}.params", f"queries.{alias}.model",
                                           only=set(params)):
            problems.append(Problem(path, key, reason))
    return problems


def _semantic_problems(config: DetectorConfig, path: str, sources: Mapping[str, str]) -> list[Problem]:
    problems = []
    for alias, preset in config.models.items():
        for key, reason in _model_problems(preset.name, preset.params, f"models.{alias}.params",
                                           f"models.{alias}.name"):
            problems.append(Problem(_source_of(key, path, sources), key, reason))
    for alias, query in config.queries.items():
        if not _ALIAS.match(alias):
            problems.append(Problem(path, f"queries.{alias}", "a query alias must match [A-Za-z_][A-Za-z0-9_:-]*"))
        name, params = config.model_for(alias)
        # A preset's own parameters are reported at the preset; the query answers for what it sets.
        model_problems = _model_problems(name, params, f"queries.{alias}.params", f"queries.{alias}.model",
                                         only=set(query.params))
        for key, reason in model_problems:
            problems.append(Problem(_source_of(key, path, sources), key, reason))
        if not model_problems and name in _known_models() and _is_multivariate(name) and not query.group_by:
            key = f"queries.{alias}.group_by"
            problems.append(Problem(path, key, f"model {name!r} is multivariate: name the entity labels"))
        if query.infer_every is not None and query.infer_every > query.fit_every:
            key = f"queries.{alias}.infer_every"
            problems.append(Problem(_source_of(key, path, sources), key, "must not be longer than fit_every"))
    problems.extend(_registry_problems(config, path, sources))
    return problems


def _registry_problems(config: DetectorConfig, path: str, sources: Mapping[str, str]) -> list[Problem]:
    """Incident windows must name a watched query and parse as times, start before end."""
    problems = []
    for alias, windows in config.registry.incidents.items():
        key = f"registry.incidents.{alias}"
        if alias not in config.queries:
            problems.append(Problem(_source_of(key, path, sources), key, "not a query alias of queries:"))
            continue
        for i, (start, end) in enumerate(windows):
            try:
                begin, finish = (parse_rfc3339(t) for t in (start, end))
                if finish <= begin:
                    raise ValueError("the end must be after the start")
            except (ValueError, TypeError) as err:
                problems.append(Problem(_source_of(key, path, sources), f"{key}.{i}", f"bad window: {err}"))
    if config.registry.promotion.metric == "nab_score" and not config.registry.incidents:
        key = "registry.promotion.metric"
        problems.append(Problem(_source_of(key, path, sources), key,
                                "nab_score needs labelled incidents in registry.incidents"))
    return problems


def _model_problems(name: str, params: Mapping[str, Any], prefix: str, name_key: str,
                    only: set[str] | None = None) -> list[tuple[str, str]]:
    """``(key, reason)`` for an unknown model (at ``name_key``) or each bad parameter (below
    ``prefix``, the params mapping's key path); ``only`` limits parameter problems to those names."""
    from detector.models import MODELS
    from detector.models.params import check_params

    if name not in MODELS:
        return [(name_key, f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")]
    try:
        problems = check_params(name, dict(params))
    except ImportError as err:
        return [(name_key, f"model {name!r} cannot be loaded: {err}")]
    return [(f"{prefix}.{key}" if key else prefix, reason) for key, reason in problems
            if only is None or not key or key in only]


def _known_models() -> set[str]:
    from detector.models import MODELS

    return set(MODELS)


def _is_multivariate(name: str) -> bool:
    from detector.models import model_class

    return bool(model_class(name).multivariate)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, result = set(), []
    for problem in problems:
        if (problem.key, problem.reason) not in seen:
            seen.add((problem.key, problem.reason))
            result.append(problem)
    return result
