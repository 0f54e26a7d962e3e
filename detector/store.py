"""Fitted models of one query (a :class:`ModelBundle`) and the local cache of what serves.

The service hands every fit result to one hook, a :data:`FitSink`: a callable that takes
the new bundle and returns the bundle to serve. The default, :meth:`LocalStore.save`,
persists it and serves it. A registry can wrap that hook (log the run, gate promotion,
return the champion, which is then saved locally) without touching the service.

On start the service loads bundles from the :class:`LocalStore`, so a restart scores at
once instead of refitting everything. Files are written atomically (temp file, fsync,
rename), and a JSON index describes them without unpickling.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector.models.base import Model

log = logging.getLogger("boxwatch.detector.store")

SeriesKey = tuple[tuple[str, str], ...]
FORMAT_VERSION = 1


@dataclass
class ModelBundle:
    """Every fitted model of one query, with what is needed to judge and reproduce the fit.

    ``models`` maps a series key (sorted label pairs; for a multivariate model the entity's
    ``group_by`` labels) to its fitted model. ``version`` is set by a registry; ``None``
    means a local fit that no registry has seen.
    """

    query: str
    model_name: str
    models: dict[SeriesKey, Model]
    params: dict[str, Any]
    config_hash: str
    training_start: float
    training_end: float
    fitted_at: float
    version: str | None = None
    validation: dict[str, float] = field(default_factory=dict)
    fit_seconds: float = 0.0
    calibration: dict[SeriesKey, Any] = field(default_factory=dict, repr=False, compare=False)
    """Per unit, the score calibration (:class:`detector.calibration.Calibration`) as it was when the
    bundle was saved, so a restart keeps what each series' scores have taught it."""
    training_units: dict[SeriesKey, Any] | None = field(default=None, repr=False, compare=False)
    """The frames the models were fitted on, for the fit sink (validation, drift reference) only:
    kept in memory for the duration of the hand-over and never persisted (see ``__getstate__``)."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["training_units"] = None
        return state

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no models): for the index and ``GET /api/v1/models``."""
        return {
            "query": self.query,
            "model": self.model_name,
            "params": self.params,
            "config_hash": self.config_hash,
            "training_start": self.training_start,
            "training_end": self.training_end,
            "fitted_at": self.fitted_at,
            "version": self.version,
            "validation": self.validation,
            "fit_seconds": self.fit_seconds,
            "series": len(self.models),
        }


FitSink = Callable[[ModelBundle], ModelBundle]
"""Takes a freshly fitted bundle, returns the bundle to serve (the same one by default)."""


class LocalStore:
    """Bundles on disk under ``<state_dir>/models``: one pickle per query plus ``index.json``."""

    def __init__(self, state_dir: str | os.PathLike):
        self.root = Path(state_dir) / "models"
        self._lock = threading.Lock()

    def save(self, bundle: ModelBundle) -> ModelBundle:
        """Persist ``bundle`` atomically and return it (so it is also a :data:`FitSink`)."""
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            payload = pickle.dumps({"format": FORMAT_VERSION, "bundle": bundle}, protocol=pickle.HIGHEST_PROTOCOL)
            _atomic_write(self._path(bundle.query), payload)
            index = self._read_index()
            index[bundle.query] = bundle.summary()
            _atomic_write(self.root / "index.json", json.dumps(index, indent=1, sort_keys=True).encode())
        return bundle

    def load(self, query: str) -> ModelBundle | None:
        """The persisted bundle of ``query``, or ``None`` when there is none or it cannot be read."""
        path = self._path(query)
        if not path.exists():
            return None
        try:
            data = pickle.loads(path.read_bytes())
        except Exception as err:  # a corrupt or incompatible file must not stop the service: refit instead
            log.warning("cannot load persisted models; they will be refitted",
                        extra={"fields": {"query": query, "path": str(path), "error": err}})
            return None
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            log.warning("persisted models have an unknown format; they will be refitted",
                        extra={"fields": {"query": query, "path": str(path)}})
            return None
        return data["bundle"]

    def delete(self, query: str) -> None:
        with self._lock:
            self._path(query).unlink(missing_ok=True)
            index = self._read_index()
            if index.pop(query, None) is not None:
                _atomic_write(self.root / "index.json", json.dumps(index, indent=1, sort_keys=True).encode())

    def index(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return self._read_index()

    def _path(self, query: str) -> Path:
        return self.root / f"{query}.pkl"

    def _read_index(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads((self.root / "index.json").read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("models index is corrupt; rewriting it", extra={"fields": {"path": str(self.root)}})
            return {}


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
