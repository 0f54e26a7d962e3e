"""The MLflow pyfunc flavour of a :class:`~detector.store.ModelBundle` (imports mlflow: fit path only).

``mlflow.pyfunc.load_model("models:/boxwatch.<query>.<model>@champion").predict(frame)`` scores
``frame`` (a ``DatetimeIndex`` or a ``timestamp`` column in unix seconds or RFC 3339, and the
model's input columns: ``value`` for a univariate model, the features for a multivariate one)
with a copy of one series' fitted model, online as the service does. ``params={"series":
{"label": "value", ...}}`` picks the series; by default the bundle's first one.
"""

from __future__ import annotations

import copy
import pickle
from importlib import metadata
from typing import Any

import mlflow.pyfunc
import pandas as pd

from detector.store import signed_payload

REQUIREMENTS = ("numpy", "pandas", "scikit-learn", "statsmodels", "cloudpickle", "mlflow")


def pip_requirements() -> list[str]:
    """Pinned requirements of the logged model (given explicitly: inferring them costs seconds)."""
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


class BundlePythonModel(mlflow.pyfunc.PythonModel):
    """Loads ``bundle.pkl`` from the model's artifacts and scores frames with it."""

    def load_context(self, context) -> None:
        # The detector checks the file's signature with its key before it unpickles it; loading through
        # mlflow.pyfunc is a choice of whoever calls it, like loading any pickled model, and needs no key.
        with open(context.artifacts["bundle"], "rb") as handle:
            self.bundle = pickle.loads(signed_payload(handle.read(), "bundle.pkl"))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from detector.scoring import score_online

        frame = _indexed(model_input)
        wanted = (params or {}).get("series")
        models = self.bundle.models
        if not models:
            raise ValueError("the bundle has no fitted series")
        if wanted:
            key = tuple(sorted((str(k), str(v)) for k, v in dict(wanted).items()))
            if key not in models:
                raise ValueError(f"no fitted series with labels {dict(key)}")
        else:
            key = next(iter(models))
        columns = [c for c in frame.columns if c != "timestamp"]
        result = score_online(copy.deepcopy(models[key]), frame[columns])
        return result.reset_index(names="timestamp")


def _indexed(frame: pd.DataFrame) -> pd.DataFrame:
    if isinstance(frame.index, pd.DatetimeIndex):
        return frame if frame.index.tz is not None else frame.tz_localize("UTC")
    if "timestamp" not in frame:
        raise ValueError("the input needs a DatetimeIndex or a 'timestamp' column")
    stamps = frame["timestamp"]
    index = (pd.to_datetime(stamps, unit="s", utc=True) if pd.api.types.is_numeric_dtype(stamps)
             else pd.to_datetime(stamps, utc=True))
    return frame.drop(columns="timestamp").set_index(pd.DatetimeIndex(index))
