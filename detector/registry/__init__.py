"""The MLflow model registry: every fit is a run and a model version; the alias ``champion`` serves.

A fit goes through a promotion gate: the version whose validation is no worse than the champion's
(the rule in ``registry.promotion``) takes the alias ``champion``; otherwise it stays a challenger and
the reason is a tag of its run and of its version (see docs/registry.md).

By concern:

- :mod:`~detector.registry.evaluation`: the held-out validation of a fit (rates, NAB scores);
- :mod:`~detector.registry.gate`: the promotion policy and :func:`register_fit`, which applies it and
  returns the :class:`Decision`;
- :mod:`~detector.registry.mlflow_store`: the MLflow adapter (runs, versions, aliases, signed bundles);
- :mod:`~detector.registry.serving`: what ``serve`` runs (the fit hook, the champion watcher, health);
- :mod:`~detector.registry.api`: the HTTP route ``serve`` attaches.

``mlflow`` (~3 s to import) loads only when the registry is first used, never at import.
"""

from detector.registry.api import OPENAPI_PATHS, blueprint
from detector.registry.evaluation import (
    Validation,
    fit_for_validation,
    nab_score,
    split_point,
    validate_models,
)
from detector.registry.gate import Decision, gate, register_fit
from detector.registry.mlflow_store import (
    CHAMPION,
    PREVIOUS,
    Registry,
    RegistryUnavailable,
    RejectedModel,
    VersionRef,
    default_tracking_uri,
    import_mlflow,
    registered_name,
    registry_errors,
)
from detector.registry.serving import ChampionWatcher, RegistryHealth, RegistrySink, registry_families

__all__ = [
    "CHAMPION", "OPENAPI_PATHS", "PREVIOUS", "ChampionWatcher", "Decision", "Registry", "RegistryHealth",
    "RegistrySink", "RegistryUnavailable", "RejectedModel", "Validation", "VersionRef", "blueprint",
    "default_tracking_uri", "fit_for_validation", "gate", "import_mlflow", "nab_score", "register_fit",
    "registered_name", "registry_errors", "registry_families", "split_point", "validate_models",
]
