"""The MLflow model registry: every fit is a run and a model version; the alias ``champion`` serves.

Layout (see docs/registry.md): one experiment (``registry.experiment``) holds a run per fit,
with the query, model, window, config hash and model parameters as params, and the fit time
and validation results as metrics. The fitted :class:`~detector.store.ModelBundle` is the
run's model, logged as an MLflow pyfunc (``mlflow.pyfunc.load_model(uri).predict(frame)``
scores a frame), and becomes a version of the registered model ``boxwatch.<query>.<model>``.

Promotion: the version whose validation is no worse than the champion's (the rule in
``registry.promotion``) takes the alias ``champion``; otherwise it stays a challenger and the
reason is a tag of its run and of its version. The registered model's tag
``boxwatch.champion_history`` keeps the champions in order, so ``rollback`` can step back;
the alias ``previous_champion`` names the one before the current champion.

``mlflow`` (~3 s to import) is imported only here, lazily, on the fit and registry paths: never
at start-up of ``serve`` or on the scoring path.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import pickle
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from boxwatch.log import kv
from detector.config import CalibrationConfig, DetectorConfig, RegistryConfig
from detector.feedback import false_positive_counts
from detector.models import make_model
from detector.reader import SeriesKey
from detector.scoring import score_online
from detector.store import STATS, FitResult, LocalStore, ModelBundle, ModelKey, UntrustedModel, check_owner

if TYPE_CHECKING:
    from detector.service import Detector

log = logging.getLogger("boxwatch.detector.registry")

CHAMPION = "champion"
PREVIOUS = "previous_champion"
HISTORY_TAG = "boxwatch.champion_history"
HISTORY_KEEP = 50
TAG_DECISION = "boxwatch.decision"
TAG_REASON = "boxwatch.reason"
TAG_QUERY = "boxwatch.query"
TAG_MODEL = "boxwatch.model"
TAG_CONFIG_HASH = "boxwatch.config_hash"
TAG_MANUAL = "boxwatch.manual"
TAG_SHARD = "boxwatch.shard"
TAG_SHARDS = "boxwatch.shards"
BUNDLE_ARTIFACT = "bundle"
RETRY_SECONDS = 60.0  # while the registry is unreachable, serve checks it at least this often
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class RegistryUnavailable(RuntimeError):
    """The tracking store or the model registry could not be reached (or refused a request)."""


class RejectedModel(RuntimeError):
    """A registered version whose model file this detector refuses to load (see :class:`UntrustedModel`)."""


def registered_name(alias: str, model: str, shard: tuple[int, int] = (0, 1)) -> str:
    """``boxwatch.<query>.<model>`` (``...<model>.shard<i>of<N>`` when sharded), outside ``[A-Za-z0-9_.-]`` -> ``_``.

    Each shard fits only its own series, so each has its own registered model: a replica never
    sees, let alone installs, another shard's partial bundle.
    """
    name = f"boxwatch.{_NAME_UNSAFE.sub('_', alias)}.{_NAME_UNSAFE.sub('_', model)}"
    index, total = shard
    return name if total == 1 else f"{name}.shard{index}of{total}"


def default_tracking_uri(state_dir: str | os.PathLike) -> str:
    return f"sqlite:///{(Path(state_dir) / 'mlflow' / 'mlflow.db').resolve()}"


def import_mlflow(timeout: float = 10.0):
    """``mlflow``, imported with telemetry off and bounded HTTP retries (an air-gapped box never calls out)."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(math.ceil(timeout))))
    import mlflow

    return mlflow


def registry_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the registry failed", as opposed to a bug in boxwatch."""
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    return (MlflowException, requests.RequestException, sqlalchemy.exc.SQLAlchemyError, OSError,
            pickle.UnpicklingError, RegistryUnavailable)


# --------------------------------------------------------------------------- validation


@dataclass
class Validation:
    """Scores of one bundle on the held-out window: points scored and how many were anomalous."""

    points: int = 0
    anomalies: int = 0
    nab_score: float | None = None

    @property
    def anomaly_rate(self) -> float:
        return self.anomalies / self.points if self.points else math.nan

    def metrics(self, prefix: str = "validation_") -> dict[str, float]:
        result = {f"{prefix}points": float(self.points), f"{prefix}anomaly_rate": self.anomaly_rate}
        if self.nab_score is not None:
            result[f"{prefix}nab_score"] = self.nab_score
        return {k: v for k, v in result.items() if not math.isnan(v)}


def split_point(bundle: ModelBundle, step: float, settings: RegistryConfig) -> float:
    """Start of the validation window: the last part of the training window."""
    span_steps = max(int((bundle.training_end - bundle.training_start) // step), 2)
    held = max(1, min(int(span_steps * settings.validation_fraction), settings.validation_max_points))
    return bundle.training_end - held * step


def validate_models(
    models: dict[SeriesKey, Any],
    units: Mapping[SeriesKey, pd.DataFrame],
    split: float,
    direction: str,
    min_deviation: float,
    incidents: list[tuple[float, float]] | None = None,
    calibration: CalibrationConfig | None = None,
) -> Validation:
    """Score the validation part of each unit online with a copy of its model (the model is not changed).

    With ``calibration`` the scores are calibrated as the service publishes them (a fresh calibration
    per unit, started on the validation window), so rates and NAB scores are the product's."""
    result = Validation()
    cut = pd.Timestamp(split, unit="s", tz="UTC")
    nab_files = []
    for key, model in models.items():
        frame = units.get(key)
        if frame is None:
            continue
        held = frame.loc[frame.index >= cut]
        if held.empty:
            continue
        scores = score_online(copy.deepcopy(model), held, direction, min_deviation,
                              calibration.make() if calibration is not None else None)["score"].astype(float)
        scored = scores.dropna()
        result.points += len(scored)
        result.anomalies += int((scored > 1.0).sum())
        if incidents:
            nab_files.append(scores)
    if incidents:
        result.nab_score = nab_score(nab_files, incidents)
    return result


def fit_for_validation(bundle: ModelBundle, units: Mapping[SeriesKey, pd.DataFrame], split: float) -> dict:
    """The candidate's recipe fitted on the training part only, so its validation is out of sample."""
    cut = pd.Timestamp(split, unit="s", tz="UTC")
    models = {}
    for key in bundle.models:
        frame = units.get(key)
        if frame is None:
            continue
        train = frame.loc[frame.index < cut]
        if train.dropna(how="all").empty:
            continue
        try:
            models[key] = make_model(bundle.model_name, bundle.params).fit(train)
        except (ValueError, np.linalg.LinAlgError, ArithmeticError) as err:
            log.warning("validation fit failed for a series", extra=kv(
                query=bundle.query, labels=dict(key), error=err))
    return models


def nab_score(scores: list[pd.Series], incidents: list[tuple[float, float]]) -> float | None:
    """NAB standard-profile score of the validation scores against the labelled incident windows.

    boxwatch scores (0 normal, > 1 outside the band) map to NAB's ``[0, 1]`` as ``s / (1 + s)``,
    which keeps their order (NAB sweeps the threshold). Uses :mod:`detector.nabscore`;
    ``None`` when no incident overlaps the validation window.
    """
    from detector import nabscore

    results, windows = {}, {}
    for i, series in enumerate(scores):
        if series.empty:
            continue
        first, last = series.index[0].timestamp(), series.index[-1].timestamp()
        overlapping = [[_iso(s), _iso(e)] for s, e in incidents if e >= first and s <= last]
        values = series.fillna(0.0).clip(lower=0.0).to_numpy(float)
        results[f"series{i}"] = (series.index, values / (1.0 + values))
        windows[f"series{i}"] = overlapping
    if not any(windows.values()):
        return None
    return float(nabscore.score_corpus(results, windows, nabscore.STANDARD_PROFILES[:1])["standard"].normalized)


# --------------------------------------------------------------------------- decisions


@dataclass
class Decision:
    """What the gate decided for one fit."""

    query: str
    name: str
    version: str | None
    promoted: bool
    reason: str
    champion_version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"query": self.query, "name": self.name, "version": self.version, "promoted": self.promoted,
                "reason": self.reason, "champion_version": self.champion_version, "metrics": self.metrics,
                "run_id": self.run_id}


def gate(candidate: Validation, champion: Validation | None, settings: RegistryConfig,
         champion_version: str | None, champion_manual: bool, champion_stale: bool,
         false_positives: tuple[int, int] | None = None, target_rate: float = 0.1) -> tuple[bool, str]:
    """Whether a candidate replaces the champion, and why (the reason is logged as a tag).

    ``auto`` (the default metric) compares NAB scores where labelled incidents overlap the
    validation window, else how close each alert rate is to the calibration's ``target_rate``:
    ``anomaly_rate`` alone promotes whichever model flags less, i.e. misses more.

    ``false_positives`` is operator feedback (docs/feedback.md): ``(candidate, champion)`` anomalies on
    the validation window inside ``false_positive`` marks, ``None`` where there are no marks."""
    rule = settings.promotion
    if champion is None or champion_version is None:
        return True, "first version: no champion yet"
    if champion_manual and rule.respect_manual:
        return False, (f"champion v{champion_version} was chosen by hand; promote by hand "
                       f"(or set registry.promotion.respect_manual: false)")
    if champion_stale:
        return True, f"champion v{champion_version} was fitted for another configuration"
    if false_positives is not None and false_positives[0] > false_positives[1]:
        return False, (f"flags {false_positives[0]} validation points marked false_positive, champion "
                       f"v{champion_version} {false_positives[1]}")
    use_nab = rule.metric in ("nab_score", "auto")
    if use_nab and candidate.nab_score is not None and champion.nab_score is not None:
        if candidate.nab_score >= champion.nab_score - rule.tolerance:
            return True, (f"NAB score {candidate.nab_score:.2f} is no worse than champion v{champion_version}'s "
                          f"{champion.nab_score:.2f} (tolerance {rule.tolerance:g})")
        return False, (f"NAB score {candidate.nab_score:.2f} is lower than champion v{champion_version}'s "
                       f"{champion.nab_score:.2f} by more than the tolerance {rule.tolerance:g}")
    cand, champ = candidate.anomaly_rate, champion.anomaly_rate
    if math.isnan(cand):
        return False, "no validation points could be scored"
    if rule.metric == "auto":
        # Calibrated scores alert at about target_rate on normal data: a model whose alert rate is far
        # from it (flooding, or never firing) calibrates badly; fewer alerts alone is not better.
        cand_off, champ_off = abs(cand - target_rate), abs(champ - target_rate)
        if math.isnan(champ) or cand_off <= champ_off + rule.tolerance:
            return True, (f"alert rate {cand:.4f} on the validation window is as close to the calibration "
                          f"target {target_rate:g} as champion v{champion_version}'s {champ:.4f} "
                          f"(tolerance {rule.tolerance:g})")
        return False, (f"alert rate {cand:.4f} on the validation window is further from the calibration "
                       f"target {target_rate:g} than champion v{champion_version}'s {champ:.4f} by more than "
                       f"the tolerance {rule.tolerance:g}")
    if math.isnan(champ) or cand <= champ + rule.tolerance:
        return True, (f"anomaly rate {cand:.4f} on the validation window is no worse than champion "
                      f"v{champion_version}'s {champ:.4f} (tolerance {rule.tolerance:g})")
    return False, (f"anomaly rate {cand:.4f} on the validation window is higher than champion "
                   f"v{champion_version}'s {champ:.4f} by more than the tolerance {rule.tolerance:g}")


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class VersionRef:
    """A registered model version as boxwatch needs it (MLflow's entity types ``version`` as int or str)."""

    version: str
    tags: dict[str, str]


class Registry:
    """MLflow client for boxwatch: log fits, gate promotion, load and move the ``champion`` alias."""

    def __init__(self, config: DetectorConfig, shard: tuple[int, int] = (0, 1)):
        self.config = config
        self.settings = config.registry
        self.shard = shard
        self.state_dir = Path(config.state_dir)
        self.tracking_uri = self.settings.tracking_uri or default_tracking_uri(self.state_dir)
        self.embedded = self.settings.tracking_uri is None
        self.cache_dir = self.state_dir / "registry-cache"
        self.key = ModelKey.for_config(self.state_dir, config.model_key_file)
        self._refused: dict[tuple[str, str], str] = {}
        self._client = None
        self._experiment_id: str | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ client

    @property
    def mlflow(self):
        return import_mlflow(self.settings.timeout)

    def client(self):
        with self._lock:
            if self._client is None:
                mlflow = self.mlflow
                if self.embedded:
                    (self.state_dir / "mlflow").mkdir(parents=True, exist_ok=True)
                self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
            return self._client

    def experiment_id(self) -> str:
        with self._lock:
            if self._experiment_id is None:
                client = self.client()
                experiment = client.get_experiment_by_name(self.settings.experiment)
                if experiment is None:
                    location = self.settings.artifact_location
                    if location is None and self.embedded:
                        location = (self.state_dir / "mlflow" / "artifacts").resolve().as_uri()
                    self._experiment_id = client.create_experiment(self.settings.experiment,
                                                                   artifact_location=location)
                else:
                    self._experiment_id = experiment.experiment_id
            return self._experiment_id

    def ping(self) -> None:
        """Raise when the tracking store cannot be reached."""
        self.experiment_id()

    # ------------------------------------------------------------------ read

    def champion_version(self, name: str, alias: str = CHAMPION) -> VersionRef | None:
        """The version holding ``alias``, or ``None`` (no such model or alias)."""
        from mlflow.exceptions import MlflowException

        client = self.client()
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except MlflowException as err:
            if _is_not_found(err):
                return None
            raise
        return VersionRef(str(mv.version), dict(mv.tags or {}))

    def name(self, alias: str, model: str) -> str:
        """The registered model of query ``alias`` and ``model`` for this replica's shard."""
        return registered_name(alias, model, self.shard)

    def load_version(self, name: str, version: str, shard: tuple[int, int] | None = None) -> ModelBundle:
        """The bundle of ``name`` version ``version`` (downloaded once into the state dir's cache).

        The file is unpickled only if its signature checks out with this detector's key and the
        cached copy is the service user's; otherwise :class:`RejectedModel` (counted and logged once
        per version). A bundle fitted for another shard than ``shard`` (default: this replica's) is
        refused the same way.
        """
        version = str(version)
        shard = tuple(shard or self.shard)
        refused = self._refused.get((name, version))
        if refused is not None:
            raise RejectedModel(refused)
        target = self.cache_dir / name / version
        bundle_file = target / "bundle.pkl"
        if not bundle_file.exists():
            self._download(name, version, target, bundle_file)
        try:
            check_owner(bundle_file)
            bundle: ModelBundle = pickle.loads(self.key.verify(bundle_file.read_bytes(), f"model {name} v{version}"))
            if tuple(bundle.shard) != shard:
                raise UntrustedModel(f"model {name} v{version} was fitted for shard {bundle.shard[0]}/"
                                     f"{bundle.shard[1]}, this replica is {shard[0]}/{shard[1]}")
        except UntrustedModel as err:
            with self._lock:
                first = (name, version) not in self._refused
                self._refused[(name, version)] = str(err)
            if first:
                STATS.reject("registry")
                log.error("refusing a registered model version", extra=kv(
                    name=name, version=version, reason=str(err)))
            bundle_file.unlink(missing_ok=True)
            raise RejectedModel(str(err)) from err
        bundle.version = version
        return bundle

    def _download(self, name: str, version: str, target: Path, bundle_file: Path) -> None:
        """The version's ``bundle.pkl`` into ``bundle_file``, resolved through this registry's client.

        ``models:/`` URIs are resolved by MLflow through its process-wide registry URI (which is
        set only while a run is active, and otherwise defaults to ``./mlflow.db``): the source is
        asked of the explicit client instead.
        """
        source = self.client().get_model_version_download_uri(name, version)
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            local = self.mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp,
                                                             tracking_uri=self.tracking_uri)
            found = next(Path(local).rglob("bundle.pkl"), None)
            if found is None:
                raise RegistryUnavailable(f"model {name} v{version} has no bundle.pkl artifact")
            os.chmod(found, 0o600)
            os.replace(found, bundle_file)

    def load_champion(self, alias: str) -> ModelBundle | None:
        """The champion bundle of query ``alias`` for its configured model, or ``None``."""
        model, _ = self.config.model_for(alias)
        name = self.name(alias, model)
        version = self.champion_version(name)
        return None if version is None else self.load_version(name, version.version)

    def versions(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Every version of the boxwatch models (or of ``names``), newest first, with aliases and reasons."""
        client = self.client()
        if names is None:
            names = sorted(m.name for m in client.search_registered_models(filter_string="name LIKE 'boxwatch.%'"))
        rows = []
        for name in names:
            aliases: dict[str, list[str]] = {}
            for alias, version in (client.get_registered_model(name).aliases or {}).items():
                aliases.setdefault(str(version), []).append(alias)
            for mv in client.search_model_versions(filter_string=f"name = '{name}'"):
                rows.append({
                    "name": name, "version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                    "decision": mv.tags.get(TAG_DECISION, ""), "reason": mv.tags.get(TAG_REASON, ""),
                    "query": mv.tags.get(TAG_QUERY, ""), "model": mv.tags.get(TAG_MODEL, ""),
                    "manual": mv.tags.get(TAG_MANUAL, "") == "true",
                    "created": mv.creation_timestamp / 1000.0, "run_id": mv.run_id,
                })
        rows.sort(key=lambda r: (r["name"], -int(r["version"])))
        return rows

    # ------------------------------------------------------------------ write

    def log_fit(self, bundle: ModelBundle, metrics: dict[str, float], tags: dict[str, str]) -> tuple[str, str]:
        """One MLflow run for ``bundle`` and a new version of its registered model: ``(run_id, version)``."""
        # MLflow writes "View run ... at <url>" to stdout when a run against a server ends; stdout is the
        # CLI's output (``train --json``), so its chatter goes to stderr with the logs.
        with contextlib.redirect_stdout(sys.stderr):
            return self._log_fit(bundle, metrics, tags)

    def _log_fit(self, bundle: ModelBundle, metrics: dict[str, float], tags: dict[str, str]) -> tuple[str, str]:
        mlflow = self.mlflow
        client = self.client()
        name = registered_name(bundle.query, bundle.model_name, bundle.shard)
        query = self.config.queries.get(bundle.query)
        params = {
            "query": bundle.query, "model": bundle.model_name, "config_hash": bundle.config_hash,
            "training_start": _iso(bundle.training_start), "training_end": _iso(bundle.training_end),
            "fit_window_seconds": bundle.training_end - bundle.training_start, "series": len(bundle.models),
        }
        if query is not None:
            params.update({"expr": query.expr[:500], "step_seconds": query.step, "direction": query.direction,
                           "min_deviation": query.min_deviation})
        params.update({f"model.{k}": v for k, v in sorted(bundle.params.items())})
        identity = {TAG_QUERY: bundle.query, TAG_MODEL: bundle.model_name, TAG_CONFIG_HASH: bundle.config_hash,
                    TAG_SHARD: str(bundle.shard[0]), TAG_SHARDS: str(bundle.shard[1])}
        run = client.create_run(self.experiment_id(), run_name=f"{bundle.query}-{bundle.model_name}",
                                tags={**identity, **tags})
        run_id = run.info.run_id
        try:
            client.log_batch(run_id, metrics=_metric_entities(mlflow, metrics),
                             params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in params.items()])
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "bundle.pkl"
                path.write_bytes(self.key.sign(pickle.dumps(bundle, protocol=pickle.HIGHEST_PROTOCOL)))
                model_uri, model_id = self._log_pyfunc(mlflow, run_id, path)
            version = client.create_model_version(name, model_uri, run_id=run_id, model_id=model_id,
                                                  tags={**identity, **tags})
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
        return run_id, str(version.version)

    def _log_pyfunc(self, mlflow, run_id: str, bundle_path: Path) -> tuple[str, str | None]:
        from detector.mlflow_model import BundlePythonModel, pip_requirements

        self._ensure_registered_model_dir()
        with self._active_run(mlflow, run_id):
            info = mlflow.pyfunc.log_model(name="model", python_model=BundlePythonModel(),
                                           artifacts={BUNDLE_ARTIFACT: str(bundle_path)},
                                           pip_requirements=pip_requirements())
        return info.model_uri, getattr(info, "model_id", None)

    def _ensure_registered_model_dir(self) -> None:
        if self.embedded:
            (self.state_dir / "mlflow" / "artifacts").mkdir(parents=True, exist_ok=True)

    def _active_run(self, mlflow, run_id: str):
        """``mlflow.start_run`` against this registry's tracking URI (log_model uses the fluent API)."""
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return mlflow.start_run(run_id=run_id, log_system_metrics=False)

    def ensure_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        client = self.client()
        try:
            client.get_registered_model(name)
        except MlflowException as err:
            if not _is_not_found(err):
                raise
            client.create_registered_model(name, tags={"boxwatch": "true"})

    def set_champion(self, name: str, version: str, *, manual: bool, reason: str) -> str | None:
        """Move ``champion`` to ``version``; the former champion becomes ``previous_champion``. Returns it."""
        client = self.client()
        current = self.champion_version(name)
        if current is not None and current.version == str(version):
            return current.version
        history = self.history(name)
        client.set_registered_model_alias(name, CHAMPION, str(version))
        if current is not None:
            client.set_registered_model_alias(name, PREVIOUS, current.version)
        history = [v for v in history if v != str(version)] + [str(version)]
        client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history[-HISTORY_KEEP:]))
        client.set_model_version_tag(name, str(version), TAG_MANUAL, "true" if manual else "false")
        client.set_model_version_tag(name, str(version), TAG_DECISION, "champion")
        client.set_model_version_tag(name, str(version), TAG_REASON, reason)
        return None if current is None else current.version

    def history(self, name: str) -> list[str]:
        tag = self.client().get_registered_model(name).tags.get(HISTORY_TAG, "")
        return [v for v in tag.split(",") if v]

    def rollback(self, name: str) -> tuple[str, str]:
        """Champion back to the previous champion: ``(from_version, to_version)``."""
        client = self.client()
        history = self.history(name)
        current = self.champion_version(name)
        if current is not None and history and history[-1] != current.version:
            history.append(current.version)  # moved by something other than boxwatch
        if len(history) < 2:
            raise ValueError(f"{name} has no previous champion to roll back to")
        old, target = history[-1], history[-2]
        history = history[:-1]
        client.set_registered_model_alias(name, CHAMPION, target)
        if len(history) >= 2:
            client.set_registered_model_alias(name, PREVIOUS, history[-2])
        else:
            client.delete_registered_model_alias(name, PREVIOUS)
        client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history))
        client.set_model_version_tag(name, old, TAG_DECISION, "rolled back")
        client.set_model_version_tag(name, old, TAG_REASON, f"rolled back by hand to v{target}")
        client.set_model_version_tag(name, target, TAG_MANUAL, "true")
        client.set_model_version_tag(name, target, TAG_REASON, f"champion again after a rollback from v{old}")
        return old, target

    # ------------------------------------------------------------------ the gate

    def register_fit(self, result: FitResult) -> tuple[Decision, ModelBundle]:
        """Validate, log and register the fit, promote it if it passes; return the decision and what serves
        (the fit, now versioned, or the champion it did not replace)."""
        bundle, units = result.bundle, result.units
        query = self.config.queries[bundle.query]
        name = registered_name(bundle.query, bundle.model_name, bundle.shard)
        self.ensure_model(name)
        champion_mv = self.champion_version(name)
        champion, refused = None, None
        if champion_mv is not None:
            try:
                champion = self.load_version(name, champion_mv.version, bundle.shard)
            except RejectedModel as err:  # not ours: the fit replaces it, whatever its validation
                refused = f"champion v{champion_mv.version} was refused: {err}"
        candidate_val, champion_val, false_positives = Validation(), None, None
        incidents = self._incidents(bundle.query)
        if units:
            split = split_point(bundle, query.step, self.settings)
            validation_models = fit_for_validation(bundle, units, split)
            # auto judges the published (calibrated) score; the older metrics keep the raw band score
            calibration = self.config.anomalies.calibration if self.settings.promotion.metric == "auto" else None
            candidate_val = validate_models(validation_models, units, split, query.direction,
                                            query.min_deviation, incidents, calibration)
            if champion is not None:
                champion_val = validate_models(champion.models, units, split, query.direction,
                                               query.min_deviation, incidents, calibration)
            false_positives = false_positive_counts(self.config, bundle.query, bundle.model_name, units, split,
                                                    validation_models, champion.models if champion else None)
        manual = champion is not None and champion_mv.tags.get(TAG_MANUAL) == "true"
        stale = champion is not None and champion.config_hash != bundle.config_hash
        promoted, reason = gate(candidate_val, champion_val if champion is not None else None, self.settings,
                                champion_mv.version if champion_mv else None, manual, stale, false_positives,
                                self.config.anomalies.calibration.target_rate)
        if refused is not None:
            promoted, reason = True, refused
        metrics = {"fit_seconds": bundle.fit_seconds, "series": float(len(bundle.models)),
                   **candidate_val.metrics()}
        if champion_val is not None:
            metrics.update(champion_val.metrics("champion_validation_"))
        if false_positives is not None:
            metrics["validation_false_positives"], metrics["champion_validation_false_positives"] = false_positives
        tags = {TAG_DECISION: "champion" if promoted else "challenger", TAG_REASON: reason}
        began = time.perf_counter()
        run_id, version = self.log_fit(bundle, metrics, tags)
        if promoted:
            self.set_champion(name, version, manual=False, reason=reason)
        log.info("registered a fit", extra=kv(
            name=name, version=version, promoted=promoted, reason=reason,
            seconds=round(time.perf_counter() - began, 3)))
        decision = Decision(bundle.query, name, version, promoted, reason,
                            champion_mv.version if champion_mv else None, metrics, run_id)
        if promoted or champion is None or stale:
            return decision, dataclasses.replace(bundle, version=version)
        return decision, champion

    def _incidents(self, alias: str) -> list[tuple[float, float]] | None:
        windows = self.settings.incidents.get(alias)
        if not windows:
            return None
        return [(pd.Timestamp(s).timestamp(), pd.Timestamp(e).timestamp()) for s, e in windows]


def _metric_entities(mlflow, metrics: dict[str, float]) -> list:
    now = int(time.time() * 1000)
    return [mlflow.entities.Metric(k, float(v), now, 0) for k, v in metrics.items()
            if v is not None and not math.isnan(float(v))]


def _is_not_found(err: Exception) -> bool:
    code = getattr(err, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(err).lower()


def _iso(ts: float) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").isoformat()


# --------------------------------------------------------------------------- serve integration


class RegistryHealth:
    """``boxwatch_detector_registry_up`` and ``..._errors_total``; logs once per state change."""

    def __init__(self) -> None:
        self.up: bool | None = None
        self.errors = 0
        self._lock = threading.Lock()

    def ok(self) -> None:
        with self._lock:
            if self.up is False:
                log.info("model registry is reachable again")
            self.up = True

    def failed(self, what: str, err: BaseException) -> None:
        with self._lock:
            self.errors += 1
            if self.up is not False:
                log.error("model registry is unreachable; serving the models at hand",
                          extra=kv(during=what, error=f"{type(err).__name__}: {err}"[:500]))
            self.up = False


class RegistryCollector:
    def __init__(self, health: RegistryHealth):
        self._health = health

    def describe(self) -> list:
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily("boxwatch_detector_registry_up",
                                "1 if the last request to the model registry succeeded, else 0.",
                                value=float(bool(self._health.up)))
        yield CounterMetricFamily("boxwatch_detector_registry_errors",
                                  "Requests to the model registry that failed.", value=self._health.errors)


class RegistrySink:
    """The fit hook: register and gate every fit; serve what the gate says, saved in the local store.

    When the registry is unreachable the query keeps the bundle it serves (the local cache);
    only a query with nothing to serve gets the fresh fit, unversioned.
    """

    def __init__(self, registry: Registry, store: LocalStore, health: RegistryHealth):
        self.registry = registry
        self.store = store
        self.health = health

    def __call__(self, result: FitResult) -> ModelBundle:
        return self.register(result)[1]

    def register(self, result: FitResult) -> tuple[Decision | None, ModelBundle]:
        """The gate's decision on the fit (``None`` when the registry failed) and the bundle to serve."""
        bundle = result.bundle
        try:
            decision, served = self.registry.register_fit(result)
        except registry_errors() as err:
            self.health.failed("register fit", err)
            cached = self.store.load(bundle.query)
            if cached is not None and cached.config_hash == bundle.config_hash:
                return None, cached
            return None, self.store.save(bundle)
        self.health.ok()
        return decision, self.store.save(served)


class ChampionWatcher:
    """Installs each query's champion in the running service when the alias moves.

    Checks at start, every ``poll_interval`` (default: the shortest ``fit_every``; at most a
    minute apart while the registry is unreachable), and when :meth:`sync` is called
    (``POST /api/v1/models/reload``).
    """

    def __init__(self, registry: Registry, store: LocalStore, health: RegistryHealth):
        self.registry = registry
        self.store = store
        self.health = health
        self.detector: Detector | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._sync_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, detector: Detector) -> None:
        self.detector = detector
        self.registry.shard = detector.shard
        self._thread = threading.Thread(target=self._loop, name="registry-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def interval(self) -> float:
        config = self.detector.config if self.detector else self.registry.config
        if config.registry.poll_interval:
            return config.registry.poll_interval
        return min((q.fit_every for q in config.queries.values()), default=3600.0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as err:  # e.g. a store mid-migration: the watcher must outlive it and try again
                self.health.failed("check champions", err)
            wait = self.interval() if self.health.up else min(self.interval(), RETRY_SECONDS)
            self._wake.wait(wait)
            self._wake.clear()

    def sync(self) -> dict[str, Any]:
        """Install every champion that differs from what serves; report what changed or failed."""
        detector = self.detector
        if detector is None:
            return {"installed": [], "error": "not started"}
        with self._sync_lock:
            serving = {alias: version for alias, _model, version in detector.model_info()}
            installed, errors = [], []
            for alias in list(detector.config.queries):
                try:
                    bundle = self._champion_if_new(alias, serving.get(alias))
                except RejectedModel as err:
                    errors.append(f"{alias}: {err}")
                    continue
                except registry_errors() as err:
                    self.health.failed("load champion", err)
                    return {"installed": installed, "error": f"{type(err).__name__}: {err}"[:500]}
                if bundle is None:
                    continue
                if detector.install_bundle(bundle):
                    self.store.save(bundle)
                    installed.append({"query": alias, "version": bundle.version})
                    log.info("serving a new champion", extra=kv(query=alias, version=bundle.version))
                else:
                    errors.append(f"{alias}: champion v{bundle.version} was fitted for another configuration")
            self.health.ok()
            return {"installed": installed, "errors": errors}

    def _champion_if_new(self, alias: str, serving: str | None) -> ModelBundle | None:
        model, _ = self.registry.config.model_for(alias) if alias in self.registry.config.queries else (None, None)
        if self.detector is not None:
            model, _ = self.detector.config.model_for(alias)
        name = self.registry.name(alias, model)
        mv = self.registry.champion_version(name)
        if mv is None or mv.version == serving:
            return None
        return self.registry.load_version(name, mv.version)


OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/models/reload": {"post": {
        "summary": "Check the registry now and serve each query's champion if the alias moved.",
        "responses": {"200": {"description": "The versions installed ({query, version}) and any errors."},
                      "503": {"description": "The model registry is unreachable; the served models are kept."}}}},
}
"""The routes of :func:`blueprint`, for the app's OpenAPI document."""


def blueprint(watcher: ChampionWatcher):
    """``POST /api/v1/models/reload``: check the registry now."""
    from flask import Blueprint, jsonify

    routes = Blueprint("registry", __name__)

    @routes.post("/api/v1/models/reload")
    def reload_models():
        result = watcher.sync()
        status = 200 if "error" not in result else 503
        return jsonify({"status": "success" if status == 200 else "error", **result}), status

    return routes
