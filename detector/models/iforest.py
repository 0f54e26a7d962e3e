"""Multivariate Isolation Forest over the series of one entity (e.g. one GPU's metrics)."""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

import numpy as np
import pandas as pd

from detector.models.base import Model, empty_scores, float32_at_most, robust_standardisation

RESULT_COLUMNS = ["expected", "lower", "upper", "score", "top_features"]


class IsolationForestModel(Model):
    """scikit-learn ``IsolationForest`` on robustly standardised, decorrelated values and changes.

    Features: every input column; the columns rotated onto their principal axes and scaled to
    unit variance (``whiten``: temperature rising while power stays flat is far out on a minor
    axis even though each metric alone is in range, and axis-parallel trees see that only on
    such an axis); and each column minus its previous value (``deltas``). Each feature is
    centred by its training median and scaled by its robust sigma (1.4826 MAD), so a 300 W
    power and a 0.7 utilisation ratio weigh alike and incidents in the training window do not
    set the scale.

    Score: the forest's anomaly measure ``a = -score_samples(x)`` (higher = more abnormal; the
    opposite of scikit-learn's sign) mapped so that the training median is 0 and the
    ``threshold_quantile`` of the training measures, times ``margin``, is 1. The forest alone
    cannot tell a point 40 sigmas out from one just past the training range (a test point out
    of range follows the extreme training points down every tree, so its path length
    saturates), so a guard adds ``max |z| / z_limit`` over the standardised features: the
    score is the larger of the two, and > 1 means anomalous for either reason.

    ``top_features`` lists the input columns that drove each score, most important first, by
    leave-one-column-out on the score itself: the column is set to the value the other columns
    predict for it (the conditional mean under the training covariance; the median when there
    is one column), unchanged since the previous row, and the drop of the score is its
    contribution. This asks
    the model, not a proxy: a column that is normal alone but abnormal together with the others
    is credited, which per-feature z-scores would miss. It costs one extra forest pass per
    column, only for rows scoring above ``explain_above``. Columns that do not lower the score
    when neutralised are not listed.

    ``expected``/``lower``/``upper`` are NaN: a multivariate model has no band per series.

    Parameters
    ----------
    n_estimators, max_samples, random_state :
        Passed to ``IsolationForest``.
    threshold_quantile : float
        Quantile of the training anomaly measure that maps to score 1 (before ``margin``).
    margin : float
        Multiplier of the distance from the median to that quantile.
    deltas : bool
        Add first differences of every column as features.
    whiten : bool
        Add the values rotated onto their principal axes, each scaled to unit variance, so a
        broken relationship between metrics stands out even when each metric is in range.
    min_points : int
        Fewer complete training rows than this and the model scores NaN.
    z_limit : float
        Robust z-score of a single feature that scores 1 by itself (``inf`` turns the guard off).
    explain_above : float
        Rows with a score above this get ``top_features``; others get an empty list.
    max_top_features : int
        Longest ``top_features`` list.

    Attributes
    ----------
    columns_ : list of str
        Input columns the model was fitted on.
    value_center_, value_scale_ : numpy.ndarray
        Robust standardisation of each input column (median, 1.4826 MAD).
    rotation_ : numpy.ndarray
        Whitening rotation of the standardised columns (identity when ``whiten`` is off).
    precision_ : numpy.ndarray
        Inverse covariance of the standardised columns (for ``top_features``).
    center_, scale_ : numpy.ndarray
        Robust standardisation of each feature the forest sees.
    forest_ : ForestBank or None
        The fitted forest as flat node arrays (None before enough history); scoring does not
        need scikit-learn.
    baseline_, threshold_ : float
        Training median and calibrated threshold of the anomaly measure.
    last_row_ : numpy.ndarray
        Last input row seen, for the first delta of the next frame.

    Examples
    --------
    >>> idx = pd.date_range("2026-01-01", periods=500, freq="min", tz="UTC")
    >>> rng = np.random.default_rng(0)
    >>> frame = pd.DataFrame({"temp": 60 + rng.normal(0, 1, 500), "power": 200 + rng.normal(0, 5, 500)}, index=idx)
    >>> model = IsolationForestModel().fit(frame)
    >>> hot = pd.DataFrame({"temp": [95.0], "power": [201.0]}, index=idx[-1:] + pd.Timedelta("1min"))
    >>> out = model.score(hot)
    >>> bool(out.score.iloc[0] > 1), out.top_features.iloc[0][0]
    (True, 'temp')
    """

    name = "iforest"
    multivariate = True
    fit_imports = ("sklearn",)

    def __init__(
        self,
        n_estimators: int = 100,
        max_samples: int | str = 256,
        threshold_quantile: float = 0.995,
        margin: float = 1.2,
        deltas: bool = True,
        whiten: bool = True,
        min_points: int = 50,
        z_limit: float = 8.0,
        explain_above: float = 0.5,
        max_top_features: int = 3,
        random_state: int | None = 0,
    ):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.threshold_quantile = threshold_quantile
        self.margin = margin
        self.deltas = deltas
        self.whiten = whiten
        self.min_points = min_points
        self.z_limit = z_limit
        self.explain_above = explain_above
        self.max_top_features = max_top_features
        self.random_state = random_state

    def _feature_rows(self, values: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """Values, their decorrelated combinations (``whiten``) and changes since ``previous``
        (each row's predecessor; a NaN predecessor means no change)."""
        parts = [values]
        if self.whiten and values.shape[1] > 1:
            parts.append(((values - self.value_center_) / self.value_scale_) @ self.rotation_)
        if self.deltas:
            parts.append(values - np.where(np.isnan(previous), values, previous))
        return np.hstack(parts)

    def fit(self, history: pd.DataFrame) -> IsolationForestModel:
        from sklearn.ensemble import IsolationForest

        self.columns_ = [str(c) for c in history.columns]
        values = history.to_numpy(dtype=float)
        complete = ~np.isnan(values).any(axis=1)
        if self.deltas:
            complete[0] = False  # its delta is 0 by construction
        self.last_row_ = values[-1] if len(values) else np.full(len(self.columns_), np.nan)
        self.forest_ = None
        self.baseline_ = self.threshold_ = math.nan
        if complete.sum() < self.min_points:
            return self
        train_values = values[complete]
        n_columns = len(self.columns_)
        # 1. robust scale of the raw values, 2. a rotation that decorrelates them (principal axes of
        # the central rows, each scaled to unit variance): a broken relationship between two
        # metrics -- temperature up while power is flat -- is far out on a minor axis even when
        # each metric alone is in range; 3. robust scale of every feature for the forest.
        self.value_center_, self.value_scale_ = robust_standardisation(train_values)
        self.rotation_ = np.eye(n_columns)
        covariance = np.eye(n_columns)
        if self.whiten and n_columns > 1:
            z = (train_values - self.value_center_) / self.value_scale_
            central = z[(np.abs(z) < 4).all(axis=1)]
            central = central if len(central) > n_columns + 1 else z
            covariance = np.cov(central, rowvar=False)
            eigval, eigvec = np.linalg.eigh(covariance)
            self.rotation_ = eigvec / np.sqrt(np.maximum(eigval, 1e-6 * max(eigval.max(), 1e-12)))
        self.precision_ = np.linalg.pinv(covariance)
        previous = np.vstack([values[:1], values[:-1]])
        raw = self._feature_rows(values, previous)[complete]
        self.center_, self.scale_ = robust_standardisation(raw)
        standard = (raw - self.center_) / self.scale_
        forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(standard))
            if isinstance(self.max_samples, int)
            else self.max_samples,
            random_state=self.random_state,
        ).fit(standard)
        self.forest_ = ForestBank.from_sklearn(forest)  # scikit-learn's estimator is not kept
        measure = -forest.score_samples(standard)
        self.baseline_ = float(np.median(measure))
        quantile = float(np.quantile(measure, self.threshold_quantile))
        self.threshold_ = self.baseline_ + self.margin * max(quantile - self.baseline_, 1e-6)
        return self

    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()
        out = empty_scores(frame.index, RESULT_COLUMNS)
        out["top_features"] = [[] for _ in range(len(frame))]
        if frame.empty or self.forest_ is None:
            return out
        missing = [c for c in self.columns_ if c not in frame.columns]
        if missing:
            raise KeyError(f"iforest: frame lacks the fitted feature columns {missing}")
        values = frame[self.columns_].to_numpy(dtype=float)
        ok = ~np.isnan(values).any(axis=1)
        if not ok.any():
            return out
        previous = np.vstack([self.last_row_, values[:-1]])[ok]
        scores = self._total_score(values[ok], previous)
        out.loc[ok, "score"] = scores
        explain = scores > self.explain_above
        if explain.any():
            tops = self._top_features(values[ok][explain], previous[explain], scores[explain])
            for row, top in zip(np.flatnonzero(ok)[explain], tops, strict=True):
                out.iat[row, out.columns.get_loc("top_features")] = top
        return out

    def _total_score(self, values: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """max(forest score, largest |z| / z_limit) per row; ``previous`` is each row's predecessor."""
        standard = self._standard_rows(values, previous)
        return self._combine(-self.forest_.score_samples(standard), standard)

    def _combine(self, measure: np.ndarray, standard: np.ndarray) -> np.ndarray:
        forest = np.maximum(0.0, (measure - self.baseline_) / (self.threshold_ - self.baseline_))
        return np.maximum(forest, np.abs(standard).max(axis=1) / self.z_limit)

    def _standard_rows(self, values: np.ndarray, previous: np.ndarray) -> np.ndarray:
        return (self._feature_rows(values, previous) - self.center_) / self.scale_

    def _top_features(self, values: np.ndarray, previous: np.ndarray, scores: np.ndarray) -> list[list[str]]:
        """Leave-one-column-out: the drop of the score when one column is set to the value the
        other columns predict for it (unchanged since the previous row)."""
        neutral = [self._neutralised(values, previous, c) for c in range(len(self.columns_))]
        return self._ranked(scores, [self._total_score(rows, prev) for rows, prev in neutral])

    def _neutralised(self, values: np.ndarray, previous: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
        """``values`` and ``previous`` with column ``c`` set to what the other columns predict for it."""
        n_columns = len(self.columns_)
        z = (values - self.value_center_) / self.value_scale_
        others = [j for j in range(n_columns) if j != c]
        # conditional mean of a Gaussian with this precision: z_c = -sum_j P_cj z_j / P_cc
        predicted = -(z[:, others] @ self.precision_[c, others]) / self.precision_[c, c]
        neutral, neutral_prev = values.copy(), previous.copy()
        neutral[:, c] = self.value_center_[c] + self.value_scale_[c] * predicted
        neutral_prev[:, c] = neutral[:, c]
        return neutral, neutral_prev

    def _ranked(self, scores: np.ndarray, without: list[np.ndarray]) -> list[list[str]]:
        """Columns by how much the score drops without each (``without[c]``), positive drops only."""
        contributions = np.zeros((len(scores), len(self.columns_)))
        for c, score in enumerate(without):
            contributions[:, c] = scores - score
        tops = []
        for row in contributions:
            order = [c for c in np.argsort(-row) if row[c] > 0][: self.max_top_features]
            tops.append([self.columns_[c] for c in order])
        return tops

    @classmethod
    def score_learn_many(cls, models: Sequence[IsolationForestModel], seconds: float,
                         values: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`score` then :meth:`learn` of one row per entity, every forest walked in one pass.

        ``values[i]`` is entity ``i``'s row in its model's ``columns_`` order (all models of one call
        have as many columns). Besides the score arrays, ``top_features`` is a list per entity.
        """
        values = np.asarray(values, dtype=float)
        n = len(models)
        out = {column: np.full(n, np.nan) for column in ("expected", "lower", "upper", "score")}
        tops: list[list[str]] = [[] for _ in range(n)]
        for model in models:
            model._check_fitted()
        rows = [i for i in range(n) if models[i].forest_ is not None and not np.isnan(values[i]).any()]
        if rows:
            bank = ForestBank.of([model.forest_ for model in models if model.forest_ is not None])
            pairs = [(values[i:i + 1], models[i].last_row_[None, :]) for i in rows]
            scores = _total_scores([models[i] for i in rows], pairs, bank)
            out["score"][rows] = scores
            explain = [(i, r) for r, i in enumerate(rows) if scores[r] > models[i].explain_above]
            if explain:
                owners, neutral = [], []
                for i, r in explain:
                    for c in range(len(models[i].columns_)):
                        owners.append(models[i])
                        neutral.append(models[i]._neutralised(*pairs[r], c))
                without = iter(_total_scores(owners, neutral, bank))
                for i, r in explain:
                    drops = [np.array([next(without)]) for _ in models[i].columns_]
                    tops[i] = models[i]._ranked(scores[r:r + 1], drops)[0]
        for i, model in enumerate(models):
            model.last_row_ = values[i].copy()
        return {**out, "top_features": tops}

    def __setstate__(self, state: dict) -> None:
        """Models saved with scikit-learn's forest (before ``forest_`` was a :class:`ForestBank`) load
        with their forest converted: they score the same."""
        forest = state.get("forest_")
        if forest is not None and not isinstance(forest, ForestBank):
            state["forest_"] = ForestBank.from_sklearn(forest)
        self.__dict__.update(state)

    def learn(self, frame: pd.DataFrame) -> None:
        """Remember the last row, so the next frame's first delta is taken against it."""
        self._check_fitted()
        if not frame.empty and set(self.columns_) <= set(frame.columns):
            self.last_row_ = frame[self.columns_].to_numpy(dtype=float)[-1]


def _total_scores(models: Sequence[IsolationForestModel], pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                  bank: ForestBank) -> np.ndarray:
    """``models[k]._total_score(*pairs[k])`` (one row each), every forest walked in one pass of ``bank``."""
    standard = [model._standard_rows(rows, previous) for model, (rows, previous) in zip(models, pairs, strict=True)]
    table = np.zeros((len(standard), max(row.shape[1] for row in standard)))
    for k, row in enumerate(standard):
        table[k, : row.shape[1]] = row[0]
    measure = -bank.score_samples(table, [bank.position[id(model.forest_)] for model in models])
    return np.array([model._combine(measure[k:k + 1], standard[k])[0] for k, model in enumerate(models)])


class ForestBank:
    """Fitted isolation forests as flat node arrays, nothing of scikit-learn kept: row ``k`` of a
    table is walked through the trees of forest ``owners[k]`` only, all rows and trees one tree level
    per numpy step.

    A fitted model keeps its forest as a bank of one (:meth:`from_sklearn`, the one place scikit-learn's
    forest is read, at fit time), in the smallest dtypes that hold it: node ids in ``uint8``/``uint16``,
    features in ``uint8``, thresholds in ``float32``. Scoring needs numpy only, so a process that loads
    fitted models never imports scikit-learn or SciPy. :meth:`of` concatenates the banks of many
    models (``int32`` node ids) to score a serve cycle's entities in one pass.

    ``score_samples`` gives what each forest's own ``score_samples`` gives for its row, bit for bit:
    scikit-learn compares a row's ``float32`` value with the node's ``float64`` threshold, and the
    threshold is kept as the largest ``float32`` not above it (the same comparison for every
    ``float32`` value); each tree adds its leaf's depth plus the average path length of the leaf's
    samples less one (kept in ``float64``), tree after tree, and the sum is normalised as
    scikit-learn does. scikit-learn walks one tree at a time from Python (~0.3 ms a tree, 100 trees
    per entity); here a serve cycle's entities cost a few array operations per tree level.
    Concatenated banks are kept for the forests last asked for (weakly: a refit's old forests are
    not held).
    """

    _recent: dict[tuple[int, ...], tuple[list, ForestBank]] = {}

    def __init__(self, left: np.ndarray, right: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                 leaf: np.ndarray, roots: list[np.ndarray], denominators: np.ndarray, depth: int):
        self.left, self.right, self.feature, self.threshold, self.leaf = left, right, feature, threshold, leaf
        self.roots, self.denominators, self.depth = roots, denominators, depth

    @classmethod
    def from_sklearn(cls, forest) -> ForestBank:
        """The bank of one fitted ``sklearn.ensemble.IsolationForest``."""
        from sklearn.ensemble._iforest import _average_path_length

        lefts, rights, features, thresholds, leaves, roots = [], [], [], [], [], []
        subsample = forest._max_features != forest.n_features_in_
        offset, depth = 0, 0
        for t, (tree, used) in enumerate(zip(forest.estimators_, forest.estimators_features_, strict=True)):
            nodes = tree.tree_
            leaf = nodes.children_left < 0
            own = np.arange(nodes.node_count)
            feature = np.maximum(nodes.feature, 0)
            roots.append(offset)
            lefts.append(np.where(leaf, own, nodes.children_left) + offset)
            rights.append(np.where(leaf, own, nodes.children_right) + offset)
            features.append(np.where(leaf, 0, np.asarray(used)[feature] if subsample else feature))
            thresholds.append(np.where(leaf, np.inf, nodes.threshold))
            leaves.append(forest._decision_path_lengths[t] + forest._average_path_length_per_tree[t] - 1.0)
            offset += nodes.node_count
            depth = max(depth, nodes.max_depth)
        ids = np.min_scalar_type(max(offset - 1, 0))
        return cls(np.concatenate(lefts).astype(ids), np.concatenate(rights).astype(ids),
                   np.concatenate(features).astype(np.min_scalar_type(max(forest.n_features_in_ - 1, 0))),
                   float32_at_most(np.concatenate(thresholds)), np.concatenate(leaves).astype(float),
                   [np.array(roots, dtype=ids)],
                   np.array([float(len(forest.estimators_) * _average_path_length([forest._max_samples])[0])]),
                   depth)

    @classmethod
    def of(cls, banks: Sequence[ForestBank]) -> ForestBank:
        """One bank of ``banks`` (one per distinct bank, in the order first seen; ``position`` maps a
        bank's ``id`` to its forest number), reused while the same banks are asked for."""
        banks = list({id(bank): bank for bank in banks}.values())
        key = tuple(id(bank) for bank in banks)
        cached = cls._recent.get(key)
        if cached is not None and all(ref() is bank for ref, bank in zip(cached[0], banks, strict=True)):
            return cached[1]
        joined = cls.concatenate(banks)
        if len(cls._recent) >= 8:
            cls._recent.pop(next(iter(cls._recent)))
        cls._recent[key] = ([weakref.ref(bank) for bank in banks], joined)
        return joined

    @classmethod
    def concatenate(cls, banks: Sequence[ForestBank]) -> ForestBank:
        """The forests of ``banks`` in one bank, in order."""
        lefts, rights, roots, offset = [], [], [], 0
        for bank in banks:
            lefts.append(bank.left.astype(np.int32) + offset)
            rights.append(bank.right.astype(np.int32) + offset)
            roots.extend(r.astype(np.int32) + offset for r in bank.roots)
            offset += bank.left.size
        joined = cls(np.concatenate(lefts), np.concatenate(rights),
                     np.concatenate([bank.feature.astype(np.int32) for bank in banks]),
                     np.concatenate([bank.threshold for bank in banks]), np.concatenate([bank.leaf for bank in banks]),
                     roots, np.concatenate([bank.denominators for bank in banks]),
                     max(bank.depth for bank in banks))
        joined.position = {id(bank): k for k, bank in enumerate(banks)}
        return joined

    def score_samples(self, table: np.ndarray, owners: Sequence[int] | None = None) -> np.ndarray:
        """Row ``k`` of ``table`` scored by forest ``owners[k]`` (default: the first forest for every
        row): its ``score_samples`` (lower is more abnormal)."""
        rows = np.asarray(table, dtype=np.float32)
        owners = np.zeros(len(rows), dtype=int) if owners is None else np.asarray(owners, dtype=int)
        if not len(owners):
            return np.zeros(0)
        counts = [len(self.roots[k]) for k in owners]
        node = np.concatenate([self.roots[k] for k in owners]).astype(np.int32)
        row = np.repeat(np.arange(len(owners)), counts)
        for _ in range(self.depth):
            node = np.where(rows[row, self.feature[node]] <= self.threshold[node], self.left[node], self.right[node])
        paths = np.zeros((len(owners), max(counts)))
        paths[row, np.concatenate([np.arange(count) for count in counts])] = self.leaf[node]
        depths = np.cumsum(paths, axis=1)[:, -1]  # tree after tree, as scikit-learn adds them
        denominator = self.denominators[owners]
        return -(2 ** (-np.divide(depths, denominator, out=np.ones_like(depths), where=denominator != 0)))

    @property
    def nbytes(self) -> int:
        """Bytes of the node arrays."""
        return sum(a.nbytes for a in (self.left, self.right, self.feature, self.threshold, self.leaf, *self.roots))

