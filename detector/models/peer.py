"""Peer groups: each member of a group scored against its siblings at the same step.

A *group* is one unit of a query whose ``group_by`` names the group (every GPU of a host, the
replicas of a compose service); its frame has one column per member and metric, named as
:func:`detector.scoring.feature_name` names them (``metric{label=value,...}``, the labels
outside ``group_by`` identifying the member). No history is needed: at each step a member is
compared with the robust centre and spread of the *other* members (leave one out), so a
member that runs away from the group stands out even when its own history would accept it --
a GPU 10 °C hotter than its sibling under the same load, one replica burning CPU.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pandas as pd

from detector.models.base import MAD_TO_SIGMA, Model, band_score, empty_scores

RESULT_COLUMNS = ["expected", "lower", "upper", "score", "top_features"]


def split_column(column: str) -> tuple[str, str]:
    """``metric{a=1,b=2}`` -> ``("metric", "a=1,b=2")``; ``a=1`` -> ``("", "a=1")``; a plain name is a
    member of its own (``gpu0`` -> ``("", "gpu0")``: the ad-hoc API's ``{member: values}``)."""
    if column.endswith("}") and "{" in column:
        metric, _, inner = column[:-1].partition("{")
        return metric, inner
    return "", column


_PAIR_START = re.compile(r",(?=[A-Za-z_][A-Za-z0-9_]*=)")


def member_labels(member: str) -> dict[str, str]:
    """The labels of a member id (``a=1,b=x,y``): split at commas that start a new ``name=``."""
    if "=" not in member:
        return {"member": member} if member else {}
    return dict(part.split("=", 1) for part in _PAIR_START.split(member))


class PeerModel(Model):
    """Each member against the others' median and MAD at the same step, optionally load-adjusted.

    With ``covariate`` (a metric of the same members, e.g. utilisation), the comparison is made
    on what the covariate does not explain: ``target - slope * covariate``, the slope fitted on
    the group's pooled history (least squares, refitted once without the points more than
    ``4`` robust sigmas off the first line, so an incident in the window does not tilt it).
    The expected value of a member is then ``centre_of_others + slope * its_covariate``: a GPU
    at 90 % load is compared with what its siblings' temperature would be at 90 % load.

    Score: :func:`~detector.models.base.band_score` with the band ``expected ± max(k *
    1.4826 * MAD_of_others, tolerance)``; above 1 outside it. With two members the others' MAD
    is 0 and ``tolerance`` alone is the band: two members cannot tell which of them is wrong, so
    use a query ``direction`` (``above`` for temperatures) to report only the one that is off in
    the harmful direction.

    ``score`` on a group frame returns one row per step for the group (the highest member
    score, ``top_features`` the members above ``explain_above``, worst first): that is what
    validation and the ad-hoc API see. :meth:`score_members` gives each member's own
    expected value, band and score; the service publishes those, one series per member.

    Parameters
    ----------
    target : str, optional
        Metric compared across members; default: the one metric that is not ``covariate``.
    covariate : str, optional
        Metric that explains part of the target (load); ``None`` compares the target as is.
    k : float
        Band half-width in robust standard deviations of the other members.
    tolerance : float
        Smallest band half-width, in the target's unit (°C, cores): a spread the group may
        always have.
    min_members : int
        Fewer members with a value at a step and every member scores NaN there.
    explain_above : float
        Members with a score above this are listed in the group's ``top_features``.

    Attributes
    ----------
    slope_ : float
        Target change per unit of covariate shared by the group (0 without a covariate).
    members_ : list of str
        Member ids seen in training.

    Examples
    --------
    >>> idx = pd.date_range("2026-01-01", periods=3, freq="min", tz="UTC")
    >>> frame = pd.DataFrame({"temp{gpu=0}": [80.0, 81, 80], "temp{gpu=1}": [70.0, 70, 71]}, index=idx)
    >>> model = PeerModel(tolerance=4.0).fit(frame)
    >>> members = model.score_members(frame)
    >>> bool(members["gpu=0"]["score"].min() > 1)
    True
    """

    name = "peer"
    multivariate = True
    cross_sectional = True

    def __init__(self, target: str | None = None, covariate: str | None = None, k: float = 3.0,
                 tolerance: float = 1.0, min_members: int = 2, explain_above: float = 1.0):
        if k <= 0:
            raise ValueError(f"k must be positive, got {k!r}")
        if tolerance < 0:
            raise ValueError(f"tolerance must not be negative, got {tolerance!r}")
        if min_members < 2:
            raise ValueError(f"min_members must be at least 2 (a group of one has no peers), got {min_members!r}")
        self.target = target
        self.covariate = covariate
        self.k = k
        self.tolerance = tolerance
        self.min_members = min_members
        self.explain_above = explain_above

    # ------------------------------------------------------------------ columns

    def _layout(self, columns) -> dict[str, tuple[str, str | None]]:
        """member id -> (target column, covariate column or None)."""
        by_member: dict[str, dict[str, str]] = {}
        for column in columns:
            metric, member = split_column(str(column))
            by_member.setdefault(member, {})[metric] = str(column)
        layout = {}
        for member, metrics in by_member.items():
            target = self._target_metric(metrics)
            if target is None:
                continue
            layout[member] = (metrics[target], metrics.get(self.covariate) if self.covariate else None)
        return layout

    def _target_metric(self, metrics: dict[str, str]) -> str | None:
        if self.target is not None:
            return self.target if self.target in metrics else None
        others = [m for m in metrics if m != self.covariate]
        if len(others) > 1:
            raise ValueError(f"peer: members have several metrics ({', '.join(sorted(others))}); "
                             f"name the compared one with the parameter 'target'")
        return others[0] if others else None

    # ------------------------------------------------------------------ fit

    def fit(self, history: pd.DataFrame) -> PeerModel:
        layout = self._layout(history.columns)
        self.members_ = sorted(layout)
        self.slope_ = 0.0
        if self.covariate:
            pairs = [(history[cov].to_numpy(float), history[target].to_numpy(float))
                     for target, cov in layout.values() if cov is not None]
            if pairs:
                x = np.concatenate([p[0] for p in pairs])
                y = np.concatenate([p[1] for p in pairs])
                self.slope_ = _robust_slope(x, y)
        return self

    # ------------------------------------------------------------------ score

    def score_members(self, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Per member: ``value`` (the target), ``expected``, ``lower``, ``upper``, ``score``."""
        self._check_fitted()
        layout = self._layout(frame.columns)
        members = sorted(layout)
        if not members:
            return {}
        values = np.column_stack([frame[layout[m][0]].to_numpy(float) for m in members])
        covariates = np.column_stack([
            frame[layout[m][1]].to_numpy(float) if layout[m][1] is not None
            else np.zeros(len(frame)) if not self.covariate else np.full(len(frame), np.nan)
            for m in members])
        adjusted = values - self.slope_ * covariates
        present = ~np.isnan(adjusted)
        enough = present.sum(axis=1) >= self.min_members
        result = {}
        for j, member in enumerate(members):
            others = np.delete(adjusted, j, axis=1)
            with warnings.catch_warnings():  # an all-NaN row warns; such rows are NaN by design
                warnings.simplefilter("ignore", RuntimeWarning)
                centre = np.nanmedian(others, axis=1)
                spread = MAD_TO_SIGMA * np.nanmedian(np.abs(others - centre[:, None]), axis=1)
            half = np.maximum(np.nan_to_num(self.k * spread, nan=0.0), max(self.tolerance, 1e-9))
            expected = centre + self.slope_ * covariates[:, j]
            expected = np.where(enough & present[:, j], expected, np.nan)
            score = band_score(values[:, j], expected, expected - half, expected + half)
            result[member] = pd.DataFrame({"value": values[:, j], "expected": expected, "lower": expected - half,
                                           "upper": expected + half, "score": score}, index=frame.index)
        return result

    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        out = empty_scores(frame.index, RESULT_COLUMNS)
        out["top_features"] = [[] for _ in range(len(frame))]
        members = self.score_members(frame)
        if not members:
            return out
        table = pd.DataFrame({member: result["score"] for member, result in members.items()})
        out["score"] = table.max(axis=1, skipna=True)
        out["top_features"] = [
            [m for m, s in row.sort_values(ascending=False).items() if s > self.explain_above][:3]
            for _, row in table.iterrows()
        ]
        return out


def _robust_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` on ``x``, refitted without points 4 robust sigmas off the line."""
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0:
        return 0.0
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    sigma = MAD_TO_SIGMA * np.median(np.abs(residual - np.median(residual)))
    keep = np.abs(residual) <= 4 * sigma if sigma > 0 else np.ones(len(x), dtype=bool)
    if keep.sum() >= 3 and np.ptp(x[keep]) > 0:
        slope, _ = np.polyfit(x[keep], y[keep], 1)
    return float(slope) if math.isfinite(slope) else 0.0

