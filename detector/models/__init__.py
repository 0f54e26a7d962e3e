"""Models by name. A new model is one new module and one line in ``MODELS``.

Entries are import paths so that ``import detector.models`` stays cheap: statsmodels and
scikit-learn load only when a model that needs them is used.
"""

from __future__ import annotations

import importlib

from detector.models.base import Model

MODELS: dict[str, str] = {
    "robust": "detector.models.robust:RobustModel",
    "seasonal": "detector.models.seasonal:SeasonalModel",
    "iforest": "detector.models.iforest:IsolationForestModel",
    "peer": "detector.models.peer:PeerModel",
    "ensemble": "detector.models.ensemble:EnsembleModel",
    "context": "detector.models.context:ContextModel",
}


def model_class(name: str) -> type[Model]:
    """The model class registered as ``name``; ``KeyError`` names the known models."""
    try:
        path = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def make_model(name: str, params: dict | None = None) -> Model:
    return model_class(name)(**(params or {}))
