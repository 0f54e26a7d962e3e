"""Robust band plus Isolation Forest on one series: the combination boxwatch's NAB result is for."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from detector.models.base import Model, empty_scores, float32_at_most, robust_standardisation
from detector.models.robust import RobustModel

FOREST_MIN_POINTS = 50


class EnsembleModel(Model):
    """A robust median/MAD band and an Isolation Forest over the value and its change, combined.

    The robust model gives the band (``expected``, ``lower``, ``upper``) and catches level
    shifts and spikes against the recent past; the forest (on the value and its first
    difference, standardised) catches changes of shape the band is too wide for. The raw
    score is the larger of the two scores (each > 1 means anomalous for that model), so the
    ensemble flags what either flags; the service's calibration then sets, per series, how
    rare a raw score must be to alert.

    Parameters
    ----------
    window, k, min_points, min_scale :
        The robust model's (:class:`~detector.models.robust.RobustModel`).
    n_estimators, max_samples, threshold_quantile, margin, z_limit, random_state :
        The forest's (:class:`~detector.models.iforest.IsolationForestModel`).

    Attributes
    ----------
    robust_ : RobustModel
    forest_ : FlatForest or None
        The fitted forest (None before ``FOREST_MIN_POINTS`` rows of history).
    center_, scale_ : numpy.ndarray
        Robust standardisation (median, 1.4826 MAD) of the value and its change.
    baseline_, threshold_ : float
        Training median of the forest's anomaly measure, and the measure that scores 1.
    last_value_ : float
        Last value seen, for the next change.

    Examples
    --------
    >>> idx = pd.date_range("2026-01-01", periods=400, freq="min", tz="UTC")
    >>> rng = np.random.default_rng(0)
    >>> model = EnsembleModel().fit(pd.DataFrame({"value": 10 + rng.normal(0, 1, 400)}, index=idx))
    >>> spike = pd.DataFrame({"value": [40.0]}, index=idx[-1:] + pd.Timedelta("1min"))
    >>> bool(model.score(spike).score.iloc[0] > 1)
    True
    """

    name = "ensemble"
    fit_imports = ("sklearn",)

    def __init__(self, window: int = 360, k: float = 5.0, min_points: int = 10, min_scale: float = 0.01,
                 n_estimators: int = 50, max_samples: int = 256, threshold_quantile: float = 0.995,
                 margin: float = 1.2, z_limit: float = 8.0, random_state: int | None = 0):
        self.window = window
        self.k = k
        self.min_points = min_points
        self.min_scale = min_scale
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.threshold_quantile = threshold_quantile
        self.margin = margin
        self.z_limit = z_limit
        self.random_state = random_state

    def fit(self, history: pd.DataFrame) -> EnsembleModel:
        from sklearn.ensemble import IsolationForest

        values = history["value"].to_numpy(dtype=float)
        self.robust_ = RobustModel(self.window, self.k, self.min_points, self.min_scale).fit(history[["value"]])
        self.last_value_ = float(values[-1]) if len(values) else math.nan
        self.forest_ = None
        features = _features(values, np.concatenate([[np.nan], values[:-1]]))
        features = features[~np.isnan(features).any(axis=1)]
        if len(features) < FOREST_MIN_POINTS:
            return self
        self.center_, self.scale_ = robust_standardisation(features)
        standard = (features - self.center_) / self.scale_
        forest = IsolationForest(n_estimators=self.n_estimators, max_samples=min(self.max_samples, len(standard)),
                                 random_state=self.random_state).fit(standard)
        self.forest_ = FlatForest(forest)
        measure = self.forest_.measure(standard)
        self.baseline_ = float(np.median(measure))
        quantile = float(np.quantile(measure, self.threshold_quantile))
        self.threshold_ = self.baseline_ + self.margin * max(quantile - self.baseline_, 1e-6)
        return self

    def _forest_scores(self, values: np.ndarray) -> np.ndarray:
        if self.forest_ is None:
            return np.zeros(len(values))
        previous = np.concatenate([[self.last_value_], values[:-1]])
        previous = np.where(np.isnan(previous), values, previous)
        standard = (_features(values, previous) - self.center_) / self.scale_
        measure = self.forest_.measure(np.nan_to_num(standard))
        forest = np.maximum(0.0, (measure - self.baseline_) / (self.threshold_ - self.baseline_))
        score = np.maximum(forest, np.abs(standard).max(axis=1) / self.z_limit)
        return np.where(np.isnan(standard).any(axis=1), np.nan, score)

    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()
        if frame.empty:
            return empty_scores(frame.index)
        out = self.robust_.score(frame[["value"]])
        band = out["score"].to_numpy(dtype=float)
        forest = self._forest_scores(frame["value"].to_numpy(dtype=float))
        out["score"] = np.where(np.isnan(band), np.nan, np.fmax(band, forest))
        return out

    def learn(self, frame: pd.DataFrame) -> None:
        self._check_fitted()
        self.robust_.learn(frame[["value"]])
        values = frame["value"].to_numpy(dtype=float)
        if len(values) and not np.isnan(values[-1]):
            self.last_value_ = float(values[-1])


def _features(values: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The value and its change since the previous one."""
    return np.column_stack([values, values - previous])


def _average_path_length(n: np.ndarray) -> np.ndarray:
    """Average path length of an unsuccessful search in a binary tree of ``n`` points."""
    n = np.asarray(n, dtype=float)
    out = np.where(n == 2, 1.0, 0.0)
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


class FlatForest:
    """A fitted ``IsolationForest`` as flat arrays, walked for all trees at once.

    scikit-learn walks the trees one at a time from Python: ~20 ms for one row with 50 trees,
    which is most of a scoring cycle. Here every tree advances one level per numpy step, so a
    row costs a few array operations per tree level. ``measure`` is ``-score_samples``.

    Node ids and features are kept in the smallest integer dtypes that hold them and thresholds in
    ``float32`` (rounded down: a row is compared as ``float32``, so every comparison comes out as with
    scikit-learn's ``float64`` threshold); nothing of scikit-learn is kept, so scoring does not import it.
    """

    def __init__(self, forest):
        lefts, rights, features, thresholds, leaf_values, roots = [], [], [], [], [], []
        offset = 0
        for tree, used in zip(forest.estimators_, forest.estimators_features_, strict=True):
            t = tree.tree_
            leaf = t.children_left < 0
            depth = np.ones(t.node_count)  # the root is at depth 1, as in scikit-learn
            for node in range(t.node_count):  # children come after their parent
                if not leaf[node]:
                    depth[t.children_left[node]] = depth[t.children_right[node]] = depth[node] + 1
            roots.append(offset)
            lefts.append(np.where(leaf, np.arange(t.node_count), t.children_left) + offset)
            rights.append(np.where(leaf, np.arange(t.node_count), t.children_right) + offset)
            features.append(np.where(leaf, 0, np.asarray(used)[np.maximum(t.feature, 0)]))
            thresholds.append(np.where(leaf, np.inf, t.threshold))
            leaf_values.append(np.where(leaf, depth + _average_path_length(t.n_node_samples) - 1.0, 0.0))
            offset += t.node_count
        ids = np.min_scalar_type(max(offset - 1, 0))
        self.left = np.concatenate(lefts).astype(ids)
        self.right = np.concatenate(rights).astype(ids)
        self.feature = np.concatenate(features).astype(np.min_scalar_type(max(forest.n_features_in_ - 1, 0)))
        self.threshold = float32_at_most(np.concatenate(thresholds))
        self.leaf_value = np.concatenate(leaf_values)
        self.roots = np.array(roots, dtype=ids)
        self.max_depth = max(tree.tree_.max_depth for tree in forest.estimators_)
        self.denominator = len(forest.estimators_) * float(_average_path_length(np.array([forest.max_samples_]))[0])

    def measure(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float32).astype(float)
        out = np.empty(len(rows))
        for i, row in enumerate(rows):
            node = self.roots
            for _ in range(self.max_depth):
                node = np.where(row[self.feature[node]] <= self.threshold[node], self.left[node], self.right[node])
            depth = self.leaf_value[node].sum()
            out[i] = 2.0 ** (-depth / self.denominator) if self.denominator else 1.0
        return out
