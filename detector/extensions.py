"""How optional components (a model registry, drift reports) plug into ``serve``.

A component registers a factory in :data:`EXTENSIONS`. At start, ``serve`` calls each
factory with the configuration; a factory returns an :class:`Extension` (or ``None`` when
its section is disabled). The service then:

* wraps its fit sink: ``sink = ext.wrap_fit_sink(sink)`` — every fit result goes through
  it, and the bundle it returns is what serves (and is saved in the local store);
* loads the serving bundle of each query with ``ext.load_bundle`` when given (else the
  local store's copy);
* registers ``ext.collectors`` on ``/metrics`` and ``ext.blueprints`` on the Flask app;
* calls ``ext.start(detector)`` after the service started (e.g. a thread that watches for a
  new champion and calls ``detector.install_bundle``) and ``ext.stop()`` at shutdown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from detector.config import DetectorConfig
from detector.store import FitSink, LocalStore, ModelBundle

if TYPE_CHECKING:
    from detector.service import Detector


@dataclass
class Extension:
    name: str
    wrap_fit_sink: Callable[[FitSink, LocalStore], FitSink] | None = None
    load_bundle: Callable[[str], ModelBundle | None] | None = None
    collectors: list[Any] = field(default_factory=list)
    blueprints: list[Any] = field(default_factory=list)
    start: Callable[[Detector], None] = lambda detector: None
    stop: Callable[[], None] = lambda: None


ExtensionFactory = Callable[[DetectorConfig], "Extension | None"]
EXTENSIONS: list[ExtensionFactory] = []
BUILTIN = ("detector.registry:extension", "detector.drift:extension")
"""Factories shipped with boxwatch, as import paths: each module loads only when ``serve`` starts."""


def load_extensions(config: DetectorConfig) -> list[Extension]:
    import importlib

    factories = [getattr(importlib.import_module(path.partition(":")[0]), path.partition(":")[2])
                 for path in BUILTIN]
    return [ext for factory in (*factories, *EXTENSIONS) if (ext := factory(config)) is not None]
