"""Run boxwatch models online over NAB files and score them with NAB's rules.

    python -m bench.nab [--data DIR] [--windows FILE] [--profiles FILE] [--results DIR]
                        [--models robust,seasonal,iforest] [--jobs N]

Online, as the service runs: the score of row ``i`` uses rows ``<= i`` only. A model is fitted
on the rows before the current one (at most ``--train-window`` of them), refitted every
``--refit-every`` of data time (and, while the history is young, whenever it has doubled), and
between fits it scores the rows as they arrive and ``learn``s from them, one cycle at a time.
Rows before the first fit, or that a model scores NaN (not enough history), get 0.

The NAB adapter (here, not in the models) turns boxwatch scores into NAB's ``[0, 1]``:

1. ``s`` is the model's score (0 normal, > 1 outside its band); NaN -> 0.
2. Alert once per incident (``--suppress`` rows): a row reports ``s`` only when ``s`` is
   higher than every score of the previous ``--suppress`` rows, otherwise it reports 0. At any
   threshold this keeps the first crossing of an incident and drops the repeats, the same
   de-duplication Alertmanager's grouping gives an operator; NAB charges for every repeated
   detection outside a window and rewards only the first inside one.
3. ``nab = s / (1 + s)``: monotone, so NAB's threshold sweep is unaffected; score 1 (edge of
   the band) maps to 0.5.

Per-file results go to ``<results>/<model>/<category>/<file>.csv`` (``timestamp,value,
anomaly_score``, as NAB's own result files), then the scorer in :mod:`detector.nabscore`
finds each profile's best corpus-wide threshold and prints the normalised scores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.models import make_model  # noqa: E402
from detector.nabscore import STANDARD_PROFILES, load_profiles, score_corpus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_NAB = REPO.parent / "shared" / "bench" / "nab"
DEFAULT_MODELS = ("robust", "seasonal", "iforest")


@dataclass(frozen=True)
class OnlineConfig:
    """How the service would run a model over a stream: one configuration for every file."""

    refit_every: str = "1D"
    train_window: str = "14D"
    first_fit_rows: int = 50
    cycle_rows: int = 1
    suppress_rows: int = 300
    params: tuple[tuple[str, object], ...] = ()


def run_online(model_name: str, frame: pd.DataFrame, config: OnlineConfig) -> np.ndarray:
    """The model's score for every row, each computed from rows up to and including it only."""
    n = len(frame)
    scores = np.full(n, np.nan)
    refit_every = pd.Timedelta(config.refit_every)
    train_window = pd.Timedelta(config.train_window)
    times = frame.index
    model, fitted_at, fitted_rows = None, None, 0
    i = config.first_fit_rows
    while i < n:
        if model is None or times[i] - fitted_at >= refit_every or i >= 2 * fitted_rows:
            start = times.searchsorted(times[i] - train_window, side="left")
            model = make_model(model_name, dict(config.params)).fit(frame.iloc[start:i])
            fitted_at, fitted_rows = times[i], i
        end = min(i + config.cycle_rows, n)
        batch = frame.iloc[i:end]
        scores[i:end] = model.score(batch)["score"].to_numpy(dtype=float)
        model.learn(batch)
        i = end
    return scores


def alert_once(scores: np.ndarray, suppress_rows: int) -> np.ndarray:
    """``scores`` where a row beats every score of the ``suppress_rows`` rows before it, else 0."""
    scores = np.nan_to_num(np.asarray(scores, dtype=float), nan=0.0)
    if suppress_rows <= 0:
        return scores
    previous_max = (
        pd.Series(scores).shift(1).rolling(suppress_rows, min_periods=1).max().fillna(-np.inf).to_numpy()
    )
    return np.where(scores > previous_max, scores, 0.0)


def to_nab(scores: np.ndarray, suppress_rows: int) -> np.ndarray:
    """The NAB adapter: alert once per incident, then ``s / (1 + s)`` into ``[0, 1)``."""
    kept = alert_once(scores, suppress_rows)
    return kept / (1.0 + kept)


def read_nab_file(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = {"timestamp", "value"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; NAB files have timestamp,value")
    index = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"]), name="timestamp")
    return pd.DataFrame({"value": frame["value"].to_numpy(dtype=float)}, index=index)


def score_file(task: tuple[str, Path, str, Path, OnlineConfig]) -> tuple[str, str, float]:
    """Run one model over one file, write its NAB result CSV; returns (model, file, seconds)."""
    model_name, data_dir, relative, results_dir, config = task
    started = time.perf_counter()
    frame = read_nab_file(data_dir / relative)
    raw = run_online(model_name, frame, config)
    out = results_dir / model_name / relative
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "timestamp": frame.index.strftime("%Y-%m-%d %H:%M:%S"),
            "value": frame["value"].to_numpy(),
            "anomaly_score": to_nab(raw, config.suppress_rows),
            "raw_score": np.nan_to_num(raw, nan=0.0),
        }
    ).to_csv(out, index=False)
    return model_name, relative, time.perf_counter() - started


def read_result(path: Path) -> tuple[pd.DatetimeIndex, np.ndarray]:
    frame = pd.read_csv(path)
    return pd.DatetimeIndex(pd.to_datetime(frame["timestamp"])), frame["anomaly_score"].to_numpy(dtype=float)


def data_files(data_dir: Path, windows: dict, only: str | None) -> list[str]:
    files = sorted(str(p.relative_to(data_dir)) for p in data_dir.glob("*/*.csv"))
    files = [f for f in files if f in windows]
    if only:
        files = [f for f in files if any(part in f for part in only.split(","))]
    return files


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.nab", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_NAB / "data", help="NAB data folder (<category>/<file>.csv)"
    )
    parser.add_argument("--windows", type=Path, default=DEFAULT_NAB / "labels" / "combined_windows.json")
    parser.add_argument(
        "--profiles",
        type=Path,
        default=DEFAULT_NAB / "profiles.json",
        help="NAB profiles.json (default: the three standard profiles if absent)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=REPO / "bench" / "results" / "nab",
        help="where <model>/<category>/<file>.csv go",
    )
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--files",
        default=None,
        help="only files whose path contains one of these comma-separated strings (development)",
    )
    parser.add_argument(
        "--refit-every", default=OnlineConfig.refit_every, help="refit interval in data time (pandas offset)"
    )
    parser.add_argument(
        "--train-window", default=OnlineConfig.train_window, help="history a fit sees (pandas offset)"
    )
    parser.add_argument(
        "--cycle", type=int, default=OnlineConfig.cycle_rows, help="rows scored per cycle before learn()"
    )
    parser.add_argument(
        "--suppress", type=int, default=OnlineConfig.suppress_rows, help="alert-once window in rows (0: off)"
    )
    parser.add_argument(
        "--score-only", action="store_true", help="re-score existing result files without running models"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the scores as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for path in (args.data, args.windows):
        if not path.exists():
            print(f"error: {path} does not exist (pass --data/--windows)", file=sys.stderr)
            return 2
    windows = json.loads(args.windows.read_text())
    profiles = load_profiles(args.profiles) if args.profiles.exists() else list(STANDARD_PROFILES)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    files = data_files(args.data, windows, args.files)
    if not files:
        print(f"error: no labelled <category>/<file>.csv under {args.data}", file=sys.stderr)
        return 2
    config = OnlineConfig(
        args.refit_every, args.train_window, cycle_rows=args.cycle, suppress_rows=args.suppress
    )
    timings: dict[str, float] = dict.fromkeys(models, 0.0)
    started = time.perf_counter()
    if not args.score_only:
        tasks = [(m, args.data, f, args.results, config) for m in models for f in files]
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as pool:
                done = list(pool.map(score_file, tasks, chunksize=1))
        else:
            done = [score_file(t) for t in tasks]
        for model_name, _, seconds in done:
            timings[model_name] += seconds
    report = {}
    print(
        f"{len(files)} files, {sum(len(windows[f]) for f in files)} windows, wall {time.perf_counter() - started:.1f} s"
    )
    print(f"{'model':<10} " + " ".join(f"{p.name:>20}" for p in profiles) + f" {'cpu s':>8}")
    for model_name in models:
        results = {f: read_result(args.results / model_name / f) for f in files}
        scored = score_corpus(results, {f: windows[f] for f in files}, profiles)
        report[model_name] = {name: vars(r) for name, r in scored.items()} | {"seconds": timings[model_name]}
        cells = " ".join(f"{scored[p.name].normalized:>20.1f}" for p in profiles)
        print(f"{model_name:<10} {cells} {timings[model_name]:>8.1f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                report, indent=1, default=lambda v: None if isinstance(v, float) and math.isinf(v) else v
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
