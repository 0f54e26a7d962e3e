"""The MLflow adapter: every fit is a run and a model version; the alias ``champion`` serves.

Layout (see docs/registry.md): one experiment (``registry.experiment``) holds a run per fit,
with the query, model, window, config hash and model parameters as params, and the fit time
and validation results as metrics. The fitted :class:`~detector.store.ModelBundle` is the
run's model, logged as an MLflow pyfunc (``mlflow.pyfunc.load_model(uri).predict(frame)``
scores a frame), and becomes a version of the registered model ``boxwatch.<query>.<model>``.

The alias ``champion`` is moved by :meth:`Registry.set_champion` (the gate, or ``promote``) and
:meth:`Registry.rollback`. The registered model's tag ``boxwatch.champion_history`` keeps the
champions in order, so ``rollback`` can step back; the alias ``previous_champion`` names the one
before the current champion.

``mlflow`` (~3 s to import) is imported only here, lazily, on the fit and registry paths: never
at start-up of ``serve`` or on the scoring path.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from boxwatch.log import kv
from detector.config import DetectorConfig
from detector.store import STATS, ModelBundle, ModelKey, UntrustedModel, check_owner

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


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class VersionRef:
    """A registered model version as boxwatch needs it (MLflow's entity types ``version`` as int or str)."""

    version: str
    tags: dict[str, str]


class Registry:
    """MLflow client for boxwatch: log fits as runs and versions, load them, move the ``champion`` alias
    (the gate that decides when is :func:`detector.registry.gate.register_fit`)."""

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
        self._load_lock = threading.Lock()  # one download and check of a cached bundle at a time; guards _refused

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
        # The serving loop and a fit's registration may load the same version at once: one downloads
        # and checks it, the other then finds it cached, or refused (a refused file is deleted).
        with self._load_lock:
            return self._load_version(name, version, shard)

    def _load_version(self, name: str, version: str, shard: tuple[int, int]) -> ModelBundle:
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
        except UntrustedModel as err:  # under the load lock: a version gets here once, then is refused above
            self._refused[(name, version)] = str(err)
            STATS.reject("registry")
            log.error("refusing a registered model version", extra=kv(name=name, version=version, reason=str(err)))
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


def _metric_entities(mlflow, metrics: dict[str, float]) -> list:
    now = int(time.time() * 1000)
    return [mlflow.entities.Metric(k, float(v), now, 0) for k, v in metrics.items()
            if v is not None and not math.isnan(float(v))]


def _is_not_found(err: Exception) -> bool:
    code = getattr(err, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(err).lower()


def _iso(ts: float) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").isoformat()
