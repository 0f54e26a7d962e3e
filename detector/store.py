"""Fitted models of one query (a :class:`ModelBundle`) and the local cache of what serves.

The service hands every fit to one hook, a :data:`FitSink`: a callable that takes the
:class:`FitResult` (the new bundle and the frames it was fitted on) and returns the bundle to
serve. The default, :meth:`LocalStore.save_fit`, persists the new bundle and serves it. A
registry replaces that hook (log the run, gate promotion, return the champion, which is then
saved locally) without touching the service.

On start the service loads bundles from the :class:`LocalStore`, so a restart scores at
once instead of refitting everything. Files are written atomically (temp file, fsync,
rename), and a JSON index describes them without unpickling.

Model files are pickles, and unpickling runs code: every model file the detector writes (here
and in the registry) is signed with an HMAC-SHA256 of its bytes under a key only the service
user can read (:class:`ModelKey`), and is unpickled only after the signature checks out and the
file is owned by the service user (or root) and not writable by group or others. A file that
fails is refused, logged and counted (``boxwatch_detector_rejected_models_total``), never loaded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import pickle
import secrets
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boxwatch.files import atomic_write
from boxwatch.log import kv
from detector.models.base import Model

log = logging.getLogger("boxwatch.detector.store")

SeriesKey = tuple[tuple[str, str], ...]
FORMAT_VERSION = 1
SIGNATURE_MAGIC = b"boxwatch-model hmac-sha256 "
"""A signed model file: this magic, the hex HMAC-SHA256 of the payload, a newline, the payload."""
KEY_BYTES = 32


# --------------------------------------------------------------------------- integrity


class UntrustedModel(Exception):
    """A model file that must not be unpickled: unsigned, mis-signed, or owned/writable by someone else."""


class ModelFileStats:
    """Process-wide counts for ``/metrics``: model files refused (by source) and failed state writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rejected: dict[str, int] = {"store": 0, "registry": 0}
        self.persist_errors = 0

    def reject(self, source: str) -> None:
        with self._lock:
            self.rejected[source] = self.rejected.get(source, 0) + 1

    def persist_failed(self) -> None:
        with self._lock:
            self.persist_errors += 1

    def copy(self) -> tuple[dict[str, int], int]:
        with self._lock:
            return dict(self.rejected), self.persist_errors


STATS = ModelFileStats()


def model_file_families():
    """``boxwatch_detector_rejected_models_total{source}`` and ``boxwatch_detector_persist_errors_total``."""
    from prometheus_client.core import CounterMetricFamily

    rejected, persist_errors = STATS.copy()
    family = CounterMetricFamily("boxwatch_detector_rejected_models",
                                 "Model files refused before unpickling (unsigned, mis-signed, foreign owner or "
                                 "writable by others), by where they came from.", labels=["source"])
    for source, count in sorted(rejected.items()):
        family.add_metric([source], count)
    yield family
    yield CounterMetricFamily("boxwatch_detector_persist_errors",
                              "Writes to the state directory that failed (disk full, read-only, permissions).",
                              value=persist_errors)


def check_owner(path: Path) -> None:
    """Raise :class:`UntrustedModel` unless ``path`` is owned by this user (or root) and not group/other-writable."""
    info = path.stat()  # follows symlinks: a Kubernetes Secret's file is a link into ..data/
    if info.st_uid not in (os.geteuid(), 0):
        raise UntrustedModel(f"{path} is owned by uid {info.st_uid}, not by the service user (uid {os.geteuid()})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedModel(f"{path} is writable by group or others (mode {stat.filemode(info.st_mode)})")


class ModelKey:
    """The HMAC key that signs model files: ``path`` (created with mode 0600 on first use).

    Replicas that share a registry share the key (``model_key_file``: e.g. a Kubernetes Secret);
    a key that is not the service user's, or that group or others can read or write, is refused.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._key: bytes | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_config(cls, state_dir: str | os.PathLike, key_file: str | None = None) -> ModelKey:
        return cls(key_file or Path(state_dir) / "model.key")

    def key(self) -> bytes:
        with self._lock:
            if self._key is None:
                self._key = self._load_or_create()
            return self._key

    def _load_or_create(self) -> bytes:
        try:
            return self._read()
        except FileNotFoundError:
            pass
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first
            return self._read()
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(KEY_BYTES) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        log.info("created the model signing key", extra=kv(path=str(self.path)))
        return self._read()

    def _read(self) -> bytes:
        check_owner(self.path)
        mode = self.path.stat().st_mode
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            raise UntrustedModel(f"the model key {self.path} is readable by others (mode {stat.filemode(mode)})")
        text = self.path.read_text().strip()
        if len(text) < 32:
            raise UntrustedModel(f"the model key {self.path} is too short (at least 32 characters)")
        return text.encode()

    def sign(self, payload: bytes) -> bytes:
        """``payload`` as a signed model file."""
        digest = hmac.new(self.key(), payload, hashlib.sha256).hexdigest().encode()
        return SIGNATURE_MAGIC + digest + b"\n" + payload

    def verify(self, data: bytes, what: str = "model file") -> bytes:
        """The payload of a signed model file; :class:`UntrustedModel` if it is unsigned or mis-signed."""
        payload = signed_payload(data, what)
        digest = data[len(SIGNATURE_MAGIC):len(SIGNATURE_MAGIC) + 64]
        expected = hmac.new(self.key(), payload, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(digest, expected):
            raise UntrustedModel(f"{what} has a wrong signature (not written by a detector holding this key)")
        return payload

    def load(self, path: Path, what: str | None = None) -> Any:
        """Unpickle the signed model file ``path`` after checking its owner, mode and signature."""
        check_owner(path)
        return pickle.loads(self.verify(path.read_bytes(), what or str(path)))


def signed_payload(data: bytes, what: str = "model file") -> bytes:
    """The payload of a signed model file, without checking the signature (for readers that hold no key)."""
    header = len(SIGNATURE_MAGIC) + 64
    if not data.startswith(SIGNATURE_MAGIC) or data[header:header + 1] != b"\n":
        raise UntrustedModel(f"{what} is not signed")
    return data[header + 1:]


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
    shard: tuple[int, int] = (0, 1)
    """The replica's shard (index, total) whose series the models cover."""
    validation: dict[str, float] = field(default_factory=dict)
    fit_seconds: float = 0.0
    calibration: dict[SeriesKey, Any] = field(default_factory=dict, repr=False, compare=False)
    """Per unit, the score calibration (:class:`detector.calibration.Calibration`) as it was when the
    bundle was saved, so a restart keeps what each series' scores have taught it."""
    fit_peak_rss_bytes: int | None = field(default=None, compare=False)
    """Peak resident memory of the child process the models were fitted in (``None``: fitted in process)."""

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
            "shard": f"{self.shard[0]}/{self.shard[1]}",
            "validation": self.validation,
            "fit_seconds": self.fit_seconds,
            "series": len(self.models),
        }


@dataclass(frozen=True)
class FitResult:
    """A fresh fit as the service hands it to the :data:`FitSink`: the bundle and its training data.

    ``units`` maps each series key to the frame its model was fitted on; a sink validates on it (the
    registry) or keeps a sample of it (drift). It lives for the hand-over only and is never persisted.
    """

    bundle: ModelBundle
    units: Mapping[SeriesKey, Any]

    def same_fit(self, bundle: ModelBundle) -> bool:
        """Whether ``bundle`` is this fit (perhaps since versioned by a registry), so was fitted on ``units``:
        the same query, model, configuration, shard, training window and fit time."""
        mine = self.bundle
        return (bundle.query, bundle.model_name, bundle.config_hash, tuple(bundle.shard), bundle.training_start,
                bundle.training_end, bundle.fitted_at) == (
            mine.query, mine.model_name, mine.config_hash, tuple(mine.shard), mine.training_start,
            mine.training_end, mine.fitted_at)


FitSink = Callable[[FitResult], ModelBundle]
"""Takes a fresh fit, returns the bundle to serve (by default the new one)."""


class LocalStore:
    """Bundles on disk under ``<state_dir>/models``: one signed pickle per query plus ``index.json``.

    ``key_file``: the signing key (default ``<state_dir>/model.key``, see :class:`ModelKey`).
    """

    def __init__(self, state_dir: str | os.PathLike, key_file: str | os.PathLike | None = None):
        self.root = Path(state_dir) / "models"
        self.key = ModelKey(key_file or Path(state_dir) / "model.key")
        self._lock = threading.Lock()

    def save(self, bundle: ModelBundle) -> ModelBundle:
        """Persist ``bundle`` atomically and return it."""
        with self._lock:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                STATS.persist_failed()
                log.error("cannot write to the state directory", extra=kv(path=str(self.root), error=err))
                raise
            payload = pickle.dumps({"format": FORMAT_VERSION, "bundle": bundle}, protocol=pickle.HIGHEST_PROTOCOL)
            write_state_file(self._path(bundle.query), self.key.sign(payload))
            index = self._read_index()
            index[bundle.query] = bundle.summary()
            write_state_file(self.root / "index.json", json.dumps(index, indent=1, sort_keys=True).encode())
        return bundle

    def save_fit(self, result: FitResult) -> ModelBundle:
        """The default :data:`FitSink`: persist the new bundle and serve it."""
        return self.save(result.bundle)

    def load(self, query: str) -> ModelBundle | None:
        """The persisted bundle of ``query``, or ``None`` when there is none or it cannot be trusted or read."""
        path = self._path(query)
        if not path.exists():
            return None
        try:
            data = self.key.load(path)
        except UntrustedModel as err:
            STATS.reject("store")
            log.error("refusing a model file that this detector did not write; it will be refitted",
                      extra=kv(query=query, path=str(path), reason=str(err)))
            return None
        except Exception as err:  # a corrupt or incompatible file must not stop the service: refit instead
            log.warning("cannot load persisted models; they will be refitted",
                        extra=kv(query=query, path=str(path), error=err))
            return None
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            log.warning("persisted models have an unknown format; they will be refitted",
                        extra=kv(query=query, path=str(path)))
            return None
        return data["bundle"]

    def delete(self, query: str) -> None:
        with self._lock:
            self._path(query).unlink(missing_ok=True)
            index = self._read_index()
            if index.pop(query, None) is not None:
                write_state_file(self.root / "index.json", json.dumps(index, indent=1, sort_keys=True).encode())

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
            log.warning("models index is corrupt; rewriting it", extra=kv(path=str(self.root)))
            return {}


def write_state_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (mode 0600); a failure is counted as a persist error."""
    try:
        atomic_write(path, data)
    except OSError as err:
        STATS.persist_failed()
        log.error("cannot write to the state directory", extra=kv(path=str(path), error=err))
        raise
