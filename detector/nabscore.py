"""A faithful re-implementation of the Numenta Anomaly Benchmark (NAB) scorer.

Rules (NAB's ``sweeper.py``, as described in ``bench/README.md``):

* Every row has an anomaly score in ``[0, 1]``; a row with ``score >= threshold`` is a detection.
* Probation: the first ``min(floor(0.15 * N), 750)`` rows of a file are not scored at all.
* ``s(y) = 2 / (1 + exp(5 y)) - 1`` (the scaled sigmoid).
* A detection at row ``i`` inside window ``[l, r]`` (row indices, width ``w = r - l + 1``) is worth
  ``A_TP * s(-(r - i + 1) / w) / s(-1)``; a window keeps only its best (earliest) detection, and a
  window without one costs ``-A_FN``.
* A detection outside every window costs ``-A_FP`` when no window precedes it in the file, and
  ``A_FP * s(|i - r_prev| / (w_prev - 1))`` after a window ending at ``r_prev`` of width ``w_prev``
  (``s`` is forced to ``-1`` when that argument exceeds 3).
* One threshold per detector and profile for the whole corpus: every distinct score is tried and
  the one with the highest raw score is kept (a threshold above every score, "never fire", too).
* Normalised score ``100 * (S - S_null) / (S_perfect - S_null)``, with ``S_perfect = A_TP * windows``
  and ``S_null = -A_FN * windows``.

The sweep is exact and ``O(n log n)``: rows are visited from the highest score down; false
positives add up, and a window's credit is the running maximum of its detected rows' credits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Profile:
    """A NAB cost matrix: reward of an early true positive, cost of a miss and of a false alarm."""

    name: str
    tp: float = 1.0
    fn: float = 1.0
    fp: float = 0.11


STANDARD_PROFILES = (
    Profile("standard", 1.0, 1.0, 0.11),
    Profile("reward_low_FP_rate", 1.0, 1.0, 0.22),
    Profile("reward_low_FN_rate", 1.0, 2.0, 0.11),
)


def load_profiles(path: str | Path) -> list[Profile]:
    """Read NAB's ``profiles.json`` (``{name: {"CostMatrix": {"tpWeight": .., ...}}}``)."""
    raw = json.loads(Path(path).read_text())
    profiles = []
    for name, body in raw.items():
        try:
            cost = body["CostMatrix"]
            profiles.append(
                Profile(name, float(cost["tpWeight"]), float(cost["fnWeight"]), float(cost["fpWeight"]))
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: profile {name!r}: bad or missing CostMatrix weight ({exc})") from exc
    return profiles


def scaled_sigmoid(y: np.ndarray | float) -> np.ndarray:
    """NAB's ``s(y) = 2 / (1 + exp(5 y)) - 1``, forced to -1 where ``y > 3``."""
    y = np.asarray(y, dtype=float)
    with np.errstate(over="ignore"):
        value = 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0
    return np.where(y > 3.0, -1.0, value)


def probation_length(n_rows: int, fraction: float = 0.15) -> int:
    """Rows at the start of a file that NAB does not score: ``min(floor(0.15 N), 0.15 * 5000)``."""
    return int(min(math.floor(fraction * n_rows), fraction * 5000))


@dataclass
class FileRows:
    """A file reduced to what the sweep needs, for rows after probation.

    ``window`` is the window id of each scored row (-1 outside every window); ``tp_unit`` the
    credit of a detection there per unit of ``A_TP``; ``fp_unit`` the (negative) cost per unit
    of ``A_FP`` outside windows.
    """

    name: str
    scores: np.ndarray
    window: np.ndarray
    tp_unit: np.ndarray
    fp_unit: np.ndarray
    n_windows: int
    window_offset: int = field(default=0)


def window_rows(timestamps: pd.DatetimeIndex, windows: Iterable[Sequence[str]]) -> list[tuple[int, int]]:
    """Row index ranges ``[l, r]`` of the windows: first row at/after the start, last at/before the end."""
    values = timestamps.asi8
    rows = []
    for start, end in windows:
        left = int(np.searchsorted(values, pd.Timestamp(start).value, side="left"))
        right = int(np.searchsorted(values, pd.Timestamp(end).value, side="right")) - 1
        if right >= left:
            rows.append((left, right))
    return rows


def prepare_file(
    name: str, timestamps: pd.DatetimeIndex, scores: np.ndarray, windows: Iterable[Sequence[str]]
) -> FileRows:
    """Per-row window membership and unit credits (NAB's ``calcSweepScore``)."""
    scores = np.asarray(scores, dtype=float)
    if len(scores) != len(timestamps):
        raise ValueError(f"{name}: {len(scores)} scores for {len(timestamps)} rows")
    if np.isnan(scores).any():
        raise ValueError(f"{name}: anomaly scores contain NaN; NAB needs a score in [0, 1] for every row")
    n = len(scores)
    spans = window_rows(timestamps, windows)
    window = np.full(n, -1, dtype=np.int64)
    tp_unit = np.zeros(n)
    fp_unit = np.full(n, -1.0)
    max_tp = float(scaled_sigmoid(-1.0))
    rows = np.arange(n)
    for k, (left, right) in enumerate(spans):
        width = right - left + 1
        inside = slice(left, right + 1)
        window[inside] = k
        tp_unit[inside] = scaled_sigmoid(-(right - rows[inside] + 1) / width) / max_tp
        end_next = spans[k + 1][0] if k + 1 < len(spans) else n
        after = slice(right + 1, end_next)
        with np.errstate(divide="ignore"):
            position = (
                np.abs(rows[after] - right) / float(width - 1)
                if width > 1
                else np.full(end_next - right - 1, np.inf)
            )
        fp_unit[after] = scaled_sigmoid(position)
    keep = slice(probation_length(n), n)
    return FileRows(name, scores[keep], window[keep], tp_unit[keep], fp_unit[keep], len(spans))


@dataclass(frozen=True)
class ProfileResult:
    profile: str
    threshold: float
    raw: float
    normalized: float
    tp: int
    fp: int
    fn: int


def sweep(files: Sequence[FileRows], profile: Profile, threshold: float | None = None) -> ProfileResult:
    """The best corpus-wide threshold for ``profile`` and the scores it gives; with ``threshold``,
    the scores at that threshold only (a row with a score ``>= threshold`` is a detection)."""
    offsets = np.cumsum([0] + [f.n_windows for f in files])
    n_windows = int(offsets[-1])
    scores = np.concatenate([f.scores for f in files]) if files else np.zeros(0)
    window = (
        np.concatenate(
            [np.where(f.window >= 0, f.window + off, -1) for f, off in zip(files, offsets[:-1], strict=True)]
        )
        if files
        else np.zeros(0, int)
    )
    tp_unit = np.concatenate([f.tp_unit for f in files]) if files else np.zeros(0)
    fp_unit = np.concatenate([f.fp_unit for f in files]) if files else np.zeros(0)

    order = np.argsort(-scores, kind="stable")
    fixed = threshold
    if fixed is not None:
        order = order[scores[order] >= fixed]
    best_window = np.full(n_windows, -np.inf)
    raw = -profile.fn * n_windows  # "never fire"
    best = (raw, math.inf, 0, 0)
    tp_sum, fp_sum, tp_count, fp_count = 0.0, 0.0, 0, 0
    i = 0
    while i < len(order):
        threshold = scores[order[i]]
        j = i
        while j < len(order) and scores[order[j]] == threshold:
            row = order[j]
            k = window[row]
            if k < 0:
                fp_sum += profile.fp * fp_unit[row]
                fp_count += 1
            elif best_window[k] == -np.inf:
                best_window[k] = tp_unit[row]
                tp_sum += profile.tp * tp_unit[row]
                tp_count += 1
            elif tp_unit[row] > best_window[k]:
                tp_sum += profile.tp * (tp_unit[row] - best_window[k])
                best_window[k] = tp_unit[row]
            j += 1
        raw = tp_sum + fp_sum - profile.fn * (n_windows - tp_count)
        if raw > best[0] or fixed is not None:
            best = (raw, float(threshold), tp_count, fp_count)
        i = j
    raw, threshold, tp_count, fp_count = best
    if fixed is not None:
        threshold = fixed
    perfect, null = profile.tp * n_windows, -profile.fn * n_windows
    normalized = 100.0 * (raw - null) / (perfect - null) if perfect != null else 0.0
    return ProfileResult(profile.name, threshold, raw, normalized, tp_count, fp_count, n_windows - tp_count)


def score_corpus(
    results: Mapping[str, tuple[pd.DatetimeIndex, np.ndarray]],
    windows: Mapping[str, Iterable[Sequence[str]]],
    profiles: Sequence[Profile] = STANDARD_PROFILES,
    threshold: float | None = None,
) -> dict[str, ProfileResult]:
    """Score ``{file: (timestamps, scores)}`` against ``{file: [[start, end], ...]}`` per profile,
    at the best corpus-wide threshold, or at ``threshold`` when one is given."""
    missing = sorted(set(results) - set(windows))
    if missing:
        raise KeyError(
            f"no windows for {missing[0]} (and {len(missing) - 1} more)"
            if len(missing) > 1
            else f"no windows for {missing[0]}"
        )
    files = [prepare_file(name, ts, sc, windows[name]) for name, (ts, sc) in sorted(results.items())]
    return {p.name: sweep(files, p, threshold) for p in profiles}
