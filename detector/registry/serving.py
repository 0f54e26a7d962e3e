"""The registry inside ``serve``: the fit hook that gates every fit, the thread that installs new
champions, and the registry's health on ``/metrics``."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from boxwatch.log import kv
from detector.registry.gate import Decision, register_fit
from detector.registry.mlflow_store import Registry, RejectedModel, registry_errors
from detector.store import FitResult, LocalStore, ModelBundle

if TYPE_CHECKING:
    from detector.service import Detector

log = logging.getLogger("boxwatch.detector.registry")


RETRY_SECONDS = 60.0  # while the registry is unreachable, serve checks it at least this often


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


def registry_families(health: RegistryHealth):
    """``boxwatch_detector_registry_up`` and ``boxwatch_detector_registry_errors_total``, for ``/metrics``."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield GaugeMetricFamily("boxwatch_detector_registry_up",
                            "1 if the last request to the model registry succeeded, else 0.",
                            value=float(bool(health.up)))
    yield CounterMetricFamily("boxwatch_detector_registry_errors",
                              "Requests to the model registry that failed.", value=health.errors)


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
            decision, served = register_fit(self.registry, result)
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
            if installed:  # the champions live long, the bundles they replaced are garbage
                detector.settle_memory()
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
